"""Unit and property tests for hopchain.directory (descriptors and consensus)."""

import contextlib
import dataclasses
import hashlib
import string

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hopchain.crypto import primitives
from hopchain.crypto.keys import IdentityKey
from hopchain.directory import (
    CLOCK_SKEW,
    FLAGS,
    MAX_DESCRIPTOR,
    Descriptor,
    Listing,
    SignedDescriptor,
    Vote,
    build_consensus,
    consensus_body,
    consensus_signing_message,
    sign_consensus,
    sign_descriptor,
    sign_vote,
    verify_consensus,
    verify_descriptor,
    verify_vote,
)
from hopchain.errors import DirectoryError

NOW = 1_700_000_000.0
# The signed-message prefixes, as documented in the module docstring.
DESCRIPTOR_PREFIX = b"hopchain descriptor v1\0"
CONSENSUS_PREFIX = b"hopchain consensus v1\0"
VOTE_PREFIX = b"hopchain vote v1\0"


def key(label: str) -> IdentityKey:
    return IdentityKey(hashlib.blake2b(label.encode(), digest_size=32).digest())


RELAY = key("relay")
AUTHORITIES = [key(f"authority {i}") for i in range(4)]


def make_descriptor(identity: IdentityKey = RELAY, **changes: object) -> Descriptor:
    base = Descriptor(
        nickname="relay1",
        identity=identity.public,
        onion_key=hashlib.blake2b(b"onion", digest_size=32).digest(),
        address="198.51.100.7",
        or_port=9001,
        bandwidth=1_000_000,
        exit_ports=((80, 80), (443, 443), (1024, 65535)),
        family=(key("sibling").public,),
        country="DE",
        published=NOW - 3600.0,
        test_network=False,
        observed_bandwidth=250_000,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def sign_body(body: dict[str, object], signer: IdentityKey = RELAY) -> bytes:
    """A descriptor built by hand from a body map (for malformed fields)."""
    raw = msgpack.packb(body, use_bin_type=True)
    return msgpack.packb([raw, signer.sign(DESCRIPTOR_PREFIX + raw)])


def good_body(**changes: object) -> dict[str, object]:
    desc = make_descriptor()
    body: dict[str, object] = {
        "nickname": desc.nickname,
        "identity": desc.identity,
        "onion_key": desc.onion_key,
        "address": desc.address,
        "or_port": desc.or_port,
        "bandwidth": desc.bandwidth,
        "exit_ports": [list(r) for r in desc.exit_ports],
        "family": list(desc.family),
        "country": desc.country,
        "published": desc.published,
        "test_network": desc.test_network,
        "observed_bandwidth": desc.observed_bandwidth,
    }
    body.update(changes)
    return body


def listing(
    raw: bytes,
    flags: frozenset[str],
    country: str | None = None,
    verified: bool = False,
    bandwidth: int | None = None,
) -> Listing:
    """A listing of a (possibly broken) signed descriptor; by default with the
    country and bandwidth it declares, as an authority without a GeoIP
    database and with a declared bandwidth below the observed one."""
    try:
        desc = verify_descriptor(raw, float("inf")).descriptor
    except DirectoryError:
        desc = dataclasses.replace(make_descriptor(), country="", bandwidth=0)
    return Listing(
        SignedDescriptor(desc, raw),
        flags,
        desc.country if country is None else country,
        verified,
        desc.bandwidth if bandwidth is None else bandwidth,
    )


def consensus(
    relays: list[tuple[bytes, frozenset[str]]],
    signers: list[IdentityKey],
    valid_after: float = NOW - 600.0,
    fresh_until: float = NOW + 600.0,
    valid_until: float = NOW + 3600.0,
) -> bytes:
    entries = [listing(raw, flags) for raw, flags in relays]
    body = build_consensus(entries, valid_after, fresh_until, valid_until)
    message = consensus_signing_message(body)
    return sign_consensus(body, [(s.public, s.sign(message)) for s in signers])


def signed_consensus_body(body: object, signer: IdentityKey) -> bytes:
    """A consensus document around a hand-made body, correctly signed."""
    raw = msgpack.packb(body, use_bin_type=True)
    return msgpack.packb([raw, [[signer.public, signer.sign(CONSENSUS_PREFIX + raw)]]])


RUNNING_EXIT = frozenset({"Running", "Exit", "Valid"})
PINNED = [a.public for a in AUTHORITIES[:3]]

# --- descriptors ---------------------------------------------------------------


@st.composite
def descriptors(draw: st.DrawFn) -> tuple[Descriptor, IdentityKey]:
    signer = IdentityKey(draw(st.binary(min_size=32, max_size=32)))
    ranges = draw(
        st.lists(
            st.tuples(st.integers(1, 65535), st.integers(1, 65535)).map(
                lambda r: (min(r), max(r))
            ),
            max_size=5,
        )
    )
    desc = Descriptor(
        nickname=draw(
            st.text(string.ascii_letters + string.digits, min_size=1, max_size=32)
        ),
        identity=signer.public,
        onion_key=draw(st.binary(min_size=32, max_size=32)),
        address=str(draw(st.ip_addresses())),
        or_port=draw(st.integers(1, 65535)),
        bandwidth=draw(st.integers(0, 2**63 - 1)),
        exit_ports=tuple(ranges),
        family=tuple(draw(st.lists(st.binary(min_size=32, max_size=32), max_size=3))),
        country=draw(
            st.just("") | st.text(string.ascii_uppercase, min_size=2, max_size=2)
        ),
        published=draw(st.floats(-1e12, NOW + CLOCK_SKEW)),
        test_network=draw(st.booleans()),
        observed_bandwidth=draw(st.integers(0, 2**63 - 1)),
    )
    return desc, signer


@given(descriptors())
def test_prop_descriptor_round_trip(item: tuple[Descriptor, IdentityKey]) -> None:
    desc, signer = item
    raw = sign_descriptor(desc, signer.sign)
    signed = verify_descriptor(raw, NOW)
    assert signed.descriptor == desc
    assert signed.raw == raw


def test_descriptor_signature_covers_the_documented_message() -> None:
    raw = sign_descriptor(make_descriptor(), RELAY.sign)
    body, signature = msgpack.unpackb(raw)
    assert primitives.ed25519_verify(RELAY.public, DESCRIPTOR_PREFIX + body, signature)


def test_descriptor_country_is_normalised_to_upper_case() -> None:
    raw = sign_descriptor(make_descriptor(country="nl"), RELAY.sign)
    assert verify_descriptor(raw, NOW).descriptor.country == "NL"


def test_descriptor_signed_by_another_key_is_refused() -> None:
    raw = sign_descriptor(make_descriptor(), key("impostor").sign)
    with pytest.raises(DirectoryError, match="signature"):
        verify_descriptor(raw, NOW)


@given(st.data())
def test_prop_descriptor_any_flipped_signature_bit_is_refused(
    data: st.DataObject,
) -> None:
    body, signature = msgpack.unpackb(sign_descriptor(make_descriptor(), RELAY.sign))
    bit = data.draw(st.integers(0, len(signature) * 8 - 1), label="bit")
    bad = bytearray(signature)
    bad[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(DirectoryError, match="signature"):
        verify_descriptor(msgpack.packb([body, bytes(bad)]), NOW)


def test_descriptor_with_changed_body_is_refused() -> None:
    body, signature = msgpack.unpackb(sign_descriptor(make_descriptor(), RELAY.sign))
    changed = body.replace(b"198.51.100.7", b"198.51.100.8")
    assert changed != body
    with pytest.raises(DirectoryError, match="signature"):
        verify_descriptor(msgpack.packb([changed, signature]), NOW)


def test_descriptor_published_in_the_future_is_refused() -> None:
    ok = sign_descriptor(make_descriptor(published=NOW + CLOCK_SKEW), RELAY.sign)
    assert verify_descriptor(ok, NOW).descriptor.published == NOW + CLOCK_SKEW
    late = sign_descriptor(make_descriptor(published=NOW + CLOCK_SKEW + 1), RELAY.sign)
    with pytest.raises(DirectoryError, match="future"):
        verify_descriptor(late, NOW)


def test_descriptor_too_large_is_refused() -> None:
    raw = sign_descriptor(make_descriptor(), RELAY.sign)
    with pytest.raises(DirectoryError, match="too large"):
        verify_descriptor(raw + bytes(MAX_DESCRIPTOR), NOW)


BAD_FIELDS = {
    "nickname empty": {"nickname": ""},
    "nickname long": {"nickname": "a" * 33},
    "nickname punctuation": {"nickname": "relay-1"},
    "nickname bytes": {"nickname": b"relay"},
    "identity short": {"identity": b"x" * 31},
    "address name": {"address": "relay.example"},
    "address bytes": {"address": b"\x7f\0\0\1"},
    "or_port 0": {"or_port": 0},
    "or_port 65536": {"or_port": 65536},
    "or_port bool": {"or_port": True},
    "or_port float": {"or_port": 9001.0},
    "bandwidth negative": {"bandwidth": -1},
    "observed bandwidth negative": {"observed_bandwidth": -1},
    "observed bandwidth float": {"observed_bandwidth": 1.0},
    "observed bandwidth missing": {"observed_bandwidth": None},
    "exit range reversed": {"exit_ports": [[443, 80]]},
    "exit range zero": {"exit_ports": [[0, 80]]},
    "exit range too high": {"exit_ports": [[80, 65536]]},
    "exit range triple": {"exit_ports": [[80, 81, 82]]},
    "exit range bool": {"exit_ports": [[True, 80]]},
    "exit ports not a list": {"exit_ports": {"80": 80}},
    "family short key": {"family": [b"x" * 31]},
    "family str": {"family": ["x" * 32]},
    "country three letters": {"country": "DEU"},
    "country non-ascii": {"country": "ÄÖ"},
    "published int": {"published": int(NOW)},
    "test_network int": {"test_network": 1},
    "test_network missing": {"test_network": None},
    "address6 IPv4": {"address6": "198.51.100.8"},
    "address6 name": {"address6": "relay.example"},
    "address6 bytes": {"address6": b"\0" * 16},
    "contact control character": {"contact": "ops\n@example.org"},
    "contact too long": {"contact": "x" * 257},
    "contact bytes": {"contact": b"ops"},
}


@pytest.mark.parametrize("changes", BAD_FIELDS.values(), ids=BAD_FIELDS.keys())
def test_descriptor_bad_fields_are_refused(changes: dict[str, object]) -> None:
    body = good_body(**changes)
    signer = RELAY
    if "identity" in changes:
        signer = key("short")
    with pytest.raises(DirectoryError):
        verify_descriptor(sign_body(body, signer), NOW)


def test_optional_address6_and_contact_round_trip_and_are_left_out_when_empty() -> None:
    desc = make_descriptor(address6="2001:db8::7", contact="ops@example.org")
    assert verify_descriptor(sign_descriptor(desc, RELAY.sign), NOW).descriptor == desc
    plain = make_descriptor()
    assert sign_descriptor(plain, RELAY.sign) == sign_body(good_body())


def test_descriptor_good_body_fixture_verifies() -> None:
    """The base of the malformed-field cases is itself valid."""
    assert (
        verify_descriptor(sign_body(good_body()), NOW).descriptor == make_descriptor()
    )


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\xc1",
        msgpack.packb([b"body"]),
        msgpack.packb([b"body", b"sig", b"extra"]),
        msgpack.packb(["body", b"sig"]),
        msgpack.packb({"body": b"sig"}),
        msgpack.packb([msgpack.packb([1, 2]), bytes(64)]),
    ],
)
def test_descriptor_malformed_outer_is_refused(raw: bytes) -> None:
    with pytest.raises(DirectoryError):
        verify_descriptor(raw, NOW)


