"""The egress check end to end: exits report the address they connect from,
and the client compares it with the GeoIP data it was given.

On the loopback network the exits are relay3 (127.0.0.5, declared DE) and
relay4 (127.0.0.6, declared NL).  The tests give the client GeoIP files
(Tor's format, and a MaxMind .mmdb) that place relay3's egress elsewhere.
"""

import ipaddress
import logging
from pathlib import Path

import pytest
import socks
import trio

from hopchain.geoip import GeoIPDatabase
from hopchain.path import CountryRules

from ..mmdb_files import write_mmdb
from .conftest import LoopbackNet, start_testnet

pytestmark = pytest.mark.trio

RELAY3, RELAY4 = "127.0.0.5", "127.0.0.6"


def _tor_geoip(ranges: dict[str, str]) -> str:
    """Tor's geoip format for single addresses, sorted."""
    rows = sorted((int(ipaddress.IPv4Address(a)), cc) for a, cc in ranges.items())
    return "".join(f"{n},{n},{cc}\n" for n, cc in rows)


def _peer_via(net: LoopbackNet, username: str) -> str:
    """The address the origin saw for an ECHO stream of this SOCKS user."""
    with socks.socksocket() as sock:
        sock.set_proxy(
            socks.SOCKS5,
            "127.0.0.1",
            net.socks_port,
            rdns=True,
            username=username,
            password="x",
        )
        sock.settimeout(20)
        sock.connect(("127.0.0.1", net.origin_port))
        sock.sendall(b"ECHO\n")
        line = sock.recv(100).decode()
    assert line.startswith("peer "), line
    return line.split()[1]


def _egress_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.getMessage().startswith("egress check failed")
    ]


async def test_strict_refuses_an_exit_whose_egress_lies_elsewhere_and_retries(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    """--exclude-country se --strict-countries, and GeoIP places relay3's
    egress in SE: relay3 (declared DE) is refused, every stream leaves
    through relay4, and the log says why."""
    geoip = GeoIPDatabase.from_tor_files(_tor_geoip({RELAY3: "SE", RELAY4: "NL"}), None)
    rules = CountryRules(exclude_exit=frozenset({"SE"}), strict=True)
    with caplog.at_level(logging.INFO), trio.fail_after(90):
        net = await start_testnet(nursery, countries=rules, geoip=geoip)
        peers = set()
        for n in range(20):  # each user a new circuit: relay3 half the time
            peers.add(await trio.to_thread.run_sync(_peer_via, net, f"user{n}"))
            if _egress_warnings(caplog):
                break
        # A few more after the refusal: relay3 is never used again.
        for n in range(20, 24):
            peers.add(await trio.to_thread.run_sync(_peer_via, net, f"user{n}"))
    assert peers == {RELAY4}
    (warning,) = set(_egress_warnings(caplog))
    assert warning == (
        f"egress check failed: exit relay3 connects from {RELAY3}, which is in "
        "SE by GeoIP; wanted not SE; exit refused for these country rules "
        "(--strict-countries)"
    )
    assert any(
        "retrying the stream on another exit" in r.getMessage() for r in caplog.records
    )
    assert net.network.violations == []


async def test_strict_with_no_other_exit_gives_a_socks_error(
    nursery: trio.Nursery, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """--exit-country de --strict-countries with a .mmdb that places the only
    DE exit's egress in NL: the SOCKS request fails (0x02, refused by the
    rules) and the log says exactly why."""
    mmdb = write_mmdb(
        tmp_path / "countries.mmdb",
        {f"{RELAY3}/32": {"country": {"iso_code": "NL"}}},
    )
    geoip = GeoIPDatabase.from_mmdb(mmdb.read_bytes(), name=str(mmdb))
    rules = CountryRules(exit_countries=frozenset({"DE"}), strict=True)
    with caplog.at_level(logging.INFO), trio.fail_after(90):
        net = await start_testnet(nursery, countries=rules, geoip=geoip)
        with pytest.raises(socks.GeneralProxyError, match="0x02"):
            await trio.to_thread.run_sync(_peer_via, net, "alice")
        with pytest.raises(socks.GeneralProxyError):  # no DE exit is left
            await trio.to_thread.run_sync(_peer_via, net, "bob")
    assert (
        f"egress check failed: exit relay3 connects from {RELAY3}, which is in NL "
        "by GeoIP; wanted DE; exit refused for these country rules "
        "(--strict-countries)"
    ) in _egress_warnings(caplog)
    assert any(
        "no running exit in DE accepts port" in r.getMessage() for r in caplog.records
    )
    assert net.network.violations == []


async def test_without_strict_a_mismatch_is_a_warning(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    geoip = GeoIPDatabase.from_tor_files(_tor_geoip({RELAY3: "NL"}), None)
    rules = CountryRules(exit_countries=frozenset({"DE"}))
    with caplog.at_level(logging.INFO), trio.fail_after(90):
        net = await start_testnet(nursery, countries=rules, geoip=geoip)
        assert await trio.to_thread.run_sync(_peer_via, net, "alice") == RELAY3
        assert await trio.to_thread.run_sync(_peer_via, net, "bob") == RELAY3
    (warning,) = set(_egress_warnings(caplog))
    assert warning.endswith(
        "wanted DE; using it anyway (--strict-countries refuses such exits)"
    )
    assert len(_egress_warnings(caplog)) == 1  # once per exit and rules


async def test_matching_egress_passes_by_the_declared_country(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    """No GeoIP data: a loopback egress is judged by the country the
    consensus lists (declared on a test network), which matches."""
    rules = CountryRules(exit_countries=frozenset({"NL"}), strict=True)
    with caplog.at_level(logging.INFO), trio.fail_after(90):
        net = await start_testnet(nursery, countries=rules)
        for name in ("alice", "bob"):
            assert await trio.to_thread.run_sync(_peer_via, net, name) == RELAY4
    assert _egress_warnings(caplog) == []
