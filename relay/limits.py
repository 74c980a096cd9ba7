"""A relay's resource limits: bandwidth, accounting, per-address DoS limits,
the handshake deadline and the queued-cell memory cap.

``hopchain.relaylimits.RelayLimits`` is the configuration (with the
``hopchain relay`` options); ``RelayLimiter`` applies it for one
``RelayNode`` (``RelayNode.limits``) and holds the counters the metrics
read:

* ``hits``: limit hits by kind (``HIT_KINDS``);
* ``queued_bytes`` / ``queued_bytes_peak``: cell bytes queued on all links
  now, and the highest total seen after the cap was enforced;
* ``oom_circuits_closed`` / ``oom_bytes_freed``: what the out-of-memory
  handler has done;
* ``accounting_used`` / ``hibernating``: this accounting period's bytes, and
  whether new circuits are refused because of them;
* ``links_open``: inbound links now (``links_from(address)``: from one
  address);
* ``throughput``: the relayed bytes read, for the descriptor's observed
  bandwidth (``hopchain.bandwidth``).

The pure parts are in the core: ``hopchain.ratelimit`` (token buckets),
``hopchain.accounting`` and ``hopchain.oom``.  Bandwidth is limited on
reads only (Tor has a read and a write bucket): every relayed byte is read
once, from a link or an exit connection, and leaves in about the same
number of bytes, so the write rate follows the read rate.
"""

import logging
from collections.abc import Callable
from typing import Final

import trio
from hopchain.relay.net import wall_clock

from hopchain.accounting import Accounting
from hopchain.bandwidth import ThroughputMeter
from hopchain.oom import QueueBudget
from hopchain.ratelimit import AddressBuckets, AddressCounts, TokenBucket
from hopchain.relaylimits import RelayLimits

__all__ = ["HIT_KINDS", "RelayLimiter"]

logger = logging.getLogger(__name__)

HIT_KINDS: Final = (
    "links_per_address",
    "new_links_rate",
    "circuit_creation_rate",
    "handshake_timeout",
    "accounting",
    "bandwidth",
    "oom",
)
# A read waits until the bucket holds this many bytes (or its whole burst),
# so a throttled link reads in chunks worth a system call.
MIN_READ: Final = 16 * 1024
LOG_INTERVAL: Final = 60.0


class _LogThrottle:
    """At most one log line per kind per ``LOG_INTERVAL``, with a count of
    the hits in between."""

    def __init__(self) -> None:
        self._last: dict[str, float] = {}
        self._since: dict[str, int] = {}

    def hit(self, kind: str, now: float, message: str, *args: object) -> None:
        self._since[kind] = self._since.get(kind, 0) + 1
        last = self._last.get(kind)
        if last is not None and now - last < LOG_INTERVAL:
            return
        count = self._since.pop(kind)
        self._last[kind] = now
        logger.warning("%s (%d times since the last such line)", message % args, count)


