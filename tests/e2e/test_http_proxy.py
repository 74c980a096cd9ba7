"""End to end: the HTTP proxy port, with real HTTP clients and an HTTP origin.

The origin here speaks HTTP/1.1 (h11) and reports what it saw: the peer
address, the request target, every header, and how many requests came on
its connection (so tests can tell a reused upstream stream).  Paths:

    /headers         200, JSON {peer, target, headers, conn, n, body_sha256}
    /then-close      200 "bye", then the origin closes (an idle keep-alive end)
    /echo            200 chunked; sends each request body chunk straight back
    /head            (HEAD) 200 with Content-Length 1234 and no body
    /nocontent       204
    /notmodified     304 with an ETag
    /hints           103 Early Hints, then 200 "hinted"
    /bytes?n=N       200, N bytes of ``pattern(N)``
"""

import contextlib
import functools
import hashlib
import http.client
import itertools
import json
import shutil
import ssl
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import h11
import pytest
import trio
import trio.testing
from hopchain.client.http import HttpOptions

from hopchain.scrub import COMMON_USER_AGENT, ScrubOptions

from .conftest import LoopbackNet, pattern, start_testnet

pytestmark = pytest.mark.trio

IDENTIFYING = {
    "Forwarded": "for=192.0.2.60;proto=http;by=203.0.113.43",
    "X-Forwarded-For": "127.0.0.1, 192.0.2.1",
    "X-Forwarded-Host": "127.0.0.1:8118",
    "X-Forwarded-Proto": "http",
    "X-Forwarded-Port": "8118",
    "Via": "1.1 127.0.0.1",
    "X-Real-IP": "127.0.0.1",
    "Client-IP": "127.0.0.1",
    "True-Client-IP": "127.0.0.1",
    "CF-Connecting-IP": "127.0.0.1",
    "X-Client-IP": "127.0.0.1",
    "X-Cluster-Client-IP": "127.0.0.1",
    "From": "user@127.0.0.1",
    "Proxy-Authorization": "Basic dXNlcjpwYXNz",
    "Proxy-Connection": "keep-alive",
    "Keep-Alive": "timeout=5",
    "X-Secret": "named in Connection",
}
_conn_ids = itertools.count(1)


class _CloseConnection(Exception):  # noqa: N818
    """The origin closes this connection now."""


@dataclass
class HttpOrigin:
    """The test origin: its port and what it saw."""

    port: int = 0
    seen: list[dict[str, object]] = field(default_factory=list)

    async def handle(self, stream: trio.abc.Stream, peer: str) -> None:
        conn = h11.Connection(h11.SERVER)
        conn_id = next(_conn_ids)
        n = 0
        while True:
            request = await _next(conn, stream)
            if not isinstance(request, h11.Request):
                return
            n += 1
            await self._answer(conn, stream, request, peer, conn_id, n)
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()

    async def _answer(
        self,
        conn: h11.Connection,
        stream: trio.abc.Stream,
        request: h11.Request,
        peer: str,
        conn_id: int,
        n: int,
    ) -> None:
        target = request.target.decode()
        headers = [(k.decode(), v.decode()) for k, v in request.headers.raw_items()]
        self.seen.append({"peer": peer, "target": target, "headers": headers})

        async def send(*events: h11.Event) -> None:
            for event in events:
                data = conn.send(event)
                if data:
                    await stream.send_all(data)

        ids = [(b"X-Conn", str(conn_id).encode()), (b"X-N", str(n).encode())]
        if target == "/echo":
            await send(h11.Response(status_code=200, headers=ids))
            while isinstance(event := await _next(conn, stream), h11.Data):
                await send(h11.Data(data=event.data))
            await send(h11.EndOfMessage())
            return
        body = b""
        while isinstance(event := await _next(conn, stream), h11.Data):
            body += event.data
        if target == "/headers":
            page = {"peer": peer, "target": target, "headers": headers}
            digest = hashlib.sha256(body).hexdigest()
            page |= {"conn": conn_id, "n": n, "body_sha256": digest}
            data = json.dumps(page).encode()
            headers_out = [*ids, (b"Content-Type", b"application/json")]
            headers_out.append((b"Content-Length", str(len(data)).encode()))
            await send(h11.Response(status_code=200, headers=headers_out))
            await send(h11.Data(data=data), h11.EndOfMessage())
        elif target == "/then-close":
            length = [(b"Content-Length", b"3")]
            await send(h11.Response(status_code=200, headers=ids + length))
            await send(h11.Data(data=b"bye"), h11.EndOfMessage())
            raise _CloseConnection
        elif target == "/head":
            length = [(b"Content-Length", b"1234")]
            await send(h11.Response(status_code=200, headers=ids + length))
            await send(h11.EndOfMessage())
        elif target == "/nocontent":
            await send(h11.Response(status_code=204, headers=ids), h11.EndOfMessage())
        elif target == "/notmodified":
            etag = [(b"ETag", b'"v1"')]
            await send(h11.Response(status_code=304, headers=ids + etag))
            await send(h11.EndOfMessage())
        elif target == "/hints":
            link = [(b"Link", b"</style.css>; rel=preload")]
            await send(h11.InformationalResponse(status_code=103, headers=link))
            length = [(b"Content-Length", b"6")]
            await send(h11.Response(status_code=200, headers=ids + length))
            await send(h11.Data(data=b"hinted"), h11.EndOfMessage())
        elif target.startswith("/bytes?n="):
            size = int(target.split("=", 1)[1])
            await send(h11.Response(status_code=200, headers=ids))  # chunked
            data = pattern(size)
            for i in range(0, size, 1 << 16):
                await send(h11.Data(data=data[i : i + (1 << 16)]))
            await send(h11.EndOfMessage())
        else:
            await send(h11.Response(status_code=404, headers=ids), h11.EndOfMessage())


