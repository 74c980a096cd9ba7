"""Votes combined into a consensus (hopchain.voting), and the schedule."""

import dataclasses
import hashlib
import random
import statistics
from collections.abc import Collection

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hopchain.crypto.keys import IdentityKey
from hopchain.directory import (
    FLAGS,
    Descriptor,
    Listing,
    Vote,
    sign_descriptor,
    verify_descriptor,
)
from hopchain.voting import (
    NEW_RELAY_BANDWIDTH,
    Schedule,
    combine,
    listed_bandwidth,
    majority,
)

NOW = 1_700_000_000.0


def key(label: str) -> IdentityKey:
    return IdentityKey(hashlib.blake2b(label.encode(), digest_size=32).digest())


AUTHORITIES = [key(f"authority {i}").public for i in range(5)]
RELAYS = [key(f"relay {i}") for i in range(5)]


def signed(relay: int, published: float = NOW - 100.0) -> bytes:
    identity = RELAYS[relay]
    desc = Descriptor(
        nickname=f"relay{relay}",
        identity=identity.public,
        onion_key=bytes(32),
        address=f"192.0.2.{relay + 1}",
        or_port=9001,
        bandwidth=1_000_000,
        exit_ports=((80, 443),),
        family=(),
        country="",
        published=published,
        test_network=False,
    )
    return sign_descriptor(desc, identity.sign)


# Two descriptor versions per relay (published at different times), signed once.
VERSIONS = [[signed(r, NOW - 200.0), signed(r, NOW - 100.0)] for r in range(5)]
PARSED = {raw: verify_descriptor(raw, NOW) for pair in VERSIONS for raw in pair}


def entry(
    relay: int,
    flags: Collection[str] = ("Running", "Valid"),
    bandwidth: int = 50_000,
    country: str = "SE",
    verified: bool = False,
    version: int = 1,
) -> Listing:
    raw = VERSIONS[relay][version]
    return Listing(PARSED[raw], frozenset(flags), country, verified, bandwidth)


def vote(authority: int, *listings: Listing, valid_after: float = NOW) -> Vote:
    return Vote(
        AUTHORITIES[authority],
        valid_after,
        valid_after + 60.0,
        valid_after + 180.0,
        listings,
    )


def decoded(body: bytes) -> dict[str, object]:
    result: dict[str, object] = msgpack.unpackb(body)
    return result


def listed(body: bytes) -> dict[bytes, list[object]]:
    """identity -> [descriptor, flags, country, verified, bandwidth]"""
    relays = decoded(body)["relays"]
    assert isinstance(relays, list)
    return {PARSED[item[0]].descriptor.identity: item for item in relays}


def test_a_relay_needs_more_than_half_of_all_authorities() -> None:
    votes = [vote(0, entry(0), entry(1)), vote(1, entry(0))]
    assert set(listed(combine(votes, 3))) == {RELAYS[0].public}
    # Two of four is not more than half, even if only two voted.
    assert listed(combine(votes, 4)) == {}


def test_flags_by_majority_of_the_votes_that_list_the_relay() -> None:
    votes = [
        vote(0, entry(0, ["Running", "Valid", "Guard"])),
        vote(1, entry(0, ["Running", "Valid", "Guard"])),
        vote(2, entry(0, ["Running", "Valid", "Exit"])),
    ]
    assert listed(combine(votes, 3))[RELAYS[0].public][1] == [
        "Guard",
        "Running",
        "Valid",
    ]
    # A tie (one of two) leaves the flag out.
    tie = [vote(0, entry(0, ["Running", "Stable"])), vote(1, entry(0, ["Running"]))]
    assert listed(combine(tie, 3))[RELAYS[0].public][1] == ["Running"]


def test_bandwidth_is_the_low_median() -> None:
    votes = [vote(i, entry(0, bandwidth=b)) for i, b in enumerate([90, 10, 40, 70])]
    assert listed(combine(votes, 5))[RELAYS[0].public][4] == 40


def test_the_newest_descriptor_is_listed() -> None:
    votes = [vote(0, entry(0, version=0)), vote(1, entry(0, version=1))]
    assert listed(combine(votes, 3))[RELAYS[0].public][0] == VERSIONS[0][1]


def test_country_by_majority_then_verified_then_alphabet() -> None:
    votes = [
        vote(0, entry(0, country="NL")),
        vote(1, entry(0, country="DE", verified=True)),
        vote(2, entry(0, country="DE", verified=True)),
    ]
    assert listed(combine(votes, 3))[RELAYS[0].public][2:4] == ["DE", True]
    tie = [vote(0, entry(0, country="NL")), vote(1, entry(0, country="DE"))]
    assert listed(combine(tie, 3))[RELAYS[0].public][2:4] == ["DE", False]
    verified = [
        vote(0, entry(0, country="NL", verified=True)),
        vote(1, entry(0, country="DE")),
    ]
    assert listed(combine(verified, 3))[RELAYS[0].public][2:4] == ["NL", True]


