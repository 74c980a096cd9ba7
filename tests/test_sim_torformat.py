"""The Tor consensus parser of ``hopchain sim paths``."""

import base64

import pytest
from hopchain.simulations.paths.torformat import (
    accepted_ports,
    fingerprint,
    parse_consensus,
)

from hopchain.errors import ConfigError
from hopchain.geoip import GeoIPDatabase


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode().rstrip("=")


GUARD_ID = bytes(range(20))
EXIT_ID = bytes(range(20, 40))

# Shaped like a real consensus: header, two routers, footer (signatures cut).
SAMPLE = f"""network-status-version 3 microdesc
vote-status consensus
consensus-method 33
valid-after 2024-05-01 12:00:00
fresh-until 2024-05-01 13:00:00
valid-until 2024-05-01 15:00:00
known-flags Authority BadExit Exit Fast Guard HSDir MiddleOnly Running Stable Valid
r guardone {b64(GUARD_ID)} {b64(bytes(20))} 2024-05-01 03:04:05 1.2.3.4 9001 0
m YWJjZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXo
s Fast Guard HSDir Running Stable V2Dir Valid
v Tor 0.4.8.10
pr Conflux=1 Cons=1-2 Desc=1-2
w Bandwidth=2500
p reject 1-65535
r exitone {b64(EXIT_ID)} 2024-05-01 06:07:08 5.6.7.8 443 0
a [2001:db8::1]:443
s Exit Fast Running Valid
w Bandwidth=800 Measured=700
p accept 80,443,6660-6669
directory-footer
bandwidth-weights Wbd=0 Wbe=0
"""

GEOIP = f"{(1 << 24)},{(2 << 24) - 1},AU\n{(5 << 24)},{(6 << 24) - 1},DE\n"


def test_parses_routers_flags_bandwidth_and_ports() -> None:
    consensus = parse_consensus(SAMPLE)
    assert consensus.fresh_until - consensus.valid_after == 3600
    assert consensus.valid_until - consensus.valid_after == 3 * 3600
    guard, exit_ = consensus.relays
    assert guard.descriptor.nickname == "guardone"
    assert fingerprint(guard.descriptor.identity) == GUARD_ID.hex().upper()
    assert len(guard.descriptor.identity) == 32
    assert guard.descriptor.address == "1.2.3.4"
    assert guard.flags == frozenset({"Fast", "Guard", "Running", "Stable", "Valid"})
    assert guard.descriptor.bandwidth == 2_500_000
    assert guard.descriptor.exit_ports == ()
    assert exit_.flags == frozenset({"Exit", "Fast", "Running", "Valid"})
    assert exit_.descriptor.or_port == 443
    assert exit_.descriptor.bandwidth == 800_000
    assert exit_.descriptor.exit_ports == ((80, 80), (443, 443), (6660, 6669))
    assert exit_.descriptor.allows_exit_to(6667)
    assert not exit_.descriptor.allows_exit_to(22)
    assert guard.descriptor.country == exit_.descriptor.country == ""


def test_countries_come_from_the_geoip_database() -> None:
    geoip = GeoIPDatabase.from_tor_files(GEOIP, None)
    guard, exit_ = parse_consensus(SAMPLE, geoip=geoip).relays
    assert (guard.descriptor.country, exit_.descriptor.country) == ("AU", "DE")
    assert guard.country_verified


@pytest.mark.parametrize(
    ("action", "ports", "accepted"),
    [
        ("accept", ((80, 80),), ((80, 80),)),
        ("reject", ((1, 65535),), ()),
        ("reject", ((25, 25), (119, 119)), ((1, 24), (26, 118), (120, 65535))),
        ("reject", ((1, 79), (81, 65535)), ((80, 80),)),
    ],
)
def test_port_summaries(
    action: str,
    ports: tuple[tuple[int, int], ...],
    accepted: tuple[tuple[int, int], ...],
) -> None:
    assert accepted_ports(action, ports) == accepted


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("r exitone", "7 or 8 fields"),
        ("w Bandwidth=lots", "bad Bandwidth"),
        ("p allow 80", "accept or reject"),
        ("p accept 80-70", "bad port range"),
        ("valid-after yesterday", "not a time"),
    ],
)
def test_malformed_lines_name_their_line(bad: str, message: str) -> None:
    lines = SAMPLE.splitlines()
    index = next(i for i, line in enumerate(lines) if line.split()[0] == bad.split()[0])
    lines[index + (1 if bad[0] in "wp" else 0)] = bad
    with pytest.raises(ConfigError, match=message):
        parse_consensus("\n".join(lines), name="cons")


def test_not_a_consensus() -> None:
    with pytest.raises(ConfigError, match="not a Tor consensus"):
        parse_consensus("hello\n")
