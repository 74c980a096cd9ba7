"""MemoryNetwork: latency, bandwidth, EOF, resets and refusals in virtual time.

Every test runs on trio's autojump clock, so the times asserted are the
model's, exactly, and no wall time is spent waiting.
"""

import errno
import socket

import pytest
import trio
import trio.testing
from hopchain.relay.memnet import MemoryHost, MemoryNetwork
from hopchain.relay.net import bound_port, peer_address, use_wall_clock, wall_clock

LATENCY = 0.05


def _pair(
    up_rate: float = float("inf"),
) -> tuple[MemoryNetwork, MemoryHost, MemoryHost]:
    world = MemoryNetwork(lambda src, dst: LATENCY)
    return world, world.host("10.0.0.1", up_rate=up_rate), world.host("10.0.0.2")


async def _accept_one(
    server: MemoryHost, port: int = 80
) -> tuple[trio.abc.Listener[trio.abc.HalfCloseableStream], int]:
    listeners = await server.listen(server.address, port)
    return listeners[0], bound_port(listeners)


async def test_connect_takes_a_round_trip_and_data_one_way(
    autojump_clock: trio.testing.MockClock,
) -> None:
    _, client, server = _pair()
    listener, port = await _accept_one(server)
    start = trio.current_time()
    stream = await client.connect(server.address, port)
    assert trio.current_time() - start == pytest.approx(2 * LATENCY)
    accepted = await listener.accept()
    sent_at = trio.current_time()
    await stream.send_all(b"hello")
    assert await accepted.receive_some(100) == b"hello"
    assert trio.current_time() - sent_at == pytest.approx(LATENCY)


async def test_upstream_rate_spaces_out_sends(
    autojump_clock: trio.testing.MockClock,
) -> None:
    _, client, server = _pair(up_rate=1000.0)
    listener, port = await _accept_one(server)
    stream = await client.connect(server.address, port)
    accepted = await listener.accept()
    start = trio.current_time()
    await stream.send_all(b"x" * 500)
    assert trio.current_time() - start == pytest.approx(0.5)
    await stream.send_all(b"y" * 500)
    assert trio.current_time() - start == pytest.approx(1.0)
    received = b""
    while len(received) < 1000:
        received += await accepted.receive_some(10_000)
    assert received == b"x" * 500 + b"y" * 500
    assert trio.current_time() - start == pytest.approx(1.0 + LATENCY)


async def test_eof_half_close_and_close(autojump_clock: trio.testing.MockClock) -> None:
    _, client, server = _pair()
    listener, port = await _accept_one(server)
    stream = await client.connect(server.address, port)
    accepted = await listener.accept()
    await stream.send_all(b"last")
    await stream.send_eof()
    assert await accepted.receive_some(2) == b"la"
    assert await accepted.receive_some(10) == b"st"
    assert await accepted.receive_some(10) == b""
    assert await accepted.receive_some(10) == b""
    await accepted.send_all(b"still open")
    assert await stream.receive_some(100) == b"still open"
    with pytest.raises(trio.ClosedResourceError):
        await stream.send_all(b"after eof")
    await stream.aclose()
    with pytest.raises(trio.BrokenResourceError):
        await accepted.send_all(b"to a closed peer")


async def test_refused_unknown_and_wrong_local_address(
    autojump_clock: trio.testing.MockClock,
) -> None:
    _, client, server = _pair()
    start = trio.current_time()
    with pytest.raises(ConnectionRefusedError):
        await client.connect(server.address, 80)
    assert trio.current_time() - start == pytest.approx(2 * LATENCY)
    with pytest.raises(OSError, match="no route") as unknown:
        await client.connect("10.9.9.9", 80)
    assert unknown.value.errno == errno.EHOSTUNREACH
    with pytest.raises(OSError, match="not this host"):
        await client.connect(server.address, 80, local_address="10.0.0.7")


async def test_kill_resets_streams_and_refuses_connects(
    autojump_clock: trio.testing.MockClock,
) -> None:
    world, client, server = _pair()
    listener, port = await _accept_one(server)
    stream = await client.connect(server.address, port)
    accepted = await listener.accept()

    async def read() -> None:
        with pytest.raises(trio.BrokenResourceError):
            await stream.receive_some(10)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read)
        await trio.testing.wait_all_tasks_blocked()  # the reader is waiting
        world.kill(server.address)
    with pytest.raises(trio.BrokenResourceError):
        await accepted.send_all(b"x")
    with pytest.raises(ConnectionRefusedError):
        await client.connect(server.address, port)
    world.revive(server.address)
    listener, port = await _accept_one(server, port)
    await client.connect(server.address, port)


async def test_listen_ports_and_names(autojump_clock: trio.testing.MockClock) -> None:
    world, client, server = _pair()
    first = bound_port(await server.listen(server.address, 0))
    second = bound_port(await server.listen("0.0.0.0", 0))
    assert first != second
    with pytest.raises(OSError, match="in use"):
        await server.listen(server.address, first)
    with pytest.raises(OSError, match="not this host"):
        await server.listen("10.0.0.1", 0)
    world.add_name("Origin.sim", [server.address])
    assert await client.resolve("origin.sim", 80) == [server.address]
    assert await client.resolve("10.0.0.2", 80) == ["10.0.0.2"]
    assert await client.resolve_ptr(server.address) == "origin.sim"
    with pytest.raises(socket.gaierror):
        await client.resolve("nowhere.sim", 80)
    with pytest.raises(socket.gaierror):
        await client.resolve_ptr("10.0.0.1")


def test_host_checks() -> None:
    world = MemoryNetwork()
    world.host("10.0.0.1")
    with pytest.raises(ValueError, match="already exists"):
        world.host("10.0.0.1")
    with pytest.raises(ValueError, match="positive"):
        world.host("10.0.0.2", up_rate=0)
    with pytest.raises(KeyError):
        world.kill("10.0.0.3")


async def test_wall_clock_follows_an_injected_clock(
    autojump_clock: trio.testing.MockClock,
) -> None:
    real = wall_clock()
    with use_wall_clock(lambda: 1000.0 + trio.current_time()):
        await trio.sleep(5)
        seen: list[float] = []

        async def child() -> None:
            seen.append(wall_clock())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(child)
        assert seen == [pytest.approx(1000.0 + trio.current_time())]
    assert wall_clock() >= real


async def test_vanished_host_loses_data_and_never_answers(
    autojump_clock: trio.testing.MockClock,
) -> None:
    world, client, server = _pair()
    listener, port = await _accept_one(server)
    stream = await client.connect(server.address, port)
    accepted = await listener.accept()
    world.vanish(server.address)
    await stream.send_all(b"into the void")  # leaves the client's upstream
    await accepted.aclose()  # the vanished side's close sends nothing
    with trio.move_on_after(30) as waited:
        await stream.receive_some(10)
    assert waited.cancelled_caught  # no data, no EOF, no reset
    start = trio.current_time()
    with trio.move_on_after(10) as connecting:
        await client.connect(server.address, port)
    assert connecting.cancelled_caught
    assert trio.current_time() - start == pytest.approx(10)
    assert world.bytes_sent(client.address) == len(b"into the void")


async def test_peer_address_of_memory_streams(
    autojump_clock: trio.testing.MockClock,
) -> None:
    _, client, server = _pair()
    listener, port = await _accept_one(server)
    stream = await client.connect(server.address, port)
    accepted = await listener.accept()
    assert peer_address(stream) == server.address
    assert peer_address(accepted) == client.address
    with pytest.raises(OSError, match="no peer address"):
        peer_address(trio.testing.memory_stream_pair()[0])
