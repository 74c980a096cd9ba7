"""Relay flags, decided by an authority from what it has measured.

A pure function of each relay's descriptor and the authority's observations
(is it reachable now, since when has it been up), so it is tested without a
network and simulations can call it.  The thresholds follow Tor's spirit
(dir-spec section 3.4.2) in a simplified form:

* Running: the last reachability test succeeded;
* Valid: listed at all (every relay that passed a test);
* Fast: bandwidth of at least ``fast_bandwidth`` (100 kB/s);
* Stable: up (reachable without interruption) for ``stable_uptime`` (1 h);
* Guard: Fast, Stable, up for ``guard_uptime`` (1 day), and bandwidth at
  least the median of the Fast relays;
* Exit: its exit ports include at least two of 80, 443 and 6667 (Tor's
  rule); clients only exit through Exit-flagged relays, so an exit for other
  ports alone is listed but not used;
* BadExit: the authority's operator marked it (its fingerprint is listed).

A declared test network uses ``TEST_NETWORK_THRESHOLDS`` (no waiting, as
Tor's TestingTorNetwork does), so a demo has guards at once.  Bandwidth is
``descriptor.bandwidth`` of each observation; the authority passes the
descriptor with the bandwidth it lists (``voting.listed_bandwidth``: the
observed throughput capped by the declared one), not the declared value.
"""

import statistics
from dataclasses import dataclass

from hopchain.directory import Descriptor

EXIT_PORTS = (80, 443, 6667)


def earns_exit_flag(exit_ports: tuple[tuple[int, int], ...]) -> bool:
    """Whether exit port ranges include at least two of ``EXIT_PORTS``."""
    return sum(any(lo <= p <= hi for lo, hi in exit_ports) for p in EXIT_PORTS) >= 2


@dataclass(frozen=True, slots=True)
class Thresholds:
    """What a relay must show for each flag."""

    fast_bandwidth: int = 100_000
    stable_uptime: float = 3600.0
    guard_uptime: float = 86400.0


TEST_NETWORK_THRESHOLDS = Thresholds(
    fast_bandwidth=0, stable_uptime=0.0, guard_uptime=0.0
)


@dataclass(frozen=True, slots=True)
class Observation:
    """What the authority knows of one relay beyond its descriptor."""

    descriptor: Descriptor
    running: bool
    uptime: float


def assign_flags(
    relays: list[Observation], thresholds: Thresholds, bad_exits: frozenset[bytes]
) -> list[frozenset[str]]:
    """The flags of each relay, in the order given.

    Args:
        relays: every relay the authority lists.
        thresholds: the bars for Fast, Stable and Guard.
        bad_exits: identity keys the operator marked as bad exits.
    """
    fast = [
        r.descriptor.bandwidth
        for r in relays
        if r.descriptor.bandwidth >= thresholds.fast_bandwidth
    ]
    guard_bandwidth = statistics.median(fast) if fast else 0
    result = []
    for relay in relays:
        desc = relay.descriptor
        flags = {"Valid"}
        if relay.running:
            flags.add("Running")
        is_fast = desc.bandwidth >= thresholds.fast_bandwidth
        is_stable = relay.running and relay.uptime >= thresholds.stable_uptime
        if is_fast:
            flags.add("Fast")
        if is_stable:
            flags.add("Stable")
        if (
            is_fast
            and is_stable
            and relay.uptime >= thresholds.guard_uptime
            and desc.bandwidth >= guard_bandwidth
        ):
            flags.add("Guard")
        if earns_exit_flag(desc.exit_ports):
            flags.add("Exit")
        if desc.exit_ports and desc.identity in bad_exits:
            flags.add("BadExit")
        result.append(frozenset(flags))
    return result
