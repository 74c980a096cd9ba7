"""A relay's life: onion key rotation, graceful shutdown, reload on SIGHUP.

The in-process tests drive ``RelayNode`` directly (``check_onion_keys`` with
a given time, ``shutdown``); the subprocess tests run ``hopchain relay
--config`` as an operator would and signal it.
"""

import logging
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
import trio.testing
from hopchain.client.api import HopchainClient, HopchainStream, connect
from hopchain.relay.daemon import RelayDaemon, load_keys
from hopchain.relay.keystore import OnionKeyFiles
from hopchain.relay.link import LINK_SETUP_ERRORS, initiate
from hopchain.relay.net import wall_clock
from hopchain.relay.node import RelayConfig, RelayNode
from hopchain.relay.status import parse, scrape

from hopchain.crypto import handshake
from hopchain.crypto.keys import OnionKey
from hopchain.directory import verify_descriptor
from hopchain.errors import PathSelectionError, StreamError
from hopchain.messages import EndReason
from hopchain.onionrotation import RotationPolicy
from hopchain.wire import Cell, CellCommand

from .conftest import LoopbackNet, LoopbackOnlyNetwork

pytestmark = pytest.mark.trio

DAY = 86400.0
RATE = 64 * 1024  # bytes/s, the bandwidth limit a reload sets


async def _link_handshake(node: RelayNode, onion: OnionKey) -> bool:
    """Whether a link made with ``onion`` (as an old consensus lists it)
    comes up, and a CREATE made with it gets a CREATED that verifies."""
    stream = await trio.open_tcp_stream("127.0.0.1", node.port)
    try:
        link = await initiate(stream, node.identity.public, onion.public)
    except LINK_SETUP_ERRORS:
        await trio.aclose_forcefully(stream)
        return False
    start = handshake.client_start_with_ephemeral(
        handshake.CIRCUIT_LABEL, node.identity.public, onion.public, os.urandom(32)
    )
    send, receive = trio.open_memory_channel[Cell](1)

    def on_cell(cell: Cell) -> None:
        send.send_nowait(cell)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(link.serve, on_cell)
        link.send(7, CellCommand.CREATE, start.message)
        cell = await receive.receive()
        nursery.cancel_scope.cancel()
    assert cell.command is CellCommand.CREATED
    handshake.client_finish(start, cell.body)  # AUTH proves the key was used
    return True


