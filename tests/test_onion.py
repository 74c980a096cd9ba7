"""Unit and property tests for hopchain.crypto.onion (per-hop AEAD layers).

Each test builds the client's view and the relays' view of the same hop keys
(separate ``HopKeys`` objects, because each side keeps its own counters).
"""

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hopchain.crypto import onion
from hopchain.crypto.onion import MAX_HOPS, SLOT, STACK_BYTES, HopKeys
from hopchain.errors import CellAuthError
from hopchain.messages import LARGE_PAYLOAD, SMALL_PAYLOAD

hop_counts = st.integers(1, MAX_HOPS)
payloads = st.binary(min_size=1, max_size=SMALL_PAYLOAD)


def prk(label: str) -> bytes:
    return hashlib.blake2b(label.encode(), digest_size=32).digest()


def make_circuit(hops: int, tag: str = "") -> tuple[list[HopKeys], list[HopKeys]]:
    """(client keys, relay keys) for a circuit of ``hops`` hops."""
    prks = [prk(f"onion hop {i} {tag}") for i in range(hops)]
    return [HopKeys.from_prk(p) for p in prks], [HopKeys.from_prk(p) for p in prks]


def flip_bit(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def peel_all(relays: list[HopKeys], body: bytes) -> list[bytes]:
    """The body each hop emits after peeling, in path order."""
    out = []
    for hop in relays:
        body = onion.peel_forward(hop, body)
        out.append(body)
    return out


def send_backward(relays: list[HopKeys], origin: int, payload: bytes) -> bytes:
    """Hop ``origin`` sends ``payload``; hops before it add their layers."""
    body = onion.originate_backward(relays[origin], payload)
    for hop in reversed(relays[:origin]):
        body = onion.add_backward(hop, body)
    return body


# --- forward -----------------------------------------------------------------


@given(hops=hop_counts, cells=st.lists(payloads, min_size=1, max_size=3))
def test_prop_forward_wrap_then_peel_yields_plaintext(
    hops: int, cells: list[bytes]
) -> None:
    client, relays = make_circuit(hops)
    for payload in cells:
        body = onion.wrap_forward(client, payload)
        assert len(body) == len(payload) + STACK_BYTES
        emitted = peel_all(relays, body)
        # Every link carries the same length, whatever the hop count.
        assert {len(b) for b in emitted} == {len(body)}
        assert emitted[-1][: len(payload)] == payload


@pytest.mark.parametrize("size", [SMALL_PAYLOAD, LARGE_PAYLOAD])
def test_forward_size_classes(size: int) -> None:
    client, relays = make_circuit(3)
    payload = bytes(range(256)) * (size // 256)
    body = onion.wrap_forward(client, payload)
    assert len(body) == size + STACK_BYTES
    assert peel_all(relays, body)[-1][:size] == payload


def test_forward_counters_advance_on_both_sides() -> None:
    client, relays = make_circuit(3)
    for n in range(1, 4):
        peel_all(relays, onion.wrap_forward(client, b"a"))
        assert [h.forward_count for h in client] == [n, n, n]
        assert [h.forward_count for h in relays] == [n, n, n]
    assert [h.backward_count for h in client + relays] == [0] * 6


@given(hops=hop_counts, data=st.data())
def test_prop_forward_flipped_bit_is_caught_by_the_next_hop(
    hops: int, data: st.DataObject
) -> None:
    """One flipped bit on any link, anywhere in the body, fails the next peel.

    The bits of the tag stack beyond the current hop's own tag (later hops'
    tags, the fill and the pads) are associated data of the current layer.
    """
    client, relays = make_circuit(hops)
    payload = data.draw(payloads, label="payload")
    link = data.draw(st.integers(0, hops - 1), label="link (index of next hop)")
    body = onion.wrap_forward(client, payload)
    for hop in relays[:link]:
        body = onion.peel_forward(hop, body)
    bit = data.draw(st.integers(0, len(body) * 8 - 1), label="bit")
    with pytest.raises(CellAuthError):
        onion.peel_forward(relays[link], flip_bit(body, bit))
    # The hop did not advance: the genuine cell still passes afterwards.
    assert peel_all(relays[link:], body)[-1][: len(payload)] == payload


@pytest.mark.parametrize("hops", range(1, MAX_HOPS + 1))
def test_forward_every_stack_slot_is_authenticated(hops: int) -> None:
    """Deterministic companion of the property: one flip per stack slot."""
    client, relays = make_circuit(hops)
    payload = b"p" * 64
    body = onion.wrap_forward(client, payload)
    for slot in range(MAX_HOPS):
        bit = (len(payload) + slot * SLOT) * 8 + 3
        with pytest.raises(CellAuthError):
            onion.peel_forward(relays[0], flip_bit(body, bit))


def test_forward_replayed_cell_is_rejected() -> None:
    client, relays = make_circuit(3)
    body = onion.wrap_forward(client, b"once")
    onion.peel_forward(relays[0], body)
    with pytest.raises(CellAuthError):
        onion.peel_forward(relays[0], body)


def test_forward_reordered_cells_are_rejected() -> None:
    client, relays = make_circuit(3)
    first = onion.wrap_forward(client, b"first")
    second = onion.wrap_forward(client, b"second")
    with pytest.raises(CellAuthError):
        onion.peel_forward(relays[0], second)
    assert peel_all(relays, first)[-1][:5] == b"first"
    assert peel_all(relays, second)[-1][:6] == b"second"


def test_forward_dropped_cell_breaks_the_circuit() -> None:
    client, relays = make_circuit(2)
    onion.wrap_forward(client, b"lost")
    later = onion.wrap_forward(client, b"later")
    with pytest.raises(CellAuthError):
        onion.peel_forward(relays[0], later)


def test_forward_cell_for_another_circuit_is_rejected() -> None:
    client, _ = make_circuit(3, "a")
    _, relays = make_circuit(3, "b")
    with pytest.raises(CellAuthError):
        onion.peel_forward(relays[0], onion.wrap_forward(client, b"x"))


@pytest.mark.parametrize("hops", [0, MAX_HOPS + 1])
def test_wrap_forward_refuses_bad_hop_counts(hops: int) -> None:
    client, _ = make_circuit(hops)
    with pytest.raises(ValueError, match="hops"):
        onion.wrap_forward(client, b"x")


@pytest.mark.parametrize("size", [0, 1, STACK_BYTES])
def test_short_bodies_are_rejected(size: int) -> None:
    client, relays = make_circuit(1)
    with pytest.raises(CellAuthError, match="too short"):
        onion.peel_forward(relays[0], bytes(size))
    with pytest.raises(CellAuthError, match="too short"):
        onion.unwrap_backward(client, bytes(size))


# --- backward ----------------------------------------------------------------


@given(hops=hop_counts, data=st.data())
def test_prop_backward_is_attributed_to_its_origin(
    hops: int, data: st.DataObject
) -> None:
    client, relays = make_circuit(hops)
    origins = data.draw(
        st.lists(st.integers(0, hops - 1), min_size=1, max_size=6), label="origins"
    )
    for n, origin in enumerate(origins):
        payload = bytes([n]) * SMALL_PAYLOAD
        body = send_backward(relays, origin, payload)
        assert len(body) == SMALL_PAYLOAD + STACK_BYTES
        assert onion.unwrap_backward(client, body) == (origin, payload)


@given(hops=hop_counts, data=st.data())
def test_prop_backward_flipped_bit_is_caught_by_the_client(
    hops: int, data: st.DataObject
) -> None:
    client, relays = make_circuit(hops)
    origin = data.draw(st.integers(0, hops - 1), label="origin")
    payload = data.draw(payloads, label="payload")
    body = send_backward(relays, origin, payload)
    bit = data.draw(st.integers(0, len(body) * 8 - 1), label="bit")
    with pytest.raises(CellAuthError):
        onion.unwrap_backward(client, flip_bit(body, bit))
    assert onion.unwrap_backward(client, body) == (origin, payload)


@given(hops=st.integers(2, MAX_HOPS), data=st.data())
def test_prop_backward_flip_between_relays_is_caught_by_the_client(
    hops: int, data: st.DataObject
) -> None:
    """A bit flipped on a relay-to-relay link reaches the client and fails there.

    The end of the stack is left out here: each hop on the way drops the last
    slot (always the originator's junk), so after ``link`` more hops the last
    ``link`` slots of the flipped body never reach the client.  See
    ``test_backward_change_in_a_dropped_slot_is_caught_by_the_client``.
    """
    client, relays = make_circuit(hops)
    origin = data.draw(st.integers(1, hops - 1), label="origin")
    link = data.draw(st.integers(1, origin), label="flip before hop link-1 adds")
    payload = b"q" * 100
    body = onion.originate_backward(relays[origin], payload)
    for hop in reversed(relays[link:origin]):
        body = onion.add_backward(hop, body)
    kept_bits = (len(body) - link * SLOT) * 8
    body = flip_bit(body, data.draw(st.integers(0, kept_bits - 1), label="bit"))
    for hop in reversed(relays[:link]):
        body = onion.add_backward(hop, body)
    with pytest.raises(CellAuthError):
        onion.unwrap_backward(client, body)


def test_backward_change_in_a_dropped_slot_is_caught_by_the_client() -> None:
    """A backward cell changed on the exit-to-middle link must fail at the client.

    On a 3-hop circuit the exit sends ``T2 | J0..J6``.  The middle adds its
    layer and drops J6; the guard adds its layer and drops J5.  Nothing
    authenticates J5, yet the guard reads it before dropping it: bits changed
    there (by the exit when it originates, or by anyone on the exit-to-middle
    link) reach the guard and are never seen by the honest middle nor by the
    client.  A colluding exit and guard get an undetectable in-band marking
    channel across an honest middle (a tagging attack), against DESIGN.md:
    "a cell changed anywhere is rejected".
    """
    client, relays = make_circuit(3)
    payload = b"m" * 100
    at_exit = onion.originate_backward(relays[2], payload)
    marker = b"exit-to-guard marker, 32 bytes!!"
    j5 = len(payload) + 6 * SLOT
    marked = at_exit[:j5] + marker + at_exit[j5 + SLOT :]
    at_middle = onion.add_backward(relays[1], marked)
    # The guard sees the marker in the last slot of the cell it receives.
    assert at_middle[-SLOT:] == marker
    at_client = onion.add_backward(relays[0], at_middle)
    with pytest.raises(CellAuthError):
        onion.unwrap_backward(client, at_client)


def test_backward_replayed_cell_is_rejected() -> None:
    client, relays = make_circuit(3)
    body = send_backward(relays, 2, b"r" * 32)
    assert onion.unwrap_backward(client, body) == (2, b"r" * 32)
    with pytest.raises(CellAuthError):
        onion.unwrap_backward(client, body)


def test_backward_reordered_cells_are_rejected() -> None:
    client, relays = make_circuit(3)
    first = send_backward(relays, 2, b"1" * 32)
    second = send_backward(relays, 2, b"2" * 32)
    with pytest.raises(CellAuthError):
        onion.unwrap_backward(client, second)
    assert onion.unwrap_backward(client, first) == (2, b"1" * 32)
    assert onion.unwrap_backward(client, second) == (2, b"2" * 32)


def test_backward_failure_leaves_client_counters_unchanged() -> None:
    client, relays = make_circuit(3)
    body = send_backward(relays, 1, b"s" * 32)
    with pytest.raises(CellAuthError):
        onion.unwrap_backward(client, flip_bit(body, len(body) * 8 - 1))
    assert [h.backward_count for h in client] == [0, 0, 0]
    assert onion.unwrap_backward(client, body) == (1, b"s" * 32)
    assert [h.backward_count for h in client] == [1, 1, 0]


def test_backward_from_a_hop_the_client_does_not_know_is_rejected() -> None:
    client, _ = make_circuit(2)
    _, relays = make_circuit(3)
    # The third relay is not part of the client's 2-hop view.
    body = send_backward(relays, 2, b"x" * 32)
    with pytest.raises(CellAuthError, match="matches no hop"):
        onion.unwrap_backward(client, body)
