"""Tests for hopchain.circuit (ClientCircuit), alone and paired with relays.

``Pair`` wires one ``ClientCircuit`` to ``RelayCircuit`` objects in memory,
in the style of h11's ``ConnectionPair``: CREATE is answered with
``handshake.server_reply_with_ephemeral``, an EXTEND delivered to the last
hop is answered with ``RelayCircuit.extended``, and cell bodies are carried
hop by hop with nothing in between but this file.
"""

import hashlib
import itertools
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from hopchain.circuit import CircuitState, ClientCircuit, HopSpec, Received
from hopchain.crypto import handshake, onion
from hopchain.crypto.keys import IdentityKey, OnionKey
from hopchain.crypto.onion import HopKeys
from hopchain.errors import (
    CellAuthError,
    CircuitError,
    FlowControlError,
    HandshakeError,
    MessageError,
)
from hopchain.flow import CIRCUIT_WINDOW, STREAM_WINDOW
from hopchain.messages import (
    MAX_DATA,
    Begin,
    Connected,
    Data,
    Drop,
    End,
    EndReason,
    Extend,
    Extended,
    RelayMessage,
    Resolve,
    Resolved,
    Sendme,
    Truncated,
    encode,
    encode_data,
)
from hopchain.relaycircuit import MAX_EARLY, Deliver, Forward, RelayCircuit, Respond


def det(label: str) -> bytes:
    """32 deterministic bytes named by ``label``."""
    return hashlib.blake2b(label.encode(), digest_size=32).digest()


@dataclass(frozen=True)
class Node:
    """A relay's long-term keys and its directory entry."""

    identity: IdentityKey
    onion: OnionKey
    spec: HopSpec


def make_node(n: int) -> Node:
    identity = IdentityKey(det(f"node {n} identity"))
    onion_key = OnionKey(det(f"node {n} onion"))
    spec = HopSpec(identity.public, onion_key.public, f"10.0.{n}.1", 9000 + n)
    return Node(identity, onion_key, spec)


NODES = [make_node(n) for n in range(onion.MAX_HOPS + 1)]


