"""Building circuits: path choice, hop-by-hop build, retries, guard state.

A circuit is built along a path from ``hopchain.path.select_path`` (with
the logged fallback to any exit when the country rules leave none and
--strict-countries is off): CREATE to the guard on its link, then one
EXTEND per further hop in RELAY_EARLY cells, all within the build timeout
learned from earlier builds (``hopchain.buildtime``).  A failed build is
retried on a new path, ``BUILD_ATTEMPTS`` times in all.

Guards (``hopchain.guards``): a build that succeeds keeps its guard in the
set (``after_use``).  A build that fails before the guard answered CREATE
(the connection, the link handshake, or the CREATE itself timed out)
counts against the guard (``failed``): it is skipped until its retry time,
and the set is saved.  If the guard's link was already open and nothing at
all arrived on it while the CREATE waited, the guard has gone silent: the
link is abandoned, which destroys every circuit on it, so streams on them
fail at once instead of waiting for their own timeouts.  A failure further
along the path (a middle or exit that does not answer) never counts
against the guard: a hostile later hop must not be able to push a client
off its guard.
"""

import logging
import random
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import trio
from hopchain.client.handle import ClientCircuitHandle, Reply
from hopchain.client.links import CircuitTable, GuardLinks
from hopchain.client.rules import StreamRules, own_countries
from hopchain.relay.link import Link
from hopchain.relay.net import wall_clock

from hopchain.buildtime import BuildTimes
from hopchain.circuit import ClientCircuit, HopSpec
from hopchain.directory import Consensus, Descriptor
from hopchain.errors import CircuitError, PathSelectionError, ProtocolError
from hopchain.guards import GuardSet
from hopchain.isolation import IsolationKey
from hopchain.messages import Extended
from hopchain.path import select_path
from hopchain.wire import CellCommand

logger = logging.getLogger(__name__)

BUILD_ATTEMPTS: Final = 3

_BUILD_ERRORS = (CircuitError, ProtocolError, OSError, EOFError, trio.TooSlowError)


@dataclass
class _Progress:
    """How far a build got: the guard's link (and what had arrived on it when
    CREATE went out), and whether the guard answered."""

    link: Link | None = None
    heard: int = 0
    first_hop_done: bool = False


class CircuitBuilder:
    """Builds circuits with retries and keeps the guard set up to date."""

    def __init__(
        self,
        table: CircuitTable,
        links: GuardLinks,
        rules: StreamRules,
        consensus: Callable[[], Consensus],
        rng: random.Random,
        on_guards_changed: Callable[[GuardSet], None] | None = None,
    ) -> None:
        self._table = table
        self._links = links
        self._rules = rules
        self._consensus = consensus
        self._rng = rng
        self._on_guards_changed = on_guards_changed
        self.build_times = BuildTimes()
        self.built = 0

    async def build(
        self, port: int | None, isolation: IsolationKey | None = None
    ) -> ClientCircuitHandle:
        """Build a fresh circuit for ``port`` (None: any exit), retrying.

        The exit satisfies the country constraints of ``isolation``.

        Raises:
            CircuitError: every attempt failed.
            PathSelectionError: the directory has no suitable path.
        """
        last: Exception | None = None
        for _ in range(BUILD_ATTEMPTS):
            path, fallback = self._select(port, isolation)
            started = trio.current_time()
            progress = _Progress()
            try:
                handle = await self._build_path(path, progress)
            except _BUILD_ERRORS as exc:
                logger.info("circuit build failed: %s", exc)
                last = exc
                if not progress.first_hop_done:
                    await self._guard_failed(path[0], progress)
                continue
            handle.built_at = trio.current_time()
            handle.fallback = fallback
            self.build_times.record(handle.built_at - started)
            await self._remember_guard(path[0].identity)
            self.built += 1
            logger.info(
                "circuit built: %d hops in %.0f ms",
                len(path),
                (handle.built_at - started) * 1000,
            )
            return handle
        raise CircuitError(f"could not build a circuit: {last}")

    def _select(
        self, port: int | None, isolation: IsolationKey | None
    ) -> tuple[list[Descriptor], bool]:
        """A path, and whether it is the fallback to any exit (logged), which
        is taken only without --strict-countries."""
        rules = self._rules
        try:
            path = select_path(
                self._consensus(), rules.constraints(port, isolation), self._rng
            )
        except PathSelectionError as exc:
            countries = rules.countries
            if (
                own_countries(isolation)
                or countries.strict
                or not countries.limits_exits
            ):
                raise
            logger.warning(
                "%s; using an exit outside the chosen countries "
                "(--strict-countries refuses instead)",
                exc,
            )
            fallback = rules.constraints(port, isolation, fallback=True)
            return select_path(self._consensus(), fallback, self._rng), True
        return path, False

    async def _build_path(
        self, path: list[Descriptor], progress: _Progress
    ) -> ClientCircuitHandle:
        specs = [HopSpec(d.identity, d.onion_key, d.address, d.or_port) for d in path]
        with trio.fail_after(self.build_times.timeout):
            link = await self._links.link_to(path[0])
            progress.link, progress.heard = link, self._links.heard(link)
            core = ClientCircuit()
            handle = ClientCircuitHandle(
                core,
                link,
                self._table.new_circ_id(link),
                path[-1],
                tuple(path),
                on_overflow=self._table.destroy,
            )
            self._table.add(handle)
            try:
                handle.build_reply = Reply()
                link.send(
                    handle.circ_id,
                    CellCommand.CREATE,
                    core.create(specs[0], secrets.token_bytes(32)),
                )
                reply = await handle.build_reply.wait()
                if not isinstance(reply, bytes):
                    raise CircuitError("guard refused the circuit")
                core.on_created(reply)
                progress.first_hop_done = True
                for spec in specs[1:]:
                    handle.build_reply = Reply()
                    handle.send(
                        [core.extend(spec, secrets.token_bytes(32))], early=True
                    )
                    if not isinstance(await handle.build_reply.wait(), Extended):
                        raise CircuitError("circuit closed while extending")
            except BaseException:
                self._table.destroy(handle)
                raise
        return handle

    # --- guards --------------------------------------------------------------

    async def _remember_guard(self, identity: bytes) -> None:
        """Keep the guard a circuit was just built through (see guards.py)."""
        if self._rules.hops >= 2:  # a one-hop circuit's first hop is its exit
            await self._set_guards(
                self._rules.guards.after_use(identity, wall_clock(), self._rng)
            )

    async def _guard_failed(self, guard: Descriptor, progress: _Progress) -> None:
        """The guard did not answer: if it is one of our guards, it is
        skipped until its retry time (see guards.py); a link it stayed
        silent on is abandoned."""
        link = progress.link
        if (
            link is not None
            and not link.closed
            and self._links.silent_since(link, progress.heard)
        ):
            logger.info("guard %s went silent; closing its link", guard.nickname)
            await self._links.abandon(link)
        if self._rules.hops >= 2:
            updated = self._rules.guards.failed(guard.identity, wall_clock())
            if updated != self._rules.guards:
                logger.warning(
                    "guard %s is unreachable; using the next guard until its retry",
                    guard.nickname,
                )
            await self._set_guards(updated)

    async def _set_guards(self, updated: GuardSet) -> None:
        if updated == self._rules.guards:
            return
        self._rules.guards = updated
        if self._on_guards_changed is not None:
            try:
                await trio.to_thread.run_sync(self._on_guards_changed, updated)
            except OSError as exc:
                logger.warning("could not save the guard set: %s", exc)
