"""A whole study: its sweep points, seeds, tasks, and output files."""

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from hopchain.simulations.paths.engine import StudyParams
from hopchain.simulations.paths.networks import open_schedule
from hopchain.simulations.paths.parallel import Executor, execute, plan
from hopchain.simulations.paths.report import (
    FILES,
    SEED_COLUMNS,
    plot_study,
    plot_sweep,
    seed_row,
    write_csv,
    write_json,
    write_tables,
)
from hopchain.simulations.paths.results import Summary, merge
from hopchain.simulations.plotting import load_pyplot

from hopchain._version import __version__
from hopchain.errors import ConfigError
from hopchain.guards import MAX_GUARDS

logger = logging.getLogger(__name__)

SWEEPABLE: Final = (
    "adversary-bandwidth",
    "guard-fraction",
    "exit-fraction",
    "guards",
    "hops",
)


@dataclass(frozen=True, slots=True)
class Sweep:
    """One parameter and the values it takes."""

    parameter: str
    values: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> "Sweep":
        """``NAME=V1,V2,...``.

        Raises:
            ConfigError: unknown parameter or no values.
        """
        name, _, values = text.partition("=")
        if name not in SWEEPABLE:
            raise ConfigError(
                f"--sweep: unknown parameter {name!r} (one of {', '.join(SWEEPABLE)})"
            )
        items = tuple(v.strip() for v in values.split(",") if v.strip())
        if not items:
            raise ConfigError(
                "--sweep: give values, e.g. adversary-bandwidth=0.05,0.1,0.2"
            )
        return cls(name, items)

    def apply(self, params: StudyParams, value: str) -> StudyParams:
        """``params`` at this sweep point."""
        try:
            number = (
                float(value)
                if "fraction" in self.parameter or "bandwidth" in self.parameter
                else int(value)
            )
        except ValueError as exc:
            raise ConfigError(f"--sweep {self.parameter}: bad value {value!r}") from exc
        adversary = params.adversary
        if self.parameter == "adversary-bandwidth":
            adversary = adversary.with_bandwidth(float(number))
        elif self.parameter == "guard-fraction":
            adversary = dataclasses.replace(adversary, guard_fraction=float(number))
        elif self.parameter == "exit-fraction":
            adversary = dataclasses.replace(adversary, exit_fraction=float(number))
        elif self.parameter == "guards":
            return check(dataclasses.replace(params, guards=int(number)))
        else:
            return check(dataclasses.replace(params, hops=int(number)))
        return check(dataclasses.replace(params, adversary=adversary))


def check(params: StudyParams) -> StudyParams:
    """Raises ConfigError for parameters the client could not have."""
    params.adversary.check()
    if not 1 <= params.hops <= 8:
        raise ConfigError("hops must be 1..8")
    if not 0 <= params.guards <= MAX_GUARDS:
        raise ConfigError(
            f"guards must be 0..{MAX_GUARDS} (the client keeps {MAX_GUARDS})"
        )
    if params.users < 1 or params.days <= 0:
        raise ConfigError("give at least one user and a positive number of days")
    if params.dirtiness <= 0:
        raise ConfigError("dirtiness must be positive")
    if params.network.period <= 0:
        raise ConfigError("the consensus period must be positive")
    if params.network.kind == "synthetic" and params.network.relays < 3:
        raise ConfigError("a synthetic network needs at least 3 relays")
    return params


def parameters(params: StudyParams) -> dict[str, Any]:
    """The parameters as JSON-ready values."""
    adversary = params.adversary
    return {
        "network": {
            "kind": params.network.kind,
            "relays": params.network.relays
            if params.network.kind == "synthetic"
            else None,
            "consensus_period_hours": params.network.period / 3600,
            "files": list(params.network.files),
            "geoip": params.network.geoip,
            "geoip6": params.network.geoip6,
        },
        "adversary": {
            "guard_fraction": adversary.guard_fraction,
            "exit_fraction": adversary.exit_fraction,
            "guard_relays": adversary.guard_relays,
            "exit_relays": adversary.exit_relays,
            "relay_country": adversary.country,
            "countries": sorted(adversary.countries),
            "families": list(adversary.families),
        },
        "user_model": params.model,
        "users": params.users,
        "days": params.days,
        "hops": params.hops,
        "guards": params.guards,
        "guard_rotation": params.guard_rotation,
        "dirtiness_seconds": params.dirtiness,
    }


