"""The ``hopchain sim`` command: one subcommand per kind of study.

Each study module offers ``add_parser(studies, common)``, which declares its
subcommand (``studies.add_parser(name, parents=[common], ...)``) and sets
``run`` (a plain function of the parsed arguments) as the parser default.

Studies run outside ``trio.run`` because each chooses its own event loop
and clock (virtual time, or worker processes).
"""

import argparse
from collections.abc import Callable
from typing import Any

from hopchain.simulations.network import cli as network_cli
from hopchain.simulations.paths.command import add_parser as add_paths_parser

STUDIES: list[Callable[[Any, argparse.ArgumentParser], None]] = [
    add_paths_parser,
    network_cli.add_parser,
]


def _common_options() -> argparse.ArgumentParser:
    """The options every study takes (as every other subcommand does)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="log verbosity on stderr (default: info)",
    )
    return common


def add_sim_parser(sub: Any) -> None:
    """Declare ``hopchain sim`` and every study under it."""
    sim = sub.add_parser(
        "sim",
        help="run a simulation study (paths over time, or a whole network)",
        description=(
            "Simulations for researchers, on the same path-selection, guard, "
            "relay and client code that users run. See docs/simulations.md."
        ),
    )
    studies = sim.add_subparsers(dest="study", required=True, metavar="STUDY")
    common = _common_options()
    for add_parser in STUDIES:
        add_parser(studies, common)


def run(args: argparse.Namespace) -> None:
    """Run the study the arguments chose."""
    args.run(args)
