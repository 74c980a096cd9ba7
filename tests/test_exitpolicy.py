"""Unit and property tests for hopchain.exitpolicy: the fixed refusals, and
the policy language against a reference model."""

import ipaddress
import re
from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hopchain.errors import ConfigError
from hopchain.exitpolicy import (
    ACCEPT_ALL,
    REDUCED_EXIT_POLICY,
    REFUSED_NETWORKS,
    Action,
    Rule,
    default_policy,
    destination_allowed,
    normalise,
    parse_policy,
)

# The refused ranges of DESIGN.md, "Security defaults".
DESIGN_REFUSED = [
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "224.0.0.0/4",
    "240.0.0.0/4",
    "::/128",
    "::1/128",
    "fc00::/7",
    "fe80::/10",
    "ff00::/8",
]


def samples(network: str) -> list[str]:
    """First, last and a middle address of ``network``."""
    net = ipaddress.ip_network(network)
    picks = {net[0], net[-1], net[net.num_addresses // 2]}
    return sorted(str(ip) for ip in picks)


REFUSED_ADDRESSES = sorted({a for n in DESIGN_REFUSED for a in samples(n)})
MAPPED_REFUSED = [
    f"::ffff:{a}" for a in REFUSED_ADDRESSES if ipaddress.ip_address(a).version == 4
]
# Public addresses, including the public neighbours of the refused IPv4 ranges.
PUBLIC_ADDRESSES = [
    "1.1.1.1",
    "93.184.216.34",
    "9.255.255.255",
    "11.0.0.0",
    "100.63.255.255",
    "100.128.0.0",
    "126.255.255.255",
    "128.0.0.0",
    "169.253.255.255",
    "169.255.0.0",
    "172.15.255.255",
    "172.32.0.0",
    "192.167.255.255",
    "192.169.0.0",
    "198.17.255.255",
    "198.20.0.0",
    "223.255.255.255",
    "2606:4700:4700::1111",
    "2001:4860:4860::8888",
    "::ffff:93.184.216.34",
]


def allowed(address: str, port: int = 443, **kwargs: object) -> bool:
    options: dict[str, object] = {"test_network": False, "own_addresses": ()}
    options.update(kwargs)
    return destination_allowed(address, port, **options)  # type: ignore[arg-type]


def test_refused_networks_match_the_design_list() -> None:
    assert sorted(map(str, REFUSED_NETWORKS)) == sorted(
        str(ipaddress.ip_network(n)) for n in DESIGN_REFUSED
    )


@pytest.mark.parametrize("address", REFUSED_ADDRESSES + MAPPED_REFUSED)
def test_refused_ranges_outside_test_networks(address: str) -> None:
    assert not allowed(address)


@pytest.mark.parametrize("address", REFUSED_ADDRESSES + MAPPED_REFUSED)
def test_refused_ranges_are_allowed_in_a_test_network(address: str) -> None:
    assert allowed(address, test_network=True)


@pytest.mark.parametrize("address", PUBLIC_ADDRESSES)
def test_public_addresses_are_allowed(address: str) -> None:
    assert allowed(address)


@pytest.mark.parametrize(
    "address", ["::ffff:127.0.0.1", "::ffff:7f00:1", "::FFFF:10.1.2.3", "fe80::1%eth0"]
)
def test_mapped_and_scoped_forms_are_unwrapped(address: str) -> None:
    assert not allowed(address)


@pytest.mark.parametrize(
    ("address", "ipv4"),
    [
        ("64:ff9b::7f00:1", "127.0.0.1"),  # NAT64
        ("64:ff9b::a9fe:a9fe", "169.254.169.254"),
        ("2002:a00:1::", "10.0.0.1"),  # 6to4
        ("2002:c0a8:101::1", "192.168.1.1"),
        ("::10.0.0.1", "10.0.0.1"),  # IPv4-compatible (deprecated)
    ],
)
def test_ipv6_forms_that_reach_ipv4_are_judged_as_ipv4(address: str, ipv4: str) -> None:
    assert normalise(address) == ipaddress.IPv4Address(ipv4)
    assert not allowed(address)


def test_unspecified_and_loopback_ipv6_stay_ipv6() -> None:
    assert normalise("::") == ipaddress.IPv6Address("::")
    assert normalise("::1") == ipaddress.IPv6Address("::1")


def test_normalise() -> None:
    assert normalise("::ffff:127.0.0.1") == ipaddress.IPv4Address("127.0.0.1")
    assert normalise("fe80::1%eth0") == ipaddress.IPv6Address("fe80::1")
    assert normalise("2001:db8::1") == ipaddress.IPv6Address("2001:db8::1")
    with pytest.raises(ValueError, match="does not appear"):
        normalise("example.com")


@pytest.mark.parametrize("address", ["203.0.113.7", "::ffff:203.0.113.7"])
@pytest.mark.parametrize("port", [80, 9001])
def test_own_address_is_refused_outside_test_networks(address: str, port: int) -> None:
    assert not allowed(address, port, own_addresses=["203.0.113.7"], own_ports=[9001])
    assert allowed("203.0.113.8", port, own_addresses=["203.0.113.7"])


@pytest.mark.parametrize("test_network", [True, False])
@pytest.mark.parametrize("address", ["127.0.0.2", "::ffff:127.0.0.2"])
def test_own_relay_port_is_refused_even_in_a_test_network(
    address: str, test_network: bool
) -> None:
    own = {"own_addresses": ["127.0.0.2"], "own_ports": [9001, 9030]}
    assert not allowed(address, 9001, test_network=test_network, **own)
    assert not allowed(address, 9030, test_network=test_network, **own)


def test_test_network_allows_own_address_on_other_ports_and_other_relays() -> None:
    own = {"own_addresses": ["127.0.0.2"], "own_ports": [9001]}
    assert allowed("127.0.0.2", 8080, test_network=True, **own)
    assert allowed("127.0.0.3", 9001, test_network=True, **own)


def test_own_ipv6_address_is_refused() -> None:
    own = {"own_addresses": ["2001:db8::7"], "own_ports": [9001]}
    assert not allowed("2001:db8::7", 443, **own)
    assert not allowed("2001:db8::7", 9001, test_network=True, **own)


# --- the policy language --------------------------------------------------------

ALL_V4 = ipaddress.ip_network("0.0.0.0/0")
ALL_V6 = ipaddress.ip_network("::/0")


def rule(text: str) -> Rule:
    (parsed,) = parse_policy(text).rules
    return parsed


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("accept *:80", Rule(Action.ACCEPT, None, 80, 80)),
        ("reject *:*", Rule(Action.REJECT, None, 1, 65535)),
        ("ACCEPT *4:1-1024", Rule(Action.ACCEPT, ALL_V4, 1, 1024)),
        ("reject *6:443", Rule(Action.REJECT, ALL_V6, 443, 443)),
        (
            "accept 192.0.2.0/24:*",
            Rule(Action.ACCEPT, ipaddress.ip_network("192.0.2.0/24")),
        ),
        (
            "reject 192.0.2.0/255.255.254.0:25",
            Rule(Action.REJECT, ipaddress.ip_network("192.0.2.0/23"), 25, 25),
        ),
        (
            "accept 192.0.2.7:22",
            Rule(Action.ACCEPT, ipaddress.ip_network("192.0.2.7/32"), 22, 22),
        ),
        (
            "reject [2001:db8::]/32:*",
            Rule(Action.REJECT, ipaddress.ip_network("2001:db8::/32")),
        ),
        ("accept [::1]:9", Rule(Action.ACCEPT, ipaddress.ip_network("::1/128"), 9, 9)),
        ("accept6 *:80", Rule(Action.ACCEPT, ALL_V6, 80, 80)),
        (
            "reject6 [2001:db8::]/48:*",
            Rule(Action.REJECT, ipaddress.ip_network("2001:db8::/48")),
        ),
        ("accept\t*:80", Rule(Action.ACCEPT, None, 80, 80)),
        ("accept 0.0.0.0/0:*", Rule(Action.ACCEPT, ALL_V4)),
    ],
)
def test_rule_forms(text: str, expected: Rule) -> None:
    assert rule(text) == expected
    assert rule(str(expected)) == expected