def title(params: StudyParams, swept: str | None = None) -> str:
    """A one-line description for plot titles (without the ``swept``
    parameter, which the legend gives)."""
    adversary = params.adversary
    parts = [f"{params.users} {params.model} users, {params.days:g} days"]
    if swept not in ("adversary-bandwidth", "guard-fraction", "exit-fraction") and (
        adversary.guard_fraction or adversary.exit_fraction
    ):
        parts.append(
            f"adversary {adversary.guard_fraction:.0%} of guard, "
            f"{adversary.exit_fraction:.0%} of exit bandwidth"
        )
    if adversary.countries:
        parts.append("relays in " + ",".join(sorted(adversary.countries)))
    if adversary.families:
        parts.append("families of " + ",".join(adversary.families))
    return "; ".join(parts)


def _preflight(params: StudyParams, plots: bool) -> None:
    """Fail before any work for a missing file or missing matplotlib."""
    if plots:
        load_pyplot()
    if params.network.kind != "synthetic":
        open_schedule(params.network, 0)


def run_study(
    params: StudyParams,
    seeds: Sequence[int],
    out: Path,
    executor: Executor,
    *,
    workers: int,
    sweep: Sweep | None = None,
    plots: bool = True,
    level: float = 0.95,
) -> list[Path]:
    """Run the study (or sweep), write its files into ``out``, and return
    their paths."""
    check(params)
    points = (
        [params] if sweep is None else [sweep.apply(params, v) for v in sweep.values]
    )
    _preflight(params, plots)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create {out}: {exc.strerror or exc}") from exc
    tasks = plan(points, seeds, workers)
    logger.info(
        "sim paths: %d point(s) x %d seed(s) = %d task(s) on %s",
        len(points),
        len(seeds),
        len(tasks),
        params.network.describe(),
    )
    results = execute(tasks, executor)
    summaries = []
    for index, point in enumerate(points):
        by_seed = [
            merge(
                [r for r in results if r.point == index and r.seed == seed], point.days
            )
            for seed in seeds
        ]
        summaries.append(Summary(by_seed, point.days, level))
    document: dict[str, Any] = {
        "study": "hopchain sim paths",
        "hopchain_version": __version__,
        "parameters": parameters(params),
        "seeds": list(seeds),
        "ci_level": level,
        "network": params.network.describe(),
    }
    if sweep is None:
        summary = summaries[0]
        write_tables(summary, out)
        document["summary"] = summary.as_dict()
        document["per_seed"] = [
            dict(zip(SEED_COLUMNS, seed_row(s), strict=True)) for s in summary.seeds
        ]
        written = [
            out / FILES[k]
            for k in ("per_seed", "over_time", "first_compromise", "exit_countries")
        ]
        write_json(out / FILES["summary"], document)
        written.append(out / FILES["summary"])
        if plots:
            written += plot_study(summary, title(params), out)
        return written
    write_csv(
        out / FILES["sweep"],
        ["parameter", "value", *SEED_COLUMNS],
        [
            [sweep.parameter, value, *seed_row(s)]
            for value, summary in zip(sweep.values, summaries, strict=True)
            for s in summary.seeds
        ],
    )
    document["sweep"] = {
        "parameter": sweep.parameter,
        "points": [
            {
                "value": value,
                **summary.as_dict(),
                "curve": {
                    "median": [e.median for e in summary.curve],
                    "ci_low": [e.low for e in summary.curve],
                    "ci_high": [e.high for e in summary.curve],
                },
            }
            for value, summary in zip(sweep.values, summaries, strict=True)
        ],
    }
    write_json(out / FILES["sweep_summary"], document)
    written = [out / FILES["sweep"], out / FILES["sweep_summary"]]
    if plots:
        written.append(
            plot_sweep(
                list(zip(sweep.values, summaries, strict=True)),
                sweep.parameter,
                title(params, sweep.parameter),
                out,
            )
        )
    return written