def flip_bit(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


class Pair:
    """A client circuit and its relays, connected in memory."""

    def __init__(self) -> None:
        self.client = ClientCircuit()
        self.relays: list[RelayCircuit] = []
        self.nodes: list[Node] = []
        self._ephemeral = itertools.count()

    def ephemeral(self) -> bytes:
        return det(f"ephemeral {next(self._ephemeral)}")

    @classmethod
    def built(cls, hops: int = 3) -> "Pair":
        pair = cls()
        pair.create(NODES[0])
        for node in NODES[1:hops]:
            pair.extend(node)
        return pair

    @property
    def exit(self) -> RelayCircuit:
        return self.relays[-1]

    def create(self, node: Node) -> None:
        body = self.client.create(node.spec, self.ephemeral())
        created, prk = handshake.server_reply_with_ephemeral(
            handshake.CIRCUIT_LABEL,
            node.identity.public,
            [node.onion],
            body,
            self.ephemeral(),
        )
        self.relays.append(
            RelayCircuit(HopKeys.from_prk(prk), node.identity.public, None)
        )
        self.nodes.append(node)
        self.client.on_created(created)

    def extend(self, node: Node) -> None:
        last = len(self.relays) - 1
        result = self.forward(
            self.client.extend(node.spec, self.ephemeral()), early=True
        )
        assert isinstance(result, Deliver)
        assert isinstance(result.message, Extend)
        request = result.message
        assert (request.identity, request.onion_key) == (
            node.identity.public,
            node.onion.public,
        )
        assert (request.host, request.port) == (node.spec.host, node.spec.port)
        created, prk = handshake.server_reply_with_ephemeral(
            handshake.CIRCUIT_LABEL,
            request.identity,
            [node.onion],
            request.handshake,
            self.ephemeral(),
        )
        reply = self.relays[-1].extended(created)
        self.relays.append(
            RelayCircuit(
                HopKeys.from_prk(prk),
                node.identity.public,
                self.nodes[-1].identity.public,
            )
        )
        self.nodes.append(node)
        assert self.to_client(reply, origin=last) == (
            Received(last, Extended(created)),
            [],
        )

    def forward(self, body: bytes, *, early: bool = False) -> Deliver | Respond | None:
        """Carry a forward cell through the relays; the last hop's result."""
        for relay in self.relays:
            result = relay.forward(body, early=early)
            if not isinstance(result, Forward):
                return result
            body = result.body
        raise AssertionError("the last hop forwarded a cell")

    def forward_all(self, bodies: list[bytes]) -> list[RelayMessage]:
        """Carry cells as a shell would; the messages the exit was handed.

        A ``Respond`` (credit for DATA of a closed stream) goes straight back
        to the client.
        """
        out = []
        for body in bodies:
            result = self.forward(body)
            if isinstance(result, Respond):
                for reply in result.bodies:
                    self.to_client(reply)
            elif result is not None:
                out.append(result.message)
        return out

    def backward(self, body: bytes, origin: int) -> bytes:
        """Add the layers of the hops before ``origin`` to its cell."""
        for relay in reversed(self.relays[:origin]):
            body = relay.backward(body)
        return body

    def to_client(
        self, body: bytes, origin: int = -1
    ) -> tuple[Received | None, list[bytes]]:
        origin = origin % len(self.relays)
        return self.client.receive(self.backward(body, origin))

    def exit_says(self, message: RelayMessage) -> tuple[Received | None, list[bytes]]:
        return self.to_client(self.exit.originate(message))

    def open_stream(self, host: str = "example.com", port: int = 443) -> int:
        sid, body = self.client.open_stream(host, port)
        assert self.forward_all([body]) == [Begin(sid, host, port)]
        received, _ = self.exit_says(Connected(sid, "93.184.216.34"))
        assert received == Received(
            len(self.relays) - 1, Connected(sid, "93.184.216.34")
        )
        return sid

    def client_to_exit(self, sid: int, data: bytes) -> bytes:
        """Send ``data`` upstream; the exit's app consumes it; credit flows back."""
        cells = [
            m
            for m in self.forward_all(self.client.send_data(sid, data))
            if isinstance(m, Data)
        ]
        for body in self.exit.consumed(sid, len(cells)):
            self.to_client(body)
        return b"".join(m.data for m in cells)

    def exit_to_client(self, sid: int, data: bytes) -> bytes:
        """Send ``data`` downstream; the client's app consumes it."""
        got = []
        for body in self.exit.send_data(sid, data):
            received, out = self.to_client(body)
            assert out == []
            assert received is not None
            assert isinstance(received.message, Data)
            got.append(received.message.data)
        self.forward_all(self.client.consumed(sid, len(got)))
        return b"".join(got)

    def fill_upstream(self, sid: int, cells: int) -> list[bytes]:
        """``cells`` one-byte DATA cells from the client (not yet carried)."""
        return [body for _ in range(cells) for body in self.client.send_data(sid, b"u")]

    def fill_downstream(self, sid: int, cells: int) -> list[bytes]:
        """``cells`` one-byte DATA cells from the exit (not yet carried)."""
        return [body for _ in range(cells) for body in self.exit.send_data(sid, b"d")]


# --- building ----------------------------------------------------------------------


@pytest.mark.parametrize("hops", [1, 2, 3, onion.MAX_HOPS])
def test_pair_builds_circuits(hops: int) -> None:
    pair = Pair.built(hops)
    assert pair.client.state is CircuitState.OPEN
    assert len(pair.client.hops) == hops
    assert pair.client.path == [n.spec for n in NODES[:hops]]
    assert pair.exit.position.value == "last"
    assert all(r.position.value == "middle" for r in pair.relays[:-1])


def test_client_refuses_more_than_max_hops() -> None:
    pair = Pair.built(onion.MAX_HOPS)
    with pytest.raises(CircuitError, match="already has"):
        pair.client.extend(NODES[-1].spec, det("x"))


def test_client_create_only_once() -> None:
    pair = Pair.built(1)
    with pytest.raises(CircuitError, match="create"):
        pair.client.create(NODES[1].spec, det("x"))
    with pytest.raises(MessageError, match="unexpected created"):
        pair.client.on_created(bytes(64))


def test_client_state_guards() -> None:
    client = ClientCircuit()
    assert client.state is CircuitState.NEW
    with pytest.raises(CircuitError):
        client.extend(NODES[1].spec, det("x"))
    with pytest.raises(CircuitError):
        client.open_stream("example.com", 80)
    with pytest.raises(MessageError):
        client.receive(bytes(1024))
    with pytest.raises(MessageError):
        client.on_created(bytes(64))
    client.create(NODES[0].spec, det("x"))
    assert client.state is CircuitState.BUILDING
    with pytest.raises(CircuitError):
        client.open_stream("example.com", 80)
    with pytest.raises(CircuitError):
        client.extend(NODES[1].spec, det("y"))


def test_client_tampered_created_is_refused() -> None:
    client = ClientCircuit()
    body = client.create(NODES[0].spec, det("x"))
    created, _ = handshake.server_reply_with_ephemeral(
        handshake.CIRCUIT_LABEL,
        NODES[0].identity.public,
        [NODES[0].onion],
        body,
        det("y"),
    )
    with pytest.raises(HandshakeError):
        client.on_created(flip_bit(created, 300))
    assert client.hops == []


def test_client_tampered_extended_is_refused() -> None:
    pair = Pair.built(2)
    result = pair.forward(pair.client.extend(NODES[2].spec, det("x")), early=True)
    assert isinstance(result, Deliver)
    assert isinstance(result.message, Extend)
    created, _ = handshake.server_reply_with_ephemeral(
        handshake.CIRCUIT_LABEL,
        NODES[2].identity.public,
        [NODES[2].onion],
        result.message.handshake,
        det("y"),
    )
    with pytest.raises(HandshakeError):
        pair.to_client(pair.exit.extended(flip_bit(created, 3)))
    assert len(pair.client.hops) == 2


def test_client_unexpected_extended_is_refused() -> None:
    pair = Pair.built(2)
    with pytest.raises(MessageError, match="unexpected extended"):
        pair.exit_says(Extended(bytes(64)))


def test_client_stream_message_from_a_middle_hop_is_refused() -> None:
    pair = Pair.built(3)
    sid = pair.open_stream()
    body = pair.relays[1].originate(Data(sid, b"spoofed"))
    with pytest.raises(MessageError, match="hop 1 sent a stream message"):
        pair.to_client(body, origin=1)


@pytest.mark.parametrize(
    "message",
    [Begin(1, "example.com", 80), Extend(bytes(32), bytes(32), "h", 1, bytes(96))],
)
def test_client_refuses_requests_from_the_exit(message: RelayMessage) -> None:
    pair = Pair.built(2)
    with pytest.raises(MessageError, match="client got"):
        pair.exit_says(message)


def test_client_truncated_closes_the_circuit() -> None:
    pair = Pair.built(2)
    pair.forward(pair.client.extend(NODES[2].spec, det("x")), early=True)
    received, out = pair.to_client(pair.exit.extend_failed(EndReason.CONNECT_REFUSED))
    assert received == Received(1, Truncated(EndReason.CONNECT_REFUSED))
    assert out == []
    assert pair.client.state is CircuitState.CLOSED
    with pytest.raises(MessageError):
        pair.exit_says(Drop())


def test_client_drop_and_unknown_connected_need_no_action() -> None:
    pair = Pair.built(3)
    assert pair.exit_says(Drop()) == (None, [])
    assert pair.exit_says(Connected(77, "192.0.2.1")) == (None, [])


# --- streams ---------------------------------------------------------------------


def test_pair_stream_data_both_ways_and_half_close() -> None:
    pair = Pair.built(3)
    sid = pair.open_stream()
    assert (
        pair.client_to_exit(sid, b"GET / HTTP/1.0\r\n\r\n") == b"GET / HTTP/1.0\r\n\r\n"
    )
    assert pair.exit_to_client(sid, b"HTTP/1.0 200 OK\r\n") == b"HTTP/1.0 200 OK\r\n"
    # The client half-closes; the exit still sends.
    assert pair.forward_all(pair.client.end_stream(sid, EndReason.DONE)) == [
        End(sid, EndReason.DONE)
    ]
    assert pair.client.sendable(sid) == 0
    assert pair.exit_to_client(sid, b"body") == b"body"
    received, _ = pair.exit_says(End(sid, EndReason.DONE))
    assert received == Received(2, End(sid, EndReason.DONE))
    assert pair.client.streams.get(sid) is None
    assert pair.client.end_stream(sid, EndReason.DONE) == []


def test_pair_large_data_is_split_into_cells() -> None:
    pair = Pair.built(3)
    sid = pair.open_stream()
    data = bytes(range(256)) * 1000
    bodies = pair.client.send_data(sid, data)
    assert len(bodies) == -(-len(data) // MAX_DATA)
    assert {len(b) for b in bodies} <= {1024, 32768}
    got = b"".join(m.data for m in pair.forward_all(bodies) if isinstance(m, Data))
    assert got == data
    assert pair.exit_to_client(sid, data) == data


def test_pair_many_streams() -> None:
    pair = Pair.built(3)
    sids = [pair.open_stream(f"host{n}.example", 80) for n in range(5)]
    assert sids == [1, 2, 3, 4, 5]
    for sid in sids:
        assert pair.client_to_exit(sid, f"to {sid}".encode()) == f"to {sid}".encode()
        assert (
            pair.exit_to_client(sid, f"from {sid}".encode()) == f"from {sid}".encode()
        )


def test_client_stream_ids_wrap_and_skip_open_ones() -> None:
    pair = Pair.built(1)
    # Reaching the wrap by opening 65534 streams would be slow: jump there.
    pair.client._next_stream = 0xFFFF
    assert pair.client.open_stream("a.example", 80)[0] == 0xFFFF
    assert pair.client.open_stream("a.example", 80)[0] == 1
    pair.client._next_stream = 0xFFFF
    assert pair.client.open_stream("a.example", 80)[0] == 2


def test_pair_sendme_credit_restores_the_stream_window() -> None:
    pair = Pair.built(3)
    sid = pair.open_stream()
    assert pair.client.sendable(sid) == STREAM_WINDOW * MAX_DATA
    bodies = pair.fill_upstream(sid, STREAM_WINDOW)
    assert pair.client.sendable(sid) == 0
    with pytest.raises(FlowControlError, match="past the window"):
        pair.client.send_data(sid, b"x")
    assert len(pair.forward_all(bodies)) == STREAM_WINDOW
    assert pair.exit.streams.get(sid).receive.outstanding == STREAM_WINDOW  # type: ignore[union-attr]
    credits = pair.exit.consumed(sid, STREAM_WINDOW)
    received = [pair.to_client(body)[0] for body in credits]
    assert [r.message for r in received if r is not None] == [
        Sendme(sid, STREAM_WINDOW),
        Sendme(0, STREAM_WINDOW),
    ]
    assert pair.client.sendable(sid) == STREAM_WINDOW * MAX_DATA
    assert pair.client.streams.send.unacked == 0


def test_pair_sendme_in_quarter_window_steps() -> None:
    pair = Pair.built(2)
    sid = pair.open_stream()
    quarter = STREAM_WINDOW // 4
    pair.forward_all(pair.fill_upstream(sid, quarter))
    assert pair.exit.consumed(sid, quarter - 1) == []
    (body,) = pair.exit.consumed(sid, 1)
    assert pair.to_client(body)[0] == Received(1, Sendme(sid, quarter))
    assert pair.client.streams.get(sid).send.unacked == 0  # type: ignore[union-attr]


def test_pair_a_large_write_spends_one_cell_per_max_data_bytes() -> None:
    pair = Pair.built(2)
    sid = pair.open_stream()
    pair.client.send_data(sid, bytes(3 * MAX_DATA + 1))
    assert pair.client.sendable(sid) == (STREAM_WINDOW - 4) * MAX_DATA


def test_pair_exit_refuses_data_past_the_stream_window() -> None:
    pair = Pair.built(3)
    sid = pair.open_stream()
    pair.forward_all(pair.fill_upstream(sid, STREAM_WINDOW))
    # A client that ignores its window (built by hand, below the API).
    rogue = onion.wrap_forward(pair.client.hops, encode_data(sid, b"x"))
    with pytest.raises(FlowControlError, match="past the window"):
        pair.forward(rogue)


def test_pair_exit_refuses_data_past_the_circuit_window() -> None:
    pair = Pair.built(3)
    for _ in range(CIRCUIT_WINDOW // STREAM_WINDOW):
        sid = pair.open_stream()
        pair.forward_all(pair.fill_upstream(sid, STREAM_WINDOW))
    extra = pair.open_stream()
    assert pair.client.sendable(extra) == 0
    rogue = onion.wrap_forward(pair.client.hops, encode_data(extra, b"x"))
    with pytest.raises(FlowControlError, match="past the window"):
        pair.forward(rogue)


def test_pair_client_refuses_data_past_the_window() -> None:
    pair = Pair.built(3)
    sid = pair.open_stream()
    for body in pair.fill_downstream(sid, STREAM_WINDOW):
        pair.to_client(body)
    assert pair.exit.sendable(sid) == 0
    with pytest.raises(FlowControlError):
        pair.exit.send_data(sid, b"x")
    rogue = onion.originate_backward(pair.exit.keys, encode_data(sid, b"x"))
    with pytest.raises(FlowControlError, match="past the window"):
        pair.to_client(rogue)


@pytest.mark.parametrize("stream", ["stream", "circuit"])
def test_pair_exit_refuses_sendme_for_unsent_data(stream: str) -> None:
    pair = Pair.built(3)
    sid = pair.open_stream()
    pair.exit_to_client(sid, b"12345")
    target = sid if stream == "stream" else 0
    rogue = onion.wrap_forward(pair.client.hops, encode(Sendme(target, 2)))
    with pytest.raises(FlowControlError, match="sendme credits"):
        pair.forward(rogue)


@pytest.mark.parametrize("stream", ["stream", "circuit"])
def test_pair_client_refuses_sendme_for_unsent_data(stream: str) -> None:
    pair = Pair.built(3)
    sid = pair.open_stream()
    pair.forward_all(pair.client.send_data(sid, b"12345"))
    target = sid if stream == "stream" else 0
    with pytest.raises(FlowControlError, match="sendme credits"):
        pair.exit_says(Sendme(target, 2))


def test_pair_client_refuses_data_after_end() -> None:
    pair = Pair.built(2)
    sid = pair.open_stream()
    pair.exit_says(End(sid, EndReason.DONE))
    with pytest.raises(FlowControlError, match="after end"):
        pair.exit_says(Data(sid, b"late"))


def test_pair_client_credits_data_for_a_closed_stream() -> None:
    """DATA racing the client's own END still refills the exit's circuit window."""
    pair = Pair.built(3)
    sid = pair.open_stream()
    quarter = CIRCUIT_WINDOW // 4
    in_flight = pair.fill_downstream(sid, quarter)
    pair.forward_all(pair.client.end_stream(sid, EndReason.MISC))
    credits = []
    for body in in_flight:
        received, out = pair.to_client(body)
        assert received is None
        credits += out
    assert pair.forward_all(credits) == [Sendme(0, quarter)]
    assert pair.exit.streams.send.unacked == 0


def test_pair_exit_credits_data_for_a_closed_stream() -> None:
    """DATA racing the exit's END must not shrink the circuit window for good.

    The client sends a quarter circuit window while the exit aborts the
    stream, four times: without credit for the dropped cells the circuit
    window would be spent and the circuit stalled.
    """
    pair = Pair.built(3)
    quarter = CIRCUIT_WINDOW // 4
    for _ in range(4):
        sid = pair.open_stream()
        in_flight = pair.fill_upstream(sid, quarter)
        for body in pair.exit.end_stream(sid, EndReason.MISC):
            pair.to_client(body)
        assert pair.forward_all(in_flight) == []
    assert pair.client.streams.send.unacked == 0
    assert pair.client.sendable(pair.open_stream()) == STREAM_WINDOW * MAX_DATA


# --- resolve --------------------------------------------------------------------------


def test_pair_resolve_round_trip_frees_the_id_at_both_ends() -> None:
    pair = Pair.built(3)
    sid, body = pair.client.resolve("example.com")
    assert pair.forward_all([body]) == [Resolve(sid, "example.com")]
    assert pair.client.sendable(sid) == 0
    (answer,) = pair.exit.resolved(sid, ["192.0.2.1"])
    assert pair.to_client(answer) == (Received(2, Resolved(sid, ("192.0.2.1",))), [])
    assert pair.client.streams.streams == {}
    assert pair.exit.streams.streams == {}
    # No flow-control credit moved, in either direction.
    for table in (pair.client.streams, pair.exit.streams):
        assert table.send.unacked == 0
        assert table.receive.outstanding == 0
    # The circuit carries on: a stream opens and data flows.
    stream = pair.open_stream()
    assert pair.client_to_exit(stream, b"after") == b"after"


def test_pair_resolve_ptr_and_failure() -> None:
    pair = Pair.built(2)
    sid, body = pair.client.resolve("192.0.2.1", ptr=True)
    assert pair.forward_all([body]) == [Resolve(sid, "192.0.2.1", ptr=True)]
    (answer,) = pair.exit.resolved(sid, reason=EndReason.EXIT_POLICY)
    received, _ = pair.to_client(answer)
    assert received == Received(1, Resolved(sid, (), EndReason.EXIT_POLICY))
    assert pair.client.streams.get(sid) is None


def test_pair_client_gives_up_on_a_resolve() -> None:
    """The client's END(TIMEOUT) frees the id at both ends; a RESOLVED that
    crossed it needs no action."""
    pair = Pair.built(3)
    sid, body = pair.client.resolve("slow.example")
    pair.forward_all([body])
    late = pair.exit.resolved(sid, ["192.0.2.1"])  # crosses the END
    assert pair.forward_all(pair.client.end_stream(sid, EndReason.TIMEOUT)) == [
        End(sid, EndReason.TIMEOUT)
    ]
    assert pair.client.streams.get(sid) is None
    assert pair.exit.streams.get(sid) is None
    assert pair.to_client(late[0]) == (None, [])


def test_pair_exit_end_ends_a_resolve() -> None:
    pair = Pair.built(2)
    sid, body = pair.client.resolve("example.com")
    pair.forward_all([body])
    received, _ = pair.exit_says(End(sid, EndReason.EXIT_POLICY))
    assert received == Received(1, End(sid, EndReason.EXIT_POLICY))
    assert pair.client.streams.get(sid) is None


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda sid: Data(sid, b"x"), "data on resolve stream"),
        (lambda sid: Connected(sid, "192.0.2.1"), "connected on resolve stream"),
    ],
)
def test_pair_client_refuses_stream_messages_on_a_resolve(
    make: Callable[[int], RelayMessage], match: str
) -> None:
    pair = Pair.built(2)
    sid, body = pair.client.resolve("example.com")
    pair.forward_all([body])
    with pytest.raises(MessageError, match=match):
        pair.exit_says(make(sid))


