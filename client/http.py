"""The local HTTP proxy listener: CONNECT tunnels and plain ``http://`` requests.

One task per app connection, h11 on both sides:

* ``CONNECT host:port`` opens a circuit stream, answers ``200 Connection
  established`` and splices bytes both ways, untouched (HTTPS stays end to
  end; the headers of the CONNECT request never leave the machine).
* ``GET http://host/path`` (any method, absolute form) goes through a circuit
  stream to host:port, in origin-form, with the headers scrubbed by
  ``hopchain.scrub`` (``hopchain.httpproxy.upstream_request``).  Bodies are
  streamed chunk by chunk in both directions while the request is in flight;
  h11 frames them on each side, including HEAD, 1xx, 204 and 304.  Both
  connections are persistent: the next request to the same host:port reuses
  the circuit stream, and a reused stream that turns out closed is retried
  once on a new one when the request had no body.

Reading a request head has a deadline (``HEAD_TIMEOUT``, slowloris), also
between requests on a kept-alive connection, and at most ``max_pending``
connections may be waiting for a request head at once.  A refused request
(``HttpRequestError``: malformed, origin-form, ``https://``) gets its status
and a short text, then the connection closes; other connections are never
affected.  Log lines never name destinations or app addresses.

Not done here: caching, HTTP/2, Upgrade (WebSocket) through absolute-form
requests (use CONNECT), trailers (dropped both ways), and a deadline on the
destination's answer (the app decides how long to wait).
"""

import contextlib
import logging
from dataclasses import dataclass, field
from typing import Final

import h11
import trio
from hopchain.client.circuits import CircuitManager, ClientCircuitHandle
from hopchain.client.stats import ClientStats
from hopchain.relay.pump import splice
from hopchain.relay.stream import CircuitStream

from hopchain.errors import (
    CircuitError,
    DirectoryError,
    HttpRequestError,
    PathSelectionError,
    StreamError,
)
from hopchain.exitpolicy import is_ip_literal
from hopchain.httpproxy import (
    MAX_HEAD_BYTES,
    ConnectTarget,
    ForwardTarget,
    RequestReader,
    classify,
    has_body,
    response_headers,
    status_for_end,
    upstream_request,
)
from hopchain.isolation import IsolationRules, isolation_key
from hopchain.safelog import log_event, sensitive
from hopchain.scrub import ScrubOptions

logger = logging.getLogger(__name__)

HEAD_TIMEOUT: Final = 30.0
APP_CHUNK: Final = 64 * 1024
LINGER_TIMEOUT: Final = 1.0
LINGER_BYTES: Final = 1024 * 1024
_BROKEN: Final = (trio.BrokenResourceError, trio.ClosedResourceError)
_REASONS: Final = {
    400: b"Bad Request",
    403: b"Forbidden",
    408: b"Request Timeout",
    501: b"Not Implemented",
    502: b"Bad Gateway",
    504: b"Gateway Timeout",
    505: b"HTTP Version Not Supported",
}


@dataclass(frozen=True, slots=True)
class HttpOptions:
    """How the HTTP proxy listener treats apps and their requests."""

    isolation: IsolationRules = field(default_factory=IsolationRules)
    scrub: ScrubOptions = field(default_factory=ScrubOptions)
    max_pending: int = 256


class _RefuseError(Exception):
    """Answer the app with this status and text, then close."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


class _AbortError(Exception):
    """Close the app connection without an answer (one was begun, or none fits)."""


class _UpstreamError(Exception):
    """The destination's side failed or sent a malformed response."""

    def __init__(self, response_started: bool) -> None:
        super().__init__("upstream lost")
        self.response_started = response_started


@dataclass
class _Upstream:
    """A circuit stream to host:port with the h11 client connection on it."""

    host: str
    port: int
    handle: ClientCircuitHandle
    stream: CircuitStream
    conn: h11.Connection

    @property
    def reusable(self) -> bool:
        return self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE


