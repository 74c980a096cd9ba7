"""The relay daemon: accepts links, runs circuits, extends them, and exits.

One task per link reads cells and handles each synchronously (peel, forward,
deliver); the only things that wait are opening a link for an extension,
exit connections and exit name lookups (RESOLVE), which run as tasks of
their own in the node's nursery.  The pieces: ``relay.circuit`` (the circuit
table, teardown, the out-of-memory handler), ``relay.exit`` (BEGIN and
RESOLVE under the exit policy), ``relay.onionkeys`` (onion key rotation),
``relay.publisher`` (descriptor uploads); here, the listeners and links,
cell dispatch, extension, the descriptor, the graceful shutdown and reload.
"""

import dataclasses
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Final

import trio
from hopchain.relay.circuit import Circuit, CircuitTable
from hopchain.relay.dirclient import AuthorityAddress
from hopchain.relay.exit import Exit, Send, local_address_for
from hopchain.relay.limits import RelayLimiter
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
from hopchain.relay.onionkeys import KeyRotation, OnionKeyRing
from hopchain.relay.publisher import Publisher
from hopchain.relay.stats import RelayStats
from hopchain.relay.stream import forget_if_ended

from hopchain import exitpolicy
from hopchain.crypto import handshake
from hopchain.crypto.keys import IdentityKey, OnionKey, fingerprint
from hopchain.crypto.onion import HopKeys
from hopchain.directory import Descriptor, sign_descriptor
from hopchain.errors import HandshakeError, LinkError, ProtocolError
from hopchain.messages import Begin, Data, End, EndReason, Extend, Resolve, Sendme
from hopchain.relaycircuit import Deliver, Forward, RelayCircuit, Respond
from hopchain.relaylimits import RelayLimits
from hopchain.wire import Cell, CellCommand

__all__ = ["RELOADABLE", "KeyRotation", "RelayConfig", "RelayNode"]

logger = logging.getLogger(__name__)

