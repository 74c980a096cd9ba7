"""The client side of one circuit: building, onion layers, streams.

Theory of operation
-------------------

A ``ClientCircuit`` starts with no hops.  ``create`` gives the CREATE body
for the first relay; ``on_created`` finishes that handshake.  Each
``extend`` gives an EXTEND message (to be sent in a RELAY_EARLY cell) for the
current last hop; the EXTENDED reply arrives through ``receive`` and adds the
hop.  States:

    NEW --create--> BUILDING --on_created/extended--> OPEN --extend--> BUILDING
    any --destroy/auth failure/protocol error--> CLOSED

Once open, streams are multiplexed with ``open_stream``, ``send_data``,
``end_stream`` and ``consumed``; ``receive`` peels the onion layers, checks
flow control and returns what arrived for the shell to act upon.  ``resolve``
opens a one-shot RESOLVE stream: the exit's RESOLVED frees its id (an END
from either side ends it too), and DATA or CONNECTED on it is a protocol
error.  The circuit
is not thread-safe and does no I/O: every method returns the cell bodies to
send, in order.

Randomness (ephemeral keys) arrives as arguments; the core draws none.
"""

import enum
from dataclasses import dataclass

from hopchain.crypto import handshake, onion
from hopchain.crypto.onion import HopKeys
from hopchain.errors import CircuitError, MessageError
from hopchain.flow import StreamTable
from hopchain.messages import (
    MAX_DATA,
    Begin,
    Connected,
    Data,
    Drop,
    End,
    EndReason,
    Extend,
    Extended,
    RelayMessage,
    Resolve,
    Resolved,
    Sendme,
    Truncated,
    decode,
    encode,
)


class CircuitState(enum.Enum):
    """Where a client circuit is in its life."""

    NEW = "new"
    BUILDING = "building"
    OPEN = "open"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class HopSpec:
    """What the client knows of a relay it routes through."""

    identity: bytes
    onion_key: bytes
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class Received:
    """A relay message that arrived, and the hop (0-based) that sent it."""

    hop: int
    message: RelayMessage


