"""Signed relay descriptors and the consensus, pure encode/verify.

A *descriptor* is what a relay says about itself, signed with its Ed25519
identity key.  A *consensus* is what the authorities publish: a list of
descriptors with flags and validity times, signed by each authority.  Both
are msgpack; every field is validated on decode and sizes are capped.

    descriptor     = msgpack [body, signature]
    descriptor sig = Ed25519(identity, "hopchain descriptor v1\\0" | body)
    body           = msgpack map (see ``Descriptor`` for the fields)

    consensus      = msgpack [body, [[authority_key, signature], ...]]
    consensus sig  = Ed25519(authority, "hopchain consensus v1\\0" | body)
    body           = msgpack map {"valid_after", "fresh_until", "valid_until",
                                  "relays": [[descriptor, flags, country,
                                              verified], ...]}

The country of each relay is the authorities' (GeoIP for public addresses,
``verified`` true; the relay's declared country otherwise).

A client accepts a consensus only if more than half of its pinned authority
keys signed it, it is within its validity interval (allowing ``CLOCK_SKEW``),
and every descriptor in it verifies.  Time is always passed in (``now``).
"""

import dataclasses
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import msgpack

from hopchain.crypto.primitives import ed25519_verify
from hopchain.errors import DirectoryError

MAX_DESCRIPTOR: Final = 8 * 1024
MAX_CONSENSUS: Final = 4 * 1024 * 1024
CLOCK_SKEW: Final = 60.0
_DESCRIPTOR_PREFIX: Final = b"hopchain descriptor v1\0"
_CONSENSUS_PREFIX: Final = b"hopchain consensus v1\0"
FLAGS: Final = frozenset(
    {"Running", "Valid", "Guard", "Exit", "BadExit", "Fast", "Stable"}
)


@dataclass(frozen=True, slots=True)
class Descriptor:
    """A relay's signed self-description.

    ``exit_ports`` lists inclusive (low, high) port ranges the exit accepts
    (empty: not an exit).  ``test_network`` means the relay accepts private
    and loopback destinations and addresses: only for declared test networks.
    """

    nickname: str
    identity: bytes
    onion_key: bytes
    address: str
    or_port: int
    bandwidth: int
    exit_ports: tuple[tuple[int, int], ...]
    family: tuple[bytes, ...]
    country: str
    published: float
    test_network: bool

    def allows_exit_to(self, port: int) -> bool:
        """Whether the exit policy accepts destination ``port``."""
        # A loop, not any(): twice as fast, and this runs for every stream.
        for low, high in self.exit_ports:  # noqa: SIM110
            if low <= port <= high:
                return True
        return False


@dataclass(frozen=True, slots=True)
class SignedDescriptor:
    """A descriptor with the exact bytes that were signed."""

    descriptor: Descriptor
    raw: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class RouterStatus:
    """One relay in a consensus.

    ``descriptor.country`` here is the country the *authorities* list (from
    GeoIP for public addresses, else what the relay declared);
    ``country_verified`` says which.
    """

    descriptor: Descriptor
    flags: frozenset[str]
    country_verified: bool = False


@dataclass(frozen=True, slots=True)
class Consensus:
    """A verified consensus."""

    valid_after: float
    fresh_until: float
    valid_until: float
    relays: tuple[RouterStatus, ...]
    signers: frozenset[bytes]


def _pack(value: object) -> bytes:
    return bytes(msgpack.packb(value, use_bin_type=True))


def _unpack(raw: bytes, limit: int, what: str) -> Any:
    if len(raw) > limit:
        raise DirectoryError(f"{what} too large: {len(raw)} > {limit} bytes")
    try:
        return msgpack.unpackb(raw, raw=False, strict_map_key=True)
    except (
        ValueError,
        msgpack.ExtraData,
        msgpack.FormatError,
        msgpack.StackError,
    ) as exc:
        raise DirectoryError(f"malformed {what}") from exc


