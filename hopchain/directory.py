"""Signed relay descriptors and the consensus, pure encode/verify.

A *descriptor* is what a relay says about itself, signed with its Ed25519
identity key.  A *consensus* is what the authorities publish: a list of
descriptors with flags and validity times, signed by each authority.  Both
are msgpack; every field is validated on decode and sizes are capped.

    descriptor     = msgpack [body, signature]
    descriptor sig = Ed25519(identity, "hopchain descriptor v1\\0" | body)
    body           = msgpack map (see ``Descriptor`` for the fields)

    vote           = msgpack [body, signature]
    vote sig       = Ed25519(authority, "hopchain vote v1\\0" | body)
    body           = msgpack map {"authority", "valid_after", "fresh_until",
                                  "valid_until", "relays": [listing, ...]}

    consensus      = msgpack [body, [[authority_key, signature], ...]]
    consensus sig  = Ed25519(authority, "hopchain consensus v1\\0" | body)
    body           = msgpack map {"valid_after", "fresh_until", "valid_until",
                                  "relays": [listing, ...]}
    listing        = [descriptor, flags, country, verified, bandwidth]

A *vote* is one authority's view of the network for one voting period; the
consensus is combined from the votes (``hopchain.voting``).  The country of
each relay is the authorities' (GeoIP for public addresses, ``verified``
true; the relay's declared country otherwise), and its bandwidth is the
authorities' (the relay's observed throughput, capped by what it declares).

A client accepts a consensus only if more than half of its pinned authority
keys signed it, it is within its validity interval (allowing ``CLOCK_SKEW``),
and every descriptor in it verifies.  Time is always passed in (``now``).
"""

import dataclasses
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import msgpack

from hopchain.crypto.primitives import ed25519_verify
from hopchain.errors import DirectoryError

MAX_DESCRIPTOR: Final = 8 * 1024
MAX_CONSENSUS: Final = 4 * 1024 * 1024
CLOCK_SKEW: Final = 60.0
MAX_CONTACT: Final = 256
_DESCRIPTOR_PREFIX: Final = b"hopchain descriptor v1\0"
_CONSENSUS_PREFIX: Final = b"hopchain consensus v1\0"
_VOTE_PREFIX: Final = b"hopchain vote v1\0"
FLAGS: Final = frozenset(
    {"Running", "Valid", "Guard", "Exit", "BadExit", "Fast", "Stable"}
)


@dataclass(frozen=True, slots=True)
class Descriptor:
    """A relay's signed self-description.

    ``exit_ports`` lists inclusive (low, high) port ranges the exit accepts
    (empty: not an exit).  ``test_network`` means the relay accepts private
    and loopback destinations and addresses: only for declared test networks.
    ``bandwidth`` is what the operator declares (bytes/s), and
    ``observed_bandwidth`` what the relay measured of its own relayed
    throughput (``hopchain.bandwidth``); in a consensus, ``bandwidth`` is
    replaced by the authorities' value (see ``RouterStatus``).
    ``address6`` is an optional second, IPv6, address
    with the same ``or_port`` next to an IPv4 ``address``; ``contact`` is
    the operator's optional contact line.  Both are left out of the signed
    body when empty, so descriptors without them encode as before.
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
    observed_bandwidth: int = 0
    address6: str = ""
    contact: str = ""

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
    ``country_verified`` says which.  ``descriptor.bandwidth`` is the
    authorities' bandwidth (what path selection weighs by), not the declared
    one.
    """

    descriptor: Descriptor
    flags: frozenset[str]
    country_verified: bool = False


@dataclass(frozen=True, slots=True)
class Consensus:
    """A verified consensus.

    ``ignored_signers`` are the keys of signatures that were skipped because
    the key is not pinned (for the caller to log).
    """

    valid_after: float
    fresh_until: float
    valid_until: float
    relays: tuple[RouterStatus, ...]
    signers: frozenset[bytes]
    ignored_signers: frozenset[bytes] = frozenset()


@dataclass(frozen=True, slots=True)
class Listing:
    """One relay as a vote or a consensus lists it.

    ``signed`` is the relay's own signed descriptor; ``flags``, ``country``
    (with ``verified``) and ``bandwidth`` (bytes/s) are the authority's (in a
    vote) or the authorities' combined view (in a consensus).
    """

    signed: SignedDescriptor
    flags: frozenset[str]
    country: str
    verified: bool
    bandwidth: int

    def encode(self) -> list[object]:
        """The msgpack form: [descriptor, flags, country, verified, bandwidth]."""
        return [
            self.signed.raw,
            sorted(self.flags),
            self.country,
            self.verified,
            self.bandwidth,
        ]

    def status(self) -> RouterStatus:
        """The client's view: the descriptor with the listed country and
        bandwidth in place of the declared ones."""
        listed = dataclasses.replace(
            self.signed.descriptor, country=self.country, bandwidth=self.bandwidth
        )
        return RouterStatus(listed, self.flags, self.verified)