async def _next(conn: h11.Connection, stream: trio.abc.Stream) -> object:
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(65536))
            continue
        return event


@dataclass
class HttpNet:
    net: LoopbackNet
    origin: HttpOrigin

    @property
    def proxy_port(self) -> int:
        return self.net.client.http_port

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.origin.port}{path}"


async def _serve_origin(
    nursery: trio.Nursery,
    origin: HttpOrigin,
    wrap: Callable[[trio.SocketStream], trio.abc.Stream] | None = None,
) -> int:
    async def handler(stream: trio.SocketStream) -> None:
        peer = stream.socket.getpeername()[0]
        wrapped = wrap(stream) if wrap is not None else stream
        async with wrapped:
            with contextlib.suppress(
                h11.ProtocolError, trio.BrokenResourceError, _CloseConnection
            ):
                await origin.handle(wrapped, peer)

    listeners = await nursery.start(
        functools.partial(trio.serve_tcp, handler, 0, host="127.0.0.1")
    )
    port: int = listeners[0].socket.getsockname()[1]
    return port


async def _start(nursery: trio.Nursery, **options: object) -> HttpNet:
    origin = HttpOrigin()
    with trio.fail_after(60):
        origin.port = await _serve_origin(nursery, origin)
        net = await start_testnet(nursery, http_port=0, **options)
    return HttpNet(net, origin)


@pytest.fixture
async def httpnet(nursery: trio.Nursery) -> HttpNet:
    return await _start(nursery)


def _get_json(net: HttpNet, path: str, headers: dict[str, str]) -> dict[str, object]:
    conn = http.client.HTTPConnection("127.0.0.1", net.proxy_port, timeout=20)
    try:
        conn.request("GET", net.url(path), headers=headers)
        response = conn.getresponse()
        assert response.status == 200
        page: dict[str, object] = json.loads(response.read())
        return page
    finally:
        conn.close()


async def test_absolute_form_get_strips_identifying_headers(httpnet: HttpNet) -> None:
    headers = dict(IDENTIFYING, Connection="keep-alive, X-Secret")
    headers["User-Agent"] = "test-agent/1.0"
    with trio.fail_after(30):
        page = await trio.to_thread.run_sync(_get_json, httpnet, "/headers", headers)
    assert page["peer"] in httpnet.net.exit_addresses
    assert page["target"] == "/headers"  # origin-form upstream
    seen = {name.lower(): value for name, value in page["headers"]}  # type: ignore[attr-defined]
    assert not {h.lower() for h in IDENTIFYING} & set(seen)
    assert "connection" not in seen
    assert seen["host"] == f"127.0.0.1:{httpnet.origin.port}"
    assert seen["user-agent"] == "test-agent/1.0"
    # Only Host names the (loopback) destination; nothing names the app.
    assert "127.0.0.1" not in json.dumps({k: v for k, v in seen.items() if k != "host"})
    stats = httpnet.net.client.stats
    assert stats.headers_stripped["x-forwarded-for"] == 1
    assert stats.headers_stripped["x-secret"] == 1
    assert stats.requests_by_ip["http"] == 1
    assert sum(stats.exits_used.values()) == 1


