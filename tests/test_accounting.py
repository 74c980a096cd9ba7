"""Accounting periods (hopchain/accounting.py)."""

from datetime import UTC, datetime

import pytest

from hopchain.accounting import Accounting, parse_period, period_bounds


def ts(*args: int) -> float:
    return datetime(*args, tzinfo=UTC).timestamp()  # type: ignore[misc]


def test_parse_period() -> None:
    assert parse_period("day") == "day"
    assert parse_period("3600") == 3600
    for bad in ("year", "0", "-5", "1.5", ""):
        with pytest.raises(ValueError, match="period"):
            parse_period(bad)


@pytest.mark.parametrize(
    ("period", "now", "start", "end"),
    [
        ("day", ts(2026, 3, 5, 13, 7), ts(2026, 3, 5), ts(2026, 3, 6)),
        ("week", ts(2026, 3, 5, 13, 7), ts(2026, 3, 2), ts(2026, 3, 9)),  # Mon-Mon
        ("month", ts(2026, 1, 31, 23, 59), ts(2026, 1, 1), ts(2026, 2, 1)),
        ("month", ts(2026, 12, 15), ts(2026, 12, 1), ts(2027, 1, 1)),
        ("month", ts(2028, 2, 29, 12), ts(2028, 2, 1), ts(2028, 3, 1)),
        (3600, ts(2026, 3, 5, 13, 7), ts(2026, 3, 5, 13), ts(2026, 3, 5, 14)),
    ],
)
def test_period_bounds(period: str | int, now: float, start: float, end: float) -> None:
    assert period_bounds(period, now) == (start, end)


def test_accounting_is_exhausted_until_the_period_ends() -> None:
    start = ts(2026, 3, 5)
    acct = Accounting(1000, "day", start + 10)
    acct.add(600, start + 20)
    assert not acct.exhausted(start + 30)
    acct.add(400, start + 40)
    assert acct.exhausted(start + 50)
    assert acct.exhausted(start + 86399)
    assert not acct.exhausted(start + 86400)  # a new day
    assert acct.used == 0


def test_accounting_without_a_maximum_is_never_exhausted() -> None:
    acct = Accounting(0, 60, 0.0)
    acct.add(10**15, 1.0)
    assert not acct.exhausted(1.0)


def test_a_clock_stepping_back_starts_a_new_period() -> None:
    acct = Accounting(10, 60, 600.0)
    acct.add(10, 601.0)
    assert acct.exhausted(602.0)
    assert not acct.exhausted(500.0)
