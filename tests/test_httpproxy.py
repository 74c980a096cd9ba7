"""Unit and property tests for hopchain.httpproxy (strict reading, routing)."""

import itertools

import h11
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hopchain.errors import HttpRequestError
from hopchain.exitpolicy import is_ip_literal
from hopchain.httpproxy import (
    MAX_HEAD_BYTES,
    MAX_HEADER_LINES,
    ConnectTarget,
    ForwardTarget,
    RequestReader,
    check_head,
    classify,
    has_body,
    is_loopback_host,
    response_headers,
    status_for_end,
    upstream_request,
)
from hopchain.messages import EndReason
from hopchain.scrub import ScrubOptions

GET = b"GET http://example.com/a?b=1 HTTP/1.1\r\nHost: example.com\r\n\r\n"
POST_CHUNKED = (
    b"POST http://example.com/up HTTP/1.1\r\nHost: example.com\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
)


def events(data: bytes, *, eof: bool = False) -> list[object]:
    """Feed ``data`` whole and drain the reader (classifying requests)."""
    reader = RequestReader()
    reader.receive_data(data)
    if eof:
        reader.receive_data(b"")
    return drain(reader)


def drain(reader: RequestReader) -> list[object]:
    out: list[object] = []
    while True:
        event = reader.next_event()
        if event is h11.NEED_DATA or event is h11.PAUSED:
            out.append(event)
            return out
        if isinstance(event, h11.Request):
            out.append(classify(event))
        elif isinstance(event, h11.Data):
            out.append(bytes(event.data))
        else:
            out.append(type(event))
            if isinstance(event, h11.ConnectionClosed):
                return out


def refused(data: bytes, status: int = 400) -> str:
    with pytest.raises(HttpRequestError) as info:
        events(data, eof=True)
    assert info.value.status == status
    return str(info.value)


# --- what the reader accepts -------------------------------------------------


def test_absolute_form_get() -> None:
    assert events(GET) == [
        ForwardTarget("example.com", 80, "/a?b=1"),
        h11.EndOfMessage,
        h11.NEED_DATA,
    ]


def test_chunked_body_and_pipelined_next_request() -> None:
    reader = RequestReader()
    reader.receive_data(POST_CHUNKED + GET)
    assert drain(reader) == [
        ForwardTarget("example.com", 80, "/up"),
        b"hello",
        h11.EndOfMessage,
        h11.PAUSED,
    ]
    assert not reader.start_next_cycle()  # no response was sent yet
    reader.conn.send(h11.Response(status_code=204, headers=[]))
    reader.conn.send(h11.EndOfMessage())
    assert reader.start_next_cycle()
    assert drain(reader)[0] == ForwardTarget("example.com", 80, "/a?b=1")


def test_byte_by_byte_gives_the_same_events() -> None:
    reader = RequestReader()
    seen: list[object] = []
    for byte in POST_CHUNKED:
        reader.receive_data(bytes([byte]))
        seen += [e for e in drain(reader) if e is not h11.NEED_DATA]
    assert seen[0] == ForwardTarget("example.com", 80, "/up")
    assert b"".join(e for e in seen if isinstance(e, bytes)) == b"hello"
    assert seen[-1] == h11.EndOfMessage


def test_connect_leaves_early_bytes_for_the_tunnel() -> None:
    reader = RequestReader()
    reader.receive_data(b"CONNECT [::1]:443 HTTP/1.1\r\nHost: x\r\n\r\n\x16\x03\x01")
    assert drain(reader) == [ConnectTarget("::1", 443), h11.EndOfMessage, h11.PAUSED]
    reader.conn.send(h11.Response(status_code=200, headers=[]))
    assert reader.conn.our_state is h11.SWITCHED_PROTOCOL
    assert reader.conn.trailing_data[0] == b"\x16\x03\x01"


def test_head_just_under_the_limit_is_accepted() -> None:
    head = b"GET http://e.com/ HTTP/1.1\r\nHost: e\r\nX-Pad: "
    pad = MAX_HEAD_BYTES - len(head) - 4
    assert events(head + b"a" * pad + b"\r\n\r\n")[0] == ForwardTarget("e.com", 80, "/")