async def test_normalised_identity_option(nursery: trio.Nursery) -> None:
    options = HttpOptions(scrub=ScrubOptions(normalise_identity=True))
    net = await _start(nursery, http=options)
    headers = {
        "User-Agent": "rare-browser/0.1",
        "Referer": "http://elsewhere.example/page",
    }
    with trio.fail_after(30):
        page = await trio.to_thread.run_sync(_get_json, net, "/headers", headers)
        same = {"Referer": net.url("/from")}
        again = await trio.to_thread.run_sync(_get_json, net, "/headers", same)
    seen = dict(page["headers"])  # type: ignore[arg-type]
    assert seen["User-Agent"] == COMMON_USER_AGENT
    assert "Referer" not in seen
    assert dict(again["headers"])["Referer"] == net.url("/from")  # type: ignore[arg-type]


def _two_requests(net: HttpNet) -> list[dict[str, object]]:
    conn = http.client.HTTPConnection("127.0.0.1", net.proxy_port, timeout=20)
    pages = []
    try:
        for _ in range(2):
            conn.request("GET", net.url("/headers"))
            response = conn.getresponse()
            pages.append(json.loads(response.read()))
            assert response.status == 200
        assert conn.sock is not None  # still the same connection
    finally:
        conn.close()
    return pages


async def test_persistent_connections_on_both_sides(httpnet: HttpNet) -> None:
    with trio.fail_after(30):
        first, second = await trio.to_thread.run_sync(_two_requests, httpnet)
    assert first["conn"] == second["conn"]  # one upstream stream
    assert (first["n"], second["n"]) == (1, 2)


