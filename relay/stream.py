"""One circuit stream as a trio stream (client and exit side alike).

``CircuitStream`` is a ``trio.abc.HalfCloseableStream`` over one stream of
a circuit: ``send_all`` waits for flow-control credit and turns bytes into
DATA cells; ``receive_some`` returns bytes that arrived, and returns SENDME
credit only for cells whose bytes the caller has taken, so a slow reader
throttles the far end; ``send_eof`` sends END(DONE) (a half-close);
``aclose`` closes both halves.

The circuit's core object does the accounting (``CircuitEnd``) and ``send``
puts the resulting cell bodies on the right link.  ``deliver``,
``remote_end`` and ``abort`` are called synchronously by the link reader,
which never blocks; what they buffer is bounded by the receive window that
the core enforces.
"""

import operator
from collections import deque
from collections.abc import Callable
from typing import Protocol

import trio

from hopchain.flow import StreamTable
from hopchain.messages import EndReason


def forget_if_ended(
    streams: dict[int, "CircuitStream"], table: StreamTable, stream_id: int
) -> None:
    """Drop a shell's stream once the core's table has forgotten it.

    A closed stream stays registered until the far end's END has arrived
    too, so its late data is credited and reset rather than unexpected.
    """
    if table.get(stream_id) is None:
        streams.pop(stream_id, None)


class CircuitEnd(Protocol):
    """The core methods a stream needs (ClientCircuit and RelayCircuit)."""

    def sendable(self, stream_id: int) -> int: ...

    def send_data(self, stream_id: int, data: bytes | bytearray) -> list[bytes]: ...

    def consumed(self, stream_id: int, cells: int) -> list[bytes]: ...

    def end_stream(self, stream_id: int, reason: EndReason) -> list[bytes]: ...


class CreditSignal:
    """Wakes every stream of a circuit when flow-control credit arrives."""

    def __init__(self) -> None:
        self._event = trio.Event()

    def fire(self) -> None:
        """Credit arrived (or the circuit closed): wake all waiters."""
        self._event.set()
        self._event = trio.Event()

    async def wait(self) -> None:
        """Sleep until the next ``fire``."""
        await self._event.wait()


