"""The relay daemon: accepts links, runs circuits, extends them, and exits.

One task per link reads cells and handles each synchronously (peel, forward,
deliver); the only things that wait are opening a link for an extension,
exit connections and exit name lookups (RESOLVE), which run as tasks of
their own in the node's nursery.
"""

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
from hopchain.relay.link import (
    LINK_SETUP_ERRORS,
    Link,
    check_authenticate,
    initiate,
    respond,
)
from hopchain.relay.net import Network, bound_port, wall_clock
from hopchain.relay.pump import splice
from hopchain.relay.stream import CircuitStream, CreditSignal, forget_if_ended

from hopchain import exitpolicy
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
from hopchain.relaycircuit import Deliver, Forward, RelayCircuit, Respond
from hopchain.wire import Cell, CellCommand

logger = logging.getLogger(__name__)

EXTEND_TIMEOUT: Final = 15.0
CONNECT_TIMEOUT: Final = 20.0
RESOLVE_TIMEOUT: Final = 20.0
PUBLISH_RETRY: Final = 2.0
_QUEUE_REFUSED: Final = "link closed, or circuit queue full (flow control ignored)"


@dataclass
class RelayConfig:
    """Everything a relay needs to run (from the CLI or a test)."""

    nickname: str
    address: str
    port: int = 0
    authorities: list[AuthorityAddress] = field(default_factory=list)
    exit: bool = False
    exit_ports: tuple[tuple[int, int], ...] = ((1, 65535),)
    test_network: bool = False
    bandwidth: int = 10_000_000
    country: str = ""
    publish_interval: float = 600.0


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
    ) -> None:
        self.config = config
        self.identity = identity
        self.onion_keys = [onion_key]
        self.network = network
        self.port = config.port
        self._by_prev: dict[tuple[Link, int], _Circuit] = {}
        self._by_next: dict[tuple[Link, int], _Circuit] = {}
        self._out_links: dict[bytes, Link] = {}
        self._link_locks: dict[bytes, trio.Lock] = {}
        self._nursery: trio.Nursery | None = None
        self.published = trio.Event()

    # --- lifecycle -----------------------------------------------------------

    async def serve(
        self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen, publish to the authorities, and relay until cancelled."""
        listeners = await self.network.listen(self.config.address, self.config.port)
        self.port = bound_port(listeners)
        logger.info(
            "relay %s (%s) listening on port %d%s",
            self.config.nickname,
            fingerprint(self.identity.public),
            self.port,
            " as an exit" if self.config.exit else "",
        )
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(trio.serve_listeners, self._accept, listeners)
            if self.config.authorities:
                nursery.start_soon(self._publish_loop)
            task_status.started(self.port)

    def descriptor(self) -> bytes:
        """This relay's signed descriptor, published now."""
        desc = Descriptor(
            nickname=self.config.nickname,
            identity=self.identity.public,
            onion_key=self.onion_keys[0].public,
            address=self.config.address,
            or_port=self.port,
            bandwidth=self.config.bandwidth,
            exit_ports=self.config.exit_ports if self.config.exit else (),
            family=(),
            country=self.config.country,
            published=wall_clock(),
            test_network=self.config.test_network,
        )
        return sign_descriptor(desc, self.identity.sign)

    async def _publish_loop(self) -> None:
        while True:
            ok = 0
            for authority in self.config.authorities:
                try:
                    await dirclient.publish(self.network, authority, self.descriptor())
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
                await trio.sleep(self.config.publish_interval)
            else:
                await trio.sleep(PUBLISH_RETRY)

    # --- links -------------------------------------------------------------

    async def _accept(self, stream: trio.abc.HalfCloseableStream) -> None:
        try:
            link = await respond(stream, self.identity, self.onion_keys)
        except LINK_SETUP_ERRORS as exc:
            logger.debug("inbound link handshake failed: %s", exc)
            await stream.aclose()
            return
        await self._run_link(link, inbound=True)

    async def _run_link(self, link: Link, *, inbound: bool) -> None:
        try:
            await link.serve(partial(self._handle_cell, link, inbound=inbound))
        finally:
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
                host, port, local_address=self.config.address
            )
            try:
                link = await initiate(
                    stream, identity, onion_key, own_identity=self.identity
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
                raise LinkError(str(exc)) from exc

    def _create(self, link: Link, cell: Cell) -> None:
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
            link.send(cell.circ_id, CellCommand.DESTROY, bytes([EndReason.PROTOCOL]))
            return
        core = RelayCircuit(
            HopKeys.from_prk(prk), self.identity.public, link.peer_identity
        )
        self._by_prev[(link, cell.circ_id)] = _Circuit(core, link, cell.circ_id)
        link.send(cell.circ_id, CellCommand.CREATED, reply)

    def _forward(self, circuit: _Circuit, cell: Cell) -> None:
        try:
            result = circuit.core.forward(
                cell.body, early=cell.command is CellCommand.RELAY_EARLY
            )
            if isinstance(result, Forward):
                assert circuit.next is not None
                if not circuit.next.send(circuit.next_id, cell.command, result.body):
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
            if not circuit.prev.send(circuit.prev_id, CellCommand.RELAY, body):
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

    # --- messages for this hop ------------------------------------------------

    def _deliver(self, circuit: _Circuit, message: object) -> None:
        assert self._nursery is not None
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
                own_addresses=[self.config.address],
            )
        except ValueError:
            return False

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
                logger.info("exit stream refused: %s", exc)
                send(circuit.core.end_stream(sid, EndReason(exc.reason)))
                return
            finally:
                circuit.connecting.pop(sid, None)
        if scope.cancel_called or circuit.closed:
            if not scope.cancelled_caught:
                await socket.aclose()  # the client ended the stream meanwhile
            return
        stream = CircuitStream(sid, circuit.core, send, circuit.credit)
        circuit.streams[sid] = stream
        send([circuit.core.originate(Connected(sid, address))])
        if sid in circuit.half_closed:
            circuit.half_closed.discard(sid)
            stream.remote_end()
        try:
            await splice(socket, stream)
        finally:
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
                logger.info("exit resolve refused: %s", exc)
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
        """Resolve host here, check every address against policy, connect.

        Raises:
            StreamError: with the END reason to send back.
        """
        if not any(low <= port <= high for low, high in self.config.exit_ports):
            raise StreamError(f"exit policy refuses port {port}", EndReason.EXIT_POLICY)
        try:
            with trio.fail_after(CONNECT_TIMEOUT):
                try:
                    addresses = await self.network.resolve(host, port)
                except OSError as exc:
                    raise StreamError(
                        "name did not resolve", EndReason.RESOLVE_FAILED
                    ) from exc
                allowed = [
                    a
                    for a in addresses
                    if exitpolicy.destination_allowed(
                        a,
                        port,
                        test_network=self.config.test_network,
                        own_addresses=[self.config.address],
                        own_ports=[self.port],
                    )
                ]
                if not allowed:
                    raise StreamError(
                        "exit policy refuses the destination", EndReason.EXIT_POLICY
                    )
                last: OSError | None = None
                for address in allowed:
                    local = self.config.address if ":" not in address else None
                    if ":" in self.config.address:
                        local = self.config.address if ":" in address else None
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
