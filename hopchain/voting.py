"""Directory voting: the schedule, what an authority lists, and the combination
of the authorities' votes into one consensus.

Every authority computes the consensus for a voting period from the votes it
holds, with the pure ``combine``: the same votes give byte-identical bodies
on every authority, whatever order they arrived in, so each authority's
signature covers the same document and a client counts them together.

Combination rules (``authority_count`` is the number of *configured*
authorities, not the number of votes received):

* a relay is listed when more than half of all configured authorities list
  it (so a relay one authority alone vouches for is never listed);
* its descriptor is the most recently published one among those votes
  (ties broken by the larger byte string), as relays publish to each
  authority separately;
* a flag is set when more than half of the votes that list the relay set it
  (a tie leaves it out);
* its bandwidth is the median of the voted bandwidths (the lower median for
  an even count, as Tor's);
* its country is the (country, verified) pair most votes give, ties going
  to a verified one, then to the alphabetically first;
* fresh-until and valid-until are the lower medians of the voted times;
  valid-after is the period all the votes are for.

Timing (``Schedule``): periods of ``interval`` seconds start at multiples of
``interval`` since the epoch.  At a period's start each authority votes; it
collects its peers' votes for ``collect_delay`` (a third of the interval,
at most 5 minutes), then computes, signs and sends its signature.  The
consensus for the period starting at T is valid after T, fresh until
T + interval and valid until T + 3 intervals (as Tor's).

Bandwidth (``listed_bandwidth``): what the relay observed of its own relayed
throughput, capped by what it declares, as Tor's min(observed, declared);
a relay that has observed less than ``NEW_RELAY_BANDWIDTH`` (20 kB/s,
Tor's cap for unmeasured relays) is listed with that floor (or its declared
value, if lower), so a fresh network, where nothing has been relayed yet,
still has weights to build paths with.
"""

import math
import statistics
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from hopchain.directory import FLAGS, Listing, Vote, build_consensus

NEW_RELAY_BANDWIDTH: Final = 20_000
DEFAULT_INTERVAL: Final = 3600.0
TEST_NETWORK_INTERVAL: Final = 5.0
MAX_COLLECT_DELAY: Final = 300.0
VALID_INTERVALS: Final = 3


def listed_bandwidth(
    declared: int, observed: int, floor: int = NEW_RELAY_BANDWIDTH
) -> int:
    """The bandwidth an authority votes for: min(max(observed, floor), declared)."""
    return min(max(observed, floor), declared)


def majority(authority_count: int) -> int:
    """How many of ``authority_count`` authorities are more than half."""
    return authority_count // 2 + 1


@dataclass(frozen=True, slots=True)
class Schedule:
    """When votes happen and how long a consensus stays fresh and valid."""

    interval: float = DEFAULT_INTERVAL

    def __post_init__(self) -> None:
        if not self.interval > 0:
            raise ValueError("the voting interval must be positive")

    @property
    def collect_delay(self) -> float:
        """How long after a period starts the votes are combined."""
        return min(self.interval / 3, MAX_COLLECT_DELAY)

    def period_start(self, now: float) -> float:
        """The start of the period ``now`` falls in."""
        return math.floor(now / self.interval) * self.interval

    def next_period(self, now: float) -> float:
        """The start of the first period after ``now``."""
        return self.period_start(now) + self.interval

    def times(self, valid_after: float) -> tuple[float, float, float]:
        """valid-after, fresh-until, valid-until for a consensus or vote."""
        return (
            valid_after,
            valid_after + self.interval,
            valid_after + VALID_INTERVALS * self.interval,
        )


def _country(listings: list[Listing]) -> tuple[str, bool]:
    counts = Counter((item.country, item.verified) for item in listings)
    (country, verified), _ = min(
        counts.items(), key=lambda kv: (-kv[1], not kv[0][1], kv[0][0])
    )
    return country, verified


def _combine_relay(listings: list[Listing]) -> Listing:
    """One relay's consensus listing from the votes that list it."""
    newest = max(
        listings,
        key=lambda item: (item.signed.descriptor.published, item.signed.raw),
    )
    flags = frozenset(
        flag
        for flag in FLAGS
        if 2 * sum(flag in item.flags for item in listings) > len(listings)
    )
    country, verified = _country(listings)
    bandwidth = statistics.median_low(item.bandwidth for item in listings)
    return Listing(newest.signed, flags, country, verified, bandwidth)


def combine(votes: Sequence[Vote], authority_count: int) -> bytes:
    """The consensus body from the votes of one period (rules above).

    Raises:
        ValueError: no votes, votes for different periods, two votes from
            one authority, or more votes than authorities.
    """
    if not votes:
        raise ValueError("no votes to combine")
    if len({vote.valid_after for vote in votes}) != 1:
        raise ValueError("votes for different periods")
    if len({vote.authority for vote in votes}) != len(votes):
        raise ValueError("two votes from one authority")
    if len(votes) > authority_count:
        raise ValueError("more votes than authorities")
    by_relay: defaultdict[bytes, list[Listing]] = defaultdict(list)
    for vote in votes:
        for listing in vote.listings:
            by_relay[listing.signed.descriptor.identity].append(listing)
    listed = [
        _combine_relay(by_relay[identity])
        for identity in sorted(by_relay)
        if 2 * len(by_relay[identity]) > authority_count
    ]
    return build_consensus(
        listed,
        votes[0].valid_after,
        statistics.median_low(vote.fresh_until for vote in votes),
        statistics.median_low(vote.valid_until for vote in votes),
    )
