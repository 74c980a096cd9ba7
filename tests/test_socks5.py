"""Unit and property tests for hopchain.socks5 (incremental SOCKS5 server parser)."""

import ipaddress
import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hopchain.errors import Socks5Error
from hopchain.messages import EndReason
from hopchain.socks5 import (
    RESOLVE,
    RESOLVE_PTR,
    Action,
    ConnectRequest,
    Reply,
    ResolveRequest,
    Socks5Server,
    encode_reply,
    encode_resolved_reply,
    reply_for_end,
)

from .socks_drive import (
    EARLY_DATA,
    MODES,
    Outcome,
    assert_any_split_gives_the_same_outcome,
    splits,
)
from .socks_drive import drive as drive_parser

GREET_NO_AUTH = b"\x05\x01\x00"
GREET_USERPASS = b"\x05\x01\x02"
AUTH = b"\x01\x04user\x06secret"
DOMAIN_ALPHABET = string.ascii_letters + string.digits + ".-_"


def connect(atyp: int, address: bytes, port: int, command: int = 1) -> bytes:
    return bytes([5, command, 0, atyp]) + address + port.to_bytes(2, "big")


def domain(name: bytes) -> bytes:
    return bytes([len(name)]) + name


def drive(chunks: list[bytes]) -> Outcome:
    """Feed ``chunks`` to a SOCKS5 parser."""
    return drive_parser(Socks5Server(), chunks)


NO_AUTH_OK = Action(reply=b"\x05\x00")

# (conversation, expected actions) for successful handshakes.
SUCCESS_CASES = [
    pytest.param(
        GREET_NO_AUTH + connect(1, bytes([192, 0, 2, 1]), 80),
        [
            NO_AUTH_OK,
            Action(request=ConnectRequest("192.0.2.1", 80, None, None, by_name=False)),
        ],
        id="no-auth ipv4",
    ),
    pytest.param(
        b"\x05\x02\x80\x00" + connect(3, domain(b"example.com"), 443),
        [NO_AUTH_OK, Action(request=ConnectRequest("example.com", 443, None, None))],
        id="no-auth among unknown methods, domain",
    ),
    pytest.param(
        b"\x05\x03\x02\x80\x00" + AUTH + connect(3, domain(b"example.com"), 443),
        [
            Action(reply=b"\x05\x02"),
            Action(reply=b"\x01\x00"),
            Action(request=ConnectRequest("example.com", 443, b"user", b"secret")),
        ],
        id="username/password preferred over no-auth (isolation), domain",
    ),
    pytest.param(
        GREET_NO_AUTH + connect(4, ipaddress.IPv6Address("2001:db8::1").packed, 65535),
        [
            NO_AUTH_OK,
            Action(
                request=ConnectRequest("2001:db8::1", 65535, None, None, by_name=False)
            ),
        ],
        id="no-auth ipv6",
    ),
    pytest.param(
        GREET_USERPASS + AUTH + connect(3, domain(b"a.example"), 22),
        [
            Action(reply=b"\x05\x02"),
            Action(reply=b"\x01\x00"),
            Action(request=ConnectRequest("a.example", 22, b"user", b"secret")),
        ],
        id="username/password",
    ),
    pytest.param(
        GREET_USERPASS + b"\x01\x00\x00" + connect(1, bytes(4), 1),
        [
            Action(reply=b"\x05\x02"),
            Action(reply=b"\x01\x00"),
            Action(request=ConnectRequest("0.0.0.0", 1, b"", b"", by_name=False)),
        ],
        id="empty username/password",
    ),
    pytest.param(
        GREET_NO_AUTH + connect(3, domain(b"example.com"), 0, command=RESOLVE),
        [NO_AUTH_OK, Action(request=ResolveRequest("example.com", False, None, None))],
        id="tor resolve of a name (port 0 is fine)",
    ),
    pytest.param(
        GREET_USERPASS + AUTH + connect(3, domain(b"a.example"), 80, command=RESOLVE),
        [
            Action(reply=b"\x05\x02"),
            Action(reply=b"\x01\x00"),
            Action(request=ResolveRequest("a.example", False, b"user", b"secret")),
        ],
        id="tor resolve with credentials (isolation)",
    ),
    pytest.param(
        GREET_NO_AUTH + connect(1, bytes([192, 0, 2, 1]), 0, command=RESOLVE),
        [NO_AUTH_OK, Action(request=ResolveRequest("192.0.2.1", False, None, None))],
        id="tor resolve of an ipv4 address",
    ),
    pytest.param(
        GREET_NO_AUTH + connect(1, bytes([192, 0, 2, 1]), 0, command=RESOLVE_PTR),
        [NO_AUTH_OK, Action(request=ResolveRequest("192.0.2.1", True, None, None))],
        id="tor resolve_ptr of ipv4",
    ),
    pytest.param(
        GREET_NO_AUTH
        + connect(
            4, ipaddress.IPv6Address("2001:db8::1").packed, 0, command=RESOLVE_PTR
        ),
        [NO_AUTH_OK, Action(request=ResolveRequest("2001:db8::1", True, None, None))],
        id="tor resolve_ptr of ipv6",
    ),
    pytest.param(
        GREET_NO_AUTH + connect(3, domain(b"2001:DB8:0::1"), 0, command=RESOLVE_PTR),
        [NO_AUTH_OK, Action(request=ResolveRequest("2001:db8::1", True, None, None))],
        id="tor resolve_ptr of an ip literal as a name (canonical form)",
    ),
    pytest.param(
        b"\x05\x00",
        [Action(reply=b"\x05\xff", close=True)],
        id="no methods",
    ),
    pytest.param(
        b"\x05\x02\x01\x80",
        [Action(reply=b"\x05\xff", close=True)],
        id="no acceptable method",
    ),
]

