"""Circuits built ahead for the ports streams used lately (Tor's predicted ports)."""

import pytest
import trio

from hopchain.isolation import IsolationKey

from .conftest import LoopbackNet, echo_once

pytestmark = pytest.mark.trio


async def test_a_port_just_used_gets_a_fresh_circuit_before_the_next_stream(
    testnet: LoopbackNet,
) -> None:
    manager = testnet.client.manager
    assert manager is not None
    port = testnet.origin_port
    with trio.fail_after(30):
        first = await echo_once(manager, port, IsolationKey("api", b"alice"))

        def ready() -> list[object]:
            now = trio.current_time()
            return [
                h
                for h in manager.table
                if h.is_clean_at(now) and h.exit.allows_exit_to(port) and h is not first
            ]

        for _ in range(5):  # a pass or two after the stream's
            if ready():
                break
            await manager.prepared()
        prepared = ready()
        assert prepared
        assert port in manager.predicted.ports(trio.current_time())
        # The next stream (another user: it cannot share alice's circuit)
        # takes the circuit that was built ahead, before it asked.
        second = await echo_once(manager, port, IsolationKey("api", b"bob"))
    assert second in prepared
    assert second.dirty_since is not None
