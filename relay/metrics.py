"""The relay's Prometheus metrics, and the small HTTP endpoint that serves them.

``RelayCollector`` is a prometheus_client custom collector: at scrape time
it reads a ``RelayStats`` (plain counters the relay bumps as things happen)
and turns it into metric families, so the relay's hot path never calls the
Prometheus library.  The metric list, with meanings, is in
docs/operators-metrics.md.

``serve_metrics`` answers ``GET /metrics`` over HTTP/1.1 (h11) inside trio:
one request per connection, a request head of at most ``MAX_REQUEST_HEAD``
bytes, ``REQUEST_TIMEOUT`` seconds for the whole exchange, and at most
``MAX_CONNECTIONS`` connections at once (more are closed at once).  Metrics
tell how busy a relay is and when, which helps traffic analysis, so the
endpoint listens on loopback unless the operator explicitly allows more.
"""

import ipaddress
import logging
from collections.abc import Iterator
from typing import Final

import h11
import trio
from hopchain.relay.net import Network, bound_port
from hopchain.relay.stats import HANDSHAKES, RelayStats
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)

from hopchain._version import __version__
from hopchain.errors import ConfigError

logger = logging.getLogger(__name__)

PREFIX: Final = "hopchain_relay_"
MAX_REQUEST_HEAD: Final = 8192
REQUEST_TIMEOUT: Final = 10.0
MAX_CONNECTIONS: Final = 8
LINGER: Final = 1.0
MAX_LINGER_BYTES: Final = 64 * 1024
_BROKEN: Final = (trio.BrokenResourceError, trio.ClosedResourceError)
_DIRECTIONS: Final = ("inbound", "outbound")


class RelayCollector:
    """Reads a ``RelayStats`` at scrape time (see the module docstring)."""

    def __init__(self, stats: RelayStats, nickname: str) -> None:
        self._stats = stats
        self._nickname = nickname

    def collect(self) -> Iterator[Metric]:
        """Every metric family, from the counters as they are now."""
        s = self._stats
        info = InfoMetricFamily(PREFIX + "build", "The relay's nickname and version.")
        info.add_metric([], {"nickname": self._nickname, "version": __version__})
        yield info
        yield GaugeMetricFamily(
            PREFIX + "start_time_seconds",
            "When the relay started, in seconds since the Unix epoch.",
            value=s.started,
        )
        yield _by_label(
            "links_opened",
            "Links (connections from clients and relays) set up, after their "
            "handshake.",
            "direction",
            {d: s.links_opened[d] for d in _DIRECTIONS},
        )
        yield _by_label(
            "links_closed",
            "Links closed.",
            "direction",
            {d: s.links_closed[d] for d in _DIRECTIONS},
        )
        open_links = GaugeMetricFamily(
            PREFIX + "open_links", "Links open now.", labels=["direction"]
        )
        for d in _DIRECTIONS:
            open_links.add_metric([d], s.links_opened[d] - s.links_closed[d])
        yield open_links
        yield CounterMetricFamily(
            PREFIX + "circuits_created",
            "Circuits created at this relay (CREATE accepted).",
            value=s.circuits_created,
        )
        yield CounterMetricFamily(
            PREFIX + "circuits_closed", "Circuits closed.", value=s.circuits_closed
        )
        yield GaugeMetricFamily(
            PREFIX + "open_circuits",
            "Circuits open now.",
            value=s.circuits_created - s.circuits_closed,
        )
        yield CounterMetricFamily(
            PREFIX + "exit_streams_opened",
            "Exit streams connected to their destination.",
            value=s.streams_opened,
        )
        yield CounterMetricFamily(
            PREFIX + "exit_streams_closed",
            "Exit streams ended.",
            value=s.streams_closed,
        )
        yield GaugeMetricFamily(
            PREFIX + "open_exit_streams",
            "Exit streams open now.",
            value=s.streams_opened - s.streams_closed,
        )
        t = s.traffic
        yield _by_label(
            "link_bytes",
            "Bytes on links after their handshake (encrypted records).",
            "direction",
            {"received": t.bytes_received, "sent": t.bytes_sent},
        )
        cells = CounterMetricFamily(
            PREFIX + "cells",
            "Link cells by direction and size class: relay cells are small "
            "(1024-byte body) or large (32768); CREATE, CREATED, DESTROY and "
            "AUTHENTICATE are other.",
            labels=["direction", "size"],
        )
        for direction in ("received", "sent"):
            for size, n in t.cells(direction).items():
                cells.add_metric([direction, size], n)
        yield cells
        yield _by_label(
            "exit_bytes",
            "Bytes exit streams received from and sent to destinations.",
            "direction",
            {"received": s.exit_bytes_received, "sent": s.exit_bytes_sent},
        )
        failures = CounterMetricFamily(
            PREFIX + "handshake_failures",
            "Failed handshakes: link (a connection's key exchange: timeout, "
            "closed, invalid, network), circuit (CREATE) and authenticate "
            "(a relay's AUTHENTICATE).",
            labels=["handshake", "reason"],
        )
        known = {(h, r): 0 for h, reasons in HANDSHAKES.items() for r in reasons}
        for (handshake, reason), n in sorted({**known, **s.handshake_failures}.items()):
            failures.add_metric([handshake, reason], n)
        yield failures
        yield _by_label(
            "limit_hits",
            "Links, circuits or cells refused because a limit was reached, by limit.",
            "limit",
            dict(sorted(s.limit_hits.items())),
        )
        yield GaugeMetricFamily(
            PREFIX + "queued_cell_bytes",
            "Bytes of cells waiting to be sent on links.",
            value=s.queued_bytes(),
        )


