"""Unit and property tests for hopchain.crypto.kdf."""

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hopchain.crypto import kdf
from hopchain.crypto.handshake import CIRCUIT_LABEL, LINK_LABEL

PRK = hashlib.blake2b(b"kdf prk", digest_size=32).digest()


def test_extract_matches_personalised_blake2b() -> None:
    expected = hashlib.blake2b(b"secret", digest_size=32, person=LINK_LABEL).digest()
    assert kdf.extract(LINK_LABEL, b"secret") == expected


def test_extract_separates_labels() -> None:
    assert kdf.extract(LINK_LABEL, b"secret") != kdf.extract(CIRCUIT_LABEL, b"secret")
    assert kdf.extract(b"", b"secret") != kdf.extract(LINK_LABEL, b"secret")


def test_extract_refuses_a_label_longer_than_sixteen_bytes() -> None:
    kdf.extract(b"x" * 16, b"secret")
    with pytest.raises(ValueError, match="label too long"):
        kdf.extract(b"x" * 17, b"secret")


@given(length=st.integers(1, 64))
def test_prop_expand_length(length: int) -> None:
    assert len(kdf.expand(PRK, b"purpose", length)) == length


def test_expand_separates_purposes_and_keys() -> None:
    purposes = [b"layer forward", b"layer backward", b"layer pad", b"verify"]
    outputs = {kdf.expand(PRK, p) for p in purposes}
    assert len(outputs) == len(purposes)
    other = hashlib.blake2b(b"other prk", digest_size=32).digest()
    assert kdf.expand(PRK, b"verify") != kdf.expand(other, b"verify")
    assert len(kdf.expand(PRK, b"verify")) == kdf.KEY_BYTES


def test_mac_is_keyed_blake2b() -> None:
    expected = hashlib.blake2b(b"message", key=PRK, digest_size=32).digest()
    assert kdf.mac(PRK, b"message") == expected
    assert kdf.mac(PRK, b"message") != kdf.mac(PRK, b"messagf")
