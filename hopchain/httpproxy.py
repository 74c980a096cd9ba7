"""The pure part of the HTTP proxy port: strict request reading and routing.

h11 parses and frames HTTP/1.1; this module adds what a proxy in front of an
anonymity network must refuse on top of what h11 already refuses, and turns
a request into where it goes:

* ``RequestReader`` wraps an h11 server connection.  Every refusal comes
  out as ``HttpRequestError`` with the status to answer (400, or 501/505),
  never as an h11 exception.  It refuses:

  - a request head (request line and header lines) over ``MAX_HEAD_BYTES``
    (64 KiB), whether or not it is complete (h11 alone bounds only an
    incomplete one), and more than ``MAX_HEADER_LINES`` header lines;
  - a bare LF or a bare CR anywhere in the head (h11 accepts LF line ends),
    and obs-fold continuation lines (h11 unfolds them);
  - both ``Content-Length`` and ``Transfer-Encoding`` (h11 lets chunked win:
    a request-smuggling ambiguity);
  - HTTP versions other than 1.0 and 1.1 (505), and a CONNECT with a body;
  - and, through h11: differing ``Content-Length`` values, transfer codings
    other than chunked (501), invalid header names and values, and invalid
    chunk sizes or chunk framing in the body.

* ``classify`` returns a ``ConnectTarget`` (``CONNECT host:port``) or a
  ``ForwardTarget`` (``http://host[:port]/path``, to be sent in origin-form).
  It refuses ``https://`` in absolute form (CONNECT is the way, so TLS stays
  end to end), other schemes, credentials in the URL, and every
  origin-form or asterisk-form request: those are aimed at the proxy
  itself, which is how a web page would drive it by DNS rebinding.

* ``upstream_request`` builds the request the destination gets: origin-form
  target, ``Host`` from the URL, the body framing h11 read, and headers
  scrubbed by ``hopchain.scrub``.  ``response_headers`` does the hop-by-hop
  part for responses, ``status_for_end`` maps an exit's END reason to a
  status.

This module does no I/O, keeps no timers and never resolves a name.
"""

import ipaddress
import re
from dataclasses import dataclass
from typing import Final

import h11

from hopchain.errors import HttpRequestError
from hopchain.messages import EndReason
from hopchain.scrub import Header, ScrubOptions, scrub_request_headers, strip_hop_by_hop

MAX_HEAD_BYTES: Final = 64 * 1024
MAX_HEADER_LINES: Final = 256
MAX_HOST_LENGTH: Final = 253

ReaderEvent = h11.Event | type[h11.NEED_DATA] | type[h11.PAUSED]
"""What ``RequestReader.next_event`` returns (as ``h11.Connection.next_event``)."""

_HEAD_END: Final = re.compile(rb"\n\r?\n")  # where h11 ends a head, too
_HOST_NAME: Final = re.compile(r"[A-Za-z0-9._-]+")
_REPR_START: Final = re.compile(r": (?:b|bytearray\(b)['\"]")

_END_STATUS: Final = {
    EndReason.EXIT_POLICY: (403, "the exit's policy refuses this destination"),
    EndReason.TIMEOUT: (504, "the destination did not answer the exit in time"),
    EndReason.RESOLVE_FAILED: (502, "the exit could not resolve the host name"),
    EndReason.CONNECT_REFUSED: (502, "the destination refused the connection"),
    EndReason.HOST_UNREACHABLE: (502, "the destination host is unreachable"),
    EndReason.NET_UNREACHABLE: (502, "the destination network is unreachable"),
}


@dataclass(frozen=True, slots=True)
class ConnectTarget:
    """A CONNECT tunnel to host:port (host without IPv6 brackets)."""

    host: str
    port: int


@dataclass(frozen=True, slots=True)
class ForwardTarget:
    """A plain-HTTP request to forward: where, and its origin-form target."""

    host: str
    port: int
    path: str

    @property
    def authority(self) -> str:
        """The ``Host`` header value: host, bracketed if IPv6, and a non-80 port."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == 80 else f"{host}:{self.port}"


def is_loopback_host(host: str) -> bool:
    """Whether a listen address keeps a port on this machine only."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def status_for_end(reason: int) -> tuple[int, str]:
    """The status and a short text for a stream the exit refused or lost."""
    try:
        return _END_STATUS[EndReason(reason)]
    except (ValueError, KeyError):
        return 502, "the circuit or the exit failed"