@dataclass(frozen=True, slots=True)
class Vote:
    """One authority's signed view of the network for one voting period."""

    authority: bytes
    valid_after: float
    fresh_until: float
    valid_until: float
    listings: tuple[Listing, ...]


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
    fields: dict[str, object] = {
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
        "observed_bandwidth": descriptor.observed_bandwidth,
    }
    if descriptor.address6:
        fields["address6"] = descriptor.address6
    if descriptor.contact:
        fields["contact"] = descriptor.contact
    body = _pack(fields)
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
    _require(
        0 < len(nickname) <= 32 and nickname.isascii() and nickname.isalnum(),
        "bad nickname",
    )
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
    observed = _field(body, "observed_bandwidth", int)
    _require(observed >= 0, "negative observed bandwidth")
    address6 = _field(body, "address6", str) if "address6" in body else ""
    if address6:
        try:
            _require(ipaddress.ip_address(address6).version == 6, "bad address6")
        except ValueError as exc:
            raise DirectoryError("descriptor address6 is not an IP address") from exc
    contact = _field(body, "contact", str) if "contact" in body else ""
    _require(len(contact) <= MAX_CONTACT and contact.isprintable(), "bad contact")
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
        observed_bandwidth=observed,
        address6=address6,
        contact=contact,
    )
    return SignedDescriptor(descriptor, raw)


def utc_text(timestamp: float) -> str:
    """A timestamp for messages and logs: UTC, to the second."""
    try:
        moment = datetime.fromtimestamp(timestamp, UTC)
    except (OverflowError, OSError, ValueError):
        return repr(timestamp)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def _times_body(valid_after: float, fresh_until: float, valid_until: float) -> Any:
    return {
        "valid_after": valid_after,
        "fresh_until": fresh_until,
        "valid_until": valid_until,
    }


def build_consensus(
    listings: list[Listing],
    valid_after: float,
    fresh_until: float,
    valid_until: float,
) -> bytes:
    """The consensus body to be signed by each authority (listings in order)."""
    body = _times_body(valid_after, fresh_until, valid_until)
    body["relays"] = [listing.encode() for listing in listings]
    return _pack(body)


def sign_consensus(body: bytes, signatures: list[tuple[bytes, bytes]]) -> bytes:
    """The published document: body plus (authority key, signature) pairs."""
    return _pack([body, [[key, sig] for key, sig in signatures]])


def consensus_signing_message(body: bytes) -> bytes:
    """What each authority signs for a consensus body."""
    return _CONSENSUS_PREFIX + body


def consensus_body(raw: bytes) -> bytes:
    """The signed body of a consensus document (nothing verified).

    Raises:
        DirectoryError: not a consensus document.
    """
    outer = _unpack(raw, MAX_CONSENSUS, "consensus")
    _require(
        isinstance(outer, list) and len(outer) == 2 and isinstance(outer[0], bytes),
        "consensus is not [body, sigs]",
    )
    body: bytes = outer[0]
    return body


def sign_vote(vote: Vote, sign: Callable[[bytes], bytes]) -> bytes:
    """The signed vote document (``sign`` is the authority key's sign)."""
    body = _times_body(vote.valid_after, vote.fresh_until, vote.valid_until)
    body["authority"] = vote.authority
    body["relays"] = [listing.encode() for listing in vote.listings]
    raw = _pack(body)
    return _pack([raw, sign(_VOTE_PREFIX + raw)])


def _times(body: dict[str, Any], what: str) -> tuple[float, float, float]:
    times = [body.get(k) for k in ("valid_after", "fresh_until", "valid_until")]
    floats = [t for t in times if isinstance(t, float)]
    _require(len(floats) == 3, f"{what} times missing")
    valid_after, fresh_until, valid_until = floats
    _require(valid_after <= fresh_until <= valid_until, f"{what} times out of order")
    return valid_after, fresh_until, valid_until


