"""Path selection: a pure function of (consensus, constraints, rng).

Each position is drawn with probability proportional to the relay's
bandwidth among the relays eligible for it:

* exit: Running, Exit flag, not BadExit, its policy accepts the target port (any exit
  when the port is None: a RESOLVE has no port);
* guard: the first of ``constraints.guards`` (the client's persistent guard
  set, see ``hopchain.guards``) that is Running, Guard-flagged and compatible,
  else Running and Guard (falling back to Running when no relay has Guard);
* middles: Running.

No relay appears twice, no two relays share a declared family, and, unless
``same_subnet_ok`` (test networks on loopback), no two relays share an IPv4
/16 or IPv6 /32.  The exit is chosen first, as Tor does, because it is the
scarcest position.  The rng is injected (``random.SystemRandom()`` in
production, a seeded ``random.Random`` in tests and simulations).

Speed: ``PathIndex`` prepares one consensus: its candidate lists and their
cumulative bandwidth weights are built on first use and kept, and
``select_path`` keeps the indexes of the last few consensus objects (keyed
by object identity).  A guard or middle, which must be compatible with the
relays already chosen, is drawn without building the list of compatible
relays for each path (``_Pool.draw_compatible``).  When few relays conflict
(at most ``EXACT_CONFLICTS``, as in small networks), one random number over
the compatible relays' weight is mapped onto the whole list past the
conflicting relays: exactly the relay a draw from the compatible list picks
with the same rng.  When many conflict (a /16 or a family of hundreds), the
relay is drawn from the whole list again until it is compatible
(``REDRAWS`` times, then from the exact list): the same distribution.  The client
and the simulations (``hopchain sim paths``) call this same ``select_path``.
"""

import bisect
import functools
import ipaddress
import random
import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import accumulate
from typing import Final

from hopchain.directory import Consensus, Descriptor, RouterStatus
from hopchain.errors import PathSelectionError
from hopchain.exitpolicy import normalise

EXACT_CONFLICTS: Final = 64
REDRAWS: Final = 8
_CACHED_INDEXES: Final = 4
_CACHED_POOLS: Final = 256


@dataclass(frozen=True, slots=True)
class PathConstraints:
    """What the caller asks of a path.

    ``port`` None: any exit will do.  ``exit_countries``: if not empty, the
    exit's (upper-case, two-letter) country must be one of them;
    ``exclude_exit_countries``: the exit's country must not be one of them;
    ``exclude_countries_anywhere``: no hop may be in one of them.  Countries
    come from the relays' descriptors.
    """

    hops: int = 3
    port: int | None = 80
    same_subnet_ok: bool = False
    exit_countries: frozenset[str] = frozenset()
    exclude_exit_countries: frozenset[str] = frozenset()
    exclude_countries_anywhere: frozenset[str] = frozenset()
    guards: tuple[bytes, ...] = ()

    def allows_exit_country(self, country: str) -> bool:
        """Whether an exit in ``country`` satisfies the country constraints."""
        country = country.upper()
        if self.exit_countries and country not in self.exit_countries:
            return False
        if country in self.exclude_countries_anywhere:
            return False
        return country not in self.exclude_exit_countries


@functools.lru_cache(maxsize=65536)
def _subnet(address: str) -> str:
    ip = normalise(address)
    prefix = 16 if ip.version == 4 else 32
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


def _conflicts(a: Descriptor, b: Descriptor, same_subnet_ok: bool) -> bool:
    if a.identity == b.identity:
        return True
    if b.identity in a.family or a.identity in b.family:
        return True
    return not same_subnet_ok and _subnet(a.address) == _subnet(b.address)


def _usable_exit(status: RouterStatus, port: int | None) -> bool:
    """Exit flag, not BadExit, and the policy accepts ``port`` (``None``:
    any exit will do)."""
    if "Exit" not in status.flags or "BadExit" in status.flags:
        return False
    return port is None or status.descriptor.allows_exit_to(port)