def _safe_message(exc: h11.ProtocolError) -> str:
    """h11's message without the bytes it quotes (they may name a destination)."""
    return _REPR_START.split(str(exc), 1)[0]


def check_head(head: bytes | bytearray) -> None:
    """Refuse a complete request head (up to its blank line) that h11 would take.

    Raises:
        HttpRequestError: too large, too many lines, bare CR or LF, obs-fold.
    """
    if len(head) > MAX_HEAD_BYTES:
        raise HttpRequestError(f"request head over {MAX_HEAD_BYTES} bytes")
    lines = head.count(b"\r\n")
    if head.count(b"\n") != lines:
        raise HttpRequestError("bare LF in the request head (lines end in CRLF)")
    if head.count(b"\r") != lines:
        raise HttpRequestError("bare CR in the request head")
    if b"\r\n " in head or b"\r\n\t" in head:
        raise HttpRequestError("obsolete line folding in the request head")
    if lines - 2 > MAX_HEADER_LINES:
        raise HttpRequestError(f"more than {MAX_HEADER_LINES} header lines")


def check_request(request: h11.Request) -> None:
    """Refuse what h11 accepts in a parsed request.

    Raises:
        HttpRequestError: unsupported version, ambiguous framing, CONNECT body.
    """
    if request.http_version not in (b"1.0", b"1.1"):
        raise HttpRequestError("only HTTP/1.0 and HTTP/1.1 are served", 505)
    names = {name for name, _ in request.headers}
    if b"content-length" in names and b"transfer-encoding" in names:
        raise HttpRequestError("both Content-Length and Transfer-Encoding")
    if request.method == b"CONNECT" and has_body(request):
        raise HttpRequestError("a CONNECT request has no body")


def has_body(request: h11.Request) -> bool:
    """Whether the request announces a body (chunked, or a length above 0)."""
    for name, value in request.headers:
        if name == b"transfer-encoding":
            return True
        if name == b"content-length" and int(value) > 0:
            return True
    return False


class RequestReader:
    """An h11 server connection that also applies this module's checks.

    Use it as h11: ``receive_data`` (b"" at end of input), then
    ``next_event`` until ``h11.NEED_DATA``; ``conn`` is the h11 connection,
    for sending the responses; ``start_next_cycle`` after a response.
    """

    def __init__(self) -> None:
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        self._head = bytearray()  # the head being received, until checked
        self._scanned = 0
        self._head_checked = False

    @property
    def head_started(self) -> bool:
        """Whether bytes of a request head arrived that did not make a request."""
        return not self._head_checked and bool(self._head)

    def receive_data(self, data: bytes) -> None:
        """Bytes from the app (b"" once it closed its side)."""
        self.conn.receive_data(data)
        if not self._head_checked:
            self._head += data

    def next_event(self) -> ReaderEvent:
        """The next h11 event, after this module's checks.

        Raises:
            HttpRequestError: the request is refused (see the module docstring).
        """
        if not self._head_checked:
            self._check_head_so_far()
        try:
            event = self.conn.next_event()
        except h11.RemoteProtocolError as exc:
            status = 501 if exc.error_status_hint == 501 else 400
            raise HttpRequestError(_safe_message(exc), status) from exc
        if isinstance(event, h11.Request):
            self._head_checked = True
            self._head = bytearray()
            check_request(event)
        return event

    def _check_head_so_far(self) -> None:
        head = self._head
        end = _HEAD_END.search(head, max(0, self._scanned - 2))
        self._scanned = len(head)
        if end is not None:
            check_head(head[: end.end()])
        elif len(head) > MAX_HEAD_BYTES:
            raise HttpRequestError(f"request head over {MAX_HEAD_BYTES} bytes")

    def start_next_cycle(self) -> bool:
        """Get ready for the next request; False if the connection must close."""
        if self.conn.our_state is not h11.DONE or self.conn.their_state is not h11.DONE:
            return False
        self.conn.start_next_cycle()
        self._head = bytearray(self.conn.trailing_data[0])
        self._scanned = 0
        self._head_checked = False
        return True


