"""``hopchain relay status``: a running relay's metrics in a few plain lines.

It scrapes the relay's metrics endpoint (``hopchain relay --metrics-port``)
over HTTP, parses the Prometheus text with prometheus_client's parser, and
prints uptime, links, circuits, exit streams, traffic (totals, the average
rate since start and, with ``--sample``, the rate over the last seconds),
cells, handshake failures, limit hits and queued cell memory.
"""

import argparse
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

import h11
import trio
from hopchain.relay.net import Network, TcpNetwork, wall_clock
from prometheus_client.parser import text_string_to_metric_families

from hopchain.errors import HopchainError

DEFAULT_ENDPOINT: Final = "127.0.0.1:9052"
SCRAPE_TIMEOUT: Final = 5.0
MAX_RESPONSE: Final = 1 << 20
_P: Final = "hopchain_relay_"

Labels = frozenset[tuple[str, str]]


def endpoint(text: str) -> tuple[str, int]:
    """Parse HOST:PORT (an IPv6 host in brackets) for ``--metrics``."""
    host, sep, port_text = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        port = int(port_text)
    except ValueError:
        port = -1
    if not sep or not host or not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not HOST:PORT (e.g. 127.0.0.1:9052)"
        )
    return host, port


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``hopchain relay status``."""
    parser = argparse.ArgumentParser(
        prog="hopchain relay status",
        description=(
            "Print a short summary of a running relay: uptime, links, circuits, "
            "exit streams, traffic and rates, handshake failures, limit hits "
            "and queued cell memory. Reads the relay's metrics endpoint, so "
            "the relay must run with --metrics-port."
        ),
    )
    parser.add_argument(
        "--metrics",
        type=endpoint,
        default=endpoint(DEFAULT_ENDPOINT),
        metavar="HOST:PORT",
        help=f"the relay's metrics endpoint (default {DEFAULT_ENDPOINT}, as "
        "with 'hopchain relay --metrics-port 9052')",
    )
    parser.add_argument(
        "--sample",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="scrape twice, this many seconds apart, to show the current "
        "traffic rate too (default 1; 0: averages since start only)",
    )
    parser.add_argument(
        "--log-level",
        default="warning",
        choices=["debug", "info", "warning", "error"],
        help="log verbosity on stderr (default: warning)",
    )
    parser.set_defaults(command="relay status")
    return parser


async def scrape(
    network: Network, host: str, port: int, *, timeout: float = SCRAPE_TIMEOUT
) -> str:
    """The text of ``GET /metrics`` at host:port.

    Raises:
        HopchainError: nothing answers, or not with metrics.
    """
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        with trio.fail_after(timeout):
            stream = await network.connect(host, port)
            async with stream:
                return await _get(stream, host, where)
    except (OSError, trio.TooSlowError, trio.BrokenResourceError) as exc:
        raise HopchainError(
            f"nothing answers at {where} ({_why(exc)}); is the relay running "
            f"with --metrics-port {port}?"
        ) from exc


def _why(exc: Exception) -> str:
    """A short reason for a failed scrape (trio groups per-address errors)."""
    if isinstance(exc, trio.TooSlowError):
        return "no answer in time"
    cause = exc.__cause__
    if isinstance(cause, BaseExceptionGroup):
        cause = cause.exceptions[0]
    if isinstance(cause, OSError) and cause.errno:
        return os.strerror(cause.errno).lower()
    return str(exc) or type(exc).__name__


async def _get(stream: trio.abc.Stream, host: str, where: str) -> str:
    conn = h11.Connection(h11.CLIENT)
    request = h11.Request(
        method="GET",
        target="/metrics",
        headers=[("host", where), ("connection", "close"), ("accept", "text/plain")],
    )
    await stream.send_all(
        (conn.send(request) or b"") + (conn.send(h11.EndOfMessage()) or b"")
    )
    body = bytearray()
    status = 0
    try:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(bytes(await stream.receive_some(65536)))
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > MAX_RESPONSE:
                    raise HopchainError(f"{where} sends more than metrics would be")
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                break
    except h11.RemoteProtocolError as exc:
        raise HopchainError(f"{where} does not speak HTTP: {exc}") from exc
    if status != 200:
        raise HopchainError(f"{where} answered HTTP {status}, not metrics")
    try:
        return body.decode()
    except UnicodeDecodeError as exc:
        raise HopchainError(f"{where} did not send metrics text") from exc


@dataclass(frozen=True)
class Reading:
    """One scrape: every sample's value by metric name and labels."""

    samples: dict[tuple[str, Labels], float]
    taken: float

    def total(self, name: str, **labels: str) -> float:
        """The sum of ``name``'s samples whose labels include ``labels``."""
        want = set(labels.items())
        return sum(v for (n, ls), v in self.samples.items() if n == name and want <= ls)

    def by(self, name: str, label: str) -> dict[str, float]:
        """``name``'s samples keyed by one label's value."""
        return {
            dict(ls)[label]: v
            for (n, ls), v in self.samples.items()
            if n == name and label in dict(ls)
        }

    def labels(self, name: str) -> list[dict[str, str]]:
        """The label sets of ``name``'s samples."""
        return [dict(ls) for (n, ls) in self.samples if n == name]


