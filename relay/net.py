"""The transport interface the daemons use, and its TCP implementation.

Relays, authorities and clients reach the network only through a ``Network``
object, so simulations can hand them in-memory links instead of TCP.  This
module also holds the few I/O helpers every shell shares.
"""

import errno
import logging
import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Final, Protocol

import msgpack
import trio

logger = logging.getLogger(__name__)

RECEIVE_CHUNK: Final = 256 * 1024
MAX_DIRECTORY_MESSAGE: Final = 8 * 1024 * 1024
_LEN: Final = struct.Struct(">I")


class Network(Protocol):
    """How a node opens and accepts byte streams."""

    async def connect(
        self, host: str, port: int, *, local_address: str | None = None
    ) -> trio.abc.HalfCloseableStream:
        """Open a stream to host:port (optionally from local_address)."""
        ...

    async def listen(
        self, host: str, port: int
    ) -> list[trio.abc.Listener[trio.abc.HalfCloseableStream]]:
        """Listeners bound to host:port (port 0: any free port); each has a
        bound port that ``bound_port`` reads."""
        ...

    async def resolve(self, host: str, port: int) -> list[str]:
        """The addresses ``host`` resolves to (an IP literal: itself).

        Raises:
            OSError: the name does not resolve (socket.gaierror).
        """
        ...

    async def resolve_ptr(self, address: str) -> str:
        """The name an IP address maps to (a reverse lookup).

        Raises:
            OSError: the address has no name (socket.gaierror).
        """
        ...


class TcpNetwork:
    """The real network: trio TCP streams (TCP_NODELAY is trio's default)."""

    async def connect(
        self, host: str, port: int, *, local_address: str | None = None
    ) -> trio.abc.HalfCloseableStream:
        """Open a TCP connection, bound to ``local_address`` when given."""
        return await trio.open_tcp_stream(host, port, local_address=local_address)

    async def listen(
        self, host: str, port: int
    ) -> list[trio.abc.Listener[trio.abc.HalfCloseableStream]]:
        """TCP listeners on host:port."""
        return [*await trio.open_tcp_listeners(port, host=host)]

    async def resolve(self, host: str, port: int) -> list[str]:
        """Resolve with the system resolver, keeping its order."""
        infos = await trio.socket.getaddrinfo(host, port, type=trio.socket.SOCK_STREAM)
        return list(dict.fromkeys(str(info[4][0]) for info in infos))

    async def resolve_ptr(self, address: str) -> str:
        """Reverse-resolve with the system resolver; a name is required
        (NI_NAMEREQD), so an address without one fails instead of coming
        back as itself."""
        name, _ = await trio.socket.getnameinfo((address, 0), trio.socket.NI_NAMEREQD)
        return name


_wall_clock: ContextVar[Callable[[], float] | None] = ContextVar(
    "hopchain_wall_clock", default=None
)


def wall_clock() -> float:
    """Seconds since the epoch, for signed documents' timestamps.

    The system clock, unless ``use_wall_clock`` put another in this context
    (a simulation's virtual clock)."""
    clock = _wall_clock.get()
    return datetime.now(UTC).timestamp() if clock is None else clock()


@contextmanager
def use_wall_clock(clock: Callable[[], float]) -> Iterator[None]:
    """Make ``wall_clock()`` read ``clock`` in this context and in every trio
    task started from it (tasks copy their spawner's context).

    Simulations pass ``lambda: EPOCH + trio.current_time()`` so that the
    timestamps relays, authorities and clients sign and check follow the
    virtual clock."""
    token = _wall_clock.set(clock)
    try:
        yield
    finally:
        _wall_clock.reset(token)


def peer_address(stream: trio.abc.Stream) -> str:
    """The address of a stream's other end: a TCP stream's peer, or the
    ``peer_address`` of another kind (a MemoryStream).

    Raises:
        OSError: the socket is no longer connected, or the stream has no
            address.
    """
    if isinstance(stream, trio.SocketStream):
        return str(stream.socket.getpeername()[0])
    address = getattr(stream, "peer_address", None)
    if not isinstance(address, str):
        raise OSError(errno.ENOTCONN, f"{type(stream).__name__} has no peer address")
    return address


def bound_port(listeners: list[trio.abc.Listener[trio.abc.HalfCloseableStream]]) -> int:
    """The port the first listener is bound to (a TCP listener's socket
    port, or the ``port`` of another kind, such as a MemoryListener)."""
    first = listeners[0]
    if isinstance(first, trio.SocketListener):
        tcp_port: int = first.socket.getsockname()[1]
        return tcp_port
    port = getattr(first, "port", None)
    if not isinstance(port, int):
        raise TypeError(f"{type(first).__name__} has no bound port")
    return port


class BufferedReader:
    """Reads exact byte counts from a stream, keeping what arrives early."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self._stream = stream
        self._buffer = bytearray()

    async def read_exactly(self, n: int) -> bytes:
        """Exactly n bytes.

        Raises:
            EOFError: the peer closed first.
        """
        while len(self._buffer) < n:
            data = await self._stream.receive_some(RECEIVE_CHUNK)
            if not data:
                raise EOFError(f"peer closed after {len(self._buffer)} of {n} bytes")
            self._buffer += data
        out = bytes(self._buffer[:n])
        del self._buffer[:n]
        return out

    def take_buffered(self) -> bytes:
        """Whatever was read past the last ``read_exactly``."""
        out = bytes(self._buffer)
        self._buffer.clear()
        return out


async def send_message(stream: trio.abc.SendStream, message: object) -> None:
    """Send one length-prefixed msgpack message (directory protocol)."""
    body = msgpack.packb(message, use_bin_type=True)
    await stream.send_all(_LEN.pack(len(body)) + body)


async def receive_message(reader: BufferedReader) -> object:
    """Receive one length-prefixed msgpack message.

    Raises:
        ValueError: oversized or malformed message.
        EOFError: the peer closed first.
    """
    (length,) = _LEN.unpack(await reader.read_exactly(_LEN.size))
    if length > MAX_DIRECTORY_MESSAGE:
        raise ValueError(f"directory message of {length} bytes is too large")
    try:
        result: object = msgpack.unpackb(
            await reader.read_exactly(length), raw=False, strict_map_key=True
        )
    except (msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise ValueError("malformed directory message") from exc
    return result
