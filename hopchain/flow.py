"""End-to-end flow control and stream bookkeeping for one circuit end.

Both ends of a circuit (the client and the exit) keep, per stream and for the
circuit as a whole, a *send window* and a *receive window*, counted in DATA
*cells* (of either size class), as Tor does:

* The sender may have at most ``window`` DATA cells sent and not yet credited.
* The receiver credits cells with SENDME only after the application has
  consumed their bytes (written them to its socket), once at least a quarter
  window has been consumed, so a slow reader stops the sender instead of
  filling relay queues.
* Credit is authenticated by construction: a SENDME for more cells than were
  sent and not yet credited, or DATA beyond the window, is a protocol
  violation that closes the circuit.

Counting cells rather than bytes bounds what matters to a relay: a circuit can
have at most ``CIRCUIT_WINDOW`` DATA cells (each at most 32 KiB) in flight in
one direction, however small the writes.  Relays enforce that bound on their
link queues (``relaycircuit.MAX_QUEUED_PER_CIRCUIT``, checked in
``hopchain.relay.link``).

Streams close in two halves: END(DONE) means "no more data from me".  A
stream is forgotten when both halves are closed; any other END reason aborts
it at once.

A RESOLVE stream (``add(..., resolve=True)``) is one-shot: it holds its id
until the one RESOLVED that answers it (``forget``) or an END of any reason,
and carries no DATA, so it never touches a window: DATA on it is a protocol
error and it is never sendable.
"""

from dataclasses import dataclass, field
from typing import Final

from hopchain.errors import FlowControlError, MessageError
from hopchain.messages import MAX_DATA, EndReason, Sendme, encode_data

CIRCUIT_WINDOW: Final = 128
STREAM_WINDOW: Final = 64


@dataclass(slots=True)
class SendWindow:
    """How many more DATA cells this end may send."""

    size: int
    unacked: int = 0

    @property
    def available(self) -> int:
        """Cells that may be sent now."""
        return self.size - self.unacked

    def spend(self, n: int) -> None:
        """Record ``n`` sent cells; the caller checked ``available``."""
        if n > self.available:
            raise ValueError(f"sending {n} cells with {self.available} available")
        self.unacked += n

    def credit(self, n: int) -> None:
        """Apply a SENDME.

        Raises:
            FlowControlError: credit for cells never sent.
        """
        if not 0 < n <= self.unacked:
            raise FlowControlError(f"sendme credits {n} cells, {self.unacked} unacked")
        self.unacked -= n


@dataclass(slots=True)
class ReceiveWindow:
    """DATA cells the peer has sent and this end has not yet credited."""

    size: int
    outstanding: int = 0
    consumed: int = 0

    def receive(self, n: int) -> None:
        """Account received DATA.

        Raises:
            FlowControlError: the peer sent past the window.
        """
        self.outstanding += n
        if self.outstanding > self.size:
            raise FlowControlError(
                f"data past the window: {self.outstanding} > {self.size}"
            )

    def consume(self, n: int) -> int:
        """The app consumed ``n`` cells; returns credit to send now (or 0)."""
        self.consumed += n
        if self.consumed < self.size // 4:
            return 0
        credit, self.consumed = self.consumed, 0
        self.outstanding -= credit
        return credit


@dataclass(slots=True)
class StreamState:
    """Windows and half-close flags of one stream (``resolve``: one-shot)."""

    send: SendWindow = field(default_factory=lambda: SendWindow(STREAM_WINDOW))
    receive: ReceiveWindow = field(default_factory=lambda: ReceiveWindow(STREAM_WINDOW))
    local_done: bool = False
    remote_done: bool = False
    resolve: bool = False


