"""The adversary: relays it adds, and relays it runs or has taken over.

* Added relays: guards holding a fraction ``guard_fraction`` of all guard
  bandwidth and exits holding ``exit_fraction`` of all exit bandwidth, after
  they join (``b / (total + b) = f``), computed on the first consensus and
  kept for the run.  They are always running, declare no family, and each
  sits in its own /32 of the documentation prefix 3fff::/20, so path
  selection may pair any adversary guard with any adversary exit (an
  adversary that declared a family would be kept apart by the client).
  Guards are Guard, Fast, Stable; exits are Exit, Fast, Stable and accept
  every port.
* Taken over: every relay in ``countries`` (as the consensus lists it), and
  every relay named in ``families`` (nickname, Tor fingerprint or hopchain
  identity in hex) together with its declared family.

A circuit is compromised when its first and last hop both belong to the
adversary (with one hop, that one relay), as in TorPS.
"""

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Final

from hopchain.simulations.paths.synthetic import identity_for

from hopchain.directory import Consensus, Descriptor, RouterStatus
from hopchain.errors import ConfigError
from hopchain.pathpool import usable_exit
from hopchain.weights import Position, consensus_weights, position_weight

ALL_PORTS: Final = ((1, 65535),)
GUARD_FLAGS: Final = frozenset({"Running", "Valid", "Fast", "Stable", "Guard"})
EXIT_FLAGS: Final = frozenset({"Running", "Valid", "Fast", "Stable", "Exit"})


@dataclass(frozen=True, slots=True)
class AdversarySpec:
    """What the adversary holds (picklable)."""

    guard_fraction: float = 0.0
    exit_fraction: float = 0.0
    guard_relays: int = 5
    exit_relays: int = 5
    country: str = ""
    countries: frozenset[str] = frozenset()
    families: tuple[str, ...] = ()

    def check(self) -> None:
        """Raises ConfigError for impossible values."""
        for name, value in (
            ("guard", self.guard_fraction),
            ("exit", self.exit_fraction),
        ):
            if not 0.0 <= value < 1.0:
                raise ConfigError(f"adversary {name} fraction must be in [0, 1)")
        if self.guard_relays < 1 or self.exit_relays < 1:
            raise ConfigError("the adversary needs at least one relay of each kind")

    def with_bandwidth(self, fraction: float) -> "AdversarySpec":
        """The same adversary with ``fraction`` of guard and exit bandwidth."""
        return replace(self, guard_fraction=fraction, exit_fraction=fraction)


def _share_needed(fraction: float, total: int) -> int:
    """Bandwidth b with b / (total + b) == fraction."""
    return round(fraction / (1.0 - fraction) * total)


def _added_relays(spec: AdversarySpec, first: Consensus) -> tuple[RouterStatus, ...]:
    running = [r for r in first.relays if "Running" in r.flags]
    guard_total = sum(
        max(1, r.descriptor.bandwidth) for r in running if "Guard" in r.flags
    )
    exit_total = sum(
        max(1, r.descriptor.bandwidth)
        for r in running
        if "Exit" in r.flags and "BadExit" not in r.flags
    )
    added: list[RouterStatus] = []
    for kind, fraction, count, total, flags, ports in (
        ("guard", spec.guard_fraction, spec.guard_relays, guard_total, GUARD_FLAGS, ()),
        (
            "exit",
            spec.exit_fraction,
            spec.exit_relays,
            exit_total,
            EXIT_FLAGS,
            ALL_PORTS,
        ),
    ):
        if fraction <= 0.0:
            continue
        bandwidth = _share_needed(fraction, total)
        for i in range(count):
            share = bandwidth // count + (1 if i < bandwidth % count else 0)
            n = len(added)
            descriptor = Descriptor(
                nickname=f"adversary{kind}{i}",
                identity=identity_for(f"adversary {kind} {i}"),
                onion_key=bytes(32),
                address=f"3fff:{n:x}::1",
                or_port=9001,
                bandwidth=max(1, share),
                exit_ports=ports,
                family=(),
                country=spec.country,
                published=first.valid_after,
                test_network=False,
            )
            added.append(RouterStatus(descriptor, flags))
    return tuple(added)


def _named(relay: Descriptor, name: str) -> bool:
    lowered = name.lower()
    return (
        relay.nickname.lower() == lowered
        or relay.identity.hex() == lowered
        or relay.identity[:20].hex() == lowered
    )


class Adversary:
    """The adversary applied to a schedule's consensuses."""

    def __init__(self, spec: AdversarySpec, first: Consensus) -> None:
        spec.check()
        self.spec = spec
        self.added = _added_relays(spec, first)
        self._added_ids = frozenset(r.descriptor.identity for r in self.added)
        self._last: tuple[Consensus, Consensus, frozenset[bytes]] | None = None
        if spec.families and not any(
            _named(r.descriptor, name) for r in first.relays for name in spec.families
        ):
            raise ConfigError(
                "no relay in the first consensus is named " + ", ".join(spec.families)
            )

    def apply(self, consensus: Consensus) -> tuple[Consensus, frozenset[bytes]]:
        """The consensus with the added relays, and the adversary's
        identities in it (cached for the last consensus)."""
        if self._last is not None and self._last[0] is consensus:
            return self._last[1], self._last[2]
        members = set(self._added_ids)
        countries = {c.upper() for c in self.spec.countries}
        for status in consensus.relays if countries or self.spec.families else ():
            d = status.descriptor
            if d.country.upper() in countries:
                members.add(d.identity)
            if any(_named(d, name) for name in self.spec.families):
                members.add(d.identity)
                members.update(d.family)
        result = replace(consensus, relays=consensus.relays + self.added)
        self._last = (consensus, result, frozenset(members))
        return result, frozenset(members)


def bandwidth_shares(
    consensus: Consensus, members: frozenset[bytes]
) -> tuple[float, float]:
    """The adversary's share of running guard bandwidth and of running exit
    bandwidth (Exit, not BadExit) in ``consensus``."""
    return _share(consensus, members, "Guard"), _share(consensus, members, "Exit")


def selection_shares(
    consensus: Consensus, members: frozenset[bytes]
) -> tuple[float, float]:
    """The adversary's share of the guard and of the exit *selection* weight
    in ``consensus``: bandwidth times Tor's position weight
    (``hopchain.weights``), over the relays path selection draws guards and
    exits from.  With the position weights, an exit-only relay weighs more
    in the exit position than an exit that is also a guard, so these differ
    from ``bandwidth_shares``; their product is the expected fraction of
    compromised circuits when guards are drawn fresh."""
    weights = consensus_weights(consensus)

    def share(position: Position, eligible: Callable[[RouterStatus], bool]) -> float:
        total = owned = 0
        for r in consensus.relays:
            if "Running" not in r.flags or not eligible(r):
                continue
            weight = max(1, r.descriptor.bandwidth) * position_weight(
                r, position, weights
            )
            total += weight
            if r.descriptor.identity in members:
                owned += weight
        return owned / total if total else 0.0

    return (
        share(Position.GUARD, lambda r: "Guard" in r.flags),
        share(Position.EXIT, lambda r: usable_exit(r, None)),
    )


def _share(consensus: Consensus, members: frozenset[bytes], flag: str) -> float:
    total = owned = 0
    for r in consensus.relays:
        if "Running" not in r.flags or flag not in r.flags or "BadExit" in r.flags:
            continue
        weight = max(1, r.descriptor.bandwidth)
        total += weight
        if r.descriptor.identity in members:
            owned += weight
    return owned / total if total else 0.0