def test_commas_lines_and_comments() -> None:
    text = """
    # a file
    accept *:80, accept *:443   # web
    reject 192.0.2.0/24:*

    accept *:22,reject *:*
    """
    assert str(parse_policy(text)) == (
        "accept *:80, accept *:443, reject 192.0.2.0/24:*, accept *:22, reject *:*"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no rules"),
        ("# only a comment", "no rules"),
        ("allow *:80", "rule 1 'allow *:80': starts with 'allow'"),
        ("accept *:80, accept", "rule 2 'accept': expected one"),
        ("accept *:80 443", "expected one ADDR"),
        ("accept *", "missing ':PORT'"),
        ("accept [::1]", "missing ':PORT'"),
        ("accept 192.0.2.1", "missing ':PORT'"),
        ("accept *:0", "port 0 is outside 1..65535"),
        ("accept *:65536", "outside 1..65535"),
        ("accept *:80-", "bad port '80-'"),
        ("accept *:http", "bad port 'http'"),
        ("accept *:443-80", "port range 443-80 is reversed"),
        ("accept *:\u0663", "bad port"),  # a non-ASCII digit
        ("accept 192.0.2.300:*", "'192.0.2.300' is not an IPv4 address"),
        ("accept example.com:80", "'example.com' is not an IPv4 address"),
        ("accept 2001:db8::1:80", "must be in brackets"),
        ("accept [2001:db8::g]:80", "is not an IPv6 address"),
        ("accept [::1:80", "missing ':PORT'"),
        ("accept 192.0.2.1/33:*", "mask /33 is not a prefix length 0..32"),
        ("accept [::1]/129:*", "0..128"),
        ("accept 192.0.2.1/24:*", "bits set outside /24 (did you mean 192.0.2.0/24?)"),
        ("accept 192.0.2.0/255.0.255.0:*", "not a run of leading ones"),
        ("accept 192.0.2.0/255.255.255.256:*", "bad netmask"),
        ("accept6 192.0.2.1:*", "accept6 takes an IPv6 pattern"),
        ("reject6 *4:*", "reject6 takes an IPv6 pattern"),
    ],
)
def test_parse_errors_name_the_rule_and_the_problem(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)) as info:
        parse_policy(text, "--exit-policy")
    assert str(info.value).startswith("--exit-policy")