def test_pair_client_refuses_resolved_on_a_connect_stream() -> None:
    pair = Pair.built(2)
    sid = pair.open_stream()
    with pytest.raises(MessageError, match="resolved on connect stream"):
        pair.exit_says(Resolved(sid, ("192.0.2.1",)))
    assert Pair.built(2).exit_says(Resolved(9, ("192.0.2.1",))) == (None, [])


def test_pair_resolved_from_a_middle_hop_is_refused() -> None:
    pair = Pair.built(3)
    sid, body = pair.client.resolve("example.com")
    pair.forward_all([body])
    spoofed = pair.relays[1].originate(Resolved(sid, ("192.0.2.66",)))
    with pytest.raises(MessageError, match="hop 1 sent a stream message"):
        pair.to_client(spoofed, origin=1)


def test_client_resolve_needs_an_open_circuit() -> None:
    with pytest.raises(CircuitError, match="new circuit"):
        ClientCircuit().resolve("example.com")


# --- tampering -----------------------------------------------------------------------


@given(link=st.integers(0, 2), data=st.data())
def test_prop_pair_forward_flip_is_caught_by_the_next_hop(
    link: int, data: st.DataObject
) -> None:
    pair = Pair.built(3)
    sid = pair.open_stream()
    (body,) = pair.client.send_data(sid, b"payload")
    for relay in pair.relays[:link]:
        result = relay.forward(body, early=False)
        assert isinstance(result, Forward)
        body = result.body
    bit = data.draw(st.integers(0, len(body) * 8 - 1), label="bit")
    with pytest.raises(CellAuthError):
        pair.relays[link].forward(flip_bit(body, bit), early=False)


