"""The relay daemon: accepts links, runs circuits, extends them, and exits.

One task per link reads cells and handles each synchronously (peel, forward,
deliver); the only things that wait are opening a link for an extension,
exit connections and exit name lookups (RESOLVE), which run as tasks of
their own in the node's nursery.
"""

import dataclasses
import errno
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Final

import trio
from hopchain.relay import dirclient
from hopchain.relay.dirclient import AuthorityAddress
from hopchain.relay.keystore import OnionKeyFiles
from hopchain.relay.limits import RelayLimiter, ThrottledStream
from hopchain.relay.link import (
    LINK_SETUP_ERRORS,
    Link,
    SharedLimits,
    check_authenticate,
    initiate,
    respond,
)
from hopchain.relay.metrics import RelayCollector, serve_metrics
from hopchain.relay.net import Network, bound_port, peer_address, wall_clock
from hopchain.relay.pump import splice
from hopchain.relay.stats import CountingStream, RelayStats
from hopchain.relay.stream import CircuitStream, CreditSignal, forget_if_ended

from hopchain import exitpolicy
from hopchain.bandwidth import ThroughputMeter
from hopchain.crypto import handshake
from hopchain.crypto.keys import IdentityKey, OnionKey, fingerprint
from hopchain.crypto.onion import HopKeys
from hopchain.directory import Descriptor, sign_descriptor
from hopchain.errors import (
    DirectoryError,
    HandshakeError,
    LinkError,
    ProtocolError,
    StreamError,
)
from hopchain.messages import (
    MAX_ANSWERS,
    MAX_HOSTNAME,
    Begin,
    Connected,
    Data,
    End,
    EndReason,
    Extend,
    Resolve,
    Sendme,
)
from hopchain.onionrotation import RotationPolicy, plan
from hopchain.oom import select_victims
from hopchain.relaycircuit import Deliver, Forward, RelayCircuit, Respond
from hopchain.relaylimits import RelayLimits
from hopchain.safelog import log_event, sensitive
from hopchain.wire import Cell, CellCommand

logger = logging.getLogger(__name__)

EXTEND_TIMEOUT: Final = 15.0
CONNECT_TIMEOUT: Final = 20.0
RESOLVE_TIMEOUT: Final = 20.0
PUBLISH_RETRY: Final = 2.0
# After the drain, how long the last ENDs and DESTROYs may take to leave.
CLOSE_TIMEOUT: Final = 5.0
# The rotation loop sleeps at most this long, so a wall-clock jump (a
# suspended machine, a corrected clock) is noticed within the hour.
ROTATION_RECHECK: Final = 3600.0
# RelayConfig fields that RelayNode.reload applies to a running relay (for
# new streams and circuits); changes to any other field need a restart.
RELOADABLE: Final = ("exit_policy", "bandwidth", "limits")
_QUEUE_REFUSED: Final = "link closed, or circuit queue full (flow control ignored)"


@dataclass
class RelayConfig:
    """Everything a relay needs to run (from the CLI or a test)."""

    nickname: str
    address: str
    port: int = 0
    ipv6_address: str = ""
    contact: str = ""
    family: tuple[bytes, ...] = ()
    authorities: list[AuthorityAddress] = field(default_factory=list)
    exit: bool = False
    exit_policy: exitpolicy.ExitPolicy | None = None  # None: default_policy()
    test_network: bool = False
    bandwidth: int = 10_000_000
    country: str = ""
    publish_interval: float = 600.0
    metrics_port: int | None = None  # None: no metrics endpoint
    metrics_address: str = "127.0.0.1"
    metrics_allow_public: bool = False
    limits: RelayLimits = field(default_factory=RelayLimits)


@dataclass(frozen=True, slots=True)
class KeyRotation:
    """Where the onion keys live and how often they change."""

    files: OnionKeyFiles
    policy: RotationPolicy
    created: float
    previous: OnionKey | None = None


@dataclass(eq=False)
class _Circuit:
    """A circuit as the relay shell sees it: core state plus its two links."""

    core: RelayCircuit
    prev: Link
    prev_id: int
    next: Link | None = None
    next_id: int = 0
    streams: dict[int, CircuitStream] = field(default_factory=dict)
    connecting: dict[int, trio.CancelScope] = field(default_factory=dict)
    resolving: dict[int, trio.CancelScope] = field(default_factory=dict)
    half_closed: set[int] = field(default_factory=set)
    credit: CreditSignal = field(default_factory=CreditSignal)
    closed: bool = False


