"""From task results to the figures a study reports, per seed and across seeds.

Per seed (all users of the seed together):

* ``users_compromised``: share of users with at least one compromised
  circuit that carried a stream, at each hour of the run (the curve) and at
  the end;
* ``time_to_first_compromise``: days until each compromised user's first
  compromised stream;
* ``stream_fraction`` and ``circuit_fraction``: compromised streams among
  streams carried, compromised circuits among circuits built;
* ``exit_countries``: share of streams that left through an exit in each
  country, and share of users who used an exit there at least once.

Across seeds, each figure is the median with ``stats.median_ci``.
"""

import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from hopchain.simulations.paths.engine import ChunkResult
from hopchain.simulations.paths.stats import Estimate, median_ci
from hopchain.simulations.paths.synthetic import DAY, HOUR

SCALARS = (
    "users_compromised",
    "stream_fraction",
    "circuit_fraction",
    "median_days_to_first_compromise",
    "streams_per_user",
    "circuits_per_user",
)


@dataclass(slots=True)
class SeedResult:
    """Every figure for one seed."""

    seed: int
    users: int
    streams: int
    compromised_streams: int
    circuits: int
    compromised_circuits: int
    failed_streams: int
    first_compromise_days: list[float]
    curve: list[float]
    exit_streams: dict[str, int]
    exit_users: dict[str, int]
    guard_share: float
    exit_share: float
    guard_selection_share: float
    exit_selection_share: float
    relays: int
    seconds: float = field(compare=False)
    per_user_circuits: list[int] = field(repr=False)
    per_user_compromised_circuits: list[int] = field(repr=False)

    def scalar(self, name: str) -> float:
        """One of ``SCALARS`` (NaN when undefined, e.g. no compromise)."""
        if name == "users_compromised":
            return len(self.first_compromise_days) / self.users
        if name == "stream_fraction":
            return self.compromised_streams / self.streams if self.streams else math.nan
        if name == "circuit_fraction":
            return (
                self.compromised_circuits / self.circuits if self.circuits else math.nan
            )
        if name == "median_days_to_first_compromise":
            days = self.first_compromise_days
            return statistics.median(days) if days else math.nan
        if name == "streams_per_user":
            return self.streams / self.users
        if name == "circuits_per_user":
            return self.circuits / self.users
        raise KeyError(name)

    def exit_share_of(self, country: str) -> float:
        """Share of this seed's streams that exited in ``country``."""
        total = sum(self.exit_streams.values())
        return self.exit_streams.get(country, 0) / total if total else 0.0


def hours_grid(days: float) -> list[float]:
    """Hourly points from 0 to the end of the run, in days."""
    return [h * HOUR / DAY for h in range(math.ceil(days * 24) + 1)]


def merge(chunks: Iterable[ChunkResult], days: float) -> SeedResult:
    """One seed's result from its tasks (all of the same seed and point)."""
    ordered = sorted(chunks, key=lambda c: c.first_user)
    first = [t for c in ordered for t in c.first_compromise]
    users = len(first)
    compromised = sorted(t / DAY for t in first if t is not None)
    curve = []
    index = 0
    for point in hours_grid(days):
        while index < len(compromised) and compromised[index] <= point:
            index += 1
        curve.append(index / users if users else 0.0)
    exit_streams: dict[str, int] = {}
    exit_users: dict[str, int] = {}
    for c in ordered:
        for country, n in c.exit_streams.items():
            exit_streams[country] = exit_streams.get(country, 0) + n
        for country, n in c.exit_users.items():
            exit_users[country] = exit_users.get(country, 0) + n
    return SeedResult(
        seed=ordered[0].seed,
        users=users,
        streams=sum(sum(c.streams) for c in ordered),
        compromised_streams=sum(sum(c.compromised_streams) for c in ordered),
        circuits=sum(sum(c.circuits) for c in ordered),
        compromised_circuits=sum(sum(c.compromised_circuits) for c in ordered),
        failed_streams=sum(c.failed_streams for c in ordered),
        first_compromise_days=compromised,
        curve=curve,
        exit_streams=dict(sorted(exit_streams.items())),
        exit_users=dict(sorted(exit_users.items())),
        guard_share=ordered[0].guard_share,
        exit_share=ordered[0].exit_share,
        guard_selection_share=ordered[0].guard_selection_share,
        exit_selection_share=ordered[0].exit_selection_share,
        relays=ordered[0].relays,
        seconds=sum(c.seconds for c in ordered),
        per_user_circuits=[n for c in ordered for n in c.circuits],
        per_user_compromised_circuits=[
            n for c in ordered for n in c.compromised_circuits
        ],
    )


def _estimate(values: list[float], level: float) -> Estimate | None:
    finite = [v for v in values if not math.isnan(v)]
    return median_ci(finite, level) if finite else None


@dataclass(slots=True)
class Summary:
    """Medians and intervals across the seeds of one study."""

    seeds: list[SeedResult]
    days: float
    level: float = 0.95
    scalars: dict[str, Estimate | None] = field(default_factory=dict)
    curve: list[Estimate] = field(default_factory=list)
    exit_countries: dict[str, Estimate] = field(default_factory=dict)
    exit_country_users: dict[str, Estimate] = field(default_factory=dict)

    def __post_init__(self) -> None:
        seeds = self.seeds
        self.scalars = {
            name: _estimate([s.scalar(name) for s in seeds], self.level)
            for name in SCALARS
        }
        self.curve = [
            median_ci([s.curve[i] for s in seeds], self.level)
            for i in range(len(seeds[0].curve))
        ]
        countries = sorted({c for s in seeds for c in s.exit_streams})
        self.exit_countries = {
            c: median_ci([s.exit_share_of(c) for s in seeds], self.level)
            for c in countries
        }
        self.exit_country_users = {
            c: median_ci([s.exit_users.get(c, 0) / s.users for s in seeds], self.level)
            for c in countries
        }

    def as_dict(self) -> dict[str, Any]:
        """The summary for JSON (the curve is in its CSV file)."""
        return {
            "scalars": {
                name: (e.as_dict() if e is not None else None)
                for name, e in self.scalars.items()
            },
            "exit_countries": {
                c: {
                    "stream_share": e.as_dict(),
                    "users": self.exit_country_users[c].as_dict(),
                }
                for c, e in self.exit_countries.items()
            },
        }