# (conversation, expected reply code) for refused handshakes.
FAILURE_CASES = [
    pytest.param(b"\x04\x01\x00\x50" + bytes(4), None, id="socks4 greeting"),
    pytest.param(b"\x00\x01\x00", None, id="version 0 greeting"),
    pytest.param(GREET_USERPASS + b"\x05\x04user\x00", None, id="auth version 5"),
    pytest.param(
        GREET_NO_AUTH + b"\x04\x01\x00\x01" + bytes(6),
        Reply.GENERAL_FAILURE,
        id="request version 4",
    ),
    pytest.param(
        GREET_NO_AUTH + connect(1, bytes(4), 80, command=2),
        Reply.COMMAND_NOT_SUPPORTED,
        id="bind",
    ),
    pytest.param(
        GREET_NO_AUTH + connect(1, bytes(4), 80, command=3),
        Reply.COMMAND_NOT_SUPPORTED,
        id="udp associate",
    ),
    pytest.param(
        GREET_NO_AUTH + connect(3, domain(b"x.example"), 80, command=0),
        Reply.COMMAND_NOT_SUPPORTED,
        id="command 0",
    ),
    pytest.param(
        GREET_NO_AUTH + connect(4, bytes(16), 80, command=9),
        Reply.COMMAND_NOT_SUPPORTED,
        id="command 9",
    ),
    pytest.param(
        GREET_NO_AUTH + connect(1, bytes(4), 0, command=0xF2),
        Reply.COMMAND_NOT_SUPPORTED,
        id="command 0xf2",
    ),
    pytest.param(
        GREET_NO_AUTH + connect(3, domain(b"example.com"), 0, command=RESOLVE_PTR),
        Reply.GENERAL_FAILURE,
        id="resolve_ptr of a name",
    ),
    pytest.param(
        GREET_NO_AUTH + connect(3, domain(b""), 0, command=RESOLVE),
        Reply.GENERAL_FAILURE,
        id="resolve of an empty name",
    ),
    pytest.param(
        GREET_NO_AUTH + connect(3, domain(b"a\x01b"), 0, command=RESOLVE),
        Reply.GENERAL_FAILURE,
        id="resolve of a name with a control character",
    ),
    pytest.param(
        GREET_NO_AUTH + b"\x05\x01\x00\x02" + bytes(6),
        Reply.ADDRESS_TYPE_NOT_SUPPORTED,
        id="atyp 2",
    ),
    pytest.param(
        GREET_NO_AUTH + b"\x05\x01\x00\x00" + bytes(6),
        Reply.ADDRESS_TYPE_NOT_SUPPORTED,
        id="atyp 0",
    ),
    pytest.param(
        GREET_NO_AUTH + b"\x05\x02\x00\xff" + bytes(6),
        Reply.ADDRESS_TYPE_NOT_SUPPORTED,
        id="bind with atyp 255",
    ),
    pytest.param(
        GREET_NO_AUTH + connect(1, bytes(4), 0),
        Reply.GENERAL_FAILURE,
        id="port 0",
    ),
    pytest.param(
        GREET_NO_AUTH + connect(3, domain(b""), 80),
        Reply.GENERAL_FAILURE,
        id="empty domain",
    ),
    pytest.param(
        GREET_NO_AUTH + connect(3, domain(b"a b"), 80),
        Reply.GENERAL_FAILURE,
        id="domain with space",
    ),
    pytest.param(
        GREET_NO_AUTH + connect(3, domain(b"a\x00b"), 80),
        Reply.GENERAL_FAILURE,
        id="domain with nul",
    ),
    pytest.param(
        GREET_NO_AUTH + connect(3, domain("bü.example".encode()), 80),
        Reply.GENERAL_FAILURE,
        id="non-ascii domain",
    ),
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("conversation", "expected"), SUCCESS_CASES)
def test_socks5_success(conversation: bytes, expected: list[Action], mode: str) -> None:
    outcome = drive(splits(conversation)[mode])
    assert outcome.error == "no error"
    assert outcome.actions == expected
    trailing = EARLY_DATA if mode == "with trailing data" else b""
    assert outcome.remaining == trailing


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("conversation", "code"), FAILURE_CASES)
def test_socks5_failure(conversation: bytes, code: int | None, mode: str) -> None:
    outcome = drive(splits(conversation)[mode])
    assert outcome.error == code
    assert all(a.request is None and not a.close for a in outcome.actions)


