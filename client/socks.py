"""The local SOCKS listener: one task per app connection.

The handshake has a deadline (``HANDSHAKE_TIMEOUT``), so an app that opens a
connection and says nothing (slowloris) is dropped, and at most
``max_pending`` connections may be in their handshake at once.  Malformed
input gets the RFC 1928 reply the parser chose, or a plain close, and a log
line at INFO; other connections are never affected.
"""

import logging
from dataclasses import dataclass, field
from typing import Final

import trio
from hopchain.client.circuits import CircuitManager
from hopchain.client.stats import ClientStats
from hopchain.relay.net import RECEIVE_CHUNK
from hopchain.relay.pump import splice

from hopchain.errors import (
    CircuitError,
    DirectoryError,
    PathSelectionError,
    Socks5Error,
    StreamError,
)
from hopchain.isolation import IsolationRules, isolation_key
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


@dataclass(frozen=True, slots=True)
class SocksOptions:
    """How the SOCKS listener treats apps."""

    isolation: IsolationRules = field(default_factory=IsolationRules)
    required_credentials: tuple[bytes, bytes] | None = None
    max_pending: int = 256


class SocksListener:
    """Serves SOCKS connections through a circuit manager."""

    def __init__(
        self, manager: CircuitManager, options: SocksOptions, stats: ClientStats
    ) -> None:
        self._manager = manager
        self._options = options
        self._stats = stats
        self._pending = 0

    async def handle(self, stream: trio.SocketStream) -> None:
        """Serve one app connection."""
        async with stream:
            if self._pending >= self._options.max_pending:
                self._stats.limits_hit["socks pending connections"] += 1
                logger.warning(
                    "refusing a SOCKS connection: %d handshakes already pending",
                    self._pending,
                )
                return
            self._pending += 1
            try:
                result = await self._handshake(stream)
            finally:
                self._pending -= 1
            if result is not None:
                await self._connect(stream, *result)

    async def _handshake(
        self, stream: trio.abc.Stream
    ) -> tuple[ConnectRequest, bytes] | None:
        parser = Socks5Server(self._options.required_credentials)
        try:
            with trio.fail_after(HANDSHAKE_TIMEOUT):
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
        except Socks5Error as exc:
            logger.info("bad socks request: %s", exc)
            if exc.reply_code is not None:
                await _reply(stream, Reply(exc.reply_code))
        except trio.TooSlowError:
            self._stats.limits_hit["socks handshake timeout"] += 1
            logger.info("socks handshake timed out after %.0f s", HANDSHAKE_TIMEOUT)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        return None

    async def _connect(
        self, stream: trio.SocketStream, request: ConnectRequest, early: bytes
    ) -> None:
        self._stats.request("socks5", by_name=request.by_name)
        key = isolation_key(
            self._options.isolation,
            listener="socks",
            host=request.host,
            port=request.port,
            username=request.username,
            password=request.password,
        )
        manager = self._manager
        try:
            handle, circuit_stream = await manager.open_stream(
                request.host, request.port, key
            )
        except StreamError as exc:
            logger.info("stream failed: %s", exc)
            await _reply(stream, reply_for_end(EndReason(exc.reason)))
            return
        except (CircuitError, DirectoryError, PathSelectionError) as exc:
            logger.warning("no circuit for a stream: %s", exc)
            await _reply(stream, Reply.GENERAL_FAILURE)
            return
        self._stats.exits_used[handle.exit_label] += 1
        try:
            if await _reply(stream, Reply.SUCCEEDED):
                await splice(stream, circuit_stream, early)
        finally:
            await circuit_stream.aclose()
            manager.release(handle, circuit_stream)


async def _reply(stream: trio.abc.Stream, code: Reply) -> bool:
    try:
        await stream.send_all(encode_reply(code))
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return False
    return True
