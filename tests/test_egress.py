"""The egress check (hopchain.egress) and path selection's avoid_exits."""

import dataclasses
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hopchain.directory import Consensus, Descriptor, RouterStatus
from hopchain.egress import check_egress, egress_country
from hopchain.errors import PathSelectionError
from hopchain.geoip import GeoIPDatabase
from hopchain.path import PathConstraints, select_path

EXIT = Descriptor(
    nickname="exit1",
    identity=bytes([1]) * 32,
    onion_key=bytes(32),
    address="8.8.8.8",
    or_port=9001,
    bandwidth=100,
    exit_ports=((1, 65535),),
    family=(),
    country="US",
    published=0.0,
    test_network=False,
)
TEST_EXIT = dataclasses.replace(EXIT, address="127.0.0.5", country="DE")
# 8.8.8.0/24 US, 193.0.14.0/24 NL, 127.0.0.7 SE
GEOIP = GeoIPDatabase.from_tor_files(
    "134744064,134744319,US\n2130706439,2130706439,SE\n3238006272,3238006527,NL\n",
    None,
)


@pytest.mark.parametrize(
    ("egress", "exit", "geoip", "expected"),
    [
        ("193.0.14.129", EXIT, GEOIP, ("NL", "GeoIP")),
        ("127.0.0.7", TEST_EXIT, GEOIP, ("SE", "GeoIP")),  # GeoIP first, even here
        ("127.0.0.5", TEST_EXIT, GEOIP, ("DE", "the consensus (test network)")),
        ("10.1.2.3", TEST_EXIT, None, ("DE", "the consensus (test network)")),
        ("8.8.8.8", EXIT, None, ("US", "the consensus")),  # the exit's own address
        ("::ffff:8.8.8.8", EXIT, None, ("US", "the consensus")),
        ("9.9.9.9", EXIT, None, (None, "no GeoIP data knows it")),
        ("9.9.9.9", EXIT, GEOIP, (None, "no GeoIP data knows it")),
        ("", EXIT, GEOIP, (None, "not reported")),
    ],
)
def test_egress_country(
    egress: str,
    exit: Descriptor,
    geoip: GeoIPDatabase | None,
    expected: tuple[str | None, str],
) -> None:
    assert egress_country(egress, exit, geoip) == expected


def test_a_mismatch_says_where_and_what_was_wanted() -> None:
    wanted = PathConstraints(exit_countries=frozenset({"DE", "CH"}))
    verdict = check_egress("193.0.14.129", EXIT, wanted, GEOIP)
    assert not verdict.ok
    assert verdict.reason == (
        "exit exit1 connects from 193.0.14.129, which is in NL by GeoIP; wanted CH,DE"
    )
    excluded = PathConstraints(
        exclude_exit_countries=frozenset({"NL"}),
        exclude_countries_anywhere=frozenset({"RU"}),
    )
    assert check_egress("193.0.14.129", EXIT, excluded, GEOIP).reason.endswith(
        "wanted not NL,RU"
    )
    unknown = check_egress("", EXIT, wanted, GEOIP)
    assert unknown.reason == (
        "exit exit1 connects from (none), which is unknown: not reported; wanted CH,DE"
    )


def test_a_match_passes() -> None:
    verdict = check_egress(
        "8.8.8.8", EXIT, PathConstraints(exit_countries=frozenset({"US"})), None
    )
    assert verdict.ok
    assert verdict.country == "US"
    assert verdict.reason == ""


countries = st.sampled_from(["DE", "NL", "US", "SE"])


@given(
    egress=st.sampled_from(
        ["193.0.14.9", "8.8.8.1", "127.0.0.7", "127.0.0.5", "9.9.9.9", "", "x"]
    ),
    wanted=st.frozensets(countries, max_size=2),
    excluded=st.frozensets(countries, max_size=2),
    with_geoip=st.booleans(),
)
def test_prop_ok_exactly_when_the_country_is_known_and_allowed(
    egress: str, wanted: frozenset[str], excluded: frozenset[str], with_geoip: bool
) -> None:
    geoip = GEOIP if with_geoip else None
    constraints = PathConstraints(
        exit_countries=wanted, exclude_exit_countries=excluded
    )
    verdict = check_egress(egress, TEST_EXIT, constraints, geoip)
    country, _ = egress_country(egress, TEST_EXIT, geoip)
    assert verdict.ok == (
        country is not None and constraints.allows_exit_country(country)
    )
    assert verdict.ok == (verdict.reason == "")


def _exit(n: int) -> RouterStatus:
    desc = dataclasses.replace(
        EXIT, identity=bytes([n]) * 32, nickname=f"e{n}", address=f"10.{n}.0.1"
    )
    return RouterStatus(desc, frozenset({"Running", "Exit", "Guard"}))


NETWORK = Consensus(0.0, 1.0, 2.0, tuple(_exit(n) for n in range(1, 7)), frozenset())


@given(
    avoid=st.frozensets(st.integers(1, 6)),
    seed=st.integers(0, 2**32),
    hops=st.integers(1, 3),
)
def test_prop_an_avoided_exit_is_never_chosen(
    avoid: frozenset[int], seed: int, hops: int
) -> None:
    constraints = PathConstraints(
        hops=hops, avoid_exits=frozenset(bytes([n]) * 32 for n in avoid)
    )
    try:
        path = select_path(NETWORK, constraints, random.Random(seed))
    except PathSelectionError:
        assert len(avoid) == 6  # the only way to fail: every exit avoided
        return
    assert path[-1].identity not in constraints.avoid_exits