def test_same_content_length_twice_is_one_length() -> None:
    data = (
        b"POST http://e.com/ HTTP/1.1\r\nHost: e\r\nContent-Length: 2\r\n"
        b"Content-Length: 2\r\n\r\nok"
    )
    assert events(data)[1] == b"ok"


def test_head_started_tracks_a_partial_head() -> None:
    reader = RequestReader()
    assert not reader.head_started
    reader.receive_data(b"GET http://e.com/ HT")
    assert reader.next_event() is h11.NEED_DATA
    assert reader.head_started


def test_app_closing_without_a_request() -> None:
    assert events(b"", eof=True) == [h11.ConnectionClosed]


# --- what it refuses ---------------------------------------------------------

MALFORMED = {
    "cl-and-te": (
        b"POST http://e.com/ HTTP/1.1\r\nHost: e\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "both Content-Length and Transfer-Encoding",
    ),
    "te-and-cl": (
        b"POST http://e.com/ HTTP/1.1\r\nHost: e\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Length: 5\r\n\r\n0\r\n\r\n",
        "both Content-Length and Transfer-Encoding",
    ),
    "differing-cl": (
        b"POST http://e.com/ HTTP/1.1\r\nHost: e\r\nContent-Length: 5\r\n"
        b"Content-Length: 6\r\n\r\nhello!",
        "conflicting Content-Length",
    ),
    "differing-cl-one-line": (
        b"POST http://e.com/ HTTP/1.1\r\nHost: e\r\nContent-Length: 5, 6\r\n\r\n",
        "conflicting Content-Length",
    ),
    "obs-fold-space": (
        b"GET http://e.com/ HTTP/1.1\r\nHost: e\r\nX-A: 1\r\n 2\r\n\r\n",
        "obsolete line folding",
    ),
    "obs-fold-tab": (
        b"GET http://e.com/ HTTP/1.1\r\nHost: e\r\nX-A: 1\r\n\t2\r\n\r\n",
        "obsolete line folding",
    ),
    "bare-lf-line-end": (b"GET http://e.com/ HTTP/1.1\nHost: e\r\n\r\n", "bare LF"),
    "bare-lf-everywhere": (b"GET http://e.com/ HTTP/1.1\nHost: e\n\n", "bare LF"),
    "bare-lf-blank-line": (b"GET http://e.com/ HTTP/1.1\r\nHost: e\r\n\n", "bare LF"),
    "bare-cr": (b"GET http://e.com/ HTTP/1.1\r\nHost: e\rX: y\r\n\r\n", "bare CR"),
    "long-request-line": (
        b"GET http://e.com/" + b"a" * MAX_HEAD_BYTES + b" HTTP/1.1\r\n\r\n",
        "request head over",
    ),
    "long-incomplete-head": (b"GET http://e.com/" + b"a" * 70000, "head over"),
    "many-header-lines": (
        b"GET http://e.com/ HTTP/1.1\r\nHost: e\r\n"
        + b"X: y\r\n" * (MAX_HEADER_LINES + 1)
        + b"\r\n",
        "header lines",
    ),
    "bad-chunk-size": (
        b"POST http://e.com/ HTTP/1.1\r\nHost: e\r\nTransfer-Encoding: chunked\r\n"
        b"\r\nzz\r\nhello\r\n0\r\n\r\n",
        "chunk header",
    ),
    "negative-chunk-size": (
        b"POST http://e.com/ HTTP/1.1\r\nHost: e\r\nTransfer-Encoding: chunked\r\n"
        b"\r\n-5\r\nhello\r\n0\r\n\r\n",
        "chunk header",
    ),
    "chunk-size-with-0x": (
        b"POST http://e.com/ HTTP/1.1\r\nHost: e\r\nTransfer-Encoding: chunked\r\n"
        b"\r\n0x5\r\nhello\r\n0\r\n\r\n",
        "chunk header",
    ),
    "too-many-chunk-digits": (
        b"POST http://e.com/ HTTP/1.1\r\nHost: e\r\nTransfer-Encoding: chunked\r\n"
        b"\r\n" + b"f" * 21 + b"\r\nhello\r\n0\r\n\r\n",
        "chunk header",
    ),
    "chunk-data-too-long": (
        b"POST http://e.com/ HTTP/1.1\r\nHost: e\r\nTransfer-Encoding: chunked\r\n"
        b"\r\n2\r\nhello\r\n0\r\n\r\n",
        "chunk",
    ),
    "cut-off-body": (
        b"POST http://e.com/ HTTP/1.1\r\nHost: e\r\nContent-Length: 10\r\n\r\nabc",
        "peer closed connection",
    ),
    "missing-host": (b"GET http://e.com/ HTTP/1.1\r\n\r\n", "Host"),
    "space-before-colon": (
        b"GET http://e.com/ HTTP/1.1\r\nHost : e\r\n\r\n",
        "illegal header line",
    ),
    "nul-in-value": (
        b"GET http://e.com/ HTTP/1.1\r\nHost: e\r\nX: a\x00b\r\n\r\n",
        "illegal header line",
    ),
    "garbage": (b"\x16\x03\x01\x02\x00\r\n\r\n", "request line"),
    "connect-with-body": (
        b"CONNECT e.com:443 HTTP/1.1\r\nHost: e\r\nContent-Length: 3\r\n\r\nabc",
        "CONNECT request has no body",
    ),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_request_is_refused_with_400(name: str) -> None:
    data, message = MALFORMED[name]
    assert message in refused(data)


def test_refusal_messages_never_quote_the_request() -> None:
    message = refused(b"GET http://secret.example/ HTTP/1.1\r\nBad Header\r\n\r\n")
    assert "secret" not in message
    message = refused(b"GET http://secret.example/\x01 HTTP/1.1\r\n\r\n")
    assert "secret" not in message


def test_unsupported_transfer_coding_is_501() -> None:
    refused(
        b"POST http://e.com/ HTTP/1.1\r\nHost: e\r\nTransfer-Encoding: gzip\r\n\r\n",
        501,
    )


def test_other_http_versions_are_505() -> None:
    refused(b"GET http://e.com/ HTTP/2.0\r\nHost: e\r\n\r\n", 505)
    refused(b"GET http://e.com/ HTTP/0.9\r\nHost: e\r\n\r\n", 505)


def test_pipelined_second_request_is_checked_too() -> None:
    reader = RequestReader()
    reader.receive_data(GET + b"GET http://e.com/ HTTP/1.1\nHost: e\n\n")
    drain(reader)
    reader.conn.send(h11.Response(status_code=204, headers=[]))
    reader.conn.send(h11.EndOfMessage())
    assert reader.start_next_cycle()
    with pytest.raises(HttpRequestError, match="bare LF"):
        drain(reader)


def test_check_head_counts_lines() -> None:
    head = b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * MAX_HEADER_LINES + b"\r\n"
    check_head(head)
    with pytest.raises(HttpRequestError):
        check_head(head[:-2] + b"X: y\r\n\r\n")


# --- classify ----------------------------------------------------------------


def request(target: bytes, method: bytes = b"GET") -> h11.Request:
    return h11.Request(method=method, target=target, headers=[(b"Host", b"h")])


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        (b"http://example.com", ForwardTarget("example.com", 80, "/")),
        (b"HTTP://Example.com:8080/p?q", ForwardTarget("Example.com", 8080, "/p?q")),
        (b"http://e.com?q=1", ForwardTarget("e.com", 80, "/?q=1")),
        (b"http://e.com/p#fragment", ForwardTarget("e.com", 80, "/p")),
        (b"http://127.0.0.1:81/", ForwardTarget("127.0.0.1", 81, "/")),
        (b"http://[::1]:8000/x", ForwardTarget("::1", 8000, "/x")),
        (b"http://[2001:db8::1]/", ForwardTarget("2001:db8::1", 80, "/")),
    ],
)
def test_classify_absolute_form(target: bytes, expected: ForwardTarget) -> None:
    assert classify(request(target)) == expected


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        (b"example.com:443", ConnectTarget("example.com", 443)),
        (b"127.0.0.1:22", ConnectTarget("127.0.0.1", 22)),
        (b"[::1]:443", ConnectTarget("::1", 443)),
    ],
)
def test_classify_connect(target: bytes, expected: ConnectTarget) -> None:
    assert classify(request(target, b"CONNECT")) == expected


