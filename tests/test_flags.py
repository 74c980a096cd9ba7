"""Flags from the authority's measurements (hopchain.flags.assign_flags)."""

import dataclasses

from hopchain.directory import Descriptor
from hopchain.flags import (
    TEST_NETWORK_THRESHOLDS,
    Observation,
    Thresholds,
    assign_flags,
)

BASE = Descriptor(
    nickname="r",
    identity=bytes(32),
    onion_key=bytes(32),
    address="192.0.2.1",
    or_port=9001,
    bandwidth=1_000_000,
    exit_ports=(),
    family=(),
    country="",
    published=0.0,
    test_network=False,
)
HOUR = 3600.0
DAY = 86400.0


def relay(n: int, *, bandwidth: int = 1_000_000, **changes: object) -> Descriptor:
    return dataclasses.replace(
        BASE, identity=bytes([n]) * 32, bandwidth=bandwidth, **changes
    )


def flags_of(
    *observations: Observation,
    thresholds: Thresholds = Thresholds(),  # noqa: B008
    bad: frozenset[bytes] = frozenset(),
) -> list[frozenset[str]]:
    return assign_flags(list(observations), thresholds, bad)


def test_a_new_relay_is_running_and_fast_but_not_yet_stable_or_guard() -> None:
    (flags,) = flags_of(Observation(relay(1), running=True, uptime=0.0))
    assert flags == {"Valid", "Running", "Fast"}


def test_uptime_brings_stable_then_guard() -> None:
    hour, days = flags_of(
        Observation(relay(1), running=True, uptime=2 * HOUR),
        Observation(relay(2), running=True, uptime=2 * DAY),
    )
    assert "Stable" in hour
    assert "Guard" not in hour
    assert {"Stable", "Guard"} <= days


def test_guard_needs_at_least_the_median_fast_bandwidth() -> None:
    slow, median, fast = flags_of(
        Observation(relay(1, bandwidth=200_000), running=True, uptime=2 * DAY),
        Observation(relay(2, bandwidth=1_000_000), running=True, uptime=2 * DAY),
        Observation(relay(3, bandwidth=5_000_000), running=True, uptime=2 * DAY),
    )
    assert "Guard" not in slow
    assert "Guard" in median
    assert "Guard" in fast


def test_slow_and_unreachable_relays() -> None:
    slow, down = flags_of(
        Observation(relay(1, bandwidth=50_000), running=True, uptime=2 * DAY),
        Observation(relay(2), running=False, uptime=2 * DAY),
    )
    assert "Fast" not in slow
    assert "Guard" not in slow
    assert down == {"Valid", "Fast"}


def test_exit_needs_80_and_443_and_bad_exits_are_marked() -> None:
    web, ssh, bad = flags_of(
        Observation(relay(1, exit_ports=((80, 80), (443, 443))), True, 0.0),
        Observation(relay(2, exit_ports=((22, 22),)), True, 0.0),
        Observation(relay(3, exit_ports=((1, 65535),)), True, 0.0),
        bad=frozenset({bytes([3]) * 32}),
    )
    assert "Exit" in web
    assert "BadExit" not in web
    assert "Exit" not in ssh
    assert {"Exit", "BadExit"} <= bad


def test_test_networks_grant_guard_at_once() -> None:
    (flags,) = flags_of(
        Observation(relay(1, bandwidth=0), running=True, uptime=0.0),
        thresholds=TEST_NETWORK_THRESHOLDS,
    )
    assert {"Running", "Fast", "Stable", "Guard"} <= flags
