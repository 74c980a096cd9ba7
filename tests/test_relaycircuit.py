"""Unit tests for hopchain.relaycircuit (RelayCircuit), one relay at a time.

The client side is played by raw ``onion`` calls on a second ``HopKeys``
built from the same prk; ``test_circuit.py`` pairs the real ClientCircuit
with several relays.
"""

import hashlib

import pytest

from hopchain.crypto import onion
from hopchain.crypto.onion import HopKeys
from hopchain.errors import CellAuthError, FlowControlError, MessageError
from hopchain.flow import CIRCUIT_WINDOW, STREAM_WINDOW
from hopchain.messages import (
    HEADER,
    MAX_ANSWERS,
    MAX_DATA,
    SMALL_PAYLOAD,
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
    decode,
    encode,
)
from hopchain.relaycircuit import (
    MAX_EARLY,
    Deliver,
    Forward,
    Position,
    RelayCircuit,
    Respond,
)


def det(label: str) -> bytes:
    return hashlib.blake2b(label.encode(), digest_size=32).digest()


OWN = det("own identity")
PREVIOUS = det("previous identity")
NEXT = det("next identity")


class OneHop:
    """A relay circuit and the client's view of its one layer."""

    def __init__(self, previous: bytes | None = PREVIOUS) -> None:
        prk = det("one hop prk")
        self.client = [HopKeys.from_prk(prk)]
        self.relay = RelayCircuit(HopKeys.from_prk(prk), OWN, previous)

    def send(self, message: RelayMessage, *, early: bool = False) -> object:
        body = onion.wrap_forward(self.client, encode(message))
        return self.relay.forward(body, early=early)

    def unwrap(self, body: bytes) -> RelayMessage:
        hop, payload = onion.unwrap_backward(self.client, body)
        assert hop == 0
        return decode(payload)


def extend_to(identity: bytes) -> Extend:
    return Extend(identity, det("onion"), "192.0.2.9", 9001, bytes(96))


def test_relay_delivers_stream_messages_to_the_last_hop() -> None:
    hop = OneHop()
    assert hop.relay.position is Position.LAST
    assert hop.send(Begin(1, "example.com", 80)) == Deliver(Begin(1, "example.com", 80))
    assert hop.relay.streams.get(1) is not None
    assert hop.send(Data(1, b"abc")) == Deliver(Data(1, b"abc"))
    assert hop.send(End(1, EndReason.DONE)) == Deliver(End(1, EndReason.DONE))
    assert hop.send(Drop()) is None


def test_relay_refuses_a_duplicate_begin() -> None:
    hop = OneHop()
    hop.send(Begin(1, "example.com", 80))
    with pytest.raises(MessageError, match="already open"):
        hop.send(Begin(1, "example.com", 80))


@pytest.mark.parametrize(
    "message",
    [
        Connected(1, "192.0.2.1"),
        Extended(bytes(64)),
        Truncated(EndReason.MISC),
        Resolved(1, ("192.0.2.1",)),
    ],
)
def test_relay_refuses_messages_only_a_relay_sends(message: RelayMessage) -> None:
    with pytest.raises(MessageError, match="relay got"):
        OneHop().send(message)


def test_relay_refuses_a_malformed_message() -> None:
    hop = OneHop()
    payload = HEADER.pack(200, 1, 0) + bytes(SMALL_PAYLOAD - HEADER.size)
    with pytest.raises(MessageError, match="unknown relay command"):
        hop.relay.forward(onion.wrap_forward(hop.client, payload), early=False)


def test_relay_refuses_a_bad_layer() -> None:
    hop = OneHop()
    body = bytearray(onion.wrap_forward(hop.client, encode(Drop())))
    body[10] ^= 1
    with pytest.raises(CellAuthError):
        hop.relay.forward(bytes(body), early=False)


def test_relay_credits_data_for_an_unknown_stream_at_once() -> None:
    hop = OneHop()
    quarter = CIRCUIT_WINDOW // 4
    results = [hop.send(Data(7, b"x")) for _ in range(quarter)]
    assert results[:-1] == [Respond([])] * (quarter - 1)
    last = results[-1]
    assert isinstance(last, Respond)
    assert [hop.unwrap(b) for b in last.bodies] == [Sendme(0, quarter)]


