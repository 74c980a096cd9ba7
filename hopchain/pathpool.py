"""Per-consensus candidate pools for path selection, and draws that skip
a few excluded relays without rebuilding the pool.

Choosing a relay "among the eligible ones, by weight" the direct way builds
a list over every relay and its cumulative weights for each hop, and checks
the family and /16 rules against every relay: milliseconds per path on a
7,000-relay consensus.  Here the pools (Running relays, Guard relays, exits
per port), each relay's weighted bandwidth per position, its subnet and the
reverse family index are computed once per consensus; a hop then only
collects the few relays it must exclude (the chosen relays' identities,
families and subnets) and draws from the pool's cumulative weights.

``Pool.draw`` returns exactly what ``rng.choices(eligible, weights)[0]`` (or
``rng.choice(eligible)`` when every eligible weight is 0, as Tor picks
uniformly then) returns on the filtered list, for the same rng state: it
consumes the same random numbers and does the same comparisons, so the
result does not depend on which of the two ways computed it.
"""

import ipaddress
import random
from bisect import bisect_right
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache
from itertools import accumulate
from typing import Final

from hopchain.directory import Consensus, RouterStatus
from hopchain.exitpolicy import normalise
from hopchain.weights import Position, consensus_weights, position_weight

__all__ = ["Pool", "Prepared", "prepared", "subnet", "usable_exit"]

_CACHE_SIZE: Final = 4
_POOLS: Final = 32


@lru_cache(maxsize=1 << 16)
def subnet(address: str) -> str:
    """The IPv4 /16 or IPv6 /32 of ``address`` (IPv4-mapped counts as IPv4).

    Cached: relays keep their addresses from one consensus to the next, and
    parsing them was most of the cost of preparing a consensus."""
    ip = normalise(address)
    prefix = 16 if ip.version == 4 else 32
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


def usable_exit(status: RouterStatus, port: int | None) -> bool:
    """Exit flag, not BadExit, and the policy accepts ``port`` (``None``:
    any exit will do)."""
    if "Exit" not in status.flags or "BadExit" in status.flags:
        return False
    return port is None or status.descriptor.allows_exit_to(port)


class Pool:
    """Some Running relays (by index into ``Prepared.running``) with their
    weighted bandwidth for one position, in consensus order."""

    __slots__ = ("_cum", "_position_of", "_weights", "members")

    def __init__(self, members: list[int], weights: list[int]) -> None:
        self.members = members
        self._weights = weights
        self._cum = list(accumulate(weights))
        self._position_of = {index: pos for pos, index in enumerate(members)}

    def __len__(self) -> int:
        return len(self.members)

    def __contains__(self, index: object) -> bool:
        return index in self._position_of

    @property
    def total(self) -> int:
        """The members' weighted bandwidth, summed."""
        return self._cum[-1] if self._cum else 0

    def positions(self, indexes: Iterable[int]) -> list[int]:
        """The sorted pool positions of those ``indexes`` that are members."""
        where = self._position_of
        return sorted({where[i] for i in indexes if i in where})

    def draw(self, removed: list[int], rng: random.Random) -> int | None:
        """A member drawn by weight among those whose pool position is not in
        ``removed`` (sorted positions); None if none is left."""
        n = len(self.members) - len(removed)
        if n <= 0:
            return None
        if not removed:
            cum = self._cum
            total = cum[-1]
            if total <= 0:
                return self.members[rng.choice(range(n))]
            return self.members[bisect_right(cum, rng.random() * total, 0, n - 1)]
        weights = self._weights
        gone = list(accumulate(weights[p] for p in removed))
        total = self._cum[-1] - gone[-1]
        if total <= 0:
            # rng.choice(eligible): the k-th position not removed.
            k = rng.choice(range(n))
            for p in removed:
                if p > k:
                    break
                k += 1
            return self.members[k]
        u = rng.random() * float(total)
        cum = self._cum

        def kept_cum(pos: int) -> int:
            """The cumulative weight of the kept members up to ``pos``."""
            before = bisect_right(removed, pos)
            return cum[pos] - (gone[before - 1] if before else 0)

        # rng.choices bisects the eligible cumulative weights for the first
        # one above u, searching no further than the last eligible member.
        # kept_cum is non-decreasing and flat at removed positions, so the
        # first position above u is never a removed one.
        last = len(self.members) - 1
        while removed and removed[-1] == last:
            removed = removed[:-1]
            last -= 1
        pos = bisect_right(range(last), u, key=kept_cum)
        return self.members[pos]


