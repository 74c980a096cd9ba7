"""Entry guards: the persistent set, and path selection that prefers it."""

import dataclasses
import random

import pytest

from hopchain.directory import Consensus, Descriptor, RouterStatus
from hopchain.errors import ConfigError
from hopchain.guards import LIFETIME, MAX_GUARDS, Guard, GuardSet
from hopchain.path import PathConstraints, select_path

DAY = 86400.0
A, B, C, D = (bytes([n]) * 32 for n in (1, 2, 3, 4))


def test_a_guard_is_added_once_with_an_expiry_in_the_lifetime() -> None:
    rng = random.Random(1)
    guards = GuardSet().after_use(A, 1000.0, rng)
    assert guards.after_use(A, 2000.0, rng) == guards
    (guard,) = guards.guards
    assert guard.identity == A
    assert 1000.0 + LIFETIME[0] <= guard.expires <= 1000.0 + LIFETIME[1]
    assert guards.preferred(2000.0) == (A,)


def test_expired_guards_rotate_out() -> None:
    guards = GuardSet((Guard(A, 0.0, 10 * DAY), Guard(B, 0.0, 90 * DAY)))
    assert guards.preferred(DAY) == (A, B)
    assert guards.preferred(11 * DAY) == (B,)
    assert guards.after_use(C, 11 * DAY, random.Random(2)).preferred(11 * DAY) == (B, C)


def test_the_set_is_capped_keeping_the_newest() -> None:
    rng = random.Random(3)
    guards = GuardSet()
    for identity in (A, B, C, D):
        guards = guards.after_use(identity, 0.0, rng)
    assert len(guards.guards) == MAX_GUARDS
    assert guards.preferred(1.0) == (B, C, D)


def test_json_round_trip_and_malformed_state() -> None:
    guards = (
        GuardSet()
        .after_use(A, 5.0, random.Random(4))
        .after_use(B, 6.0, random.Random(5))
    )
    assert GuardSet.from_json(guards.to_json()) == guards
    for bad in ("{", "[1]", '[{"identity": "00", "added": 1, "expires": 2}]', "[{}]"):
        with pytest.raises(ConfigError):
            GuardSet.from_json(bad)


def _status(
    n: int, flags: set[str], exit_ports: tuple[tuple[int, int], ...] = ()
) -> RouterStatus:
    desc = Descriptor(
        nickname=f"r{n}",
        identity=bytes([n]) * 32,
        onion_key=bytes(32),
        address=f"10.{n}.0.1",
        or_port=9001,
        bandwidth=1000,
        exit_ports=exit_ports,
        family=(),
        country="",
        published=0.0,
        test_network=False,
    )
    return RouterStatus(desc, frozenset(flags))


def _consensus(*relays: RouterStatus) -> Consensus:
    return Consensus(0.0, 1.0, 2.0, relays, frozenset())


NETWORK = _consensus(
    _status(1, {"Running", "Guard"}),
    _status(2, {"Running", "Guard"}),
    _status(3, {"Running", "Guard"}),
    _status(4, {"Running"}),
    _status(5, {"Running", "Exit"}, ((1, 65535),)),
)


def test_path_selection_uses_the_first_usable_preferred_guard() -> None:
    for seed in range(20):
        path = select_path(NETWORK, PathConstraints(guards=(B, A)), random.Random(seed))
        assert path[0].identity == B


def test_a_down_guard_is_skipped_for_the_next() -> None:
    down = dataclasses.replace(
        NETWORK,
        relays=(
            _status(1, {"Running", "Guard"}),
            _status(2, {"Guard"}),  # not Running
            *NETWORK.relays[2:],
        ),
    )
    for seed in range(20):
        path = select_path(down, PathConstraints(guards=(B, A)), random.Random(seed))
        assert path[0].identity == A
