"""``hopchain sim paths``: its options and its runner."""

import argparse
import logging
import os
import time
from pathlib import Path
from typing import Any

from hopchain.simulations.paths.adversary import AdversarySpec
from hopchain.simulations.paths.engine import StudyParams
from hopchain.simulations.paths.networks import KINDS, NetworkSpec
from hopchain.simulations.paths.parallel import (
    DaskExecutor,
    Executor,
    LocalExecutor,
    connect_dask,
)
from hopchain.simulations.paths.study import SWEEPABLE, Sweep, run_study
from hopchain.simulations.paths.users import MODELS

from hopchain.errors import ConfigError
from hopchain.guards import MAX_GUARDS
from hopchain.relayconfig import country_code
from hopchain.reuse import DIRTINESS

logger = logging.getLogger(__name__)

DEFAULT_ADVERSARY = 0.05


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from exc
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError("a fraction in [0, 1)")
    return value


def _countries(text: str) -> frozenset[str]:
    codes = frozenset(country_code(c.strip()) for c in text.split(",") if c.strip())
    if not codes:
        raise argparse.ArgumentTypeError("two-letter country codes, comma-separated")
    return codes


def add_parser(studies: Any, common: argparse.ArgumentParser) -> None:
    """Declare ``hopchain sim paths``."""
    p = studies.add_parser(
        "paths",
        parents=[common],
        help="who sees a user's traffic over time (path-compromise study)",
        description=(
            "Simulate users of the real path selection, guard set and circuit "
            "reuse rules over days of consensuses, with an adversary holding "
            "relays, and report how many users and streams it compromises "
            "(guard and exit both its own): median and confidence interval "
            "across seeds, as CSV, JSON and PNG. See docs/simulations.md."
        ),
    )
    net = p.add_argument_group("network")
    net.add_argument(
        "--network",
        choices=KINDS,
        default="synthetic",
        help="synthetic: generated per seed (default); hopchain: a client's "
        "cached-consensus file; tor: Tor consensus files",
    )
    net.add_argument(
        "--relays",
        type=int,
        default=7000,
        help="relays in a synthetic network (default 7000)",
    )
    net.add_argument(
        "--consensus",
        action="append",
        default=[],
        metavar="PATH",
        help="consensus file (hopchain: one; tor: files or directories, "
        "repeatable, replayed in valid-after order)",
    )
    net.add_argument(
        "--geoip",
        metavar="FILE",
        help="Tor-format IPv4 GeoIP file for the countries of Tor relays",
    )
    net.add_argument("--geoip6", metavar="FILE", help="Tor-format IPv6 GeoIP file")
    net.add_argument(
        "--consensus-period",
        type=float,
        default=1.0,
        metavar="HOURS",
        help="a new consensus every HOURS (default 1, as Tor)",
    )
    users = p.add_argument_group("users")
    users.add_argument(
        "--users",
        type=int,
        default=1000,
        help="simulated users per seed (default 1000)",
    )
    users.add_argument(
        "--days",
        type=float,
        default=30.0,
        help="simulated duration in days (default 30)",
    )
    users.add_argument(
        "--user-model",
        choices=sorted(MODELS),
        default="typical",
        help="typical: web browsing sessions; irc: a long-lived chat "
        "connection with reconnects (default typical)",
    )
    client = p.add_argument_group("client")
    client.add_argument(
        "--hops", type=int, default=3, help="hops per circuit (default 3)"
    )
    client.add_argument(
        "--guards",
        type=int,
        default=MAX_GUARDS,
        help=f"guards of the guard set offered to path selection, 0 to "
        f"{MAX_GUARDS} (default {MAX_GUARDS}, what the client does; 0: a "
        "fresh guard for every circuit)",
    )
    client.add_argument(
        "--no-guard-rotation",
        action="store_true",
        help="guards never expire (the guard set's clock stays at the start)",
    )
    client.add_argument(
        "--dirtiness",
        type=float,
        default=DIRTINESS,
        metavar="SECONDS",
        help=f"a circuit takes new streams for this long (default {DIRTINESS:g})",
    )
    adv = p.add_argument_group(
        "adversary (default: 5 percent of guard and of exit bandwidth)"
    )
    adv.add_argument(
        "--adversary-bandwidth",
        type=_fraction,
        metavar="F",
        help="add relays with fraction F of all guard and of all exit bandwidth",
    )
    adv.add_argument(
        "--adversary-guard-fraction",
        type=_fraction,
        metavar="F",
        help="fraction of guard bandwidth in added guards",
    )
    adv.add_argument(
        "--adversary-exit-fraction",
        type=_fraction,
        metavar="G",
        help="fraction of exit bandwidth in added exits",
    )
    adv.add_argument(
        "--adversary-relays",
        type=int,
        default=5,
        metavar="N",
        help="how many guards and how many exits share that bandwidth (default 5)",
    )
    adv.add_argument(
        "--adversary-relay-country",
        default="",
        metavar="CC",
        help="country the added relays are listed in (default none)",
    )
    adv.add_argument(
        "--adversary-countries",
        type=_countries,
        metavar="CC,CC",
        help="the adversary also runs every relay in these countries",
    )
    adv.add_argument(
        "--adversary-family",
        action="append",
        default=[],
        metavar="RELAY",
        help="the adversary also runs this relay (nickname or fingerprint) "
        "and its declared family; repeatable",
    )
    run = p.add_argument_group("run")
    run.add_argument(
        "--seeds",
        type=int,
        default=5,
        help="independent runs (network, users, paths) per point (default 5)",
    )
    run.add_argument(
        "--first-seed",
        type=int,
        default=1,
        help="seeds are FIRST-SEED .. FIRST-SEED+SEEDS-1 (default 1)",
    )
    run.add_argument(
        "--ci-level",
        type=float,
        default=0.95,
        help="confidence level of the intervals across seeds (default 0.95)",
    )
    run.add_argument(
        "--sweep",
        metavar="PARAM=V1,V2,...",
        help=f"run once per value and combine; PARAM is one of {', '.join(SWEEPABLE)}",
    )
    run.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="local worker processes (default: one per core)",
    )
    where = run.add_mutually_exclusive_group()
    where.add_argument(
        "--dask-scheduler",
        metavar="ADDR",
        help="run the tasks on this Dask distributed scheduler "
        "(tcp://HOST:8786); workers need hopchain installed and the input files",
    )
    where.add_argument(
        "--dask-local",
        action="store_true",
        help="run the tasks on a local Dask cluster of --workers processes",
    )
    run.add_argument(
        "--out",
        type=Path,
        default=Path("sim-paths-output"),
        help="directory for the CSV, JSON and PNG files (default ./sim-paths-output)",
    )
    run.add_argument("--no-plots", action="store_true", help="write CSV and JSON only")
    p.set_defaults(run=run_paths)