def test_socks5_early_data_after_the_request_is_kept() -> None:
    server = Socks5Server()
    server.receive_data(GREET_NO_AUTH + connect(3, domain(b"h.example"), 80))
    server.receive_data(EARLY_DATA)
    assert server.next_action() == NO_AUTH_OK
    action = server.next_action()
    assert action is not None
    assert action.request is not None
    assert server.take_remaining() == EARLY_DATA
    assert server.take_remaining() == b""


def test_socks5_needs_more_bytes_returns_none() -> None:
    server = Socks5Server()
    assert server.next_action() is None
    server.receive_data(b"\x05\x02\x00")
    assert server.next_action() is None
    server.receive_data(b"\x80")
    assert server.next_action() == NO_AUTH_OK
    server.receive_data(b"\x05\x01\x00\x03\x09abc")
    assert server.next_action() is None


def test_socks5_after_the_handshake_next_action_refuses() -> None:
    server = Socks5Server()
    server.receive_data(GREET_NO_AUTH + connect(1, bytes([1, 2, 3, 4]), 80))
    server.next_action()
    server.next_action()
    with pytest.raises(Socks5Error) as info:
        server.next_action()
    assert info.value.reply_code is None


@given(
    st.one_of(
        st.binary(max_size=300),
        st.binary(max_size=300).map(lambda b: GREET_NO_AUTH + b),
        st.binary(max_size=300).map(lambda b: GREET_USERPASS + b),
        st.binary(max_size=300).map(lambda b: GREET_NO_AUTH + b"\x05" + b),
    ),
    st.integers(1, 8),
)
def test_prop_socks5_arbitrary_bytes(data: bytes, chunk: int) -> None:
    """Random input either parses or raises Socks5Error, in any chunking."""
    outcome = drive([data[i : i + chunk] for i in range(0, len(data), chunk)])
    assert outcome.error in [None, "no error", *Reply]


@st.composite
def conversations(draw: st.DrawFn) -> bytes:
    """A valid client handshake with a random target."""
    if draw(st.booleans()):
        user = draw(st.binary(max_size=255))
        password = draw(st.binary(max_size=255))
        head = GREET_USERPASS + b"\x01" + domain(user) + domain(password)
    else:
        head = GREET_NO_AUTH
    atyp = draw(st.sampled_from([1, 3, 4]))
    if atyp == 1:
        address = draw(st.ip_addresses(v=4)).packed
    elif atyp == 4:
        address = draw(st.ip_addresses(v=6)).packed
    else:
        name = draw(st.text(DOMAIN_ALPHABET, min_size=1, max_size=255))
        address = domain(name.encode())
    return head + connect(atyp, address, draw(st.integers(1, 65535)))


