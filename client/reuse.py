"""Which open circuit a new stream may use, and when a circuit is retired.

A new stream reuses an open circuit whose exit accepts its port and its
country constraints, that was built since the last NEWNYM, is unused or
bound to the stream's isolation key, does not run on a link suspected dead
(``GuardLinks.is_suspect``), and is not stale (``stale``).  Circuits already
in use come first (as in Tor, to keep clean ones for later), newest first.

A stale circuit takes no new stream and is destroyed once idle
(``retire_idle``): first used a dirtiness period ago (Tor's
MaxCircuitDirtiness), clean for ``CLEAN_LIFETIME``, built before the last
NEWNYM, through an exit the egress check refused for the client's standing
rules, or marked unusable after a stream on it got no answer.

The time and port rules are ``hopchain.reuse.is_dirty`` and ``exit_accepts``,
which ``hopchain sim paths`` calls for its simulated users too.
"""

from hopchain.client.handle import CLEAN_LIFETIME, ClientCircuitHandle
from hopchain.client.links import CircuitTable, GuardLinks
from hopchain.client.rules import StreamRules

from hopchain.isolation import IsolationKey
from hopchain.reuse import exit_accepts, is_dirty


class ReusePolicy:
    """Chooses circuits for new streams and retires stale ones."""

    def __init__(
        self,
        table: CircuitTable,
        links: GuardLinks,
        rules: StreamRules,
        *,
        dirtiness: float,
    ) -> None:
        self._table = table
        self._links = links
        self._rules = rules
        self.dirtiness = dirtiness
        self.epoch = 0

    def newnym(self) -> None:
        """Circuits built so far take no new stream (Tor's NEWNYM)."""
        self.epoch += 1

    def stale(self, handle: ClientCircuitHandle, now: float) -> bool:
        """Retired for new streams (see the module docstring)."""
        if handle.epoch != self.epoch or handle.unusable:
            return True
        if handle.exit.identity in self._rules.refused_for_standing_rules():
            return True
        if handle.dirty_since is None:
            return now - handle.built_at >= CLEAN_LIFETIME
        return is_dirty(handle.dirty_since, now, self.dirtiness)

    def reusable(
        self, port: int | None, isolation: IsolationKey | None, now: float
    ) -> ClientCircuitHandle | None:
        """An open circuit a stream to ``port`` with this key may use."""
        self.retire_idle(now)
        constraints = self._rules.constraints(port, isolation)
        in_use_first = sorted(
            self._table, key=lambda h: (h.dirty_since is None, -h.built_at)
        )
        for handle in in_use_first:
            if (
                handle.is_open
                and not self.stale(handle, now)
                and handle.exit.identity not in constraints.avoid_exits
                and exit_accepts(handle.exit, port)
                and handle.isolation in (None, isolation)
                and not self._links.is_suspect(handle.link)
                and self._rules.exit_fits(handle, constraints, isolation)
            ):
                return handle
        return None

    def retire_idle(self, now: float) -> None:
        """Destroy the idle circuits that are stale."""
        for handle in self._table:
            if handle.is_open and handle.idle and self.stale(handle, now):
                self._table.destroy(handle)

    def state_of(self, handle: ClientCircuitHandle, now: float) -> str:
        """building; clean (never used); in use (takes new streams); or
        retiring (stale: no new streams, closed once idle)."""
        if not handle.is_open:
            return "building"
        if self.stale(handle, now):
            return "retiring"
        return "clean" if handle.dirty_since is None else "in use"
