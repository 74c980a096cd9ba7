"""A relay's observed bandwidth: the throughput it has actually relayed.

As Tor's relays do (dir-spec, "bandwidth" line: the observed value), a
relay reports the highest average rate it sustained over ``WINDOW``
seconds (10 s) during the last ``HISTORY`` (one day).  The shell feeds the
size of every relayed cell with the time (``record``) and asks for the
figure when it signs a descriptor (``observed``).  Time is passed in, so
the meter is tested without a clock.

Windows are consecutive 10-second slots on the time axis; only slots that
saw traffic are kept, so memory is at most ``HISTORY / WINDOW`` (8,640)
small tuples.  The slot still filling counts too (its bytes over the whole
window: a lower bound of its rate).
"""

import math
from collections import deque
from typing import Final

WINDOW: Final = 10.0
HISTORY: Final = 86400.0


class ThroughputMeter:
    """The highest ``window``-second average of bytes/s over ``history``."""

    def __init__(self, window: float = WINDOW, history: float = HISTORY) -> None:
        if window <= 0 or history < window:
            raise ValueError("need 0 < window <= history")
        self.window = window
        self.history = history
        self._slot = -math.inf  # index of the slot being filled
        self._bytes = 0
        self._done: deque[tuple[float, int]] = deque()  # (slot index, bytes)

    def record(self, now: float, nbytes: int) -> None:
        """Count ``nbytes`` relayed at time ``now`` (seconds, monotonic)."""
        slot = now // self.window
        if slot != self._slot:
            self._roll(slot)
        self._bytes += nbytes

    def observed(self, now: float) -> int:
        """The highest average rate (bytes/s, rounded down) in the history."""
        self._roll(now // self.window)
        best = max((b for _, b in self._done), default=0)
        return int(max(best, self._bytes) / self.window)

    def _roll(self, slot: float) -> None:
        """Close the current slot if ``slot`` is a later one; drop old slots."""
        if slot > self._slot:
            if self._bytes:
                self._done.append((self._slot, self._bytes))
            self._slot = slot
            self._bytes = 0
        oldest = slot - self.history / self.window
        while self._done and self._done[0][0] <= oldest:
            self._done.popleft()
