"""The only module that touches libsodium (through PyNaCl).

Everything else in hopchain calls these thin wrappers, so the choice of
primitive lives in one place:

* AEAD: AEGIS-256 (``crypto_aead_aegis256``), 32-byte key, 32-byte nonce,
  32-byte tag.  It is the fastest AEAD libsodium offers on CPUs with AES
  instructions (about 2.7x ChaCha20-Poly1305 here), and its 256-bit nonce and
  tag leave ample margin for counter nonces.
* Key agreement: X25519 (``crypto_scalarmult``).
* Signatures: Ed25519 (``crypto_sign``).
* Hashing and the KDF: BLAKE2b, from :mod:`hashlib` (see ``kdf.py``).

The AEAD is called through PyNaCl's cffi handle on libsodium (``nacl._sodium``)
rather than through ``nacl.bindings``: the binding's argument checks and
buffer allocation cost about 20 us per call, three times the work of
sealing a 32 KiB cell, and this is the hot path (several calls per cell per
hop).  The C function and its arguments are exactly those the binding uses;
inputs are passed without copies (bytes, bytearray or memoryview).
"""

from typing import Final

import nacl.bindings as sodium
import nacl.exceptions
import nacl.signing
from nacl._sodium import ffi as _ffi
from nacl._sodium import lib as _lib

from hopchain.errors import CellAuthError

AEAD_KEY_BYTES: Final = 32
AEAD_TAG_BYTES: Final = 32
AEAD_NONCE_BYTES: Final = 32
X25519_BYTES: Final = 32
ED25519_PUBLIC_BYTES: Final = 32
ED25519_SIGNATURE_BYTES: Final = 64

_NONCE_TAIL: Final = bytes(AEAD_NONCE_BYTES - 8)
_NULL: Final = _ffi.NULL
_encrypt = _lib.crypto_aead_aegis256_encrypt
_decrypt = _lib.crypto_aead_aegis256_decrypt
_from_buffer = _ffi.from_buffer
Buffer = bytes | bytearray | memoryview


def counter_nonce(counter: int) -> bytes:
    """The AEAD nonce for message number ``counter`` under one key."""
    return counter.to_bytes(8, "little") + _NONCE_TAIL


def _check_key(key: bytes) -> None:
    if len(key) != AEAD_KEY_BYTES:
        raise ValueError(f"aead key must be {AEAD_KEY_BYTES} bytes")


def aead_seal(key: bytes, counter: int, plaintext: Buffer, ad: Buffer | None) -> bytes:
    """Encrypt and authenticate; returns ciphertext followed by the 32-byte tag."""
    _check_key(key)
    size = len(plaintext)
    out = bytearray(size + AEAD_TAG_BYTES)
    _encrypt(
        _from_buffer(out),
        _NULL,
        _from_buffer(plaintext),
        size,
        _from_buffer(ad) if ad else _NULL,
        len(ad) if ad else 0,
        _NULL,
        counter_nonce(counter),
        key,
    )
    return bytes(out)


def aead_open(key: bytes, counter: int, sealed: Buffer, ad: Buffer | None) -> bytes:
    """Check the tag and decrypt ``sealed`` (ciphertext then tag).

    Raises:
        CellAuthError: the tag does not match (changed, replayed or reordered).
    """
    _check_key(key)
    size = len(sealed) - AEAD_TAG_BYTES
    if size < 0:
        raise CellAuthError("sealed message shorter than its tag")
    out = bytearray(size)
    status = _decrypt(
        _from_buffer(out) if size else _NULL,
        _NULL,
        _NULL,
        _from_buffer(sealed),
        len(sealed),
        _from_buffer(ad) if ad else _NULL,
        len(ad) if ad else 0,
        counter_nonce(counter),
        key,
    )
    if status != 0:
        raise CellAuthError("aead tag mismatch")
    return bytes(out)


def keystream(key: bytes, counter: int, length: int) -> bytes:
    """``length`` pseudo-random bytes from AEGIS-256 run over zeros.

    Used for filler and padding that a peer must be able to recompute.
    """
    return aead_seal(key, counter, bytes(length), None)[:length]


def x25519_public(secret: bytes) -> bytes:
    """The X25519 public key of a 32-byte secret scalar."""
    return sodium.crypto_scalarmult_base(secret)


def x25519(secret: bytes, public: bytes) -> bytes:
    """X25519 shared secret; refuses the all-zero result of a low-order point.

    Raises:
        ValueError: ``public`` is a low-order point (libsodium refuses it).
    """
    try:
        shared = sodium.crypto_scalarmult(secret, public)
    except nacl.exceptions.RuntimeError as exc:
        raise ValueError("x25519 with a low-order point") from exc
    if shared == bytes(X25519_BYTES):
        raise ValueError("x25519 with a low-order point")
    return shared


def ed25519_public(seed: bytes) -> bytes:
    """The Ed25519 public key for a 32-byte seed."""
    return bytes(nacl.signing.SigningKey(seed).verify_key)


def ed25519_sign(seed: bytes, message: bytes) -> bytes:
    """A detached 64-byte Ed25519 signature of ``message``."""
    return nacl.signing.SigningKey(seed).sign(message).signature


def ed25519_verify(public: bytes, message: bytes, signature: bytes) -> bool:
    """True when ``signature`` is a valid Ed25519 signature by ``public``."""
    if len(public) != ED25519_PUBLIC_BYTES or len(signature) != ED25519_SIGNATURE_BYTES:
        return False
    try:
        nacl.signing.VerifyKey(public).verify(message, signature)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError):
        return False
    return True
