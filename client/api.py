"""The typed Python API: hopchain streams for trio programs.

The same code path as the SOCKS port (``CircuitManager.open_stream``), without
a listening socket::

    import trio
    from hopchain.client.api import connect

    async def main() -> None:
        authority = "127.0.0.1:7000=<authority key>"
        async with connect([authority], test_network=True) as net:
            stream = await net.open_stream("example.com", 80, isolation="alice")
            async with stream:
                await stream.send_all(b"HEAD / HTTP/1.0\\r\\n\\r\\n")
                print(await stream.receive_some())

    trio.run(main)

Streams opened with different ``isolation`` strings never share a circuit
(like different SOCKS credentials); the host name is resolved by the exit.
"""

import random
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager

import trio
from hopchain.client.node import ClientConfig, ClientNode
from hopchain.relay.dirclient import AuthorityAddress
from hopchain.relay.net import Network, TcpNetwork
from hopchain.relay.stream import CircuitStream

from hopchain.isolation import IsolationRules, isolation_key


class HopchainStream(trio.abc.HalfCloseableStream):
    """A byte stream to a destination through a circuit.

    Closing it ends the stream on the circuit and releases it.
    """

    def __init__(self, stream: CircuitStream, release: Callable[[], None]) -> None:
        self._stream = stream
        self._release: Callable[[], None] | None = release

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Send all of ``data`` (waits for flow-control credit)."""
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        """Return when ``send_all`` would not have to wait for credit."""
        await self._stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """Bytes from the destination; b"" at its end of stream."""
        return await self._stream.receive_some(max_bytes)

    async def send_eof(self) -> None:
        """Half-close: the destination sees end of stream, and can still send."""
        await self._stream.send_eof()

    async def aclose(self) -> None:
        """Close the stream."""
        try:
            await self._stream.aclose()
        finally:
            if self._release is not None:
                self._release()
                self._release = None


class HopchainClient:
    """A running client without listening ports (see ``connect``)."""

    def __init__(self, node: ClientNode) -> None:
        self._node = node

    async def open_stream(
        self,
        host: str,
        port: int,
        *,
        isolation: str | None = None,
        exit_countries: Iterable[str] = (),
        exclude_exit_countries: Iterable[str] = (),
    ) -> HopchainStream:
        """A stream to host:port through the network.

        Args:
            host: a name (resolved by the exit) or an IP address.
            port: the destination port.
            isolation: streams with different values never share a circuit.
            exit_countries: two-letter codes; if given, the exit must be in
                one of them (strict: no exit there is a PathSelectionError).
            exclude_exit_countries: the exit must not be in any of these.

        Raises:
            StreamError: the exit refused or could not connect (``.reason``).
            CircuitError, DirectoryError, PathSelectionError: no circuit.
        """
        manager = self._node.manager
        assert manager is not None
        key = isolation_key(
            IsolationRules(),
            listener="api",
            host=host,
            port=port,
            username=None if isolation is None else isolation.encode(),
            exit_countries=frozenset(exit_countries),
            exclude_exit_countries=frozenset(exclude_exit_countries),
        )
        handle, stream = await manager.open_stream(host, port, key)
        return HopchainStream(stream, lambda: manager.release(handle, stream))

    def newnym(self) -> None:
        """New streams use new circuits from now on."""
        manager = self._node.manager
        assert manager is not None
        manager.newnym()

    def status(self) -> dict[str, object]:
        """The same status ``hopchain doctor`` shows."""
        return self._node.status()


@asynccontextmanager
async def connect(
    authorities: Sequence[str | AuthorityAddress],
    *,
    hops: int = 3,
    test_network: bool = False,
    network: Network | None = None,
    rng: random.Random | None = None,
) -> AsyncIterator[HopchainClient]:
    """Bootstrap a client for this block: a verified consensus, and a first
    circuit when one can be built (a failure there is logged, and streams
    then build their own).

    Args:
        authorities: pinned authorities, as ``HOST:PORT=HEXKEY`` or parsed.
        hops: circuit length, 1..8.
        test_network: allow relays in one subnet (loopback test networks).
        network: the transport (default: real TCP).
        rng: path-selection randomness (default: ``random.SystemRandom()``).

    Raises:
        ConfigError: a malformed authority.
        DirectoryError: no valid consensus could be fetched.
    """
    parsed = [
        a if isinstance(a, AuthorityAddress) else AuthorityAddress.parse(a)
        for a in authorities
    ]
    node = ClientNode(
        ClientConfig(
            authorities=parsed, socks_port=None, hops=hops, test_network=test_network
        ),
        network or TcpNetwork(),
        rng or random.SystemRandom(),
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(node.serve)
        try:
            yield HopchainClient(node)
        finally:
            nursery.cancel_scope.cancel()