@given(conversation=conversations(), data=st.data())
def test_prop_socks5_any_split_gives_the_same_actions(
    conversation: bytes, data: st.DataObject
) -> None:
    assert_any_split_gives_the_same_outcome(drive, conversation, data)


END_TO_REPLY = [
    (EndReason.DONE, Reply.GENERAL_FAILURE),
    (EndReason.MISC, Reply.GENERAL_FAILURE),
    (EndReason.RESOLVE_FAILED, Reply.HOST_UNREACHABLE),
    (EndReason.CONNECT_REFUSED, Reply.CONNECTION_REFUSED),
    (EndReason.EXIT_POLICY, Reply.NOT_ALLOWED),
    (EndReason.TIMEOUT, Reply.TTL_EXPIRED),
    (EndReason.HOST_UNREACHABLE, Reply.HOST_UNREACHABLE),
    (EndReason.NET_UNREACHABLE, Reply.NETWORK_UNREACHABLE),
    (EndReason.DESTROYED, Reply.GENERAL_FAILURE),
    (EndReason.PROTOCOL, Reply.GENERAL_FAILURE),
    (EndReason.RESOURCE_LIMIT, Reply.GENERAL_FAILURE),
]


@pytest.mark.parametrize(("reason", "reply"), END_TO_REPLY)
def test_reply_for_end(reason: EndReason, reply: Reply) -> None:
    assert reply_for_end(reason) is reply


def test_reply_for_end_covers_every_reason() -> None:
    assert {reason for reason, _ in END_TO_REPLY} == set(EndReason)
    for reason in EndReason:
        assert reply_for_end(reason) is not Reply.SUCCEEDED


@pytest.mark.parametrize("code", list(Reply))
def test_encode_reply(code: Reply) -> None:
    assert encode_reply(code) == bytes([5, code, 0, 1, 0, 0, 0, 0, 0, 0])


def test_required_credentials_are_checked() -> None:
    required = (b"user", b"secret")
    good = Socks5Server(required)
    good.receive_data(GREET_USERPASS + AUTH)
    assert good.next_action() == Action(reply=b"\x05\x02")
    assert good.next_action() == Action(reply=b"\x01\x00")

    wrong = Socks5Server(required)
    wrong.receive_data(GREET_USERPASS + b"\x01\x04user\x05wrong")
    assert wrong.next_action() == Action(reply=b"\x05\x02")
    assert wrong.next_action() == Action(reply=b"\x01\x01", close=True)

    no_auth_only = Socks5Server(required)
    no_auth_only.receive_data(GREET_NO_AUTH)
    assert no_auth_only.next_action() == Action(reply=b"\x05\xff", close=True)


V4_REPLY = b"\x05\x00\x00\x01\xc0\x00\x02\x09\x00\x00"
V6_REPLY = (
    b"\x05\x00\x00\x04" + ipaddress.IPv6Address("2001:db8::9").packed + b"\x00\x00"
)


@pytest.mark.parametrize(
    ("answers", "ptr", "reply"),
    [
        pytest.param(["192.0.2.9"], False, V4_REPLY, id="ipv4"),
        pytest.param(["2001:db8::9"], False, V6_REPLY, id="ipv6"),
        pytest.param(["2001:db8::9", "192.0.2.9"], False, V4_REPLY, id="ipv4 first"),
        pytest.param(["junk", "2001:db8::9"], False, V6_REPLY, id="skips junk"),
        pytest.param([], False, encode_reply(Reply.HOST_UNREACHABLE), id="no answer"),
        pytest.param(
            ["host.example"],
            True,
            b"\x05\x00\x00\x03\x0chost.example\x00\x00",
            id="ptr name",
        ),
        pytest.param(
            ["h" * 256, "bü", "ok"],
            True,
            b"\x05\x00\x00\x03\x02ok\x00\x00",
            id="ptr skips names that do not fit",
        ),
        pytest.param(
            [], True, encode_reply(Reply.HOST_UNREACHABLE), id="ptr without a name"
        ),
    ],
)
def test_encode_resolved_reply(answers: list[str], ptr: bool, reply: bytes) -> None:
    assert encode_resolved_reply(answers, ptr=ptr) == reply
