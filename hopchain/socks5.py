"""Server side of SOCKS5 (RFC 1928) with username/password (RFC 1929).

Incremental and bounded: feed bytes with ``receive_data``; ``next_action``
returns what to do, consuming exactly the bytes it parsed.  Credentials are
accepted as given and used for stream isolation, unless the server requires
one fixed username and password (for shared machines).  CONNECT is served,
and so are Tor's RESOLVE (0xF0: a name's address) and RESOLVE_PTR (0xF1: an
address's name) extensions; BIND and UDP ASSOCIATE are answered "command not
supported".  The parser never resolves names: a domain-name target (or a
RESOLVE query) is passed on as a string for the exit to resolve.

    greeting  VER=5 | NMETHODS | METHODS...
    auth      VER=1 | ULEN | UNAME | PLEN | PASSWD             (method 2 only)
    request   VER=5 | CMD | RSV=0 | ATYP | DST.ADDR | DST.PORT
    reply     VER=5 | REP | RSV=0 | ATYP=1 | BND.ADDR=0.0.0.0 | BND.PORT=0

    RESOLVE reply      VER=5 | REP=0 | RSV=0 | ATYP=1|4 | address | BND.PORT=0
    RESOLVE_PTR reply  VER=5 | REP=0 | RSV=0 | ATYP=3 | LEN | name | BND.PORT=0

A RESOLVE names its query like a CONNECT names its target (the port is
ignored); a RESOLVE_PTR query must be an IP address (ATYP 1 or 4, or an IP
literal as ATYP 3).  A failed RESOLVE gets an ordinary reply with a non-zero
REP (``encode_reply``).
"""

import enum
import hmac
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from hopchain.errors import Socks5Error
from hopchain.messages import EndReason

NO_AUTH: Final = 0x00
USERNAME_PASSWORD: Final = 0x02
NO_ACCEPTABLE: Final = 0xFF
CONNECT: Final = 0x01
RESOLVE: Final = 0xF0
RESOLVE_PTR: Final = 0xF1


class Reply(enum.IntEnum):
    """SOCKS5 reply codes (RFC 1928 section 6)."""

    SUCCEEDED = 0
    GENERAL_FAILURE = 1
    NOT_ALLOWED = 2
    NETWORK_UNREACHABLE = 3
    HOST_UNREACHABLE = 4
    CONNECTION_REFUSED = 5
    TTL_EXPIRED = 6
    COMMAND_NOT_SUPPORTED = 7
    ADDRESS_TYPE_NOT_SUPPORTED = 8


_END_TO_REPLY: Final = {
    EndReason.DONE: Reply.GENERAL_FAILURE,
    EndReason.MISC: Reply.GENERAL_FAILURE,
    EndReason.RESOLVE_FAILED: Reply.HOST_UNREACHABLE,
    EndReason.CONNECT_REFUSED: Reply.CONNECTION_REFUSED,
    EndReason.EXIT_POLICY: Reply.NOT_ALLOWED,
    EndReason.TIMEOUT: Reply.TTL_EXPIRED,
    EndReason.HOST_UNREACHABLE: Reply.HOST_UNREACHABLE,
    EndReason.NET_UNREACHABLE: Reply.NETWORK_UNREACHABLE,
    EndReason.DESTROYED: Reply.GENERAL_FAILURE,
    EndReason.PROTOCOL: Reply.GENERAL_FAILURE,
    EndReason.RESOURCE_LIMIT: Reply.GENERAL_FAILURE,
}


def reply_for_end(reason: EndReason) -> Reply:
    """The SOCKS5 reply for a stream the exit ended before connecting."""
    return _END_TO_REPLY[reason]


def encode_reply(code: Reply) -> bytes:
    """A SOCKS5 reply with an all-zero bound address."""
    return bytes([5, code, 0, 1, 0, 0, 0, 0, 0, 0])


