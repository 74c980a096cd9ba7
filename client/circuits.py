"""The client's circuit manager: links to guards, building, stream attachment.

Circuits are built hop by hop (CREATE to the guard, then EXTEND in
RELAY_EARLY cells) along a path from ``hopchain.path.select_path``.  A new
stream reuses an open circuit whose exit accepts its port and its country
constraints, was built since the last NEWNYM, is unused or bound to the
stream's isolation key, and, once used, was first used less than the
dirtiness period ago (Tor's MaxCircuitDirtiness); circuits already in use
come first (as in Tor, to keep clean ones for later), newest first.
Otherwise a circuit is built for it.

``keep_circuits_ready`` keeps clean circuits for the ports streams used in
the last hour (``hopchain.predicted``); a clean circuit is retired after
``CLEAN_LIFETIME`` unused.  A guard that cannot be reached is marked down in
the guard set (``hopchain.guards``) and retried on its schedule.  With
country rules, each CONNECTED's egress address is checked
(``hopchain.egress``): a mismatch is logged and, under --strict-countries,
the exit is refused for those rules and the stream retried once on another.
Link readers handle every incoming cell synchronously; stream tasks wait on
one-shot ``_Reply`` objects for CREATED/EXTENDED/CONNECTED/RESOLVED.
``resolve`` asks an exit (any exit: a RESOLVE has no port) to resolve a name
or an address; the client itself never resolves anything.
"""

import logging
import random
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Final

import trio
from hopchain.relay.link import LINK_SETUP_ERRORS, Link, initiate
from hopchain.relay.net import Network, wall_clock
from hopchain.relay.stream import CircuitStream, CreditSignal, forget_if_ended

from hopchain.buildtime import BuildTimes
from hopchain.circuit import CircuitState, ClientCircuit, HopSpec
from hopchain.crypto.keys import fingerprint
from hopchain.directory import Consensus, Descriptor
from hopchain.egress import check_egress
from hopchain.errors import (
    CircuitError,
    DirectoryError,
    PathSelectionError,
    ProtocolError,
    StreamError,
)
from hopchain.geoip import GeoIPDatabase
from hopchain.guards import GuardSet
from hopchain.isolation import IsolationKey
from hopchain.messages import (
    Connected,
    Data,
    End,
    EndReason,
    Extended,
    Resolved,
    Sendme,
    Truncated,
)
from hopchain.path import CountryRules, PathConstraints, select_path
from hopchain.predicted import MAX_CLEAN, PredictedPorts, ports_to_prepare
from hopchain.reuse import exit_accepts, is_dirty
from hopchain.wire import Cell, CellCommand

logger = logging.getLogger(__name__)

STREAM_TIMEOUT: Final = 30.0
BUILD_ATTEMPTS: Final = 3
CLEAN_LIFETIME: Final = 3600.0
PREDICT_INTERVAL: Final = 30.0

_RuleKey = tuple[frozenset[str], frozenset[str], frozenset[str]]


def _rule_key(constraints: PathConstraints) -> _RuleKey:
    """The country rules of a stream, as a key for refused exits."""
    return (
        constraints.exit_countries,
        constraints.exclude_exit_countries,
        constraints.exclude_countries_anywhere,
    )


class _Reply:
    """A one-shot value set by the link reader and awaited by a task."""

    def __init__(self) -> None:
        self._event = trio.Event()
        self.value: object = None

    def set(self, value: object) -> None:
        if not self._event.is_set():
            self.value = value
            self._event.set()

    async def wait(self) -> object:
        await self._event.wait()
        return self.value


_CLOSED: Final = object()


@dataclass
class _Progress:
    """How far a build got: a failure before the first hop answered counts
    against the guard."""

    first_hop_done: bool = False