def test_descriptor_allows_exit_to() -> None:
    desc = make_descriptor()
    assert desc.allows_exit_to(80)
    assert desc.allows_exit_to(1024)
    assert desc.allows_exit_to(65535)
    assert not desc.allows_exit_to(81)
    assert not desc.allows_exit_to(22)
    assert not make_descriptor(exit_ports=()).allows_exit_to(80)


# --- consensus -----------------------------------------------------------------


@given(
    items=st.lists(
        st.tuples(descriptors(), st.frozensets(st.sampled_from(sorted(FLAGS)))),
        max_size=4,
    ),
    times=st.lists(st.floats(-1e9, 1e9), min_size=3, max_size=3).map(sorted),
    signer_count=st.integers(2, 3),
    data=st.data(),
)
def test_prop_consensus_round_trip(
    items: list[tuple[tuple[Descriptor, IdentityKey], frozenset[str]]],
    times: list[float],
    signer_count: int,
    data: st.DataObject,
) -> None:
    valid_after, fresh_until, valid_until = times
    now = data.draw(st.floats(valid_after, valid_until), label="now")
    relays = [
        (sign_descriptor(desc, signer.sign), flags)
        for (desc, signer), flags in items
        # A descriptor from the future would make the whole consensus invalid.
        if desc.published <= now + CLOCK_SKEW
    ]
    signers = AUTHORITIES[:signer_count]
    doc = consensus(relays, signers, valid_after, fresh_until, valid_until)
    result = verify_consensus(doc, PINNED, now)
    assert (result.valid_after, result.fresh_until, result.valid_until) == (
        valid_after,
        fresh_until,
        valid_until,
    )
    assert result.signers == frozenset(s.public for s in signers)
    assert [(r.descriptor, r.flags) for r in result.relays] == [
        (verify_descriptor(raw, now).descriptor, flags) for raw, flags in relays
    ]


