"""The relay's limiter shell (relay/limits.py) with injected clocks."""

import pytest
import trio
import trio.testing
from hopchain.relay.exit import ExitConnection
from hopchain.relay.limits import HIT_KINDS, RelayLimiter
from hopchain.relay.stats import RelayStats

from hopchain.relaylimits import RelayLimits


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_creation_limit_per_address_and_relays_exempt() -> None:
    clock = Clock()
    limiter = RelayLimiter(
        RelayLimits(creates_per_second=1, creates_burst=2), clock=clock, wall=clock
    )
    assert [limiter.may_create("a") for _ in range(3)] == [True, True, False]
    assert limiter.may_create("b")
    assert all(limiter.may_create(None) for _ in range(100))  # relays
    clock.now = 1.0
    assert limiter.may_create("a")
    assert limiter.hits["circuit_creation_rate"] == 1


def test_new_links_per_address_follow_a_rate_after_a_burst() -> None:
    clock = Clock()
    limiter = RelayLimiter(
        RelayLimits(links_per_address=2, new_links_per_second=1),
        clock=clock,
        wall=clock,
    )
    for _ in range(2):
        assert limiter.link_opened("a")
        limiter.link_closed("a")
    assert not limiter.link_opened("a")  # none open, but too fast
    assert limiter.link_opened("b")
    clock.now = 1.0
    assert limiter.link_opened("a")
    assert limiter.hits["new_links_rate"] == 1
    assert limiter.links_open == 2


def test_reload_changes_limits_in_place() -> None:
    clock = Clock()
    limiter = RelayLimiter(
        RelayLimits(links_per_address=1, new_links_per_second=0),
        clock=clock,
        wall=clock,
    )
    assert limiter.link_opened("a")
    assert not limiter.link_opened("a")
    limiter.reload(
        RelayLimits(links_per_address=2, max_queued_bytes=5, bandwidth_rate=100)
    )
    assert limiter.link_opened("a")
    assert limiter.links_open == 2
    assert limiter.budget.cap == 5
    assert limiter.bandwidth.rate == 100
    limiter.link_closed("a")
    limiter.link_closed("a")
    assert limiter.links_open == 0
    assert limiter.hits["links_per_address"] == 1


def test_accounting_stops_new_circuits_until_the_period_ends() -> None:
    clock = Clock()
    clock.now = 7200.0
    limiter = RelayLimiter(
        RelayLimits(accounting_max=1000, accounting_period=3600),
        clock=clock,
        wall=clock,
    )
    limiter.bytes_read(999)
    assert limiter.may_create("a")
    limiter.bytes_read(1)
    assert not limiter.may_create("a")
    assert limiter.hibernating
    clock.now = 10800.0  # the next hour
    assert limiter.may_create("a")
    assert not limiter.hibernating
    assert limiter.accounting_used == 0


async def test_reads_follow_the_bandwidth_rate(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Reading 1 MB at 100 kB/s with a 100 kB burst takes (1 MB - 100 kB) /
    100 kB/s of virtual time, within one read."""
    limiter = RelayLimiter(RelayLimits(bandwidth_rate=100_000, bandwidth_burst=100_000))
    send, receive = trio.testing.memory_stream_pair()
    throttled = ExitConnection(receive, limiter, RelayStats())
    total = 1_000_000

    async def feed() -> None:
        for _ in range(total // 10_000):
            await send.send_all(b"x" * 10_000)
        await send.aclose()

    start = trio.current_time()
    got = 0
    async with trio.open_nursery() as nursery:
        nursery.start_soon(feed)
        while data := await throttled.receive_some(65536):
            got += len(data)
    elapsed = trio.current_time() - start
    assert got == total
    assert elapsed == pytest.approx((total - 100_000) / 100_000, abs=0.2)
    assert limiter.hits["bandwidth"] > 0


async def test_unlimited_reads_do_not_wait(
    autojump_clock: trio.testing.MockClock,
) -> None:
    limiter = RelayLimiter(RelayLimits())
    assert await limiter.read_allowance(1 << 20) == 1 << 20
    limiter.bytes_read(1 << 30)
    start = trio.current_time()
    assert await limiter.read_allowance(1 << 20) == 1 << 20
    assert trio.current_time() == start


def test_bytes_read_feed_the_observed_bandwidth() -> None:
    """Every relayed byte read (a link's or an exit connection's) counts,
    limited or not; the figure is the best 10-second average."""
    clock = Clock()
    limiter = RelayLimiter(RelayLimits(), clock=clock, wall=clock)
    assert limiter.observed_bandwidth() == 0
    limiter.bytes_read(300_000)
    clock.now = 5.0
    limiter.bytes_read(200_000)
    clock.now = 15.0
    limiter.bytes_read(100_000)
    assert limiter.observed_bandwidth() == 50_000


def test_hits_are_counted_into_the_relays_counts() -> None:
    clock = Clock()
    stats = RelayStats()
    limiter = RelayLimiter(
        RelayLimits(creates_per_second=1, creates_burst=1),
        clock=clock,
        wall=clock,
        hits=stats.limit_hits,
    )
    assert limiter.may_create("a")
    assert not limiter.may_create("a")
    assert stats.limit_hits["circuit_creation_rate"] == 1
    assert stats.limit_hits["circuit_queue"] == 0  # the relay's own kind stays
    assert set(HIT_KINDS) <= set(stats.limit_hits)