def _by_label(
    name: str, documentation: str, label: str, values: dict[str, int]
) -> CounterMetricFamily:
    family = CounterMetricFamily(PREFIX + name, documentation, labels=[label])
    for value, n in values.items():
        family.add_metric([value], n)
    return family


def render(collector: RelayCollector) -> bytes:
    """The Prometheus text exposition of ``collector``'s metrics."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return generate_latest(registry)


def check_metrics_address(address: str, *, allow_public: bool) -> None:
    """Refuse a metrics address that is not one IP address, or not loopback
    without ``allow_public``.

    Raises:
        ConfigError: with the reason.
    """
    try:
        ip = ipaddress.ip_address(address)
    except ValueError as exc:
        raise ConfigError(
            f"--metrics-address must be an IP address, not {address!r}"
        ) from exc
    if not ip.is_loopback and not allow_public:
        raise ConfigError(
            f"--metrics-address {address} is not loopback: metrics tell others "
            "when and how much your relay carries; add --metrics-allow-public "
            "if a firewall keeps it private"
        )


async def serve_metrics(
    network: Network,
    collector: RelayCollector,
    address: str,
    port: int,
    *,
    allow_public: bool = False,
    timeout: float = REQUEST_TIMEOUT,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``GET /metrics`` on address:port until cancelled.

    Reports the bound port through ``task_status`` (``port`` 0: any).

    Raises:
        ConfigError: see ``check_metrics_address``.
    """
    check_metrics_address(address, allow_public=allow_public)
    if not ipaddress.ip_address(address).is_loopback:
        logger.warning("metrics are served on %s, not on loopback", address)
    listeners = await network.listen(address, port)
    bound = bound_port(listeners)
    host = f"[{address}]" if ":" in address else address
    logger.info("metrics on http://%s:%d/metrics", host, bound)
    limiter = trio.CapacityLimiter(MAX_CONNECTIONS)

    async def handle(stream: trio.abc.HalfCloseableStream) -> None:
        try:
            limiter.acquire_nowait()
        except trio.WouldBlock:
            await trio.aclose_forcefully(stream)
            return
        try:
            with trio.move_on_after(timeout):
                await answer_one_request(stream, collector)
                await _linger(stream)
        except Exception:
            # A bug behind one scrape must not take the relay down with it.
            logger.exception("bug while answering a metrics request")
        finally:
            limiter.release()
            await trio.aclose_forcefully(stream)

    task_status.started(bound)
    await trio.serve_listeners(handle, listeners)


async def _linger(stream: trio.abc.HalfCloseableStream) -> None:
    """Half-close, then read what the client still sends (a bounded amount,
    for at most ``LINGER`` seconds): closing with unread bytes would reset the
    connection, and the client could lose the answer."""
    with trio.move_on_after(LINGER):
        try:
            await stream.send_eof()
            drained = 0
            while drained < MAX_LINGER_BYTES:
                data = await stream.receive_some(4096)
                if not data:
                    return
                drained += len(data)
        except _BROKEN:
            return


async def answer_one_request(
    stream: trio.abc.Stream, collector: RelayCollector
) -> None:
    """Read one request from ``stream`` and answer it (a malformed one with
    400); the caller bounds the time and closes the stream."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_HEAD)
    try:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                try:
                    conn.receive_data(bytes(await stream.receive_some(4096)))
                except _BROKEN:
                    return
                continue
            break
    except h11.RemoteProtocolError:
        await _respond(stream, conn, 400, b"bad request\n")
        return
    if not isinstance(event, h11.Request):
        return  # the client closed without a request
    target = event.target.split(b"?", 1)[0]
    if event.method not in (b"GET", b"HEAD"):
        await _respond(stream, conn, 405, b"only GET\n", [("allow", "GET, HEAD")])
    elif target != b"/metrics":
        await _respond(stream, conn, 404, b"metrics are at /metrics\n")
    else:
        await _respond(
            stream,
            conn,
            200,
            render(collector),
            content_type=CONTENT_TYPE_LATEST,
            head=event.method == b"HEAD",
        )


async def _respond(
    stream: trio.abc.Stream,
    conn: h11.Connection,
    status: int,
    body: bytes,
    extra: list[tuple[str, str]] | None = None,
    *,
    content_type: str = "text/plain; charset=utf-8",
    head: bool = False,
) -> None:
    headers = [
        ("content-type", content_type),
        ("content-length", str(len(body))),
        ("connection", "close"),
        *(extra or []),
    ]
    try:
        data = conn.send(h11.Response(status_code=status, headers=headers)) or b""
        if not head:
            data += conn.send(h11.Data(data=body)) or b""
        data += conn.send(h11.EndOfMessage()) or b""
    except h11.LocalProtocolError:
        return  # too broken a request to answer
    try:
        await stream.send_all(data)
    except _BROKEN:
        return
