"""What a stream's circuit must satisfy: the path constraints for a stream.

A stream's exit countries are its own (the Python API's) or else the
client's standing ``CountryRules``; ``fallback`` drops the exit-country
rules (never the excluded-anywhere countries) for the logged fallback to
any exit.  The constraints also carry the guard set (preferred guards, and
those waiting for their retry) and the exits the egress check refused for
these country rules (``hopchain.client.egresscheck``).
"""

from hopchain.client.handle import ClientCircuitHandle
from hopchain.relay.net import wall_clock

from hopchain.guards import GuardSet
from hopchain.isolation import IsolationKey
from hopchain.path import CountryRules, PathConstraints

RuleKey = tuple[frozenset[str], frozenset[str], frozenset[str]]
"""A stream's country rules (exit, excluded exit, excluded anywhere)."""


def rule_key(constraints: PathConstraints) -> RuleKey:
    """The country rules of a stream, as a key for refused exits."""
    return (
        constraints.exit_countries,
        constraints.exclude_exit_countries,
        constraints.exclude_countries_anywhere,
    )


def own_countries(isolation: IsolationKey | None) -> bool:
    """Whether the stream brings its own exit countries (the API's)."""
    return isolation is not None and bool(
        isolation.exit_countries or isolation.exclude_exit_countries
    )


class StreamRules:
    """The client's path rules, guard set and refused exits."""

    def __init__(
        self,
        *,
        hops: int,
        same_subnet_ok: bool,
        countries: CountryRules,
        guards: GuardSet,
    ) -> None:
        self.hops = hops
        self.same_subnet_ok = same_subnet_ok
        self.countries = countries
        self.guards = guards
        self._refused: dict[RuleKey, set[bytes]] = {}

    def constraints(
        self,
        port: int | None,
        isolation: IsolationKey | None,
        *,
        fallback: bool = False,
    ) -> PathConstraints:
        """The path constraints for a stream to ``port`` (None: any exit)."""
        rules = self.countries
        wanted = isolation.exit_countries if isolation else frozenset()
        excluded = isolation.exclude_exit_countries if isolation else frozenset()
        if not (wanted or excluded) and not fallback:
            wanted, excluded = rules.exit_countries, rules.exclude_exit
        now = wall_clock()
        refused = self._refused.get((wanted, excluded, rules.exclude_anywhere))
        return PathConstraints(
            hops=self.hops,
            port=port,
            same_subnet_ok=self.same_subnet_ok,
            exit_countries=wanted,
            exclude_exit_countries=excluded,
            exclude_countries_anywhere=rules.exclude_anywhere,
            guards=self.guards.preferred(now),
            avoid_exits=frozenset(refused or ()),
            avoid_guards=self.guards.waiting(now),
        )

    def exit_fits(
        self,
        handle: ClientCircuitHandle,
        constraints: PathConstraints,
        isolation: IsolationKey | None,
    ) -> bool:
        """Whether the circuit's exit satisfies the stream's country rules; a
        circuit built by the logged fallback serves streams that would fall
        back too, so the fallback does not build a circuit per stream."""
        if constraints.allows_exit_country(handle.exit.country):
            return True
        return handle.fallback and not own_countries(isolation)

    def refuse_exit(self, key: RuleKey, identity: bytes) -> None:
        """Never use this exit again for streams with these country rules."""
        self._refused.setdefault(key, set()).add(identity)

    def refused_for_standing_rules(self) -> set[bytes]:
        """Exits the egress check refused for the client's own country rules."""
        rules = self.countries
        key = (rules.exit_countries, rules.exclude_exit, rules.exclude_anywhere)
        return self._refused.get(key, set())