class _Pool:
    """The candidates for one position and their cumulative weights, with
    indexes by identity, declared family and subnet (built on first use) to
    find the candidates that conflict with a partial path."""

    __slots__ = ("_declaring", "_positions", "_subnets", "candidates", "cumulative")

    def __init__(self, candidates: list[Descriptor]) -> None:
        self.candidates = candidates
        self.cumulative = list(accumulate(max(1, d.bandwidth) for d in candidates))
        self._positions: dict[bytes, int] | None = None
        self._declaring: dict[bytes, list[int]] = {}
        self._subnets: dict[str, list[int]] = {}

    def _index(self) -> dict[bytes, int]:
        if self._positions is None:
            for i, d in enumerate(self.candidates):
                for f in d.family:
                    self._declaring.setdefault(f, []).append(i)
                self._subnets.setdefault(_subnet(d.address), []).append(i)
            self._positions = {d.identity: i for i, d in enumerate(self.candidates)}
        return self._positions

    def member(self, identity: bytes) -> Descriptor | None:
        """The candidate with this identity, if there is one."""
        i = self._index().get(identity)
        return None if i is None else self.candidates[i]

    def draw(self, rng: random.Random) -> Descriptor:
        """One candidate, weighted by bandwidth."""
        return rng.choices(self.candidates, cum_weights=self.cumulative, k=1)[0]

    def _conflicting(self, chosen: list[Descriptor], same_subnet_ok: bool) -> list[int]:
        """Positions of the candidates that conflict with ``chosen``
        (``_conflicts``: same relay, either side's declared family, subnet)."""
        positions = self._index()
        found: set[int] = set()
        for d in chosen:
            for identity in (d.identity, *d.family):
                i = positions.get(identity)
                if i is not None:
                    found.add(i)
            found.update(self._declaring.get(d.identity, ()))
            if not same_subnet_ok:
                found.update(self._subnets.get(_subnet(d.address), ()))
        return sorted(found)

    def _conflict_bound(self, chosen: list[Descriptor], same_subnet_ok: bool) -> int:
        """At most how many candidates conflict with ``chosen`` (cheap)."""
        self._index()
        bound = 0
        for d in chosen:
            bound += 1 + len(d.family) + len(self._declaring.get(d.identity, ()))
            if not same_subnet_ok:
                bound += len(self._subnets.get(_subnet(d.address), ()))
        return bound

    def draw_compatible(
        self, chosen: list[Descriptor], same_subnet_ok: bool, rng: random.Random
    ) -> Descriptor | None:
        """A weighted draw among the candidates compatible with ``chosen``
        (None: there are none)."""
        if not self.candidates:
            return None
        if self._conflict_bound(chosen, same_subnet_ok) > EXACT_CONFLICTS:
            return self._redraw(chosen, same_subnet_ok, rng)
        conflicting = self._conflicting(chosen, same_subnet_ok)
        if not conflicting:
            return self.draw(rng)
        cumulative = self.cumulative
        weights = [cumulative[i] - (cumulative[i - 1] if i else 0) for i in conflicting]
        free_total = cumulative[-1] - sum(weights)
        if free_total <= 0:
            return None
        target = rng.random() * float(free_total)
        for i, weight in zip(conflicting, weights, strict=True):
            if cumulative[i] - weight > target:
                break
            target += weight  # step over this conflicting candidate
        pick = bisect.bisect_right(cumulative, target, 0, len(cumulative) - 1)
        if pick in conflicting:  # float rounding at an edge
            return self._filtered(conflicting).draw(rng)
        return self.candidates[pick]

    def _filtered(self, conflicting: list[int]) -> "_Pool":
        skip = set(conflicting)
        return _Pool([d for i, d in enumerate(self.candidates) if i not in skip])

    def _redraw(
        self, chosen: list[Descriptor], same_subnet_ok: bool, rng: random.Random
    ) -> Descriptor | None:
        """Draw from the whole list until a compatible candidate comes
        (``REDRAWS`` times, then from the exact compatible list): the same
        distribution, for when many candidates conflict."""
        identities = {d.identity for d in chosen}
        families = {f for d in chosen for f in d.family}
        subnets = set() if same_subnet_ok else {_subnet(d.address) for d in chosen}
        for _ in range(REDRAWS):
            pick = self.draw(rng)
            if (
                pick.identity not in identities
                and pick.identity not in families
                and not any(f in identities for f in pick.family)
                and (same_subnet_ok or _subnet(pick.address) not in subnets)
            ):
                return pick
        free = self._filtered(self._conflicting(chosen, same_subnet_ok))
        return free.draw(rng) if free.candidates else None