def encode_resolved_reply(answers: Sequence[str], *, ptr: bool) -> bytes:
    """The reply to a RESOLVE (``ptr``: RESOLVE_PTR) that the exit answered.

    RESOLVE answers the first IPv4 address, else the first IPv6 address
    (Tor's preference); RESOLVE_PTR the first name.  Answers that do not fit
    the reply are skipped, and with none left the reply is HOST_UNREACHABLE.
    """
    if ptr:
        for name in answers:
            if name.isascii() and 0 < len(name) <= 255:
                raw = name.encode("ascii")
                return bytes([5, 0, 0, 3, len(raw)]) + raw + b"\0\0"
        return encode_reply(Reply.HOST_UNREACHABLE)
    addresses = []
    for answer in answers:
        try:
            addresses.append(ipaddress.ip_address(answer))
        except ValueError:
            continue
    for version, atyp in ((4, 1), (6, 4)):
        for address in addresses:
            if address.version == version:
                return bytes([5, 0, 0, atyp]) + address.packed + b"\0\0"
    return encode_reply(Reply.HOST_UNREACHABLE)


@dataclass(frozen=True, slots=True)
class ConnectRequest:
    """A parsed CONNECT: host is a domain name or an IP literal.

    ``by_name`` is False when the app sent an IP address type (ATYP 1 or 4):
    it resolved the name itself, which is a DNS leak on its side.
    """

    host: str
    port: int
    username: bytes | None
    password: bytes | None
    by_name: bool = True


@dataclass(frozen=True, slots=True)
class ResolveRequest:
    """A parsed RESOLVE (``query`` is a host name or an IP literal) or, with
    ``ptr``, a RESOLVE_PTR (``query`` is an IP address in canonical form)."""

    query: str
    ptr: bool
    username: bytes | None
    password: bytes | None


@dataclass(frozen=True, slots=True)
class Action:
    """What the shell must do next.

    ``reply`` goes to the app; then, if ``close``, the connection is closed;
    if ``request`` is set, the handshake is over and the stream (or the
    resolve) can start.
    """

    reply: bytes = b""
    request: ConnectRequest | ResolveRequest | None = None
    close: bool = False


class _State(enum.Enum):
    GREETING = "greeting"
    AUTH = "auth"
    REQUEST = "request"
    DONE = "done"


