"""Traffic accounting: at most so many relayed bytes per period (Tor's
AccountingMax).

Periods are aligned to UTC calendar boundaries: a ``day`` starts at
midnight, a ``week`` on Monday at midnight, a ``month`` on the first at
midnight; a period given in seconds starts at a multiple of that many seconds
since the Unix epoch.  Once the bytes of the current period reach the
maximum, ``exhausted`` is true until the next period starts (the relay then
refuses new circuits; circuits already built keep running).  Counts are kept
in memory only: a restart begins the period at zero.
"""

from datetime import UTC, datetime, timedelta
from typing import Final

__all__ = ["NAMED_PERIODS", "Accounting", "parse_period", "period_bounds"]

NAMED_PERIODS: Final = ("day", "week", "month")


def parse_period(text: str) -> str | int:
    """``day``, ``week``, ``month`` or a whole number of seconds (> 0).

    Raises:
        ValueError: anything else.
    """
    if text in NAMED_PERIODS:
        return text
    try:
        seconds = int(text)
    except ValueError:
        raise ValueError(
            f"period must be day, week, month or seconds, not {text!r}"
        ) from None
    if seconds <= 0:
        raise ValueError("period in seconds must be positive")
    return seconds


def period_bounds(period: str | int, now: float) -> tuple[float, float]:
    """The (start, end) of the period holding ``now`` (seconds since the epoch)."""
    if isinstance(period, int):
        start = now // period * period
        return start, start + period
    moment = datetime.fromtimestamp(now, UTC)
    day = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "day":
        begin, end = day, day + timedelta(days=1)
    elif period == "week":
        begin = day - timedelta(days=day.weekday())
        end = begin + timedelta(weeks=1)
    elif period == "month":
        begin = day.replace(day=1)
        end = (begin + timedelta(days=32)).replace(day=1)
    else:
        raise ValueError(f"unknown period {period!r}")
    return begin.timestamp(), end.timestamp()


class Accounting:
    """Bytes used in the current period against ``max_bytes`` (0: no limit)."""

    def __init__(self, max_bytes: int, period: str | int, now: float) -> None:
        self.max_bytes = max_bytes
        self.period = period
        self.used = 0
        self.start, self.end = period_bounds(period, now)

    def add(self, n: int, now: float) -> None:
        """Count ``n`` bytes at ``now``."""
        self._roll(now)
        self.used += n

    def exhausted(self, now: float) -> bool:
        """Whether this period's bytes are used up."""
        self._roll(now)
        return self.max_bytes > 0 and self.used >= self.max_bytes

    def _roll(self, now: float) -> None:
        if now >= self.end or now < self.start:
            self.start, self.end = period_bounds(self.period, now)
            self.used = 0