@pytest.mark.parametrize(
    ("target", "method", "message"),
    [
        (b"https://example.com/", b"GET", "CONNECT"),
        (b"/index.html", b"GET", "aimed at the proxy itself"),
        (b"/", b"POST", "aimed at the proxy itself"),
        (b"*", b"OPTIONS", "aimed at the proxy itself"),
        (b"ftp://example.com/", b"GET", "only http://"),
        (b"example.com/path", b"GET", "absolute http:// URL"),
        (b"http://user:pw@example.com/", b"GET", "credentials"),
        (b"http:///path", b"GET", "bad host"),
        (b"http://exa%6dple.com/", b"GET", "bad host"),
        (b"http://e.com:0/", b"GET", "bad port"),
        (b"http://e.com:65536/", b"GET", "bad port"),
        (b"http://e.com:80a/", b"GET", "bad port"),
        (b"http://e.com:/", b"GET", "bad port"),
        (b"http://[::1/", b"GET", "IPv6"),
        (b"http://[fe80::1%25eth0]/", b"GET", "IPv6"),
        (b"http://[example.com]/", b"GET", "IPv6"),
        (b"http://::1/", b"GET", "bad"),
        (b"http://" + b"a" * 254 + b"/", b"GET", "bad host"),
        (b"example.com", b"CONNECT", "host:port"),
        (b"http://example.com:443/", b"CONNECT", "bad"),
        (b"example.com:99999", b"CONNECT", "bad port"),
    ],
)
def test_classify_refuses(target: bytes, method: bytes, message: str) -> None:
    with pytest.raises(HttpRequestError, match=message) as info:
        classify(request(target, method))
    assert info.value.status == 400


