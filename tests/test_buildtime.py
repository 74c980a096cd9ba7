"""The learned circuit build timeout."""

from hypothesis import given
from hypothesis import strategies as st

from hopchain.buildtime import CEILING, FLOOR, MIN_SAMPLES, BuildTimes


def test_the_ceiling_until_enough_builds() -> None:
    times = BuildTimes()
    for _ in range(MIN_SAMPLES - 1):
        times.record(0.01)
    assert times.timeout == CEILING
    times.record(0.01)
    assert times.timeout == FLOOR  # fast builds: never below the floor


def test_twice_the_80th_percentile() -> None:
    times = BuildTimes()
    for n in range(1, 101):  # 0.1 .. 10.0 s
        times.record(n / 10)
    assert 15.0 < times.timeout < 17.0  # p80 is about 8 s


def test_a_slowdown_raises_the_timeout() -> None:
    times = BuildTimes()
    for _ in range(100):
        times.record(0.5)
    before = times.timeout
    for _ in range(100):
        times.record(5.0)
    assert times.timeout > before


@given(st.lists(st.floats(0.0, 1000.0), min_size=MIN_SAMPLES, max_size=300))
def test_prop_timeout_stays_within_bounds(samples: list[float]) -> None:
    times = BuildTimes()
    for sample in samples:
        times.record(sample)
    assert FLOOR <= times.timeout <= CEILING
