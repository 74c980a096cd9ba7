"""Which destination addresses an exit may connect to.

Checked on the address *after* DNS resolution, at connect time, so a name
that resolves to a private address is refused too.  IPv4-mapped IPv6
addresses are unwrapped first.  Outside a declared test network every range
below is refused, as are the relay's own addresses; inside one (loopback
demos and tests) only the relay's own relay ports stay refused.
"""

import ipaddress
from collections.abc import Iterable
from typing import Final

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

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


def destination_allowed(
    address: str,
    port: int,
    *,
    test_network: bool,
    own_addresses: Iterable[str],
    own_ports: Iterable[int] = (),
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
    """
    ip = normalise(address)
    own = {normalise(a) for a in own_addresses}
    if ip in own and port in set(own_ports):
        return False
    if test_network:
        return True
    if ip in own:
        return False
    return not any(ip in net for net in REFUSED_NETWORKS if net.version == ip.version)