class HttpListener:
    """Serves HTTP proxy connections through a circuit manager."""

    def __init__(
        self, manager: CircuitManager, options: HttpOptions, stats: ClientStats
    ) -> None:
        self._manager = manager
        self._options = options
        self._stats = stats
        self._pending = 0

    async def handle(self, stream: trio.abc.HalfCloseableStream) -> None:
        """Serve one app connection."""
        async with stream:
            if self._pending >= self._options.max_pending:
                self._stats.limits_hit["http pending connections"] += 1
                logger.warning(
                    "refusing an HTTP connection: %d requests already pending",
                    self._pending,
                )
                return
            await _AppConnection(self, stream).run()


class _AppConnection:
    """One app connection: its h11 reader and the upstream it keeps alive."""

    def __init__(
        self, listener: HttpListener, app: trio.abc.HalfCloseableStream
    ) -> None:
        self._listener = listener
        self._manager = listener._manager
        self._options = listener._options
        self._stats = listener._stats
        self._app = app
        self._reader = RequestReader()
        self._upstream: _Upstream | None = None
        self._requests = 0

    async def run(self) -> None:
        try:
            while True:
                request = await self._read_request()
                if request is None:
                    return
                target = classify(request)
                if isinstance(target, ConnectTarget):
                    await self._close_upstream()
                    await self._tunnel(target)
                    return
                await self._forward(request, target)
                if not self._reader.start_next_cycle():
                    return
        except HttpRequestError as exc:
            logger.info("bad http request: %s", exc)
            await self._refuse(exc.status, str(exc))
        except _RefuseError as exc:
            await self._refuse(exc.status, exc.text)
        except _AbortError:
            pass
        finally:
            with trio.CancelScope(shield=True):
                await self._close_upstream()

    # --- reading requests ----------------------------------------------------

    async def _read_request(self) -> h11.Request | None:
        """The next request head; None when the app closed or went idle."""
        listener = self._listener
        listener._pending += 1
        try:
            with trio.move_on_after(HEAD_TIMEOUT):
                while True:
                    event = self._reader.next_event()
                    if event is h11.NEED_DATA:
                        self._reader.receive_data(await self._receive())
                    elif isinstance(event, h11.Request):
                        self._requests += 1
                        return event
                    else:
                        return None  # ConnectionClosed
        finally:
            listener._pending -= 1
        if self._requests and not self._reader.head_started:
            logger.debug("closing an idle kept-alive HTTP connection")
            return None
        self._stats.limits_hit["http request head timeout"] += 1
        logger.info("http request head not received within %.0f s", HEAD_TIMEOUT)
        if self._reader.head_started:
            raise _RefuseError(
                408, f"request head not received within {HEAD_TIMEOUT:.0f} s"
            )
        return None

    async def _receive(self) -> bytes:
        try:
            return bytes(await self._app.receive_some(APP_CHUNK))  # no copy of bytes
        except _BROKEN as exc:
            raise _AbortError from exc

    async def _to_app(self, data: bytes) -> None:
        try:
            await self._app.send_all(data)
        except _BROKEN as exc:
            raise _AbortError from exc

    # --- CONNECT -------------------------------------------------------------

    async def _tunnel(self, target: ConnectTarget) -> None:
        event = self._reader.next_event()  # CONNECT has no body (checked)
        if not isinstance(event, h11.EndOfMessage):
            raise _AbortError
        self._stats.request("http", by_name=not is_ip_literal(target.host))
        handle, stream = await self._open(target.host, target.port)
        try:
            reply = h11.Response(
                status_code=200, headers=[], reason=b"Connection established"
            )
            await self._to_app(_encode(self._reader.conn, reply))
            await splice(self._app, stream, self._reader.conn.trailing_data[0])
        finally:
            try:
                await stream.aclose()
            finally:
                self._manager.release(handle, stream)

    async def _open(
        self, host: str, port: int
    ) -> tuple[ClientCircuitHandle, CircuitStream]:
        log_event(logger, logging.DEBUG, "http_stream", host=sensitive(host), port=port)
        key = isolation_key(
            self._options.isolation,
            listener="http",
            host=host,
            port=port,
            username=None,
            password=None,
        )
        try:
            handle, stream = await self._manager.open_stream(host, port, key)
        except StreamError as exc:
            logger.info("stream failed: %s", exc)
            raise _RefuseError(*status_for_end(exc.reason)) from exc
        except (CircuitError, DirectoryError, PathSelectionError) as exc:
            logger.warning("no circuit for a stream: %s", exc)
            raise _RefuseError(502, "no circuit is available") from exc
        self._stats.exits_used[handle.exit_label] += 1
        return handle, stream

    # --- plain HTTP ----------------------------------------------------------

    async def _forward(self, request: h11.Request, target: ForwardTarget) -> None:
        self._stats.request("http", by_name=not is_ip_literal(target.host))
        head, removed = upstream_request(request, target, self._options.scrub)
        for name in removed:
            self._stats.headers_stripped[name] += 1
        body = has_body(request)
        if not body and not isinstance(self._reader.next_event(), h11.EndOfMessage):
            raise _AbortError  # h11 ends a body-less request at once
        current = self._upstream
        if current is not None and (current.host, current.port) != (
            target.host,
            target.port,
        ):
            await self._close_upstream()
        for _attempt in range(2):
            reused = self._upstream is not None
            upstream = self._upstream or await self._new_upstream(target)
            try:
                await self._exchange(upstream, head, body)
            except _UpstreamError as lost:
                await self._close_upstream()
                if reused and not body and not lost.response_started:
                    logger.debug("a kept-alive stream was closed; retrying once")
                    continue
                if lost.response_started:
                    raise _AbortError from lost
                raise _RefuseError(
                    502, "the destination closed the connection or answered badly"
                ) from lost
            if upstream.reusable:
                upstream.conn.start_next_cycle()
            else:
                await self._close_upstream()
            return

    async def _new_upstream(self, target: ForwardTarget) -> _Upstream:
        handle, stream = await self._open(target.host, target.port)
        conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD_BYTES)
        self._upstream = _Upstream(target.host, target.port, handle, stream, conn)
        return self._upstream

    async def _exchange(
        self, upstream: _Upstream, head: h11.Request, body: bool
    ) -> None:
        """Send one request and relay its response, bodies streamed both ways.

        Raises:
            _UpstreamError, _AbortError, HttpRequestError (a bad request body, while
            no response was begun).
        """
        up = upstream.conn
        try:
            await upstream.stream.send_all(_encode(up, head))
            if not body:
                await upstream.stream.send_all(_encode(up, h11.EndOfMessage()))
        except (*_BROKEN, h11.LocalProtocolError) as exc:
            raise _UpstreamError(response_started=False) from exc
        state = _ExchangeState()
        async with trio.open_nursery() as nursery:
            if body:
                nursery.start_soon(self._upload, upstream, state, nursery.cancel_scope)
            nursery.start_soon(self._download, upstream, state, nursery.cancel_scope)
        if isinstance(state.failure, HttpRequestError) and state.response_started:
            raise _AbortError from state.failure
        if state.failure is not None:
            raise state.failure

    async def _upload(
        self, upstream: _Upstream, state: "_ExchangeState", scope: trio.CancelScope
    ) -> None:
        """App request body -> destination, until its end (or a failure)."""
        try:
            while True:
                event = self._reader.next_event()
                if event is h11.NEED_DATA:
                    self._reader.receive_data(await self._receive())
                elif isinstance(event, h11.Data):
                    data = _encode(upstream.conn, h11.Data(data=event.data))
                    await upstream.stream.send_all(data)
                elif isinstance(event, h11.EndOfMessage):
                    await upstream.stream.send_all(
                        _encode(upstream.conn, h11.EndOfMessage())
                    )
                    return
                else:
                    raise _AbortError
        except (*_BROKEN, h11.LocalProtocolError):
            # The destination stopped reading: its answer (or its failure)
            # arrives in _download.
            return
        except (HttpRequestError, _AbortError) as exc:
            state.fail(exc)
            scope.cancel()

    async def _download(
        self, upstream: _Upstream, state: "_ExchangeState", scope: trio.CancelScope
    ) -> None:
        """Destination response -> app, until its end (or a failure)."""
        up = upstream.conn
        app = self._reader.conn
        try:
            while True:
                try:
                    event = up.next_event()
                    if event is h11.NEED_DATA:
                        up.receive_data(await upstream.stream.receive_some(APP_CHUNK))
                        continue
                except (*_BROKEN, h11.RemoteProtocolError) as exc:
                    raise _UpstreamError(state.response_started) from exc
                if isinstance(event, h11.InformationalResponse):
                    if event.status_code == 101:
                        raise _UpstreamError(state.response_started)
                    if app.their_http_version == b"1.1":
                        relayed = h11.InformationalResponse(
                            status_code=event.status_code,
                            headers=response_headers(event),
                            reason=event.reason,
                        )
                        await self._to_app(_encode(app, relayed))
                elif isinstance(event, h11.Response):
                    response = h11.Response(
                        status_code=event.status_code,
                        headers=response_headers(event),
                        reason=event.reason,
                    )
                    state.response_started = True
                    await self._to_app(_encode(app, response))
                elif isinstance(event, h11.Data):
                    await self._to_app(_encode(app, h11.Data(data=event.data)))
                elif isinstance(event, h11.EndOfMessage):
                    await self._to_app(_encode(app, h11.EndOfMessage()))
                    scope.cancel()  # an unfinished upload is abandoned
                    return
                else:
                    raise _UpstreamError(state.response_started)
        except h11.LocalProtocolError as exc:
            logger.debug("could not relay a response: %s", exc)
            state.fail(_UpstreamError(state.response_started))
            scope.cancel()
        except (_UpstreamError, _AbortError) as exc:
            state.fail(exc)
            scope.cancel()

    # --- answers and closing -------------------------------------------------

    async def _refuse(self, status: int, text: str) -> None:
        """Send an error response if none was begun, then close gracefully."""
        body = f"hopchain: {text}\n".encode()
        response = h11.Response(
            status_code=status,
            reason=_REASONS.get(status, b"Error"),
            headers=[
                (b"Content-Type", b"text/plain; charset=utf-8"),
                (b"Content-Length", str(len(body)).encode()),
                (b"Connection", b"close"),
            ],
        )
        conn = self._reader.conn
        if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        try:
            data = _encode(conn, response)
        except h11.LocalProtocolError:
            conn = h11.Connection(h11.SERVER)  # a fresh one may answer anything
            data = _encode(conn, response)
        # The answer to a HEAD request has no body: h11 refuses one.
        with contextlib.suppress(h11.LocalProtocolError):
            data += _encode(conn, h11.Data(data=body))
            data += _encode(conn, h11.EndOfMessage())
        with contextlib.suppress(*_BROKEN):
            await self._app.send_all(data)
            await self._linger()

    async def _linger(self) -> None:
        """Half-close, then read for a moment, so unread request bytes do not
        make the kernel reset the connection before the app read our answer."""
        await self._app.send_eof()
        drained = 0
        with trio.move_on_after(LINGER_TIMEOUT):
            while drained < LINGER_BYTES:
                data = await self._app.receive_some(APP_CHUNK)
                if not data:
                    break
                drained += len(data)

    async def _close_upstream(self) -> None:
        upstream, self._upstream = self._upstream, None
        if upstream is not None:
            try:
                await upstream.stream.aclose()
            finally:
                self._manager.release(upstream.handle, upstream.stream)


class _ExchangeState:
    """What the two halves of one request/response exchange share."""

    def __init__(self) -> None:
        self.response_started = False
        self.failure: HttpRequestError | _AbortError | _UpstreamError | None = None

    def fail(self, exc: HttpRequestError | _AbortError | _UpstreamError) -> None:
        """Remember the first failure."""
        if self.failure is None:
            self.failure = exc


def _encode(conn: h11.Connection, event: h11.Event) -> bytes:
    """``conn.send(event)``: bytes for every event but ConnectionClosed."""
    data = conn.send(event)
    assert data is not None
    return data
