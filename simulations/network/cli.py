"""``hopchain sim network``: its options and its runner."""

import argparse
import logging
import sys
from pathlib import Path
from typing import Any, get_args

from hopchain.simulations.network.params import Fault, NetworkParams, Workload

__all__ = ["add_parser", "run"]

_NODE_LOGGERS = ("hopchain.relay", "hopchain.client")
# What the address plan of world.py has room for.
MAX_RELAYS = 20_000
MAX_CLIENTS = 30_000
MAX_AUTHORITIES = 200
MAX_ORIGINS = 200


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number >= 0")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a fraction from 0 to 1")
    return value


def _at(text: str) -> tuple[str, float]:
    relay, _, minute = text.partition("@")
    try:
        at = float(minute)
    except ValueError:
        at = -1.0
    if not relay or not 0 <= at < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not RELAY@MINUTE, e.g. r3@4")
    return relay, at


def _kill(text: str) -> Fault:
    return Fault("kill", *_at(text))


def _vanish(text: str) -> Fault:
    return Fault("vanish", *_at(text))


def _slow(text: str) -> Fault:
    relay, _, rest = text.partition("@")
    minute, _, factor = rest.partition(":")
    try:
        at, by = float(minute), float(factor)
    except ValueError:
        at, by = -1.0, 0.0
    if not relay or not 0 <= at < float("inf") or not 1 <= by < float("inf"):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not RELAY@MINUTE:FACTOR (FACTOR >= 1), e.g. r5@2:10"
        )
    return Fault("slow", relay, at, by)


def add_parser(studies: Any, common: argparse.ArgumentParser) -> None:
    """Declare ``hopchain sim network``."""
    defaults = NetworkParams()
    parser = studies.add_parser(
        "network",
        parents=[common],
        help="run real relays, clients and an authority in virtual time",
        description=(
            "Run N relays, M clients, directory authorities and origin servers "
            "(the real hopchain node code) in one process over an in-memory "
            "network with per-link latency and per-host bandwidth, under a "
            "virtual clock. Clients download 50 KiB, 1 MiB and 5 MiB files; "
            "relays can be killed or slowed. Writes CSV, JSON and PNG plots. "
            "See docs/simulations.md."
        ),
    )
    add = parser.add_argument
    add(
        "--relays",
        metavar="N",
        type=_positive_int,
        default=defaults.relays,
        help=f"number of relays, named r0, r1, ... (default {defaults.relays})",
    )
    add(
        "--exits",
        metavar="N",
        type=_positive_int,
        default=None,
        help="how many relays are exits (default: a quarter of them, at least 1)",
    )
    add(
        "--clients",
        metavar="N",
        type=_positive_int,
        default=defaults.clients,
        help=f"number of clients (default {defaults.clients})",
    )
    add(
        "--authorities",
        metavar="N",
        type=_positive_int,
        default=defaults.authorities,
        help="number of directory authorities; every relay publishes to all, "
        f"client i uses authority i mod N (default {defaults.authorities})",
    )
    add(
        "--minutes",
        metavar="M",
        type=_positive_float,
        default=defaults.minutes,
        help="simulated minutes of traffic, after the relays are up "
        f"(default {defaults.minutes:g})",
    )
    add(
        "--seed",
        metavar="S",
        type=int,
        default=defaults.seed,
        help="seed for every random choice; same seed, same run "
        f"(default {defaults.seed})",
    )
    add(
        "--workload",
        choices=list(get_args(Workload)),
        default=defaults.workload,
        help="web: 50 KiB fetches with think time; bulk: 1 MiB and 5 MiB "
        "downloads with pauses; mixed: --bulk-fraction of the clients bulk, "
        f"the others web (default {defaults.workload})",
    )
    add(
        "--bulk-fraction",
        metavar="F",
        type=_fraction,
        default=defaults.bulk_fraction,
        help="share of bulk clients in the mixed workload "
        f"(default {defaults.bulk_fraction:g})",
    )
    add(
        "--think-time",
        metavar="SECONDS",
        type=_positive_float,
        default=defaults.think_time,
        help="mean think time of web clients between fetches, seconds, "
        f"exponentially distributed (default {defaults.think_time:g})",
    )
    add(
        "--bulk-pause",
        metavar="SECONDS",
        type=_positive_float,
        default=defaults.bulk_pause,
        help="pause of bulk clients between downloads, seconds "
        f"(default {defaults.bulk_pause:g})",
    )
    add(
        "--origins",
        metavar="N",
        type=_positive_int,
        default=defaults.origins,
        help="number of origin servers; each fetch picks one at random "
        f"(default {defaults.origins})",
    )
    add(
        "--hops",
        type=int,
        choices=range(1, 9),
        default=defaults.hops,
        metavar="N",
        help=f"circuit length, 1 to 8 (default {defaults.hops})",
    )
    add(
        "--latency-scale",
        metavar="X",
        type=_positive_float,
        default=defaults.latency_scale,
        help="multiply every link latency by this (default 1)",
    )
    add(
        "--ramp",
        metavar="SECONDS",
        type=_non_negative_float,
        default=defaults.ramp,
        help="clients start at random times over this many seconds "
        f"(default {defaults.ramp:g})",
    )
    add(
        "--kill",
        type=_kill,
        action="append",
        default=[],
        metavar="RELAY@MINUTE",
        help="crash relay RELAY (e.g. r3) at MINUTE of the run: its connections "
        "are reset and it stays down; repeatable",
    )
    add(
        "--vanish",
        type=_vanish,
        action="append",
        default=[],
        metavar="RELAY@MINUTE",
        help="take relay RELAY's machine off the network at MINUTE: no reset, "
        "what is sent to it is lost, connects to it time out; repeatable",
    )
    add(
        "--slow",
        type=_slow,
        action="append",
        default=[],
        metavar="RELAY@MINUTE:FACTOR",
        help="divide relay RELAY's bandwidth by FACTOR from MINUTE on; repeatable",
    )
    add(
        "--out",
        metavar="DIR",
        type=Path,
        default=Path("sim-network"),
        help="output directory for CSV, JSON and PNG files (default ./sim-network)",
    )
    add(
        "--no-plots",
        action="store_true",
        help="write CSV and JSON only (no matplotlib needed)",
    )
    parser.set_defaults(run=run)


