"""Unit tests for hopchain.crypto.keys."""

import dataclasses
import hashlib

import pytest

from hopchain.crypto import primitives
from hopchain.crypto.keys import IdentityKey, OnionKey, fingerprint

SEED = hashlib.blake2b(b"keys seed", digest_size=32).digest()


def test_identity_key_derives_public_and_signs() -> None:
    key = IdentityKey(SEED)
    assert key.public == primitives.ed25519_public(SEED)
    assert primitives.ed25519_verify(key.public, b"msg", key.sign(b"msg"))


def test_onion_key_derives_public() -> None:
    key = OnionKey(SEED)
    assert key.public == primitives.x25519_public(SEED)


@pytest.mark.parametrize("cls", [IdentityKey, OnionKey])
@pytest.mark.parametrize("size", [0, 31, 33])
def test_keys_refuse_wrong_seed_length(cls: type, size: int) -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        cls(bytes(size))


@pytest.mark.parametrize("cls", [IdentityKey, OnionKey])
def test_keys_do_not_show_secrets_in_repr(cls: type) -> None:
    key = cls(SEED)
    assert SEED.hex() not in repr(key)
    assert repr(SEED) not in repr(key)


def test_keys_are_frozen() -> None:
    key = IdentityKey(SEED)
    with pytest.raises(dataclasses.FrozenInstanceError):
        key.public = bytes(32)  # type: ignore[misc]


def test_fingerprint_is_first_eight_bytes_hex() -> None:
    assert fingerprint(bytes(range(32))) == "0001020304050607"
