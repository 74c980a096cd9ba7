"""Path selection: a pure function of (consensus, constraints, rng).

Each position is drawn among the relays eligible for it with probability
proportional to the relay's bandwidth times its position weight: Tor's
bandwidth weights (``hopchain.weights``, computed once per consensus), which
keep scarce guard and exit bandwidth for those positions.  When every
eligible relay weighs 0, one is drawn uniformly, as Tor does.  Eligible are:

* exit: Running, Exit flag, not BadExit, its policy accepts the target port (any exit
  when the port is None: a RESOLVE has no port), not in ``avoid_exits``;
* guard: the first of ``constraints.guards`` (the client's persistent guard
  set, see ``hopchain.guards``) that is Running, Guard-flagged and compatible,
  else Running and Guard (falling back to Running when no relay has Guard),
  preferring relays not in ``avoid_guards``;
* middles: Running.

No relay appears twice, no two relays share a declared family, and, unless
``same_subnet_ok`` (test networks on loopback), no two relays share an IPv4
/16 or IPv6 /32.  The exit is chosen first, as Tor does, because it is the
scarcest position.  The rng is injected (``random.SystemRandom()`` in
production, a seeded ``random.Random`` in tests and simulations).
"""

import random
from dataclasses import dataclass

from hopchain.directory import Consensus, Descriptor
from hopchain.errors import PathSelectionError
from hopchain.pathpool import prepared


@dataclass(frozen=True, slots=True)
class PathConstraints:
    """What the caller asks of a path.

    ``port`` None: any exit will do.  ``exit_countries``: if not empty, the
    exit's (upper-case, two-letter) country must be one of them;
    ``exclude_exit_countries``: the exit's country must not be one of them;
    ``exclude_countries_anywhere``: no hop may be in one of them.  Countries
    come from the relays' descriptors.  ``avoid_exits``: identities never
    used as the exit (their egress failed the client's country check);
    ``avoid_guards``: identities not drawn as a new guard while another
    compatible guard exists (the client's guards that are down, waiting for
    their retry).
    """

    hops: int = 3
    port: int | None = 80
    same_subnet_ok: bool = False
    exit_countries: frozenset[str] = frozenset()
    exclude_exit_countries: frozenset[str] = frozenset()
    exclude_countries_anywhere: frozenset[str] = frozenset()
    guards: tuple[bytes, ...] = ()
    avoid_exits: frozenset[bytes] = frozenset()
    avoid_guards: frozenset[bytes] = frozenset()

    def allows_exit_country(self, country: str) -> bool:
        """Whether an exit in ``country`` satisfies the country constraints."""
        country = country.upper()
        if self.exit_countries and country not in self.exit_countries:
            return False
        if country in self.exclude_countries_anywhere:
            return False
        return country not in self.exclude_exit_countries


def select_path(
    consensus: Consensus, constraints: PathConstraints, rng: random.Random
) -> list[Descriptor]:
    """Choose guard, middle(s) and exit, in circuit order.

    The pools and weights come from ``hopchain.pathpool``, computed once per
    consensus; each hop removes the relays that conflict with those chosen.

    Raises:
        PathSelectionError: no path satisfies the constraints; the message
            says which position could not be filled.
    """
    if not 1 <= constraints.hops <= 8:
        raise ValueError(f"hops must be 1..8, not {constraints.hops}")
    net = prepared(consensus)
    anywhere = constraints.exclude_countries_anywhere
    port = constraints.port
    exits = net.exits(
        port, constraints.exit_countries, constraints.exclude_exit_countries | anywhere
    )
    avoid = exits.positions(net.with_identities(constraints.avoid_exits))
    exit_index = exits.draw(avoid, rng)
    if exit_index is None:
        wanted = "any port" if port is None else f"port {port}"
        where = ""
        if constraints.exit_countries:
            where = " in " + ",".join(sorted(constraints.exit_countries))
        if constraints.exclude_exit_countries:
            where += " outside " + ",".join(sorted(constraints.exclude_exit_countries))
        running = len(net.middles(anywhere))
        raise PathSelectionError(
            f"no running exit{where} accepts {wanted} ({running} running relays)"
        )
    chosen = [exit_index]
    taken = set(net.conflicting(exit_index, constraints.same_subnet_ok))
    if constraints.hops > 1:
        guards = net.guards(anywhere)
        removed = guards.positions(taken)
        if len(removed) == len(guards):
            raise PathSelectionError("no guard is compatible with the chosen exit")
        preferred = net.with_identities(constraints.guards)
        kept = next((i for i in preferred if i in guards and i not in taken), None)
        if kept is None:
            avoided = net.with_identities(constraints.avoid_guards)
            fresh = guards.positions(taken.union(avoided))
            kept = guards.draw(fresh if len(fresh) < len(guards) else removed, rng)
        assert kept is not None  # some guard is free
        chosen.insert(0, kept)
        taken.update(net.conflicting(kept, constraints.same_subnet_ok))
        middles = net.middles(anywhere)
        for _ in range(constraints.hops - 2):
            middle = middles.draw(middles.positions(taken), rng)
            if middle is None:
                raise PathSelectionError(
                    f"not enough compatible relays for {constraints.hops} hops"
                )
            chosen.insert(-1, middle)
            taken.update(net.conflicting(middle, constraints.same_subnet_ok))
    return [net.running[i].status.descriptor for i in chosen]


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
    exit selection weight they hold (bandwidth times Tor's exit position
    weight: the pools ``select_path`` draws exits from), so a user can see what a
    choice costs.
    """
    net = prepared(consensus)
    exits = net.exits(constraints.port, frozenset(), frozenset())
    chosen = net.exits(
        constraints.port,
        constraints.exit_countries,
        constraints.exclude_exit_countries | constraints.exclude_countries_anywhere,
    )
    matching = tuple(net.running[i].status.descriptor for i in chosen.members)
    share = chosen.total / exits.total if exits.total else 0.0
    return ExitChoice(matching, len(exits), share)