# --- the upstream request and the relayed response ---------------------------


def test_upstream_request_is_origin_form_with_host_from_the_url() -> None:
    app = h11.Request(
        method=b"POST",
        target=b"http://example.com:8080/p?q=1",
        headers=[
            (b"Host", b"evil.example"),
            (b"Proxy-Connection", b"keep-alive"),
            (b"X-Forwarded-For", b"127.0.0.1"),
            (b"Accept", b"*/*"),
            (b"Content-Length", b"3"),
        ],
    )
    target = classify(app)
    assert isinstance(target, ForwardTarget)
    upstream, removed = upstream_request(app, target, ScrubOptions())
    assert upstream.target == b"/p?q=1"
    assert upstream.method == b"POST"
    assert upstream.headers.raw_items() == [
        (b"Host", b"example.com:8080"),
        (b"Accept", b"*/*"),
        (b"Content-Length", b"3"),
    ]
    assert removed == ["proxy-connection", "x-forwarded-for"]


def test_upstream_request_keeps_chunked_framing_and_brackets_ipv6() -> None:
    app = h11.Request(
        method=b"PUT",
        target=b"http://[::1]/",
        headers=[(b"Host", b"x"), (b"Transfer-Encoding", b"chunked")],
    )
    target = classify(app)
    assert isinstance(target, ForwardTarget)
    upstream, removed = upstream_request(app, target, ScrubOptions())
    assert upstream.headers.raw_items() == [
        (b"Host", b"[::1]"),
        (b"Transfer-Encoding", b"chunked"),
    ]
    assert removed == []


def test_has_body() -> None:
    assert not has_body(request(b"http://e.com/"))
    assert has_body(
        h11.Request(
            method="POST",
            target="/",
            headers=[("Host", "h"), ("Transfer-Encoding", "chunked")],
        )
    )
    zero = [("Host", "h"), ("Content-Length", "0")]
    assert not has_body(h11.Request(method="POST", target="/", headers=zero))


def test_response_headers_drop_hop_by_hop_and_a_length_beside_chunked() -> None:
    response = h11.Response(
        status_code=200,
        headers=[
            (b"Transfer-Encoding", b"chunked"),
            (b"Content-Length", b"10"),
            (b"Connection", b"keep-alive, X-Hop"),
            (b"X-Hop", b"1"),
            (b"Content-Type", b"text/plain"),
        ],
    )
    assert response_headers(response) == [(b"Content-Type", b"text/plain")]
    plain = h11.Response(status_code=200, headers=[(b"Content-Length", b"10")])
    assert response_headers(plain) == [(b"Content-Length", b"10")]