async def test_onion_keys_rotate_and_the_previous_one_is_answered_for_the_grace(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    policy = RotationPolicy(lifetime=28 * DAY, grace=7 * DAY)
    t0 = wall_clock()  # the node's own rotation loop reads the real clock
    identity, onion, rotation = load_keys(tmp_path, policy, now=t0)
    node = RelayNode(
        RelayConfig(nickname="r", address="127.0.0.1", test_network=True),
        identity,
        onion,
        LoopbackOnlyNetwork(),
        rotation=rotation,
    )
    with trio.fail_after(30):
        await nursery.start(node.serve)
        # Let the node's loop make its first check (nothing due) and sleep, so
        # the times given below are the only ones that count.
        await trio.testing.wait_all_tasks_blocked()
        assert node.check_onion_keys(t0 + DAY) == 27 * DAY
        assert node.check_onion_keys(t0 + 28 * DAY) == 7 * DAY
        new = node.onion_keys[0]
        assert new.public != onion.public
        assert [k.public for k in node.onion_keys] == [new.public, onion.public]
        files = OnionKeyFiles(tmp_path)
        assert (tmp_path / files.CURRENT).read_bytes() == new.secret
        assert (tmp_path / files.PREVIOUS).read_bytes() == onion.secret
        for name in (files.CURRENT, files.PREVIOUS, files.CREATED):
            assert (tmp_path / name).stat().st_mode & 0o777 == 0o600
        assert new.public in node.descriptor()  # published from now on
        assert await _link_handshake(node, onion)  # clients with the old consensus
        assert await _link_handshake(node, new)

        node.check_onion_keys(t0 + 35 * DAY)
        assert not (tmp_path / files.PREVIOUS).exists()
        assert not await _link_handshake(node, onion)
        assert await _link_handshake(node, new)

    # A restart finds the rotated key and its time.
    _, current, again = load_keys(tmp_path, policy, now=t0 + 36 * DAY)
    assert current.public == new.public
    assert again.previous is None
    assert again.created == t0 + 28 * DAY


async def _read_all(stream: HopchainStream) -> bytes:
    data = b""
    while chunk := await stream.receive_some():
        data += chunk
    return data


async def _echo_until(stream: HopchainStream, wanted: bytes) -> bytes:
    data = b""
    while not data.endswith(wanted):
        chunk = await stream.receive_some()
        assert chunk, f"EOF before {wanted!r}: {data!r}"
        data += chunk
    return data


@asynccontextmanager
async def _stream_via(
    testnet: LoopbackNet, country: str
) -> AsyncIterator[tuple[RelayNode, HopchainClient, HopchainStream]]:
    """A client of ``testnet`` and a stream to the origin through the exit
    in ``country``; the stream is the caller's to close."""
    exit_node = next(r for r in testnet.relays if r.config.country == country)
    async with connect(
        [testnet.authority_address], test_network=True, network=testnet.network
    ) as client:
        stream = await client.open_stream(
            "127.0.0.1", testnet.origin_port, exit_countries=[country]
        )
        yield exit_node, client, stream


async def test_shutdown_ends_live_streams_in_order_and_stops(
    testnet: LoopbackNet,
) -> None:
    with trio.fail_after(60):
        async with _stream_via(testnet, "DE") as (exit_node, _, stream):
            async with stream:
                await stream.send_all(b"ECHO\nbefore")
                seen = await _echo_until(stream, b"before")
                assert seen.startswith(f"peer {exit_node.config.address}".encode())
                exit_node.shutdown(grace=0.0)
                # An orderly END: EOF, not a broken stream.
                assert await _read_all(stream) == b""
            await exit_node.stopped.wait()
    assert not exit_node.circuits.by_prev
    with pytest.raises(OSError, match="failed"):
        await trio.open_tcp_stream(exit_node.config.address, exit_node.port)


async def test_draining_relay_refuses_new_circuits_but_keeps_its_own(
    testnet: LoopbackNet,
) -> None:
    with trio.fail_after(60):
        async with (
            _stream_via(testnet, "NL") as (exit_node, client, stream),
            stream,
        ):
            await stream.send_all(b"ECHO\none")
            await _echo_until(stream, b"one")
            exit_node.shutdown(grace=3600.0)
            await stream.send_all(b"two")  # the circuit lives on
            await _echo_until(stream, b"two")
            with pytest.raises((StreamError, PathSelectionError)):
                await client.open_stream(
                    "127.0.0.1", testnet.origin_port, exit_countries=["NL"]
                )


# --- the real command, signalled -------------------------------------------------


def _hopchain(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hopchain", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )


class _Relay:
    """A ``hopchain relay`` child process and what it wrote on stderr."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.log = b""

    async def wait_for_log(self, pattern: str) -> None:
        assert self.process.stderr is not None
        while not re.search(pattern.encode(), self.log):
            chunk = await self.process.stderr.receive_some()
            assert chunk, f"relay exited without logging {pattern!r}:\n{self.log!r}"
            self.log += chunk

    async def ready(self) -> str:
        assert self.process.stdout is not None
        line = b""
        while not line.endswith(b"\n"):
            chunk = await self.process.stdout.receive_some(1)
            assert chunk, f"relay exited before ready:\n{self.log!r}"
            line += chunk
        return line.decode()


@asynccontextmanager
async def _relay_process(config: Path) -> AsyncIterator[_Relay]:
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "hopchain", "relay", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        yield _Relay(process)
    finally:
        if process.returncode is None:
            process.kill()  # only on failure: the tests stop it by signal
        with trio.move_on_after(10):
            await process.wait()


def _init(tmp_path: Path, net: LoopbackNet, grace: str, *more: str) -> Path:
    data_dir = tmp_path / "relay"
    _hopchain(
        "relay",
        "init",
        "--data-dir",
        str(data_dir),
        "--nickname",
        "sub",
        "--address",
        "127.0.0.20",
        "--port",
        "0",
        "--authority",
        str(net.authority_address),
        "--exit",
        "--exit-ports",
        "1-65535",
        "--test-network",
        "--country",
        "ZZ",
        "--shutdown-grace",
        grace,
        *more,
    )
    return data_dir / "relay.toml"


async def _bandwidth_hits(relay: _Relay) -> float:
    """The relay's ``limit_hits_total{limit="bandwidth"}``: reads that waited
    for the bandwidth bucket."""
    where = r"metrics on http://127\.0\.0\.1:(\d+)/metrics"  # logged at the start
    await relay.wait_for_log(where)
    match = re.search(where.encode(), relay.log)
    assert match is not None
    text = await scrape(LoopbackOnlyNetwork(), "127.0.0.1", int(match.group(1)))
    reading = parse(text, wall_clock())
    return reading.total("hopchain_relay_limit_hits_total", limit="bandwidth")


async def test_sighup_reloads_for_new_streams_and_sigterm_ends_streams_in_order(
    testnet: LoopbackNet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _init(tmp_path, testnet, "0s", "--metrics-port", "0")
    republished = trio.Event()
    publish = testnet.authority._publish

    async def recording_publish(raw: bytes) -> None:
        await publish(raw)
        desc = verify_descriptor(raw, wall_clock()).descriptor
        if desc.nickname == "sub" and desc.exit_ports == ((1, 1000),):
            assert desc.bandwidth == RATE  # the advertised bandwidth follows
            republished.set()

    monkeypatch.setattr(testnet.authority, "_publish", recording_publish)
    async with _relay_process(config) as relay:
        with trio.fail_after(90):
            assert (await relay.ready()).startswith("ready 127.0.0.20:")
            async with connect(
                [testnet.authority_address], test_network=True, network=testnet.network
            ) as client:
                live = await client.open_stream(
                    "127.0.0.1", testnet.origin_port, exit_countries=["ZZ"]
                )
                await live.send_all(b"ECHO\nbefore")
                await _echo_until(live, b"before")
                assert await _bandwidth_hits(relay) == 0  # unlimited

                text = config.read_text()
                config.write_text(
                    text.replace('exit_ports = "1-65535"', 'exit_ports = "1-1000"')
                    + f"bandwidth_rate = {RATE}\n"
                )
                relay.process.send_signal(signal.SIGHUP)
                await relay.wait_for_log("reloaded: exit_policy, bandwidth, limits")
                assert b"takes a restart" not in relay.log
                await republished.wait()  # the new policy's ports, at once
                with pytest.raises((StreamError, PathSelectionError)) as refused:
                    await client.open_stream(
                        "127.0.0.1", testnet.origin_port, exit_countries=["ZZ"]
                    )
                if isinstance(refused.value, StreamError):
                    assert refused.value.reason == EndReason.EXIT_POLICY
                # The stream outlived the reload, and its bytes now pass the
                # new bandwidth bucket: more than a burst makes reads wait.
                burst = b"x" * (2 * RATE)
                await live.send_all(burst + b"after")
                await _echo_until(live, burst + b"after")
                assert await _bandwidth_hits(relay) > 0

                relay.process.send_signal(signal.SIGTERM)
                assert await _read_all(live) == b""  # END, not a broken stream
                await live.aclose()
            assert await relay.process.wait() == 0
            await relay.wait_for_log("stopped")
    assert "Traceback" not in relay.log.decode()


async def test_a_second_sigterm_stops_at_once(
    testnet: LoopbackNet, tmp_path: Path
) -> None:
    config = _init(tmp_path, testnet, grace="1h")
    async with _relay_process(config) as relay:
        with trio.fail_after(90):
            await relay.ready()
            async with connect(
                [testnet.authority_address], test_network=True, network=testnet.network
            ) as client:
                live = await client.open_stream(
                    "127.0.0.1", testnet.origin_port, exit_countries=["ZZ"]
                )
                await live.send_all(b"ECHO\nx")
                await _echo_until(live, b"x")
                relay.process.send_signal(signal.SIGTERM)
                await relay.wait_for_log(r"\d+ circuits may finish within 3600 s")
                relay.process.send_signal(signal.SIGTERM)
                await relay.wait_for_log(r"stopping \(SIGTERM\)")
                assert await relay.process.wait() == 0
                await live.aclose()


def _has_ipv6_loopback() -> bool:
    import socket

    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback")
async def test_a_relay_listens_on_and_publishes_both_addresses(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    identity, onion, _ = load_keys(tmp_path, RotationPolicy(), now=wall_clock())
    config = RelayConfig(
        nickname="r", address="127.0.0.1", ipv6_address="::1", test_network=True
    )
    node = RelayNode(config, identity, onion, LoopbackOnlyNetwork())
    with trio.fail_after(30):
        await nursery.start(node.serve)
        for host in ("127.0.0.1", "::1"):
            stream = await trio.open_tcp_stream(host, node.port)
            link = await initiate(stream, identity.public, onion.public)
            await link.aclose()
    assert b"::1" in node.descriptor()


def exit_ports(daemon: RelayDaemon) -> tuple[tuple[int, int], ...]:
    """The port summary of the exit policy the daemon's relay applies."""
    policy = daemon.node.config.exit_policy
    assert policy is not None
    return tuple(policy.summary())


async def test_reload_applies_reloadable_fields_and_refuses_a_broken_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from hopchain.relay.daemon import RelayDaemon

    from hopchain import cli

    key = "ab" * 32
    config = tmp_path / "relay.toml"
    good = (
        f'data_dir = "keys"\nnickname = "r1"\naddress = "127.0.0.1"\n'
        f'authority = ["127.0.0.1:7000={key}"]\nexit = true\n'
    )
    config.write_text(good + 'exit_ports = "80,443"\n')
    daemon = RelayDaemon(
        lambda: cli._relay_arguments(["relay", "--config", str(config)])
    )
    assert exit_ports(daemon) == ((80, 80), (443, 443))
    assert (tmp_path / "keys" / "identity.key").exists()  # relative to the file

    config.write_text(good + 'exit_ports = "80,443,"\n')
    with caplog.at_level("INFO"):
        daemon.reload()
    assert "reload refused, nothing changed" in caplog.text
    assert "line 6: exit_ports: bad port range" in caplog.text
    assert exit_ports(daemon) == ((80, 80), (443, 443))

    caplog.clear()
    config.write_text(good.replace("r1", "r2") + 'exit_ports = "443"\nport = 1\n')
    with caplog.at_level("INFO"):
        daemon.reload()
    assert exit_ports(daemon) == ((443, 443),)
    assert daemon.node.config.nickname == "r1"  # needs a restart
    assert daemon.node.config.port == 9001
    assert "reload: nickname, port changed; that takes a restart" in caplog.text
    assert "reloaded: exit_policy" in caplog.text

    # Every reloadable option at once: applied, and no restart warning.
    caplog.clear()
    rules = tmp_path / "policy.txt"
    rules.write_text("accept *:8080\nreject *:*\n")
    config.write_text(
        good
        + 'exit_policy_file = "policy.txt"\nbandwidth_rate = "1M"\n'
        + "max_queued_bytes = 8388608\nmax_creates_burst = 5\n"
        + 'accounting_max = "1G"\naccounting_period = "day"\n'
        + 'handshake_timeout = 3\nshutdown_grace = "2m"\nlog_level = "debug"\n'
        + "bandwidth = 5000000\n"
    )
    with caplog.at_level("INFO"):
        daemon.reload()
        assert logging.getLogger().level == logging.DEBUG
    assert "takes a restart" not in caplog.text
    assert "reloaded: exit_policy, bandwidth, limits" in caplog.text
    assert exit_ports(daemon) == ((8080, 8080),)
    limits = daemon.node.limits.config
    assert (limits.bandwidth_rate, limits.max_queued_bytes) == (1 << 20, 8 << 20)
    assert (limits.creates_burst, limits.handshake_timeout) == (5, 3.0)
    assert (limits.accounting_max, limits.accounting_period) == (1 << 30, "day")
    assert daemon.node.limits.budget.cap == 8 << 20
    assert daemon.node.config.bandwidth == 1 << 20  # lowered to the rate
    assert daemon.grace == 120.0

    # The file changed under the same option: reloaded too.
    caplog.clear()
    rules.write_text("accept *:8443\nreject *:*\n")
    with caplog.at_level("INFO"):
        daemon.reload()
    assert exit_ports(daemon) == ((8443, 8443),)
    assert "reloaded: exit_policy" in caplog.text
    assert "takes a restart" not in caplog.text
