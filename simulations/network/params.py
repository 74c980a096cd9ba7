"""What a network simulation is asked to do, and what it measured.

Plain data: the runner fills ``SimResult``, the report writes it out.
Times in results are virtual seconds since the clients started (``t0``).
"""

from dataclasses import dataclass, field
from typing import Final, Literal

__all__ = [
    "SIZES",
    "Build",
    "Fault",
    "NetworkParams",
    "RelayLoad",
    "SimResult",
    "Transfer",
    "Workload",
]

KIB: Final = 1024
MIB: Final = 1024 * 1024
SIZES: Final = (50 * KIB, MIB, 5 * MIB)
"""Download sizes, the ones Tor Metrics publishes (onionperf)."""

Workload = Literal["web", "bulk", "mixed"]


@dataclass(frozen=True, slots=True)
class Fault:
    """A relay killed (its process crashes), vanished (its machine goes
    silent) or slowed at a given minute."""

    kind: Literal["kill", "vanish", "slow"]
    relay: str
    minute: float
    factor: float = 1.0

    def describe(self) -> str:
        """A short label for plots and progress lines."""
        if self.kind != "slow":
            return f"{self.kind} {self.relay}"
        return f"slow {self.relay} x{self.factor:g}"


@dataclass(frozen=True, slots=True)
class NetworkParams:
    """Every knob of a run (see docs/simulations.md)."""

    relays: int = 20
    clients: int = 50
    authorities: int = 1
    minutes: float = 10.0
    seed: int = 1
    workload: Workload = "mixed"
    latency_scale: float = 1.0
    exits: int = 0  # 0: a quarter of the relays (at least one)
    bulk_fraction: float = 0.2
    think_time: float = 15.0
    bulk_pause: float = 60.0
    origins: int = 8
    hops: int = 3
    ramp: float = 10.0
    faults: tuple[Fault, ...] = ()

    @property
    def exit_count(self) -> int:
        """How many relays are exits."""
        return self.exits or max(1, self.relays // 4)


@dataclass(frozen=True, slots=True)
class Transfer:
    """One download: ``error`` is empty when it succeeded.

    ``start`` and ``end`` are when it was asked for and when it completed or
    failed; ``ttfb`` and ``duration`` are None for a failure."""

    client: int
    model: str
    size: int
    start: float
    end: float
    ttfb: float | None
    duration: float | None
    error: str

    @property
    def ok(self) -> bool:
        """Whether every byte arrived."""
        return not self.error


@dataclass(frozen=True, slots=True)
class Build:
    """A circuit a client built: when it finished, and how long it took."""

    client: int
    at: float
    seconds: float


@dataclass(frozen=True, slots=True)
class RelayLoad:
    """A relay, its advertised bandwidth, and the bytes it sent."""

    nickname: str
    country: str
    exit: bool
    bandwidth: int
    bytes_sent: int


@dataclass
class SimResult:
    """Everything a run measured."""

    params: NetworkParams
    transfers: list[Transfer] = field(default_factory=list)
    builds: list[Build] = field(default_factory=list)
    bootstraps: list[float] = field(default_factory=list)
    relays: list[RelayLoad] = field(default_factory=list)
    events: list[tuple[float, str]] = field(default_factory=list)
    wall_seconds: float = 0.0