def test_consensus_lists_the_authorities_country_not_the_declared_one() -> None:
    raw = sign_descriptor(make_descriptor(), RELAY.sign)  # declares its own
    body = build_consensus(
        [listing(raw, RUNNING_EXIT, "NL", True)],
        NOW - 600.0,
        NOW + 600.0,
        NOW + 3600.0,
    )
    message = consensus_signing_message(body)
    doc = sign_consensus(body, [(a.public, a.sign(message)) for a in AUTHORITIES[:2]])
    (status,) = verify_consensus(doc, PINNED, NOW).relays
    assert status.descriptor.country == "NL"
    assert status.country_verified is True


def test_consensus_lists_the_authorities_bandwidth_not_the_declared_one() -> None:
    raw = sign_descriptor(make_descriptor(), RELAY.sign)  # declares 1 MB/s
    body = build_consensus(
        [listing(raw, RUNNING_EXIT, bandwidth=250_000)], NOW - 600.0, NOW, NOW + 60.0
    )
    doc = sign_consensus(
        body, [(AUTHORITIES[0].public, AUTHORITIES[0].sign(CONSENSUS_PREFIX + body))]
    )
    (status,) = verify_consensus(doc, [AUTHORITIES[0].public], NOW).relays
    assert status.descriptor.bandwidth == 250_000
    assert consensus_body(doc) == body