class RelayLimiter:
    """Applies ``RelayLimits`` for one relay (see the module docstring).

    ``clock`` is the monotonic clock for the buckets (trio's, so tests can
    use a mock clock); ``wall`` the UTC clock for accounting periods;
    ``hits`` the counts to add limit hits to (the relay's
    ``RelayStats.limit_hits``, which the metrics read), a new dict if None.
    """

    def __init__(
        self,
        config: RelayLimits,
        *,
        clock: Callable[[], float] = trio.current_time,
        wall: Callable[[], float] = wall_clock,
        hits: dict[str, int] | None = None,
    ) -> None:
        config.check()
        self.config = config
        self._clock = clock
        self._wall = wall
        self.bandwidth = TokenBucket(config.bandwidth_rate, config.burst)
        self.accounting = Accounting(
            config.accounting_max, config.accounting_period, wall()
        )
        self.budget = QueueBudget(config.max_queued_bytes)
        self.throughput = ThroughputMeter()
        self._links = AddressCounts(config.links_per_address)
        self._new_links = AddressBuckets(
            config.new_links_per_second, config.new_links_burst
        )
        self._creates = AddressBuckets(config.creates_per_second, config.creates_burst)
        self._log = _LogThrottle()
        self.hits = {} if hits is None else hits
        for kind in HIT_KINDS:
            self.hits.setdefault(kind, 0)
        self.oom_circuits_closed = 0
        self.oom_bytes_freed = 0
        self.hibernating = False

    def reload(self, config: RelayLimits) -> None:
        """Apply new limits without dropping links or circuits."""
        config.check()
        now = self._clock()
        self.config = config
        self.bandwidth.reconfigure(config.bandwidth_rate, config.burst, now)
        self.accounting.max_bytes = config.accounting_max
        if config.accounting_period != self.accounting.period:
            self.accounting = Accounting(
                config.accounting_max, config.accounting_period, self._wall()
            )
        self.budget.cap = config.max_queued_bytes
        self._links.limit = config.links_per_address
        self._new_links.reconfigure(config.new_links_per_second, config.new_links_burst)
        self._creates.reconfigure(config.creates_per_second, config.creates_burst)

    # --- counters -------------------------------------------------------------

    @property
    def queued_bytes(self) -> int:
        """Cell bytes queued on all links now."""
        return self.budget.queued

    @property
    def queued_bytes_peak(self) -> int:
        """The most cell bytes queued at once, after the cap was enforced."""
        return self.budget.peak

    @property
    def accounting_used(self) -> int:
        """Bytes read in this accounting period."""
        return self.accounting.used

    @property
    def links_open(self) -> int:
        """Inbound links now (handshaking or established)."""
        return self._links.total

    def observed_bandwidth(self) -> int:
        """The best 10-second average of relayed bytes/s over the last day."""
        return self.throughput.observed(self._clock())

    def links_from(self, address: str) -> int:
        """Inbound links from one address now."""
        return self._links.count(address)

    def hit(self, kind: str, message: str, *args: object) -> None:
        """Count a limit hit and log it (rate-limited per kind)."""
        self.hits[kind] += 1
        self._log.hit(kind, self._clock(), message, *args)

    # --- per-address DoS limits ----------------------------------------------

    def link_opened(self, address: str) -> bool:
        """Count an inbound link from ``address``; False (not counted) if
        that address already has the most allowed, or opens links too fast."""
        if not self._new_links.take(address, self._clock()):
            self.hit(
                "new_links_rate",
                "new link limit hit for a client address [scrubbed]: %g/s, refusing",
                self.config.new_links_per_second,
            )
            return False
        if self._links.acquire(address):
            return True
        self.hit(
            "links_per_address",
            "concurrent link limit hit for a client address [scrubbed]: %d "
            "links, refusing",
            self._links.limit,
        )
        return False

    def link_closed(self, address: str) -> None:
        """An inbound link counted by ``link_opened`` has ended."""
        self._links.release(address)

    def may_create(self, address: str | None) -> bool:
        """Whether a CREATE from ``address`` (None: a relay, exempt) may be
        answered now; counts and logs a refusal."""
        if self.hibernating_now():
            self.hit(
                "accounting",
                "accounting limit of %d bytes reached for this period, "
                "refusing new circuits",
                self.accounting.max_bytes,
            )
            return False
        if address is None or self._creates.take(address, self._clock()):
            return True
        self.hit(
            "circuit_creation_rate",
            "circuit creation limit hit for a client address [scrubbed]: %g/s, "
            "refusing",
            self.config.creates_per_second,
        )
        return False

    def hibernating_now(self) -> bool:
        """Whether this accounting period's bytes are used up."""
        self.hibernating = self.accounting.exhausted(self._wall())
        return self.hibernating

    def handshake_timed_out(self) -> None:
        """Count an inbound link that did not finish its handshake in time."""
        self.hit(
            "handshake_timeout",
            "inbound link handshake not finished within %g s, closing",
            self.config.handshake_timeout,
        )

    # --- bandwidth -------------------------------------------------------------

    async def read_allowance(self, wanted: int, *, whole: bool = False) -> int:
        """Wait until the bandwidth bucket allows a read; the most to read.

        A link reads what the bucket holds (at least ``MIN_READ``).  With
        ``whole`` (an exit connection) the read may take all ``wanted``
        bytes, leaving the bucket in debt: the bytes become DATA cells, and
        cutting the read short would send part-empty fixed-size cells, which
        cost the next relays the same bandwidth for less data.
        """
        bucket = self.bandwidth
        if bucket.unlimited:
            return wanted
        need = min(MIN_READ, wanted)
        delay = bucket.wait_time(need, self._clock())
        if delay > 0:
            self.hits["bandwidth"] += 1
            await trio.sleep(delay)
        if whole:
            return wanted
        return max(need, min(wanted, int(bucket.available(self._clock()))))

    def bytes_read(self, n: int) -> None:
        """Charge ``n`` relayed bytes read to the bucket and the accounting,
        and count them for the observed bandwidth."""
        now = self._clock()
        self.bandwidth.consume(n, now)
        self.throughput.record(now, n)
        if self.accounting.max_bytes:
            self.accounting.add(n, self._wall())
