"""Server side of SOCKS4 and SOCKS4a, with Tor's RESOLVE extension.

Incremental and bounded, in the style of ``hopchain.socks5``: feed bytes with
``receive_data``; ``next_action`` returns an ``Action`` (the same type the
SOCKS5 parser returns, carrying a ``ConnectRequest`` or ``ResolveRequest``),
``None`` while more bytes are needed, or raises ``Socks4Error``.  The
parser never resolves names and does no I/O; the shell picks this parser or
the SOCKS5 one from the connection's first byte (4 or 5)::

    request  VER=4 | CMD | DSTPORT (2) | DSTIP (4) | USERID | 0x00 [| HOSTNAME | 0x00]
    reply    VN=0  | REP | DSTPORT (2) | DSTIP (4)

* SOCKS4a: DSTIP 0.0.0.x with x != 0 means a HOSTNAME follows the user id;
  it is passed on for the exit to resolve (``by_name``).  Plain SOCKS4 names
  an IPv4 address, which means the app resolved the name itself (a possible
  DNS leak on its side); it is served, and the shell warns and counts it.
* USERID and HOSTNAME are at most 255 bytes each (longer: refused before
  the terminating NUL arrives).  The user id is the isolation username, as
  in Tor (an empty one is no username); SOCKS4 has no password, so a server
  that requires credentials refuses every SOCKS4 request.
* CMD 1 is CONNECT; CMD 0xF0 is Tor's RESOLVE, whose reply carries the IPv4
  answer in DSTIP.  BIND (2), RESOLVE_PTR (0xF1, whose answer is a name and
  does not fit the reply) and anything else are refused.
* REP is 0x5A (granted) or 0x5B (rejected or failed); every refusal and
  failure gets 0x5B.  DSTPORT and DSTIP are zero except in a RESOLVE reply.

Not handled here: identd (replies 0x5C/0x5D are never sent), SOCKS4 BIND.
"""

import ipaddress
from collections.abc import Sequence
from typing import Final

from hopchain.errors import Socks4Error
from hopchain.socks5 import (
    Action,
    ConnectRequest,
    HandshakeBuffer,
    ResolveRequest,
    domain_name,
)

VERSION: Final = 4
CONNECT: Final = 0x01
RESOLVE: Final = 0xF0
GRANTED: Final = 0x5A
REJECTED: Final = 0x5B
MAX_USER_ID: Final = 255
MAX_HOSTNAME: Final = 255
_FIXED: Final = 8  # VER, CMD, DSTPORT, DSTIP


def encode_reply(code: int, address: str | None = None) -> bytes:
    """A SOCKS4 reply (``address``: the IPv4 answer of a RESOLVE)."""
    ip = bytes(4) if address is None else ipaddress.IPv4Address(address).packed
    return bytes([0, code, 0, 0]) + ip


def encode_resolved_reply(answers: Sequence[str]) -> bytes:
    """The reply to a RESOLVE: the first IPv4 answer, else REJECTED."""
    for answer in answers:
        try:
            address = ipaddress.ip_address(answer)
        except ValueError:
            continue
        if address.version == 4:
            return encode_reply(GRANTED, str(address))
    return encode_reply(REJECTED)


class Socks4Server(HandshakeBuffer):
    """Incremental SOCKS4/4a request parser (see the module docstring)."""

    def __init__(self, required_credentials: tuple[bytes, bytes] | None = None) -> None:
        """Start a handshake.

        Args:
            required_credentials: as for ``Socks5Server``; when set, every
                SOCKS4 request is refused (it cannot carry a password).
        """
        super().__init__()
        self._required = required_credentials
        self._done = False

    def next_action(self) -> Action | None:
        """The next step, or None when more bytes are needed.

        Raises:
            Socks4Error: malformed input; ``reply_code`` tells what to answer
                (None: close without a reply).
        """
        if self._done:
            raise Socks4Error("handshake already finished", None)
        buf = self._buffer
        if not buf:
            return None
        if buf[0] != VERSION:
            raise Socks4Error(f"not socks4: version byte {buf[0]}", None)
        user_end = _field_end(buf, _FIXED, MAX_USER_ID, "user id")
        if user_end is None:
            return None
        command = buf[1]
        port = int.from_bytes(buf[2:4], "big")
        ip = bytes(buf[4:8])
        user = bytes(buf[_FIXED:user_end])
        end = user_end + 1
        socks4a = ip[:3] == b"\0\0\0" and ip[3] != 0
        if socks4a:
            name_end = _field_end(buf, end, MAX_HOSTNAME, "host name")
            if name_end is None:
                return None
            host = domain_name(bytes(buf[end:name_end]))
            end = name_end + 1
        else:
            host = str(ipaddress.IPv4Address(ip))
        del buf[:end]
        self._done = True
        if host is None:
            raise Socks4Error("empty, non-ascii or malformed host name", REJECTED)
        if command not in (CONNECT, RESOLVE):
            raise Socks4Error(f"command {command}", REJECTED)
        if self._required is not None:
            return Action(reply=encode_reply(REJECTED), close=True)
        username = user or None
        if command == RESOLVE:
            return Action(request=ResolveRequest(host, False, username, None))
        if port == 0:
            raise Socks4Error("port 0", REJECTED)
        return Action(
            request=ConnectRequest(host, port, username, None, by_name=socks4a)
        )


def _field_end(buf: bytearray, start: int, limit: int, what: str) -> int | None:
    """The index of the NUL ending a field at ``start``; None: not arrived yet.

    Raises:
        Socks4Error: the field is longer than ``limit`` bytes.
    """
    end = buf.find(0, start, start + limit + 1)
    if end >= 0:
        return end
    if len(buf) > start + limit:
        raise Socks4Error(f"{what} longer than {limit} bytes", REJECTED)
    return None