def relay_entry(published: float = NOW - 3600.0) -> tuple[bytes, frozenset[str]]:
    return sign_descriptor(
        make_descriptor(published=published), RELAY.sign
    ), RUNNING_EXIT


def test_consensus_single_authority_network() -> None:
    doc = consensus([relay_entry()], [AUTHORITIES[0]])
    result = verify_consensus(doc, [AUTHORITIES[0].public], NOW)
    assert result.relays[0].descriptor == make_descriptor()
    assert result.relays[0].flags == RUNNING_EXIT


def test_consensus_not_signed_by_the_pinned_key_is_refused() -> None:
    doc = consensus([relay_entry()], [key("rogue authority")])
    with pytest.raises(DirectoryError, match="signed by 0"):
        verify_consensus(doc, [AUTHORITIES[0].public], NOW)


@pytest.mark.parametrize(
    ("pinned", "signed", "accepted"),
    [
        (3, 0, False),
        (3, 1, False),
        (3, 2, True),
        (3, 3, True),
        (2, 1, False),
        (2, 2, True),
        (4, 2, False),
        (4, 3, True),
        (1, 1, True),
    ],
)
def test_consensus_majority_of_pinned_keys(
    pinned: int, signed: int, accepted: bool
) -> None:
    doc = consensus([relay_entry()], AUTHORITIES[:signed])
    keys = [a.public for a in AUTHORITIES[:pinned]]
    if accepted:
        assert len(verify_consensus(doc, keys, NOW).signers) == signed
    else:
        with pytest.raises(DirectoryError, match="needed"):
            verify_consensus(doc, keys, NOW)


