"""Unit and property tests for hopchain.crypto.handshake (ntor-style)."""

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hopchain.crypto import handshake
from hopchain.crypto.handshake import CIRCUIT_LABEL, LINK_LABEL
from hopchain.crypto.keys import IdentityKey, OnionKey
from hopchain.errors import HandshakeError

secrets32 = st.binary(min_size=32, max_size=32)
LOW_ORDER = bytes.fromhex(
    "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"
)


def det(label: str) -> bytes:
    """32 deterministic bytes named by ``label``."""
    return hashlib.blake2b(label.encode(), digest_size=32).digest()


IDENTITY = IdentityKey(det("relay identity"))
ONION = OnionKey(det("relay onion"))
OLD_ONION = OnionKey(det("relay old onion"))


def flip_bit(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def run(
    label: bytes = CIRCUIT_LABEL,
    x: bytes = det("x"),
    y: bytes = det("y"),
    onion: OnionKey = ONION,
) -> tuple[handshake.ClientHandshake, bytes, bytes]:
    """A complete exchange; returns (client state, CREATED, server prk)."""
    state = handshake.client_start_with_ephemeral(
        label, IDENTITY.public, onion.public, x
    )
    created, prk = handshake.server_reply_with_ephemeral(
        label, IDENTITY.public, [ONION, OLD_ONION], state.message, y
    )
    return state, created, prk


@given(label=st.sampled_from([LINK_LABEL, CIRCUIT_LABEL]), x=secrets32, y=secrets32)
def test_prop_handshake_agrees(label: bytes, x: bytes, y: bytes) -> None:
    state, created, server_prk = run(label, x, y)
    assert len(state.message) == handshake.CLIENT_MESSAGE_BYTES
    assert len(created) == handshake.SERVER_MESSAGE_BYTES
    assert handshake.client_finish(state, created) == server_prk


def test_handshake_message_layout() -> None:
    state, _, _ = run()
    assert state.message[:32] == IDENTITY.public
    assert state.message[32:64] == ONION.public
    assert state.message[64:] == state.ephemeral_public
    assert det("x").hex() not in repr(state)


def test_handshake_accepts_a_rotated_onion_key() -> None:
    state, created, prk = run(onion=OLD_ONION)
    assert handshake.client_finish(state, created) == prk


def test_handshake_keys_are_fresh_per_ephemeral() -> None:
    _, _, prk1 = run(x=det("x1"))
    _, _, prk2 = run(x=det("x2"))
    _, _, prk3 = run(y=det("y3"))
    assert len({prk1, prk2, prk3}) == 3


def test_handshake_labels_are_separated() -> None:
    state, _, _ = run(label=LINK_LABEL)
    created, _ = handshake.server_reply_with_ephemeral(
        CIRCUIT_LABEL, IDENTITY.public, [ONION], state.message, det("y")
    )
    with pytest.raises(HandshakeError, match="auth"):
        handshake.client_finish(state, created)


@given(bit=st.integers(0, handshake.SERVER_MESSAGE_BYTES * 8 - 1))
def test_prop_any_flipped_bit_in_created_is_refused(bit: int) -> None:
    state, created, _ = run()
    with pytest.raises(HandshakeError):
        handshake.client_finish(state, flip_bit(created, bit))


def test_created_from_an_impostor_without_the_onion_key_is_refused() -> None:
    state, _, _ = run()
    impostor = OnionKey(det("impostor onion"))
    forged_create = state.message[:32] + impostor.public + state.message[64:]
    created, _ = handshake.server_reply_with_ephemeral(
        CIRCUIT_LABEL, IDENTITY.public, [impostor], forged_create, det("y")
    )
    with pytest.raises(HandshakeError, match="auth"):
        handshake.client_finish(state, created)


@pytest.mark.parametrize("size", [0, 63, 65, 96])
def test_created_of_wrong_length_is_refused(size: int) -> None:
    state, _, _ = run()
    with pytest.raises(HandshakeError, match="not 64"):
        handshake.client_finish(state, bytes(size))


@pytest.mark.parametrize("y", [bytes(32), LOW_ORDER])
def test_created_with_low_order_y_is_refused(y: bytes) -> None:
    state, created, _ = run()
    with pytest.raises(HandshakeError, match="low-order"):
        handshake.client_finish(state, y + created[32:])


@pytest.mark.parametrize("size", [0, 95, 97])
def test_create_of_wrong_length_is_refused(size: int) -> None:
    with pytest.raises(HandshakeError, match="not 96"):
        handshake.server_reply_with_ephemeral(
            CIRCUIT_LABEL, IDENTITY.public, [ONION], bytes(size), det("y")
        )


def test_create_for_another_identity_is_refused() -> None:
    state, _, _ = run()
    other = IdentityKey(det("other identity")).public
    with pytest.raises(HandshakeError, match="identity"):
        handshake.server_reply_with_ephemeral(
            CIRCUIT_LABEL, other, [ONION], state.message, det("y")
        )


def test_create_for_an_unknown_onion_key_is_refused() -> None:
    state, _, _ = run()
    with pytest.raises(HandshakeError, match="onion key"):
        handshake.server_reply_with_ephemeral(
            CIRCUIT_LABEL, IDENTITY.public, [OLD_ONION], state.message, det("y")
        )


@pytest.mark.parametrize("x", [bytes(32), LOW_ORDER])
def test_create_with_low_order_x_is_refused(x: bytes) -> None:
    message = IDENTITY.public + ONION.public + x
    with pytest.raises(HandshakeError, match="low-order"):
        handshake.server_reply_with_ephemeral(
            CIRCUIT_LABEL, IDENTITY.public, [ONION], message, det("y")
        )


def test_client_start_refuses_wrong_key_sizes() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        handshake.client_start_with_ephemeral(
            CIRCUIT_LABEL, IDENTITY.public[:31], ONION.public, det("x")
        )
    with pytest.raises(ValueError, match="32 bytes"):
        handshake.client_start_with_ephemeral(
            CIRCUIT_LABEL, IDENTITY.public, ONION.public + b"\0", det("x")
        )
