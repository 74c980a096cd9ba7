"""A whole hopchain network in the test process, on loopback addresses.

One authority on 127.0.0.1, five relays on 127.0.0.2-6 (the last two are
exits) and a client with its SOCKS5 port, plus an *origin* server that tells
each connection which peer address it saw.  The origin speaks a tiny line
protocol so tests can check every byte:

    ECHO\\n      -> "peer <ip>\\n", then echoes; on EOF sends "closed\\n" and closes
    BYTES <n>\\n -> n bytes of ``pattern(n)``, then closes
"""

import errno
import functools
import hashlib
import ipaddress
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import pytest
import trio
from hopchain.client.circuits import CircuitManager
from hopchain.client.handle import ClientCircuitHandle
from hopchain.client.node import ClientConfig, ClientNode
from hopchain.relay.authority import AuthorityNode
from hopchain.relay.dirclient import AuthorityAddress
from hopchain.relay.net import BufferedReader, TcpNetwork
from hopchain.relay.node import RelayConfig, RelayNode

from hopchain.crypto.keys import IdentityKey, OnionKey
from hopchain.isolation import IsolationKey

RELAYS = 5
EXITS = 2
COUNTRIES = ["SE", "FR", "US", "DE", "NL"]  # declared; the exits are DE and NL


class LoopbackOnlyNetwork(TcpNetwork):
    """TCP for the test network that cannot reach anything off this machine.

    Every node of the test network uses it: connections go only to
    127.0.0.0/8 and ::1, and names (and, for reverse lookups, addresses)
    resolve from a local table, never through a DNS server.  Anything else
    is refused *and* recorded, and ``_stays_on_loopback`` fails the test
    that made the network, so a bug (or a browser's background request
    through the proxy) cannot send a packet elsewhere unnoticed.
    """

    NAMES: ClassVar[dict[str, list[str]]] = {"localhost": ["127.0.0.1", "::1"]}
    PTR_NAMES: ClassVar[dict[str, str]] = {"127.0.0.1": "localhost"}
    made: ClassVar[list["LoopbackOnlyNetwork"]] = []  # this test's, for the check

    def __init__(self) -> None:
        self.violations: list[str] = []
        LoopbackOnlyNetwork.made.append(self)

    async def connect(
        self, host: str, port: int, *, local_address: str | None = None
    ) -> trio.abc.HalfCloseableStream:
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            self.violations.append(f"connect {host}:{port}")
            raise OSError(errno.ECONNREFUSED, f"test network: {host} is off limits")
        return await super().connect(host, port, local_address=local_address)

    async def resolve(self, host: str, port: int) -> list[str]:
        if host in self.NAMES:
            return self.NAMES[host]
        if host.endswith(".invalid"):  # RFC 6761: never resolves, anywhere
            raise OSError(-2, f"{host} does not resolve")
        try:
            ipaddress.ip_address(host)
        except ValueError:
            self.violations.append(f"resolve {host}")
            raise OSError(
                -2, f"test network resolves no outside names: {host}"
            ) from None
        return [host]

    async def resolve_ptr(self, address: str) -> str:
        if address in self.PTR_NAMES:
            return self.PTR_NAMES[address]
        if not ipaddress.ip_address(address).is_loopback:
            self.violations.append(f"resolve_ptr {address}")
        raise OSError(-2, f"test network has no name for {address}")


@pytest.fixture(autouse=True)
def _stays_on_loopback() -> Iterator[None]:
    """Fail any test whose test networks tried to leave loopback, however
    it made them (``testnet``, ``start_testnet`` or directly)."""
    LoopbackOnlyNetwork.made.clear()
    yield
    violations = [v for n in LoopbackOnlyNetwork.made for v in n.violations]
    LoopbackOnlyNetwork.made.clear()
    assert violations == [], "the test network tried to leave loopback"


def seed(label: str) -> bytes:
    """A deterministic 32-byte secret for test keys."""
    return hashlib.blake2b(label.encode(), digest_size=32).digest()


