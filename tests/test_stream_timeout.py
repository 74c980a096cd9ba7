"""A relay that goes silent: the client retires the circuit a stream timed
out on, retries the stream on another circuit, and blames the guard only
when the guard itself stopped answering (``hopchain.client.attach``).

The network is a ``MemoryNetwork`` with the real authority, relays and
client, on trio's autojump clock: the timeouts pass in virtual time.
"""

import logging
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import trio
import trio.testing
from hopchain.client.circuits import CircuitManager, ClientCircuitHandle
from hopchain.client.node import ClientConfig, ClientNode
from hopchain.relay.authority import AuthorityNode
from hopchain.relay.dirclient import AuthorityAddress
from hopchain.relay.memnet import MemoryNetwork
from hopchain.relay.net import use_wall_clock
from hopchain.relay.node import RelayConfig, RelayNode

from hopchain.crypto.keys import IdentityKey, OnionKey
from hopchain.isolation import IsolationKey

EPOCH = 1_767_225_600.0
ORIGIN = "10.250.0.1"
ORIGIN_PORT = 80
RELAYS = 6
EXITS = (4, 5)
KEY = IsolationKey("api", b"alice")


def _now() -> float:
    """The nodes' wall clock (the fixture's ``use_wall_clock`` is not in
    force in the test's own task)."""
    return EPOCH + trio.current_time()


@dataclass
class _World:
    net: MemoryNetwork
    relays: dict[bytes, tuple[RelayNode, trio.CancelScope]]
    client: ClientNode
    manager: CircuitManager

    def running(self, identity: bytes) -> bool:
        """Whether the client's consensus says the relay is running."""
        return any(
            r.descriptor.identity == identity and "Running" in r.flags
            for r in self.client.consensus.relays
        )