class CircuitStream(trio.abc.HalfCloseableStream):
    """A trio stream over one circuit stream (see the module docstring)."""

    def __init__(
        self,
        stream_id: int,
        circuit: CircuitEnd,
        send: Callable[[list[bytes]], None],
        credit: CreditSignal,
    ) -> None:
        self.stream_id = stream_id
        self._circuit = circuit
        self._send = send
        self._credit = credit
        self._inbound = bytearray()
        self._cells: deque[int] = deque()  # bytes left of each buffered cell
        self._readable = trio.Event()
        self._remote_done = False
        self._local_done = False
        self._closed = False
        self._broken = False
        self._receiving = False
        self._sending = False

    # --- called by the link reader (never blocks) ---------------------------

    def deliver(self, data: bytes) -> None:
        """One DATA cell's bytes from the far end."""
        if self._closed:
            # Like a TCP reset: credit the cell, and tell the far end that
            # nobody reads this stream any more (its sends start failing).
            self._send(self._circuit.consumed(self.stream_id, 1))
            self._send(self._circuit.end_stream(self.stream_id, EndReason.MISC))
            return
        self._inbound += data
        self._cells.append(len(data))
        self._readable.set()

    def remote_end(self) -> None:
        """The far end half-closed (END DONE)."""
        self._remote_done = True
        self._readable.set()

    def abort(self) -> None:
        """The stream or its circuit died: wake and fail every waiter."""
        self._broken = True
        self._readable.set()
        self._credit.fire()

    # --- trio.abc.ReceiveStream ----------------------------------------------

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """Bytes from the far end; b"" once it half-closed.

        Once the far end has half-closed (END DONE), what it sent stays
        readable, then EOF, even if the circuit is destroyed right after (as
        a relay that shuts down does: END, then DESTROY).

        Raises:
            trio.BrokenResourceError: the stream or circuit was destroyed
                before the far end half-closed.
            trio.ClosedResourceError: this stream was closed.
        """
        if max_bytes is not None:
            max_bytes = operator.index(max_bytes)
            if max_bytes < 1:
                raise ValueError("max_bytes must be at least 1")
        if self._receiving:
            raise trio.BusyResourceError("another task is receiving")
        self._receiving = True
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            while True:
                if self._closed:
                    raise trio.ClosedResourceError("stream closed")
                if self._broken and not self._remote_done:
                    raise trio.BrokenResourceError("circuit stream destroyed")
                if self._inbound:
                    data = self._take(max_bytes)
                    await trio.lowlevel.cancel_shielded_checkpoint()
                    return data
                if self._remote_done:
                    await trio.lowlevel.cancel_shielded_checkpoint()
                    return b""
                self._readable = trio.Event()
                await self._readable.wait()
        finally:
            self._receiving = False

    def _take(self, max_bytes: int | None) -> bytes:
        n = (
            len(self._inbound)
            if max_bytes is None
            else min(max_bytes, len(self._inbound))
        )
        data = bytes(self._inbound[:n])
        del self._inbound[:n]
        finished = 0
        cells = self._cells
        while n and cells:
            if cells[0] <= n:
                n -= cells.popleft()
                finished += 1
            else:
                cells[0] -= n
                n = 0
        while cells and cells[0] == 0:  # empty DATA cells
            cells.popleft()
            finished += 1
        if finished and not self._broken:  # no credit on a destroyed circuit
            self._send(self._circuit.consumed(self.stream_id, finished))
        return data

    # --- trio.abc.SendStream -------------------------------------------------

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Send ``data`` as the stream and circuit windows allow.

        Raises:
            trio.BrokenResourceError: the stream or circuit was destroyed.
            trio.ClosedResourceError: this side was closed or half-closed.
        """
        if self._sending:
            raise trio.BusyResourceError("another task is sending")
        self._sending = True
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            view = bytes(data)
            while True:
                self._check_sendable()
                if not view:
                    break
                allowed = self._circuit.sendable(self.stream_id)
                if allowed <= 0:
                    await self._credit.wait()
                    continue
                chunk, view = view[:allowed], view[allowed:]
                self._send(self._circuit.send_data(self.stream_id, chunk))
            await trio.lowlevel.cancel_shielded_checkpoint()
        finally:
            self._sending = False

    def _check_sendable(self) -> None:
        if self._closed or self._local_done:
            raise trio.ClosedResourceError("stream closed for sending")
        if self._broken:
            raise trio.BrokenResourceError("circuit stream destroyed")

    async def wait_send_all_might_not_block(self) -> None:
        """Return once the windows allow sending (or the stream is closed)."""
        if self._sending:
            raise trio.BusyResourceError("another task is sending")
        while True:
            self._check_sendable()
            if self._circuit.sendable(self.stream_id) > 0:
                await trio.lowlevel.checkpoint()
                return
            await self._credit.wait()

    async def send_eof(self) -> None:
        """Half-close: END(DONE); the far end can go on sending."""
        if self._sending:
            raise trio.BusyResourceError("another task is sending")
        await trio.lowlevel.checkpoint()
        if self._closed:
            raise trio.ClosedResourceError("stream closed")
        if self._local_done or self._broken:
            return
        self._local_done = True
        self._send(self._circuit.end_stream(self.stream_id, EndReason.DONE))

    # --- trio.abc.AsyncResource ----------------------------------------------

    async def aclose(self) -> None:
        """Close gracefully: the far end reads what was sent, then EOF.

        Data that still arrives afterwards is credited, dropped, and answered
        with END(MISC), so the far end's sends fail (as after a TCP reset).
        """
        if not self._closed:
            self._closed = True
            if not (self._broken or self._local_done):
                self._local_done = True
                self._send(self._circuit.end_stream(self.stream_id, EndReason.DONE))
            if self._cells:
                self._send(self._circuit.consumed(self.stream_id, len(self._cells)))
            self._inbound.clear()
            self._cells.clear()
            self._readable.set()
            self._credit.fire()
        await trio.lowlevel.checkpoint()