class ClientCircuit:
    """Client-side circuit state machine (see the module docstring)."""

    def __init__(self) -> None:
        self.state = CircuitState.NEW
        self.hops: list[HopKeys] = []
        self.path: list[HopSpec] = []
        self.streams = StreamTable()
        self._pending: handshake.ClientHandshake | None = None
        self._pending_spec: HopSpec | None = None
        self._next_stream = 1

    # --- building ----------------------------------------------------------

    def create(self, first: HopSpec, ephemeral_secret: bytes) -> bytes:
        """The CREATE body for the first hop."""
        if self.state is not CircuitState.NEW:
            raise CircuitError(f"create on a {self.state.value} circuit")
        self._start(first, ephemeral_secret)
        assert self._pending is not None
        return self._pending.message

    def on_created(self, body: bytes) -> None:
        """Finish the first hop's handshake.

        Raises:
            HandshakeError: the reply does not authenticate.
        """
        if self.state is not CircuitState.BUILDING or self.hops:
            raise MessageError("unexpected created")
        self._finish(body)

    def extend(self, relay: HopSpec, ephemeral_secret: bytes) -> bytes:
        """The body of a RELAY_EARLY cell asking the last hop to extend."""
        if self.state is not CircuitState.OPEN:
            raise CircuitError(f"extend on a {self.state.value} circuit")
        if len(self.hops) >= onion.MAX_HOPS:
            raise CircuitError(f"circuit already has {onion.MAX_HOPS} hops")
        if self.streams.streams:
            raise CircuitError("extend on a circuit that carries streams")
        self._start(relay, ephemeral_secret)
        assert self._pending is not None
        message = Extend(
            relay.identity,
            relay.onion_key,
            relay.host,
            relay.port,
            self._pending.message,
        )
        return onion.wrap_forward(self.hops, encode(message))

    def _start(self, relay: HopSpec, ephemeral_secret: bytes) -> None:
        self._pending = handshake.client_start_with_ephemeral(
            handshake.CIRCUIT_LABEL, relay.identity, relay.onion_key, ephemeral_secret
        )
        self._pending_spec = relay
        self.state = CircuitState.BUILDING

    def _finish(self, reply: bytes) -> None:
        assert self._pending is not None
        assert self._pending_spec is not None
        prk = handshake.client_finish(self._pending, reply)
        self.hops.append(HopKeys.from_prk(prk))
        self.path.append(self._pending_spec)
        self._pending = None
        self._pending_spec = None
        self.state = CircuitState.OPEN

    # --- receiving ---------------------------------------------------------

    def receive(self, body: bytes) -> tuple[Received | None, list[bytes]]:
        """Process a backward RELAY cell body.

        Returns:
            (what arrived or None if it needs no action, cell bodies to send).

        Raises:
            ProtocolError: a layer fails (CellAuthError), a malformed message,
                or a flow-control violation.  The caller must destroy the
                circuit.
        """
        if self.state in (CircuitState.NEW, CircuitState.CLOSED) or not self.hops:
            raise MessageError("relay cell on a circuit without hops")
        hop, payload = onion.unwrap_backward(self.hops, body)
        message = decode(payload)
        last = len(self.hops) - 1
        match message:
            case Extended(handshake=reply):
                if self.state is not CircuitState.BUILDING or hop != last:
                    raise MessageError("unexpected extended")
                self._finish(reply)
                return Received(hop, message), []
            case Truncated():
                self.state = CircuitState.CLOSED
                return Received(hop, message), []
            case _ if hop != last:
                raise MessageError(f"hop {hop} sent a stream message")
            case Data(stream_id=sid):
                if not self.streams.on_data(sid):
                    return None, self.consumed(sid, 1)
                return Received(hop, message), []
            case Sendme():
                self.streams.on_sendme(message)
                return Received(hop, message), []
            case End(stream_id=sid, reason=reason):
                self.streams.remote_end(sid, reason)
                return Received(hop, message), []
            case Connected(stream_id=sid):
                state = self.streams.get(sid)
                if state is None:
                    return None, []
                if state.resolve:
                    raise MessageError(f"connected on resolve stream {sid}")
                return Received(hop, message), []
            case Resolved(stream_id=sid):
                state = self.streams.get(sid)
                if state is None:
                    return None, []  # this end gave up on it (END sent)
                if not state.resolve:
                    raise MessageError(f"resolved on connect stream {sid}")
                self.streams.forget(sid)
                return Received(hop, message), []
            case Drop():
                return None, []
            case _:
                raise MessageError(f"client got {type(message).__name__}")

    # --- streams -----------------------------------------------------------

    def open_stream(self, host: str, port: int) -> tuple[int, bytes]:
        """Allocate a stream id and the BEGIN body for host:port."""
        sid = self._new_stream()
        self.streams.add(sid)
        return sid, self._wrap(Begin(sid, host, port))

    def resolve(self, query: str, *, ptr: bool = False) -> tuple[int, bytes]:
        """Allocate a one-shot stream id and the RESOLVE body for ``query``.

        The answer arrives as RESOLVED on that id (``receive``), which frees
        it; ``end_stream`` gives up on it.
        """
        sid = self._new_stream()
        self.streams.add(sid, resolve=True)
        return sid, self._wrap(Resolve(sid, query, ptr))

    def _new_stream(self) -> int:
        if self.state is not CircuitState.OPEN:
            raise CircuitError(f"stream on a {self.state.value} circuit")
        for _ in range(0xFFFF):
            sid = self._next_stream
            self._next_stream = sid % 0xFFFF + 1
            if self.streams.get(sid) is None:
                return sid
        raise CircuitError("no free stream id")

    def sendable(self, stream_id: int) -> int:
        """Bytes the stream may send now (whole DATA cells the windows allow)."""
        if self.state is not CircuitState.OPEN:
            return 0
        return self.streams.sendable(stream_id) * MAX_DATA

    def send_data(self, stream_id: int, data: bytes | bytearray) -> list[bytes]:
        """Bodies carrying ``data``; the caller keeps within ``sendable``."""
        if self.state is not CircuitState.OPEN:
            raise CircuitError(f"data on a {self.state.value} circuit")
        return [
            onion.wrap_forward(self.hops, message)
            for message in self.streams.data_messages(stream_id, data)
        ]

    def end_stream(self, stream_id: int, reason: EndReason) -> list[bytes]:
        """END for the stream (DONE = half-close), or nothing if it is gone."""
        if self.streams.get(stream_id) is None or self.state is CircuitState.CLOSED:
            return []
        self.streams.local_end(stream_id, reason)
        return [self._wrap(End(stream_id, reason))]

    def consumed(self, stream_id: int, n: int) -> list[bytes]:
        """The app consumed ``n`` DATA cells of the stream; SENDMEs to send."""
        if self.state is CircuitState.CLOSED:
            return []
        return [self._wrap(m) for m in self.streams.on_consumed(stream_id, n)]

    def close(self) -> None:
        """Mark the circuit closed (destroyed by either side)."""
        self.state = CircuitState.CLOSED

    def _wrap(self, message: RelayMessage) -> bytes:
        return onion.wrap_forward(self.hops, encode(message))