class StreamTable:
    """All streams of one circuit end, with the circuit-level windows."""

    def __init__(self) -> None:
        self.streams: dict[int, StreamState] = {}
        self.send = SendWindow(CIRCUIT_WINDOW)
        self.receive = ReceiveWindow(CIRCUIT_WINDOW)

    def add(self, stream_id: int, *, resolve: bool = False) -> None:
        """Start tracking a new stream (``resolve``: a one-shot RESOLVE stream).

        Raises:
            MessageError: the id is already in use.
        """
        if stream_id in self.streams:
            raise MessageError(f"stream {stream_id} already open")
        self.streams[stream_id] = StreamState(resolve=resolve)

    def forget(self, stream_id: int) -> None:
        """Drop a stream at once (a RESOLVE stream that got its answer)."""
        self.streams.pop(stream_id, None)

    def get(self, stream_id: int) -> StreamState | None:
        """The stream's state, or None when it is unknown or closed."""
        return self.streams.get(stream_id)

    def sendable(self, stream_id: int) -> int:
        """DATA cells the stream may send now (stream and circuit windows)."""
        state = self.streams.get(stream_id)
        if state is None or state.local_done or state.resolve:
            return 0
        return min(state.send.available, self.send.available)

    def spend(self, stream_id: int, n: int) -> None:
        """Record ``n`` DATA cells sent on the stream."""
        self.streams[stream_id].send.spend(n)
        self.send.spend(n)

    def data_messages(self, stream_id: int, data: bytes | bytearray) -> list[bytes]:
        """``data`` as encoded DATA messages of at most ``MAX_DATA`` bytes,
        spent from the windows (each end then adds its onion layer).

        Raises:
            FlowControlError: more cells than the windows allow.
        """
        cells = -(-len(data) // MAX_DATA)
        if cells > self.sendable(stream_id):
            raise FlowControlError("send past the window")
        self.spend(stream_id, cells)
        return [
            encode_data(stream_id, data[i : i + MAX_DATA])
            for i in range(0, len(data), MAX_DATA)
        ]

    def on_data(self, stream_id: int) -> bool:
        """Account one incoming DATA cell; False when its stream is unknown.

        A cell for a stream this end already closed still counts against the
        circuit window; the caller drops it and credits it at once with
        ``on_consumed``, so the peer's window refills.

        Raises:
            FlowControlError: data past a window, or after the peer's END.
            MessageError: data on a RESOLVE stream.
        """
        self.receive.receive(1)
        state = self.streams.get(stream_id)
        if state is None:
            return False
        if state.resolve:
            raise MessageError(f"data on resolve stream {stream_id}")
        if state.remote_done:
            raise FlowControlError("data after end")
        state.receive.receive(1)
        return True

    def on_consumed(self, stream_id: int, n: int) -> list[Sendme]:
        """The app consumed ``n`` DATA cells of the stream; SENDMEs to send."""
        out = []
        state = self.streams.get(stream_id)
        if state is not None:
            credit = state.receive.consume(n)
            if credit:
                out.append(Sendme(stream_id, credit))
        credit = self.receive.consume(n)
        if credit:
            out.append(Sendme(0, credit))
        return out

    def on_sendme(self, message: Sendme) -> None:
        """Apply credit from the peer.

        Raises:
            FlowControlError: credit for cells never sent.
        """
        if message.stream_id == 0:
            self.send.credit(message.credit)
            return
        state = self.streams.get(message.stream_id)
        if state is not None:
            state.send.credit(message.credit)

    def local_end(self, stream_id: int, reason: EndReason) -> None:
        """This end sends END(reason) for the stream."""
        state = self.streams.get(stream_id)
        if state is None:
            return
        state.local_done = True
        if reason != EndReason.DONE or state.remote_done or state.resolve:
            del self.streams[stream_id]

    def remote_end(self, stream_id: int, reason: EndReason) -> None:
        """The peer sent END(reason) for the stream."""
        state = self.streams.get(stream_id)
        if state is None:
            return
        state.remote_done = True
        if reason != EndReason.DONE or state.local_done or state.resolve:
            del self.streams[stream_id]
