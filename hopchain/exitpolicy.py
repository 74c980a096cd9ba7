"""Which destinations an exit may connect to: fixed refusals, then a policy.

Two layers, both checked on the address *after* DNS resolution, at connect
time, so a name that resolves to a private address is refused too:

1. ``destination_allowed`` refuses, before any policy, the ranges in
   ``REFUSED_NETWORKS`` (private, loopback, link-local, multicast,
   unspecified) and the relay's own addresses; IPv4-mapped, NAT64, 6to4 and
   IPv4-compatible IPv6 addresses are judged as the IPv4 address they carry.
   Inside a declared test network (loopback demos and tests) only the
   relay's own relay ports stay refused.
2. An ``ExitPolicy``: Tor's ExitPolicy language (``accept|reject
   ADDR[/MASK]:PORT[-PORT]``), evaluated in order, first match wins, and
   ``reject *:*`` when no rule matches.  See docs/protocol.md section 11.
"""

import ipaddress
import itertools
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from typing import Final

from hopchain.errors import ConfigError

__all__ = [
    "ACCEPT_ALL",
    "REDUCED_EXIT_POLICY",
    "REFUSED_NETWORKS",
    "Action",
    "Address",
    "ExitPolicy",
    "Network",
    "Rule",
    "default_policy",
    "destination_allowed",
    "format_ports",
    "normalise",
    "parse_policy",
]

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

REFUSED_NETWORKS: Final = tuple(
    ipaddress.ip_network(n)
    for n in (
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
    )
)

_NAT64: Final = ipaddress.ip_network("64:ff9b::/96")
_IPV4_COMPATIBLE: Final = ipaddress.ip_network("::/96")
_ALL_V4: Final = ipaddress.IPv4Network("0.0.0.0/0")
_ALL_V6: Final = ipaddress.IPv6Network("::/0")
MAX_PORT: Final = 65535


def normalise(address: str) -> Address:
    """Parse an address and unwrap IPv6 forms that carry an IPv4 address.

    IPv4-mapped (``::ffff:a.b.c.d``), NAT64 (``64:ff9b::a.b.c.d``), 6to4
    (``2002:AABB:CCDD::``) and IPv4-compatible (``::a.b.c.d``) addresses can
    all lead to an IPv4 host, so they are judged as that IPv4 address.
    """
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv4Address):
        return ip
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64 or (ip in _IPV4_COMPATIBLE and int(ip) > 1):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip


