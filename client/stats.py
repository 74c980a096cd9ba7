"""Counters the client keeps for ``hopchain doctor`` (no addresses, no names).

Only counts are kept: how requests named their destinations, which
identifying headers were stripped, which exits (nickname and country) carried
traffic, and how often a limit was hit.  Destinations and client addresses
are never recorded.
"""

import ipaddress
from collections import Counter
from dataclasses import dataclass, field


def is_ip_literal(host: str) -> bool:
    """Whether ``host`` is an IP address rather than a name."""
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


@dataclass
class ClientStats:
    """What the client has seen since it started."""

    requests_by_name: int = 0
    requests_by_ip: Counter[str] = field(default_factory=Counter)
    headers_stripped: Counter[str] = field(default_factory=Counter)
    exits_used: Counter[str] = field(default_factory=Counter)
    limits_hit: Counter[str] = field(default_factory=Counter)

    def request(self, protocol: str, host: str) -> None:
        """Count one app request; a bare IP means the app resolved DNS itself."""
        if is_ip_literal(host):
            self.requests_by_ip[protocol] += 1
        else:
            self.requests_by_name += 1

    def as_dict(self) -> dict[str, object]:
        """A JSON-ready snapshot."""
        return {
            "requests_by_name": self.requests_by_name,
            "requests_by_ip": dict(self.requests_by_ip),
            "headers_stripped": dict(self.headers_stripped),
            "exits_used": dict(self.exits_used),
            "limits_hit": dict(self.limits_hit),
        }
