"""GeoIP: Tor's geoip/geoip6 format, lookups, and the country an authority lists."""

import ipaddress
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hopchain.errors import ConfigError
from hopchain.geoip import GeoIPDatabase, relay_country

from .mmdb_files import write_mmdb

V4 = """# a comment
16777216,16777471,AU
134744064,134744319,US
3238006272,3238006527,NL
3238006528,3238006783,??
"""
V6 = """2001:4860::,2001:4860:ffff:ffff:ffff:ffff:ffff:ffff,US
2a00:1450::,2a00:1450:ffff:ffff:ffff:ffff:ffff:ffff,IE
"""
DB = GeoIPDatabase.from_tor_files(V4, V6)


@pytest.mark.parametrize(
    ("address", "country"),
    [
        ("1.0.0.0", "AU"),
        ("1.0.0.255", "AU"),
        ("1.0.1.0", None),
        ("8.8.8.8", "US"),
        ("193.0.14.129", "NL"),
        ("193.0.15.1", None),  # listed as ?? (unknown)
        ("0.0.0.1", None),
        ("255.255.255.255", None),
        ("::ffff:8.8.8.8", "US"),
        ("2001:4860:4860::8888", "US"),
        ("2a00:1450:4001::1", "IE"),
        ("2001:db8::1", None),
    ],
)
def test_lookups(address: str, country: str | None) -> None:
    assert DB.country(address) == country


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1,2\n", "line 1: not LOW,HIGH,CC"),
        ("1,2,XYZ\n", "bad country code"),
        ("5,4,US\n", "line 1: range empty, out of order or overlaps"),
        ("1,10,US\n5,20,DE\n", "line 2: range empty, out of order or overlaps"),
        ("1,4294967296,US\n", "line 1: range empty"),
        ("a,b,US\n", "not LOW,HIGH,CC"),
    ],
)
def test_malformed_files_name_the_line(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        GeoIPDatabase.from_tor_files(text, None)


@given(
    st.lists(st.integers(0, 2**32 - 1), min_size=2, max_size=40, unique=True).map(
        sorted
    ),
    st.lists(st.integers(0, 2**32 - 1), max_size=20),
)
def test_prop_lookup_matches_a_linear_scan(
    bounds: list[int], probes: list[int]
) -> None:
    ranges = [(bounds[i], bounds[i + 1] - 1) for i in range(0, len(bounds) - 1, 2)]
    ranges = [(low, high) for low, high in ranges if low <= high]
    codes = ["AA", "BB", "CC"]
    text = "".join(f"{lo},{hi},{codes[i % 3]}\n" for i, (lo, hi) in enumerate(ranges))
    db = GeoIPDatabase.from_tor_files(text, None)
    for probe in probes + [r[0] for r in ranges] + [r[1] for r in ranges]:
        expected = next(
            (codes[i % 3] for i, (lo, hi) in enumerate(ranges) if lo <= probe <= hi),
            None,
        )
        assert db.country(str(ipaddress.IPv4Address(probe))) == expected


def test_relay_country_verified_declared_or_unknown() -> None:
    assert relay_country("8.8.8.8", "DE", DB) == ("US", True)
    assert relay_country("192.0.2.7", "DE", DB) == ("DE", False)  # not global
    assert relay_country("127.0.0.5", "NL", DB) == ("NL", False)  # test network
    assert relay_country("9.9.9.9", "DE", DB) == ("", True)  # public, unknown
    assert relay_country("8.8.8.8", "DE", None) == ("DE", False)  # no database


DEBIAN = Path("/usr/share/tor/geoip")


@pytest.mark.skipif(not DEBIAN.exists(), reason="Debian's tor-geoipdb is not installed")
def test_debians_tor_geoip_file_loads() -> None:
    db = GeoIPDatabase.from_tor_files(DEBIAN.read_text(encoding="ascii"), None)
    assert len(db) > 100_000
    assert db.country("127.0.0.1") is None
    assert db.country("8.8.8.8") is not None  # the file's own data, not ours


def test_errors_name_the_file_they_are_in() -> None:
    with pytest.raises(ConfigError, match=r"^/etc/v6file line 2: "):
        GeoIPDatabase.from_tor_files(
            "1,2,US\n", "::1,::2,US\nnot a line\n", names=("/etc/v4file", "/etc/v6file")
        )


MMDB_RECORDS: dict[str, dict[str, object]] = {
    "8.8.8.0/24": {"country": {"iso_code": "US", "names": {"en": "United States"}}},
    "193.0.14.0/24": {"country": {"iso_code": "nl"}},  # lower case is accepted
    "2a00:1450::/32": {"registered_country": {"iso_code": "IE"}},
    "203.0.113.0/24": {"continent": {"code": "OC"}},  # no country
    "198.51.100.0/24": {"country": {"iso_code": "X1"}},  # not a country code
}


@pytest.fixture
def mmdb(tmp_path: Path) -> bytes:
    return write_mmdb(tmp_path / "countries.mmdb", MMDB_RECORDS).read_bytes()


@pytest.mark.parametrize(
    ("address", "country"),
    [
        ("8.8.8.8", "US"),
        ("8.8.9.1", None),
        ("::ffff:8.8.8.8", "US"),
        ("193.0.14.129", "NL"),
        ("2a00:1450:4001::1", "IE"),
        ("203.0.113.9", None),
        ("198.51.100.9", None),
        ("2001:db8::1", None),
    ],
)
def test_mmdb_lookups(mmdb: bytes, address: str, country: str | None) -> None:
    assert GeoIPDatabase.from_mmdb(mmdb).country(address) == country


def test_mmdb_answers_first_and_tor_ranges_fill_its_gaps(mmdb: bytes) -> None:
    db = GeoIPDatabase.from_tor_files(
        "16777216,16777471,AU\n134744064,134744319,DE\n", None
    )
    db.add_mmdb(mmdb)
    assert db.country("8.8.8.8") == "US"  # both know it: the .mmdb wins
    assert db.country("1.0.0.7") == "AU"  # only the Tor ranges know it
    assert len(db) > 2


def test_an_ipv4_only_mmdb_knows_no_ipv6(tmp_path: Path) -> None:
    from mmdb_writer import MMDBWriter
    from netaddr import IPSet

    writer = MMDBWriter(ip_version=4)
    writer.insert_network(IPSet(["10.0.0.0/8"]), {"country": {"iso_code": "SE"}})
    writer.to_db_file(str(tmp_path / "v4.mmdb"))
    db = GeoIPDatabase.from_mmdb((tmp_path / "v4.mmdb").read_bytes())
    assert db.country("10.1.2.3") == "SE"
    assert db.country("2001:db8::1") is None


@pytest.mark.parametrize(
    "data", [b"", b"not a database", b"\xab\xcd\xefMaxMind.com" + bytes(40)]
)
def test_a_file_that_is_not_an_mmdb_is_a_config_error(data: bytes) -> None:
    with pytest.raises(ConfigError, match=r"^/srv/x\.mmdb: not a MaxMind DB file"):
        GeoIPDatabase.from_mmdb(data, name="/srv/x.mmdb")


def test_relay_country_uses_the_mmdb_too(mmdb: bytes) -> None:
    db = GeoIPDatabase.from_mmdb(mmdb)
    assert relay_country("8.8.8.8", "DE", db) == ("US", True)
    assert relay_country("127.0.0.5", "NL", db) == ("NL", False)