def params_from(args: argparse.Namespace) -> NetworkParams:
    """The run's parameters from parsed arguments."""
    return NetworkParams(
        relays=args.relays,
        clients=args.clients,
        authorities=args.authorities,
        minutes=args.minutes,
        seed=args.seed,
        workload=args.workload,
        latency_scale=args.latency_scale,
        exits=args.exits or 0,
        bulk_fraction=args.bulk_fraction,
        think_time=args.think_time,
        bulk_pause=args.bulk_pause,
        origins=args.origins,
        hops=args.hops,
        ramp=args.ramp,
        faults=tuple(args.kill + args.vanish + args.slow),
    )


def run(args: argparse.Namespace) -> None:
    """Run the simulation, write its outputs, and say where they went.

    Raises:
        ConfigError: bad parameters, a missing plotting library, or an
            unusable output directory.
    """
    from hopchain.simulations.network import report, world
    from hopchain.simulations.plotting import load_pyplot

    from hopchain.errors import ConfigError

    params = params_from(args)
    if params.exit_count > params.relays or params.relays < params.hops:
        raise ConfigError(
            f"need at least {params.hops} relays and at most --relays exits"
        )
    for name, value, most in (
        ("relays", params.relays, MAX_RELAYS),
        ("clients", params.clients, MAX_CLIENTS),
        ("authorities", params.authorities, MAX_AUTHORITIES),
        ("origins", params.origins, MAX_ORIGINS),
    ):
        if value > most:
            raise ConfigError(f"--{name} may be at most {most}")
    if not args.no_plots:
        load_pyplot()
    if args.log_level != "debug":  # the nodes' own info lines would drown progress
        for name in _NODE_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
    result = world.run(params)
    written = report.write(result, args.out, plots=not args.no_plots)
    failed = sum(not t.ok for t in result.transfers)
    print(
        f"sim network: {len(result.transfers)} downloads, {failed} failed, "
        f"{len(result.builds)} circuits built; {params.minutes:g} simulated min "
        f"in {result.wall_seconds:.1f} s of wall time",
        file=sys.stderr,
    )
    print(f"outputs in {args.out}:")
    for path in written:
        print(f"  {path}")
