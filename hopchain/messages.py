"""Relay messages: what travels inside the onion layers.

The plaintext payload area of a relay cell is::

    command (u8) | stream_id (u16 BE) | length (u16 BE) | body | zero padding

Two size classes exist (``SMALL`` and ``LARGE``); the sender picks the
smallest that fits, and pads with zeros, which the layers then encrypt (the
padding is not checked on receipt: the layer already authenticates it).
DATA, END, SENDME, EXTENDED and TRUNCATED bodies have a fixed struct layout
(the hot path never touches msgpack); BEGIN, CONNECTED, EXTEND, RESOLVE and
RESOLVED carry a msgpack array that is validated field by field on decode.

Stream id 0 means the circuit itself (SENDME for the circuit window, EXTEND,
EXTENDED, TRUNCATED, DROP); stream messages use ids 1..65535.

RESOLVE asks the exit to resolve a name (or, with ``ptr``, an IP address to
its name) on a one-shot stream: the id is taken by the RESOLVE and freed by
the one RESOLVED (or an END) that answers it; no DATA ever flows on it::

    RESOLVE   msgpack [query: str, ptr: bool]          (ptr: query is an IP literal)
    RESOLVED  msgpack [answers: [str, ...], reason: nil | int]
              success: 1..MAX_ANSWERS answers and nil; failure: [] and an EndReason
"""

import enum
import ipaddress
import struct
from dataclasses import dataclass
from typing import Any, Final

import msgpack

from hopchain.crypto.onion import STACK_BYTES
from hopchain.errors import MessageError

SMALL_BODY: Final = 1024
LARGE_BODY: Final = 32768
SMALL_PAYLOAD: Final = SMALL_BODY - STACK_BYTES
LARGE_PAYLOAD: Final = LARGE_BODY - STACK_BYTES
HEADER: Final = struct.Struct(">BHH")
MAX_DATA: Final = LARGE_PAYLOAD - HEADER.size
MAX_HOSTNAME: Final = 255
MAX_ANSWERS: Final = 16
_U32: Final = struct.Struct(">I")


class RelayCommand(enum.IntEnum):
    """Relay message commands."""

    DATA = 1
    BEGIN = 2
    CONNECTED = 3
    END = 4
    SENDME = 5
    EXTEND = 6
    EXTENDED = 7
    TRUNCATED = 8
    DROP = 9
    RESOLVE = 10
    RESOLVED = 11


class EndReason(enum.IntEnum):
    """Why a stream or circuit ended; mapped to SOCKS replies by the client."""

    DONE = 0
    MISC = 1
    RESOLVE_FAILED = 2
    CONNECT_REFUSED = 3
    EXIT_POLICY = 4
    TIMEOUT = 5
    HOST_UNREACHABLE = 6
    NET_UNREACHABLE = 7
    DESTROYED = 8
    PROTOCOL = 9
    RESOURCE_LIMIT = 10


@dataclass(frozen=True, slots=True)
class Data:
    """Stream bytes."""

    stream_id: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Begin:
    """Open a stream to host:port; the exit resolves host."""

    stream_id: int
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class Connected:
    """The exit connected; ``address`` is the target address it reached,
    ``egress`` the local address of its outbound socket (the address the
    destination sees; "" from an exit that does not say), which the client
    checks against the country it asked for."""

    stream_id: int
    address: str
    egress: str = ""


@dataclass(frozen=True, slots=True)
class End:
    """The stream is closed (or was refused) for ``reason``."""

    stream_id: int
    reason: EndReason


@dataclass(frozen=True, slots=True)
class Sendme:
    """Flow-control credit: ``credit`` DATA cells consumed (stream 0: circuit)."""

    stream_id: int
    credit: int


@dataclass(frozen=True, slots=True)
class Extend:
    """Ask the last hop to extend the circuit to another relay."""

    identity: bytes
    onion_key: bytes
    host: str
    port: int
    handshake: bytes


@dataclass(frozen=True, slots=True)
class Extended:
    """The new hop's CREATED handshake reply, relayed by the old last hop."""

    handshake: bytes


@dataclass(frozen=True, slots=True)
class Truncated:
    """The circuit ends at the sending hop: it could not or would not extend."""

    reason: EndReason


@dataclass(frozen=True, slots=True)
class Drop:
    """Padding; ignored by the receiver."""


