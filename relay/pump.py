"""Copies bytes both ways between an app or target socket and a circuit stream.

Used by the client (app socket <-> circuit) and the exit (circuit <->
destination socket).  Each direction ends on EOF, which it passes on as a
half-close, so protocols that shut down one side keep working.  If either
side breaks, both are closed.
"""

import contextlib
from typing import Final

import trio
from hopchain.relay.stream import CircuitStream

from hopchain.messages import MAX_DATA

READ_CHUNK: Final = 4 * MAX_DATA
_BROKEN: Final = (trio.BrokenResourceError, trio.ClosedResourceError)


async def splice(
    socket: trio.abc.HalfCloseableStream,
    stream: CircuitStream,
    early_data: bytes = b"",
) -> None:
    """Copy both ways until both directions ended; then close both ends.

    Args:
        socket: the app's (client) or the destination's (exit) connection.
        stream: the circuit stream.
        early_data: bytes the app sent before the stream was connected.
    """
    try:
        async with trio.open_nursery() as nursery:

            async def upstream() -> None:
                try:
                    if early_data:
                        await stream.send_all(early_data)
                    while data := await socket.receive_some(READ_CHUNK):
                        await stream.send_all(data)
                    await stream.send_eof()
                except _BROKEN:
                    nursery.cancel_scope.cancel()

            async def downstream() -> None:
                try:
                    while data := await stream.receive_some():
                        await socket.send_all(data)
                    await socket.send_eof()
                except _BROKEN:
                    nursery.cancel_scope.cancel()

            nursery.start_soon(upstream)
            nursery.start_soon(downstream)
    finally:
        with trio.CancelScope(shield=True):
            await stream.aclose()
            with contextlib.suppress(*_BROKEN), trio.move_on_after(1):
                await socket.aclose()