@given(origin=st.integers(0, 2), data=st.data())
def test_prop_pair_backward_flip_is_caught_by_the_client(
    origin: int, data: st.DataObject
) -> None:
    pair = Pair.built(3)
    sid = pair.open_stream()
    if origin == 2:
        (body,) = pair.exit.send_data(sid, b"payload")
    else:
        body = pair.relays[origin].originate(Drop())
    body = pair.backward(body, origin)
    bit = data.draw(st.integers(0, len(body) * 8 - 1), label="bit")
    with pytest.raises(CellAuthError):
        pair.client.receive(flip_bit(body, bit))


def test_pair_replayed_forward_cell_is_rejected() -> None:
    pair = Pair.built(3)
    sid = pair.open_stream()
    (body,) = pair.client.send_data(sid, b"once")
    pair.forward(body)
    with pytest.raises(CellAuthError):
        pair.forward(body)


def test_pair_replayed_backward_cell_is_rejected() -> None:
    pair = Pair.built(3)
    sid = pair.open_stream()
    body = pair.backward(pair.exit.send_data(sid, b"once")[0], 2)
    pair.client.receive(body)
    with pytest.raises(CellAuthError):
        pair.client.receive(body)


# --- extension rules (enforced by the relay) ------------------------------------------


def test_pair_extend_outside_relay_early_is_refused() -> None:
    pair = Pair.built(2)
    body = pair.client.extend(NODES[2].spec, det("x"))
    with pytest.raises(MessageError, match="outside relay_early"):
        pair.forward(body, early=False)


