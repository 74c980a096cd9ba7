"""The local SOCKS listener: one task per app connection.

One port serves SOCKS5 (``hopchain.socks5``) and SOCKS4/4a
(``hopchain.socks4``): the first byte the app sends picks the parser (4:
SOCKS4, anything else: SOCKS5, which closes on a wrong version).  A CONNECT
opens a circuit stream and splices it to the app; Tor's RESOLVE and
RESOLVE_PTR are answered by an exit through ``CircuitManager.resolve`` (an
IP literal to RESOLVE answers itself, without a circuit), and the
connection closes after the one reply.  The client never resolves a name.

The handshake has a deadline (``HANDSHAKE_TIMEOUT``), so an app that opens a
connection and says nothing (slowloris) is dropped, and at most
``max_pending`` connections may be in their handshake at once.  Malformed
input gets the reply the parser chose (RFC 1928 codes, or SOCKS4's 0x5B), or
a plain close, and a log line at INFO; other connections are never affected.
A SOCKS4 CONNECT to an IP address means the app resolved the name itself: it
is served, counted (``hopchain doctor``), and logged at WARNING once per run.
Destinations and app addresses appear in logs only as ``[scrubbed]``
(``hopchain.safelog``), unless the user asked for ``--unsafe-logging``.
"""

import logging
from dataclasses import dataclass, field
from typing import Final

import trio
from hopchain.client.circuits import CircuitManager
from hopchain.client.stats import ClientStats
from hopchain.relay.net import RECEIVE_CHUNK, peer_address
from hopchain.relay.pump import splice