async def _h11_session(
    port: int, requests: list[tuple[h11.Request, list[bytes]]]
) -> list[tuple[list[h11.Event], bytes]]:
    """Send requests one by one on one connection; events and body of each."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    conn = h11.Connection(h11.CLIENT)
    results = []
    async with stream:
        for request, chunks in requests:
            await stream.send_all(conn.send(request) or b"")
            for chunk in chunks:
                await stream.send_all(conn.send(h11.Data(data=chunk)) or b"")
            await stream.send_all(conn.send(h11.EndOfMessage()) or b"")
            events: list[h11.Event] = []
            body = b""
            while True:
                event = await _next(conn, stream)
                assert isinstance(event, h11.Event)
                if isinstance(event, h11.Data):
                    body += event.data
                else:
                    events.append(event)
                if isinstance(event, h11.EndOfMessage):
                    break
            results.append((events, body))
            conn.start_next_cycle()
    return results


def _get(net: HttpNet, path: str, method: str = "GET") -> h11.Request:
    return h11.Request(
        method=method,
        target=net.url(path),
        headers=[("Host", f"127.0.0.1:{net.origin.port}")],
    )


def _post_then_close_then_get(net: HttpNet, body: bytes) -> list[dict[str, object]]:
    conn = http.client.HTTPConnection("127.0.0.1", net.proxy_port, timeout=30)
    pages = []
    try:
        conn.request("POST", net.url("/headers"), body=body)
        response = conn.getresponse()
        assert response.status == 200
        pages.append(json.loads(response.read()))
        conn.request("GET", net.url("/then-close"))
        response = conn.getresponse()
        assert response.read() == b"bye"
        # The origin has closed the upstream connection; the proxy notices
        # when it reuses the stream, and retries on a new one.
        conn.request("GET", net.url("/headers"))
        response = conn.getresponse()
        assert response.status == 200
        pages.append(json.loads(response.read()))
    finally:
        conn.close()
    return pages


async def test_large_body_and_a_closed_upstream_between_requests(
    httpnet: HttpNet, caplog: pytest.LogCaptureFixture
) -> None:
    body = pattern(5 * 1024 * 1024 + 7)
    caplog.set_level("DEBUG", logger="hopchain.client.http")
    with trio.fail_after(60):
        first, last = await trio.to_thread.run_sync(
            _post_then_close_then_get, httpnet, body
        )
    assert first["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert first["conn"] != last["conn"]
    assert last["n"] == 1
    assert "retrying once" in caplog.text


async def test_head_204_304_and_1xx_keep_the_framing(httpnet: HttpNet) -> None:
    requests = [
        (_get(httpnet, "/head", "HEAD"), []),
        (_get(httpnet, "/nocontent"), []),
        (_get(httpnet, "/notmodified"), []),
        (_get(httpnet, "/hints"), []),
        (_get(httpnet, "/bytes?n=300000"), []),
    ]
    with trio.fail_after(30):
        results = await _h11_session(httpnet.proxy_port, requests)
    (head, head_body), (nc, nc_body), (nm, nm_body), (hints, hinted), (_, big) = results
    assert isinstance(head[0], h11.Response)
    assert head[0].status_code == 200
    assert dict(head[0].headers)[b"content-length"] == b"1234"
    assert head_body == b""
    assert isinstance(nc[0], h11.Response)
    assert nc[0].status_code == 204
    assert nc_body == b""
    assert isinstance(nm[0], h11.Response)
    assert nm[0].status_code == 304
    assert dict(nm[0].headers)[b"etag"] == b'"v1"'
    assert nm_body == b""
    assert isinstance(hints[0], h11.InformationalResponse)
    assert hints[0].status_code == 103
    assert isinstance(hints[1], h11.Response)
    assert hinted == b"hinted"
    assert big == pattern(300000)
    # All five went over one upstream stream.
    conns = {dict(events[-2].headers)[b"x-conn"] for events, _ in results[1:]}  # type: ignore[attr-defined]
    assert len(conns) == 1


async def test_chunked_request_body_is_streamed(httpnet: HttpNet) -> None:
    """The origin echoes each chunk at once: the next one is sent only after
    the echo of the previous one came back, which deadlocks if the proxy
    waits for the whole body in either direction."""
    with trio.fail_after(30):
        stream = await trio.open_tcp_stream("127.0.0.1", httpnet.proxy_port)
        conn = h11.Connection(h11.CLIENT)
        async with stream:
            request = h11.Request(
                method="POST",
                target=httpnet.url("/echo"),
                headers=[
                    ("Host", "x"),
                    ("Transfer-Encoding", "chunked"),
                    ("X-Forwarded-For", "127.0.0.1"),
                ],
            )
            await stream.send_all(conn.send(request) or b"")
            echoed = b""
            response = None
            for i in range(5):
                chunk = f"chunk {i};".encode() * 100
                await stream.send_all(conn.send(h11.Data(data=chunk)) or b"")
                got = b""
                while len(got) < len(chunk):
                    event = await _next(conn, stream)
                    if isinstance(event, h11.Response):
                        response = event
                    elif isinstance(event, h11.Data):
                        got += event.data
                assert got == chunk
                echoed += got
            await stream.send_all(conn.send(h11.EndOfMessage()) or b"")
            assert isinstance(await _next(conn, stream), h11.EndOfMessage)
    assert response is not None
    assert response.status_code == 200
    assert len(echoed) == sum(len(f"chunk {i};") * 100 for i in range(5))
    (seen,) = httpnet.origin.seen
    names = {name.lower() for name, _ in seen["headers"]}  # type: ignore[attr-defined]
    assert "transfer-encoding" in names  # h11 frames it afresh upstream
    assert "x-forwarded-for" not in names


def _tunnel_get(net: HttpNet) -> dict[str, object]:
    conn = http.client.HTTPConnection("127.0.0.1", net.proxy_port, timeout=20)
    try:
        conn.set_tunnel("127.0.0.1", net.origin.port)
        conn.request("GET", "/headers", headers={"X-Forwarded-For": "10.0.0.1"})
        response = conn.getresponse()
        assert response.status == 200
        page: dict[str, object] = json.loads(response.read())
        return page
    finally:
        conn.close()


async def test_connect_tunnel_with_http_client(httpnet: HttpNet) -> None:
    with trio.fail_after(30):
        page = await trio.to_thread.run_sync(_tunnel_get, httpnet)
    assert page["peer"] in httpnet.net.exit_addresses
    # Inside a tunnel nothing is touched: the bytes are the app's own.
    assert ["X-Forwarded-For", "10.0.0.1"] in page["headers"]  # type: ignore[operator]
    assert httpnet.net.client.stats.requests_by_ip["http"] == 1


async def test_tls_origin_through_connect(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    trustme = pytest.importorskip("trustme", reason="trustme is not installed")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    origin = HttpOrigin()

    def wrap(stream: trio.SocketStream) -> trio.abc.Stream:
        return trio.SSLStream(stream, server_context, server_side=True)

    with trio.fail_after(60):
        origin.port = await _serve_origin(nursery, origin, wrap)
        net = await start_testnet(nursery, http_port=0)

    def fetch() -> dict[str, object]:
        conn = http.client.HTTPSConnection(
            "127.0.0.1", net.client.http_port, timeout=20, context=client_context
        )
        try:
            conn.set_tunnel("127.0.0.1", origin.port)
            conn.request("GET", "/headers")
            response = conn.getresponse()
            assert response.status == 200
            page: dict[str, object] = json.loads(response.read())
            return page
        finally:
            conn.close()

    with trio.fail_after(30):
        page = await trio.to_thread.run_sync(fetch)
    assert page["peer"] in net.exit_addresses
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    curl = shutil.which("curl")
    if curl is not None:  # curl over TLS through CONNECT, too
        with trio.fail_after(30):
            out = await _curl(
                curl,
                "--cacert",
                str(tmp_path / "ca.pem"),
                "--proxy",
                f"http://127.0.0.1:{net.client.http_port}",
                f"https://127.0.0.1:{origin.port}/headers",
            )
        assert json.loads(out)["peer"] in net.exit_addresses


async def _curl(*argv: str) -> str:
    completed = await trio.to_thread.run_sync(
        functools.partial(
            subprocess.run,
            [*argv[:1], "-sS", "--max-time", "20", "--noproxy", "", *argv[1:]],
            capture_output=True,
            text=True,
            timeout=30,
        )
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    return completed.stdout


@pytest.mark.parametrize("tunnel", [False, True], ids=["absolute-form", "connect"])
async def test_curl_through_the_http_proxy(httpnet: HttpNet, tunnel: bool) -> None:
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed (apt-get install curl)")
    argv = [curl, "--proxy", f"http://127.0.0.1:{httpnet.proxy_port}"]
    argv += ["-H", "X-Forwarded-For: 127.0.0.1", "-H", "Via: 1.1 me"]
    if tunnel:
        argv.append("--proxytunnel")
    with trio.fail_after(30):
        page = json.loads(await _curl(*argv, httpnet.url("/headers")))
    assert page["peer"] in httpnet.net.exit_addresses
    names = {name.lower() for name, _ in page["headers"]}
    if tunnel:
        assert "x-forwarded-for" in names  # untouched inside the tunnel
    else:
        assert not names & {"x-forwarded-for", "via", "proxy-connection"}


async def _raw(port: int, payload: bytes) -> bytes:
    """Send raw bytes to the proxy; what came back before it closed."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    received = b""
    async with stream:
        # The proxy may answer and close before taking everything.
        with contextlib.suppress(trio.BrokenResourceError):
            await stream.send_all(payload)
        with trio.move_on_after(10):
            try:
                while data := await stream.receive_some(65536):
                    received += data
            except trio.BrokenResourceError:
                pass
    return received


