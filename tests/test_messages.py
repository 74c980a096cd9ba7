"""Unit and property tests for hopchain.messages (relay message codec)."""

import contextlib

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hopchain import messages
from hopchain.errors import MessageError, ProtocolError
from hopchain.messages import (
    HEADER,
    LARGE_PAYLOAD,
    MAX_ANSWERS,
    MAX_DATA,
    SMALL_PAYLOAD,
    Begin,
    Connected,
    Data,
    Drop,
    End,
    EndReason,
    Extend,
    Extended,
    RelayCommand,
    RelayMessage,
    Resolve,
    Resolved,
    Sendme,
    Truncated,
)

stream_ids = st.integers(1, 0xFFFF)
hosts = st.text(
    st.characters(codec="utf-8", min_codepoint=0x21, exclude_characters="\x7f"),
    min_size=1,
    max_size=255,
)
ports = st.integers(1, 65535)
keys = st.binary(min_size=32, max_size=32)
reasons = st.sampled_from(EndReason)
ascii_hosts = st.text(
    st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=255
)
resolves = st.one_of(
    st.builds(Resolve, stream_id=stream_ids, query=hosts, ptr=st.just(False)),
    st.builds(
        Resolve,
        stream_id=stream_ids,
        query=st.ip_addresses().map(str),
        ptr=st.just(True),
    ),
)
resolveds = st.one_of(
    st.builds(
        Resolved,
        stream_id=stream_ids,
        answers=st.lists(ascii_hosts, min_size=1, max_size=MAX_ANSWERS).map(tuple),
    ),
    st.builds(Resolved, stream_id=stream_ids, reason=reasons),
)

relay_messages: st.SearchStrategy[RelayMessage] = st.one_of(
    st.builds(Data, stream_id=stream_ids, data=st.binary(max_size=2000)),
    st.builds(Begin, stream_id=stream_ids, host=hosts, port=ports),
    st.builds(
        Connected,
        stream_id=stream_ids,
        address=st.text(st.characters(codec="utf-8"), max_size=255),
    ),
    st.builds(End, stream_id=stream_ids, reason=reasons),
    st.builds(
        Sendme, stream_id=st.integers(0, 0xFFFF), credit=st.integers(0, 2**32 - 1)
    ),
    st.builds(
        Extend,
        identity=keys,
        onion_key=keys,
        host=hosts,
        port=ports,
        handshake=st.binary(min_size=96, max_size=96),
    ),
    st.builds(Extended, handshake=st.binary(min_size=64, max_size=64)),
    st.builds(Truncated, reason=reasons),
    st.builds(Drop),
    resolves,
    resolveds,
)


def frame(
    command: int, stream_id: int, body: bytes, size: int = SMALL_PAYLOAD
) -> bytes:
    """A payload area built by hand: header, body, zero padding."""
    head = HEADER.pack(command, stream_id, len(body))
    return head + body + bytes(size - len(head) - len(body))