def test_consensus_repeated_or_unpinned_signatures_do_not_count() -> None:
    body = build_consensus([listing(*relay_entry())], NOW - 600.0, NOW, NOW + 600.0)
    message = consensus_signing_message(body)
    first = AUTHORITIES[0]
    sig = first.sign(message)
    rogue = key("rogue")
    doc = sign_consensus(
        body,
        [(first.public, sig), (first.public, sig), (rogue.public, rogue.sign(message))],
    )
    with pytest.raises(
        DirectoryError,
        match=r"signed by 1 of the 3 pinned authorities, 2 needed; 1 signature\(s\) "
        "by keys that are not pinned ignored",
    ):
        verify_consensus(doc, PINNED, NOW)


def test_consensus_reports_the_signatures_it_ignored() -> None:
    rogue = key("rogue")
    doc = consensus([relay_entry()], [*AUTHORITIES[:2], rogue])
    result = verify_consensus(doc, PINNED, NOW)
    assert result.signers == {a.public for a in AUTHORITIES[:2]}
    assert result.ignored_signers == {rogue.public}


def test_consensus_bad_signature_by_a_pinned_key_does_not_count() -> None:
    body = build_consensus([listing(*relay_entry())], NOW - 600.0, NOW, NOW + 600.0)
    message = consensus_signing_message(body)
    good = AUTHORITIES[0].sign(message)
    forged = AUTHORITIES[0].sign(message + b"x")
    doc = sign_consensus(
        body, [(AUTHORITIES[0].public, good), (AUTHORITIES[1].public, forged)]
    )
    with pytest.raises(DirectoryError, match="signed by 1"):
        verify_consensus(doc, PINNED, NOW)


def test_consensus_signature_covers_the_documented_message() -> None:
    body = build_consensus([], NOW, NOW, NOW)
    assert consensus_signing_message(body) == CONSENSUS_PREFIX + body


def test_consensus_stale_is_refused() -> None:
    doc = consensus([relay_entry()], AUTHORITIES[:2], NOW - 7200.0, NOW - 3600.0, NOW)
    assert verify_consensus(doc, PINNED, NOW + CLOCK_SKEW).valid_until == NOW
    with pytest.raises(
        DirectoryError,
        match=r"^consensus is stale: valid until 2023-11-14 22:13:20 UTC, but the "
        r"clock says 2023-11-14 22:14:21 UTC \(allowed skew 60 s\)$",
    ):
        verify_consensus(doc, PINNED, NOW + CLOCK_SKEW + 1)


def test_consensus_from_the_future_is_refused() -> None:
    doc = consensus(
        [relay_entry()], AUTHORITIES[:2], NOW + 600.0, NOW + 1200.0, NOW + 3600.0
    )
    with pytest.raises(
        DirectoryError,
        match=r"^consensus is from the future: valid after 2023-11-14 22:23:20 UTC, "
        r"but the clock says 2023-11-14 22:13:20 UTC \(allowed skew 60 s\); "
        "check the clock$",
    ):
        verify_consensus(doc, PINNED, NOW)
    assert verify_consensus(doc, PINNED, NOW + 600.0 - CLOCK_SKEW).relays


def test_consensus_times_out_of_order_are_refused() -> None:
    doc = consensus([relay_entry()], AUTHORITIES[:2], NOW, NOW - 1, NOW + 600.0)
    with pytest.raises(DirectoryError, match="order"):
        verify_consensus(doc, PINNED, NOW)


def test_consensus_with_a_future_descriptor_is_refused() -> None:
    doc = consensus([relay_entry(published=NOW + 3600.0)], AUTHORITIES[:2])
    with pytest.raises(DirectoryError, match="future"):
        verify_consensus(doc, PINNED, NOW)


def test_consensus_with_a_badly_signed_descriptor_is_refused() -> None:
    raw = sign_descriptor(make_descriptor(), key("impostor").sign)
    doc = consensus([(raw, RUNNING_EXIT)], AUTHORITIES[:2])
    with pytest.raises(DirectoryError, match="signature"):
        verify_consensus(doc, PINNED, NOW)


def test_consensus_unknown_flag_is_refused() -> None:
    raw, _ = relay_entry()
    doc = consensus([(raw, frozenset({"Running", "Authority"}))], AUTHORITIES[:2])
    with pytest.raises(DirectoryError, match="flags"):
        verify_consensus(doc, PINNED, NOW)


