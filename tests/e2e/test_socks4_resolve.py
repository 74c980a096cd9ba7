"""End to end: SOCKS4, SOCKS4a and Tor's RESOLVE extensions on the SOCKS port.

Apps are PySocks, curl and raw sockets; every name and address lookup is
answered by the test network's table (``LoopbackOnlyNetwork``), so no DNS
packet leaves the machine, and each test checks that only relays looked
anything up: the client never resolves.  The last section drives the relay
shell's RESOLVE handling directly with a fake link.
"""

import functools
import hashlib
import ipaddress
import logging
import os
import shutil
import socket

import pytest
import socks
import trio
import trio.testing
from hopchain.client.doctor import report
from hopchain.relay.circuit import Circuit
from hopchain.relay.node import RelayConfig, RelayNode

from hopchain.crypto import onion
from hopchain.crypto.keys import IdentityKey, OnionKey
from hopchain.crypto.onion import HopKeys
from hopchain.messages import (
    End,
    EndReason,
    RelayMessage,
    Resolve,
    Resolved,
    decode,
    encode,
)
from hopchain.relaycircuit import RelayCircuit
from hopchain.wire import Cell, CellCommand

from .conftest import LoopbackNet, LoopbackOnlyNetwork, seed

pytestmark = pytest.mark.trio

GREETING = b"\x05\x01\x00"


# --- helpers ---------------------------------------------------------------------