MALFORMED = {
    "cl-and-te": "POST TARGET HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n"
    "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "duplicate-cl": "POST TARGET HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n"
    "Content-Length: 6\r\n\r\nhello!",
    "obs-fold": "GET TARGET HTTP/1.1\r\nHost: h\r\nX-A: 1\r\n  continued\r\n\r\n",
    "bare-lf": "GET TARGET HTTP/1.1\nHost: h\n\n",
    "long-request-line": "GET TARGET?" + "a" * 65536 + " HTTP/1.1\r\nHost: h\r\n\r\n",
    "10000-header-lines": "GET TARGET HTTP/1.1\r\nHost: h\r\n"
    + "X-A: b\r\n" * 10000
    + "\r\n",
    "10000-short-header-lines-under-64k": "GET TARGET HTTP/1.1\r\nHost: h\r\n"
    + "X: y\r\n" * 10000
    + "\r\n",
    "bad-chunk-size": "POST TARGET HTTP/1.1\r\nHost: h\r\n"
    "Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    "https-absolute": "GET https://127.0.0.1:1/ HTTP/1.1\r\nHost: h\r\n\r\n",
    "origin-form": "GET /headers HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
}


async def test_malformed_requests_get_400_and_service_continues(
    httpnet: HttpNet,
) -> None:
    target = httpnet.url("/echo")
    with trio.fail_after(60):
        for name, head in MALFORMED.items():
            reply = await _raw(
                httpnet.proxy_port, head.replace("TARGET", target).encode()
            )
            assert reply.startswith(b"HTTP/1.1 400 "), (name, reply[:200])
            assert b"hopchain: " in reply, name
        page = await trio.to_thread.run_sync(_get_json, httpnet, "/headers", {})
    assert page["peer"] in httpnet.net.exit_addresses
    # Only the bad chunk size (found in the body) may have reached the origin,
    # as a cut-off request; all the others never left the client.
    targets = [seen["target"] for seen in httpnet.origin.seen]
    assert targets in (["/headers"], ["/echo", "/headers"])


