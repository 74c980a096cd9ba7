"""Relay metrics without a network: the collector's exposition, the status
summary's figures and units, the metrics address rule, and the counting
helpers."""

import argparse
import functools

import pytest
import trio
import trio.testing
from hopchain.relay.exit import ExitConnection
from hopchain.relay.limits import RelayLimiter
from hopchain.relay.link import Link, SharedLimits
from hopchain.relay.metrics import (
    RelayCollector,
    answer_one_request,
    check_metrics_address,
    render,
    serve_metrics,
)
from hopchain.relay.net import TcpNetwork
from hopchain.relay.stats import RelayStats, handshake_failure_reason
from hopchain.relay.status import endpoint, parse, summary
from hypothesis import given, settings
from hypothesis import strategies as st

from hopchain._version import __version__
from hopchain.errors import ConfigError, HandshakeError, HopchainError
from hopchain.oom import QueueBudget
from hopchain.relaylimits import RelayLimits
from hopchain.wire import CellCommand, LinkKeys


def busy_stats() -> RelayStats:
    stats = RelayStats(started=1000.0)
    stats.links_opened.update(inbound=5, outbound=2)
    stats.links_closed.update(inbound=3)
    stats.circuits_created, stats.circuits_closed = 12, 7
    stats.streams_opened, stats.streams_closed = 4, 3
    stats.traffic.bytes_received = 3725 * 1024
    stats.traffic.bytes_sent = 2 * 3725 * 1024
    stats.traffic.cells_received[:] = [10, 20, 0]
    stats.traffic.cells_sent[:] = [0, 0, 3]
    stats.exit_bytes_received, stats.exit_bytes_sent = 512, 1536
    stats.handshake_failures.update({("link", "timeout"): 2, ("circuit", "invalid"): 1})
    stats.limit_hits["circuit_queue"] = 4
    stats.queued_bytes = lambda: 2048
    return stats


def scrape_text(stats: RelayStats) -> str:
    return render(RelayCollector(stats, "busy")).decode()


def test_summary_of_a_busy_relay() -> None:
    stats = busy_stats()
    now = parse(scrape_text(stats), taken=1000.0 + 3725)
    stats.traffic.bytes_received -= 10 * 1024
    earlier = parse(scrape_text(stats), taken=1000.0 + 3715)
    assert summary(now, earlier).splitlines() == [
        f"relay busy (hopchain {__version__}), up 1 h 2 min",
        "links: 4 open (2 inbound, 2 outbound), 7 since start",
        "circuits: 5 open, 12 created, 7 closed",
        "exit streams: 1 open, 4 opened",
        "traffic: received 3.6 MiB, sent 7.3 MiB; average: 1.0 KiB/s in, "
        "2.0 KiB/s out; last 10 s: 1.0 KiB/s in, 0 B/s out",
        "cells received: 30 (large 20, small 10)",
        "cells sent: 3 (other 3)",
        "exit data: 512 B from destinations, 1.5 KiB to them",
        "handshake failures: circuit invalid 1, link timeout 2",
        "limit hits: circuit_queue 4",
        "queued cells: 2.0 KiB",
    ]


def test_summary_of_a_new_relay_says_none() -> None:
    reading = parse(scrape_text(RelayStats(started=50.0)), taken=50.0)
    text = summary(reading)
    assert "up 0 s" in text
    assert "; last" not in text
    assert "average" not in text  # no time has passed: no rate to show
    assert "handshake failures: none" in text
    assert "limit hits: none" in text


def test_exposition_names_follow_prometheus_conventions() -> None:
    text = scrape_text(busy_stats())
    assert 'hopchain_relay_cells_total{direction="received",size="large"} 20.0' in text
    assert "hopchain_relay_circuits_created_total 12.0" in text
    assert "hopchain_relay_open_circuits 5.0" in text
    assert 'hopchain_relay_link_bytes_total{direction="sent"} 7.6288e+06' in text
    assert "hopchain_relay_queued_cell_bytes 2048.0" in text
    assert "# TYPE hopchain_relay_start_time_seconds gauge" in text
    # Every handshake and reason is listed, so a rate() sees the first one.
    assert (
        'hopchain_relay_handshake_failures_total{handshake="authenticate",'
        'reason="invalid"} 0.0' in text
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "# HELP other_total x\n# TYPE other_total counter\nother_total 1\n",
            "does not",
        ),
        ("hopchain_relay_build_info{ 1\n", "malformed"),
    ],
)
def test_parse_refuses_what_is_not_relay_metrics(text: str, message: str) -> None:
    with pytest.raises(HopchainError, match=message):
        parse(text, taken=0.0)