def sign_descriptor(descriptor: Descriptor, sign: Callable[[bytes], bytes]) -> bytes:
    """The signed descriptor bytes (``sign`` is the identity key's sign)."""
    body = _pack(
        {
            "nickname": descriptor.nickname,
            "identity": descriptor.identity,
            "onion_key": descriptor.onion_key,
            "address": descriptor.address,
            "or_port": descriptor.or_port,
            "bandwidth": descriptor.bandwidth,
            "exit_ports": [list(r) for r in descriptor.exit_ports],
            "family": list(descriptor.family),
            "country": descriptor.country,
            "published": descriptor.published,
            "test_network": descriptor.test_network,
        }
    )
    return _pack([body, sign(_DESCRIPTOR_PREFIX + body)])


def _require(cond: bool, message: str) -> None:
    if not cond:
        raise DirectoryError(message)


def _field(body: dict[str, Any], name: str, kind: type) -> Any:
    value = body.get(name)
    _require(
        isinstance(value, kind) and not (kind is int and isinstance(value, bool)),
        f"descriptor field {name!r} missing or not {kind.__name__}",
    )
    return value


def verify_descriptor(raw: bytes, now: float) -> SignedDescriptor:
    """Parse and check a signed descriptor.

    Raises:
        DirectoryError: malformed, badly signed, or published in the future.
    """
    outer = _unpack(raw, MAX_DESCRIPTOR, "descriptor")
    _require(
        isinstance(outer, list) and len(outer) == 2, "descriptor is not [body, sig]"
    )
    body_raw, signature = outer
    _require(isinstance(body_raw, bytes) and isinstance(signature, bytes), "bad types")
    body = _unpack(body_raw, MAX_DESCRIPTOR, "descriptor body")
    _require(isinstance(body, dict), "descriptor body is not a map")
    identity = _field(body, "identity", bytes)
    onion_key = _field(body, "onion_key", bytes)
    _require(len(identity) == 32 and len(onion_key) == 32, "keys must be 32 bytes")
    if not ed25519_verify(identity, _DESCRIPTOR_PREFIX + body_raw, signature):
        raise DirectoryError("descriptor signature does not verify")
    nickname = _field(body, "nickname", str)
    _require(0 < len(nickname) <= 32 and nickname.isalnum(), "bad nickname")
    address = _field(body, "address", str)
    try:
        ipaddress.ip_address(address)
    except ValueError as exc:
        raise DirectoryError("descriptor address is not an IP address") from exc
    or_port = _field(body, "or_port", int)
    _require(0 < or_port < 65536, "or_port out of range")
    bandwidth = _field(body, "bandwidth", int)
    _require(bandwidth >= 0, "negative bandwidth")
    ranges = []
    for item in _field(body, "exit_ports", list):
        _require(
            isinstance(item, list)
            and len(item) == 2
            and all(isinstance(p, int) and not isinstance(p, bool) for p in item)
            and 1 <= item[0] <= item[1] <= 65535,
            "bad exit port range",
        )
        ranges.append((item[0], item[1]))
    family = _field(body, "family", list)
    _require(all(isinstance(f, bytes) and len(f) == 32 for f in family), "bad family")
    country = _field(body, "country", str)
    _require(len(country) in (0, 2) and country.isascii(), "bad country code")
    published = _field(body, "published", float)
    _require(published <= now + CLOCK_SKEW, "descriptor published in the future")
    test_network = _field(body, "test_network", bool)
    descriptor = Descriptor(
        nickname=nickname,
        identity=identity,
        onion_key=onion_key,
        address=address,
        or_port=or_port,
        bandwidth=bandwidth,
        exit_ports=tuple(ranges),
        family=tuple(family),
        country=country.upper(),
        published=published,
        test_network=test_network,
    )
    return SignedDescriptor(descriptor, raw)


