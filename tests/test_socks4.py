"""Unit and property tests for hopchain.socks4 (incremental SOCKS4/4a parser)."""

import ipaddress
import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hopchain.errors import Socks4Error
from hopchain.socks4 import (
    GRANTED,
    REJECTED,
    Socks4Server,
    encode_reply,
    encode_resolved_reply,
)
from hopchain.socks5 import Action, ConnectRequest, ResolveRequest

from .socks_drive import (
    EARLY_DATA,
    MODES,
    Outcome,
    assert_any_split_gives_the_same_outcome,
    splits,
)
from .socks_drive import drive as drive_parser

NAME_ALPHABET = string.ascii_letters + string.digits + ".-_"


def request(
    command: int, port: int, ip: bytes, user: bytes = b"", host: bytes | None = None
) -> bytes:
    """A SOCKS4 request; with ``host`` a SOCKS4a one (``ip`` should be 0.0.0.x)."""
    out = bytes([4, command]) + port.to_bytes(2, "big") + ip + user + b"\0"
    return out if host is None else out + host + b"\0"


SOCKS4A_IP = bytes([0, 0, 0, 1])


def drive(chunks: list[bytes], required: tuple[bytes, bytes] | None = None) -> Outcome:
    """Feed ``chunks`` to a SOCKS4 parser (``required``: credentials)."""
    return drive_parser(Socks4Server(required), chunks)


SUCCESS_CASES = [
    pytest.param(
        request(1, 80, bytes([192, 0, 2, 1])),
        ConnectRequest("192.0.2.1", 80, None, None, by_name=False),
        id="socks4 ip, no user id",
    ),
    pytest.param(
        request(1, 443, bytes([192, 0, 2, 1]), b"alice"),
        ConnectRequest("192.0.2.1", 443, b"alice", None, by_name=False),
        id="socks4 ip, user id is the isolation username",
    ),
    pytest.param(
        request(1, 443, SOCKS4A_IP, b"", b"example.com"),
        ConnectRequest("example.com", 443, None, None),
        id="socks4a name",
    ),
    pytest.param(
        request(1, 22, bytes([0, 0, 0, 255]), b"bob", b"a.example"),
        ConnectRequest("a.example", 22, b"bob", None),
        id="socks4a 0.0.0.255 with user id",
    ),
    pytest.param(
        request(1, 65535, bytes([0, 0, 0, 0])),
        ConnectRequest("0.0.0.0", 65535, None, None, by_name=False),
        id="0.0.0.0 is an address, not socks4a",
    ),
    pytest.param(
        request(1, 80, bytes([10, 0, 0, 1]), b"u" * 255),
        ConnectRequest("10.0.0.1", 80, b"u" * 255, None, by_name=False),
        id="user id of 255 bytes",
    ),
    pytest.param(
        request(1, 80, SOCKS4A_IP, b"", b"h" * 255),
        ConnectRequest("h" * 255, 80, None, None),
        id="host name of 255 bytes",
    ),
    pytest.param(
        request(0xF0, 0, SOCKS4A_IP, b"", b"example.com"),
        ResolveRequest("example.com", False, None, None),
        id="tor resolve (port ignored)",
    ),
    pytest.param(
        request(0xF0, 0, bytes([192, 0, 2, 7]), b"carol"),
        ResolveRequest("192.0.2.7", False, b"carol", None),
        id="tor resolve of an address",
    ),
]

FAILURE_CASES = [
    pytest.param(b"\x05\x01\x00", None, id="socks5 greeting"),
    pytest.param(b"\x00" + bytes(8), None, id="version 0"),
    pytest.param(request(2, 80, bytes([192, 0, 2, 1])), REJECTED, id="bind"),
    pytest.param(request(0, 80, bytes([192, 0, 2, 1])), REJECTED, id="command 0"),
    pytest.param(request(0xF1, 0, bytes([192, 0, 2, 1])), REJECTED, id="resolve_ptr"),
    pytest.param(request(1, 0, bytes([192, 0, 2, 1])), REJECTED, id="port 0"),
    pytest.param(
        request(1, 80, bytes([10, 0, 0, 1]), b"u" * 256),
        REJECTED,
        id="user id of 256 bytes",
    ),
    pytest.param(
        request(1, 80, SOCKS4A_IP, b"", b"h" * 256),
        REJECTED,
        id="host name of 256 bytes",
    ),
    pytest.param(request(1, 80, SOCKS4A_IP, b"", b""), REJECTED, id="empty host"),
    pytest.param(
        request(1, 80, SOCKS4A_IP, b"", b"a b"), REJECTED, id="host with space"
    ),
    pytest.param(
        request(1, 80, SOCKS4A_IP, b"", b"a\x7fb"), REJECTED, id="host with del"
    ),
    pytest.param(
        request(1, 80, SOCKS4A_IP, b"", "bü.example".encode()),
        REJECTED,
        id="non-ascii host",
    ),
    pytest.param(
        request(2, 80, SOCKS4A_IP, b"", b"example.com"), REJECTED, id="socks4a bind"
    ),
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("conversation", "expected"), SUCCESS_CASES)
def test_socks4_success(
    conversation: bytes, expected: ConnectRequest | ResolveRequest, mode: str
) -> None:
    outcome = drive(splits(conversation)[mode])
    assert outcome.error == "no error"
    assert outcome.actions == [Action(request=expected)]
    trailing = EARLY_DATA if mode == "with trailing data" else b""
    assert outcome.remaining == trailing


