"""``CircuitStream`` passes trio's generic half-closeable stream conformance tests.

The two ends are a client circuit and a one-hop relay circuit wired together
in memory: every cell body one side sends is handed straight to the other
side's core, exactly as the link readers do.
"""

import hashlib

import pytest
import trio
from hopchain.relay.stream import CircuitStream, CreditSignal
from trio.testing import check_half_closeable_stream

from hopchain.circuit import ClientCircuit, HopSpec
from hopchain.crypto import handshake
from hopchain.crypto.keys import IdentityKey, OnionKey
from hopchain.crypto.onion import HopKeys
from hopchain.messages import Connected, Data, End, EndReason, Sendme
from hopchain.relaycircuit import Deliver, RelayCircuit

pytestmark = pytest.mark.trio


def _det(label: str) -> bytes:
    return hashlib.blake2b(label.encode(), digest_size=32).digest()


def _wire(stream: CircuitStream, message: object) -> None:
    match message:
        case Data(data=data):
            stream.deliver(data)
        case End(reason=EndReason.DONE):
            stream.remote_end()
        case End():
            stream.abort()


async def make_pair() -> tuple[CircuitStream, CircuitStream]:
    """A connected (client end, exit end) pair over one hop."""
    identity, onion = IdentityKey(_det("id")), OnionKey(_det("onion"))
    client = ClientCircuit()
    create = client.create(
        HopSpec(identity.public, onion.public, "127.0.0.1", 9001), _det("x")
    )
    created, prk = handshake.server_reply_with_ephemeral(
        handshake.CIRCUIT_LABEL, identity.public, [onion], create, _det("y")
    )
    client.on_created(created)
    relay = RelayCircuit(HopKeys.from_prk(prk), identity.public, None)
    client_credit, exit_credit = CreditSignal(), CreditSignal()
    ends: dict[str, CircuitStream] = {}

    def to_exit(bodies: list[bytes]) -> None:
        for body in bodies:
            result = relay.forward(body, early=False)
            if isinstance(result, Deliver):
                if isinstance(result.message, Sendme):
                    exit_credit.fire()
                elif "exit" in ends:
                    _wire(ends["exit"], result.message)

    def to_client(bodies: list[bytes]) -> None:
        for body in bodies:
            received, replies = client.receive(body)
            to_exit(replies)
            if received is None:
                continue
            if isinstance(received.message, Sendme):
                client_credit.fire()
            else:
                _wire(ends["client"], received.message)

    sid, begin = client.open_stream("example.com", 80)
    ends["client"] = CircuitStream(sid, client, to_exit, client_credit)
    to_exit([begin])
    ends["exit"] = CircuitStream(sid, relay, to_client, exit_credit)
    to_client([relay.originate(Connected(sid, "192.0.2.1"))])
    return ends["client"], ends["exit"]


async def test_circuit_stream_conforms_to_trio_half_closeable_stream() -> None:
    with trio.fail_after(60):
        await check_half_closeable_stream(make_pair, None)


async def test_circuit_stream_flow_control_holds_a_fast_sender() -> None:
    """A sender facing a reader that does not read stops at the windows."""
    client_end, exit_end = await make_pair()
    with trio.move_on_after(1) as scope:
        await client_end.send_all(b"x" * (65 * 32507))  # one cell past 64
    assert scope.cancelled_caught
    received = 0
    with trio.fail_after(10):
        while received < 64 * 32507:
            received += len(await exit_end.receive_some())
