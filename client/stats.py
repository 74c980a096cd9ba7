"""Counters the client keeps for ``hopchain doctor`` (no addresses, no names).

Only counts are kept: how requests named their destinations, which
identifying headers were stripped, which exits (nickname and country) carried
traffic, and how often a limit was hit.  Destinations and client addresses
are never recorded.
"""

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class ClientStats:
    """What the client has seen since it started."""

    requests_by_name: int = 0
    requests_by_ip: Counter[str] = field(default_factory=Counter)
    headers_stripped: Counter[str] = field(default_factory=Counter)
    exits_used: Counter[str] = field(default_factory=Counter)
    limits_hit: Counter[str] = field(default_factory=Counter)

    def request(self, protocol: str, *, by_name: bool) -> None:
        """Count one app request; an IP address type means the app resolved
        the name itself (as Tor's WarnUnsafeSocks, judged by address type)."""
        if by_name:
            self.requests_by_name += 1
        else:
            self.requests_by_ip[protocol] += 1

    def as_dict(self) -> dict[str, object]:
        """A JSON-ready snapshot."""
        return {
            "requests_by_name": self.requests_by_name,
            "requests_by_ip": dict(self.requests_by_ip),
            "headers_stripped": dict(self.headers_stripped),
            "exits_used": dict(self.exits_used),
            "limits_hit": dict(self.limits_hit),
        }