def params_from(args: argparse.Namespace) -> StudyParams:
    """The study parameters the options describe."""
    if args.network != "synthetic" and not args.consensus:
        raise ConfigError(f"--network {args.network} needs --consensus PATH")
    if args.network == "synthetic" and args.consensus:
        raise ConfigError("--consensus goes with --network hopchain or tor")
    guard = args.adversary_guard_fraction
    exit_ = args.adversary_exit_fraction
    if args.adversary_bandwidth is not None:
        if guard is not None or exit_ is not None:
            raise ConfigError(
                "--adversary-bandwidth sets both fractions; give it alone"
            )
        guard = exit_ = args.adversary_bandwidth
    taken_over = bool(args.adversary_countries or args.adversary_family)
    if guard is None and exit_ is None and not taken_over:
        guard = exit_ = DEFAULT_ADVERSARY
    country = args.adversary_relay_country.upper()
    if country and (len(country) != 2 or not country.isalpha()):
        raise ConfigError("--adversary-relay-country takes a two-letter code")
    return StudyParams(
        network=NetworkSpec(
            kind=args.network,
            relays=args.relays,
            period=args.consensus_period * 3600,
            files=tuple(args.consensus),
            geoip=args.geoip,
            geoip6=args.geoip6,
        ),
        adversary=AdversarySpec(
            guard_fraction=guard or 0.0,
            exit_fraction=exit_ or 0.0,
            guard_relays=args.adversary_relays,
            exit_relays=args.adversary_relays,
            country=country,
            countries=args.adversary_countries or frozenset(),
            families=tuple(args.adversary_family),
        ),
        model=args.user_model,
        users=args.users,
        days=args.days,
        hops=args.hops,
        guards=args.guards,
        guard_rotation=not args.no_guard_rotation,
        dirtiness=args.dirtiness,
    )


def run_paths(args: argparse.Namespace) -> None:
    """Run the study the options describe and print where its files went."""
    params = params_from(args)
    if args.seeds < 1:
        raise ConfigError("--seeds must be at least 1")
    if not 0.0 < args.ci_level < 1.0:
        raise ConfigError("--ci-level must be between 0 and 1")
    sweep = Sweep.parse(args.sweep) if args.sweep else None
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    started = time.monotonic()
    close = None
    executor: Executor
    if args.dask_scheduler or args.dask_local:
        client, close = connect_dask(args.dask_scheduler, args.workers)
        executor = DaskExecutor(client)
    else:
        executor = LocalExecutor(args.workers)
    try:
        written = run_study(
            params,
            seeds,
            args.out,
            executor,
            workers=args.workers,
            sweep=sweep,
            plots=not args.no_plots,
            level=args.ci_level,
        )
    finally:
        if close is not None:
            close()
    print(f"sim paths: done in {time.monotonic() - started:.1f} s; wrote:")
    for path in written:
        print(f"  {path}")