def test_errors_in_a_file_name_the_line() -> None:
    text = "accept *:80\n# fine\naccept *:443, reject *:99999\n"
    with pytest.raises(ConfigError) as info:
        parse_policy(text, "policy.txt")
    assert str(info.value) == (
        "policy.txt, line 3: rule 3 'reject *:99999': port 99999 is outside 1..65535"
    )


def test_first_match_wins_and_nothing_matched_is_rejected() -> None:
    policy = parse_policy("reject 192.0.2.0/24:80, accept *:80, accept [::1]:22")
    v4 = ipaddress.IPv4Address
    assert not policy.allows(v4("192.0.2.9"), 80)
    assert policy.allows(v4("198.51.100.9"), 80)
    assert policy.allows(ipaddress.IPv6Address("2001:db8::1"), 80)
    assert not policy.allows(v4("198.51.100.9"), 81)  # the implicit reject *:*
    assert policy.decision(v4("198.51.100.9"), 81) is None
    assert policy.allows(ipaddress.IPv6Address("::1"), 22)
    assert not policy.allows(v4("127.0.0.1"), 22)


def test_families_match_only_their_own_rules() -> None:
    policy = parse_policy("reject *4:*, accept *:*")
    assert not policy.allows(ipaddress.IPv4Address("198.51.100.1"), 80)
    assert policy.allows(ipaddress.IPv6Address("2001:db8::1"), 80)