def test_pair_extend_to_the_relay_itself_is_refused() -> None:
    pair = Pair.built(2)
    body = pair.client.extend(NODES[1].spec, det("x"))
    with pytest.raises(MessageError, match="itself"):
        pair.forward(body, early=True)


def test_pair_extend_to_the_previous_hop_is_refused() -> None:
    pair = Pair.built(2)
    body = pair.client.extend(NODES[0].spec, det("x"))
    with pytest.raises(MessageError, match="previous hop"):
        pair.forward(body, early=True)


def test_pair_extend_with_open_streams_is_refused() -> None:
    pair = Pair.built(2)
    pair.open_stream()
    # The client refuses to extend a circuit that carries streams...
    with pytest.raises(CircuitError, match="streams"):
        pair.client.extend(NODES[2].spec, det("x"))
    # ... and so does the relay, for a client that does it anyway.
    spec = NODES[2].spec
    request = Extend(spec.identity, spec.onion_key, spec.host, spec.port, bytes(96))
    body = onion.wrap_forward(pair.client.hops, encode(request))
    with pytest.raises(MessageError, match="streams"):
        pair.forward(body, early=True)


def test_pair_more_than_seven_relay_early_cells_are_refused() -> None:
    pair = Pair.built(onion.MAX_HOPS)
    # The first relay has carried seven EXTENDs in RELAY_EARLY cells.
    body = onion.wrap_forward(pair.client.hops, encode(Drop()))
    with pytest.raises(MessageError, match=f"more than {MAX_EARLY} relay_early"):
        pair.relays[0].forward(body, early=True)