def pattern(n: int) -> bytes:
    """The origin's deterministic body of n bytes."""
    block = hashlib.sha256(b"hopchain origin").digest() * 2048
    return (block * (n // len(block) + 1))[:n]


async def _origin_handler(stream: trio.SocketStream) -> None:
    async with stream:
        reader = BufferedReader(stream)
        line = b""
        try:
            while not line.endswith(b"\n") and len(line) < 100:
                line += await reader.read_exactly(1)
        except EOFError:
            return  # the client connected and left without a request
        command = line.decode().split()
        if command[0] == "ECHO":
            peer = stream.socket.getpeername()[0]
            await stream.send_all(f"peer {peer}\n".encode())
            pending = reader.take_buffered()
            if pending:
                await stream.send_all(pending)
            while data := await stream.receive_some(65536):
                await stream.send_all(data)
            await stream.send_all(b"closed\n")
        elif command[0] == "BYTES":
            body = pattern(int(command[1]))
            for i in range(0, len(body), 1 << 20):
                await stream.send_all(body[i : i + (1 << 20)])


async def echo_once(
    manager: CircuitManager, port: int, isolation: IsolationKey | None = None
) -> ClientCircuitHandle:
    """One ECHO stream to the origin on 127.0.0.1:``port``: check that the
    origin answers, close and release the stream; the circuit it took."""
    handle, stream = await manager.open_stream("127.0.0.1", port, isolation)
    async with stream:
        await stream.send_all(b"ECHO\n")
        assert (await stream.receive_some(100)).startswith(b"peer ")
    manager.release(handle, stream)
    return handle


@dataclass
class LoopbackNet:
    """Handles on a running in-process network."""

    authority: AuthorityNode
    relays: list[RelayNode]
    client: ClientNode
    origin_port: int
    network: LoopbackOnlyNetwork

    @property
    def socks_port(self) -> int:
        return self.client.socks_port

    @property
    def exit_addresses(self) -> set[str]:
        return {r.config.address for r in self.relays if r.config.exit}

    @property
    def authority_address(self) -> AuthorityAddress:
        return AuthorityAddress(
            "127.0.0.1", self.authority.port, self.authority.identity.public
        )


async def start_testnet(
    nursery: trio.Nursery,
    relay_options: dict[str, Any] | None = None,
    **client_options: Any,
) -> LoopbackNet:
    """Start authority, relays, origin and client; return when SOCKS is up.

    ``relay_options`` are extra ``RelayConfig`` fields for every relay;
    ``client_options`` are extra ``ClientConfig`` fields (socks, data_dir...).
    """
    network = LoopbackOnlyNetwork()
    authority = AuthorityNode(
        IdentityKey(seed("authority")), "127.0.0.1", 0, network, test_network=True
    )
    await nursery.start(authority.serve)
    pinned = AuthorityAddress("127.0.0.1", authority.port, authority.identity.public)
    relays = []
    for i in range(RELAYS):
        config = RelayConfig(
            nickname=f"relay{i}",
            address=f"127.0.0.{2 + i}",
            authorities=[pinned],
            exit=i >= RELAYS - EXITS,
            test_network=True,
            country=COUNTRIES[i],
            **(relay_options or {}),
        )
        node = RelayNode(
            config, IdentityKey(seed(f"id{i}")), OnionKey(seed(f"onion{i}")), network
        )
        await nursery.start(node.serve)
        relays.append(node)
    for node in relays:
        await node.published.wait()
    origin = await nursery.start(
        functools.partial(trio.serve_tcp, _origin_handler, 0, host="127.0.0.1")
    )
    origin_port = origin[0].socket.getsockname()[1]
    client = ClientNode(
        ClientConfig(
            authorities=[pinned],
            socks_port=0,
            test_network=True,
            bootstrap_timeout=30,
            **client_options,
        ),
        network,
        random.Random(1),
    )
    await nursery.start(client.serve)
    return LoopbackNet(authority, relays, client, origin_port, network)


@pytest.fixture
async def testnet(nursery: trio.Nursery) -> LoopbackNet:
    with trio.fail_after(60):
        return await start_testnet(nursery)