@pytest.fixture
def lookups(testnet: LoopbackNet, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the trio tasks that asked the network to resolve anything."""
    seen: list[str] = []
    network = testnet.network
    resolve, resolve_ptr = network.resolve, network.resolve_ptr

    async def recording_resolve(host: str, port: int) -> list[str]:
        seen.append(trio.lowlevel.current_task().name)
        return await resolve(host, port)

    async def recording_resolve_ptr(address: str) -> str:
        seen.append(trio.lowlevel.current_task().name)
        return await resolve_ptr(address)

    monkeypatch.setattr(network, "resolve", recording_resolve)
    monkeypatch.setattr(network, "resolve_ptr", recording_resolve_ptr)
    return seen


def assert_only_relays_resolved(lookups: list[str]) -> None:
    assert lookups, "nothing was resolved"
    assert all("relay.node" in name for name in lookups), lookups


def _socks4_echo(
    net: LoopbackNet, host: str, *, rdns: bool, user: str | None = None
) -> str:
    """ECHO through SOCKS4 (``rdns``: SOCKS4a); returns the peer the origin saw."""
    with socks.socksocket() as sock:
        sock.set_proxy(socks.SOCKS4, "127.0.0.1", net.socks_port, rdns, user)
        sock.settimeout(20)
        sock.connect((host, net.origin_port))
        sock.sendall(b"ECHO\nsocks4")
        sock.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    first, _, rest = data.partition(b"\n")
    assert rest == b"socks4closed\n"
    return first.decode().split()[1]


async def _exchange(net: LoopbackNet, payload: bytes) -> bytes:
    """Send a raw SOCKS request; everything the client answers until it closes."""
    stream = await trio.open_tcp_stream("127.0.0.1", net.socks_port)
    async with stream:
        await stream.send_all(payload)
        received = b""
        while data := await stream.receive_some(1024):
            received += data
        return received


def _resolve5(command: int, atyp: int, address: bytes) -> bytes:
    return GREETING + bytes([5, command, 0, atyp]) + address + b"\0\0"


def _name(text: str) -> bytes:
    return bytes([len(text)]) + text.encode()


def _requests(net: LoopbackNet) -> tuple[int, dict[str, int]]:
    """What ``hopchain doctor`` shows: requests by name, requests by IP."""
    stats = net.client.status()["stats"]
    assert isinstance(stats, dict)
    return stats["requests_by_name"], stats["requests_by_ip"]


# --- SOCKS4 and SOCKS4a --------------------------------------------------------------


async def test_pysocks_socks4a_name_is_resolved_by_the_exit(
    testnet: LoopbackNet, lookups: list[str]
) -> None:
    with trio.fail_after(30):
        peer = await trio.to_thread.run_sync(
            functools.partial(_socks4_echo, testnet, "localhost", rdns=True)
        )
    assert peer in testnet.exit_addresses
    assert _requests(testnet) == (1, {})
    assert_only_relays_resolved(lookups)


async def test_pysocks_plain_socks4_with_an_ip_is_served_warned_once_and_counted(
    testnet: LoopbackNet, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO), trio.fail_after(30):
        for _ in range(2):
            peer = await trio.to_thread.run_sync(
                functools.partial(_socks4_echo, testnet, "127.0.0.1", rdns=False)
            )
            assert peer in testnet.exit_addresses
    assert _requests(testnet) == (0, {"socks4": 2})
    assert "2 over socks4" in report(testnet.client.status())
    socks_records = [r for r in caplog.records if r.name == "hopchain.client.socks"]
    warnings = [r for r in socks_records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "DNS leak" in warnings[0].getMessage()
    # Never the destination in the log, at any level the operator sees.
    for record in socks_records:
        assert str(testnet.origin_port) not in record.getMessage()
        assert "127.0.0.1" not in record.getMessage()


async def test_socks4_user_id_isolates_circuits(testnet: LoopbackNet) -> None:
    manager = testnet.client.manager
    assert manager is not None

    def circuit_of(user: str) -> int:
        with socks.socksocket() as sock:
            sock.set_proxy(socks.SOCKS4, "127.0.0.1", testnet.socks_port, True, user)
            sock.settimeout(20)
            sock.connect(("localhost", testnet.origin_port))
            sock.sendall(b"ECHO\n")
            assert sock.recv(100).startswith(b"peer ")
            (circuit,) = trio.from_thread.run_sync(
                lambda: [c["id"] for c in manager.describe() if c["streams"]]
            )
        assert isinstance(circuit, int)
        return circuit

    with trio.fail_after(60):
        alice = await trio.to_thread.run_sync(circuit_of, "alice")
        bob = await trio.to_thread.run_sync(circuit_of, "bob")
        alice_again = await trio.to_thread.run_sync(circuit_of, "alice")
    assert alice != bob
    assert alice == alice_again


async def _http_origin(stream: trio.SocketStream) -> None:
    """Any HTTP request gets a page naming the peer address."""
    async with stream:
        head = b""
        with trio.move_on_after(10):
            while b"\r\n\r\n" not in head and len(head) < 65536:
                data = await stream.receive_some(65536)
                if not data:
                    return
                head += data
        body = f"peer={stream.socket.getpeername()[0]}\n".encode()
        await stream.send_all(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )


@pytest.fixture
def curl() -> str:
    path = shutil.which("curl")
    if path is None:
        pytest.skip("curl is not installed (apt-get install curl)")
    return path


@pytest.fixture
def clean_env() -> dict[str, str]:
    """The environment without proxy settings, so curl uses only the flag."""
    return {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}


@pytest.mark.parametrize(
    ("flag", "host", "by_name"),
    [("--socks4", "127.0.0.1", False), ("--socks4a", "localhost", True)],
)
async def test_curl_socks4(
    testnet: LoopbackNet,
    nursery: trio.Nursery,
    curl: str,
    clean_env: dict[str, str],
    lookups: list[str],
    flag: str,
    host: str,
    by_name: bool,
) -> None:
    listeners = await nursery.start(
        functools.partial(trio.serve_tcp, _http_origin, 0, host="127.0.0.1")
    )
    port = listeners[0].socket.getsockname()[1]
    argv = [
        curl,
        "-q",  # no .curlrc
        "-sS",
        "--max-time",
        "20",
        flag,
        f"127.0.0.1:{testnet.socks_port}",  # curl only ever talks to 127.0.0.1
        f"http://{host}:{port}/",
    ]
    with trio.fail_after(30):
        done = await trio.run_process(
            argv, capture_stdout=True, capture_stderr=True, env=clean_env, check=False
        )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    peer = done.stdout.decode().strip().removeprefix("peer=")
    assert peer in testnet.exit_addresses
    assert _requests(testnet) == ((1, {}) if by_name else (0, {"socks4": 1}))
    if by_name:
        assert_only_relays_resolved(lookups)


# --- RESOLVE and RESOLVE_PTR ----------------------------------------------------------


async def test_socks5_resolve_is_answered_by_the_exit(
    testnet: LoopbackNet, lookups: list[str]
) -> None:
    with trio.fail_after(30):
        reply = await _exchange(testnet, _resolve5(0xF0, 3, _name("localhost")))
    assert reply[:2] == b"\x05\x00"
    head, address = reply[2:6], reply[6:-2]
    assert head in (b"\x05\x00\x00\x01", b"\x05\x00\x00\x04")
    assert ipaddress.ip_address(address) in {
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    }
    assert reply[-2:] == b"\0\0"
    assert_only_relays_resolved(lookups)
    assert _requests(testnet) == (0, {})  # a RESOLVE is not a connection


async def test_socks5_resolve_ptr_is_answered_by_the_exit(
    testnet: LoopbackNet, lookups: list[str]
) -> None:
    with trio.fail_after(30):
        reply = await _exchange(testnet, _resolve5(0xF1, 1, bytes([127, 0, 0, 1])))
    assert reply == b"\x05\x00" + b"\x05\x00\x00\x03" + _name("localhost") + b"\0\0"
    assert_only_relays_resolved(lookups)


@pytest.mark.parametrize(
    ("command", "atyp", "address"),
    [
        pytest.param(0xF0, 3, _name("name.invalid"), id="resolve name.invalid"),
        pytest.param(0xF1, 1, bytes([127, 0, 0, 99]), id="ptr of an unnamed address"),
    ],
)
async def test_socks5_failed_resolve_is_host_unreachable(
    testnet: LoopbackNet, command: int, atyp: int, address: bytes
) -> None:
    with trio.fail_after(30):
        reply = await _exchange(testnet, _resolve5(command, atyp, address))
    assert reply == b"\x05\x00" + b"\x05\x04\x00\x01" + bytes(6)


async def test_a_resolve_the_exit_does_not_answer_times_out_at_both_ends(
    testnet: LoopbackNet, monkeypatch: pytest.MonkeyPatch
) -> None:
    manager = testnet.client.manager
    assert manager is not None
    monkeypatch.setattr(manager.attacher, "stream_timeout", 0.5)
    network = testnet.network
    resolve = network.resolve
    started, cancelled = trio.Event(), trio.Event()

    async def hanging_resolve(host: str, port: int) -> list[str]:
        if host == "hang.test":
            started.set()
            try:
                await trio.sleep_forever()
            finally:
                cancelled.set()
        return await resolve(host, port)

    monkeypatch.setattr(network, "resolve", hanging_resolve)
    with trio.fail_after(30):
        reply = await _exchange(testnet, _resolve5(0xF0, 3, _name("hang.test")))
        assert started.is_set()
        assert reply == b"\x05\x00" + b"\x05\x06\x00\x01" + bytes(6)  # TTL expired
    # The client's END(TIMEOUT) reached the exit, which dropped the lookup
    # (long before the exit's own 20 s deadline would have), on both
    # circuits the lookup was tried on.
    with trio.fail_after(5):
        await cancelled.wait()
        await trio.testing.wait_all_tasks_blocked()
    for relay in testnet.relays:
        for circuit in relay.circuits.by_prev.values():
            assert circuit.resolving == {}
            assert not any(s.resolve for s in circuit.core.streams.streams.values())
    for handle in manager.table:
        assert handle.waiting == {}
        assert handle.core.streams.streams == {}


async def test_resolve_of_an_address_answers_itself_without_a_lookup(
    testnet: LoopbackNet, lookups: list[str]
) -> None:
    with trio.fail_after(30):
        v4 = await _exchange(testnet, _resolve5(0xF0, 1, bytes([192, 0, 2, 1])))
        v6 = await _exchange(
            testnet, _resolve5(0xF0, 4, ipaddress.ip_address("2001:db8::1").packed)
        )
    assert v4 == b"\x05\x00\x05\x00\x00\x01\xc0\x00\x02\x01\0\0"
    assert v6[:6] == b"\x05\x00\x05\x00\x00\x04"
    assert lookups == []


async def test_socks4a_resolve_is_answered_by_the_exit(
    testnet: LoopbackNet, lookups: list[str]
) -> None:
    request = b"\x04\xf0\x00\x00\x00\x00\x00\x01" + b"\0" + b"localhost\0"
    with trio.fail_after(30):
        reply = await _exchange(testnet, request)
    assert reply == b"\x00\x5a\x00\x00\x7f\x00\x00\x01"
    assert_only_relays_resolved(lookups)


async def test_bad_socks4_requests_get_rejected_and_service_continues(
    testnet: LoopbackNet,
) -> None:
    rejected = b"\x00\x5b" + bytes(6)
    with trio.fail_after(30):
        bind = b"\x04\x02\x00\x50\x7f\x00\x00\x01\0"
        assert await _exchange(testnet, bind) == rejected
        long_user = b"\x04\x01\x00\x50\x7f\x00\x00\x01" + b"u" * 300
        assert await _exchange(testnet, long_user) == rejected
        refused = b"\x04\x01\x00\x50\x00\x00\x00\x01\0name.invalid\0"
        assert await _exchange(testnet, refused) == rejected
        peer = await trio.to_thread.run_sync(
            functools.partial(_socks4_echo, testnet, "localhost", rdns=True)
        )
    assert peer in testnet.exit_addresses


# --- the relay shell's RESOLVE bookkeeping ------------------------------------------


class FakeLink:
    """Records the cells a relay sends back toward the client."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []

    def send(self, circ_id: int, command: CellCommand, body: bytes) -> bool:
        if command is CellCommand.RELAY:
            self.bodies.append(body)
        return True


class TableNetwork(LoopbackOnlyNetwork):
    """The test network's table, with a lookup that can be made to hang."""

    def __init__(self) -> None:
        super().__init__()
        self.started = trio.Event()
        self.cancelled = trio.Event()
        self.hang = False

    async def resolve(self, host: str, port: int) -> list[str]:
        self.started.set()
        if self.hang:
            try:
                await trio.sleep_forever()
            finally:
                self.cancelled.set()
        return await super().resolve(host, port)


class OneHop:
    """A relay node with one circuit whose client side is raw onion calls."""

    def __init__(self, nursery: trio.Nursery, *, exit: bool) -> None:
        self.network = TableNetwork()
        config = RelayConfig(
            nickname="relay", address="127.0.0.8", exit=exit, test_network=True
        )
        self.node = RelayNode(
            config, IdentityKey(seed("r id")), OnionKey(seed("r onion")), self.network
        )
        self.node._nursery = nursery
        prk = hashlib.blake2b(b"one hop", digest_size=32).digest()
        self.client = [HopKeys.from_prk(prk)]
        self.link = FakeLink()
        core = RelayCircuit(HopKeys.from_prk(prk), seed("r id"), None)
        self.circuit = Circuit(core, self.link, 7)  # type: ignore[arg-type]

    def send(self, message: RelayMessage) -> None:
        body = onion.wrap_forward(self.client, encode(message))
        self.node._forward(self.circuit, Cell(7, CellCommand.RELAY, body))

    def replies(self) -> list[RelayMessage]:
        out = []
        for body in self.link.bodies:
            _, payload = onion.unwrap_backward(self.client, body)
            out.append(decode(payload))
        self.link.bodies.clear()
        return out


async def _settle() -> None:
    for _ in range(20):
        await trio.lowlevel.checkpoint()


async def test_a_non_exit_answers_resolve_with_exit_policy(
    nursery: trio.Nursery,
) -> None:
    hop = OneHop(nursery, exit=False)
    hop.send(Resolve(1, "localhost"))
    assert hop.replies() == [Resolved(1, (), EndReason.EXIT_POLICY)]
    assert hop.circuit.core.streams.get(1) is None
    assert not hop.network.started.is_set()


async def test_an_exit_answers_resolve_and_frees_the_stream(
    nursery: trio.Nursery,
) -> None:
    hop = OneHop(nursery, exit=True)
    with trio.fail_after(10):
        hop.send(Resolve(1, "localhost"))
        await _settle()
        hop.send(Resolve(2, "127.0.0.1", ptr=True))
        await _settle()
        hop.send(Resolve(3, "name.invalid"))
        await _settle()
    assert hop.replies() == [
        Resolved(1, ("127.0.0.1", "::1")),
        Resolved(2, ("localhost",)),
        Resolved(3, (), EndReason.RESOLVE_FAILED),
    ]
    assert hop.circuit.core.streams.streams == {}
    assert hop.circuit.resolving == {}
    assert hop.network.violations == []


async def test_end_cancels_a_pending_resolve(nursery: trio.Nursery) -> None:
    hop = OneHop(nursery, exit=True)
    hop.network.hang = True
    with trio.fail_after(10):
        hop.send(Resolve(1, "localhost"))
        await hop.network.started.wait()
        assert set(hop.circuit.resolving) == {1}
        hop.send(End(1, EndReason.TIMEOUT))
    with trio.fail_after(1):  # well before the exit's own 20 s timeout
        await hop.network.cancelled.wait()
        await _settle()
    assert hop.circuit.resolving == {}
    assert hop.circuit.core.streams.streams == {}
    assert hop.replies() == []


async def test_teardown_cancels_a_pending_resolve(nursery: trio.Nursery) -> None:
    hop = OneHop(nursery, exit=True)
    hop.network.hang = True
    with trio.fail_after(10):
        hop.send(Resolve(1, "localhost"))
        await hop.network.started.wait()
        hop.node.circuits.teardown(hop.circuit)
    with trio.fail_after(1):
        await hop.network.cancelled.wait()
        await _settle()
    assert hop.circuit.resolving == {}
    assert [m for m in hop.replies() if isinstance(m, Resolved)] == []