async def test_refused_destination_maps_to_a_status(httpnet: HttpNet) -> None:
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    closed_port = listener.getsockname()[1]
    listener.close()  # nothing listens there now
    request = f"GET http://127.0.0.1:{closed_port}/ HTTP/1.1\r\nHost: h\r\n\r\n"
    connect = f"CONNECT 127.0.0.1:{closed_port} HTTP/1.1\r\nHost: h\r\n\r\n"
    with trio.fail_after(30):
        reply = await _raw(httpnet.proxy_port, request.encode())
        tunnel = await _raw(httpnet.proxy_port, connect.encode())
    assert reply.startswith(b"HTTP/1.1 502 "), reply[:200]
    assert tunnel.startswith(b"HTTP/1.1 502 "), tunnel[:200]


async def test_silent_connection_is_closed_after_the_head_timeout(
    httpnet: HttpNet, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hopchain.client.http as proxy

    monkeypatch.setattr(proxy, "HEAD_TIMEOUT", 0.5)
    request = f"GET {httpnet.url('/headers')} HTTP/1.1\r\nHost: h\r\n\r\n"
    with trio.fail_after(10):
        silent = await _raw(httpnet.proxy_port, b"")
        partial = await _raw(httpnet.proxy_port, b"GET http://127.0.0.1/ HTTP/1.1\r\n")
        # One request, then idle: closed quietly, not counted as a limit.
        idle = await _raw(httpnet.proxy_port, request.encode())
    assert silent == b""
    assert partial.startswith(b"HTTP/1.1 408 ")
    assert idle.startswith(b"HTTP/1.1 200 ")
    assert httpnet.net.client.stats.limits_hit["http request head timeout"] == 2


async def test_pipelined_requests_are_answered_in_order(httpnet: HttpNet) -> None:
    first, second = _get(httpnet, "/headers"), _get(httpnet, "/nocontent")
    encoder = h11.Connection(h11.CLIENT)
    wire = b""
    for request in (first, second):
        wire += (encoder.send(request) or b"") + (
            encoder.send(h11.EndOfMessage()) or b""
        )
        encoder.receive_data(b"HTTP/1.1 204 No Content\r\n\r\n")  # to cycle
        while encoder.next_event() is not h11.NEED_DATA:
            pass
        encoder.start_next_cycle()
    with trio.fail_after(30):
        stream = await trio.open_tcp_stream("127.0.0.1", httpnet.proxy_port)
        conn = h11.Connection(h11.CLIENT)
        statuses = []
        async with stream:
            await stream.send_all(wire)  # both at once
            for request in (first, second):
                conn.send(request)
                conn.send(h11.EndOfMessage())
                while not isinstance(
                    event := await _next(conn, stream), h11.EndOfMessage
                ):
                    if isinstance(event, h11.Response):
                        statuses.append(event.status_code)
                conn.start_next_cycle()
    assert statuses == [200, 204]


async def test_pending_connections_are_capped(nursery: trio.Nursery) -> None:
    net = await _start(nursery, http=HttpOptions(max_pending=1))
    with trio.fail_after(30):
        holder = await trio.open_tcp_stream("127.0.0.1", net.proxy_port)
        async with holder:
            await holder.send_all(b"GET http://127.0.0.1/ HTTP/1.1\r\n")  # unfinished
            # The proxy's task for it is now waiting for the rest of the head.
            await trio.testing.wait_all_tasks_blocked(cushion=0.05)
            refused = await _raw(net.proxy_port, b"GET / HTTP/1.1\r\n\r\n")
    assert refused == b""
    assert net.net.client.stats.limits_hit["http pending connections"] == 1