@dataclass(frozen=True, slots=True)
class _Relay:
    status: RouterStatus
    identity: bytes
    family: frozenset[bytes]
    country: str
    subnet: str


class Prepared:
    """Everything ``select_path`` needs from one consensus, computed once.

    The pools for a set of country constraints are built on first use and
    kept (the last ``_POOLS`` of them), so the constraints of a client or a
    simulation cost one pass over the relays, not one per path.
    """

    def __init__(self, consensus: Consensus) -> None:
        self._weights = consensus_weights(consensus)
        self.running = [
            _Relay(
                r,
                r.descriptor.identity,
                frozenset(r.descriptor.family),
                r.descriptor.country.upper(),
                subnet(r.descriptor.address),
            )
            for r in consensus.relays
            if "Running" in r.flags
        ]
        self._by_identity: defaultdict[bytes, list[int]] = defaultdict(list)
        self._declaring: defaultdict[bytes, list[int]] = defaultdict(list)
        self._by_subnet: defaultdict[str, list[int]] = defaultdict(list)
        for i, relay in enumerate(self.running):
            self._by_identity[relay.identity].append(i)
            self._by_subnet[relay.subnet].append(i)
            for member in relay.family:
                self._declaring[member].append(i)
        self._pools: dict[tuple[object, ...], Pool] = {}

    def _pool(
        self,
        key: tuple[object, ...],
        position: Position,
        members: Callable[[], Iterable[int]],
    ) -> Pool:
        pool = self._pools.get(key)
        if pool is None:
            chosen = list(members())
            running, weights = self.running, self._weights
            pool = Pool(
                chosen,
                [
                    max(1, running[i].status.descriptor.bandwidth)
                    * position_weight(running[i].status, position, weights)
                    for i in chosen
                ],
            )
            if len(self._pools) >= _POOLS:
                self._pools.clear()
            self._pools[key] = pool
        return pool

    def middles(self, excluded: frozenset[str]) -> Pool:
        """The Running relays outside the ``excluded`` countries, weighted
        as middles."""
        return self._pool(
            ("middle", excluded),
            Position.MIDDLE,
            lambda: (
                i for i, r in enumerate(self.running) if r.country not in excluded
            ),
        )

    def guards(self, excluded: frozenset[str]) -> Pool:
        """The Guard relays outside the ``excluded`` countries (every relay
        there when none has Guard), weighted as guards."""

        def members() -> list[int]:
            allowed = self.middles(excluded).members
            running = self.running
            flagged = [i for i in allowed if "Guard" in running[i].status.flags]
            return flagged or allowed

        return self._pool(("guard", excluded), Position.GUARD, members)

    def exits(
        self, port: int | None, wanted: frozenset[str], unwanted: frozenset[str]
    ) -> Pool:
        """The usable exits for ``port`` (None: any) in ``wanted`` countries
        (empty: any) and not in ``unwanted`` ones, weighted as exits."""
        return self._pool(
            ("exit", port, wanted, unwanted),
            Position.EXIT,
            lambda: (
                i
                for i, r in enumerate(self.running)
                if usable_exit(r.status, port)
                and (not wanted or r.country in wanted)
                and r.country not in unwanted
            ),
        )

    def with_identities(self, identities: Iterable[bytes]) -> list[int]:
        """The relays with any of ``identities``."""
        return [i for x in identities for i in self._by_identity.get(x, ())]

    def conflicting(self, index: int, same_subnet_ok: bool) -> list[int]:
        """The relays that may not share a path with relay ``index``: itself,
        its declared family, those declaring it, and its /16 or /32."""
        relay = self.running[index]
        found = self.with_identities([relay.identity, *relay.family])
        found += self._declaring.get(relay.identity, ())
        if not same_subnet_ok:
            found += self._by_subnet[relay.subnet]
        return found


_cache: dict[int, tuple[Consensus, Prepared]] = {}


def prepared(consensus: Consensus) -> Prepared:
    """The ``Prepared`` pools of ``consensus``, built once per consensus
    object (identity-keyed like ``weights.consensus_weights``, for the
    same reason: hashing a consensus walks every relay)."""
    entry = _cache.get(id(consensus))
    if entry is not None and entry[0] is consensus:
        return entry[1]
    result = Prepared(consensus)
    if len(_cache) >= _CACHE_SIZE:
        del _cache[next(iter(_cache))]
    _cache[id(consensus)] = (consensus, result)
    return result
