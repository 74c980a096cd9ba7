#!/usr/bin/env python3
"""Path selections per second on a synthetic 7,000-relay consensus.

The consensus is the first hour of ``hopchain sim paths``' synthetic network
(``hopchain.simulations.paths.synthetic``, fixed seed): lognormal
bandwidths, countries and /16 blocks as on Tor's network (hosting providers
hold many relays, so the subnet rule bites), operator families, exit
policies, and flags from the authorities' own rules; see
docs/simulations.md for its figures.  The weights fall in Tor's case 3a
(exits scarce), as on Tor's network today.

Times, in one process with a seeded ``random.Random``:
  weights   ``compute_weights`` over the consensus (one-off per consensus)
  prepare   ``pathpool.Prepared``: pools, cumulative weights, subnets and
            the family index (one-off per consensus; the weights themselves
            come from their cache here)
  paths     ``select_path`` per second for each scenario, on the prepared
            consensus (the first call of each run prepares it; not timed)

and prints JSON on stdout.  Pure CPU: no network, no files.

    bench/path_select.py                     # 7,000 relays, 3 s per scenario
    bench/path_select.py --relays 2000 --seconds 1
"""

import argparse
import json
import random
import sys
import time
from collections.abc import Callable

from hopchain.simulations.paths.synthetic import (
    HOUR,
    SyntheticSchedule,
    generate_relays,
)

from hopchain.directory import Consensus
from hopchain.path import PathConstraints, select_path
from hopchain.pathpool import Prepared
from hopchain.weights import compute_weights

SCENARIOS = {
    "3 hops, port 443": PathConstraints(hops=3, port=443),
    "3 hops, port 22 (exits accepting every port)": PathConstraints(hops=3, port=22),
    "3 hops, --exit-country de": PathConstraints(
        hops=3, port=443, exit_countries=frozenset({"DE"})
    ),
    "3 hops, --exclude-country-anywhere us": PathConstraints(
        hops=3, port=443, exclude_countries_anywhere=frozenset({"US"})
    ),
    "4 hops, port 443": PathConstraints(hops=4, port=443),
}


def synthetic_consensus(n: int, seed: int) -> Consensus:
    """The first consensus of ``hopchain sim paths``' network of ``n`` relays."""
    return SyntheticSchedule(generate_relays(n, seed), HOUR, seed).consensus(0)


def _best_of(runs: int, fn: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def paths_per_second(
    consensus: Consensus, constraints: PathConstraints, seconds: float, seed: int
) -> float:
    """Selections per second over at least ``seconds`` (bounded in count)."""
    rng = random.Random(seed)
    select_path(consensus, constraints, rng)  # prepares the consensus
    done = 0
    start = time.perf_counter()
    deadline = start + seconds
    while done < 10_000_000:
        for _ in range(200):
            select_path(consensus, constraints, rng)
        done += 200
        if time.perf_counter() >= deadline:
            break
    return done / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--relays", type=int, default=7000, help="consensus size")
    parser.add_argument("--seed", type=int, default=1, help="consensus and rng seed")
    parser.add_argument(
        "--seconds", type=float, default=3.0, help="time per scenario (s)"
    )
    args = parser.parse_args()
    consensus = synthetic_consensus(args.relays, args.seed)
    weights = compute_weights(consensus)
    flags = [r.flags for r in consensus.relays]
    result = {
        "relays": args.relays,
        "seed": args.seed,
        "guard_share": sum("Guard" in f for f in flags) / len(flags),
        "exit_share": sum("Exit" in f for f in flags) / len(flags),
        "weights_case": weights.case,
        "weights_ms": round(1000 * _best_of(5, lambda: compute_weights(consensus)), 2),
        "prepare_ms": round(1000 * _best_of(3, lambda: Prepared(consensus)), 1),
        "paths_per_second": {
            name: round(paths_per_second(consensus, c, args.seconds, args.seed))
            for name, c in SCENARIOS.items()
        },
        "python": sys.version.split()[0],
    }
    json.dump(result, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