from hopchain import socks4
from hopchain.errors import (
    CircuitError,
    DirectoryError,
    PathSelectionError,
    Socks4Error,
    Socks5Error,
    StreamError,
)
from hopchain.exitpolicy import is_ip_literal
from hopchain.isolation import IsolationRules, isolation_key
from hopchain.messages import EndReason
from hopchain.safelog import log_event, sensitive
from hopchain.socks4 import Socks4Server
from hopchain.socks5 import (
    ConnectRequest,
    Reply,
    ResolveRequest,
    Socks5Server,
    encode_reply,
    encode_resolved_reply,
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


@dataclass(frozen=True, slots=True)
class _Session:
    """A finished handshake: the protocol ("socks4" or "socks5"), the
    request, and the bytes the app sent after it."""

    protocol: str
    request: ConnectRequest | ResolveRequest
    early: bytes


class SocksListener:
    """Serves SOCKS connections through a circuit manager."""

    def __init__(
        self, manager: CircuitManager, options: SocksOptions, stats: ClientStats
    ) -> None:
        self._manager = manager
        self._options = options
        self._stats = stats
        self._pending = 0
        self._warned_socks4_ip = False

    async def handle(self, stream: trio.abc.HalfCloseableStream) -> None:
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
                session = await self._handshake(stream)
            finally:
                self._pending -= 1
            if session is None:
                return
            if isinstance(session.request, ResolveRequest):
                await self._resolve(stream, session.protocol, session.request)
            else:
                await self._connect(stream, session, session.request)

    async def _handshake(self, stream: trio.abc.Stream) -> _Session | None:
        required = self._options.required_credentials
        try:
            with trio.fail_after(HANDSHAKE_TIMEOUT):
                data = await stream.receive_some(RECEIVE_CHUNK)
                if not data:
                    return None
                parser: Socks4Server | Socks5Server
                if data[0] == socks4.VERSION:
                    parser = Socks4Server(required)
                else:
                    parser = Socks5Server(required)
                parser.receive_data(data)
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
                        early = parser.take_remaining()
                        return _Session(_protocol(parser), action.request, early)
        except Socks4Error as exc:
            logger.info("bad socks4 request: %s", exc)
            if exc.reply_code is not None:
                await _send(stream, socks4.encode_reply(exc.reply_code))
        except Socks5Error as exc:
            logger.info("bad socks request: %s", exc)
            if exc.reply_code is not None:
                await _send(stream, encode_reply(Reply(exc.reply_code)))
        except trio.TooSlowError:
            self._stats.limits_hit["socks handshake timeout"] += 1
            logger.info("socks handshake timed out after %.0f s", HANDSHAKE_TIMEOUT)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        return None

    async def _connect(
        self,
        stream: trio.abc.HalfCloseableStream,
        session: _Session,
        request: ConnectRequest,
    ) -> None:
        protocol = session.protocol
        if protocol == "socks4" and not request.by_name and not self._warned_socks4_ip:
            self._warned_socks4_ip = True
            logger.warning(
                "an app sent a SOCKS4 request with an IP address: it resolved "
                "the name itself, a possible DNS leak (use SOCKS4a or SOCKS5 "
                "with host names); later ones are only counted (hopchain doctor)"
            )
        self._stats.request(protocol, by_name=request.by_name)
        log_event(
            logger,
            logging.DEBUG,
            "socks_connect",
            protocol=protocol,
            app=sensitive(_peer(stream)),
            host=sensitive(request.host),
            port=request.port,
        )
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
            await _reply(stream, protocol, reply_for_end(EndReason(exc.reason)))
            return
        except (CircuitError, DirectoryError, PathSelectionError) as exc:
            logger.warning("no circuit for a stream: %s", exc)
            await _reply(stream, protocol, Reply.GENERAL_FAILURE)
            return
        self._stats.exits_used[handle.exit_label] += 1
        try:
            if await _reply(stream, protocol, Reply.SUCCEEDED):
                await splice(stream, circuit_stream, session.early)
        finally:
            await circuit_stream.aclose()
            manager.release(handle, circuit_stream)

    async def _resolve(
        self,
        stream: trio.abc.HalfCloseableStream,
        protocol: str,
        request: ResolveRequest,
    ) -> None:
        """Answer RESOLVE / RESOLVE_PTR with what an exit found, then close."""
        if not request.ptr and is_ip_literal(request.query):
            answers = [request.query]  # an address resolves to itself
        else:
            key = isolation_key(
                self._options.isolation,
                listener="socks",
                host=request.query,
                port=0,
                username=request.username,
                password=request.password,
            )
            try:
                answers = await self._manager.resolve(
                    request.query, ptr=request.ptr, isolation=key
                )
            except StreamError as exc:
                logger.info("resolve failed: %s", exc)
                await _reply(stream, protocol, reply_for_end(EndReason(exc.reason)))
                return
            except (CircuitError, DirectoryError, PathSelectionError) as exc:
                logger.warning("no circuit for a resolve: %s", exc)
                await _reply(stream, protocol, Reply.GENERAL_FAILURE)
                return
        if protocol == "socks4":
            await _send(stream, socks4.encode_resolved_reply(answers))
        else:
            await _send(stream, encode_resolved_reply(answers, ptr=request.ptr))


def _peer(stream: trio.abc.HalfCloseableStream) -> str:
    """The app's address (and port, over TCP), for (scrubbed) logs."""
    try:
        if isinstance(stream, trio.SocketStream):
            host, port, *_ = stream.socket.getpeername()
            return f"{host}:{port}"
        return peer_address(stream)
    except OSError:
        return "unknown"


def _protocol(parser: Socks4Server | Socks5Server) -> str:
    return "socks4" if isinstance(parser, Socks4Server) else "socks5"


async def _reply(stream: trio.abc.Stream, protocol: str, code: Reply) -> bool:
    """Send ``code`` in the app's protocol (SOCKS4 knows granted or rejected)."""
    if protocol == "socks4":
        granted = code is Reply.SUCCEEDED
        return await _send(
            stream, socks4.encode_reply(socks4.GRANTED if granted else socks4.REJECTED)
        )
    return await _send(stream, encode_reply(code))


async def _send(stream: trio.abc.Stream, data: bytes) -> bool:
    try:
        await stream.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return False
    return True
