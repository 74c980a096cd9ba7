#!/usr/bin/env python3
"""Time circuit builds against a running hopchain network.

Builds N fresh 3-hop circuits one after another through the same code the
client uses (``CircuitManager.build``) and prints the median and p90 build
time (first CREATE sent to last EXTENDED verified), as JSON on stdout.

    bench/circuit_build.py --authority 127.0.0.1:PORT=KEY [--authority ...] --n 20
"""

import argparse
import json
import random
import statistics
import sys

import trio
from hopchain.client.circuits import CircuitManager
from hopchain.client.node import ClientConfig, ClientNode
from hopchain.relay.dirclient import AuthorityAddress
from hopchain.relay.net import TcpNetwork


async def measure(
    authorities: list[AuthorityAddress], n: int, hops: int
) -> list[float]:
    network = TcpNetwork()
    node = ClientNode(
        ClientConfig(authorities=authorities, test_network=True, hops=hops),
        network,
        random.SystemRandom(),
    )
    with trio.fail_after(60):
        await node.fetch_consensus()
    times = []
    async with trio.open_nursery() as nursery:
        manager = CircuitManager(
            network,
            lambda: node.consensus,
            hops=hops,
            same_subnet_ok=True,
            dirtiness=600.0,
            rng=random.SystemRandom(),
            nursery=nursery,
        )
        # The first build also opens the link to a guard; time the rest alone.
        await manager.build(80)
        for _ in range(n):
            start = trio.current_time()
            with trio.fail_after(60):
                await manager.build(80)
            times.append((trio.current_time() - start) * 1000)
        manager.close_all()
        nursery.cancel_scope.cancel()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--authority",
        action="append",
        required=True,
        metavar="HOST:PORT=KEY",
        help="a pinned authority (repeatable: every authority of the network)",
    )
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--hops", type=int, default=3)
    args = parser.parse_args()
    authorities = [AuthorityAddress.parse(a) for a in args.authority]
    times = trio.run(measure, authorities, args.n, args.hops)
    ordered = sorted(times)
    result = {
        "n": len(times),
        "median_ms": round(statistics.median(times), 2),
        "p90_ms": round(ordered[int(0.9 * (len(ordered) - 1))], 2),
        "all_ms": [round(t, 2) for t in times],
    }
    json.dump(result, sys.stdout)
    print()


if __name__ == "__main__":
    main()