def test_times_come_from_the_period_and_the_voted_medians() -> None:
    votes = [
        dataclasses.replace(vote(0), fresh_until=NOW + 10, valid_until=NOW + 30),
        dataclasses.replace(vote(1), fresh_until=NOW + 20, valid_until=NOW + 60),
        dataclasses.replace(vote(2), fresh_until=NOW + 90, valid_until=NOW + 90),
    ]
    body = decoded(combine(votes, 3))
    assert (body["valid_after"], body["fresh_until"], body["valid_until"]) == (
        NOW,
        NOW + 20,
        NOW + 60,
    )


@pytest.mark.parametrize(
    ("votes", "count", "problem"),
    [
        ([], 3, "no votes"),
        ([vote(0), vote(1, valid_after=NOW + 60)], 3, "different periods"),
        ([vote(0), vote(0)], 3, "one authority"),
        ([vote(0), vote(1)], 1, "more votes"),
    ],
)
def test_combine_refuses_inconsistent_input(
    votes: list[Vote], count: int, problem: str
) -> None:
    with pytest.raises(ValueError, match=problem):
        combine(votes, count)


@st.composite
def vote_sets(draw: st.DrawFn) -> tuple[list[Vote], int]:
    count = draw(st.integers(1, 5))
    voters = draw(
        st.lists(st.integers(0, count - 1), min_size=1, max_size=count, unique=True)
    )
    votes = []
    for authority in voters:
        relays = draw(st.lists(st.integers(0, 4), unique=True, max_size=5))
        listings = tuple(
            entry(
                relay,
                flags=draw(st.frozensets(st.sampled_from(sorted(FLAGS)))),
                bandwidth=draw(st.integers(0, 10**9)),
                country=draw(st.sampled_from(["", "DE", "NL", "SE"])),
                verified=draw(st.booleans()),
                version=draw(st.integers(0, 1)),
            )
            for relay in relays
        )
        votes.append(
            Vote(
                AUTHORITIES[authority],
                NOW,
                NOW + draw(st.floats(0, 1e4)),
                NOW + 2e4 + draw(st.floats(0, 1e4)),
                listings,
            )
        )
    return votes, count


@given(vote_sets(), st.randoms(use_true_random=False))
def test_prop_combination_does_not_depend_on_vote_order(
    item: tuple[list[Vote], int], rng: random.Random
) -> None:
    votes, count = item
    shuffled = list(votes)
    rng.shuffle(shuffled)
    assert combine(shuffled, count) == combine(votes, count)


@given(vote_sets())
def test_prop_combination_follows_the_majority_rules(
    item: tuple[list[Vote], int],
) -> None:
    votes, count = item
    result = listed(combine(votes, count))
    for relay in RELAYS:
        entries = [
            x
            for v in votes
            for x in v.listings
            if x.signed.descriptor.identity == relay.public
        ]
        if 2 * len(entries) <= count:
            assert relay.public not in result
            continue
        raw, flags, _, _, bandwidth = result[relay.public]
        assert isinstance(flags, list)
        for flag in FLAGS:
            votes_for = sum(flag in x.flags for x in entries)
            assert (flag in flags) == (2 * votes_for > len(entries))
        assert (
            bandwidth == sorted(x.bandwidth for x in entries)[(len(entries) - 1) // 2]
        )
        newest = max(x.signed.descriptor.published for x in entries)
        assert isinstance(raw, bytes)
        assert PARSED[raw].descriptor.published == newest
    body = decoded(combine(votes, count))
    assert body["fresh_until"] == statistics.median_low(v.fresh_until for v in votes)


def test_majority() -> None:
    assert [majority(n) for n in range(1, 7)] == [1, 2, 2, 3, 3, 4]


def test_listed_bandwidth_is_observed_capped_by_declared_with_a_floor() -> None:
    assert listed_bandwidth(declared=1_000_000, observed=300_000) == 300_000
    assert listed_bandwidth(declared=200_000, observed=300_000) == 200_000
    assert listed_bandwidth(declared=1_000_000, observed=0) == NEW_RELAY_BANDWIDTH
    assert listed_bandwidth(declared=5_000, observed=0) == 5_000


def test_schedule_periods_and_times() -> None:
    schedule = Schedule(60.0)
    assert schedule.period_start(NOW + 39.5) == NOW - 20.0  # NOW = 20 mod 60
    assert schedule.period_start(NOW + 40.0) == NOW + 40.0
    assert schedule.next_period(NOW - 20.0) == NOW + 40.0
    assert schedule.times(NOW - 20.0) == (NOW - 20.0, NOW + 40.0, NOW + 160.0)
    assert schedule.collect_delay == 20.0
    assert Schedule(3600.0).collect_delay == 300.0
    with pytest.raises(ValueError, match="positive"):
        Schedule(0.0)