# --- the reduced exit policy, the default -------------------------------------------

# The ports of Tor's REDUCED_EXIT_POLICY (src/core/or/policies.c), written
# out independently of the policy text.
TOR_REDUCED_PORTS = (
    "20-23 43 53 79-81 88 110 143 194 220 389 443 464-465 531 543-544 554 563 587 "
    "636 706 749 873 902-904 981 989-995 1194 1220 1293 1500 1533 1677 1723 1755 "
    "1863 2082-2083 2086-2087 2095-2096 2102-2104 3128 3389 3690 4321 4643 5050 "
    "5190 5222-5223 5228 5900 6660-6669 6679 6697 8000 8008 8074 8080 8082 "
    "8087-8088 8232-8233 8332-8333 8443 8888 9418 9999-10000 11371 19294 19638 "
    "50002 64738"
)


def _ranges(text: str) -> tuple[tuple[int, int], ...]:
    pairs = (part.partition("-") for part in text.split())
    return tuple((int(lo), int(hi or lo)) for lo, _, hi in pairs)


def test_the_default_is_tors_reduced_exit_policy() -> None:
    policy = default_policy(test_network=False)
    assert policy == parse_policy(REDUCED_EXIT_POLICY)
    assert policy.summary() == _ranges(TOR_REDUCED_PORTS)
    public = ipaddress.IPv4Address("198.51.100.7")
    assert policy.allows(public, 443)
    assert not policy.allows(public, 25)  # no mail
    assert not policy.may_accept_port(25)
    assert default_policy(test_network=True) == ACCEPT_ALL


def test_summary_ignores_narrow_accepts_and_private_rejects() -> None:
    policy = parse_policy(
        "reject 10.0.0.0/8:*, reject 192.0.2.0/24:80, accept 198.51.100.0/24:22,"
        "accept *:80, reject *:*"
    )
    assert policy.summary() == ((80, 80),)


def test_summary_drops_a_port_when_a_slash_8_is_rejected_first() -> None:
    assert parse_policy("reject 11.0.0.0/8:80, accept *:*").summary() == (
        (1, 79),
        (81, 65535),
    )
    assert parse_policy("reject 11.0.0.0/9:80, accept *:*").summary() == ((1, 65535),)


def test_summary_ignores_ipv6_rules_and_merges_neighbours() -> None:
    policy = parse_policy("reject *6:*, accept *:80, accept *4:81-90, reject *:*")
    assert policy.summary() == ((80, 90),)
    assert parse_policy("accept *6:*").summary() == ()


def test_may_accept_port() -> None:
    policy = parse_policy(
        "reject *4:22, reject *6:22, accept 192.0.2.1:25, accept *:80"
    )
    assert not policy.may_accept_port(22)
    assert policy.may_accept_port(25)
    assert policy.may_accept_port(80)
    assert not policy.may_accept_port(81)
    # An IPv4 rule after "reject *4" can never match.
    assert not parse_policy("reject *4:*, accept 192.0.2.1:*").may_accept_port(80)
    assert parse_policy("reject *4:*, accept [2001:db8::1]:*").may_accept_port(80)


@pytest.mark.parametrize(
    ("address", "port", "expected"),
    [
        ("198.51.100.1", 80, True),
        ("198.51.100.1", 22, False),  # the policy
        ("10.0.0.1", 80, False),  # refused before the policy
        ("127.0.0.1", 80, False),
        ("::1", 80, False),
        ("::ffff:10.0.0.1", 80, False),
        ("::ffff:198.51.100.1", 80, True),
        ("2002:c633:6401::1", 80, True),  # 6to4 of 198.51.100.1: both forms accepted
        ("2002:c633:6401::1", 443, False),  # the IPv4 form is refused on 443
    ],
)
def test_policy_applies_after_the_fixed_refusals(
    address: str, port: int, expected: bool
) -> None:
    policy = parse_policy("accept *4:443, reject *6:443, accept *:80, reject *:*")
    assert (
        destination_allowed(
            address, port, test_network=False, own_addresses=(), policy=policy
        )
        is expected
    )