EXTEND_TIMEOUT: Final = 15.0
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
        self._onion = OnionKeyRing(onion_key, rotation)
        self.network = network
        self.port = config.port
        # Every open link: an inbound link with its peer's address (for the
        # per-address limits), an outbound one with None.
        self._links: dict[Link, str | None] = {}
        self._accepting = trio.CancelScope()
        self._draining = False
        self._drained = trio.Event()
        self.circuits = CircuitTable(self._circuit_closed)
        self._out_links: dict[bytes, Link] = {}
        self._link_locks: dict[bytes, trio.Lock] = {}
        self._nursery: trio.Nursery | None = None
        self.publisher = Publisher(
            network, config.authorities, self.descriptor, config.publish_interval
        )
        self.published = self.publisher.published  # set once an authority took it
        self.stats = RelayStats()
        self.metrics_port: int | None = None
        # Resource limits (relay/limits.py); the counters live on self.limits,
        # whose hits and queue budget the metrics read.
        self.limits = RelayLimiter(config.limits, hits=self.stats.limit_hits)
        self.stats.queued_bytes = lambda: self.limits.queued_bytes
        self._shared = SharedLimits(
            self.limits.budget, self._out_of_memory, self.limits
        )
        self.exit = Exit(
            network,
            config.exit_policy or exitpolicy.default_policy(config.test_network),
            test_network=config.test_network,
            own_addresses=[a for a in (config.address, config.ipv6_address) if a],
            own_port=config.port,
            stats=self.stats,
            limits=self.limits,
        )
        self._in_oom = False
        self.stopped = trio.Event()  # set when a shutdown has finished

    # --- lifecycle -----------------------------------------------------------

    async def serve(
        self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen, publish to the authorities, and relay until cancelled."""
        listeners = await self.network.listen(self.config.address, self.config.port)
        self.port = bound_port(listeners)
        self.exit.own_port = self.port
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
                nursery.start_soon(self.publisher.run)
            if self._onion.rotation is not None:
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
            len(self.circuits),
            grace,
        )
        self._nursery.start_soon(self._drain, grace)

    async def _drain(self, grace: float) -> None:
        with trio.move_on_after(grace):
            if self.circuits:
                await self._drained.wait()
        left = len(self.circuits)
        with trio.move_on_after(CLOSE_TIMEOUT):
            await self.exit.end_streams()
            for circuit in list(self.circuits.by_prev.values()):
                self.circuits.teardown(circuit)
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
            self.publisher.republish()
        return applied

    def descriptor(self) -> bytes:
        """This relay's signed descriptor, published now."""
        desc = Descriptor(
            nickname=self.config.nickname,
            identity=self.identity.public,
            onion_key=self._onion.keys[0].public,
            address=self.config.address,
            address6=self.config.ipv6_address,
            contact=self.config.contact,
            or_port=self.port,
            bandwidth=self.config.bandwidth,
            exit_ports=self.exit.policy.summary() if self.config.exit else (),
            family=self.config.family,
            country=self.config.country,
            published=wall_clock(),
            test_network=self.config.test_network,
            observed_bandwidth=self.limits.observed_bandwidth(),
        )
        return sign_descriptor(desc, self.identity.sign)

    # --- onion keys ------------------------------------------------------------

    async def _rotation_loop(self) -> None:
        while True:
            wait = self.check_onion_keys(wall_clock())
            await trio.sleep(min(wait, ROTATION_RECHECK))

    @property
    def onion_keys(self) -> list[OnionKey]:
        """The onion keys handshakes are answered with: the current one
        first (published), then the previous one during its grace."""
        return self._onion.keys

    def check_onion_keys(self, now: float) -> float:
        """Rotate the onion key or forget the previous one when due, and
        publish a new key at once.  Returns the seconds until the next
        change is due."""
        wait, rotated = self._onion.check(now)
        if rotated:
            self.publisher.republish()
        return wait

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
        await self._run_link(link, address)

    async def _run_link(self, link: Link, address: str | None) -> None:
        """Serve ``link`` until it closes: inbound from ``address``, or
        outbound (None)."""
        direction = "outbound" if address is None else "inbound"
        link.traffic = self.stats.traffic
        self._links[link] = address
        self.stats.links_opened[direction] += 1
        try:
            await link.serve(
                partial(self._handle_cell, link, inbound=address is not None)
            )
        finally:
            del self._links[link]
            self.stats.links_closed[direction] += 1
            for circuit in self.circuits.on_link(link):
                self.circuits.teardown(circuit, notify_source=link)
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
                host,
                port,
                local_address=local_address_for(self.exit.own_addresses, host),
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
            self._nursery.start_soon(self._run_link, link, None)
            return link

    # --- cells -------------------------------------------------------------

    def _handle_cell(self, link: Link, cell: Cell, *, inbound: bool) -> None:
        key = (link, cell.circ_id)
        command = cell.command
        if command is CellCommand.RELAY or command is CellCommand.RELAY_EARLY:
            circuit = self.circuits.by_prev.get(key)
            if circuit is not None:
                self._forward(circuit, cell)
                return
            circuit = self.circuits.by_next.get(key)
            if circuit is not None:
                self._backward(circuit, cell.body)
            return
        if command is CellCommand.CREATE:
            if not inbound or key in self.circuits.by_prev:
                raise LinkError("create on an outbound link or a used circuit id")
            self._create(link, cell)
        elif command is CellCommand.CREATED:
            circuit = self.circuits.by_next.get(key)
            if circuit is not None:
                self._created(circuit, cell.body)
        elif command is CellCommand.DESTROY:
            circuit = self.circuits.by_prev.get(key) or self.circuits.by_next.get(key)
            if circuit is not None:
                self.circuits.teardown(circuit, notify_source=link)
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
        client = None if link.peer_identity else self._links.get(link)
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
        self.circuits.add(Circuit(core, link, cell.circ_id))
        self.stats.circuits_created += 1
        link.send(cell.circ_id, CellCommand.CREATED, reply)

    def _forward(self, circuit: Circuit, cell: Cell) -> None:
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
            self.circuits.teardown(circuit)

    def _backward(self, circuit: Circuit, body: bytes) -> None:
        try:
            self._send_back(circuit, [circuit.core.backward(body)])
        except ProtocolError as exc:
            logger.warning("destroying a circuit: %s", exc)
            self.circuits.teardown(circuit)

    def _send_back(self, circuit: Circuit, bodies: list[bytes]) -> None:
        for body in bodies:
            if circuit.closed:
                return  # the out-of-memory handler closed it meanwhile
            if not circuit.prev.send(circuit.prev_id, CellCommand.RELAY, body):
                self.stats.queue_refused(circuit.prev)
                raise ProtocolError(_QUEUE_REFUSED)

    def _sender(self, circuit: Circuit) -> Send:
        """Send bodies back toward the client; a full queue destroys the
        circuit."""

        def send(bodies: list[bytes]) -> None:
            if circuit.closed:
                return
            try:
                self._send_back(circuit, bodies)
            except ProtocolError as exc:
                logger.warning("destroying a circuit: %s", exc)
                self.circuits.teardown(circuit)

        return send

    def _circuit_closed(self) -> None:
        self.stats.circuits_closed += 1
        if self._draining and not self.circuits:
            self._drained.set()

    def _out_of_memory(self) -> None:
        """Queued cells exceed the cap: close the circuits holding the most,
        dropping their queued cells, until the total is back under the
        handler's target.  Runs inside ``Link.send``."""
        if self._in_oom:
            return  # the DESTROY cells of a teardown below
        self._in_oom = True
        try:
            budget = self.limits.budget
            before = budget.queued
            victims = self.circuits.close_largest(budget.queued, budget.target)
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

    def _deliver(self, circuit: Circuit, message: object) -> None:
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
                    self._guarded, circuit, self.exit.run_stream, message
                )
            case Resolve(stream_id=sid):
                if not self.config.exit:
                    self._sender(circuit)(
                        circuit.core.resolved(sid, reason=EndReason.EXIT_POLICY)
                    )
                    return
                self._nursery.start_soon(
                    self._guarded, circuit, self.exit.run_resolve, message
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
        self, circuit: Circuit, message: Extend | Begin | Resolve
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
        circuit: Circuit,
        work: Callable[[Circuit, Any, Send], Awaitable[None]],
        message: Any,
    ) -> None:
        """Run one circuit's task; a bug in it ends that circuit, not the relay."""
        try:
            await work(circuit, message, self._sender(circuit))
        except Exception:
            logger.exception("bug in a circuit task; destroying the circuit")
            self.circuits.teardown(circuit)

    async def _extend(self, circuit: Circuit, message: Extend, send: Send) -> None:
        # Extensions go to public IP literals only (outside test networks),
        # so a client cannot make a relay probe its operator's network.
        if not self.exit.may_reach(message.host, message.port):
            logger.info("refusing to extend to a private or non-IP address")
            send([circuit.core.extend_failed(EndReason.EXIT_POLICY)])
            return
        try:
            with trio.fail_after(EXTEND_TIMEOUT):
                link = await self._get_link(
                    message.identity, message.onion_key, message.host, message.port
                )
        except LINK_SETUP_ERRORS as exc:
            logger.info("extend failed: %s", type(exc).__name__)
            if not circuit.closed:
                send([circuit.core.extend_failed(EndReason.CONNECT_REFUSED)])
            return
        if circuit.closed:
            return
        circ_id = self.circuits.extended(circuit, link)
        link.send(circ_id, CellCommand.CREATE, message.handshake)

    def _created(self, circuit: Circuit, reply: bytes) -> None:
        try:
            if len(reply) != handshake.SERVER_MESSAGE_BYTES:
                raise ProtocolError(f"created of {len(reply)} bytes from the next hop")
            self._send_back(circuit, [circuit.core.extended(reply)])
        except ProtocolError as exc:
            logger.warning("destroying a circuit: %s", exc)
            self.circuits.teardown(circuit)

    @property
    def exit_policy(self) -> exitpolicy.ExitPolicy:
        """The exit policy new streams are checked against."""
        return self.exit.policy

    def set_exit_policy(self, policy: exitpolicy.ExitPolicy) -> None:
        """Use ``policy`` for every stream opened from now on (streams already
        connected stay), and publish its port summary at once."""
        self.exit.set_policy(policy)
        self.publisher.republish()

    async def resolve_for_client(self, query: str, *, ptr: bool) -> list[str]:
        """Answer a client's RESOLVE (``Exit.resolve_for_client``)."""
        return await self.exit.resolve_for_client(query, ptr=ptr)

    async def connect_to_destination(
        self, host: str, port: int
    ) -> tuple[trio.abc.HalfCloseableStream, str]:
        """Connect an exit stream (``Exit.connect_to_destination``)."""
        return await self.exit.connect_to_destination(host, port)
