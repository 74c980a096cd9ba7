"""The exit side of a relay: BEGIN (resolve, check, connect, splice) and
RESOLVE, under the exit policy in force.

Every address a destination name resolves to is checked at connect time:
first the fixed refusals of ``exitpolicy.destination_allowed`` (private,
loopback, link-local, multicast and the relay's own addresses, outside a
declared test network; the relay's own port always), then the exit policy.
RESOLVE answers follow the same address rule.  ``set_policy`` (SIGHUP)
changes the policy for the streams that begin from then on.
"""

import errno
import logging
from collections.abc import Callable, Sequence
from typing import Final

import trio
from hopchain.relay.circuit import Circuit
from hopchain.relay.limits import RelayLimiter
from hopchain.relay.net import RECEIVE_CHUNK, Network
from hopchain.relay.pump import splice
from hopchain.relay.stats import RelayStats
from hopchain.relay.stream import CircuitStream, forget_if_ended

from hopchain import exitpolicy
from hopchain.errors import StreamError
from hopchain.messages import (
    MAX_ANSWERS,
    MAX_HOSTNAME,
    Begin,
    Connected,
    EndReason,
    Resolve,
)
from hopchain.safelog import log_event, sensitive

__all__ = [
    "CONNECT_TIMEOUT",
    "RESOLVE_TIMEOUT",
    "Exit",
    "ExitConnection",
    "Send",
    "egress_of",
    "local_address_for",
]

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT: Final = 20.0
RESOLVE_TIMEOUT: Final = 20.0

# Sends relay cell bodies back toward the client (``RelayNode._sender``).
Send = Callable[[list[bytes]], None]


class ExitConnection(trio.abc.HalfCloseableStream):
    """A connection to a destination, as the exit splices it: reads are
    charged to the relay's bandwidth limit (what a destination sends is
    relayed traffic too), and the bytes both ways are counted for the
    metrics (``RelayStats.exit_bytes_*``)."""

    def __init__(
        self,
        stream: trio.abc.HalfCloseableStream,
        limiter: RelayLimiter,
        stats: RelayStats,
    ) -> None:
        self._stream = stream
        self._limiter = limiter
        self._stats = stats

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """Read at most what the bandwidth bucket allows, and count it."""
        wanted = RECEIVE_CHUNK if max_bytes is None else max_bytes
        await self._limiter.read_allowance(wanted, whole=True)
        data = await self._stream.receive_some(wanted)
        self._limiter.bytes_read(len(data))
        self._stats.exit_bytes_received += len(data)
        return bytes(data)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Send to the destination, then count the bytes."""
        await self._stream.send_all(data)
        self._stats.exit_bytes_sent += len(data)

    async def wait_send_all_might_not_block(self) -> None:
        """As the wrapped stream."""
        await self._stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        """As the wrapped stream."""
        await self._stream.send_eof()

    async def aclose(self) -> None:
        """As the wrapped stream."""
        await self._stream.aclose()


class Exit:
    """A relay's exit side (``RelayNode.exit``).

    ``own_addresses`` are the relay's published addresses, which it never
    connects to and connects from; ``own_port``, the relay port (the node
    sets the bound one once it listens), is never a destination either.
    """

    def __init__(
        self,
        network: Network,
        policy: exitpolicy.ExitPolicy,
        *,
        test_network: bool,
        own_addresses: Sequence[str],
        own_port: int,
        stats: RelayStats,
        limits: RelayLimiter,
    ) -> None:
        self.network = network
        self._policy = policy
        self.test_network = test_network
        self.own_addresses = list(own_addresses)
        self.own_port = own_port
        self.stats = stats
        self.limits = limits
        self._splices: set[trio.CancelScope] = set()
        self._splices_ended = trio.Event()

    # --- the policy ------------------------------------------------------------

    @property
    def policy(self) -> exitpolicy.ExitPolicy:
        """The exit policy new streams are checked against."""
        return self._policy

    def set_policy(self, policy: exitpolicy.ExitPolicy) -> None:
        """Use ``policy`` for every stream opened from now on (streams
        already connected stay)."""
        self._policy = policy
        log_event(
            logger,
            logging.INFO,
            "exit_policy_set",
            rules=len(policy.rules),
            ports=exitpolicy.format_ports(policy.summary()),
        )

    def may_reach(self, host: str, port: int) -> bool:
        """Whether ``host`` is an IP address outside the fixed refusals (no
        policy): the rule for extensions and RESOLVE answers, so that a
        client cannot make the relay probe or reveal its operator's network."""
        try:
            return exitpolicy.destination_allowed(
                host,
                port,
                test_network=self.test_network,
                own_addresses=self.own_addresses,
            )
        except ValueError:
            return False

    # --- streams ---------------------------------------------------------------

    async def run_stream(self, circuit: Circuit, begin: Begin, send: Send) -> None:
        """Serve one BEGIN: connect, answer CONNECTED (or END), then splice
        until both directions ended or ``end_streams`` cancels it."""
        sid = begin.stream_id
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
        splicing = trio.CancelScope()  # cancelled by end_streams
        self._splices.add(splicing)
        try:
            with splicing:
                await splice(ExitConnection(socket, self.limits, self.stats), stream)
        finally:
            self.stats.streams_closed += 1
            self._splices.discard(splicing)
            if not self._splices:
                self._splices_ended.set()
            # A closed stream stays registered until the client's END too, so
            # its late data is credited and reset rather than unexpected.
            forget_if_ended(circuit.streams, circuit.core.streams, sid)

    async def end_streams(self) -> None:
        """End every spliced stream in order (END DONE after the data already
        read) and wait until they have: the shutdown's last step."""
        self._splices_ended = trio.Event()
        for scope in list(self._splices):
            scope.cancel()
        if self._splices:
            await self._splices_ended.wait()

    async def run_resolve(self, circuit: Circuit, message: Resolve, send: Send) -> None:
        """Serve one RESOLVE: answer RESOLVED with the allowed addresses (or
        a name), or with the reason; an END from the client cancels it."""
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
            send(bodies)

    # --- lookups and connects --------------------------------------------------

    async def resolve_for_client(self, query: str, *, ptr: bool) -> list[str]:
        """Answer a client's RESOLVE here: the exit resolves, never the client.

        A name gives the addresses it resolves to, but outside a declared test
        network only those ``may_reach`` accepts: private, loopback and the
        relay's own addresses are dropped, and a name with nothing else is
        refused.  (Tor's exits return such answers and only refuse to connect
        to them, and Tor's clients then distrust them; dropping them here
        does both at once, so the exit's internal DNS view does not leak and
        a rebinding name cannot hand an app a loopback address.)  A PTR
        lookup (``ptr``) outside a test network is refused for the same
        addresses, before any query is made.

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
        answers = [a for a in addresses if self.may_reach(a, 0)]
        if not answers:
            raise StreamError("exit policy refuses every answer", EndReason.EXIT_POLICY)
        return answers[:MAX_ANSWERS]

    async def _resolve_ptr(self, address: str) -> str:
        if not self.may_reach(address, 0):
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
        policy = self._policy
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
                    local = local_address_for(self.own_addresses, address)
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
                test_network=self.test_network,
                own_addresses=self.own_addresses,
                own_ports=[self.own_port],
                policy=policy,
            )
        except ValueError:
            return False  # a resolver that answers with something not an IP


def local_address_for(own_addresses: Sequence[str], destination: str) -> str | None:
    """The relay's own address of the destination's family, to connect from
    (exits contact destinations, and relays the next hop, from their
    published address)."""
    return next((a for a in own_addresses if (":" in a) == (":" in destination)), None)


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