def test_policy_applies_in_a_test_network_too() -> None:
    policy = parse_policy("accept 127.0.0.0/8:8000-8999")
    options = {"test_network": True, "own_addresses": ["127.0.0.9"]}
    assert destination_allowed("127.0.0.1", 8080, policy=policy, **options)  # type: ignore[arg-type]
    assert not destination_allowed("127.0.0.1", 22, policy=policy, **options)  # type: ignore[arg-type]
    assert not destination_allowed("10.0.0.1", 8080, policy=policy, **options)  # type: ignore[arg-type]


# --- hypothesis: the parser and the matcher against a reference model -----------

V4_SPACE = 1 << 32
V6_SPACE = 1 << 128


@dataclass(frozen=True)
class Spec:
    """A rule as the reference model sees it: (family, first, last) address
    intervals, a port range and accept/reject; plus a text that says so."""

    accept: bool
    blocks: tuple[tuple[int, int, int], ...]
    low: int
    high: int
    text: str


def _port_text(low: int, high: int, draw: st.DrawFn) -> str:
    if (low, high) == (1, 65535) and draw(st.booleans()):
        return "*"
    if low == high and draw(st.booleans()):
        return str(low)
    return f"{low}-{high}"


@st.composite
def specs(draw: st.DrawFn) -> Spec:
    accept = draw(st.booleans())
    kind = draw(st.sampled_from(["*", "*4", "*6", "v4", "v6", "accept6"]))
    low = draw(st.integers(1, 65535))
    high = draw(st.one_of(st.just(low), st.just(65535), st.integers(low, 65535)))
    if draw(st.booleans()):
        low, high = 1, 65535
    action = "accept" if accept else "reject"
    action = draw(st.sampled_from([action, action.upper(), action.capitalize()]))
    if kind == "*":
        blocks = ((4, 0, V4_SPACE - 1), (6, 0, V6_SPACE - 1))
        pattern = "*"
    elif kind == "*4":
        blocks, pattern = ((4, 0, V4_SPACE - 1),), "*4"
    elif kind == "*6" or kind == "accept6":
        blocks = ((6, 0, V6_SPACE - 1),)
        pattern = "*6"
        if kind == "accept6":
            action, pattern = action + "6", draw(st.sampled_from(["*", "*6"]))
    else:
        bits, space = (32, V4_SPACE) if kind == "v4" else (128, V6_SPACE)
        prefix = draw(st.integers(0, bits))
        base = draw(st.integers(0, space - 1)) >> (bits - prefix) << (bits - prefix)
        size = 1 << (bits - prefix)
        blocks = ((4 if kind == "v4" else 6, base, base + size - 1),)
        if kind == "v4":
            address = str(ipaddress.IPv4Address(base))
            mask = draw(
                st.sampled_from(
                    [
                        f"/{prefix}",
                        "/" + str(ipaddress.IPv4Network(f"0.0.0.0/{prefix}").netmask),
                    ]
                    + ([""] if prefix == 32 else [])
                )
            )
        else:
            address = f"[{ipaddress.IPv6Address(base)}]"
            mask = draw(
                st.sampled_from([f"/{prefix}"] + ([""] if prefix == 128 else []))
            )
        pattern = address + mask
    text = f"{action} {pattern}:{_port_text(low, high, draw)}"
    return Spec(accept, blocks, low, high, text)


