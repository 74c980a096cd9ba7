"""The network a study runs on: a schedule of consensuses over simulated time.

Three sources, all ending as ``hopchain.directory.Consensus`` objects, the
type the client's path selection takes:

* ``synthetic``: ``synthetic.generate_relays`` with churn, one consensus per
  period (a different network for each seed);
* ``hopchain``: a consensus a client saved (``cached-consensus`` in its data
  directory), checked with ``verify_consensus`` against the keys that signed
  it, and held for the whole run;
* ``tor``: Tor consensus files (``torformat``), in the order of their
  valid-after times, each in force until the next one's; the last one stays
  in force to the end of the run.
"""

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

import msgpack
from hopchain.simulations.paths.synthetic import (
    HOUR,
    SyntheticSchedule,
    generate_relays,
)
from hopchain.simulations.paths.torformat import parse_consensus

from hopchain.directory import Consensus, verify_consensus
from hopchain.errors import ConfigError, DirectoryError
from hopchain.geoip import GeoIPDatabase

KINDS: Final = ("synthetic", "hopchain", "tor")


@dataclass(frozen=True, slots=True)
class NetworkSpec:
    """Where the consensuses come from (picklable, so workers rebuild it)."""

    kind: str = "synthetic"
    relays: int = 7000
    period: float = HOUR
    files: tuple[str, ...] = ()
    geoip: str | None = None
    geoip6: str | None = None

    def describe(self) -> str:
        """One line for logs and the JSON summary."""
        if self.kind == "synthetic":
            hours = self.period / HOUR
            return f"synthetic, {self.relays} relays, a consensus every {hours:g} h"
        return f"{self.kind} consensus files: {', '.join(self.files)}"


class Schedule(Protocol):
    """Consensuses for consecutive periods, asked for in order."""

    period: float

    def consensus(self, index: int) -> Consensus:
        """The consensus in force during period ``index``."""
        ...


class FixedSchedule:
    """Consensuses given up front; period ``i`` starts at ``i * period``
    and uses the last consensus whose offset is at most that."""

    def __init__(self, consensuses: list[Consensus], period: float) -> None:
        self.period = period
        first = consensuses[0].valid_after
        self._offsets = [c.valid_after - first for c in consensuses]
        self._consensuses = consensuses

    def consensus(self, index: int) -> Consensus:
        start = index * self.period
        chosen = self._consensuses[0]
        for offset, consensus in zip(self._offsets, self._consensuses, strict=True):
            if offset <= start:
                chosen = consensus
        return chosen


def _read(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from exc


def load_hopchain_consensus(path: str) -> Consensus:
    """A consensus a hopchain client saved, checked against its own signers.

    Raises:
        ConfigError: unreadable, malformed, or its signatures do not verify.
    """
    raw = _read(path)
    try:
        outer = msgpack.unpackb(raw, raw=False)
        body = msgpack.unpackb(outer[0], raw=False)
        keys = [item[0] for item in outer[1]]
        valid_after = float(body["valid_after"])
        return verify_consensus(raw, keys, valid_after)
    except (ValueError, TypeError, KeyError, IndexError, DirectoryError) as exc:
        raise ConfigError(f"{path}: not a hopchain consensus ({exc})") from exc
    except (msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise ConfigError(f"{path}: not a hopchain consensus (bad msgpack)") from exc


def _geoip(spec: NetworkSpec) -> GeoIPDatabase | None:
    if spec.geoip is None and spec.geoip6 is None:
        return None
    v4 = _read(spec.geoip).decode("ascii", "replace") if spec.geoip else None
    v6 = _read(spec.geoip6).decode("ascii", "replace") if spec.geoip6 else None
    return GeoIPDatabase.from_tor_files(v4, v6)


def load_tor_consensuses(spec: NetworkSpec) -> list[Consensus]:
    """Every file of ``spec`` (a directory stands for the files in it),
    sorted by valid-after."""
    geoip = _geoip(spec)
    paths: list[Path] = []
    for name in spec.files:
        path = Path(name)
        paths.extend(
            sorted(p for p in path.iterdir() if p.is_file())
            if path.is_dir()
            else [path]
        )
    if not paths:
        raise ConfigError("no Tor consensus files given")
    consensuses = [
        parse_consensus(
            _read(str(p)).decode("utf-8", "replace"), name=str(p), geoip=geoip
        )
        for p in paths
    ]
    return sorted(consensuses, key=lambda c: c.valid_after)


def open_schedule(spec: NetworkSpec, seed: int) -> Schedule:
    """The consensus schedule for one seed.

    Raises:
        ConfigError: an input file is missing or malformed.
    """
    if spec.kind == "synthetic":
        return SyntheticSchedule(generate_relays(spec.relays, seed), spec.period, seed)
    if spec.kind == "hopchain":
        if len(spec.files) != 1:
            raise ConfigError("--network hopchain takes one consensus file")
        return FixedSchedule([load_hopchain_consensus(spec.files[0])], spec.period)
    if spec.kind == "tor":
        return FixedSchedule(load_tor_consensuses(spec), spec.period)
    raise ConfigError(f"unknown network kind {spec.kind!r} (one of {', '.join(KINDS)})")


def period_count(duration: float, period: float) -> int:
    """How many consensus periods cover ``duration`` seconds."""
    return max(1, math.ceil(duration / period))