@dataclass(eq=False)
class ClientCircuitHandle:
    """A circuit as the client shell sees it."""

    core: ClientCircuit
    link: Link
    circ_id: int
    exit: Descriptor
    path: tuple[Descriptor, ...] = ()
    built_at: float = 0.0
    dirty_since: float | None = None
    streams: dict[int, CircuitStream] = field(default_factory=dict)
    waiting: dict[int, _Reply] = field(default_factory=dict)
    credit: CreditSignal = field(default_factory=CreditSignal)
    build_reply: _Reply | None = None
    isolation: IsolationKey | None = None
    epoch: int = 0
    fallback: bool = False
    on_overflow: Callable[["ClientCircuitHandle"], None] | None = None

    def forget_if_ended(self, stream_id: int) -> None:
        """Drop a stream once the core has forgotten it (both ENDs)."""
        forget_if_ended(self.streams, self.core.streams, stream_id)

    @property
    def exit_label(self) -> str:
        """The exit's nickname and country, for status output."""
        return f"{self.exit.nickname} ({self.exit.country or '??'})"

    def attach(self, now: float) -> None:
        """A stream uses the circuit: it is dirty from now on (once)."""
        if self.dirty_since is None:
            self.dirty_since = now

    def is_clean_at(self, now: float) -> bool:
        """Open, never used by a stream, and not past ``CLEAN_LIFETIME``."""
        return (
            self.is_open
            and self.dirty_since is None
            and now - self.built_at < CLEAN_LIFETIME
        )

    @property
    def is_open(self) -> bool:
        """Built and not closed."""
        return self.core.state is CircuitState.OPEN and not self.link.closed

    def send(self, bodies: list[bytes], *, early: bool = False) -> None:
        """Queue relay cells on the circuit's link (RELAY_EARLY if ``early``).

        Only EXTEND goes out as RELAY_EARLY, as in Tor.  That lets each relay
        count how many EXTENDs pass it, so the guard learns the path length
        and a hop learns how many hops follow it; the alternative (sending a
        fixed number of RELAY_EARLY cells) would instead tell the exit the
        path length, and the exit is the hop that sees destinations.
        """
        command = CellCommand.RELAY_EARLY if early else CellCommand.RELAY
        for body in bodies:
            if not self.link.send(self.circ_id, command, body):
                if self.on_overflow is not None:
                    self.on_overflow(self)
                return