@pytest.mark.parametrize(
    ("address", "allow_public", "error"),
    [
        ("127.0.0.1", False, None),
        ("::1", False, None),
        ("0.0.0.0", False, "not loopback"),
        ("10.1.2.3", False, "not loopback"),
        ("0.0.0.0", True, None),
        ("metrics.example", True, "must be an IP address"),
    ],
)
def test_metrics_address_rule(
    address: str, allow_public: bool, error: str | None
) -> None:
    if error is None:
        check_metrics_address(address, allow_public=allow_public)
    else:
        with pytest.raises(ConfigError, match=error):
            check_metrics_address(address, allow_public=allow_public)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("127.0.0.1:9052", ("127.0.0.1", 9052)), ("[::1]:80", ("::1", 80))],
)
def test_endpoint_parses_host_and_port(text: str, expected: tuple[str, int]) -> None:
    assert endpoint(text) == expected


@pytest.mark.parametrize("text", ["9052", "host:", ":9052", "h:0", "h:70000", "h:x"])
def test_endpoint_refuses_malformed_text(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        endpoint(text)


def test_handshake_failure_reasons() -> None:
    assert handshake_failure_reason(trio.TooSlowError()) == "timeout"
    assert handshake_failure_reason(EOFError()) == "closed"
    assert handshake_failure_reason(HandshakeError("x")) == "invalid"
    assert handshake_failure_reason(ConnectionResetError()) == "network"


async def test_exit_connection_counts_both_directions() -> None:
    stats = RelayStats()
    exit_side, destination = trio.testing.memory_stream_pair()
    counted = ExitConnection(exit_side, RelayLimiter(RelayLimits()), stats)
    await counted.send_all(b"hello")
    assert await destination.receive_some() == b"hello"
    await destination.send_all(b"world!")
    assert await counted.receive_some() == b"world!"
    assert (stats.exit_bytes_sent, stats.exit_bytes_received) == (5, 6)


def test_a_link_reports_its_queued_bytes_and_queue_refusals() -> None:
    near, _ = trio.testing.memory_stream_pair()
    link = Link(near, LinkKeys(bytes(32), bytes(32)), peer_identity=None, binding=b"")
    assert link.send(7, CellCommand.RELAY, bytes(1024))
    assert link.send(8, CellCommand.DESTROY, b"\x01")
    assert link.queued_bytes == 1025
    stats = RelayStats()
    stats.queue_refused(link)
    link.closed = True
    stats.queue_refused(link)  # a closed link is not a limit
    assert stats.limit_hits["circuit_queue"] == 1


def test_dropping_a_circuit_frees_its_cells_from_the_budget() -> None:
    near, _ = trio.testing.memory_stream_pair()
    budget = QueueBudget(0)
    link = Link(
        near,
        LinkKeys(bytes(32), bytes(32)),
        peer_identity=None,
        binding=b"",
        shared=SharedLimits(budget, lambda: None),
    )
    for circ_id in (7, 8, 7):
        assert link.send(circ_id, CellCommand.RELAY, bytes(100))
    per_cell = budget.queued // 3
    assert link.drop_circuit(7) == 2 * per_cell
    assert budget.queued == per_cell
    assert (link.queued_for(7), link.queued_for(8)) == (0, 100)
    assert link.drop_circuit(7) == 0


async def test_a_failing_collector_costs_one_scrape_not_the_endpoint(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    stats = RelayStats()
    broken = [True]

    def queued() -> int:
        if broken[0]:
            raise RuntimeError("a buggy queue measure")
        return 7

    stats.queued_bytes = queued
    port = await nursery.start(
        functools.partial(
            serve_metrics, TcpNetwork(), RelayCollector(stats, "r"), "127.0.0.1", 0
        )
    )
    request = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"

    async def get() -> bytes:
        async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
            await stream.send_all(request)
            await stream.send_eof()
            data = b""
            while chunk := await stream.receive_some(65536):
                data += chunk
            return data

    with trio.fail_after(30):
        assert await get() == b""
        broken[0] = False
        answer = await get()
    assert "a buggy queue measure" in caplog.text
    assert b"hopchain_relay_queued_cell_bytes 7.0" in answer


@settings(max_examples=200, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=400),
        st.builds(
            lambda method, target, rest: (
                method + b" " + target + b" HTTP/1.1\r\n" + rest
            ),
            st.sampled_from([b"GET", b"HEAD", b"POST", b"get", b""]),
            st.sampled_from([b"/metrics", b"/metrics?x=1", b"/", b"*", b"//metrics"]),
            st.binary(max_size=200),
        ),
    )
)
async def test_any_request_bytes_get_an_http_answer_or_none(data: bytes) -> None:
    client, server = trio.testing.memory_stream_pair()
    await client.send_all(data)
    await client.send_eof()
    with trio.fail_after(10):
        await answer_one_request(server, RelayCollector(RelayStats(), "r"))
        await server.aclose()
        answer = b""
        while chunk := await client.receive_some(65536):
            answer += chunk
    assert answer == b"" or answer.startswith(b"HTTP/1.1 ")
    if answer.startswith(b"HTTP/1.1 200 "):
        assert data.startswith((b"GET /metrics", b"HEAD /metrics"))
