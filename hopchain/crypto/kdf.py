"""Key derivation: BLAKE2b, extract then expand, with domain separation.

``extract(label, secret)`` compresses handshake secrets into a 32-byte
pseudo-random key, personalised with the protocol label, so secrets from the
link handshake and the circuit handshake can never be confused.
``expand(prk, purpose)`` then derives each sub-key with BLAKE2b keyed by the
PRK over a distinct purpose string (one call per key, as in HKDF-expand with
a single block).  BLAKE2b's ``person`` field carries the label, which is the
mechanism BLAKE2 defines for domain separation.
"""

import hashlib
from typing import Final

KEY_BYTES: Final = 32


def extract(label: bytes, secret: bytes) -> bytes:
    """A 32-byte pseudo-random key from ``secret`` under a protocol ``label``.

    Args:
        label: at most 16 bytes, names the protocol and version.
        secret: the concatenated handshake secrets and transcript.
    """
    if len(label) > hashlib.blake2b.PERSON_SIZE:
        raise ValueError(f"kdf label too long: {len(label)} > 16 bytes")
    return hashlib.blake2b(secret, digest_size=KEY_BYTES, person=label).digest()


def expand(prk: bytes, purpose: bytes, length: int = KEY_BYTES) -> bytes:
    """Sub-key number ``purpose`` of ``prk``; ``length`` up to 64 bytes."""
    return hashlib.blake2b(purpose, key=prk, digest_size=length).digest()


def mac(key: bytes, message: bytes) -> bytes:
    """A 32-byte keyed BLAKE2b MAC."""
    return hashlib.blake2b(message, key=key, digest_size=KEY_BYTES).digest()