@dataclass(frozen=True, slots=True)
class Resolve:
    """Resolve ``query`` at the exit, on a one-shot stream answered by RESOLVED.

    With ``ptr`` the query is an IP address and the answer is its name
    (a reverse lookup, Tor's RESOLVE_PTR); otherwise the query is a host name
    and the answers are its addresses.
    """

    stream_id: int
    query: str
    ptr: bool = False


@dataclass(frozen=True, slots=True)
class Resolved:
    """The exit's answer to RESOLVE, which ends the stream.

    Either ``answers`` (IP literals; one host name for a PTR query) and no
    ``reason``, or no answers and the ``reason`` the lookup failed.
    """

    stream_id: int
    answers: tuple[str, ...] = ()
    reason: EndReason | None = None


RelayMessage = (
    Data
    | Begin
    | Connected
    | End
    | Sendme
    | Extend
    | Extended
    | Truncated
    | Drop
    | Resolve
    | Resolved
)


def _frame(command: RelayCommand, stream_id: int, body: bytes | bytearray) -> bytes:
    size = SMALL_PAYLOAD if HEADER.size + len(body) <= SMALL_PAYLOAD else LARGE_PAYLOAD
    if HEADER.size + len(body) > size:
        raise ValueError(f"relay message body too long: {len(body)} bytes")
    head = HEADER.pack(command, stream_id, len(body))
    return head + body + bytes(size - HEADER.size - len(body))


def encode_data(stream_id: int, data: bytes | bytearray) -> bytes:
    """The payload area of a DATA message (hot path)."""
    return _frame(RelayCommand.DATA, stream_id, data)


def encode(message: RelayMessage) -> bytes:
    """The padded payload area carrying ``message``."""
    match message:
        case Data(stream_id=sid, data=data):
            return _frame(RelayCommand.DATA, sid, data)
        case Begin(stream_id=sid, host=host, port=port):
            return _frame(RelayCommand.BEGIN, sid, msgpack.packb([host, port]))
        case Connected(stream_id=sid, address=address, egress=egress):
            body = msgpack.packb([address, egress] if egress else [address])
            return _frame(RelayCommand.CONNECTED, sid, body)
        case End(stream_id=sid, reason=reason):
            return _frame(RelayCommand.END, sid, bytes([reason]))
        case Sendme(stream_id=sid, credit=credit):
            return _frame(RelayCommand.SENDME, sid, _U32.pack(credit))
        case Extend(identity=i, onion_key=b, host=host, port=port, handshake=hs):
            return _frame(RelayCommand.EXTEND, 0, msgpack.packb([i, b, host, port, hs]))
        case Extended(handshake=hs):
            return _frame(RelayCommand.EXTENDED, 0, hs)
        case Truncated(reason=reason):
            return _frame(RelayCommand.TRUNCATED, 0, bytes([reason]))
        case Drop():
            return _frame(RelayCommand.DROP, 0, b"")
        case Resolve(stream_id=sid, query=query, ptr=ptr):
            return _frame(RelayCommand.RESOLVE, sid, msgpack.packb([query, ptr]))
        case Resolved(stream_id=sid, answers=answers, reason=reason):
            code = None if reason is None else int(reason)
            body = msgpack.packb([list(answers), code])
            return _frame(RelayCommand.RESOLVED, sid, body)


def _unpack_array(body: bytes, length: int, *, optional: int = 0) -> list[Any]:
    """A msgpack array of ``length`` items, or up to ``optional`` fewer
    (trailing fields added to the protocol later)."""
    try:
        value = msgpack.unpackb(body, raw=False, strict_map_key=True)
    except (
        ValueError,
        msgpack.ExtraData,
        msgpack.FormatError,
        msgpack.StackError,
    ) as exc:
        raise MessageError("malformed msgpack body") from exc
    if not isinstance(value, list) or not length - optional <= len(value) <= length:
        raise MessageError(f"expected an array of {length} items")
    return value


def _host(value: object) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_HOSTNAME:
        raise MessageError("host must be a string of 1..255 characters")
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in value):
        raise MessageError("host contains control characters or spaces")
    return value