def is_ip_literal(host: str) -> bool:
    """Whether ``host`` is an IPv4 or IPv6 address rather than a name."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class Action(Enum):
    """What a rule does with the destinations it matches."""

    ACCEPT = "accept"
    REJECT = "reject"


@dataclass(frozen=True, slots=True)
class Rule:
    """One policy rule: ``network`` None matches every address of both families
    (Tor's ``*``); ports are the inclusive range ``low``-``high``."""

    action: Action
    network: Network | None
    low: int = 1
    high: int = MAX_PORT

    def matches(self, ip: Address, port: int) -> bool:
        """Whether this rule applies to ip:port."""
        if not self.low <= port <= self.high:
            return False
        if self.network is None:
            return True
        return ip.version == self.network.version and ip in self.network

    def __str__(self) -> str:
        """The canonical text, which ``parse_policy`` reads back as this rule."""
        return f"{self.action.value} {_format_network(self.network)}:{self._ports()}"

    def _ports(self) -> str:
        if (self.low, self.high) == (1, MAX_PORT):
            return "*"
        return str(self.low) if self.low == self.high else f"{self.low}-{self.high}"


def _format_network(network: Network | None) -> str:
    if network is None:
        return "*"
    if network == _ALL_V4:
        return "*4"
    if network == _ALL_V6:
        return "*6"
    if isinstance(network, ipaddress.IPv4Network):
        address = str(network.network_address)
    else:
        address = f"[{network.network_address}]"
    full = network.max_prefixlen
    return address if network.prefixlen == full else f"{address}/{network.prefixlen}"


@dataclass(frozen=True, slots=True)
class ExitPolicy:
    """Rules evaluated in order; the first that matches decides, and a
    destination no rule matches is rejected (the implicit ``reject *:*``).

    Tor appends its default policy after a torrc policy that does not end in
    a catch-all; here nothing is appended, so a policy means what it says.
    """

    rules: tuple[Rule, ...]

    def decision(self, ip: Address, port: int) -> Rule | None:
        """The first rule matching ip:port, or None (rejected by default)."""
        for rule in self.rules:
            if rule.matches(ip, port):
                return rule
        return None

    def allows(self, ip: Address, port: int) -> bool:
        """Whether the policy accepts ip:port."""
        rule = self.decision(ip, port)
        return rule is not None and rule.action is Action.ACCEPT

    def may_accept_port(self, port: int) -> bool:
        """Whether any address could be accepted on ``port`` (False lets the
        exit refuse a stream before resolving its name)."""
        closed: set[int] = set()  # address families already rejected wholesale
        for rule in self.rules:
            if not rule.low <= port <= rule.high:
                continue
            if rule.action is Action.ACCEPT:
                if rule.network is None or rule.network.version not in closed:
                    return True
            elif rule.network is None:
                return False
            elif rule.network.prefixlen == 0:
                closed.add(rule.network.version)
                if closed == {4, 6}:
                    return False
        return False

    def summary(self) -> tuple[tuple[int, int], ...]:
        """The port ranges this policy accepts for IPv4 destinations in
        general, for the descriptor's ``exit_ports`` (clients choose exits by
        port, as Tor's policy summaries let them).

        A port is in the summary when its first rule covering all of IPv4
        (``*`` or ``*4``) accepts it and the narrower rejects before that rule
        shut out less than a /8 of addresses outside ``REFUSED_NETWORKS``
        (which are refused anyway).  Narrower accepts do not count: an exit
        that serves one subnet is no general exit for that port.
        """
        cuts = {1, MAX_PORT + 1}
        for rule in self.rules:
            cuts.update((rule.low, rule.high + 1))
        edges = sorted(cuts)
        ranges: list[tuple[int, int]] = []
        for low, next_low in itertools.pairwise(edges):
            if not self._generally_accepts(low):
                continue
            if ranges and ranges[-1][1] == low - 1:
                ranges[-1] = (ranges[-1][0], next_low - 1)
            else:
                ranges.append((low, next_low - 1))
        return tuple(ranges)

    def _generally_accepts(self, port: int) -> bool:
        rejected = 0
        for rule in self.rules:
            if not rule.low <= port <= rule.high:
                continue
            network = rule.network
            if network is None or network == _ALL_V4:
                return rule.action is Action.ACCEPT and rejected < 1 << 24
            if (
                network.version == 4
                and rule.action is Action.REJECT
                and not any(network.subnet_of(r) for r in _REFUSED_V4)
            ):
                rejected += network.num_addresses
        return False

    def __str__(self) -> str:
        return ", ".join(map(str, self.rules))


_REFUSED_V4: Final = tuple(
    n for n in REFUSED_NETWORKS if isinstance(n, ipaddress.IPv4Network)
)


def parse_policy(text: str, source: str = "exit policy") -> ExitPolicy:
    """Parse Tor-style policy rules, separated by commas or new lines.

    ``#`` starts a comment that runs to the end of its line.  Each rule is
    ``accept|reject ADDR[/MASK]:PORT[-PORT]`` where ADDR is ``*`` (both
    families), ``*4``, ``*6``, an IPv4 address or ``[IPv6]``, MASK a prefix
    length (or, for IPv4, a dotted netmask) and PORT ``*``, ``N`` or
    ``N-M``.  ``accept6``/``reject6`` take only IPv6 patterns, and ``*``
    there means ``*6``.  Keywords are case-insensitive.

    Raises:
        ConfigError: naming ``source``, the rule (and its line when the text
            has several lines) and what is wrong with it.
    """
    rules = []
    multiline = "\n" in text.strip()
    for number, line in enumerate(text.splitlines(), start=1):
        for item in line.split("#", 1)[0].split(","):
            item = item.strip()
            if not item:
                continue
            where = f"{source}, line {number}" if multiline else source
            try:
                rules.append(_parse_rule(item))
            except ValueError as exc:
                raise ConfigError(
                    f"{where}: rule {len(rules) + 1} {item!r}: {exc}"
                ) from None
    if not rules:
        raise ConfigError(f"{source}: no rules (use 'reject *:*' to refuse all)")
    return ExitPolicy(tuple(rules))


def _parse_rule(item: str) -> Rule:
    keyword, *rest = item.split(None, 1)
    pattern = rest[0] if rest else ""
    keyword = keyword.lower()
    ipv6_only = keyword.endswith("6")
    try:
        action = Action(keyword.removesuffix("6"))
    except ValueError:
        raise ValueError(
            f"starts with {keyword!r}, not accept, reject, accept6 or reject6"
        ) from None
    if not pattern or len(pattern.split()) != 1:
        raise ValueError("expected one ADDR[/MASK]:PORT[-PORT] after the action")
    address, sep, ports = pattern.rpartition(":")
    if not sep or not address or (address.startswith("[") and "]" not in address):
        raise ValueError("missing ':PORT' (use ':*' for every port)")
    network = _parse_address(address)
    if ipv6_only:
        if network is None:
            network = _ALL_V6
        elif network.version != 6:
            raise ValueError(f"{keyword} takes an IPv6 pattern, not {address!r}")
    low, high = _parse_ports(ports)
    return Rule(action, network, low, high)


def _parse_address(text: str) -> Network | None:
    if text == "*":
        return None
    if text == "*4":
        return _ALL_V4
    if text == "*6":
        return _ALL_V6
    address, slash, mask = text.partition("/")
    if address.startswith("["):
        if not address.endswith("]"):
            raise ValueError(f"bad IPv6 address {address!r} (write it as [ADDR])")
        ip: Address = _ip(address[1:-1], ipaddress.IPv6Address)
    elif ":" in address:
        _ip(address, ipaddress.IPv6Address)
        raise ValueError(f"IPv6 address {address!r} must be in brackets: [{address}]")
    else:
        ip = _ip(address, ipaddress.IPv4Address)
    prefix = _parse_mask(mask, ip) if slash else int(ip.max_prefixlen)
    try:
        return ipaddress.ip_network(f"{ip}/{prefix}")
    except ValueError:
        base = ipaddress.ip_network(f"{ip}/{prefix}", strict=False)
        raise ValueError(
            f"{ip} has bits set outside /{prefix} (did you mean "
            f"{_format_network(base)}?)"
        ) from None


def _ip(text: str, kind: type[Address]) -> Address:
    try:
        return kind(text)
    except ValueError:
        family = "IPv4" if kind is ipaddress.IPv4Address else "IPv6"
        raise ValueError(f"{text!r} is not an {family} address") from None


def _parse_mask(mask: str, ip: Address) -> int:
    if "." in mask and ip.version == 4:
        try:
            bits = int(ipaddress.IPv4Address(mask))
        except ValueError:
            raise ValueError(f"bad netmask {mask!r}") from None
        prefix = 32 - ((~bits & 0xFFFFFFFF).bit_length())
        if bits != (0xFFFFFFFF << (32 - prefix)) & 0xFFFFFFFF:
            raise ValueError(f"netmask {mask} is not a run of leading ones")
        return prefix
    if not _is_number(mask) or int(mask) > ip.max_prefixlen:
        raise ValueError(f"mask /{mask} is not a prefix length 0..{ip.max_prefixlen}")
    return int(mask)


def format_ports(ranges: Iterable[tuple[int, int]]) -> str:
    """Port ranges as ``80,443,8000-8999`` (``none`` when empty)."""
    text = ",".join(f"{lo}-{hi}" if lo != hi else str(lo) for lo, hi in ranges)
    return text or "none"


def _is_number(text: str) -> bool:
    return text.isascii() and text.isdigit()


def _parse_ports(text: str) -> tuple[int, int]:
    if text == "*":
        return 1, MAX_PORT
    low_text, dash, high_text = text.partition("-")
    if not _is_number(low_text) or (dash and not _is_number(high_text)):
        raise ValueError(f"bad port {text!r} (use N, N-M or *)")
    low, high = int(low_text), int(high_text) if dash else int(low_text)
    if not 1 <= low <= MAX_PORT or not 1 <= high <= MAX_PORT:
        raise ValueError(f"port {text} is outside 1..{MAX_PORT}")
    if low > high:
        raise ValueError(f"port range {text} is reversed")
    return low, high


# Tor's ReducedExitPolicy: the REDUCED_EXIT_POLICY string of tor's
# src/core/or/policies.c (torproject/tor, commit 00631322a995), the ports of
# https://trac.torproject.org/projects/tor/wiki/doc/ReducedExitPolicy.
REDUCED_EXIT_POLICY: Final = """\
accept *:20-23, accept *:43, accept *:53, accept *:79-81, accept *:88
accept *:110, accept *:143, accept *:194, accept *:220, accept *:389
accept *:443, accept *:464, accept *:465, accept *:531, accept *:543-544
accept *:554, accept *:563, accept *:587, accept *:636, accept *:706
accept *:749, accept *:873, accept *:902-904, accept *:981, accept *:989-995
accept *:1194, accept *:1220, accept *:1293, accept *:1500, accept *:1533
accept *:1677, accept *:1723, accept *:1755, accept *:1863
accept *:2082-2083, accept *:2086-2087, accept *:2095-2096
accept *:2102-2104, accept *:3128, accept *:3389, accept *:3690
accept *:4321, accept *:4643, accept *:5050, accept *:5190
accept *:5222-5223, accept *:5228, accept *:5900, accept *:6660-6669
accept *:6679, accept *:6697, accept *:8000, accept *:8008, accept *:8074
accept *:8080, accept *:8082, accept *:8087-8088, accept *:8232-8233
accept *:8332-8333, accept *:8443, accept *:8888, accept *:9418
accept *:9999, accept *:10000, accept *:11371, accept *:19294
accept *:19638, accept *:50002, accept *:64738, reject *:*
"""

ACCEPT_ALL: Final = ExitPolicy((Rule(Action.ACCEPT, None),))


def default_policy(test_network: bool) -> ExitPolicy:
    """The policy of an exit that names none: Tor's reduced exit policy, or,
    in a declared test network (every destination local, on ephemeral
    ports), ``accept *:*``."""
    if test_network:
        return ACCEPT_ALL
    return parse_policy(REDUCED_EXIT_POLICY, "the reduced exit policy")


def destination_allowed(
    address: str,
    port: int,
    *,
    test_network: bool,
    own_addresses: Iterable[str],
    own_ports: Iterable[int] = (),
    policy: ExitPolicy | None = None,
) -> bool:
    """Whether an exit may open a connection to address:port.

    Args:
        address: the resolved IP address (v4 or v6, possibly v4-mapped).
        port: the destination port.
        test_network: the relay runs in a declared test network.
        own_addresses: the relay's own addresses (never a destination outside
            a test network).
        own_ports: the relay's own listening ports; with ``own_addresses``
            they are never a destination (no connecting back into relays).
        policy: the exit policy, applied after the fixed refusals (None: no
            policy, as for extension targets and RESOLVE answers).  An IPv6
            address that carries an IPv4 address must be accepted both as
            itself and as that IPv4 address.

    Raises:
        ValueError: ``address`` is not an IP address.
    """
    ip = normalise(address)
    own = {normalise(a) for a in own_addresses}
    if ip in own and port in set(own_ports):
        return False
    if not test_network:
        if ip in own:
            return False
        if any(ip in net for net in REFUSED_NETWORKS if net.version == ip.version):
            return False
    if policy is None:
        return True
    literal = ipaddress.ip_address(address.split("%", 1)[0])
    return policy.allows(ip, port) and (literal == ip or policy.allows(literal, port))
