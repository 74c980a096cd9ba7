"""The onion key rotation schedule, with time passed in."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hopchain.errors import ConfigError
from hopchain.onionrotation import FUTURE_SLACK, RotationPolicy, plan

DAY = 86400.0
POLICY = RotationPolicy(lifetime=28 * DAY, grace=7 * DAY)


def test_defaults_are_tors() -> None:
    assert RotationPolicy() == POLICY


def test_a_fresh_key_waits_for_its_lifetime() -> None:
    step = plan(created=1000.0, has_previous=False, now=1000.0 + DAY, policy=POLICY)
    assert not step.rotate
    assert not step.drop_previous
    assert step.wake_at == 1000.0 + 28 * DAY


def test_a_key_past_its_lifetime_is_rotated_and_the_grace_begins() -> None:
    now = 1000.0 + 28 * DAY
    step = plan(created=1000.0, has_previous=False, now=now, policy=POLICY)
    assert step.rotate
    assert not step.drop_previous
    assert step.wake_at == now + 7 * DAY


def test_the_previous_key_is_kept_for_the_grace_period_only() -> None:
    kept = plan(created=0.0, has_previous=True, now=7 * DAY - 1, policy=POLICY)
    assert not kept.drop_previous
    assert kept.wake_at == 7 * DAY
    dropped = plan(created=0.0, has_previous=True, now=7 * DAY, policy=POLICY)
    assert dropped.drop_previous
    assert not dropped.rotate
    assert dropped.wake_at == 28 * DAY


def test_a_key_from_the_future_is_replaced() -> None:
    step = plan(created=FUTURE_SLACK + 10, has_previous=False, now=0.0, policy=POLICY)
    assert step.rotate


@pytest.mark.parametrize(
    ("lifetime", "grace"), [(DAY, DAY), (DAY, 0.0), (DAY, 2 * DAY)]
)
def test_grace_must_be_shorter_than_the_lifetime(lifetime: float, grace: float) -> None:
    with pytest.raises(ConfigError, match="onion_key_grace"):
        RotationPolicy(lifetime=lifetime, grace=grace)


@given(
    lifetime=st.floats(10, 1e7),
    grace_share=st.floats(0.01, 0.99),
    gaps=st.lists(st.floats(0.0, 2e6), min_size=1, max_size=60),
)
def test_following_the_plan_keeps_keys_young_and_answers_through_the_grace(
    lifetime: float, grace_share: float, gaps: list[float]
) -> None:
    """A relay that wakes at arbitrary times (never later than ``wake_at``
    plus the gap) never uses a key much past its lifetime, and drops a
    previous key only after its grace period."""
    policy = RotationPolicy(lifetime=lifetime, grace=lifetime * grace_share)
    now, created, previous_since = 0.0, 0.0, None
    for gap in gaps:
        step = plan(created, previous_since is not None, now, policy)
        if step.rotate:
            created, previous_since = now, now
        elif step.drop_previous:
            assert previous_since is not None
            assert now >= previous_since + policy.grace
            previous_since = None
        assert now < created + policy.lifetime
        assert step.wake_at > now
        now = min(now + gap, step.wake_at) if gap else step.wake_at