@pytest.mark.parametrize(
    ("reason", "status"),
    [
        (EndReason.EXIT_POLICY, 403),
        (EndReason.TIMEOUT, 504),
        (EndReason.RESOLVE_FAILED, 502),
        (EndReason.CONNECT_REFUSED, 502),
        (EndReason.HOST_UNREACHABLE, 502),
        (EndReason.NET_UNREACHABLE, 502),
        (EndReason.DESTROYED, 502),
        (EndReason.MISC, 502),
        (250, 502),
    ],
)
def test_status_for_end(reason: int, status: int) -> None:
    assert status_for_end(reason)[0] == status


def test_ip_and_loopback_helpers() -> None:
    assert is_ip_literal("127.0.0.1")
    assert is_ip_literal("::1")
    assert not is_ip_literal("example.com")
    assert not is_ip_literal("")
    assert is_loopback_host("127.0.0.1")
    assert is_loopback_host("127.0.0.2")
    assert is_loopback_host("::1")
    assert is_loopback_host("localhost")
    assert not is_loopback_host("0.0.0.0")
    assert not is_loopback_host("192.168.1.10")
    assert not is_loopback_host("my-host")


# --- properties --------------------------------------------------------------

HEAD_PARTS = [
    b"GET ",
    b"POST ",
    b"CONNECT ",
    b"http://e.com/",
    b"https://e.com/",
    b"e.com:443",
    b"/",
    b" HTTP/1.1",
    b" HTTP/1.0",
    b"\r\n",
    b"\n",
    b"\r",
    b" ",
    b"\t",
    b"Host: e\r\n",
    b"Content-Length: 5\r\n",
    b"Content-Length: 99999999999999999999\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"Connection: close\r\n",
    b"Expect: 100-continue\r\n",
    b"5\r\nhello\r\n",
    b"0\r\n\r\n",
    b"zz\r\n",
    b"\x00",
    b":",
]


def _feed_and_drain(data: bytes, splits: list[int]) -> None:
    reader = RequestReader()
    cuts = sorted({min(s, len(data)) for s in splits} | {0, len(data)})
    for start, end in itertools.pairwise(cuts):
        reader.receive_data(data[start:end])
        while True:
            event = reader.next_event()
            if event is h11.NEED_DATA or event is h11.PAUSED:
                break
            if isinstance(event, h11.Request):
                classify(event)
            if isinstance(event, h11.ConnectionClosed):
                return
    reader.receive_data(b"")
    while True:
        event = reader.next_event()
        if event is h11.NEED_DATA or event is h11.PAUSED:
            return
        if isinstance(event, h11.Request):
            classify(event)
        if isinstance(event, h11.ConnectionClosed):
            return


@given(st.binary(max_size=2000), st.lists(st.integers(0, 2000), max_size=5))
def test_prop_arbitrary_bytes_only_raise_http_request_error(
    data: bytes, splits: list[int]
) -> None:
    try:
        _feed_and_drain(data, splits)
    except HttpRequestError as exc:
        status = exc.status
    else:
        status = 400
    assert status in (400, 501, 505)


@given(
    st.lists(st.sampled_from(HEAD_PARTS), max_size=40),
    st.lists(st.integers(0, 400), max_size=5),
)
def test_prop_request_like_bytes_only_raise_http_request_error(
    parts: list[bytes], splits: list[int]
) -> None:
    try:
        _feed_and_drain(b"".join(parts), splits)
    except HttpRequestError as exc:
        status = exc.status
    else:
        status = 400
    assert status in (400, 501, 505)


@given(st.lists(st.integers(1, len(POST_CHUNKED + GET) - 1), max_size=6))
def test_prop_any_split_gives_the_same_events(splits: list[int]) -> None:
    whole = RequestReader()
    whole.receive_data(POST_CHUNKED)
    expected = [e for e in drain(whole) if e is not h11.NEED_DATA]
    reader = RequestReader()
    seen: list[object] = []
    cuts = sorted({0, len(POST_CHUNKED), *(s % len(POST_CHUNKED) for s in splits)})
    for start, end in itertools.pairwise(cuts):
        reader.receive_data(POST_CHUNKED[start:end])
        seen += [e for e in drain(reader) if e is not h11.NEED_DATA]
    # Data may arrive in more pieces; the rest is identical.
    assert [e for e in seen if not isinstance(e, bytes)] == [
        e for e in expected if not isinstance(e, bytes)
    ]
    assert b"".join(e for e in seen if isinstance(e, bytes)) == b"hello"