def _parse_authority(text: str, default_port: int | None) -> tuple[str, int]:
    if "@" in text:
        raise HttpRequestError("credentials in the request target are refused")
    if text.startswith("["):
        close = text.find("]")
        host, rest = text[1:close], text[close + 1 :]
        try:
            if close < 0 or "%" in host:
                raise ValueError("no closing bracket, or a zone id")
            ipaddress.IPv6Address(host)
        except ValueError:
            raise HttpRequestError("bad IPv6 address in the request target") from None
    else:
        host, colon, port_text = text.partition(":")
        rest = colon + port_text
        if not _HOST_NAME.fullmatch(host) or len(host) > MAX_HOST_LENGTH:
            raise HttpRequestError("bad host in the request target")
    if not rest:
        if default_port is None:
            raise HttpRequestError("CONNECT needs host:port")
        return host, default_port
    port_text = rest[1:]
    if rest[0] != ":" or not port_text.isdigit() or len(port_text) > 5:
        raise HttpRequestError("bad port in the request target")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise HttpRequestError("bad port in the request target")
    return host, port


def classify(request: h11.Request) -> ConnectTarget | ForwardTarget:
    """Where a request goes.

    Raises:
        HttpRequestError: not a CONNECT and not an absolute ``http://`` URL.
    """
    # h11 guarantees visible ASCII in the target.
    target = request.target.decode("ascii")
    if request.method == b"CONNECT":
        return ConnectTarget(*_parse_authority(target, None))
    if target.startswith("/") or target == "*":
        raise HttpRequestError(
            "this is an HTTP proxy, not a web server: requests must name an "
            "absolute http:// URL (requests aimed at the proxy itself are refused)"
        )
    scheme, sep, rest = target.partition("://")
    scheme = scheme.lower()
    if not sep:
        raise HttpRequestError("the request target must be an absolute http:// URL")
    if scheme == "https":
        raise HttpRequestError(
            "https:// URLs go through CONNECT (use this port as your HTTPS proxy "
            "too); TLS then stays end to end"
        )
    if scheme != "http":
        raise HttpRequestError("only http:// URLs are forwarded")
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    host, port = _parse_authority(rest[:end], 80)
    path = rest[end:].partition("#")[0]
    if not path.startswith("/"):
        path = "/" + path
    return ForwardTarget(host, port, path)


def upstream_request(
    request: h11.Request, target: ForwardTarget, options: ScrubOptions
) -> tuple[h11.Request, list[str]]:
    """The request to send to the destination, and the header names removed.

    The target is origin-form and ``Host`` comes from the URL (RFC 9112
    3.2.2); the body keeps the framing the app used (chunked or a length),
    which h11 then writes afresh; every other header is scrubbed.
    """
    framing: list[Header] = []
    others: list[Header] = []
    for raw_name, value in request.headers.raw_items():
        name = raw_name.lower()
        if name == b"transfer-encoding":
            framing = [(b"Transfer-Encoding", b"chunked")]
        elif name == b"content-length":
            framing = framing or [(b"Content-Length", value)]
        elif name != b"host":
            others.append((raw_name, value))
    scrubbed = scrub_request_headers(
        others, options=options, origin=("http", target.host, target.port)
    )
    headers = [(b"Host", target.authority.encode()), *scrubbed.headers, *framing]
    upstream = h11.Request(
        method=request.method, target=target.path.encode(), headers=headers
    )
    return upstream, scrubbed.removed


def response_headers(
    response: h11.Response | h11.InformationalResponse,
) -> list[Header]:
    """A destination's response headers as relayed to the app.

    Hop-by-hop headers go (h11 writes the framing for the app's connection);
    a ``Content-Length`` next to ``Transfer-Encoding`` goes too.
    """
    raw = response.headers.raw_items()
    chunked = any(name.lower() == b"transfer-encoding" for name, _ in raw)
    kept = strip_hop_by_hop(raw).headers
    if chunked:
        kept = [(n, v) for n, v in kept if n.lower() != b"content-length"]
    return kept
