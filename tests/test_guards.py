"""Entry guards: the persistent set, and path selection that prefers it."""

import dataclasses
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hopchain.directory import Consensus, Descriptor, RouterStatus
from hopchain.errors import ConfigError
from hopchain.guards import LIFETIME, MAX_GUARDS, Guard, GuardSet, retry_interval
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


MINUTE = 60.0
HOUR = 3600.0


@pytest.mark.parametrize(
    ("down_for", "every"),
    [
        (0.0, 10 * MINUTE),
        (6 * HOUR - 1, 10 * MINUTE),
        (6 * HOUR, 90 * MINUTE),
        (96 * HOUR - 1, 90 * MINUTE),
        (96 * HOUR, 4 * HOUR),
        (168 * HOUR, 9 * HOUR),
        (1000 * DAY, 9 * HOUR),
    ],
)
def test_the_retry_schedule_is_guard_specs_for_primary_guards(
    down_for: float, every: float
) -> None:
    assert retry_interval(down_for) == every


def test_a_failed_guard_is_skipped_until_its_retry_and_the_next_one_is_used() -> None:
    guards = GuardSet((Guard(A, 0.0, 90 * DAY), Guard(B, 0.0, 90 * DAY)))
    down = guards.failed(A, 1000.0)
    assert down.preferred(1000.0) == (B,)
    assert down.waiting(1000.0) == {A}
    assert down.preferred(1000.0 + 10 * MINUTE - 1) == (B,)
    assert down.preferred(1000.0 + 10 * MINUTE) == (A, B)  # due for a retry
    for seed in range(10):
        path = select_path(
            NETWORK, PathConstraints(guards=down.preferred(1001.0)), random.Random(seed)
        )
        assert path[0].identity == B
    # the retry fails again: the next one is 10 minutes after that attempt
    again = down.failed(A, 1000.0 + 10 * MINUTE)
    assert again.guards[0].unreachable_since == 1000.0
    assert again.preferred(1000.0 + 20 * MINUTE - 1) == (B,)
    # a circuit through it marks it reachable
    back = again.after_use(A, 1000.0 + 20 * MINUTE, random.Random(1))
    assert back.preferred(1000.0 + 20 * MINUTE) == (A, B)
    assert back.waiting(1000.0 + 20 * MINUTE) == frozenset()


def test_a_relay_that_is_not_a_guard_of_ours_is_not_marked() -> None:
    guards = GuardSet((Guard(A, 0.0, 90 * DAY),))
    assert guards.failed(D, 5.0) == guards


def test_new_guards_avoid_those_that_are_down() -> None:
    """All kept guards are down: a new one is drawn, never a down one while
    another exists; the down ones stay for their retry."""
    guards = GuardSet((Guard(A, 0.0, 90 * DAY), Guard(B, 0.0, 90 * DAY)))
    guards = guards.failed(A, 10.0).failed(B, 10.0)
    assert guards.preferred(11.0) == ()
    for seed in range(30):
        path = select_path(
            NETWORK,
            PathConstraints(guards=(), avoid_guards=guards.waiting(11.0)),
            random.Random(seed),
        )
        assert path[0].identity == C
    grown = guards.after_use(C, 12.0, random.Random(2))
    assert [g.identity for g in grown.guards] == [A, B, C]
    assert grown.preferred(12.0) == (C,)
    assert grown.preferred(10.0 + 10 * MINUTE) == (A, B, C)


def test_avoided_guards_are_used_when_nothing_else_is_left() -> None:
    path = select_path(
        NETWORK,
        PathConstraints(avoid_guards=frozenset({A, B, C})),
        random.Random(3),
    )
    assert path[0].identity in {A, B, C}


def test_the_older_json_form_still_loads() -> None:
    old = '[{"identity": "' + "01" * 32 + '", "added": 1, "expires": 2}]'
    assert GuardSet.from_json(old) == GuardSet((Guard(A, 1.0, 2.0),))
    half = (
        '[{"identity": "' + "01" * 32 + '", "added": 1, "expires": 2, '
        '"unreachable_since": 1, "last_tried": null}]'
    )
    with pytest.raises(ConfigError, match="half-marked"):
        GuardSet.from_json(half)
    with pytest.raises(ConfigError):
        GuardSet.from_json(half.replace("null", '"soon"'))


identities = st.sampled_from([bytes([n]) * 32 for n in range(1, 13)])
operations = st.lists(
    st.tuples(st.booleans(), identities, st.floats(0.0, 3 * DAY)), max_size=40
)


@given(operations, st.integers(0, 2**32))
def test_prop_guard_set_invariants(
    ops: list[tuple[bool, bytes, float]], seed: int
) -> None:
    """Whatever happens: no duplicates, caps held, JSON round-trips, a guard
    just marked down is not preferred until its retry time, and one just
    used is preferred."""
    rng = random.Random(seed)
    guards = GuardSet()
    now = 0.0
    for used, identity, step in ops:
        now += step
        if used:
            guards = guards.after_use(identity, now, rng)
            assert identity in guards.preferred(now)
        else:
            before = next((g for g in guards.guards if g.identity == identity), None)
            guards = guards.failed(identity, now)
            if before is not None and before.expires > now:
                since = before.unreachable_since
                since = now if since is None else since
                due = now + retry_interval(now - since)
                assert identity not in guards.preferred(min(due, before.expires) - 1e-3)
                kept = any(g.identity == identity for g in guards.guards)
                if due < before.expires and kept:  # (the cap may drop it)
                    assert identity in guards.preferred(due)
        ids = [g.identity for g in guards.guards]
        assert len(ids) == len(set(ids))
        assert sum(g.unreachable_since is None for g in guards.guards) <= MAX_GUARDS
        assert sum(g.unreachable_since is not None for g in guards.guards) <= 8
        assert GuardSet.from_json(guards.to_json()) == guards