GOOD_TIMES = {"valid_after": NOW - 60.0, "fresh_until": NOW, "valid_until": NOW + 60.0}

BAD_BODIES = {
    "not a map": [1, 2, 3],
    "times missing": {"relays": []},
    "int times": {"valid_after": 1, "fresh_until": 2, "valid_until": 3, "relays": []},
    "relays missing": dict(GOOD_TIMES),
    "relays not a list": {**GOOD_TIMES, "relays": {"a": 1}},
    "relay entry not a pair": {**GOOD_TIMES, "relays": [[b"x"]]},
    "descriptor not bytes": {**GOOD_TIMES, "relays": [["x", ["Running"]]]},
    "flags not a list": {**GOOD_TIMES, "relays": [[b"x", "Running"]]},
    "flag is a number": {**GOOD_TIMES, "relays": [[b"x", [1]]]},
    "flag is a list": {**GOOD_TIMES, "relays": [[b"x", [["Running"]]]]},
    "flag is a map": {**GOOD_TIMES, "relays": [[b"x", [{"a": 1}]]]},
    "garbage descriptor": {**GOOD_TIMES, "relays": [[b"\xc1", ["Running"]]]},
    "negative bandwidth": {
        **GOOD_TIMES,
        "relays": [[sign_descriptor(make_descriptor(), RELAY.sign), [], "", False, -1]],
    },
    "bandwidth bool": {
        **GOOD_TIMES,
        "relays": [
            [sign_descriptor(make_descriptor(), RELAY.sign), [], "", False, True]
        ],
    },
    "four-field entry": {
        **GOOD_TIMES,
        "relays": [[sign_descriptor(make_descriptor(), RELAY.sign), [], "", False]],
    },
}


@pytest.mark.parametrize("body", BAD_BODIES.values(), ids=BAD_BODIES.keys())
def test_consensus_malformed_signed_body_is_refused(body: object) -> None:
    """A pinned authority signed a malformed body: refused with DirectoryError."""
    doc = signed_consensus_body(body, AUTHORITIES[0])
    with pytest.raises(DirectoryError):
        verify_consensus(doc, [AUTHORITIES[0].public], NOW)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\xc1",
        msgpack.packb([b"body"]),
        msgpack.packb([b"body", b"sigs"]),
        msgpack.packb([b"body", [[b"k"], 5, [1, 2], [[1], b"s"]]]),
    ],
)
def test_consensus_malformed_outer_is_refused(raw: bytes) -> None:
    with pytest.raises(DirectoryError):
        verify_consensus(raw, PINNED, NOW)


def test_consensus_needs_pinned_keys() -> None:
    with pytest.raises(ValueError, match="pinned"):
        verify_consensus(consensus([], AUTHORITIES[:1]), [], NOW)


# --- fuzz ----------------------------------------------------------------------------

msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=40)
    | st.sampled_from(sorted(FLAGS)),
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.dictionaries(
            st.text(max_size=12) | st.binary(max_size=4), inner, max_size=5
        )
    ),
    max_leaves=15,
)


@given(st.binary(max_size=300))
def test_prop_verify_descriptor_arbitrary_bytes(raw: bytes) -> None:
    with contextlib.suppress(DirectoryError):
        verify_descriptor(raw, NOW)


@given(st.binary(max_size=300))
def test_prop_verify_consensus_arbitrary_bytes(raw: bytes) -> None:
    with contextlib.suppress(DirectoryError):
        verify_consensus(raw, PINNED, NOW)


@given(st.dictionaries(st.sampled_from(sorted(good_body())), msgpack_values))
def test_prop_self_signed_descriptor_garbage(changes: dict[str, object]) -> None:
    """Anyone can sign a descriptor body: any fields give a result or DirectoryError."""
    with contextlib.suppress(DirectoryError):
        verify_descriptor(sign_body(good_body(**changes)), NOW)


relay_lists = st.lists(
    st.tuples(
        st.just(sign_descriptor(make_descriptor(), RELAY.sign)) | msgpack_values,
        st.lists(msgpack_values, max_size=3) | msgpack_values,
    ).map(list),
    max_size=3,
)


