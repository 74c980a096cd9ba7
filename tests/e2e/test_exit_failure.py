"""An exit that dies: before CONNECTED the stream is retried once on a new
circuit; after it, new streams get a new circuit.  The client never hangs."""

import logging
from collections.abc import Awaitable, Callable

import pytest
import trio
from hopchain.relay.node import RelayNode

from hopchain.isolation import IsolationKey

from .conftest import LoopbackNet, echo_once

pytestmark = pytest.mark.trio


async def _cut_links_to(net: LoopbackNet, exit: RelayNode) -> None:
    """Close every link into ``exit``, as if it had died."""
    for relay in net.relays:
        link = relay._out_links.get(exit.identity.public)
        if link is not None:
            await link.aclose()


def _relay_of(net: LoopbackNet, identity: bytes) -> RelayNode:
    return next(r for r in net.relays if r.identity.public == identity)


async def _echo(stream: trio.abc.Stream) -> bytes:
    await stream.send_all(b"ECHO\n")
    return await stream.receive_some(100)


async def test_an_exit_dying_before_connected_is_retried_on_a_new_circuit(
    testnet: LoopbackNet, caplog: pytest.LogCaptureFixture
) -> None:
    manager = testnet.client.manager
    assert manager is not None
    key = IsolationKey("api", b"alice")
    port = testnet.origin_port
    with trio.fail_after(30):
        first = await manager.circuit_for(port, key)
    exit = _relay_of(testnet, first.exit.identity)
    honest: Callable[[str, int], Awaitable[object]] = exit.exit.connect_to_destination
    calls = []

    async def die_once(host: str, port: int) -> object:
        calls.append(host)
        if len(calls) == 1:
            await _cut_links_to(testnet, exit)
            await trio.sleep_forever()
        return await honest(host, port)

    exit.exit.connect_to_destination = die_once  # type: ignore[method-assign,assignment]
    with caplog.at_level(logging.INFO), trio.fail_after(30):
        handle = await echo_once(manager, port, key)
    assert handle is not first
    assert not first.is_open
    assert "circuit closed before connected; retrying" in caplog.text
    assert len(calls) <= 2  # at most once more, if the new circuit chose it too


async def test_killing_the_exit_of_a_live_circuit_new_streams_use_a_new_one(
    testnet: LoopbackNet,
) -> None:
    manager = testnet.client.manager
    assert manager is not None
    key = IsolationKey("api", b"bob")
    port = testnet.origin_port
    with trio.fail_after(30):
        handle, stream = await manager.open_stream("127.0.0.1", port, key)
        assert (await _echo(stream)).startswith(b"peer ")
        await _cut_links_to(testnet, _relay_of(testnet, handle.exit.identity))
        with pytest.raises(trio.BrokenResourceError):  # the circuit died
            await stream.receive_some(100)
    with trio.fail_after(manager.build_times.timeout + 5):
        await stream.aclose()
        manager.release(handle, stream)
        again = await echo_once(manager, port, key)
    assert again is not handle
    assert not handle.is_open