def _port(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise MessageError("port must be an integer")
    if not 1 <= value <= 65535:
        raise MessageError(f"port out of range: {value}")
    return value


def _key(value: object) -> bytes:
    if not isinstance(value, bytes) or len(value) != 32:
        raise MessageError("key must be 32 bytes")
    return value


def _reason(body: bytes) -> EndReason:
    if len(body) != 1:
        raise MessageError("reason must be one byte")
    return _reason_code(body[0])


def _reason_code(code: int) -> EndReason:
    try:
        return EndReason(code)
    except ValueError:
        return EndReason.MISC


def _query(value: object, ptr: object) -> tuple[str, bool]:
    if not isinstance(ptr, bool):
        raise MessageError("ptr must be a boolean")
    query = _host(value)
    if ptr:
        try:
            ipaddress.ip_address(query)
        except ValueError as exc:
            raise MessageError("a ptr query must be an IP address") from exc
    return query, ptr


def _resolved(sid: int, answers: object, reason: object) -> Resolved:
    if not isinstance(answers, list) or len(answers) > MAX_ANSWERS:
        raise MessageError(f"answers must be an array of at most {MAX_ANSWERS}")
    checked = tuple(_host(a) for a in answers)
    if not all(a.isascii() for a in checked):
        raise MessageError("answers must be ascii")
    if reason is None:
        if not checked:
            raise MessageError("resolved with neither answers nor a reason")
        return Resolved(sid, checked)
    if isinstance(reason, bool) or not isinstance(reason, int):
        raise MessageError("reason must be an integer or nil")
    if not 0 <= reason <= 255:
        raise MessageError(f"reason out of range: {reason}")
    if checked:
        raise MessageError("resolved with both answers and a reason")
    return Resolved(sid, (), _reason_code(reason))


def decode(payload: bytes) -> RelayMessage:
    """Parse a decrypted payload area.

    Raises:
        MessageError: unknown command, bad length, or a
            malformed body.
    """
    if len(payload) < HEADER.size:
        raise MessageError("payload shorter than its header")
    command, sid, length = HEADER.unpack_from(payload)
    end = HEADER.size + length
    if end > len(payload):
        raise MessageError(f"length {length} overruns the payload")
    body = payload[HEADER.size : end]
    if command == RelayCommand.DATA:
        if sid == 0:
            raise MessageError("data on stream 0")
        return Data(sid, body)
    if command == RelayCommand.SENDME:
        if length != _U32.size:
            raise MessageError("sendme body must be 4 bytes")
        return Sendme(sid, _U32.unpack(body)[0])
    if command == RelayCommand.BEGIN:
        host, port = _unpack_array(body, 2)
        return Begin(_stream(sid), _host(host), _port(port))
    if command == RelayCommand.CONNECTED:
        address, *rest = _unpack_array(body, 2, optional=1)
        egress = rest[0] if rest else ""
        for value in (address, egress):
            if not isinstance(value, str) or len(value) > MAX_HOSTNAME:
                raise MessageError("connected addresses must be short strings")
        return Connected(_stream(sid), address, _egress(egress))
    if command == RelayCommand.END:
        return End(_stream(sid), _reason(body))
    if command == RelayCommand.EXTEND:
        ident, onion, host, port, handshake = _unpack_array(body, 5)
        if not isinstance(handshake, bytes) or len(handshake) != 96:
            raise MessageError("extend handshake must be 96 bytes")
        return Extend(_key(ident), _key(onion), _host(host), _port(port), handshake)
    if command == RelayCommand.EXTENDED:
        if length != 64:
            raise MessageError("extended handshake must be 64 bytes")
        return Extended(body)
    if command == RelayCommand.TRUNCATED:
        return Truncated(_reason(body))
    if command == RelayCommand.DROP:
        return Drop()
    if command == RelayCommand.RESOLVE:
        query, ptr = _query(*_unpack_array(body, 2))
        return Resolve(_stream(sid), query, ptr)
    if command == RelayCommand.RESOLVED:
        return _resolved(_stream(sid), *_unpack_array(body, 2))
    raise MessageError(f"unknown relay command {command}")


def _egress(value: str) -> str:
    """CONNECTED's egress field: "" (not given) or an IP address."""
    if value:
        try:
            ipaddress.ip_address(value)
        except ValueError as exc:
            raise MessageError("connected egress must be an IP address") from exc
    return value


def _stream(sid: int) -> int:
    if sid == 0:
        raise MessageError("stream message on stream 0")
    return sid