class HandshakeBuffer:
    """The byte buffer every SOCKS handshake parser reads from."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def receive_data(self, data: bytes | bytearray) -> None:
        """Add bytes from the app."""
        self._buffer += data

    def take_remaining(self) -> bytes:
        """Bytes the app sent after its request (early data), once."""
        rest = bytes(self._buffer)
        self._buffer.clear()
        return rest


class Socks5Server(HandshakeBuffer):
    """Incremental SOCKS5 server handshake (see the module docstring)."""

    def __init__(self, required_credentials: tuple[bytes, bytes] | None = None) -> None:
        """Start a handshake.

        Args:
            required_credentials: (username, password) every app must give;
                None accepts no authentication and any credentials (which
                then only select stream isolation, as in Tor).
        """
        super().__init__()
        self._state = _State.GREETING
        self._required = required_credentials
        self._username: bytes | None = None
        self._password: bytes | None = None

    def next_action(self) -> Action | None:
        """The next step, or None when more bytes are needed.

        Raises:
            Socks5Error: malformed input; ``reply_code`` tells what to answer
                (None: close without a reply).
        """
        if self._state is _State.GREETING:
            return self._greeting()
        if self._state is _State.AUTH:
            return self._auth()
        if self._state is _State.REQUEST:
            return self._request()
        raise Socks5Error("handshake already finished", None)

    def _greeting(self) -> Action | None:
        buf = self._buffer
        if len(buf) < 2:
            return None
        if buf[0] != 5:
            raise Socks5Error(f"not socks5: version byte {buf[0]}", None)
        end = 2 + buf[1]
        if len(buf) < end:
            return None
        methods = bytes(buf[2:end])
        del buf[:end]
        # Prefer username/password when offered, as Tor does: the credentials
        # are what IsolateSOCKSAuth isolates by.
        if USERNAME_PASSWORD in methods:
            self._state = _State.AUTH
            return Action(reply=bytes([5, USERNAME_PASSWORD]))
        if NO_AUTH in methods and self._required is None:
            self._state = _State.REQUEST
            return Action(reply=bytes([5, NO_AUTH]))
        self._state = _State.DONE
        return Action(reply=bytes([5, NO_ACCEPTABLE]), close=True)

    def _auth(self) -> Action | None:
        buf = self._buffer
        if len(buf) < 2:
            return None
        if buf[0] != 1:
            raise Socks5Error(f"bad auth version {buf[0]}", None)
        ulen = buf[1]
        if len(buf) < 3 + ulen:
            return None
        plen = buf[2 + ulen]
        end = 3 + ulen + plen
        if len(buf) < end:
            return None
        self._username = bytes(buf[2 : 2 + ulen])
        self._password = bytes(buf[3 + ulen : end])
        del buf[:end]
        if self._required is not None and not (
            hmac.compare_digest(self._username, self._required[0])
            & hmac.compare_digest(self._password, self._required[1])
        ):
            self._state = _State.DONE
            return Action(reply=bytes([1, 1]), close=True)
        self._state = _State.REQUEST
        return Action(reply=bytes([1, 0]))

    def _request(self) -> Action | None:
        buf = self._buffer
        if len(buf) < 5:
            return None
        if buf[0] != 5:
            raise Socks5Error(f"bad request version {buf[0]}", Reply.GENERAL_FAILURE)
        command, atyp = buf[1], buf[3]
        if atyp == 1:
            end = 4 + 4 + 2
        elif atyp == 4:
            end = 4 + 16 + 2
        elif atyp == 3:
            end = 5 + buf[4] + 2
        else:
            raise Socks5Error(f"address type {atyp}", Reply.ADDRESS_TYPE_NOT_SUPPORTED)
        if len(buf) < end:
            return None
        raw = bytes(buf[:end])
        del buf[:end]
        self._state = _State.DONE
        if command not in (CONNECT, RESOLVE, RESOLVE_PTR):
            raise Socks5Error(f"command {command}", Reply.COMMAND_NOT_SUPPORTED)
        port = int.from_bytes(raw[-2:], "big")
        if atyp == 1:
            host = str(ipaddress.IPv4Address(raw[4:8]))
        elif atyp == 4:
            host = str(ipaddress.IPv6Address(raw[4:20]))
        else:
            host = _domain(raw[5:-2])
        if command == RESOLVE:
            return Action(
                request=ResolveRequest(host, False, self._username, self._password)
            )
        if command == RESOLVE_PTR:
            try:
                address = str(ipaddress.ip_address(host))
            except ValueError as exc:
                raise Socks5Error(
                    "resolve_ptr of something not an IP address", Reply.GENERAL_FAILURE
                ) from exc
            return Action(
                request=ResolveRequest(address, True, self._username, self._password)
            )
        if port == 0:
            raise Socks5Error("port 0", Reply.GENERAL_FAILURE)
        return Action(
            request=ConnectRequest(
                host, port, self._username, self._password, by_name=atyp == 3
            )
        )


def domain_name(raw: bytes) -> str | None:
    """A host name as an app sent it, or None if it is empty, not ASCII, or
    holds spaces or control characters (shared with the SOCKS4a parser)."""
    try:
        name = raw.decode("ascii")
    except UnicodeDecodeError:
        return None
    if not name or any(ord(c) < 0x21 or ord(c) == 0x7F for c in name):
        return None
    return name


def _domain(raw: bytes) -> str:
    name = domain_name(raw)
    if name is None:
        raise Socks5Error(
            "empty, non-ascii or malformed domain name", Reply.GENERAL_FAILURE
        )
    return name