def parse(text: str, taken: float) -> Reading:
    """Parse a scrape taken at ``taken`` (seconds since the epoch).

    Raises:
        HopchainError: malformed, or not a hopchain relay's metrics.
    """
    try:
        samples = {
            (s.name, frozenset(s.labels.items())): float(s.value)
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }
    except (ValueError, TypeError, IndexError) as exc:
        raise HopchainError(f"malformed metrics: {exc}") from exc
    if not any(name == _P + "build_info" for name, _ in samples):
        raise HopchainError("the endpoint does not serve hopchain relay metrics")
    return Reading(samples, taken)


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def _duration(seconds: float) -> str:
    s = max(0, int(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


def _counts(values: dict[str, float]) -> str:
    nonzero = [f"{k} {v:.0f}" for k, v in sorted(values.items()) if v]
    return ", ".join(nonzero) if nonzero else "none"


def _link_bytes(reading: Reading | None, direction: str) -> float:
    if reading is None:
        return 0.0
    return reading.total(_P + "link_bytes_total", direction=direction)


def _rates(now: Reading, then: Reading | None, span: float, label: str) -> str:
    """Link traffic per second between ``then`` (None: the start) and ``now``."""
    if span <= 0:
        return ""
    received, sent = (
        (_link_bytes(now, d) - _link_bytes(then, d)) / span
        for d in ("received", "sent")
    )
    return f"; {label}: {_size(received)}/s in, {_size(sent)}/s out"


def summary(now: Reading, earlier: Reading | None = None) -> str:
    """The human summary of a reading (``earlier``: for the current rate)."""
    (info,) = now.labels(_P + "build_info") or [{}]
    uptime = now.taken - now.total(_P + "start_time_seconds")
    links = now.by(_P + "open_links", "direction")
    cells = {
        d: {
            s: now.total(_P + "cells_total", direction=d, size=s)
            for s in ("small", "large", "other")
        }
        for d in ("received", "sent")
    }
    failures = {
        f"{ls['handshake']} {ls['reason']}": now.total(
            _P + "handshake_failures_total", **ls
        )
        for ls in now.labels(_P + "handshake_failures_total")
    }
    lines = [
        f"relay {info.get('nickname', '?')} (hopchain {info.get('version', '?')}), "
        f"up {_duration(uptime)}",
        f"links: {sum(links.values()):.0f} open ({links.get('inbound', 0):.0f} "
        f"inbound, {links.get('outbound', 0):.0f} outbound), "
        f"{now.total(_P + 'links_opened_total'):.0f} since start",
        f"circuits: {now.total(_P + 'open_circuits'):.0f} open, "
        f"{now.total(_P + 'circuits_created_total'):.0f} created, "
        f"{now.total(_P + 'circuits_closed_total'):.0f} closed",
        f"exit streams: {now.total(_P + 'open_exit_streams'):.0f} open, "
        f"{now.total(_P + 'exit_streams_opened_total'):.0f} opened",
        "traffic: received "
        f"{_size(now.total(_P + 'link_bytes_total', direction='received'))}, "
        f"sent {_size(now.total(_P + 'link_bytes_total', direction='sent'))}"
        + _rates(now, None, uptime, "average")
        + (
            ""
            if earlier is None
            else _rates(
                now,
                earlier,
                now.taken - earlier.taken,
                f"last {_duration(now.taken - earlier.taken)}",
            )
        ),
        *(
            f"cells {d}: {sum(c.values()):.0f}"
            + (f" ({_counts(c)})" if any(c.values()) else "")
            for d, c in cells.items()
        ),
        "exit data: "
        f"{_size(now.total(_P + 'exit_bytes_total', direction='received'))} "
        "from destinations, "
        f"{_size(now.total(_P + 'exit_bytes_total', direction='sent'))} to them",
        f"handshake failures: {_counts(failures)}",
        f"limit hits: {_counts(now.by(_P + 'limit_hits_total', 'limit'))}",
        f"queued cells: {_size(now.total(_P + 'queued_cell_bytes'))}",
    ]
    return "\n".join(lines)


def command(args: argparse.Namespace) -> Callable[[], Awaitable[None]]:
    """The runner for ``hopchain relay status`` (``cli.main`` runs it)."""
    host, port = args.metrics
    network = TcpNetwork()

    async def run() -> None:
        earlier = None
        if args.sample > 0:
            earlier = parse(await scrape(network, host, port), wall_clock())
            await trio.sleep(args.sample)
        now = parse(await scrape(network, host, port), wall_clock())
        print(summary(now, earlier), flush=True)

    return run