def _listings(relays: object, now: float) -> list[Listing]:
    """Parse the listings of a vote or consensus; every descriptor verifies."""
    if not isinstance(relays, list):
        raise DirectoryError("relays missing")
    result = []
    for item in relays:
        _require(isinstance(item, list) and len(item) == 5, "bad relay entry")
        desc_raw, flags, country, verified, bandwidth = item
        _require(
            isinstance(country, str)
            and len(country) in (0, 2)
            and country.isascii()
            and (not country or country.isalpha()),
            "bad relay country",
        )
        _require(isinstance(verified, bool), "bad relay country source")
        _require(
            isinstance(bandwidth, int)
            and not isinstance(bandwidth, bool)
            and bandwidth >= 0,
            "bad relay bandwidth",
        )
        _require(isinstance(desc_raw, bytes), "bad relay descriptor")
        _require(
            isinstance(flags, list)
            and all(isinstance(f, str) and f in FLAGS for f in flags),
            "bad relay flags",
        )
        signed = verify_descriptor(desc_raw, now)
        result.append(
            Listing(signed, frozenset(flags), country.upper(), verified, bandwidth)
        )
    return result


def verify_vote(raw: bytes, authorities: frozenset[bytes], now: float) -> Vote:
    """Parse and check a vote from one of the configured ``authorities``.

    Raises:
        DirectoryError: malformed, not signed by its authority, from an
            authority that is not configured, or listing a bad descriptor.
    """
    outer = _unpack(raw, MAX_CONSENSUS, "vote")
    _require(isinstance(outer, list) and len(outer) == 2, "vote is not [body, sig]")
    body_raw, signature = outer
    _require(isinstance(body_raw, bytes) and isinstance(signature, bytes), "bad types")
    body = _unpack(body_raw, MAX_CONSENSUS, "vote body")
    _require(isinstance(body, dict), "vote body is not a map")
    authority = body.get("authority")
    _require(isinstance(authority, bytes), "vote without an authority key")
    if authority not in authorities:
        raise DirectoryError("vote from an authority that is not configured")
    if not ed25519_verify(authority, _VOTE_PREFIX + body_raw, signature):
        raise DirectoryError("vote signature does not verify")
    valid_after, fresh_until, valid_until = _times(body, "vote")
    listings = _listings(body.get("relays"), now)
    identities = [listing.signed.descriptor.identity for listing in listings]
    _require(len(set(identities)) == len(identities), "vote lists a relay twice")
    return Vote(authority, valid_after, fresh_until, valid_until, tuple(listings))


def verify_consensus(raw: bytes, pinned: list[bytes], now: float) -> Consensus:
    """Parse and check a consensus against the pinned authority keys.

    Raises:
        DirectoryError: too few valid signatures from pinned keys, outside its
            validity interval, or malformed; the message says which, with
            the counts or the times.
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
    pinned_keys = set(pinned)
    signers = set()
    ignored = set()
    for item in sigs:
        if not (isinstance(item, list) and len(item) == 2):
            continue
        key, sig = item
        if not (isinstance(key, bytes) and isinstance(sig, bytes)):
            continue
        if key not in pinned_keys:
            ignored.add(key)
        elif ed25519_verify(key, message, sig):
            signers.add(key)
    needed = len(pinned_keys) // 2 + 1
    if len(signers) < needed:
        unpinned = (
            f"; {len(ignored)} signature(s) by keys that are not pinned ignored"
            if ignored
            else ""
        )
        raise DirectoryError(
            f"consensus signed by {len(signers)} of the {len(pinned_keys)} pinned "
            f"authorities, {needed} needed{unpinned}"
        )
    body = _unpack(body_raw, MAX_CONSENSUS, "consensus body")
    _require(isinstance(body, dict), "consensus body is not a map")
    valid_after, fresh_until, valid_until = _times(body, "consensus")
    if now + CLOCK_SKEW < valid_after:
        raise DirectoryError(
            f"consensus is from the future: valid after {utc_text(valid_after)}, "
            f"but the clock says {utc_text(now)} (allowed skew {CLOCK_SKEW:.0f} s); "
            "check the clock"
        )
    if now - CLOCK_SKEW > valid_until:
        raise DirectoryError(
            f"consensus is stale: valid until {utc_text(valid_until)}, "
            f"but the clock says {utc_text(now)} (allowed skew {CLOCK_SKEW:.0f} s)"
        )
    listings = _listings(body.get("relays"), now)
    return Consensus(
        valid_after=valid_after,
        fresh_until=fresh_until,
        valid_until=valid_until,
        relays=tuple(listing.status() for listing in listings),
        signers=frozenset(signers),
        ignored_signers=frozenset(ignored),
    )
