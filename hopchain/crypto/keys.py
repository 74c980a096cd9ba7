"""Long-term keys of a relay or authority.

* ``IdentityKey``: Ed25519, signs descriptors and consensus documents; its
  public half is the relay's name in the directory.
* ``OnionKey``: X25519, the static key of the ntor-style handshakes (link and
  circuit).  Its public half is published in the signed descriptor, which is
  what binds it to the identity.

Secret material arrives from the caller (a key file or a seeded test RNG);
this module never draws randomness.
"""

from dataclasses import dataclass, field

from hopchain.crypto import primitives


def fingerprint(public_key: bytes) -> str:
    """A short printable name for a public key (first 8 bytes, hex)."""
    return public_key[:8].hex()


@dataclass(frozen=True, slots=True)
class IdentityKey:
    """An Ed25519 key pair, built from its 32-byte seed."""

    seed: bytes = field(repr=False)
    public: bytes = field(init=False)

    def __post_init__(self) -> None:
        if len(self.seed) != 32:
            raise ValueError("identity seed must be 32 bytes")
        object.__setattr__(self, "public", primitives.ed25519_public(self.seed))

    def sign(self, message: bytes) -> bytes:
        """A detached signature of ``message``."""
        return primitives.ed25519_sign(self.seed, message)


@dataclass(frozen=True, slots=True)
class OnionKey:
    """An X25519 key pair, built from its 32-byte secret."""

    secret: bytes = field(repr=False)
    public: bytes = field(init=False)

    def __post_init__(self) -> None:
        if len(self.secret) != 32:
            raise ValueError("onion secret must be 32 bytes")
        object.__setattr__(self, "public", primitives.x25519_public(self.secret))
