"""A relay that flips one bit of a cell: the next hop refuses it, the circuit dies."""

import logging
import socket
from collections.abc import Callable

import pytest
import trio

from hopchain.relaycircuit import Forward

from .conftest import LoopbackNet
from .test_network import _echo_session, _socks_socket

pytestmark = pytest.mark.trio


def _send_and_read(net: LoopbackNet, tamper: Callable[[], None]) -> bytes:
    """An ECHO stream; ``tamper`` runs once it is connected."""
    with _socks_socket(net, timeout=20) as sock:
        sock.connect(("127.0.0.1", net.origin_port))
        sock.sendall(b"ECHO\n")
        first = sock.recv(100)
        trio.from_thread.run_sync(tamper)
        sock.sendall(b"x" * 5000)
        sock.shutdown(socket.SHUT_WR)
        data = first
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except ConnectionResetError:
            pass
        return data


async def test_flipped_bit_is_refused_by_the_next_hop_and_the_circuit_closes(
    testnet: LoopbackNet, caplog: pytest.LogCaptureFixture
) -> None:
    manager = testnet.client.manager
    assert manager is not None
    manager.max_clean = 0  # one circuit: none built ahead for the port used
    tampered = []

    def tamper() -> None:
        """Make the guard flip one bit of every cell it forwards from now on."""
        (handle,) = [h for h in manager.table if h.is_open]
        guard_identity = handle.core.path[0].identity
        guard = next(r for r in testnet.relays if r.identity.public == guard_identity)
        (circuit,) = guard.circuits.by_prev.values()
        honest_forward = circuit.core.forward

        def tampering_forward(body: bytes, *, early: bool) -> object:
            result = honest_forward(body, early=early)
            if isinstance(result, Forward):
                flipped = bytearray(result.body)
                flipped[100] ^= 0x01
                return Forward(bytes(flipped))
            return result

        circuit.core.forward = tampering_forward  # type: ignore[method-assign]
        tampered.append((handle, circuit))

    with caplog.at_level(logging.WARNING), trio.fail_after(30):
        data = await trio.to_thread.run_sync(_send_and_read, testnet, tamper)
    (handle, guard_circuit) = tampered[0]
    assert data.startswith(b"peer ")
    assert b"closed" not in data  # the stream died instead of completing
    assert any("aead tag mismatch" in r.getMessage() for r in caplog.records)
    assert guard_circuit.closed
    assert not handle.is_open
    # A new stream gets a new, honest circuit.
    with trio.fail_after(30):
        _, rest = await trio.to_thread.run_sync(_echo_session, testnet, "127.0.0.1")
    assert rest.endswith(b"closed\n")
