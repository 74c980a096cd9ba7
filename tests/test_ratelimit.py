"""Token buckets and the per-address tables (hopchain/ratelimit.py)."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hopchain.ratelimit import AddressBuckets, AddressCounts, TokenBucket


def test_a_bucket_starts_full_and_refills_at_its_rate() -> None:
    bucket = TokenBucket(rate=10, burst=20, now=0.0)
    assert sum(bucket.take(1, 0.0) for _ in range(100)) == 20
    assert not bucket.take(1, 0.05)
    assert bucket.take(1, 0.1)  # one token per 0.1 s
    assert not bucket.take(1, 0.1)
    assert bucket.available(100.0) == 20  # never more than the burst


def test_take_is_all_or_nothing_and_consume_goes_into_debt() -> None:
    bucket = TokenBucket(rate=100, burst=100, now=0.0)
    assert not bucket.take(150, 0.0)
    assert bucket.available(0.0) == 100
    bucket.consume(150, 0.0)
    assert bucket.available(0.0) == -50
    assert bucket.wait_time(10, 0.0) == pytest.approx(0.6)
    assert bucket.wait_time(10, 0.6) == pytest.approx(0.0)
    assert bucket.wait_time(1000, 0.6) == pytest.approx(0.9)  # capped at the burst


def test_rate_zero_is_unlimited() -> None:
    bucket = TokenBucket(rate=0, burst=0, now=0.0)
    assert bucket.unlimited
    assert all(bucket.take(10**9, 0.0) for _ in range(10))
    bucket.consume(10**12, 0.0)
    assert bucket.wait_time(10**9, 0.0) == 0.0


def test_a_bucket_without_a_start_time_starts_at_first_use() -> None:
    bucket = TokenBucket(rate=1, burst=2)
    assert bucket.take(2, 12345.0)
    assert not bucket.take(1, 12345.5)
    assert bucket.take(1, 12346.0)


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="negative"):
        TokenBucket(rate=-1, burst=1, now=0)
    with pytest.raises(ValueError, match="positive burst"):
        TokenBucket(rate=1, burst=0, now=0)


def test_reconfigure_keeps_tokens_up_to_the_new_burst() -> None:
    bucket = TokenBucket(rate=10, burst=100, now=0.0)
    bucket.reconfigure(rate=1, burst=5, now=0.0)
    assert bucket.available(0.0) == 5
    assert bucket.take(5, 0.0)
    assert bucket.wait_time(1, 0.0) == pytest.approx(1.0)


@given(
    rate=st.integers(1, 1000),
    burst=st.integers(1, 1000),
    steps=st.lists(
        st.tuples(st.floats(0, 2, allow_nan=False), st.integers(1, 50)), max_size=60
    ),
)
def test_takes_never_exceed_burst_plus_rate_times_elapsed(
    rate: int, burst: int, steps: list[tuple[float, int]]
) -> None:
    bucket = TokenBucket(rate, burst, now=0.0)
    now = 0.0
    taken = 0
    for advance, n in steps:
        now += advance
        if bucket.take(n, now):
            taken += n
        assert taken <= burst + rate * now + 1e-6
        assert bucket.available(now) >= 0


@given(
    rate=st.integers(1, 10_000),
    reads=st.lists(
        st.tuples(st.floats(0, 1, allow_nan=False), st.integers(0, 5000)), max_size=60
    ),
)
def test_consumed_bytes_repaid_by_refills(
    rate: int, reads: list[tuple[float, int]]
) -> None:
    """Reading only when the bucket is not in debt keeps the total within one
    read of burst + rate * elapsed (what the relay's read loop does)."""
    burst = rate
    bucket = TokenBucket(rate, burst, now=0.0)
    now = 0.0
    total = 0
    for advance, n in reads:
        now += advance + bucket.wait_time(1, now + advance)
        bucket.consume(n, now)
        total += n
        assert total - n <= burst + rate * now + 1e-6


def test_address_buckets_limit_each_address_separately() -> None:
    table = AddressBuckets(rate=1, burst=3)
    assert [table.take("a", 0.0) for _ in range(4)] == [True, True, True, False]
    assert table.take("b", 0.0)
    assert table.take("a", 1.0)
    assert not table.take("a", 1.0)


def test_address_buckets_evict_the_least_recently_used() -> None:
    table = AddressBuckets(rate=1, burst=1, max_addresses=2)
    assert table.take("a", 0.0)
    assert table.take("b", 0.0)
    assert not table.take("a", 0.0)  # "a" is now the most recently used
    assert table.take("c", 0.0)  # evicts "b"
    assert len(table) == 2
    assert table.take("b", 0.0)  # "b" starts again full (evicts "a")
    assert table.take("a", 0.0)


@given(st.lists(st.text(max_size=3), max_size=300))
def test_address_table_stays_bounded(addresses: list[str]) -> None:
    table = AddressBuckets(rate=5, burst=5, max_addresses=16)
    for i, address in enumerate(addresses):
        table.take(address, i / 10)
        assert len(table) <= 16


def test_address_buckets_rate_zero_is_unlimited_and_keeps_no_state() -> None:
    table = AddressBuckets(rate=0, burst=0)
    assert all(table.take("a", 0.0) for _ in range(1000))
    assert len(table) == 0


def test_address_counts_cap_concurrency_and_forget_idle_addresses() -> None:
    counts = AddressCounts(limit=2)
    assert counts.acquire("a")
    assert counts.acquire("a")
    assert not counts.acquire("a")
    assert counts.acquire("b")
    assert counts.count("a") == 2
    assert counts.total == 3
    counts.release("a")
    assert counts.acquire("a")
    for _ in range(2):
        counts.release("a")
    counts.release("b")
    assert len(counts) == 0


def test_address_counts_limit_zero_is_unlimited() -> None:
    counts = AddressCounts(limit=0)
    assert all(counts.acquire("a") for _ in range(1000))