class RelayNode:
    """A relay (see the module docstring)."""

    def __init__(
        self,
        config: RelayConfig,
        identity: IdentityKey,
        onion_key: OnionKey,
        network: Network,
        *,
        rotation: KeyRotation | None = None,
    ) -> None:
        self.config = config
        self.identity = identity
        # The current onion key first (published), then the previous one
        # while its grace period lasts (still answered).
        self.onion_keys = [onion_key]
        self.network = network
        self.port = config.port
        self._rotation = rotation
        if rotation is not None:
            self._onion_created = rotation.created
            if rotation.previous is not None:
                self.onion_keys.append(rotation.previous)
        self._links: set[Link] = set()
        self._accepting = trio.CancelScope()
        self._republish = trio.Event()
        self._draining = False
        self._drained = trio.Event()
        self._splices: set[trio.CancelScope] = set()
        self._splices_ended = trio.Event()
        self._by_prev: dict[tuple[Link, int], _Circuit] = {}
        self._by_next: dict[tuple[Link, int], _Circuit] = {}
        self._out_links: dict[bytes, Link] = {}
        self._link_locks: dict[bytes, trio.Lock] = {}
        self._nursery: trio.Nursery | None = None
        self.published = trio.Event()
        self.stats = RelayStats()
        self.metrics_port: int | None = None
        self._exit_policy = (
            exitpolicy.default_policy(config.test_network)
            if config.exit_policy is None
            else config.exit_policy
        )
        self.throughput = ThroughputMeter()  # relayed bytes, for the descriptor
        # Resource limits (relay/limits.py); the counters live on self.limits,
        # whose hits and queue budget the metrics read.
        self.limits = RelayLimiter(config.limits)
        self.stats.limit_hits.update(self.limits.hits)
        self.limits.hits = self.stats.limit_hits
        self.stats.queued_bytes = lambda: self.limits.queued_bytes
        self._shared = SharedLimits(
            self.limits.budget, self._out_of_memory, self.limits
        )
        self._link_addresses: dict[Link, str] = {}
        self._in_oom = False
        self.stopped = trio.Event()  # set when a shutdown has finished

    # --- lifecycle -----------------------------------------------------------

    async def serve(
        self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen, publish to the authorities, and relay until cancelled."""
        listeners = await self.network.listen(self.config.address, self.config.port)
        self.port = bound_port(listeners)
        if self.config.ipv6_address:
            try:
                listeners += await self.network.listen(
                    self.config.ipv6_address, self.port
                )
            except BaseException:
                for listener in listeners:
                    await trio.aclose_forcefully(listener)
                raise
        logger.info(
            "relay %s (%s) listening on port %d%s",
            self.config.nickname,
            fingerprint(self.identity.public),
            self.port,
            " as an exit" if self.config.exit else "",
        )
        self.stats.started = wall_clock()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            if self.config.metrics_port is not None:
                self.metrics_port = await nursery.start(
                    partial(
                        serve_metrics,
                        self.network,
                        RelayCollector(self.stats, self.config.nickname),
                        self.config.metrics_address,
                        self.config.metrics_port,
                        allow_public=self.config.metrics_allow_public,
                    )
                )
            nursery.start_soon(self._listen, listeners, nursery)
            if self.config.authorities:
                nursery.start_soon(self._publish_loop)
            if self._rotation is not None:
                nursery.start_soon(self._rotation_loop)
            task_status.started(self.port)

    async def _listen(
        self,
        listeners: list[trio.abc.Listener[trio.abc.HalfCloseableStream]],
        nursery: trio.Nursery,
    ) -> None:
        # Links run in the node's nursery, so that closing the listeners
        # (shutdown) leaves the established links alone.
        with self._accepting:
            await trio.serve_listeners(self._accept, listeners, handler_nursery=nursery)

    def shutdown(self, grace: float) -> None:
        """Stop gracefully: the entry point for SIGTERM and SIGINT.

        At once: close the listeners, and refuse new circuits, extensions and
        streams.  Then let the circuits finish for up to ``grace`` seconds;
        after that, end every exit stream in order (END DONE after the data
        already read), destroy the remaining circuits, give the links up to
        ``CLOSE_TIMEOUT`` to write those last cells, and stop: ``serve``
        returns.  A second call changes nothing; to stop at once, cancel
        ``serve`` instead.
        """
        if self._draining or self._nursery is None:
            return
        self._draining = True
        self._accepting.cancel()
        logger.info(
            "shutting down: no new links, circuits or streams; %d circuits "
            "may finish within %g s",
            len(self._by_prev),
            grace,
        )
        self._nursery.start_soon(self._drain, grace)

    async def _drain(self, grace: float) -> None:
        with trio.move_on_after(grace):
            if self._by_prev:
                await self._drained.wait()
        left = len(self._by_prev)
        with trio.move_on_after(CLOSE_TIMEOUT):
            self._splices_ended = trio.Event()
            for scope in list(self._splices):
                scope.cancel()
            if self._splices:
                await self._splices_ended.wait()
            for circuit in list(self._by_prev.values()):
                self._teardown(circuit)
            for link in list(self._links):
                await link.flush()
        logger.info("stopped; %d circuits were still open after the grace time", left)
        self.stopped.set()
        assert self._nursery is not None
        self._nursery.cancel_scope.cancel()

    def reload(self, config: RelayConfig) -> list[str]:
        """Apply the ``RELOADABLE`` fields of ``config`` (SIGHUP).

        Circuits and streams stay up; new streams see the new values.  A
        change to any other field is logged as needing a restart.  Returns
        the names of the fields that changed.
        """
        changed = [
            f.name
            for f in dataclasses.fields(RelayConfig)
            if getattr(config, f.name) != getattr(self.config, f.name)
        ]
        applied = [name for name in changed if name in RELOADABLE]
        ignored = [name for name in changed if name not in RELOADABLE]
        if ignored:
            logger.warning(
                "reload: %s changed; that takes a restart", ", ".join(ignored)
            )
        self.config = dataclasses.replace(
            self.config, **{name: getattr(config, name) for name in applied}
        )
        if "exit_policy" in applied:
            self.set_exit_policy(
                self.config.exit_policy
                or exitpolicy.default_policy(self.config.test_network)
            )
        if "limits" in applied:
            self.limits.reload(self.config.limits)
        logger.info("reloaded: %s", ", ".join(applied) or "nothing changed")
        if applied:
            self._republish.set()
        return applied

    def descriptor(self) -> bytes:
        """This relay's signed descriptor, published now."""
        desc = Descriptor(
            nickname=self.config.nickname,
            identity=self.identity.public,
            onion_key=self.onion_keys[0].public,
            address=self.config.address,
            address6=self.config.ipv6_address,
            contact=self.config.contact,
            or_port=self.port,
            bandwidth=self.config.bandwidth,
            exit_ports=self._exit_policy.summary() if self.config.exit else (),
            family=self.config.family,
            country=self.config.country,
            published=wall_clock(),
            test_network=self.config.test_network,
            observed_bandwidth=self.throughput.observed(trio.current_time()),
        )
        return sign_descriptor(desc, self.identity.sign)

    async def _publish_loop(self) -> None:
        while True:
            ok = 0
            descriptor = self.descriptor()  # the same one for every authority
            for authority in self.config.authorities:
                try:
                    await dirclient.publish(self.network, authority, descriptor)
                    ok += 1
                except DirectoryError as exc:
                    logger.warning(
                        "publishing to %s:%d failed: %s",
                        authority.host,
                        authority.port,
                        exc,
                    )
            if ok:
                if not self.published.is_set():
                    logger.info("descriptor published to %d authorities", ok)
                self.published.set()
                with trio.move_on_after(self.config.publish_interval):
                    await self._republish.wait()
                self._republish = trio.Event()
            else:
                await trio.sleep(PUBLISH_RETRY)

    # --- onion keys ------------------------------------------------------------

    async def _rotation_loop(self) -> None:
        while True:
            wait = self.check_onion_keys(wall_clock())
            await trio.sleep(min(wait, ROTATION_RECHECK))

    def check_onion_keys(self, now: float) -> float:
        """Rotate the onion key or forget the previous one when due.

        Returns the seconds until the next change is due.  A new key is
        written to disk before it is used, and published at once.
        """
        assert self._rotation is not None
        files, policy = self._rotation.files, self._rotation.policy
        step = plan(self._onion_created, len(self.onion_keys) > 1, now, policy)
        if step.rotate:
            new = OnionKey(secrets.token_bytes(32))
            files.rotate(self.onion_keys[0].secret, new.secret, now)
            self.onion_keys = [new, self.onion_keys[0]]
            self._onion_created = now
            self._republish.set()
            logger.info(
                "onion key rotated; the previous one is answered for %g s more",
                policy.grace,
            )
        elif step.drop_previous:
            files.drop_previous()
            self.onion_keys = self.onion_keys[:1]
            logger.info("the previous onion key's grace period is over; deleted")
        return max(0.0, step.wake_at - now)

    # --- links -------------------------------------------------------------

    async def _accept(self, stream: trio.abc.HalfCloseableStream) -> None:
        try:
            address = peer_address(stream)
        except OSError:
            await stream.aclose()
            return  # gone already
        if not self.limits.link_opened(address):  # before any crypto work
            await stream.aclose()
            return
        try:
            await self._serve_inbound(stream, address)
        finally:
            self.limits.link_closed(address)

    async def _serve_inbound(
        self, stream: trio.abc.HalfCloseableStream, address: str
    ) -> None:
        try:
            link = await respond(
                stream,
                self.identity,
                self.onion_keys,
                timeout=self.limits.config.handshake_timeout,
                shared=self._shared,
            )
        except LINK_SETUP_ERRORS as exc:
            if isinstance(exc, trio.TooSlowError):
                self.limits.handshake_timed_out()
            logger.debug("inbound link handshake failed: %s", exc)
            self.stats.handshake_failure("link", exc)
            await stream.aclose()
            return
        self._link_addresses[link] = address
        try:
            await self._run_link(link, inbound=True)
        finally:
            del self._link_addresses[link]

    async def _run_link(self, link: Link, *, inbound: bool) -> None:
        direction = "inbound" if inbound else "outbound"
        link.traffic = self.stats.traffic
        self._links.add(link)
        self.stats.links_opened[direction] += 1
        try:
            await link.serve(partial(self._handle_cell, link, inbound=inbound))
        finally:
            self._links.discard(link)
            self.stats.links_closed[direction] += 1
            for key, circuit in list(self._by_prev.items()) + list(
                self._by_next.items()
            ):
                if key[0] is link:
                    self._teardown(circuit, notify_source=link)
            if self._out_links.get(link.peer_identity or b"") is link:
                del self._out_links[link.peer_identity or b""]

    async def _get_link(
        self, identity: bytes, onion_key: bytes, host: str, port: int
    ) -> Link:
        lock = self._link_locks.setdefault(identity, trio.Lock())
        async with lock:
            link = self._out_links.get(identity)
            if link is not None and not link.closed:
                return link
            stream = await self.network.connect(
                host, port, local_address=self._local_address_for(host)
            )
            try:
                link = await initiate(
                    stream,
                    identity,
                    onion_key,
                    own_identity=self.identity,
                    shared=self._shared,
                )
            except BaseException:
                await trio.aclose_forcefully(stream)
                raise
            self._out_links[identity] = link
            assert self._nursery is not None
            self._nursery.start_soon(partial(self._run_link, link, inbound=False))
            return link

    # --- cells -------------------------------------------------------------

    def _handle_cell(self, link: Link, cell: Cell, *, inbound: bool) -> None:
        key = (link, cell.circ_id)
        command = cell.command
        if command is CellCommand.RELAY or command is CellCommand.RELAY_EARLY:
            self.throughput.record(trio.current_time(), len(cell.body))
            circuit = self._by_prev.get(key)
            if circuit is not None:
                self._forward(circuit, cell)
                return
            circuit = self._by_next.get(key)
            if circuit is not None:
                self._backward(circuit, cell.body)
            return
        if command is CellCommand.CREATE:
            if not inbound or key in self._by_prev:
                raise LinkError("create on an outbound link or a used circuit id")
            self._create(link, cell)
        elif command is CellCommand.CREATED:
            circuit = self._by_next.get(key)
            if circuit is not None:
                self._created(circuit, cell.body)
        elif command is CellCommand.DESTROY:
            circuit = self._by_prev.get(key) or self._by_next.get(key)
            if circuit is not None:
                self._teardown(circuit, notify_source=link)
        elif command is CellCommand.AUTHENTICATE:
            if not inbound:
                raise LinkError("authenticate from a responder")
            try:
                check_authenticate(link, cell.body)
            except HandshakeError as exc:
                self.stats.handshake_failure("authenticate", exc)
                raise LinkError(str(exc)) from exc

    def _create(self, link: Link, cell: Cell) -> None:
        if self._draining:
            link.send(cell.circ_id, CellCommand.DESTROY, bytes([EndReason.DESTROYED]))
            return
        # Per-address limits apply to clients; a relay (authenticated link)
        # carries many clients' circuits and is exempt.  Checked before the
        # handshake's crypto work.
        client = None if link.peer_identity else self._link_addresses.get(link)
        if not self.limits.may_create(client):
            link.send(
                cell.circ_id, CellCommand.DESTROY, bytes([EndReason.RESOURCE_LIMIT])
            )
            return
        try:
            reply, prk = handshake.server_reply_with_ephemeral(
                handshake.CIRCUIT_LABEL,
                self.identity.public,
                self.onion_keys,
                cell.body,
                secrets.token_bytes(32),
            )
        except HandshakeError as exc:
            logger.warning("refusing a create: %s", exc)
            self.stats.handshake_failure("circuit", exc)
            link.send(cell.circ_id, CellCommand.DESTROY, bytes([EndReason.PROTOCOL]))
            return
        core = RelayCircuit(
            HopKeys.from_prk(prk), self.identity.public, link.peer_identity
        )
        self._by_prev[(link, cell.circ_id)] = _Circuit(core, link, cell.circ_id)
        self.stats.circuits_created += 1
        link.send(cell.circ_id, CellCommand.CREATED, reply)

    def _forward(self, circuit: _Circuit, cell: Cell) -> None:
        try:
            result = circuit.core.forward(
                cell.body, early=cell.command is CellCommand.RELAY_EARLY
            )
            if isinstance(result, Forward):
                assert circuit.next is not None
                if not circuit.next.send(circuit.next_id, cell.command, result.body):
                    self.stats.queue_refused(circuit.next)
                    raise ProtocolError(_QUEUE_REFUSED)
            elif isinstance(result, Deliver):
                self._deliver(circuit, result.message)
            elif isinstance(result, Respond):
                self._send_back(circuit, result.bodies)
        except ProtocolError as exc:
            logger.warning("destroying a circuit: %s", exc)
            self._teardown(circuit)

    def _backward(self, circuit: _Circuit, body: bytes) -> None:
        try:
            self._send_back(circuit, [circuit.core.backward(body)])
        except ProtocolError as exc:
            logger.warning("destroying a circuit: %s", exc)
            self._teardown(circuit)

    def _send_back(self, circuit: _Circuit, bodies: list[bytes]) -> None:
        for body in bodies:
            if circuit.closed:
                return  # the out-of-memory handler closed it meanwhile
            if not circuit.prev.send(circuit.prev_id, CellCommand.RELAY, body):
                self.stats.queue_refused(circuit.prev)
                raise ProtocolError(_QUEUE_REFUSED)

    def _sender(self, circuit: _Circuit) -> Callable[[list[bytes]], None]:
        def send(bodies: list[bytes]) -> None:
            if circuit.closed:
                return
            try:
                self._send_back(circuit, bodies)
            except ProtocolError as exc:
                logger.warning("destroying a circuit: %s", exc)
                self._teardown(circuit)

        return send

    def _teardown(self, circuit: _Circuit, notify_source: Link | None = None) -> None:
        if circuit.closed:
            return
        circuit.closed = True
        self.stats.circuits_closed += 1
        self._by_prev.pop((circuit.prev, circuit.prev_id), None)
        destroy = bytes([EndReason.DESTROYED])
        if circuit.prev is not notify_source:
            circuit.prev.send(circuit.prev_id, CellCommand.DESTROY, destroy)
        if circuit.next is not None:
            self._by_next.pop((circuit.next, circuit.next_id), None)
            if circuit.next is not notify_source:
                circuit.next.send(circuit.next_id, CellCommand.DESTROY, destroy)
        for stream in circuit.streams.values():
            stream.abort()
        for scope in [*circuit.connecting.values(), *circuit.resolving.values()]:
            scope.cancel()
        circuit.credit.fire()
        if self._draining and not self._by_prev:
            self._drained.set()

    def _out_of_memory(self) -> None:
        """Queued cells exceed the cap: close the circuits holding the most
        (``oom.select_victims``), dropping their queued cells, until the
        total is back under the handler's target.  Runs inside ``Link.send``."""
        if self._in_oom:
            return  # the DESTROY cells of a teardown below
        self._in_oom = True
        try:
            budget = self.limits.budget
            before = budget.queued
            circuits = {*self._by_prev.values(), *self._by_next.values()}
            queued = {
                c: c.prev.queued_for(c.prev_id)
                + (c.next.queued_for(c.next_id) if c.next is not None else 0)
                for c in circuits
            }
            victims = select_victims(queued, budget.queued, budget.target)
            for circuit in victims:
                circuit.prev.drop_circuit(circuit.prev_id)
                if circuit.next is not None:
                    circuit.next.drop_circuit(circuit.next_id)
                self._teardown(circuit)
            self.limits.oom_circuits_closed += len(victims)
            self.limits.oom_bytes_freed += max(0, before - budget.queued)
            self.limits.hit(
                "oom",
                "out of memory: %d bytes of cells queued, over the cap of %d; "
                "closed %d circuits holding the most, %d bytes left",
                before,
                budget.cap,
                len(victims),
                budget.queued,
            )
        finally:
            self._in_oom = False

    # --- messages for this hop ------------------------------------------------

    def _deliver(self, circuit: _Circuit, message: object) -> None:
        assert self._nursery is not None
        if self._draining and isinstance(message, Extend | Begin | Resolve):
            self._refuse_while_draining(circuit, message)
            return
        match message:
            case Extend():
                self._nursery.start_soon(self._guarded, circuit, self._extend, message)
            case Begin(stream_id=sid):
                if not self.config.exit:
                    self._sender(circuit)(
                        circuit.core.end_stream(sid, EndReason.EXIT_POLICY)
                    )
                    return
                self._nursery.start_soon(
                    self._guarded, circuit, self._exit_stream, message
                )
            case Resolve(stream_id=sid):
                if not self.config.exit:
                    self._sender(circuit)(
                        circuit.core.resolved(sid, reason=EndReason.EXIT_POLICY)
                    )
                    return
                self._nursery.start_soon(
                    self._guarded, circuit, self._exit_resolve, message
                )
            case Data(stream_id=sid, data=data):
                stream = circuit.streams.get(sid)
                if stream is None:
                    raise ProtocolError("data before connected")
                stream.deliver(data)
                forget_if_ended(circuit.streams, circuit.core.streams, sid)
            case End(stream_id=sid, reason=reason):
                lookup = circuit.resolving.pop(sid, None)
                if lookup is not None:
                    lookup.cancel()  # the client gave up on its RESOLVE
                    return
                stream = circuit.streams.get(sid)
                if stream is not None:
                    if reason == EndReason.DONE:
                        stream.remote_end()
                    else:
                        stream.abort()
                    forget_if_ended(circuit.streams, circuit.core.streams, sid)
                scope = circuit.connecting.get(sid)
                if scope is not None and reason != EndReason.DONE:
                    scope.cancel()
                elif scope is not None:
                    circuit.half_closed.add(sid)  # EOF once connected
            case Sendme():
                circuit.credit.fire()

    def _refuse_while_draining(
        self, circuit: _Circuit, message: Extend | Begin | Resolve
    ) -> None:
        send = self._sender(circuit)
        if isinstance(message, Extend):
            send([circuit.core.extend_failed(EndReason.MISC)])
        elif isinstance(message, Begin):
            send(circuit.core.end_stream(message.stream_id, EndReason.MISC))
        else:
            send(circuit.core.resolved(message.stream_id, reason=EndReason.MISC))

    async def _guarded(
        self,
        circuit: _Circuit,
        work: Callable[[_Circuit, Any], Awaitable[None]],
        message: Any,
    ) -> None:
        """Run one circuit's task; a bug in it ends that circuit, not the relay."""
        try:
            await work(circuit, message)
        except Exception:
            logger.exception("bug in a circuit task; destroying the circuit")
            self._teardown(circuit)

    def _may_extend_to(self, host: str, port: int) -> bool:
        """Extensions go to public IP literals only (outside test networks), so
        a client cannot make a relay probe its operator's private network."""
        try:
            return exitpolicy.destination_allowed(
                host,
                port,
                test_network=self.config.test_network,
                own_addresses=self._own_addresses(),
            )
        except ValueError:
            return False

    def _own_addresses(self) -> list[str]:
        return [a for a in (self.config.address, self.config.ipv6_address) if a]

    def _local_address_for(self, destination: str) -> str | None:
        """The relay's own address of the destination's family, to connect
        from (exits contact destinations from their published address)."""
        return next(
            (a for a in self._own_addresses() if _same_family(a, destination)), None
        )

    async def _extend(self, circuit: _Circuit, message: Extend) -> None:
        if not self._may_extend_to(message.host, message.port):
            logger.info("refusing to extend to a private or non-IP address")
            self._sender(circuit)([circuit.core.extend_failed(EndReason.EXIT_POLICY)])
            return
        try:
            with trio.fail_after(EXTEND_TIMEOUT):
                link = await self._get_link(
                    message.identity, message.onion_key, message.host, message.port
                )
        except LINK_SETUP_ERRORS as exc:
            logger.info("extend failed: %s", type(exc).__name__)
            if not circuit.closed:
                self._sender(circuit)(
                    [circuit.core.extend_failed(EndReason.CONNECT_REFUSED)]
                )
            return
        if circuit.closed:
            return
        circ_id = self._new_circ_id(link)
        circuit.next, circuit.next_id = link, circ_id
        self._by_next[(link, circ_id)] = circuit
        link.send(circ_id, CellCommand.CREATE, message.handshake)

    def _created(self, circuit: _Circuit, reply: bytes) -> None:
        try:
            if len(reply) != handshake.SERVER_MESSAGE_BYTES:
                raise ProtocolError(f"created of {len(reply)} bytes from the next hop")
            self._send_back(circuit, [circuit.core.extended(reply)])
        except ProtocolError as exc:
            logger.warning("destroying a circuit: %s", exc)
            self._teardown(circuit)

    def _new_circ_id(self, link: Link) -> int:
        while True:
            circ_id = secrets.randbits(32) or 1
            if (link, circ_id) not in self._by_next:
                return circ_id

    # --- exit ----------------------------------------------------------------

    @property
    def exit_policy(self) -> exitpolicy.ExitPolicy:
        """The exit policy new streams are checked against."""
        return self._exit_policy

    def set_exit_policy(self, policy: exitpolicy.ExitPolicy) -> None:
        """Use ``policy`` for every stream opened from now on (streams already
        connected stay).  The descriptor carries its port summary from the
        next publish on."""
        self._exit_policy = policy
        log_event(
            logger,
            logging.INFO,
            "exit_policy_set",
            rules=len(policy.rules),
            ports=exitpolicy.format_ports(policy.summary()),
        )

    async def _exit_stream(self, circuit: _Circuit, begin: Begin) -> None:
        sid = begin.stream_id
        send = self._sender(circuit)
        with trio.CancelScope() as scope:
            circuit.connecting[sid] = scope
            try:
                socket, address = await self.connect_to_destination(
                    begin.host, begin.port
                )
            except StreamError as exc:
                log_event(
                    logger,
                    logging.INFO,
                    "exit_stream_refused",
                    reason=EndReason(exc.reason).name,
                    why=exc,
                    host=sensitive(begin.host),
                    port=begin.port,
                )
                send(circuit.core.end_stream(sid, EndReason(exc.reason)))
                return
            finally:
                circuit.connecting.pop(sid, None)
        if scope.cancel_called or circuit.closed:
            if not scope.cancelled_caught:
                await socket.aclose()  # the client ended the stream meanwhile
            return
        log_event(
            logger,
            logging.DEBUG,
            "exit_stream_connected",
            host=sensitive(begin.host),
            address=sensitive(address),
            port=begin.port,
        )
        stream = CircuitStream(sid, circuit.core, send, circuit.credit)
        circuit.streams[sid] = stream
        self.stats.streams_opened += 1
        send([circuit.core.originate(Connected(sid, address, egress_of(socket)))])
        if sid in circuit.half_closed:
            circuit.half_closed.discard(sid)
            stream.remote_end()
        splicing = trio.CancelScope()  # cancelled by the shutdown
        self._splices.add(splicing)
        try:
            with splicing:
                await splice(
                    CountingStream(ThrottledStream(socket, self.limits), self.stats),
                    stream,
                )
        finally:
            self.stats.streams_closed += 1
            self._splices.discard(splicing)
            if not self._splices:
                self._splices_ended.set()  # what the shutdown waits for
            # A closed stream stays registered until the client's END too, so
            # its late data is credited and reset rather than unexpected.
            forget_if_ended(circuit.streams, circuit.core.streams, sid)

    async def _exit_resolve(self, circuit: _Circuit, message: Resolve) -> None:
        sid = message.stream_id
        if circuit.closed or circuit.core.streams.get(sid) is None:
            return  # torn down, or the client ended it, before this task started
        with trio.CancelScope() as scope:
            circuit.resolving[sid] = scope
            try:
                answers = await self.resolve_for_client(message.query, ptr=message.ptr)
                bodies = circuit.core.resolved(sid, answers)
            except StreamError as exc:
                log_event(
                    logger,
                    logging.INFO,
                    "exit_resolve_refused",
                    reason=EndReason(exc.reason).name,
                    why=exc,
                    query=sensitive(message.query),
                )
                bodies = circuit.core.resolved(sid, reason=EndReason(exc.reason))
            finally:
                circuit.resolving.pop(sid, None)
            self._sender(circuit)(bodies)

    async def resolve_for_client(self, query: str, *, ptr: bool) -> list[str]:
        """Answer a client's RESOLVE here: the exit resolves, never the client.

        A name gives the addresses it resolves to, but outside a declared test
        network only those ``exitpolicy.destination_allowed`` accepts: private,
        loopback and the relay's own addresses are dropped, and a name with
        nothing else is refused.  (Tor's exits return such answers and only
        refuse to connect to them, and Tor's clients then distrust them;
        dropping them here does both at once, so the exit's internal DNS
        view does not leak and a rebinding name cannot hand an app a
        loopback address.)  A PTR lookup (``ptr``) outside a test network is
        refused for the same addresses, before any query is made.

        Raises:
            StreamError: with the reason for RESOLVED (RESOLVE_FAILED,
                EXIT_POLICY or TIMEOUT).
        """
        try:
            with trio.fail_after(RESOLVE_TIMEOUT):
                if ptr:
                    return [await self._resolve_ptr(query)]
                try:
                    addresses = await self.network.resolve(query, 0)
                except OSError as exc:
                    raise StreamError(
                        "name did not resolve", EndReason.RESOLVE_FAILED
                    ) from exc
        except trio.TooSlowError as exc:
            raise StreamError("resolve timed out", EndReason.TIMEOUT) from exc
        if not addresses:
            raise StreamError("name has no address", EndReason.RESOLVE_FAILED)
        answers = [a for a in addresses if self._may_reveal(a)]
        if not answers:
            raise StreamError("exit policy refuses every answer", EndReason.EXIT_POLICY)
        return answers[:MAX_ANSWERS]

    async def _resolve_ptr(self, address: str) -> str:
        if not self._may_reveal(address):
            raise StreamError(
                "exit policy refuses a reverse lookup of that address",
                EndReason.EXIT_POLICY,
            )
        try:
            name = await self.network.resolve_ptr(address)
        except OSError as exc:
            raise StreamError("address has no name", EndReason.RESOLVE_FAILED) from exc
        if not (
            0 < len(name) <= MAX_HOSTNAME
            and name.isascii()
            and all(0x20 < ord(c) < 0x7F for c in name)
        ):
            raise StreamError("malformed name for address", EndReason.RESOLVE_FAILED)
        return name

    def _may_reveal(self, address: str) -> bool:
        """Whether a RESOLVE may answer with (or look up) this address: the
        same rule as for extensions."""
        return self._may_extend_to(address, 0)

    async def connect_to_destination(
        self, host: str, port: int
    ) -> tuple[trio.abc.HalfCloseableStream, str]:
        """Resolve host here, check every address, connect to an allowed one.

        The checks, on each resolved address: the fixed refusals of
        ``exitpolicy.destination_allowed`` (private, loopback, link-local,
        multicast, unspecified and own addresses outside a test network; the
        own relay port always), then the exit policy in force when the
        stream began.  A port the policy refuses everywhere is refused
        before any DNS query.  Error messages name no destination (they are
        logged).

        Raises:
            StreamError: with the END reason to send back.
        """
        policy = self._exit_policy
        if not policy.may_accept_port(port):
            raise StreamError("exit policy refuses the port", EndReason.EXIT_POLICY)
        try:
            with trio.fail_after(CONNECT_TIMEOUT):
                try:
                    addresses = await self.network.resolve(host, port)
                except OSError as exc:
                    raise StreamError(
                        "name did not resolve", EndReason.RESOLVE_FAILED
                    ) from exc
                allowed = [a for a in addresses if self._may_exit_to(a, port, policy)]
                if not allowed:
                    raise StreamError(
                        "exit policy refuses the destination", EndReason.EXIT_POLICY
                    )
                last: OSError | None = None
                for address in allowed:
                    local = self._local_address_for(address)
                    try:
                        stream = await self.network.connect(
                            address, port, local_address=local
                        )
                    except OSError as exc:
                        last = exc
                        continue
                    return stream, address
        except trio.TooSlowError as exc:
            raise StreamError("connect timed out", EndReason.TIMEOUT) from exc
        raise StreamError("connect failed", _reason_for(last))

    def _may_exit_to(
        self, address: str, port: int, policy: exitpolicy.ExitPolicy
    ) -> bool:
        try:
            return exitpolicy.destination_allowed(
                address,
                port,
                test_network=self.config.test_network,
                own_addresses=self._own_addresses(),
                own_ports=[self.port],
                policy=policy,
            )
        except ValueError:
            return False  # a resolver that answers with something not an IP


def egress_of(stream: trio.abc.Stream) -> str:
    """The local address of an exit's outbound socket: the address the
    destination sees, reported in CONNECTED for the client's egress check
    ("" for a stream that is not a socket, as in-memory networks give)."""
    sock = getattr(stream, "socket", None)
    try:
        local = sock.getsockname() if sock is not None else None
    except OSError:
        return ""
    if not isinstance(local, tuple) or not isinstance(local[0], str):
        return ""
    return local[0].split("%", 1)[0]


def _same_family(a: str, b: str) -> bool:
    return (":" in a) == (":" in b)


def _reason_for(exc: OSError | None) -> EndReason:
    """The END reason for a failed connect (trio wraps per-address errors)."""
    code = getattr(exc, "errno", None)
    cause = exc.__cause__ if exc is not None else None
    if code is None and isinstance(cause, BaseExceptionGroup):
        causes = [c for c in cause.exceptions if isinstance(c, OSError)]
        code = causes[0].errno if causes else None
    elif code is None and isinstance(cause, OSError):
        code = cause.errno
    return {
        errno.ECONNREFUSED: EndReason.CONNECT_REFUSED,
        errno.ENETUNREACH: EndReason.NET_UNREACHABLE,
        errno.EHOSTUNREACH: EndReason.HOST_UNREACHABLE,
        errno.ETIMEDOUT: EndReason.TIMEOUT,
    }.get(code or 0, EndReason.MISC)
