#!/usr/bin/env python3
"""Time ``hopchain sim network`` at its reference size.

Runs 20 relays, 50 clients and 1 authority for 10 simulated minutes (the
``mixed`` workload, seed 1) in this process, without plots, and prints as
JSON the wall time, the CPU time of the run, the simulated minutes and the
downloads. The target is under 120 s of wall time on the project's 2-core
machine; on a shared machine the CPU time is the steadier number.

    bench/sim_network.py [--minutes 10] [--seed 1]
"""

import argparse
import json
import resource
import time

from hopchain.simulations.network.params import NetworkParams
from hopchain.simulations.network.world import run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    params = NetworkParams(minutes=args.minutes, seed=args.seed)
    cpu_before = resource.getrusage(resource.RUSAGE_SELF).ru_utime
    wall_before = time.monotonic()
    result = run(params)
    wall = time.monotonic() - wall_before
    cpu = resource.getrusage(resource.RUSAGE_SELF).ru_utime - cpu_before
    print(
        json.dumps(
            {
                "relays": params.relays,
                "clients": params.clients,
                "simulated_minutes": params.minutes,
                "wall_s": round(wall, 1),
                "cpu_user_s": round(cpu, 1),
                "downloads": len(result.transfers),
                "failed": sum(not t.ok for t in result.transfers),
                "circuits_built": len(result.builds),
                "relay_bytes_sent": sum(r.bytes_sent for r in result.relays),
            }
        )
    )


if __name__ == "__main__":
    main()
