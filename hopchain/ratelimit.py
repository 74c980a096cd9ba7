"""Token buckets: the relay's bandwidth limit and its per-address DoS limits.

A ``TokenBucket`` holds up to ``burst`` tokens (bytes, or circuit
creations) and gains ``rate`` tokens per second.  Time is an argument
(``now``, in seconds on any monotonic scale), so the buckets are pure and a
test can drive them with any clock.  A bucket with ``rate == 0`` is
unlimited.

``AddressBuckets`` keeps one bucket per source address (circuit creations
per second per client address) in a table of bounded size: when the table is
full, the entry that was used least recently goes.  An evicted address
starts again with a full bucket, which is the price of bounded memory; the
table is large (``DEFAULT_MAX_ADDRESSES``) so that only a flood of distinct
addresses evicts anyone.

``AddressCounts`` counts concurrent things (links) per address and drops an
address when its count reaches zero, so it holds only addresses with an open
link and needs no eviction.
"""

from collections import OrderedDict
from typing import Final

__all__ = [
    "DEFAULT_MAX_ADDRESSES",
    "AddressBuckets",
    "AddressCounts",
    "TokenBucket",
]

DEFAULT_MAX_ADDRESSES: Final = 65536


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved; full at the start.

    ``take`` is all-or-nothing (a circuit creation); ``consume`` may leave
    the bucket in debt (bytes already read), which later refills pay back.
    Without a ``now`` at creation, the clock starts at the first use.
    """

    def __init__(self, rate: float, burst: float, now: float | None = None) -> None:
        if rate < 0 or burst < 0:
            raise ValueError("rate and burst must not be negative")
        if rate > 0 and burst <= 0:
            raise ValueError("a limited bucket needs a positive burst")
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._updated = now

    @property
    def unlimited(self) -> bool:
        """True when the rate is 0 (no limit)."""
        return self.rate == 0

    def available(self, now: float) -> float:
        """Tokens in the bucket at ``now`` (negative while in debt)."""
        self._refill(now)
        return self._tokens

    def take(self, n: float, now: float) -> bool:
        """Take ``n`` tokens if the bucket has them; False (nothing taken) if not."""
        if self.unlimited:
            return True
        self._refill(now)
        if self._tokens < n:
            return False
        self._tokens -= n
        return True

    def consume(self, n: float, now: float) -> None:
        """Take ``n`` tokens even if that leaves the bucket in debt."""
        if self.unlimited:
            return
        self._refill(now)
        self._tokens -= n

    def wait_time(self, n: float, now: float) -> float:
        """Seconds from ``now`` until the bucket holds ``n`` tokens (0: now).

        ``n`` above the burst is capped at the burst, since no more is ever
        saved.
        """
        if self.unlimited:
            return 0.0
        self._refill(now)
        missing = min(n, self.burst) - self._tokens
        return max(0.0, missing / self.rate)

    def reconfigure(self, rate: float, burst: float, now: float) -> None:
        """Change the rate and burst (a reload), keeping the tokens saved."""
        self._refill(now)
        self.rate = rate
        self.burst = burst
        self._tokens = min(self._tokens, burst)

    def _refill(self, now: float) -> None:
        if self._updated is None:
            self._updated = now
        elapsed = now - self._updated
        if elapsed > 0:
            self._tokens = min(self.burst, self._tokens + elapsed * self.rate)
            self._updated = now


class AddressBuckets:
    """One ``TokenBucket`` per address, least recently used evicted first."""

    def __init__(
        self, rate: float, burst: float, *, max_addresses: int = DEFAULT_MAX_ADDRESSES
    ) -> None:
        if max_addresses < 1:
            raise ValueError("max_addresses must be positive")
        self.rate = rate
        self.burst = burst
        self.max_addresses = max_addresses
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, address: str, now: float, n: float = 1) -> bool:
        """Take ``n`` tokens from ``address``'s bucket; False if it is empty."""
        if self.rate == 0:
            return True
        bucket = self._buckets.get(address)
        if bucket is None:
            if len(self._buckets) >= self.max_addresses:
                self._buckets.popitem(last=False)
            bucket = self._buckets[address] = TokenBucket(self.rate, self.burst, now)
        else:
            self._buckets.move_to_end(address)
        return bucket.take(n, now)

    def reconfigure(self, rate: float, burst: float) -> None:
        """New limits; the table is cleared (every address starts full)."""
        self.rate = rate
        self.burst = burst
        self._buckets.clear()


class AddressCounts:
    """How many of something each address holds now, with a per-address cap."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.total = 0
        self._counts: dict[str, int] = {}

    def __len__(self) -> int:
        """The number of addresses counted."""
        return len(self._counts)

    def count(self, address: str) -> int:
        """The current count for ``address``."""
        return self._counts.get(address, 0)

    def acquire(self, address: str) -> bool:
        """Count one more for ``address``, unless it is at the limit (0: none)."""
        current = self._counts.get(address, 0)
        if self.limit and current >= self.limit:
            return False
        self._counts[address] = current + 1
        self.total += 1
        return True

    def release(self, address: str) -> None:
        """Count one less for ``address`` (which must hold at least one)."""
        left = self._counts[address] - 1
        self.total -= 1
        if left:
            self._counts[address] = left
        else:
            del self._counts[address]
