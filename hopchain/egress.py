"""The egress check: does an exit's outgoing address lie where the client asked?

An exit reports, in CONNECTED, the local address of its outbound socket:
the address the destination sees.  The client places that address in a
country and compares it with its exit-country constraints:

1. the client's own GeoIP data (``--geoip``/``--geoip6``/``--geoip-mmdb``),
   when it knows the address;
2. else, when the egress is the exit's listed address, or a private or
   loopback address (a test network, where GeoIP knows nothing), the country
   the consensus lists for the exit (for a public listed address the
   authorities looked it up; on a test network it is the relay's declared
   country);
3. else the country is unknown, which does not match any constraint.

An exit that reports no egress (an older exit) is unknown too.  What to do
with a mismatch (refuse or warn) is the caller's choice (``--strict-countries``).
"""

from dataclasses import dataclass

from hopchain.directory import Descriptor
from hopchain.exitpolicy import is_ip_literal, normalise
from hopchain.geoip import GeoIPDatabase
from hopchain.path import PathConstraints

__all__ = ["EgressVerdict", "check_egress", "egress_country"]


@dataclass(frozen=True, slots=True)
class EgressVerdict:
    """The outcome of one check; ``reason`` explains a mismatch for the log."""

    ok: bool
    country: str | None
    source: str
    reason: str = ""


def egress_country(
    egress: str, exit: Descriptor, geoip: GeoIPDatabase | None
) -> tuple[str | None, str]:
    """The egress address's country (None: unknown) and where it came from."""
    try:
        ip = normalise(egress)
    except ValueError:
        return None, "not reported"
    if geoip is not None:
        found = geoip.country(str(ip))
        if found is not None:
            return found, "GeoIP"
    listed = exit.country.upper() or None
    if not ip.is_global:
        return listed, "the consensus (test network)"
    try:
        same = normalise(exit.address) == ip
    except ValueError:
        same = False
    if same:
        return listed, "the consensus"
    return None, "no GeoIP data knows it"


def check_egress(
    egress: str,
    exit: Descriptor,
    constraints: PathConstraints,
    geoip: GeoIPDatabase | None,
) -> EgressVerdict:
    """Whether ``egress`` satisfies the exit-country parts of ``constraints``."""
    country, source = egress_country(egress, exit, geoip)
    if country is not None and constraints.allows_exit_country(country):
        return EgressVerdict(True, country, source)
    shown = egress if is_ip_literal(egress) else "(none)"
    where = f"is in {country} by {source}" if country else f"is unknown: {source}"
    return EgressVerdict(
        False,
        country,
        source,
        f"exit {exit.nickname} connects from {shown}, which {where}; "
        f"wanted {_wanted(constraints)}",
    )


def _wanted(constraints: PathConstraints) -> str:
    parts = []
    if constraints.exit_countries:
        parts.append(",".join(sorted(constraints.exit_countries)))
    excluded = (
        constraints.exclude_exit_countries | constraints.exclude_countries_anywhere
    )
    if excluded:
        parts.append("not " + ",".join(sorted(excluded)))
    return " and ".join(parts) or "any country"