class PathIndex:
    """One consensus, prepared for path selection (see the module docstring)."""

    def __init__(self, consensus: Consensus) -> None:
        self.consensus = consensus
        self._running = [r for r in consensus.relays if "Running" in r.flags]
        self._pools: dict[tuple[object, ...], _Pool] = {}

    def _cached(
        self, key: tuple[object, ...], statuses: Iterable[RouterStatus]
    ) -> _Pool:
        if len(self._pools) >= _CACHED_POOLS:
            self._pools.clear()
        pool = self._pools[key] = _Pool([r.descriptor for r in statuses])
        return pool

    def _running_in(self, exclude_anywhere: frozenset[str]) -> list[RouterStatus]:
        if not exclude_anywhere:
            return self._running
        return [
            r
            for r in self._running
            if r.descriptor.country.upper() not in exclude_anywhere
        ]

    def running(self, exclude_anywhere: frozenset[str]) -> _Pool:
        """Running relays outside the excluded countries."""
        key = ("running", exclude_anywhere)
        pool = self._pools.get(key)
        if pool is None:
            pool = self._cached(key, self._running_in(exclude_anywhere))
        return pool

    def guards(self, exclude_anywhere: frozenset[str]) -> _Pool:
        """Guard-flagged running relays (all running ones when none is)."""
        key = ("guards", exclude_anywhere)
        pool = self._pools.get(key)
        if pool is None:
            running = self._running_in(exclude_anywhere)
            flagged = [r for r in running if "Guard" in r.flags]
            pool = self._cached(key, flagged or running)
        return pool

    def exits(self, constraints: PathConstraints) -> _Pool:
        """Usable exits for the constraints' port and countries."""
        key = (
            "exits",
            constraints.port,
            constraints.exit_countries,
            constraints.exclude_exit_countries,
            constraints.exclude_countries_anywhere,
        )
        pool = self._pools.get(key)
        if pool is None:
            pool = self._cached(
                key,
                (
                    r
                    for r in self._running_in(constraints.exclude_countries_anywhere)
                    if _usable_exit(r, constraints.port)
                    and constraints.allows_exit_country(r.descriptor.country)
                ),
            )
        return pool

    def select(
        self, constraints: PathConstraints, rng: random.Random
    ) -> list[Descriptor]:
        """See ``select_path``."""
        if not 1 <= constraints.hops <= 8:
            raise ValueError(f"hops must be 1..8, not {constraints.hops}")
        anywhere = constraints.exclude_countries_anywhere
        exits = self.exits(constraints)
        if not exits.candidates:
            port = constraints.port
            wanted = "any port" if port is None else f"port {port}"
            where = ""
            if constraints.exit_countries:
                where = " in " + ",".join(sorted(constraints.exit_countries))
            if constraints.exclude_exit_countries:
                where += " outside " + ",".join(
                    sorted(constraints.exclude_exit_countries)
                )
            count = len(self._running_in(anywhere))
            raise PathSelectionError(
                f"no running exit{where} accepts {wanted} ({count} running relays)"
            )
        chosen = [exits.draw(rng)]
        if constraints.hops > 1:
            ok = constraints.same_subnet_ok
            guards = self.guards(anywhere)
            kept = None
            for identity in constraints.guards:
                candidate = guards.member(identity)
                if candidate is not None and not any(
                    _conflicts(candidate, c, ok) for c in chosen
                ):
                    kept = candidate
                    break
            guard = kept or guards.draw_compatible(chosen, ok, rng)
            if guard is None:
                raise PathSelectionError("no guard is compatible with the chosen exit")
            chosen.insert(0, guard)
            running = self.running(anywhere)
            for _ in range(constraints.hops - 2):
                middle = running.draw_compatible(chosen, ok, rng)
                if middle is None:
                    raise PathSelectionError(
                        f"not enough compatible relays for {constraints.hops} hops"
                    )
                chosen.insert(-1, middle)
        return chosen


_indexes: OrderedDict[int, PathIndex] = OrderedDict()
_indexes_lock = threading.Lock()


def path_index(consensus: Consensus) -> PathIndex:
    """The index of ``consensus``, built on first use and kept for the last
    few consensus objects (thread-safe: simulations may run in threads)."""
    with _indexes_lock:
        index = _indexes.get(id(consensus))
        if index is not None and index.consensus is consensus:
            _indexes.move_to_end(id(consensus))
            return index
    index = PathIndex(consensus)
    with _indexes_lock:
        _indexes[id(consensus)] = index
        while len(_indexes) > _CACHED_INDEXES:
            _indexes.popitem(last=False)
    return index


def select_path(
    consensus: Consensus, constraints: PathConstraints, rng: random.Random
) -> list[Descriptor]:
    """Choose guard, middle(s) and exit, in circuit order.

    Raises:
        PathSelectionError: no path satisfies the constraints; the message
            says which position could not be filled.
    """
    return path_index(consensus).select(constraints, rng)


@dataclass(frozen=True, slots=True)
class CountryRules:
    """A client's standing country choices (``--exit-country`` and friends).

    ``strict``: refuse a stream when no exit satisfies them, instead of
    falling back to any exit (the fallback never relaxes
    ``exclude_anywhere``).
    """

    exit_countries: frozenset[str] = frozenset()
    exclude_exit: frozenset[str] = frozenset()
    exclude_anywhere: frozenset[str] = frozenset()
    strict: bool = False

    @property
    def limits_exits(self) -> bool:
        """Whether these rules narrow the choice of exit."""
        return bool(self.exit_countries or self.exclude_exit or self.exclude_anywhere)


@dataclass(frozen=True, slots=True)
class ExitChoice:
    """What a set of exit constraints leaves to choose from."""

    matching: tuple[Descriptor, ...]
    running_exits: int
    bandwidth_share: float

    @property
    def is_small(self) -> bool:
        """Few enough exits that using them could single a user out."""
        return len(self.matching) < 3 or self.bandwidth_share < 0.1


def exit_choice(consensus: Consensus, constraints: PathConstraints) -> ExitChoice:
    """The running exits that satisfy ``constraints`` (port and countries).

    Returns them with the number of running exits in all and the share of
    exit bandwidth they hold, so a user can see what a choice costs.
    """
    exits = [
        r.descriptor
        for r in consensus.relays
        if "Running" in r.flags and _usable_exit(r, constraints.port)
    ]
    matching = tuple(d for d in exits if constraints.allows_exit_country(d.country))
    total = sum(max(1, d.bandwidth) for d in exits)
    share = sum(max(1, d.bandwidth) for d in matching) / total if total else 0.0
    return ExitChoice(matching, len(exits), share)
