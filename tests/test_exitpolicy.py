"""Unit tests for hopchain.exitpolicy (which destinations an exit may reach)."""

import ipaddress

import pytest

from hopchain.exitpolicy import REFUSED_NETWORKS, destination_allowed, normalise

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