# (message, payload) pairs, used in both directions.
SIMPLE_CASES: list[tuple[RelayMessage, bytes]] = [
    (Data(1, b"hello"), frame(1, 1, b"hello")),
    (Data(0xFFFF, b""), frame(1, 0xFFFF, b"")),
    (Begin(2, "example.com", 443), frame(2, 2, b"\x92\xabexample.com\xcd\x01\xbb")),
    (Connected(3, "192.0.2.1"), frame(3, 3, b"\x91\xa9192.0.2.1")),
    (
        Connected(3, "192.0.2.1", "::1"),
        frame(3, 3, b"\x92\xa9192.0.2.1\xa3::1"),
    ),
    (End(4, EndReason.DONE), frame(4, 4, b"\x00")),
    (End(4, EndReason.EXIT_POLICY), frame(4, 4, b"\x04")),
    (Sendme(0, 1 << 20), frame(5, 0, b"\x00\x10\x00\x00")),
    (Sendme(9, 1), frame(5, 9, b"\x00\x00\x00\x01")),
    (
        Extend(b"I" * 32, b"B" * 32, "10.0.0.1", 9001, b"H" * 96),
        frame(
            6,
            0,
            b"\x95\xc4\x20"
            + b"I" * 32
            + b"\xc4\x20"
            + b"B" * 32
            + b"\xa810.0.0.1\xcd\x23\x29\xc4\x60"
            + b"H" * 96,
        ),
    ),
    (Extended(b"Y" * 64), frame(7, 0, b"Y" * 64)),
    (Truncated(EndReason.CONNECT_REFUSED), frame(8, 0, b"\x03")),
    (Drop(), frame(9, 0, b"")),
    (Data(5, b"x" * 1000), frame(1, 5, b"x" * 1000, LARGE_PAYLOAD)),
    (Resolve(6, "example.com"), frame(10, 6, b"\x92\xabexample.com\xc2")),
    (Resolve(7, "::1", ptr=True), frame(10, 7, b"\x92\xa3::1\xc3")),
    (
        Resolved(6, ("192.0.2.1", "::1")),
        frame(11, 6, b"\x92\x92\xa9192.0.2.1\xa3::1\xc0"),
    ),
    (Resolved(7, ("localhost",)), frame(11, 7, b"\x92\x91\xa9localhost\xc0")),
    (Resolved(8, (), EndReason.RESOLVE_FAILED), frame(11, 8, b"\x92\x90\x02")),
    (
        Resolved(9, tuple("h" * 255 for _ in range(MAX_ANSWERS))),
        frame(
            11,
            9,
            b"\x92\xdc\x00\x10" + (b"\xd9\xff" + b"h" * 255) * 16 + b"\xc0",
            LARGE_PAYLOAD,
        ),
    ),
]


@pytest.mark.parametrize(("message", "payload"), SIMPLE_CASES)
def test_messages_simple_cases(message: RelayMessage, payload: bytes) -> None:
    assert messages.encode(message) == payload
    assert messages.decode(payload) == message


@given(relay_messages)
def test_prop_messages_round_trip(message: RelayMessage) -> None:
    payload = messages.encode(message)
    assert messages.decode(payload) == message
    # The smallest size class that fits is used.
    _, _, length = HEADER.unpack_from(payload)
    fits_small = HEADER.size + length <= SMALL_PAYLOAD
    assert len(payload) == (SMALL_PAYLOAD if fits_small else LARGE_PAYLOAD)
    assert payload[HEADER.size + length :] == bytes(len(payload) - HEADER.size - length)


@given(relay_messages, st.binary(max_size=64))
def test_prop_padding_is_ignored(message: RelayMessage, junk: bytes) -> None:
    """Bytes after the body (padding, or trailing data) do not change the result."""
    payload = messages.encode(message)
    _, _, length = HEADER.unpack_from(payload)
    end = HEADER.size + length
    assert messages.decode(payload[:end]) == message
    assert messages.decode(payload[:end] + junk) == message


@given(stream_ids, st.binary(max_size=MAX_DATA))
def test_prop_encode_data_matches_encode(stream_id: int, data: bytes) -> None:
    assert messages.encode_data(stream_id, data) == messages.encode(
        Data(stream_id, data)
    )


def test_data_size_limits() -> None:
    payload = messages.encode_data(1, bytes(MAX_DATA))
    assert len(payload) == LARGE_PAYLOAD
    assert messages.decode(payload) == Data(1, bytes(MAX_DATA))
    small = messages.encode_data(1, bytes(SMALL_PAYLOAD - HEADER.size))
    assert len(small) == SMALL_PAYLOAD
    assert len(messages.encode_data(1, bytes(SMALL_PAYLOAD - HEADER.size + 1))) == (
        LARGE_PAYLOAD
    )
    with pytest.raises(ValueError, match="too long"):
        messages.encode_data(1, bytes(MAX_DATA + 1))


@given(st.binary(max_size=800))
def test_prop_decode_arbitrary_bytes(payload: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        messages.decode(payload)


msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=300)
    | st.binary(max_size=100),
    lambda inner: (
        st.lists(inner, max_size=6)
        | st.dictionaries(
            st.text(max_size=5) | st.binary(max_size=5), inner, max_size=4
        )
    ),
    max_leaves=12,
)


@given(
    command=st.sampled_from(RelayCommand),
    stream_id=st.integers(0, 0xFFFF),
    value=msgpack_values,
)
def test_prop_decode_structured_garbage(
    command: RelayCommand, stream_id: int, value: object
) -> None:
    """Well-formed msgpack of the wrong shape is refused with MessageError."""
    body = msgpack.packb(value)
    if HEADER.size + len(body) > LARGE_PAYLOAD:
        return
    with contextlib.suppress(ProtocolError):
        messages.decode(frame(command, stream_id, body, LARGE_PAYLOAD))