def test_socks4_only_0_0_0_x_announces_a_host_name() -> None:
    """0.0.1.1 is an address: the bytes after the user id are early data."""
    outcome = drive([request(1, 80, bytes([0, 0, 1, 1]), b"", b"example.com")])
    assert outcome.actions == [
        Action(request=ConnectRequest("0.0.1.1", 80, None, None, by_name=False))
    ]
    assert outcome.remaining == b"example.com\0"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("conversation", "code"), FAILURE_CASES)
def test_socks4_failure(conversation: bytes, code: int | None, mode: str) -> None:
    outcome = drive(splits(conversation)[mode])
    assert outcome.error == code
    assert outcome.actions == []


def test_socks4_long_user_id_is_refused_before_its_end_arrives() -> None:
    server = Socks4Server()
    server.receive_data(request(1, 80, bytes([10, 0, 0, 1]))[:8] + b"u" * 255)
    assert server.next_action() is None
    server.receive_data(b"u")
    with pytest.raises(Socks4Error, match="user id longer than 255") as info:
        server.next_action()
    assert info.value.reply_code == REJECTED


def test_socks4a_long_host_name_is_refused_before_its_end_arrives() -> None:
    server = Socks4Server()
    server.receive_data(request(1, 80, SOCKS4A_IP) + b"h" * 255)
    assert server.next_action() is None
    server.receive_data(b"h")
    with pytest.raises(Socks4Error, match="host name longer than 255") as info:
        server.next_action()
    assert info.value.reply_code == REJECTED


def test_socks4_needs_more_bytes_returns_none() -> None:
    server = Socks4Server()
    assert server.next_action() is None
    server.receive_data(b"\x04\x01\x00\x50\x00\x00\x00")
    assert server.next_action() is None
    server.receive_data(b"\x01user")
    assert server.next_action() is None
    server.receive_data(b"\0example.com")
    assert server.next_action() is None
    server.receive_data(b"\0")
    assert server.next_action() == Action(
        request=ConnectRequest("example.com", 80, b"user", None)
    )


def test_socks4_after_the_request_next_action_refuses() -> None:
    server = Socks4Server()
    server.receive_data(request(1, 80, bytes([1, 2, 3, 4])))
    assert server.next_action() is not None
    with pytest.raises(Socks4Error) as info:
        server.next_action()
    assert info.value.reply_code is None


def test_socks4_early_data_is_kept_once() -> None:
    server = Socks4Server()
    server.receive_data(request(1, 80, SOCKS4A_IP, b"", b"h.example"))
    server.receive_data(EARLY_DATA)
    assert server.next_action() is not None
    assert server.take_remaining() == EARLY_DATA
    assert server.take_remaining() == b""


def test_socks4_is_refused_when_credentials_are_required() -> None:
    """SOCKS4 cannot carry a password, so it cannot meet a required one."""
    conversation = request(1, 80, SOCKS4A_IP, b"user", b"example.com")
    outcome = drive([conversation], required=(b"user", b"secret"))
    assert outcome.actions == [Action(reply=encode_reply(REJECTED), close=True)]


@given(
    st.one_of(
        st.binary(max_size=600),
        st.binary(max_size=600).map(lambda b: b"\x04" + b),
        st.binary(max_size=600).map(lambda b: b"\x04\x01\x00\x50\x00\x00\x00" + b),
    ),
    st.integers(1, 16),
)
def test_prop_socks4_arbitrary_bytes(data: bytes, chunk: int) -> None:
    """Random input parses, waits, or raises Socks4Error (0x5B or no reply)."""
    outcome = drive([data[i : i + chunk] for i in range(0, len(data), chunk)])
    assert outcome.error in [None, "no error", REJECTED]


@st.composite
def conversations(draw: st.DrawFn) -> bytes:
    """A valid SOCKS4 or SOCKS4a request with a random target."""
    user = draw(st.binary(max_size=255).map(lambda b: b.replace(b"\0", b"")))
    port = draw(st.integers(1, 65535))
    if draw(st.booleans()):
        name = draw(st.text(NAME_ALPHABET, min_size=1, max_size=255))
        ip = bytes([0, 0, 0, draw(st.integers(1, 255))])
        return request(1, port, ip, user, name.encode())
    address = draw(st.ip_addresses(v=4))
    if address.packed[:3] == bytes(3):
        address = ipaddress.IPv4Address("192.0.2.1")
    return request(1, port, address.packed, user)


@given(conversation=conversations(), data=st.data())
def test_prop_socks4_any_split_gives_the_same_actions(
    conversation: bytes, data: st.DataObject
) -> None:
    assert_any_split_gives_the_same_outcome(drive, conversation, data)


def test_encode_reply() -> None:
    assert encode_reply(GRANTED) == b"\x00\x5a\x00\x00\x00\x00\x00\x00"
    assert encode_reply(REJECTED) == b"\x00\x5b\x00\x00\x00\x00\x00\x00"
    assert encode_reply(GRANTED, "192.0.2.9") == b"\x00\x5a\x00\x00\xc0\x00\x02\x09"


@pytest.mark.parametrize(
    ("answers", "reply"),
    [
        (["192.0.2.9"], encode_reply(GRANTED, "192.0.2.9")),
        (["2001:db8::1", "192.0.2.9"], encode_reply(GRANTED, "192.0.2.9")),
        (["2001:db8::1"], encode_reply(REJECTED)),
        (["not an address"], encode_reply(REJECTED)),
        ([], encode_reply(REJECTED)),
    ],
)
def test_encode_resolved_reply(answers: list[str], reply: bytes) -> None:
    assert encode_resolved_reply(answers) == reply
