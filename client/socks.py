"""The local SOCKS5 listener: one task per app connection.

The handshake has a deadline (``HANDSHAKE_TIMEOUT``), so an app that opens a
connection and says nothing (slowloris) is dropped.  Malformed input gets the
RFC 1928 reply the parser chose, or a plain close, and a log line at INFO;
other connections are never affected.
"""

import logging
from typing import Final

import trio
from hopchain.client.circuits import CircuitManager
from hopchain.relay.net import RECEIVE_CHUNK

from hopchain.errors import (
    CircuitError,
    DirectoryError,
    PathSelectionError,
    Socks5Error,
    StreamError,
)
from hopchain.messages import EndReason
from hopchain.socks5 import (
    ConnectRequest,
    Reply,
    Socks5Server,
    encode_reply,
    reply_for_end,
)

logger = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT: Final = 30.0


async def _handshake(stream: trio.abc.Stream) -> tuple[ConnectRequest, bytes] | None:
    parser = Socks5Server()
    while True:
        action = parser.next_action()
        if action is None:
            data = await stream.receive_some(RECEIVE_CHUNK)
            if not data:
                return None
            parser.receive_data(data)
            continue
        if action.reply:
            await stream.send_all(action.reply)
        if action.close:
            return None
        if action.request is not None:
            return action.request, parser.take_remaining()


async def handle_socks(stream: trio.abc.Stream, manager: CircuitManager) -> None:
    """Serve one SOCKS5 connection from an app."""
    async with stream:
        try:
            with trio.fail_after(HANDSHAKE_TIMEOUT):
                result = await _handshake(stream)
        except Socks5Error as exc:
            logger.info("bad socks request: %s", exc)
            if exc.reply_code is not None:
                await _reply(stream, Reply(exc.reply_code))
            return
        except trio.TooSlowError:
            logger.info("socks handshake timed out")
            return
        except trio.BrokenResourceError:
            return
        if result is None:
            return
        request, early = result
        try:
            handle, pump = await manager.open_stream(request.host, request.port, stream)
        except StreamError as exc:
            logger.info("stream failed: %s", exc)
            await _reply(stream, reply_for_end(EndReason(exc.reason)))
            return
        except (CircuitError, DirectoryError, PathSelectionError) as exc:
            logger.warning("no circuit for a stream: %s", exc)
            await _reply(stream, Reply.GENERAL_FAILURE)
            return
        if not await _reply(stream, Reply.SUCCEEDED):
            pump.abort()
        try:
            await pump.run(early)
        finally:
            manager.release(handle, pump)


async def _reply(stream: trio.abc.Stream, code: Reply) -> bool:
    try:
        await stream.send_all(encode_reply(code))
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return False
    return True
