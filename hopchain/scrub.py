"""The one list of identifying HTTP headers, and the function that strips them.

A plain ``http://`` request that goes through the HTTP proxy port leaves the
client without the headers that tell the destination who or where the app
is, or that only concern the hop between the app and the proxy:

* identifying: ``Forwarded``, every ``X-Forwarded-*`` (and ``X-Forwarded``),
  ``Via``, ``X-Real-IP``, ``Client-IP``, ``True-Client-IP``,
  ``CF-Connecting-IP``, ``X-Client-IP``, ``X-Cluster-Client-IP`` and their
  relatives (``IDENTIFYING``), ``From``, ``Proxy-Authorization`` and
  ``Proxy-Connection``;
* hop-by-hop (RFC 9110 section 7.6.1): ``Connection``, ``Keep-Alive``,
  ``TE``, ``Trailer``, ``Upgrade``, ``Transfer-Encoding``, and every header
  that ``Connection`` names.

hopchain never adds ``Via`` (or any header that marks the request as
proxied).  With ``ScrubOptions.normalise_identity`` it also replaces
``User-Agent`` with one fixed, common value (``COMMON_USER_AGENT``) and drops
a ``Referer`` whose origin differs from the request's.  Names compare
case-insensitively; the headers that stay keep their order and spelling.

This module does not parse HTTP (h11 does), does not set ``Host`` or the body
framing headers (``hopchain.httpproxy`` rebuilds those), and does not touch
cookies, bodies or anything inside a CONNECT tunnel (HTTPS stays end to end).
"""

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

Header = tuple[bytes, bytes]

IDENTIFYING: Final = frozenset(
    {
        "forwarded",
        "via",
        "x-real-ip",
        "client-ip",
        "true-client-ip",
        "cf-connecting-ip",
        "x-client-ip",
        "x-cluster-client-ip",
        "fastly-client-ip",
        "x-originating-ip",
        "x-remote-ip",
        "x-remote-addr",
        "x-proxyuser-ip",
        "wl-proxy-client-ip",
        "proxy-client-ip",
        "from",
        "proxy-authorization",
        "proxy-connection",
    }
)
"""Header names that identify the app, its user or its network."""

IDENTIFYING_PREFIXES: Final = ("x-forwarded",)
"""Every header whose name starts with one of these is identifying."""

HOP_BY_HOP: Final = frozenset(
    {
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
    }
)
"""Headers that concern one connection only (RFC 9110 7.6.1, RFC 2616 13.5.1)."""

COMMON_USER_AGENT: Final = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:128.0) Gecko/20100101 Firefox/128.0"
)
"""The User-Agent sent with ``normalise_identity`` (Tor Browser's choice: one
common desktop Firefox ESR value for every user)."""

_DEFAULT_PORTS: Final = {"http": 80, "https": 443}


@dataclass(frozen=True, slots=True)
class ScrubOptions:
    """What to change in a request besides the fixed list.

    Attributes:
        normalise_identity: replace ``User-Agent`` with ``COMMON_USER_AGENT``
            and drop a cross-origin ``Referer``.
        extra_headers: more header names (lowercase) to strip.
    """

    normalise_identity: bool = False
    extra_headers: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Scrubbed:
    """The headers to send, and the lowercase names removed or replaced.

    ``removed`` has one entry per header line removed (or per ``User-Agent``
    line replaced), in order, for the client's statistics.
    """

    headers: list[Header]
    removed: list[str]


def is_identifying(name: str) -> bool:
    """Whether a header name (any case) is on the identifying list."""
    lowered = name.lower()
    return lowered in IDENTIFYING or lowered.startswith(IDENTIFYING_PREFIXES)


def connection_tokens(headers: Iterable[Header]) -> set[str]:
    """The lowercase header names listed in every ``Connection`` header."""
    tokens = set()
    for name, value in headers:
        if name.lower() == b"connection":
            for token in value.decode("latin-1").split(","):
                if token.strip():
                    tokens.add(token.strip().lower())
    return tokens


def _origin(url: str) -> tuple[str, str, int] | None:
    try:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        port = parts.port or _DEFAULT_PORTS.get(scheme)
        host = parts.hostname
    except ValueError:
        return None
    if not host or port is None:
        return None
    return scheme, host.lower(), port


def scrub_request_headers(
    headers: Iterable[Header],
    *,
    options: ScrubOptions | None = None,
    origin: tuple[str, str, int] | None = None,
) -> Scrubbed:
    """Remove identifying and hop-by-hop headers from a request.

    Args:
        headers: (name, value) pairs in the app's spelling and order.
        options: what else to change (see ``ScrubOptions``; default: nothing).
        origin: the request's (scheme, host, port), to tell a cross-origin
            ``Referer``; without it, ``normalise_identity`` drops every
            ``Referer``.

    Returns:
        The headers to send and the names removed.
    """
    options = options or ScrubOptions()
    pairs = list(headers)
    drop = connection_tokens(pairs) | options.extra_headers
    kept: list[Header] = []
    removed: list[str] = []
    same_origin = None if origin is None else (origin[0], origin[1].lower(), origin[2])
    for name, value in pairs:
        lowered = name.decode("latin-1").lower()
        if lowered in drop or lowered in HOP_BY_HOP or is_identifying(lowered):
            removed.append(lowered)
            continue
        if options.normalise_identity:
            if lowered == "user-agent":
                if value != COMMON_USER_AGENT.encode():
                    removed.append(lowered)
                kept.append((name, COMMON_USER_AGENT.encode()))
                continue
            if lowered == "referer" and (
                same_origin is None or _origin(value.decode("latin-1")) != same_origin
            ):
                removed.append(lowered)
                continue
        kept.append((name, value))
    return Scrubbed(kept, removed)


def strip_hop_by_hop(headers: Iterable[Header]) -> Scrubbed:
    """Remove the hop-by-hop headers (for responses relayed to the app)."""
    pairs = list(headers)
    drop = connection_tokens(pairs) | HOP_BY_HOP
    kept: list[Header] = []
    removed: list[str] = []
    for name, value in pairs:
        lowered = name.decode("latin-1").lower()
        if lowered in drop:
            removed.append(lowered)
        else:
            kept.append((name, value))
    return Scrubbed(kept, removed)
