#!/usr/bin/env python3
"""Path selections per second on a synthetic 7,000-relay consensus.

Builds a consensus from a fixed seed, shaped like Tor's network: bandwidths
heavy-tailed (Pareto, alpha 1.2: a few relays carry most of the traffic;
Guard relays 3x and exits 2x the others, so exits are the scarce class and
the weights fall in Tor's usual case 3a),
about 35% Guard and 15% Exit (a third of the exits also Guard), 2% BadExit
among the exits, families of 2 to 6 relays holding about 20% of them,
relays packed into 2,500 IPv4 /16s (so the subnet rule bites), exits
accepting 80 and 443 (a quarter of them every port) and ten countries.

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
import hashlib
import json
import random
import sys
import time
from collections.abc import Callable

from hopchain.directory import Consensus, Descriptor, RouterStatus
from hopchain.path import PathConstraints, select_path
from hopchain.pathpool import Prepared
from hopchain.weights import compute_weights

COUNTRIES = ["DE", "US", "NL", "FR", "SE", "CH", "GB", "CA", "RO", "FI"]
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
    """``n`` relays shaped like Tor's network (see the module docstring)."""
    gen = random.Random(seed)
    identities = [
        hashlib.blake2b(f"bench {seed} {i}".encode(), digest_size=32).digest()
        for i in range(n)
    ]
    families: dict[int, tuple[bytes, ...]] = {}
    i = 0
    while i < n:
        if gen.random() < 0.06:
            size = gen.randint(2, 6)
            members = range(i, min(n, i + size))
            for m in members:
                families[m] = tuple(identities[o] for o in members if o != m)
            i += size
        else:
            i += 1
    relays = []
    for i in range(n):
        flags = {"Running", "Valid", "Fast"}
        draw = gen.random()
        if draw < 0.05:
            flags |= {"Guard", "Exit"}
        elif draw < 0.15:
            flags.add("Exit")
        elif draw < 0.45:
            flags.add("Guard")
        if "Exit" in flags and gen.random() < 0.02:
            flags.add("BadExit")
        ports: tuple[tuple[int, int], ...] = ()
        if "Exit" in flags:
            ports = ((1, 65535),) if gen.random() < 0.25 else ((80, 80), (443, 443))
        slash16 = gen.randrange(2500)
        a, b = 11 + slash16 // 250, slash16 % 250
        # Guard and Exit relays are the faster ones, as in Tor (Guard needs
        # bandwidth above the median, and exits are run on big links).
        scale = 3.0 if "Guard" in flags else 2.0 if "Exit" in flags else 1.0
        desc = Descriptor(
            nickname=f"bench{i}",
            identity=identities[i],
            onion_key=bytes(32),
            address=f"{a}.{b}.{gen.randrange(256)}.{i % 250 + 1}",
            or_port=9001,
            bandwidth=int(scale * 20_000 * gen.paretovariate(1.2)),
            exit_ports=ports,
            family=families.get(i, ()),
            country=gen.choice(COUNTRIES),
            published=0.0,
            test_network=False,
        )
        relays.append(RouterStatus(desc, frozenset(flags)))
    return Consensus(0.0, 3600.0, 10800.0, tuple(relays), frozenset())


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
