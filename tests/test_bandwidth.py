"""The relay's observed bandwidth (hopchain.bandwidth.ThroughputMeter)."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hopchain.bandwidth import HISTORY, WINDOW, ThroughputMeter


def test_a_new_meter_has_observed_nothing() -> None:
    assert ThroughputMeter().observed(1000.0) == 0


def test_the_best_ten_second_window_counts() -> None:
    meter = ThroughputMeter()
    for second in range(10):  # 100 kB/s for 10 s, in window [0, 10)
        meter.record(float(second), 100_000)
    for second in range(10, 30):  # then 20 kB/s
        meter.record(float(second), 20_000)
    assert meter.observed(30.0) == 100_000


def test_the_window_still_filling_counts_as_a_lower_bound() -> None:
    meter = ThroughputMeter()
    meter.record(5.0, 50_000)
    assert meter.observed(6.0) == 5_000


def test_traffic_older_than_a_day_is_forgotten() -> None:
    meter = ThroughputMeter()
    meter.record(0.0, 1_000_000)
    meter.record(HISTORY / 2, 10_000)
    assert meter.observed(HISTORY - WINDOW) == 100_000
    assert meter.observed(HISTORY + WINDOW) == 1_000


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="window"):
        ThroughputMeter(window=0.0)
    with pytest.raises(ValueError, match="window"):
        ThroughputMeter(window=20.0, history=10.0)


@given(
    st.lists(
        st.tuples(st.floats(0, 3 * HISTORY), st.integers(0, 10**7)), max_size=60
    ).map(sorted)
)
def test_prop_observed_is_the_best_window_of_the_last_day(
    events: list[tuple[float, int]],
) -> None:
    meter = ThroughputMeter()
    for now, nbytes in events:
        meter.record(now, nbytes)
    end = events[-1][0] if events else 0.0
    totals: dict[float, int] = {}
    for now, nbytes in events:
        totals[now // WINDOW] = totals.get(now // WINDOW, 0) + nbytes
    recent = [
        b for slot, b in totals.items() if slot > end // WINDOW - HISTORY / WINDOW
    ]
    assert meter.observed(end) == int(max(recent, default=0) / WINDOW)
    assert len(meter._done) <= HISTORY / WINDOW
