"""One-way authenticated, forward-secret key agreement (ntor-style).

The initiator knows the responder's identity ``ID`` (Ed25519 public key) and
static onion key ``B`` (X25519) from the signed directory; the responder
learns nothing about the initiator.  Both sides use fresh ephemeral keys, so
a later theft of ``b`` does not reveal old sessions' keys.

    initiator -> responder   CREATE  = ID | B | X                (96 bytes)
    responder -> initiator   CREATED = Y | AUTH                  (64 bytes)

    secret = X25519(x, Y) | X25519(x, B) | ID | B | X | Y          (initiator)
           = X25519(y, X) | X25519(b, X) | ID | B | X | Y          (responder)
    prk    = BLAKE2b(secret, person=LABEL)                         (kdf.extract)
    AUTH   = BLAKE2b-MAC(expand(prk, "verify"), ID | B | Y | X | "server")

The label (``LINK_LABEL`` or ``CIRCUIT_LABEL``) separates link and circuit
handshakes.  Session keys are later expanded from ``prk`` with distinct
purpose strings.  Each step has a ``*_with_ephemeral`` form that takes the
ephemeral secret, so known-answer vectors can be checked byte for byte.
"""

import hmac
from dataclasses import dataclass, field
from typing import Final

from hopchain.crypto import kdf, primitives
from hopchain.crypto.keys import OnionKey
from hopchain.errors import HandshakeError

LINK_LABEL: Final = b"hopchain-link-v1"
CIRCUIT_LABEL: Final = b"hopchain-circ-v1"
CLIENT_MESSAGE_BYTES: Final = 96
SERVER_MESSAGE_BYTES: Final = 64


@dataclass(frozen=True, slots=True)
class ClientHandshake:
    """What the initiator keeps between sending CREATE and reading CREATED."""

    label: bytes
    identity: bytes
    onion_public: bytes
    ephemeral_secret: bytes = field(repr=False)
    ephemeral_public: bytes

    @property
    def message(self) -> bytes:
        """The CREATE handshake bytes: ID | B | X."""
        return self.identity + self.onion_public + self.ephemeral_public


def client_start_with_ephemeral(
    label: bytes, identity: bytes, onion_public: bytes, ephemeral_secret: bytes
) -> ClientHandshake:
    """Begin a handshake towards (identity, onion_public) with a given ``x``."""
    if len(identity) != 32 or len(onion_public) != 32:
        raise ValueError("identity and onion key must be 32 bytes each")
    return ClientHandshake(
        label=label,
        identity=identity,
        onion_public=onion_public,
        ephemeral_secret=ephemeral_secret,
        ephemeral_public=primitives.x25519_public(ephemeral_secret),
    )


def _auth(prk: bytes, identity: bytes, onion: bytes, y: bytes, x: bytes) -> bytes:
    return kdf.mac(kdf.expand(prk, b"verify"), identity + onion + y + x + b"server")


def server_reply_with_ephemeral(
    label: bytes,
    identity: bytes,
    onion_keys: list[OnionKey],
    client_message: bytes,
    ephemeral_secret: bytes,
) -> tuple[bytes, bytes]:
    """Answer a CREATE; returns (CREATED message, prk).

    Args:
        label: LINK_LABEL or CIRCUIT_LABEL.
        identity: this relay's identity public key.
        onion_keys: this relay's current onion keys (more than one while a
            rotated key is still accepted).
        client_message: the 96 CREATE bytes from the peer.
        ephemeral_secret: this side's fresh ``y``.

    Raises:
        HandshakeError: wrong length, another relay's identity, an unknown
            onion key, or a low-order X.
    """
    if len(client_message) != CLIENT_MESSAGE_BYTES:
        raise HandshakeError(f"create is {len(client_message)} bytes, not 96")
    wanted_id = client_message[:32]
    wanted_b = client_message[32:64]
    x = client_message[64:]
    if not hmac.compare_digest(wanted_id, identity):
        raise HandshakeError("create names another relay's identity")
    key = next((k for k in onion_keys if hmac.compare_digest(k.public, wanted_b)), None)
    if key is None:
        raise HandshakeError("create names an unknown onion key")
    y = primitives.x25519_public(ephemeral_secret)
    try:
        shared = primitives.x25519(ephemeral_secret, x) + primitives.x25519(
            key.secret, x
        )
    except ValueError as exc:
        raise HandshakeError("create carries a low-order key") from exc
    prk = kdf.extract(label, shared + identity + key.public + x + y)
    return y + _auth(prk, identity, key.public, y, x), prk


def client_finish(state: ClientHandshake, server_message: bytes) -> bytes:
    """Check CREATED and return the shared prk.

    Raises:
        HandshakeError: wrong length, low-order Y, or AUTH mismatch (the
            responder does not hold the onion key from the directory).
    """
    if len(server_message) != SERVER_MESSAGE_BYTES:
        raise HandshakeError(f"created is {len(server_message)} bytes, not 64")
    y, auth = server_message[:32], server_message[32:]
    try:
        shared = primitives.x25519(state.ephemeral_secret, y) + primitives.x25519(
            state.ephemeral_secret, state.onion_public
        )
    except ValueError as exc:
        raise HandshakeError("created carries a low-order key") from exc
    prk = kdf.extract(
        state.label,
        shared + state.identity + state.onion_public + state.ephemeral_public + y,
    )
    expected = _auth(prk, state.identity, state.onion_public, y, state.ephemeral_public)
    if not hmac.compare_digest(expected, auth):
        raise HandshakeError("created auth does not verify")
    return prk
