"""Unit and property tests for hopchain.crypto.primitives (the libsodium wrappers)."""

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hopchain.crypto import primitives
from hopchain.errors import CellAuthError

KEY = hashlib.blake2b(b"primitives key", digest_size=32).digest()
OTHER_KEY = hashlib.blake2b(b"primitives other key", digest_size=32).digest()

# Points of small order on Curve25519 (the libsodium blocklist).
LOW_ORDER_POINTS = [
    bytes(32),
    (1).to_bytes(32, "little"),
    bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
    bytes.fromhex("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),
    bytes.fromhex("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
    bytes.fromhex("edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
    bytes.fromhex("eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
]


def flip_bit(data: bytes, bit: int) -> bytes:
    """``data`` with bit number ``bit`` (0 = lowest bit of byte 0) inverted."""
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def test_counter_nonce_layout() -> None:
    assert primitives.counter_nonce(0) == bytes(32)
    assert primitives.counter_nonce(1) == b"\x01" + bytes(31)
    assert primitives.counter_nonce(0x0102) == b"\x02\x01" + bytes(30)
    assert len(primitives.counter_nonce(2**64 - 1)) == primitives.AEAD_NONCE_BYTES


@given(
    plaintext=st.binary(max_size=2048),
    ad=st.none() | st.binary(max_size=256),
    counter=st.integers(0, 2**64 - 1),
)
def test_prop_aead_round_trip(plaintext: bytes, ad: bytes | None, counter: int) -> None:
    sealed = primitives.aead_seal(KEY, counter, plaintext, ad)
    assert len(sealed) == len(plaintext) + primitives.AEAD_TAG_BYTES
    assert primitives.aead_open(KEY, counter, sealed, ad) == plaintext


@given(plaintext=st.binary(max_size=512), ad=st.binary(max_size=64), data=st.data())
def test_prop_aead_any_flipped_bit_is_rejected(
    plaintext: bytes, ad: bytes, data: st.DataObject
) -> None:
    sealed = primitives.aead_seal(KEY, 7, plaintext, ad)
    bit = data.draw(st.integers(0, len(sealed) * 8 - 1), label="bit")
    with pytest.raises(CellAuthError):
        primitives.aead_open(KEY, 7, flip_bit(sealed, bit), ad)


def test_aead_wrong_counter_key_or_ad_is_rejected() -> None:
    sealed = primitives.aead_seal(KEY, 3, b"payload", b"ad")
    with pytest.raises(CellAuthError):
        primitives.aead_open(KEY, 4, sealed, b"ad")
    with pytest.raises(CellAuthError):
        primitives.aead_open(OTHER_KEY, 3, sealed, b"ad")
    with pytest.raises(CellAuthError):
        primitives.aead_open(KEY, 3, sealed, b"ae")
    with pytest.raises(CellAuthError):
        primitives.aead_open(KEY, 3, sealed, None)
    with pytest.raises(CellAuthError):
        primitives.aead_open(KEY, 3, sealed[:-1], b"ad")


@given(
    counter=st.integers(0, 2**32), short=st.integers(0, 300), extra=st.integers(0, 300)
)
def test_prop_keystream_is_deterministic_and_prefix_stable(
    counter: int, short: int, extra: int
) -> None:
    a = primitives.keystream(KEY, counter, short)
    assert len(a) == short
    assert primitives.keystream(KEY, counter, short + extra)[:short] == a
    assert primitives.keystream(KEY, counter, short) == a


def test_keystream_depends_on_key_and_counter() -> None:
    base = primitives.keystream(KEY, 0, 64)
    assert primitives.keystream(KEY, 1, 64) != base
    assert primitives.keystream(OTHER_KEY, 0, 64) != base
    assert base != bytes(64)


@given(a=st.binary(min_size=32, max_size=32), b=st.binary(min_size=32, max_size=32))
def test_prop_x25519_agreement(a: bytes, b: bytes) -> None:
    a_pub = primitives.x25519_public(a)
    b_pub = primitives.x25519_public(b)
    assert primitives.x25519(a, b_pub) == primitives.x25519(b, a_pub)


@pytest.mark.parametrize("point", LOW_ORDER_POINTS, ids=lambda p: p.hex()[:8])
def test_x25519_low_order_point_is_refused(point: bytes) -> None:
    with pytest.raises(ValueError, match="low-order"):
        primitives.x25519(KEY, point)


@given(seed=st.binary(min_size=32, max_size=32), message=st.binary(max_size=256))
def test_prop_ed25519_sign_verify(seed: bytes, message: bytes) -> None:
    public = primitives.ed25519_public(seed)
    signature = primitives.ed25519_sign(seed, message)
    assert len(signature) == primitives.ED25519_SIGNATURE_BYTES
    assert primitives.ed25519_verify(public, message, signature)
    assert not primitives.ed25519_verify(public, message + b"x", signature)


def test_ed25519_verify_refuses_garbage_without_raising() -> None:
    seed = KEY
    public = primitives.ed25519_public(seed)
    signature = primitives.ed25519_sign(seed, b"m")
    assert not primitives.ed25519_verify(public[:31], b"m", signature)
    assert not primitives.ed25519_verify(public, b"m", signature[:63])
    assert not primitives.ed25519_verify(public, b"m", flip_bit(signature, 5))
    assert not primitives.ed25519_verify(bytes(32), b"m", signature)
    assert not primitives.ed25519_verify(b"\xff" * 32, b"m", signature)