def test_relay_exit_stream_windows() -> None:
    hop = OneHop()
    hop.send(Begin(1, "example.com", 80))
    assert hop.relay.sendable(1) == STREAM_WINDOW * MAX_DATA
    assert hop.relay.sendable(2) == 0
    bodies = hop.relay.send_data(1, bytes(2 * MAX_DATA))
    assert len(bodies) == 2
    assert [hop.unwrap(b) for b in bodies] == [Data(1, bytes(MAX_DATA))] * 2
    assert hop.relay.sendable(1) == (STREAM_WINDOW - 2) * MAX_DATA
    with pytest.raises(FlowControlError, match="past the window"):
        hop.relay.send_data(1, bytes((STREAM_WINDOW - 2) * MAX_DATA + 1))
    hop.send(Sendme(1, 2))
    assert hop.relay.sendable(1) == STREAM_WINDOW * MAX_DATA
    with pytest.raises(FlowControlError, match="sendme credits"):
        hop.send(Sendme(1, 1))


def test_relay_exit_consumed_gives_sendmes() -> None:
    hop = OneHop()
    hop.send(Begin(1, "example.com", 80))
    for _ in range(STREAM_WINDOW // 4):
        hop.send(Data(1, b"x"))
    bodies = hop.relay.consumed(1, STREAM_WINDOW // 4)
    assert [hop.unwrap(b) for b in bodies] == [Sendme(1, STREAM_WINDOW // 4)]


def test_relay_exit_end_stream() -> None:
    hop = OneHop()
    hop.send(Begin(1, "example.com", 80))
    (body,) = hop.relay.end_stream(1, EndReason.CONNECT_REFUSED)
    assert hop.unwrap(body) == End(1, EndReason.CONNECT_REFUSED)
    assert hop.relay.streams.get(1) is None
    assert hop.relay.end_stream(1, EndReason.DONE) == []


# --- resolve ------------------------------------------------------------------------


def test_relay_resolve_is_a_one_shot_stream() -> None:
    hop = OneHop()
    assert hop.send(Resolve(3, "example.com")) == Deliver(Resolve(3, "example.com"))
    state = hop.relay.streams.get(3)
    assert state is not None
    assert state.resolve
    assert hop.relay.sendable(3) == 0
    (body,) = hop.relay.resolved(3, ["192.0.2.1", "2001:db8::1"])
    assert hop.unwrap(body) == Resolved(3, ("192.0.2.1", "2001:db8::1"))
    assert hop.relay.streams.get(3) is None
    assert hop.relay.resolved(3, ["192.0.2.1"]) == []  # exactly one answer
    # The circuit windows were never touched, and the id is free again.
    assert hop.relay.streams.send.unacked == 0
    assert hop.relay.streams.receive.outstanding == 0
    assert hop.send(Begin(3, "example.com", 80)) == Deliver(Begin(3, "example.com", 80))


def test_relay_resolve_failure_carries_the_reason() -> None:
    hop = OneHop()
    hop.send(Resolve(4, "192.0.2.1", ptr=True))
    (body,) = hop.relay.resolved(4, reason=EndReason.RESOLVE_FAILED)
    assert hop.unwrap(body) == Resolved(4, (), EndReason.RESOLVE_FAILED)
    assert hop.relay.streams.get(4) is None


def test_relay_resolved_sends_at_most_max_answers() -> None:
    hop = OneHop()
    hop.send(Resolve(1, "many.example"))
    answers = [f"192.0.2.{i}" for i in range(MAX_ANSWERS + 4)]
    (body,) = hop.relay.resolved(1, answers)
    assert hop.unwrap(body) == Resolved(1, tuple(answers[:MAX_ANSWERS]))


@pytest.mark.parametrize("reason", [EndReason.DONE, EndReason.TIMEOUT])
def test_relay_end_cancels_a_resolve(reason: EndReason) -> None:
    hop = OneHop()
    hop.send(Resolve(5, "example.com"))
    assert hop.send(End(5, reason)) == Deliver(End(5, reason))
    assert hop.relay.streams.get(5) is None
    assert hop.relay.resolved(5, ["192.0.2.1"]) == []


def test_relay_refuses_data_on_a_resolve_stream() -> None:
    hop = OneHop()
    hop.send(Resolve(6, "example.com"))
    with pytest.raises(MessageError, match="data on resolve stream"):
        hop.send(Data(6, b"x"))


def test_relay_refuses_a_resolve_on_an_open_stream_id() -> None:
    hop = OneHop()
    hop.send(Begin(1, "example.com", 80))
    with pytest.raises(MessageError, match="already open"):
        hop.send(Resolve(1, "example.com"))
    hop.send(Resolve(2, "example.com"))
    with pytest.raises(MessageError, match="already open"):
        hop.send(Begin(2, "example.com", 80))


def test_relay_resolved_is_only_for_resolve_streams() -> None:
    hop = OneHop()
    hop.send(Begin(1, "example.com", 80))
    with pytest.raises(ValueError, match="not a resolve stream"):
        hop.relay.resolved(1, ["192.0.2.1"])
    hop.send(Resolve(2, "example.com"))
    with pytest.raises(ValueError, match="either answers or a reason"):
        hop.relay.resolved(2)
    with pytest.raises(ValueError, match="either answers or a reason"):
        hop.relay.resolved(2, ["192.0.2.1"], EndReason.MISC)


def test_relay_extend_with_a_pending_resolve_is_refused() -> None:
    hop = OneHop()
    hop.send(Resolve(1, "example.com"))
    with pytest.raises(MessageError, match="streams"):
        hop.send(extend_to(NEXT), early=True)


# --- extension ------------------------------------------------------------------------


def test_relay_extend_lifecycle() -> None:
    hop = OneHop()
    request = extend_to(NEXT)
    assert hop.send(request, early=True) == Deliver(request)
    assert hop.relay.position is Position.EXTENDING
    with pytest.raises(MessageError, match="still extending"):
        hop.send(Drop())


def test_relay_extended_makes_a_middle_that_forwards() -> None:
    hop = OneHop()
    hop.send(extend_to(NEXT), early=True)
    body = hop.relay.extended(b"C" * 64)
    assert hop.unwrap(body) == Extended(b"C" * 64)
    assert hop.relay.position is Position.MIDDLE
    # Forwarded cells keep their length and are not decoded here.
    cell = onion.wrap_forward(hop.client, encode(Drop()))
    result = hop.relay.forward(cell, early=False)
    assert isinstance(result, Forward)
    assert len(result.body) == len(cell)
    with pytest.raises(MessageError, match="not extending"):
        hop.relay.extended(b"C" * 64)


def test_relay_extend_failed_makes_it_the_last_hop_again() -> None:
    hop = OneHop()
    hop.send(extend_to(NEXT), early=True)
    body = hop.relay.extend_failed(EndReason.CONNECT_REFUSED)
    assert hop.unwrap(body) == Truncated(EndReason.CONNECT_REFUSED)
    assert hop.relay.position is Position.LAST
    assert hop.send(extend_to(NEXT), early=True) == Deliver(extend_to(NEXT))


def test_relay_created_without_extend_is_refused() -> None:
    with pytest.raises(MessageError, match="not extending"):
        OneHop().relay.extended(bytes(64))


def test_relay_extend_outside_relay_early_is_refused() -> None:
    with pytest.raises(MessageError, match="outside relay_early"):
        OneHop().send(extend_to(NEXT), early=False)


def test_relay_extend_to_itself_is_refused() -> None:
    with pytest.raises(MessageError, match="itself"):
        OneHop().send(extend_to(OWN), early=True)


def test_relay_extend_to_the_previous_hop_is_refused() -> None:
    with pytest.raises(MessageError, match="previous hop"):
        OneHop().send(extend_to(PREVIOUS), early=True)


def test_relay_first_hop_has_no_previous_identity() -> None:
    hop = OneHop(previous=None)
    assert hop.send(extend_to(PREVIOUS), early=True) == Deliver(extend_to(PREVIOUS))


def test_relay_extend_with_streams_is_refused() -> None:
    hop = OneHop()
    hop.send(Begin(1, "example.com", 80))
    with pytest.raises(MessageError, match="streams"):
        hop.send(extend_to(NEXT), early=True)


def test_relay_early_cells_are_limited() -> None:
    hop = OneHop()
    for _ in range(MAX_EARLY):
        assert hop.send(Drop(), early=True) is None
    with pytest.raises(MessageError, match=f"more than {MAX_EARLY}"):
        hop.send(Drop(), early=True)


def test_relay_early_cells_are_counted_in_the_middle_too() -> None:
    hop = OneHop()
    hop.send(extend_to(NEXT), early=True)
    hop.relay.extended(bytes(64))
    for _ in range(MAX_EARLY - 1):
        cell = onion.wrap_forward(hop.client, encode(Drop()))
        assert isinstance(hop.relay.forward(cell, early=True), Forward)
    cell = onion.wrap_forward(hop.client, encode(Drop()))
    with pytest.raises(MessageError, match="relay_early"):
        hop.relay.forward(cell, early=True)


def test_relay_early_limit_bounds_the_path() -> None:
    assert MAX_EARLY == onion.MAX_HOPS - 1