def packed(*items: object) -> bytes:
    return msgpack.packb(list(items))


GOOD_EXTEND = [b"I" * 32, b"B" * 32, "relay.example", 9001, b"H" * 96]

REFUSED: list[tuple[str, bytes]] = [
    ("empty", b""),
    ("short header", b"\x01\x00"),
    ("length overruns", HEADER.pack(1, 1, 10) + b"123"),
    ("unknown command 0", frame(0, 1, b"")),
    ("unknown command 12", frame(12, 1, b"")),
    ("data on stream 0", frame(1, 0, b"x")),
    ("begin on stream 0", frame(2, 0, packed("a.example", 80))),
    ("connected on stream 0", frame(3, 0, packed("a"))),
    ("end on stream 0", frame(4, 0, b"\x00")),
    ("sendme of 3 bytes", frame(5, 1, b"\x00\x00\x01")),
    ("sendme of 5 bytes", frame(5, 1, b"\x00\x00\x00\x01\x00")),
    ("begin not msgpack", frame(2, 1, b"\xc1")),
    ("begin truncated msgpack", frame(2, 1, packed("a.example", 80)[:-1])),
    ("begin extra data", frame(2, 1, packed("a.example", 80) + b"\x00")),
    ("begin not an array", frame(2, 1, msgpack.packb({"a": 1}))),
    ("begin short array", frame(2, 1, packed("a.example"))),
    ("begin long array", frame(2, 1, packed("a.example", 80, 1))),
    ("begin empty host", frame(2, 1, packed("", 80))),
    ("begin long host", frame(2, 1, packed("a" * 256, 80))),
    ("begin host with space", frame(2, 1, packed("a b", 80))),
    ("begin host with nul", frame(2, 1, packed("a\0b", 80))),
    ("begin host with del", frame(2, 1, packed("a\x7fb", 80))),
    ("begin host bytes", frame(2, 1, packed(b"a.example", 80))),
    ("begin port 0", frame(2, 1, packed("a.example", 0))),
    ("begin port 65536", frame(2, 1, packed("a.example", 65536))),
    ("begin port negative", frame(2, 1, packed("a.example", -1))),
    ("begin port bool", frame(2, 1, packed("a.example", True))),
    ("begin port float", frame(2, 1, packed("a.example", 80.0))),
    ("begin port string", frame(2, 1, packed("a.example", "80"))),
    ("begin bad utf-8", frame(2, 1, b"\x92\xa2\xff\xfe\x50")),
    ("begin map with int key", frame(2, 1, msgpack.packb({1: 2}))),
    ("begin deep nesting", frame(2, 1, b"\x91" * 2000 + b"\xc0", LARGE_PAYLOAD)),
    ("connected not a string", frame(3, 1, packed(5))),
    ("connected long address", frame(3, 1, packed("a" * 256))),
    ("connected egress not an address", frame(3, 1, packed("a", "example.com"))),
    ("connected egress not a string", frame(3, 1, packed("a", 7))),
    ("connected three items", frame(3, 1, packed("a", "::1", "::1"))),
    ("connected empty array", frame(3, 1, packed())),
    ("end reason empty", frame(4, 1, b"")),
    ("end reason two bytes", frame(4, 1, b"\x00\x00")),
    ("extend short handshake", frame(6, 0, packed(*GOOD_EXTEND[:4], b"H" * 95))),
    ("extend handshake str", frame(6, 0, packed(*GOOD_EXTEND[:4], "H" * 96))),
    ("extend short identity", frame(6, 0, packed(b"I" * 31, *GOOD_EXTEND[1:]))),
    ("extend identity str", frame(6, 0, packed("I" * 32, *GOOD_EXTEND[1:]))),
    (
        "extend long onion key",
        frame(6, 0, packed(b"I" * 32, b"B" * 33, *GOOD_EXTEND[2:])),
    ),
    ("extend bad host", frame(6, 0, packed(*GOOD_EXTEND[:2], "", *GOOD_EXTEND[3:]))),
    ("extend bad port", frame(6, 0, packed(*GOOD_EXTEND[:3], 0, GOOD_EXTEND[4]))),
    ("extend four items", frame(6, 0, packed(*GOOD_EXTEND[:4]))),
    ("extended 63 bytes", frame(7, 0, b"Y" * 63)),
    ("extended 65 bytes", frame(7, 0, b"Y" * 65)),
    ("truncated reason empty", frame(8, 0, b"")),
    ("resolve on stream 0", frame(10, 0, packed("a.example", False))),
    ("resolve empty body", frame(10, 1, b"")),
    ("resolve one item", frame(10, 1, packed("a.example"))),
    ("resolve three items", frame(10, 1, packed("a.example", False, 1))),
    ("resolve empty query", frame(10, 1, packed("", False))),
    ("resolve long query", frame(10, 1, packed("a" * 256, False))),
    ("resolve query with space", frame(10, 1, packed("a b", False))),
    ("resolve query bytes", frame(10, 1, packed(b"a.example", False))),
    ("resolve ptr int", frame(10, 1, packed("a.example", 0))),
    ("resolve ptr nil", frame(10, 1, packed("a.example", None))),
    ("resolve ptr of a name", frame(10, 1, packed("a.example", True))),
    ("resolve ptr of a bad address", frame(10, 1, packed("192.0.2.300", True))),
    ("resolved on stream 0", frame(11, 0, packed(["192.0.2.1"], None))),
    ("resolved empty body", frame(11, 1, b"")),
    ("resolved one item", frame(11, 1, packed(["192.0.2.1"]))),
    ("resolved neither answers nor reason", frame(11, 1, packed([], None))),
    ("resolved answers and reason", frame(11, 1, packed(["192.0.2.1"], 2))),
    ("resolved answers not an array", frame(11, 1, packed("192.0.2.1", None))),
    ("resolved answer not a string", frame(11, 1, packed([1], None))),
    ("resolved answer bytes", frame(11, 1, packed([b"192.0.2.1"], None))),
    ("resolved empty answer", frame(11, 1, packed([""], None))),
    ("resolved long answer", frame(11, 1, packed(["a" * 256], None))),
    ("resolved answer with space", frame(11, 1, packed(["a b"], None))),
    ("resolved non-ascii answer", frame(11, 1, packed(["bü.example"], None))),
    (
        "resolved too many answers",
        frame(11, 1, packed(["192.0.2.1"] * (MAX_ANSWERS + 1), None)),
    ),
    ("resolved reason bool", frame(11, 1, packed([], True))),
    ("resolved reason str", frame(11, 1, packed([], "2"))),
    ("resolved reason negative", frame(11, 1, packed([], -1))),
    ("resolved reason 256", frame(11, 1, packed([], 256))),
]


