"""Relay metrics end to end: scrape /metrics after known traffic and check
that the counters moved by the right amounts; ``hopchain relay status``
against a live endpoint; garbage to the metrics port does not hurt the relay.
"""

import functools
import math
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import trio
import trio.testing
from hopchain.relay.metrics import MAX_CONNECTIONS, RelayCollector, serve_metrics
from hopchain.relay.net import TcpNetwork
from hopchain.relay.node import RelayNode
from hopchain.relay.stats import RelayStats
from hopchain.relay.status import build_parser, command
from prometheus_client.parser import text_string_to_metric_families

from hopchain.messages import HEADER, MAX_DATA, SMALL_PAYLOAD
from hopchain.wire import CELL_HEADER

from .conftest import LoopbackNet, pattern, start_testnet

P = "hopchain_relay_"
SIZE = 3 * 1024 * 1024 + 4321  # downloaded through one circuit
POLLS = 2000  # bound on re-scrapes while a counter settles

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
async def metrics_net(nursery: trio.Nursery) -> AsyncIterator[LoopbackNet]:
    with trio.fail_after(60):
        net = await start_testnet(nursery, relay_options={"metrics_port": 0})
    yield net
    assert net.network.violations == [], "the test network tried to leave loopback"


async def http_get(port: int, request: bytes) -> bytes:
    """Send raw request bytes and EOF to the loopback port; read until EOF."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(request)
        await stream.send_eof()
        data = b""
        while chunk := await stream.receive_some(65536):
            data += chunk
    return data


async def scrape(relay: RelayNode) -> Samples:
    """GET /metrics from the relay, parsed with prometheus_client's parser."""
    assert relay.metrics_port is not None
    response = await http_get(
        relay.metrics_port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """The one sample of ``name`` with exactly these labels."""
    return samples[P + name, frozenset(labels.items())]


async def scrape_until(relay: RelayNode, done: Callable[[Samples], bool]) -> Samples:
    """Re-scrape (each scrape lets the relays run) until ``done`` holds."""
    for _ in range(POLLS):
        samples = await scrape(relay)
        if done(samples):
            return samples
    raise AssertionError("the counter never settled")


def delta(after: Samples, before: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


async def test_counters_move_by_the_traffic_of_one_circuit(
    metrics_net: LoopbackNet,
) -> None:
    net = metrics_net
    manager = net.client.manager
    assert manager is not None
    # Retire the warm-up circuit first, so only the circuit below is counted,
    # and build none ahead for the port it uses.
    manager.max_clean = 0
    manager.newnym()
    manager.reuse.retire_idle(trio.current_time())
    with trio.fail_after(30):
        before = {
            r: await scrape_until(r, lambda s: value(s, "open_circuits") == 0)
            for r in net.relays
        }
        handle, stream = await manager.open_stream("127.0.0.1", net.origin_port)
        request = f"BYTES {SIZE}\n".encode()
        await stream.send_all(request)
        body = bytearray()
        while data := await stream.receive_some():
            body += data
        assert bytes(body) == pattern(SIZE)
        await stream.aclose()
        manager.release(handle, stream)

    path = [hop.identity for hop in handle.core.path]
    hops = [next(r for r in net.relays if r.identity.public == i) for i in path]
    guard, middle, exit_ = hops
    others = [r for r in net.relays if r not in hops]
    assert len(hops) == 3
    assert len(others) == 2
    with trio.fail_after(30):
        exit_after = await scrape_until(
            exit_, lambda s: delta(s, before[exit_], "exit_streams_closed_total") == 1
        )
        after = {r: await scrape(r) for r in net.relays if r is not exit_}
    after[exit_] = exit_after

    def moved(relay: RelayNode, name: str, **labels: str) -> float:
        return delta(after[relay], before[relay], name, **labels)

    # Exactly one circuit at each hop, none elsewhere; it is still open.
    assert [moved(r, "circuits_created_total") for r in hops] == [1, 1, 1]
    assert [value(after[r], "open_circuits") for r in hops] == [1, 1, 1]
    # One exit stream, at the exit only, and it carried exactly our bytes.
    assert moved(exit_, "exit_streams_opened_total") == 1
    assert value(after[exit_], "open_exit_streams") == 0
    assert moved(exit_, "exit_bytes_total", direction="received") == SIZE
    assert moved(exit_, "exit_bytes_total", direction="sent") == len(request)
    for relay in (guard, middle):
        assert moved(relay, "exit_streams_opened_total") == 0
        assert moved(relay, "exit_bytes_total", direction="received") == 0
    # The relays off the path saw nothing at all.
    for relay in others:
        for direction in ("received", "sent"):
            assert moved(relay, "link_bytes_total", direction=direction) == 0
        assert moved(relay, "circuits_created_total") == 0

    def cells(relay: RelayNode, direction: str, size: str) -> float:
        return moved(relay, "cells_total", direction=direction, size=size)

    # The download travels back as large cells: each hop sends what the next
    # one sent it, and the client sent none (so the exit received none).
    large = cells(exit_, "sent", "large")
    assert large >= math.ceil(SIZE / MAX_DATA)
    assert cells(middle, "received", "large") == large
    assert cells(middle, "sent", "large") == large
    assert cells(guard, "received", "large") == large
    assert cells(guard, "sent", "large") == large
    assert cells(exit_, "received", "large") == 0
    # The cells the exit sent can hold the payload, and the bytes it sent
    # hold those cells (plus record framing).
    small = cells(exit_, "sent", "small")
    assert small * (SMALL_PAYLOAD - HEADER.size) + large * MAX_DATA >= SIZE
    for relay in hops:
        sent = moved(relay, "link_bytes_total", direction="sent")
        cell_bytes = sum(
            cells(relay, "sent", size) * (CELL_HEADER.size + body)
            for size, body in (("small", 1024), ("large", 32768))
        )
        assert sent >= SIZE
        assert sent > cell_bytes
    # Nothing is left queued, no handshake failed and no limit was hit.
    for relay in net.relays:
        assert value(after[relay], "queued_cell_bytes") == 0
        failures = [
            v
            for (name, _), v in after[relay].items()
            if name in (P + "handshake_failures_total", P + "limit_hits_total")
        ]
        assert failures
        assert not any(failures)


async def test_handshake_failures_are_counted_by_reason(
    metrics_net: LoopbackNet,
) -> None:
    relay = metrics_net.relays[0]
    with trio.fail_after(30):
        before = await scrape(relay)
        # Closed early; the relay's onion key with a low-order ephemeral key.
        for garbage in (b"short", relay.onion_keys[0].public + bytes(32)):
            stream = await trio.open_tcp_stream(relay.config.address, relay.port)
            async with stream:
                await stream.send_all(garbage)
                await stream.send_eof()
                while await stream.receive_some(4096):
                    pass
        after = await scrape_until(
            relay,
            lambda s: (
                delta(
                    s,
                    before,
                    "handshake_failures_total",
                    handshake="link",
                    reason="closed",
                )
                == 1
                and delta(
                    s,
                    before,
                    "handshake_failures_total",
                    handshake="link",
                    reason="invalid",
                )
                == 1
            ),
        )
    assert (
        delta(
            after,
            before,
            "handshake_failures_total",
            handshake="link",
            reason="timeout",
        )
        == 0
    )
    assert delta(after, before, "links_opened_total", direction="inbound") == 0


async def test_relay_status_summarises_a_live_relay(
    metrics_net: LoopbackNet, capsys: pytest.CaptureFixture[str]
) -> None:
    net = metrics_net
    exit_ = next(r for r in net.relays if r.config.exit)
    args = build_parser().parse_args(
        ["--metrics", f"127.0.0.1:{exit_.metrics_port}", "--sample", "0"]
    )
    with trio.fail_after(30):
        await command(args)()
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"relay {exit_.config.nickname} (hopchain ")
    assert ", up " in lines[0]
    open_circuits = exit_.stats.circuits_created - exit_.stats.circuits_closed
    assert f"circuits: {open_circuits} open, " in lines[2]
    assert lines[3] == "exit streams: 0 open, 0 opened"
    assert lines[4].startswith("traffic: received ")
    assert "/s in, " in lines[4]
    assert lines[-3] == "handshake failures: none"
    assert lines[-2] == "limit hits: none"
    assert lines[-1] == "queued cells: 0 B"


async def test_the_status_command_line_reads_the_endpoint(
    metrics_net: LoopbackNet,
) -> None:
    relay = metrics_net.relays[1]
    argv = ["relay", "status", "--metrics", f"127.0.0.1:{relay.metrics_port}"]
    with trio.fail_after(60):
        result = await trio.run_process(
            [sys.executable, "-m", "hopchain", *argv, "--sample", "0.2"],
            capture_stdout=True,
            capture_stderr=True,
        )
    out = result.stdout.decode()
    assert out.startswith(f"relay {relay.config.nickname} ")
    assert "; last 0 s: " in out
    assert result.stderr == b""


async def test_malformed_http_to_the_metrics_port_does_not_hurt_the_relay(
    metrics_net: LoopbackNet,
) -> None:
    relay = metrics_net.relays[2]
    assert relay.metrics_port is not None
    port = relay.metrics_port
    with trio.fail_after(30):
        answers = [
            await http_get(port, request)
            for request in (
                b"\x00\xff\xfe garbage\r\n\r\n",
                b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Long: "
                + b"a" * 20000
                + b"\r\n\r\n",
                b"GET /metrics HTTP/1.1\r\n\r\n",  # no Host
                b"POST /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
                b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
                b"GET /metr",  # truncated
                b"",  # nothing at all
            )
        ]
        head = await http_get(port, b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        still = await scrape(relay)
    statuses = [a.split(b"\r\n", 1)[0] for a in answers]
    assert statuses == [
        b"HTTP/1.1 400 ",
        b"HTTP/1.1 400 ",
        b"HTTP/1.1 400 ",
        b"HTTP/1.1 405 ",
        b"HTTP/1.1 404 ",
        b"HTTP/1.1 400 ",
        b"",
    ]
    assert head.startswith(b"HTTP/1.1 200 ")
    assert head.endswith(b"\r\n\r\n")  # headers only
    assert value(still, "circuits_created_total") >= 0
    # The relay still relays.
    from .test_network import _echo_session

    with trio.fail_after(30):
        _, rest = await trio.to_thread.run_sync(_echo_session, metrics_net, "127.0.0.1")
    assert rest.endswith(b"closed\n")


async def test_the_endpoint_bounds_slow_and_surplus_connections(
    nursery: trio.Nursery,
) -> None:
    collector = RelayCollector(RelayStats(), "lonely")

    async def start(timeout: float) -> int:
        port: int = await nursery.start(
            functools.partial(
                serve_metrics,
                TcpNetwork(),
                collector,
                "127.0.0.1",
                0,
                timeout=timeout,
            )
        )
        return port

    impatient, patient = await start(0.2), await start(60)
    with trio.fail_after(30):
        # A client that never sends a request is cut off after the timeout.
        async with await trio.open_tcp_stream("127.0.0.1", impatient) as silent:
            assert await silent.receive_some(100) == b""
        # Past MAX_CONNECTIONS at once, a new connection is closed unanswered.
        slots = [
            await trio.open_tcp_stream("127.0.0.1", patient)
            for _ in range(MAX_CONNECTIONS)
        ]
        await trio.testing.wait_all_tasks_blocked()
        async with await trio.open_tcp_stream("127.0.0.1", patient) as surplus:
            assert await surplus.receive_some(100) == b""
        for stream in slots:
            await stream.aclose()
        # Once they are gone, requests are answered again.
        for _ in range(POLLS):
            answer = await http_get(
                patient, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
            )
            if answer:
                break
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert b'hopchain_relay_build_info{nickname="lonely"' in answer


def _hopchain(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hopchain", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_public_metrics_address_needs_the_flag(tmp_path: Path) -> None:
    result = _hopchain(
        "relay",
        "--nickname",
        "r",
        "--address",
        "127.0.0.2",
        "--authority",
        f"127.0.0.1:7000={'ab' * 32}",
        "--data-dir",
        str(tmp_path / "keys"),
        "--metrics-port",
        "0",
        "--metrics-address",
        "0.0.0.0",
    )
    assert result.returncode == 2
    assert "--metrics-address 0.0.0.0 is not loopback" in result.stderr
    assert "--metrics-allow-public" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "keys").exists()  # refused before anything started


def test_relay_status_with_nothing_listening_says_so() -> None:
    with socket.socket() as unused:  # bound, never listening: refuses connects
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
        result = _hopchain("relay", "status", "--metrics", f"127.0.0.1:{port}")
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"hopchain relay status: error: nothing answers at 127.0.0.1:{port} "
        f"(connection refused); is the relay running with --metrics-port {port}?"
    )