@given(
    st.fixed_dictionaries(
        {},
        optional={
            "valid_after": msgpack_values,
            "fresh_until": msgpack_values,
            "valid_until": msgpack_values,
            "relays": relay_lists | msgpack_values,
        },
    )
)
def test_prop_signed_consensus_garbage(changes: dict[str, object]) -> None:
    """Malformed bodies signed by a pinned key never escape as other errors."""
    body: dict[str, object] = {
        **GOOD_TIMES,
        "relays": [[relay_entry()[0], ["Running"], "", False, 1000]],
    }
    body.update(changes)
    with contextlib.suppress(DirectoryError):
        verify_consensus(
            signed_consensus_body(body, AUTHORITIES[0]), [AUTHORITIES[0].public], NOW
        )


# --- votes ---------------------------------------------------------------------


def make_vote(
    authority: IdentityKey = AUTHORITIES[0], relays: int = 2
) -> tuple[Vote, bytes]:
    listings = tuple(
        listing(
            sign_descriptor(
                make_descriptor(key(f"voted {i}"), nickname=f"voted{i}"),
                key(f"voted {i}").sign,
            ),
            RUNNING_EXIT,
            "SE",
            True,
            30_000 * (i + 1),
        )
        for i in range(relays)
    )
    vote = Vote(authority.public, NOW, NOW + 600.0, NOW + 1800.0, listings)
    return vote, sign_vote(vote, authority.sign)


def test_vote_round_trip() -> None:
    vote, raw = make_vote()
    got = verify_vote(raw, frozenset(PINNED), NOW)
    assert got.authority == vote.authority
    assert (got.valid_after, got.fresh_until, got.valid_until) == (
        NOW,
        NOW + 600.0,
        NOW + 1800.0,
    )
    assert [
        (x.signed.raw, x.flags, x.country, x.verified, x.bandwidth)
        for x in got.listings
    ] == [
        (x.signed.raw, x.flags, x.country, x.verified, x.bandwidth)
        for x in vote.listings
    ]


def test_vote_signature_covers_the_documented_message() -> None:
    _, raw = make_vote()
    body, signature = msgpack.unpackb(raw)
    assert primitives.ed25519_verify(
        AUTHORITIES[0].public, VOTE_PREFIX + body, signature
    )


def test_vote_from_an_authority_that_is_not_configured_is_refused() -> None:
    _, raw = make_vote(key("stranger"))
    with pytest.raises(DirectoryError, match="not configured"):
        verify_vote(raw, frozenset(PINNED), NOW)


def test_vote_with_a_forged_signature_is_refused() -> None:
    _, raw = make_vote()
    body, _ = msgpack.unpackb(raw)
    forged = msgpack.packb([body, AUTHORITIES[1].sign(VOTE_PREFIX + body)])
    with pytest.raises(DirectoryError, match="signature"):
        verify_vote(forged, frozenset(PINNED), NOW)


def test_vote_listing_a_relay_twice_is_refused() -> None:
    vote, _ = make_vote(relays=1)
    doubled = dataclasses.replace(vote, listings=vote.listings * 2)
    with pytest.raises(DirectoryError, match="twice"):
        verify_vote(sign_vote(doubled, AUTHORITIES[0].sign), frozenset(PINNED), NOW)


@given(st.binary(max_size=300))
def test_prop_verify_vote_arbitrary_bytes(raw: bytes) -> None:
    with contextlib.suppress(DirectoryError):
        verify_vote(raw, frozenset(PINNED), NOW)


@given(
    st.fixed_dictionaries(
        {},
        optional={
            "authority": msgpack_values,
            "valid_after": msgpack_values,
            "fresh_until": msgpack_values,
            "valid_until": msgpack_values,
            "relays": relay_lists | msgpack_values,
        },
    )
)
def test_prop_signed_vote_garbage(changes: dict[str, object]) -> None:
    """Malformed vote bodies signed by a configured key give DirectoryError."""
    body: dict[str, object] = {
        **GOOD_TIMES,
        "authority": AUTHORITIES[0].public,
        "relays": [[relay_entry()[0], ["Running"], "", False, 1000]],
    }
    body.update(changes)
    raw = msgpack.packb(body, use_bin_type=True)
    document = msgpack.packb([raw, AUTHORITIES[0].sign(VOTE_PREFIX + raw)])
    with contextlib.suppress(DirectoryError):
        verify_vote(document, frozenset(PINNED), NOW)