class CircuitManager:
    """Builds circuits and attaches streams (see the module docstring)."""

    def __init__(
        self,
        network: Network,
        consensus: Callable[[], Consensus],
        *,
        hops: int,
        same_subnet_ok: bool,
        dirtiness: float,
        rng: random.Random,
        nursery: trio.Nursery,
        countries: CountryRules | None = None,
        guards: GuardSet | None = None,
        on_guards_changed: Callable[[GuardSet], None] | None = None,
        geoip: GeoIPDatabase | None = None,
        max_clean: int = MAX_CLEAN,
    ) -> None:
        self._network = network
        self._countries = countries or CountryRules()
        self.guards = guards or GuardSet()
        self.build_times = BuildTimes()
        self._on_guards_changed = on_guards_changed
        self._consensus = consensus
        self._hops = hops
        self._same_subnet_ok = same_subnet_ok
        self._dirtiness = dirtiness
        self._rng = rng
        self._nursery = nursery
        self._links: dict[bytes, Link] = {}
        self._link_lock = trio.Lock()
        self._build_lock = trio.Lock()
        self._circuits: dict[tuple[Link, int], ClientCircuitHandle] = {}
        self.built = 0
        self.epoch = 0
        self._geoip = geoip
        self.max_clean = max_clean
        self.predicted = PredictedPorts()
        self._wake = trio.Event()
        self._pass_done = trio.Event()
        self._egress_refused: dict[_RuleKey, set[bytes]] = {}
        self._egress_warned: set[tuple[_RuleKey, bytes]] = set()

    def newnym(self) -> None:
        """New streams get new circuits from now on (Tor's NEWNYM).

        Circuits in use keep their streams; they are retired when idle.
        """
        self.epoch += 1

    # --- circuits ------------------------------------------------------------

    async def circuit_for(
        self, port: int | None, isolation: IsolationKey | None = None
    ) -> ClientCircuitHandle:
        """An open circuit for a stream to ``port`` with this isolation key.

        ``port`` None (a RESOLVE) accepts a circuit to any exit.

        A circuit that no stream has used yet is bound to the first key it
        serves; ``None`` (warm-up builds) binds nothing.

        Raises:
            CircuitError: every build attempt failed.
            PathSelectionError: the directory has no suitable path.
        """
        found = self._reusable(port, isolation)
        if found is None:
            async with self._build_lock:
                found = self._reusable(port, isolation)
                if found is None:
                    found = await self.build(port, isolation)
        if isolation is not None and found.isolation is None:
            found.isolation = isolation
        return found

    def _reusable(
        self, port: int | None, isolation: IsolationKey | None
    ) -> ClientCircuitHandle | None:
        now = trio.current_time()
        self._retire_idle(now)
        constraints = self._constraints(port, isolation)
        in_use_first = sorted(
            self._circuits.values(), key=lambda h: (h.dirty_since is None, -h.built_at)
        )
        for handle in in_use_first:
            if (
                handle.is_open
                and not self._stale(handle, now)
                and handle.exit.identity not in constraints.avoid_exits
                and exit_accepts(handle.exit, port)
                and handle.isolation in (None, isolation)
                and handle.epoch == self.epoch
                and self._exit_fits(handle, constraints, isolation)
            ):
                return handle
        return None

    def _constraints(
        self,
        port: int | None,
        isolation: IsolationKey | None,
        *,
        fallback: bool = False,
    ) -> PathConstraints:
        """The path constraints for a stream: its own exit countries (from the
        API) or else the client's standing rules; ``fallback`` drops the
        exit-country rules (never the excluded-anywhere countries)."""
        rules = self._countries
        wanted = isolation.exit_countries if isolation else frozenset()
        excluded = isolation.exclude_exit_countries if isolation else frozenset()
        if not (wanted or excluded) and not fallback:
            wanted, excluded = rules.exit_countries, rules.exclude_exit
        now = wall_clock()
        refused = self._egress_refused.get((wanted, excluded, rules.exclude_anywhere))
        return PathConstraints(
            hops=self._hops,
            port=port,
            same_subnet_ok=self._same_subnet_ok,
            exit_countries=wanted,
            exclude_exit_countries=excluded,
            exclude_countries_anywhere=rules.exclude_anywhere,
            guards=self.guards.preferred(now),
            avoid_exits=frozenset(refused or ()),
            avoid_guards=self.guards.waiting(now),
        )

    @staticmethod
    def _own_countries(isolation: IsolationKey | None) -> bool:
        """Whether the stream brings its own exit countries (the API's)."""
        return isolation is not None and bool(
            isolation.exit_countries or isolation.exclude_exit_countries
        )

    def _exit_fits(
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
        return handle.fallback and not self._own_countries(isolation)

    def _select(
        self, port: int | None, isolation: IsolationKey | None
    ) -> tuple[list[Descriptor], bool]:
        """A path, and whether it is the fallback to any exit (logged), which
        is taken only without --strict-countries."""
        try:
            path = select_path(
                self._consensus(), self._constraints(port, isolation), self._rng
            )
        except PathSelectionError as exc:
            if (
                self._own_countries(isolation)
                or self._countries.strict
                or not self._countries.limits_exits
            ):
                raise
            logger.warning(
                "%s; using an exit outside the chosen countries "
                "(--strict-countries refuses instead)",
                exc,
            )
            fallback = self._constraints(port, isolation, fallback=True)
            return select_path(self._consensus(), fallback, self._rng), True
        return path, False

    async def _remember_guard(self, identity: bytes) -> None:
        """Keep the guard a circuit was just built through (see guards.py)."""
        if self._hops >= 2:  # a one-hop circuit's first hop is its exit
            await self._set_guards(
                self.guards.after_use(identity, wall_clock(), self._rng)
            )

    async def _guard_failed(self, guard: Descriptor) -> None:
        """The first hop could not be reached: if it is one of our guards, it
        is skipped until its retry time (see guards.py)."""
        if self._hops >= 2:
            updated = self.guards.failed(guard.identity, wall_clock())
            if updated != self.guards:
                logger.warning(
                    "guard %s is unreachable; using the next guard until its retry",
                    guard.nickname,
                )
            await self._set_guards(updated)

    async def _set_guards(self, updated: GuardSet) -> None:
        if updated == self.guards:
            return
        self.guards = updated
        if self._on_guards_changed is not None:
            try:
                await trio.to_thread.run_sync(self._on_guards_changed, updated)
            except OSError as exc:
                logger.warning("could not save the guard set: %s", exc)

    async def build(
        self, port: int | None, isolation: IsolationKey | None = None
    ) -> ClientCircuitHandle:
        """Build a fresh circuit for ``port`` (None: any exit), retrying.

        The exit satisfies the country constraints of ``isolation``.
        """
        last: Exception | None = None
        for _ in range(BUILD_ATTEMPTS):
            path, fallback = self._select(port, isolation)
            started = trio.current_time()
            progress = _Progress()
            try:
                handle = await self._build_path(path, progress)
            except (
                CircuitError,
                ProtocolError,
                OSError,
                EOFError,
                trio.TooSlowError,
            ) as exc:
                logger.info("circuit build failed: %s", exc)
                last = exc
                if not progress.first_hop_done:
                    await self._guard_failed(path[0])
                continue
            handle.built_at = trio.current_time()
            handle.fallback = fallback
            self.build_times.record(handle.built_at - started)
            await self._remember_guard(path[0].identity)
            handle.epoch = self.epoch
            self.built += 1
            logger.info(
                "circuit built: %d hops in %.0f ms",
                len(path),
                (handle.built_at - started) * 1000,
            )
            return handle
        raise CircuitError(f"could not build a circuit: {last}")

    async def _build_path(
        self, path: list[Descriptor], progress: "_Progress"
    ) -> ClientCircuitHandle:
        specs = [HopSpec(d.identity, d.onion_key, d.address, d.or_port) for d in path]
        with trio.fail_after(self.build_times.timeout):
            link = await self._link_to(path[0])
            circ_id = self._new_circ_id(link)
            core = ClientCircuit()
            handle = ClientCircuitHandle(
                core, link, circ_id, path[-1], tuple(path), on_overflow=self._destroy
            )
            self._circuits[(link, circ_id)] = handle
            try:
                handle.build_reply = _Reply()
                link.send(
                    circ_id,
                    CellCommand.CREATE,
                    core.create(specs[0], secrets.token_bytes(32)),
                )
                reply = await handle.build_reply.wait()
                if not isinstance(reply, bytes):
                    raise CircuitError("guard refused the circuit")
                core.on_created(reply)
                progress.first_hop_done = True
                for spec in specs[1:]:
                    handle.build_reply = _Reply()
                    handle.send(
                        [core.extend(spec, secrets.token_bytes(32))], early=True
                    )
                    if not isinstance(await handle.build_reply.wait(), Extended):
                        raise CircuitError("circuit closed while extending")
            except BaseException:
                self._destroy(handle)
                raise
        return handle

    def _stale(self, handle: ClientCircuitHandle, now: float) -> bool:
        """Retired for new streams: first used a dirtiness period ago, clean
        for ``CLEAN_LIFETIME``, built before the last NEWNYM, or through an
        exit the egress check refused for the client's standing rules."""
        if handle.epoch != self.epoch:
            return True
        if handle.exit.identity in self._refused_for_standing_rules():
            return True
        if handle.dirty_since is None:
            return now - handle.built_at >= CLEAN_LIFETIME
        return is_dirty(handle.dirty_since, now, self._dirtiness)

    def _refused_for_standing_rules(self) -> set[bytes]:
        """Exits the egress check refused for the client's own country rules."""
        rules = self._countries
        key = (rules.exit_countries, rules.exclude_exit, rules.exclude_anywhere)
        return self._egress_refused.get(key, set())

    def _retire_idle(self, now: float) -> None:
        """Destroy idle circuits that are stale (see ``_stale``)."""
        for handle in list(self._circuits.values()):
            stale = self._stale(handle, now)
            if handle.is_open and stale and not handle.streams and not handle.waiting:
                self._destroy(handle)

    def _destroy(self, handle: ClientCircuitHandle, *, notify: bool = True) -> None:
        if self._circuits.pop((handle.link, handle.circ_id), None) is None:
            return
        handle.core.close()
        if notify:
            handle.link.send(
                handle.circ_id, CellCommand.DESTROY, bytes([EndReason.DESTROYED])
            )
        for stream in handle.streams.values():
            stream.abort()
        for reply in handle.waiting.values():
            reply.set(_CLOSED)
        if handle.build_reply is not None:
            handle.build_reply.set(_CLOSED)
        handle.credit.fire()

    def describe(self) -> list[dict[str, object]]:
        """The circuits, for status output and ``hopchain circuits`` (no
        destinations): each hop's nickname, fingerprint prefix, country and
        consensus flags; age, state and stream count."""
        now = trio.current_time()
        try:
            flags = {r.descriptor.identity: r.flags for r in self._consensus().relays}
        except DirectoryError:
            flags = {}
        groups: dict[IsolationKey | None, int] = {}
        out: list[dict[str, object]] = []
        for handle in self._circuits.values():
            if handle.core.state is CircuitState.CLOSED or handle.link.closed:
                continue
            group = groups.setdefault(handle.isolation, len(groups))
            out.append(
                {
                    "id": handle.circ_id,
                    "exit": handle.exit_label,
                    "hops": len(handle.core.hops),
                    "path": [
                        {
                            "nickname": d.nickname,
                            "fingerprint": fingerprint(d.identity),
                            "country": d.country or "??",
                            "flags": sorted(flags.get(d.identity, ())),
                        }
                        for d in handle.path
                    ],
                    "state": self._state_of(handle, now),
                    "age_s": round(now - handle.built_at, 1) if handle.built_at else 0,
                    "streams": len(handle.streams),
                    "isolation_group": group,
                    "fresh": handle.epoch == self.epoch,
                }
            )
        return out

    def _state_of(self, handle: ClientCircuitHandle, now: float) -> str:
        """building; clean (never used); in use (takes new streams); or
        retiring (stale: no new streams, closed once idle)."""
        if not handle.is_open:
            return "building"
        if self._stale(handle, now):
            return "retiring"
        return "clean" if handle.dirty_since is None else "in use"

    def close_all(self) -> None:
        """Destroy every circuit (bench/circuit_build.py cleans up with it)."""
        for handle in list(self._circuits.values()):
            self._destroy(handle)

    def _new_circ_id(self, link: Link) -> int:
        while True:
            circ_id = secrets.randbits(32) or 1
            if (link, circ_id) not in self._circuits:
                return circ_id

    # --- links -------------------------------------------------------------

    async def _link_to(self, guard: Descriptor) -> Link:
        async with self._link_lock:
            link = self._links.get(guard.identity)
            if link is not None and not link.closed:
                return link
            stream = await self._network.connect(guard.address, guard.or_port)
            try:
                link = await initiate(stream, guard.identity, guard.onion_key)
            except LINK_SETUP_ERRORS as exc:
                await trio.aclose_forcefully(stream)
                raise CircuitError(f"link to guard failed: {exc}") from exc
            self._links[guard.identity] = link
            self._nursery.start_soon(self._run_link, link)
            return link

    async def _run_link(self, link: Link) -> None:
        try:
            await link.serve(partial(self._handle_cell, link))
        finally:
            for key, handle in list(self._circuits.items()):
                if key[0] is link:
                    self._destroy(handle, notify=False)

    def _handle_cell(self, link: Link, cell: Cell) -> None:
        handle = self._circuits.get((link, cell.circ_id))
        if handle is None:
            return
        if cell.command is CellCommand.CREATED:
            if handle.build_reply is not None:
                handle.build_reply.set(cell.body)
        elif cell.command is CellCommand.RELAY:
            try:
                self._relay(handle, cell.body)
            except ProtocolError as exc:
                logger.warning("destroying a circuit: %s", exc)
                self._destroy(handle)
        elif cell.command is CellCommand.DESTROY:
            self._destroy(handle, notify=False)

    def _relay(self, handle: ClientCircuitHandle, body: bytes) -> None:
        received, replies = handle.core.receive(body)
        handle.send(replies)
        if received is None:
            return
        message = received.message
        match message:
            case Data(stream_id=sid, data=data):
                stream = handle.streams.get(sid)
                if stream is not None:
                    stream.deliver(data)
                    handle.forget_if_ended(sid)
            case (
                Connected(stream_id=sid) | End(stream_id=sid) | Resolved(stream_id=sid)
            ):
                waiter = handle.waiting.pop(sid, None)
                if waiter is not None:
                    waiter.set(message)
                    return
                stream = handle.streams.get(sid)
                if stream is not None and isinstance(message, End):
                    if message.reason == EndReason.DONE:
                        stream.remote_end()
                    else:
                        stream.abort()
                    handle.forget_if_ended(sid)
            case Sendme():
                handle.credit.fire()
            case Extended():
                if handle.build_reply is not None:
                    handle.build_reply.set(message)
            case Truncated(reason=reason):
                logger.info(
                    "circuit truncated at hop %d: %s", received.hop + 1, reason.name
                )
                self._destroy(handle)

    # --- streams -------------------------------------------------------------

    async def open_stream(
        self, host: str, port: int, isolation: IsolationKey | None = None
    ) -> tuple[ClientCircuitHandle, CircuitStream]:
        """Open a stream to host:port through a circuit; returns once CONNECTED.

        Data that the exit sends right after CONNECTED is buffered in the
        returned stream, so server-first protocols lose nothing.  The caller
        closes the stream and then calls ``release``.

        Raises:
            StreamError: the exit refused or could not connect (with reason).
            CircuitError, DirectoryError, PathSelectionError: no circuit.
        """
        self.predicted.seen(port, trio.current_time())
        self._wake.set()
        refusal = ""
        for attempt in range(2):
            try:
                handle = await self.circuit_for(port, isolation)
            except PathSelectionError as exc:
                if not refusal:
                    raise
                raise StreamError(f"{refusal}; {exc}", EndReason.EXIT_POLICY) from exc
            handle.attach(trio.current_time())
            sid, body = handle.core.open_stream(host, port)
            stream = CircuitStream(sid, handle.core, handle.send, handle.credit)
            waiter = _Reply()
            handle.waiting[sid] = waiter
            handle.streams[sid] = stream
            handle.send([body])
            with trio.move_on_after(STREAM_TIMEOUT):
                result = await waiter.wait()
                if isinstance(result, Connected):
                    refusal = self._egress_refusal(handle, result, port, isolation)
                    if not refusal:
                        return handle, stream
                    await stream.aclose()
                    self.release(handle, stream)
                    if attempt == 0:
                        logger.info("retrying the stream on another exit")
                    continue
                handle.streams.pop(sid, None)
                if isinstance(result, End):
                    raise StreamError(
                        f"exit ended the stream: {result.reason.name}", result.reason
                    )
                # The circuit closed before CONNECTED: try once more on a new one.
                if attempt == 0:
                    logger.info("circuit closed before connected; retrying")
                continue
            handle.streams.pop(sid, None)
            handle.waiting.pop(sid, None)
            handle.send(handle.core.end_stream(sid, EndReason.TIMEOUT))
            raise StreamError("exit did not answer in time", EndReason.TIMEOUT)
        if refusal:
            raise StreamError(refusal, EndReason.EXIT_POLICY)
        raise StreamError("circuit closed before connected", EndReason.DESTROYED)

    def _egress_refusal(
        self,
        handle: ClientCircuitHandle,
        connected: Connected,
        port: int,
        isolation: IsolationKey | None,
    ) -> str:
        """Check the exit's egress against the stream's country rules (see
        ``hopchain.egress``).  A mismatch is logged (once per exit and
        rules); under --strict-countries (or the API's own countries) the
        exit is refused for those rules from now on, and the reason is
        returned ("" to go ahead)."""
        constraints = self._constraints(port, isolation)
        limited = (
            constraints.exit_countries
            or constraints.exclude_exit_countries
            or constraints.exclude_countries_anywhere
        )
        if handle.fallback or not limited:
            return ""
        verdict = check_egress(connected.egress, handle.exit, constraints, self._geoip)
        if verdict.ok:
            return ""
        key = _rule_key(constraints)
        if not (self._countries.strict or self._own_countries(isolation)):
            if (key, handle.exit.identity) not in self._egress_warned:
                self._egress_warned.add((key, handle.exit.identity))
                logger.warning(
                    "egress check failed: %s; using it anyway "
                    "(--strict-countries refuses such exits)",
                    verdict.reason,
                )
            return ""
        self._egress_refused.setdefault(key, set()).add(handle.exit.identity)
        logger.warning(
            "egress check failed: %s; exit refused for these country rules "
            "(--strict-countries)",
            verdict.reason,
        )
        return f"egress check failed: {verdict.reason}"

    # --- predicted ports -----------------------------------------------------

    async def keep_circuits_ready(self) -> None:
        """Keep clean circuits for the predicted ports, until cancelled.

        A pass runs after each new stream and every ``PREDICT_INTERVAL``
        seconds; it builds one circuit at a time, for the first predicted
        port no clean circuit serves, within ``max_clean`` clean circuits.
        A failed build ends the pass (the next one retries).
        """
        last_error = ""
        while True:
            self._wake = trio.Event()
            done = self._pass_done
            last_error = await self._prepare_predicted(last_error)
            done.set()
            self._pass_done = trio.Event()
            with trio.move_on_after(PREDICT_INTERVAL):
                await self._wake.wait()

    async def prepared(self) -> None:
        """Wait until the current (or next) pass of ``keep_circuits_ready``
        has ended."""
        await self._pass_done.wait()

    async def _prepare_predicted(self, last_error: str) -> str:
        """One pass; returns its error ("" if none), logged when new."""
        for _ in range(self.max_clean):
            now = trio.current_time()
            self._retire_idle(now)  # also the idle ones through refused exits
            clean = [
                h.exit
                for h in self._circuits.values()
                if h.is_clean_at(now) and h.epoch == self.epoch and h.isolation is None
            ]
            todo = ports_to_prepare(self.predicted.ports(now), clean, self.max_clean)
            if not todo:
                return ""
            try:
                async with self._build_lock:
                    await self.build(todo[0])
            except (CircuitError, DirectoryError, PathSelectionError) as exc:
                if str(exc) != last_error:
                    logger.info(
                        "could not build a circuit ahead for port %d: %s", todo[0], exc
                    )
                return str(exc)
        return ""

    async def resolve(
        self, query: str, *, ptr: bool, isolation: IsolationKey | None = None
    ) -> list[str]:
        """Have an exit resolve ``query``: a name's addresses, or (``ptr``) an
        IP address's name.  Waits as ``open_stream`` does: up to
        ``STREAM_TIMEOUT``, retrying once if the circuit dies first.

        Raises:
            StreamError: the exit could not or would not resolve (the
                RESOLVED or END reason), or did not answer in time.
            CircuitError, DirectoryError, PathSelectionError: no circuit.
        """
        try:
            for attempt in range(2):
                handle = await self.circuit_for(None, isolation)
                handle.attach(trio.current_time())
                result = await self._resolve_on(handle, query, ptr)
                if isinstance(result, Resolved):
                    if result.reason is None:
                        return list(result.answers)
                    raise StreamError(
                        f"exit could not resolve: {result.reason.name}", result.reason
                    )
                if isinstance(result, End):
                    raise StreamError(
                        f"exit ended the resolve: {result.reason.name}", result.reason
                    )
                if result is None:
                    raise StreamError("exit did not answer in time", EndReason.TIMEOUT)
                if attempt == 0:
                    logger.info("circuit closed before resolved; retrying on a new one")
            raise StreamError("circuit closed before resolved", EndReason.DESTROYED)
        finally:
            self._retire_idle(trio.current_time())

    async def _resolve_on(
        self, handle: ClientCircuitHandle, query: str, ptr: bool
    ) -> object:
        """RESOLVE on one circuit: what answered (RESOLVED, END, ``_CLOSED``),
        or None on timeout.  A RESOLVE still pending when this returns or is
        cancelled gets END(TIMEOUT), so the exit frees its stream id too."""
        sid, body = handle.core.resolve(query, ptr=ptr)
        waiter = _Reply()
        handle.waiting[sid] = waiter
        try:
            handle.send([body])
            result = None
            with trio.move_on_after(STREAM_TIMEOUT):
                result = await waiter.wait()
            return result
        finally:
            if handle.waiting.pop(sid, None) is not None:
                handle.send(handle.core.end_stream(sid, EndReason.TIMEOUT))

    def release(self, handle: ClientCircuitHandle, stream: CircuitStream) -> None:
        """Forget a finished stream (and retire its circuit if it is dirty).

        A closed stream stays registered until the exit's END has arrived
        too, so data still in flight is credited and reset, not lost.
        """
        handle.forget_if_ended(stream.stream_id)
        self._retire_idle(trio.current_time())
