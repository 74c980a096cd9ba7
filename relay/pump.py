"""Moves one stream's bytes between a socket and a circuit (client and exit).

The pump owns nothing but the socket: the circuit's core object does the
accounting (``sendable``, ``send_data``, ``consumed``, ``end_stream``) and
``send`` puts the resulting cell bodies on the right link.  Two loops run:

* upstream: socket -> circuit, only as far as the windows allow; EOF becomes
  END(DONE) (a half-close: the other direction keeps flowing);
* downstream: circuit -> socket; SENDME credit is returned only after the
  bytes were written, so a slow reader throttles the far end.

``deliver``, ``remote_end`` and ``abort`` are called synchronously by the
link reader, which never blocks; the buffer they fill is bounded by the
receive window that the core enforces.
"""

import contextlib
import logging
from collections.abc import Callable
from typing import Final, Protocol

import trio

from hopchain.messages import MAX_DATA, EndReason

logger = logging.getLogger(__name__)

READ_CHUNK: Final = 4 * MAX_DATA


class CircuitEnd(Protocol):
    """The core methods a pump needs (ClientCircuit and RelayCircuit)."""

    def sendable(self, stream_id: int) -> int: ...

    def send_data(self, stream_id: int, data: bytes | bytearray) -> list[bytes]: ...

    def consumed(self, stream_id: int, cells: int) -> list[bytes]: ...

    def end_stream(self, stream_id: int, reason: EndReason) -> list[bytes]: ...


class CreditSignal:
    """Wakes every pump of a circuit when flow-control credit arrives."""

    def __init__(self) -> None:
        self._event = trio.Event()

    def fire(self) -> None:
        """Credit arrived (or the circuit closed): wake all waiters."""
        self._event.set()
        self._event = trio.Event()

    async def wait(self) -> None:
        """Sleep until the next ``fire``."""
        await self._event.wait()


class StreamPump:
    """Bidirectional copy between a socket and one circuit stream."""

    def __init__(
        self,
        stream_id: int,
        socket: trio.abc.HalfCloseableStream | trio.abc.Stream,
        circuit: CircuitEnd,
        send: Callable[[list[bytes]], None],
        credit: CreditSignal,
    ) -> None:
        self.stream_id = stream_id
        self._socket = socket
        self._circuit = circuit
        self._send = send
        self._credit = credit
        self._inbound = bytearray()
        self._inbound_cells = 0
        self._inbound_ready = trio.Event()
        self._remote_done = False
        self._cancel = trio.CancelScope()

    # --- called by the link reader (never blocks) ---------------------------

    def deliver(self, data: bytes) -> None:
        """One DATA cell's bytes from the circuit, for the socket."""
        self._inbound += data
        self._inbound_cells += 1
        self._inbound_ready.set()

    def remote_end(self) -> None:
        """The far end half-closed (END DONE)."""
        self._remote_done = True
        self._inbound_ready.set()

    def abort(self) -> None:
        """The stream or circuit died: stop both loops now."""
        self._cancel.cancel()

    # --- the pump itself -----------------------------------------------------

    async def run(self, early_data: bytes = b"") -> None:
        """Copy both ways until both halves are closed or the stream aborts."""
        try:
            with self._cancel:
                if early_data:
                    await self._upload(early_data)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._upstream)
                    nursery.start_soon(self._downstream)
            if self._cancel.cancelled_caught:
                self._send(
                    self._circuit.end_stream(self.stream_id, EndReason.DESTROYED)
                )
        finally:
            with trio.move_on_after(1) as scope:
                scope.shield = True
                await self._socket.aclose()

    async def _upload(self, data: bytes | bytearray) -> None:
        """Send ``data`` as the windows allow (other streams share the circuit's)."""
        while data:
            allowed = self._circuit.sendable(self.stream_id)
            if allowed <= 0:
                await self._credit.wait()
                continue
            chunk, data = data[:allowed], data[allowed:]
            self._send(self._circuit.send_data(self.stream_id, chunk))

    async def _upstream(self) -> None:
        sid = self.stream_id
        circuit = self._circuit
        while True:
            allowed = circuit.sendable(sid)
            if allowed <= 0:
                await self._credit.wait()
                continue
            try:
                data = await self._socket.receive_some(min(allowed, READ_CHUNK))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._send(circuit.end_stream(sid, EndReason.MISC))
                self._cancel.cancel()
                return
            if not data:
                self._send(circuit.end_stream(sid, EndReason.DONE))
                return
            await self._upload(data)

    async def _downstream(self) -> None:
        sid = self.stream_id
        while True:
            if self._inbound_cells:
                data = bytes(self._inbound)
                cells = self._inbound_cells
                self._inbound.clear()
                self._inbound_cells = 0
                try:
                    await self._socket.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    self._send(self._circuit.end_stream(sid, EndReason.MISC))
                    self._cancel.cancel()
                    return
                self._send(self._circuit.consumed(sid, cells))
                continue
            if self._remote_done:
                if isinstance(self._socket, trio.abc.HalfCloseableStream):
                    with contextlib.suppress(
                        trio.BrokenResourceError, trio.ClosedResourceError
                    ):
                        await self._socket.send_eof()
                return
            self._inbound_ready = trio.Event()
            await self._inbound_ready.wait()