def test_pair_relay_early_limit_on_a_short_circuit() -> None:
    pair = Pair.built(1)
    for _ in range(MAX_EARLY):
        padding = onion.wrap_forward(pair.client.hops, encode(Drop()))
        assert pair.forward(padding, early=True) is None
    padding = onion.wrap_forward(pair.client.hops, encode(Drop()))
    with pytest.raises(MessageError, match="relay_early"):
        pair.forward(padding, early=True)


# --- client and relays driven against each other -----------------------------------


class CircuitMachine(RuleBasedStateMachine):
    """Random interleavings of both ends of a 3-hop circuit with honest peers.

    Cells in flight wait in one queue per direction (links keep order); each
    end's application reads and consumes at its own pace.  Honest peers must
    never trip an error, every byte arrives in order, and once everything is
    delivered and consumed no flow-control credit has gone missing.
    """

    def __init__(self) -> None:
        super().__init__()
        self.pair = Pair.built(3)
        self.upstream: list[bytes] = []  # client -> relays, in order
        self.downstream: list[bytes] = []  # originated by the exit, in order
        self.sent_up: dict[int, bytes] = {}
        self.sent_down: dict[int, bytes] = {}
        self.got_up: dict[int, bytes] = {}
        self.got_down: dict[int, bytes] = {}
        self.unconsumed_at_exit: dict[int, int] = {}
        self.unconsumed_at_client: dict[int, int] = {}
        self.exit_streams: set[int] = set()
        self.counter = 0

    # Intentions of the two applications.

    @precondition(lambda self: len(self.pair.client.streams.streams) < 4)
    @rule()
    def client_opens(self) -> None:
        sid, body = self.pair.client.open_stream("example.com", 443)
        self.upstream.append(body)
        self.sent_up[sid] = self.got_up[sid] = b""
        self.sent_down[sid] = self.got_down[sid] = b""

    @precondition(lambda self: len(self.pair.client.streams.streams) < 4)
    @rule(ptr=st.booleans())
    def client_resolves(self, ptr: bool) -> None:
        query = "192.0.2.1" if ptr else "example.com"
        _, body = self.pair.client.resolve(query, ptr=ptr)
        self.upstream.append(body)

    @rule(data=st.data(), size=st.integers(1, 2 * MAX_DATA))
    def client_sends(self, data: st.DataObject, size: int) -> None:
        sids = [
            s for s in self.pair.client.streams.streams if self.pair.client.sendable(s)
        ]
        if not sids:
            return
        sid = data.draw(st.sampled_from(sids), label="sid")
        size = min(size, self.pair.client.sendable(sid))
        payload = self.fresh(size)
        self.upstream += self.pair.client.send_data(sid, payload)
        self.sent_up[sid] += payload

    @rule(data=st.data(), size=st.integers(1, 2 * MAX_DATA))
    def exit_sends(self, data: st.DataObject, size: int) -> None:
        sids = [s for s in self.exit_streams if self.pair.exit.sendable(s)]
        if not sids:
            return
        sid = data.draw(st.sampled_from(sorted(sids)), label="sid")
        size = min(size, self.pair.exit.sendable(sid))
        payload = self.fresh(size)
        self.downstream += self.pair.exit.send_data(sid, payload)
        self.sent_down[sid] += payload

    @rule(data=st.data(), reason=st.sampled_from([EndReason.DONE, EndReason.MISC]))
    def client_ends(self, data: st.DataObject, reason: EndReason) -> None:
        sids = sorted(self.pair.client.streams.streams)
        if sids:
            sid = data.draw(st.sampled_from(sids), label="sid")
            self.upstream += self.pair.client.end_stream(sid, reason)

    @rule(data=st.data(), reason=st.sampled_from([EndReason.DONE, EndReason.MISC]))
    def exit_ends(self, data: st.DataObject, reason: EndReason) -> None:
        sids = sorted(s for s in self.exit_streams if self.pair.exit.streams.get(s))
        if sids:
            sid = data.draw(st.sampled_from(sids), label="sid")
            self.downstream += self.pair.exit.end_stream(sid, reason)

    @rule()
    def client_consumes(self) -> None:
        for sid, cells in list(self.unconsumed_at_client.items()):
            self.upstream += self.pair.client.consumed(sid, cells)
        self.unconsumed_at_client.clear()

    @rule()
    def exit_consumes(self) -> None:
        for sid, cells in list(self.unconsumed_at_exit.items()):
            self.downstream += self.pair.exit.consumed(sid, cells)
        self.unconsumed_at_exit.clear()

    # The network.

    @rule(count=st.integers(1, 8))
    def deliver_upstream(self, count: int) -> None:
        cells, self.upstream = self.upstream[:count], self.upstream[count:]
        for body in cells:
            result = self.pair.forward(body)
            if isinstance(result, Respond):
                self.downstream += result.bodies
            elif result is not None:
                self.exit_handles(result.message)

    @rule(count=st.integers(1, 8))
    def deliver_downstream(self, count: int) -> None:
        cells, self.downstream = self.downstream[:count], self.downstream[count:]
        for body in cells:
            received, out = self.pair.client.receive(self.pair.backward(body, 2))
            self.upstream += out
            if received is not None and isinstance(received.message, Data):
                sid = received.message.stream_id
                self.got_down[sid] += received.message.data
                self.unconsumed_at_client[sid] = (
                    self.unconsumed_at_client.get(sid, 0) + 1
                )

    def exit_handles(self, message: RelayMessage) -> None:
        match message:
            case Begin(stream_id=sid):
                self.exit_streams.add(sid)
                self.downstream.append(
                    self.pair.exit.originate(Connected(sid, "192.0.2.1"))
                )
            case Data(stream_id=sid, data=data):
                self.got_up[sid] += data
                self.unconsumed_at_exit[sid] = self.unconsumed_at_exit.get(sid, 0) + 1
            case Resolve(stream_id=sid, ptr=ptr):
                answer = "host.example" if ptr else "192.0.2.1"
                self.downstream += self.pair.exit.resolved(sid, [answer])

    def fresh(self, size: int) -> bytes:
        self.counter += 1
        return (self.counter.to_bytes(4, "big") * (size // 4 + 1))[:size]

    @invariant()
    def bytes_arrive_in_order(self) -> None:
        for sid, got in self.got_up.items():
            assert self.sent_up[sid].startswith(got)
        for sid, got in self.got_down.items():
            assert self.sent_down[sid].startswith(got)

    def teardown(self) -> None:
        """Drain both directions; then no credit may be missing."""
        for _ in range(100):
            self.deliver_upstream(len(self.upstream))
            self.deliver_downstream(len(self.downstream))
            self.client_consumes()
            self.exit_consumes()
            if not (self.upstream or self.downstream):
                break
        client, exit_ = self.pair.client.streams, self.pair.exit.streams
        # What one end has not had credited is exactly what the other end has
        # received and not yet credited (less than a quarter window).
        assert client.send.unacked == exit_.receive.outstanding
        assert exit_.send.unacked == client.receive.outstanding
        # Every RESOLVE was answered or ended: no one-shot stream is left.
        assert not any(s.resolve for s in client.streams.values())
        assert not any(s.resolve for s in exit_.streams.values())
        assert exit_.receive.outstanding == exit_.receive.consumed
        assert client.receive.outstanding == client.receive.consumed
        assert client.send.unacked < CIRCUIT_WINDOW // 4
        assert exit_.send.unacked < CIRCUIT_WINDOW // 4


TestCircuitMachine = CircuitMachine.TestCase
TestCircuitMachine.settings = settings(stateful_step_count=30)