def reference_allows(rules: list[Spec], version: int, address: int, port: int) -> bool:
    for spec in rules:
        if not spec.low <= port <= spec.high:
            continue
        if any(
            v == version and first <= address <= last for v, first, last in spec.blocks
        ):
            return spec.accept
    return False


def _join(texts: list[str], draw: st.DrawFn) -> str:
    out = texts[0]
    for text in texts[1:]:
        out += draw(st.sampled_from([", ", ",", "\n", " # comment\n", "\n\n,"])) + text
    return out


@st.composite
def policies(draw: st.DrawFn) -> tuple[list[Spec], str]:
    rules = draw(st.lists(specs(), min_size=1, max_size=8))
    return rules, _join([r.text for r in rules], draw)


@st.composite
def probes(draw: st.DrawFn, rules: list[Spec]) -> tuple[int, int, int]:
    """An address and port, often on or next to a rule's edges."""
    version = draw(st.sampled_from([4, 6]))
    space = V4_SPACE if version == 4 else V6_SPACE
    edges = [e for r in rules for v, a, b in r.blocks if v == version for e in (a, b)]
    near = [min(space - 1, max(0, e + d)) for e in edges for d in (-1, 0, 1)]
    address = draw(st.sampled_from(near) if near else st.integers(0, space - 1))
    if draw(st.booleans()):
        address = draw(st.integers(0, space - 1))
    ports = [
        min(65535, max(1, p + d))
        for r in rules
        for p in (r.low, r.high)
        for d in (-1, 0, 1)
    ]
    port = draw(st.one_of(st.sampled_from(ports), st.integers(1, 65535)))
    return version, address, port


@given(st.data())
def test_matcher_agrees_with_the_reference_model(data: st.DataObject) -> None:
    rules, text = data.draw(policies())
    policy = parse_policy(text)
    assert len(policy.rules) == len(rules)
    for _ in range(20):
        version, number, port = data.draw(probes(rules))
        ip = (
            ipaddress.IPv4Address(number)
            if version == 4
            else ipaddress.IPv6Address(number)
        )
        expected = reference_allows(rules, version, number, port)
        assert policy.allows(ip, port) is expected
        if expected:
            assert policy.may_accept_port(port)


@given(policies())
def test_format_then_parse_is_the_identity(drawn: tuple[list[Spec], str]) -> None:
    policy = parse_policy(drawn[1])
    assert parse_policy(str(policy)) == policy
    assert parse_policy("\n".join(map(str, policy.rules))) == policy


@given(st.data())
def test_summary_matches_the_verdict_for_addresses_no_narrow_rule_covers(
    data: st.DataObject,
) -> None:
    # Narrow IPv4 rules of at least /16 each: together they reject less than
    # a /8, so for an address none of them covers, the summary must say
    # exactly what the policy does.
    narrow = st.builds(
        lambda accept, net, port: f"{'accept' if accept else 'reject'} {net}:{port}",
        st.booleans(),
        st.integers(0, (1 << 16) - 1).map(
            lambda n: str(ipaddress.IPv4Network((n << 16, 16)))
        ),
        st.integers(1, 65535),
    )
    wide = specs().map(lambda s: s.text)
    texts = data.draw(st.lists(st.one_of(narrow, wide), min_size=1, max_size=10))
    policy = parse_policy(", ".join(texts))
    nets = [r.network for r in policy.rules if r.network is not None]
    ip = data.draw(
        st.integers(0, V4_SPACE - 1)
        .map(ipaddress.IPv4Address)
        .filter(lambda a: not any(a in n for n in nets if n.prefixlen > 0))
        .filter(lambda a: not any(a in n for n in REFUSED_NETWORKS if n.version == 4))
    )
    summary = policy.summary()
    edges = {p for r in policy.rules for p in (r.low - 1, r.low, r.high, r.high + 1)}
    for port in sorted(p for p in edges if 1 <= p <= 65535):
        in_summary = any(lo <= port <= hi for lo, hi in summary)
        assert in_summary is policy.allows(ip, port), port