@pytest.mark.parametrize(
    "payload", [p for _, p in REFUSED], ids=[n for n, _ in REFUSED]
)
def test_messages_refused(payload: bytes) -> None:
    with pytest.raises(MessageError):
        messages.decode(payload)


def test_good_extend_fixture_decodes() -> None:
    """The base of the refused EXTEND cases is itself valid."""
    assert messages.decode(frame(6, 0, packed(*GOOD_EXTEND))) == Extend(
        b"I" * 32, b"B" * 32, "relay.example", 9001, b"H" * 96
    )


@pytest.mark.parametrize("value", [11, 99, 255])
def test_unknown_end_reason_reads_as_misc(value: int) -> None:
    assert messages.decode(frame(4, 1, bytes([value]))) == End(1, EndReason.MISC)
    assert messages.decode(frame(8, 0, bytes([value]))) == Truncated(EndReason.MISC)
    assert messages.decode(frame(11, 1, packed([], value))) == Resolved(
        1, (), EndReason.MISC
    )


def test_resolved_answers_are_bounded() -> None:
    """The largest RESOLVED fits a large cell; the exit never sends more."""
    biggest = Resolved(1, tuple("a" * 255 for _ in range(MAX_ANSWERS)))
    assert len(messages.encode(biggest)) == LARGE_PAYLOAD
    assert messages.decode(messages.encode(biggest)) == biggest


def test_circuit_messages_ignore_the_stream_id() -> None:
    assert messages.decode(frame(9, 7, b"")) == Drop()
    assert messages.decode(frame(7, 7, b"Y" * 64)) == Extended(b"Y" * 64)