def build_consensus(
    relays: list[tuple[bytes, frozenset[str], str, bool]],
    valid_after: float,
    fresh_until: float,
    valid_until: float,
) -> bytes:
    """The consensus body to be signed by each authority.

    Each entry is (signed descriptor, flags, country, country verified).
    """
    return _pack(
        {
            "valid_after": valid_after,
            "fresh_until": fresh_until,
            "valid_until": valid_until,
            "relays": [
                [raw, sorted(flags), country, verified]
                for raw, flags, country, verified in relays
            ],
        }
    )


def sign_consensus(body: bytes, signatures: list[tuple[bytes, bytes]]) -> bytes:
    """The published document: body plus (authority key, signature) pairs."""
    return _pack([body, [[key, sig] for key, sig in signatures]])


def consensus_signing_message(body: bytes) -> bytes:
    """What each authority signs for a consensus body."""
    return _CONSENSUS_PREFIX + body


def verify_consensus(raw: bytes, pinned: list[bytes], now: float) -> Consensus:
    """Parse and check a consensus against the pinned authority keys.

    Raises:
        DirectoryError: too few valid signatures from pinned keys, outside its
            validity interval, or malformed; the message says which.
    """
    if not pinned:
        raise ValueError("no pinned authority keys")
    outer = _unpack(raw, MAX_CONSENSUS, "consensus")
    _require(
        isinstance(outer, list) and len(outer) == 2, "consensus is not [body, sigs]"
    )
    body_raw, sigs = outer
    _require(isinstance(body_raw, bytes) and isinstance(sigs, list), "bad types")
    message = _CONSENSUS_PREFIX + body_raw
    signers = set()
    for item in sigs:
        if not (isinstance(item, list) and len(item) == 2):
            continue
        key, sig = item
        if (
            isinstance(key, bytes)
            and key in pinned
            and isinstance(sig, bytes)
            and ed25519_verify(key, message, sig)
        ):
            signers.add(key)
    needed = len(set(pinned)) // 2 + 1
    if len(signers) < needed:
        raise DirectoryError(
            f"consensus signed by {len(signers)} of the pinned authorities, "
            f"{needed} needed"
        )
    body = _unpack(body_raw, MAX_CONSENSUS, "consensus body")
    _require(isinstance(body, dict), "consensus body is not a map")
    times = [body.get(k) for k in ("valid_after", "fresh_until", "valid_until")]
    _require(all(isinstance(t, float) for t in times), "consensus times missing")
    valid_after, fresh_until, valid_until = times
    _require(valid_after <= fresh_until <= valid_until, "consensus times out of order")
    if now + CLOCK_SKEW < valid_after:
        raise DirectoryError("consensus is from the future (check the clock)")
    if now - CLOCK_SKEW > valid_until:
        raise DirectoryError("consensus is stale (past valid-until)")
    statuses = []
    relays = body.get("relays")
    _require(isinstance(relays, list), "consensus relays missing")
    for item in relays:
        _require(isinstance(item, list) and len(item) == 4, "bad relay entry")
        desc_raw, flags, country, verified = item
        _require(
            isinstance(country, str)
            and len(country) in (0, 2)
            and country.isascii()
            and (not country or country.isalpha()),
            "bad relay country",
        )
        _require(isinstance(verified, bool), "bad relay country source")
        _require(isinstance(desc_raw, bytes), "bad relay descriptor")
        _require(
            isinstance(flags, list)
            and all(isinstance(f, str) and f in FLAGS for f in flags),
            "bad relay flags",
        )
        signed = verify_descriptor(desc_raw, now)
        listed = dataclasses.replace(signed.descriptor, country=country.upper())
        statuses.append(RouterStatus(listed, frozenset(flags), verified))
    return Consensus(
        valid_after=valid_after,
        fresh_until=fresh_until,
        valid_until=valid_until,
        relays=tuple(statuses),
        signers=frozenset(signers),
    )