async def _echo(stream: trio.abc.HalfCloseableStream) -> None:
    """The origin: answers each chunk with "echo " and the chunk."""
    async with stream:
        try:
            while data := await stream.receive_some(1024):
                await stream.send_all(b"echo " + data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass


async def _relay(
    nursery: trio.Nursery,
    net: MemoryNetwork,
    i: int,
    authority: AuthorityAddress,
    rng: random.Random,
) -> tuple[RelayNode, trio.CancelScope]:
    address = f"10.16.{i}.1"
    config = RelayConfig(
        nickname=f"r{i}",
        address=address,
        port=9001,
        authorities=[authority],
        exit=i in EXITS,
        test_network=True,
        bandwidth=1_000_000,
        country="DE",
    )
    node = RelayNode(
        config,
        IdentityKey(rng.randbytes(32)),
        OnionKey(rng.randbytes(32)),
        net.host(address),
    )
    scope = trio.CancelScope()

    async def serve(*, task_status: trio.TaskStatus[int]) -> None:
        with scope:
            await node.serve(task_status=task_status)

    await nursery.start(serve)
    return node, scope


@pytest.fixture
async def world() -> AsyncIterator[_World]:
    rng = random.Random(7)
    net = MemoryNetwork(lambda src, dst: 0.01)
    with use_wall_clock(lambda: EPOCH + trio.current_time()):
        async with trio.open_nursery() as nursery:
            authority = AuthorityNode(
                IdentityKey(rng.randbytes(32)),
                "10.0.0.1",
                7000,
                net.host("10.0.0.1"),
                test_network=True,
                test_interval=20.0,
            )
            await nursery.start(authority.serve)
            pinned = AuthorityAddress(
                "10.0.0.1", authority.port, authority.identity.public
            )
            relays = {}
            for i in range(RELAYS):
                node, scope = await _relay(nursery, net, i, pinned, rng)
                relays[node.identity.public] = (node, scope)
            for node, _ in relays.values():
                await node.published.wait()
            listeners = await net.host(ORIGIN).listen(ORIGIN, ORIGIN_PORT)
            nursery.start_soon(trio.serve_listeners, _echo, listeners)
            client = ClientNode(
                ClientConfig(
                    authorities=[pinned],
                    socks_port=None,
                    test_network=True,
                    predicted_circuits=0,
                ),
                net.host("10.100.0.1"),
                random.Random(8),
            )
            await nursery.start(client.serve)
            assert client.manager is not None
            yield _World(net, relays, client, client.manager)
            nursery.cancel_scope.cancel()


async def _round_trip(manager: CircuitManager) -> tuple[ClientCircuitHandle, float]:
    """Open a stream with KEY, check one echo, close it; the circuit used
    and how long opening took."""
    started = trio.current_time()
    handle, stream = await manager.open_stream(ORIGIN, ORIGIN_PORT, KEY)
    opened = trio.current_time() - started
    async with stream:
        await stream.send_all(b"ping")
        assert await stream.receive_some(100) == b"echo ping"
    manager.release(handle, stream)
    return handle, opened


async def test_a_vanished_exit_retires_the_circuit_and_the_stream_is_retried(
    world: _World,
    caplog: pytest.LogCaptureFixture,
    autojump_clock: trio.testing.MockClock,
) -> None:
    manager = world.manager
    with trio.fail_after(60):
        first, _ = await _round_trip(manager)
    guard, exit_ = first.path[0], first.exit
    for _ in range(100):  # the exit's END(DONE) is on its way (virtual time)
        if first.idle:
            break
        await trio.sleep(0.01)
    assert first.idle
    world.net.vanish(exit_.address)
    world.relays[exit_.identity][1].cancel()
    # The directory drops the silent exit within a few tests and fetches,
    # but the client's circuit through it stays within its dirtiness period.
    for _ in range(40):
        if not world.running(exit_.identity):
            break
        await trio.sleep(10)
    assert not world.running(exit_.identity)
    now = trio.current_time()
    assert manager.reuse.reusable(ORIGIN_PORT, KEY, now) is first

    timeout = manager.attacher.stream_timeout
    with (
        caplog.at_level(logging.INFO, logger="hopchain.client.attach"),
        trio.fail_after(timeout + 60),
    ):
        second, opened = await _round_trip(manager)
    assert second is not first
    assert opened >= timeout  # the first attempt waited for its timeout
    assert first not in list(manager.table)  # retired: no stream was left on it
    assert f"no CONNECTED within {timeout:g} s" in caplog.text
    # The guard answered the retry's CREATE: it is not blamed.
    assert guard.identity not in manager.guards.waiting(_now())
    with trio.fail_after(timeout):
        third, opened = await _round_trip(manager)
    assert third is second
    assert opened < timeout


class _Silent(trio.abc.HalfCloseableStream):
    """The client's end of a link whose guard went silent: what the client
    sends is lost and nothing more arrives; closing it closes the real one."""

    def __init__(self, inner: trio.abc.HalfCloseableStream) -> None:
        self._inner = inner

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await trio.lowlevel.checkpoint()

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async def send_eof(self) -> None:
        await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        await self._inner.aclose()


async def test_a_silent_guard_link_is_tested_abandoned_and_the_guard_marked_down(
    world: _World, autojump_clock: trio.testing.MockClock
) -> None:
    manager = world.manager
    with trio.fail_after(60):
        first, _ = await _round_trip(manager)
        # A clean circuit through the same guard, which a retry would take
        # if circuits on a silent link were reused.
        spare = await manager.build(ORIGIN_PORT)
    guard = first.path[0]
    assert spare.path[0] is guard
    (link,) = [link for link in manager.links if link.peer_identity == guard.identity]
    # The reader already waits on the real stream, which gets nothing once the
    # client's own cells are lost; later reads and every send use the wrapper.
    link.stream = _Silent(link.stream)

    timeout = manager.attacher.stream_timeout
    with trio.fail_after(timeout + manager.build_times.timeout + 60):
        second, opened = await _round_trip(manager)
    assert second.path[0].identity != guard.identity
    # One stream timeout, then the build's CREATE on the silent link timed out.
    assert opened >= timeout + manager.build_times.timeout
    assert link.closed
    assert not any(h.link is link for h in manager.table)
    assert not spare.is_open
    now = _now()
    assert manager.guards.waiting(now) == {guard.identity}
    assert guard.identity in manager.guards.preferred(now + 600)  # retried later
