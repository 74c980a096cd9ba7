"""The Python API, and its documented example run as a user would run it."""

import random
import subprocess
import sys
from pathlib import Path

import pytest
import socks
import trio
from hopchain.client.api import HopchainClient, connect
from hopchain.client.node import ClientConfig, ClientNode

from hopchain.errors import PathSelectionError
from hopchain.path import CountryRules

from .conftest import LoopbackNet, echo_once

pytestmark = pytest.mark.trio

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "api_echo.py"


async def _echo(net: LoopbackNet, client: HopchainClient, isolation: str) -> str:
    stream = await client.open_stream("127.0.0.1", net.origin_port, isolation=isolation)
    async with stream:
        await stream.send_all(b"ECHO\nhello")
        await stream.send_eof()
        data = b""
        while chunk := await stream.receive_some():
            data += chunk
    peer, _, rest = data.partition(b"\n")
    assert rest == b"helloclosed\n"
    return peer.decode().split()[1]


async def test_api_streams_reach_the_origin_through_an_exit(
    testnet: LoopbackNet,
) -> None:
    with trio.fail_after(60):
        async with connect(
            [testnet.authority_address], test_network=True, network=testnet.network
        ) as client:
            peer = await _echo(testnet, client, "alice")
            assert peer in testnet.exit_addresses
            await _echo(testnet, client, "bob")
            circuits = client.status()["circuits"]
    assert isinstance(circuits, list)
    assert len({c["isolation_group"] for c in circuits}) >= 2


async def test_documented_example_runs(testnet: LoopbackNet) -> None:
    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                str(EXAMPLE),
                "--authority",
                str(testnet.authority_address),
                "--test-network",
                "127.0.0.1",
                str(testnet.origin_port),
                "ECHO",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    with trio.fail_after(90):
        result = await trio.to_thread.run_sync(run)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("peer 127.0.0.")
    assert "closed" in result.stdout


async def test_api_exit_country_constraints(testnet: LoopbackNet) -> None:
    by_country = {r.config.country: r.config.address for r in testnet.relays}
    with trio.fail_after(60):
        async with connect(
            [testnet.authority_address], test_network=True, network=testnet.network
        ) as client:
            for wanted, excluded, expected in (
                (["nl"], [], "NL"),
                ([], ["NL"], "DE"),
                (["DE", "NL"], ["NL"], "DE"),
            ):
                stream = await client.open_stream(
                    "127.0.0.1",
                    testnet.origin_port,
                    exit_countries=wanted,
                    exclude_exit_countries=excluded,
                )
                async with stream:
                    await stream.send_all(b"ECHO\n")
                    line = await stream.receive_some(100)
                assert line == f"peer {by_country[expected]}\n".encode()
            with pytest.raises(PathSelectionError, match="no running exit in JP"):
                await client.open_stream(
                    "127.0.0.1", testnet.origin_port, exit_countries=["JP"]
                )


async def _peer_via(net: LoopbackNet, **countries: object) -> str:
    """One ECHO through a fresh in-process client with these country rules."""
    async with trio.open_nursery() as nursery:
        client = ClientNode(
            ClientConfig(
                authorities=[net.authority_address],
                socks_port=0,
                test_network=True,
                countries=CountryRules(**countries),  # type: ignore[arg-type]
            ),
            net.network,
            random.Random(3),
        )
        port = await nursery.start(client.serve)

        def echo() -> str:
            with socks.socksocket() as sock:
                sock.set_proxy(socks.SOCKS5, "127.0.0.1", port, rdns=True)
                sock.settimeout(20)
                try:
                    sock.connect(("127.0.0.1", net.origin_port))
                except socks.GeneralProxyError as exc:
                    return f"refused: {exc}"
                sock.sendall(b"ECHO\n")
                return sock.recv(100).decode().split()[1]

        try:
            return await trio.to_thread.run_sync(echo)
        finally:
            nursery.cancel_scope.cancel()


async def test_client_country_rules_strict_and_fallback(
    testnet: LoopbackNet, caplog: pytest.LogCaptureFixture
) -> None:
    by_country = {r.config.country: r.config.address for r in testnet.relays}
    with trio.fail_after(90):
        assert (
            await _peer_via(testnet, exit_countries=frozenset({"NL"}))
            == (by_country["NL"])
        )
        assert (
            await _peer_via(testnet, exclude_exit=frozenset({"NL"}))
            == (by_country["DE"])
        )
        # No exit in JP: by default fall back to any exit, and say so ...
        assert await _peer_via(testnet, exit_countries=frozenset({"JP"})) in (
            testnet.exit_addresses
        )
        messages = [r.getMessage() for r in caplog.records]
        assert any("no running exit in JP" in m for m in messages)
        assert any("outside the chosen countries" in m for m in messages)
        # ... and refuse with --strict-countries.
        refused = await _peer_via(
            testnet, exit_countries=frozenset({"JP"}), strict=True
        )
        assert refused.startswith("refused")
        assert "0x01" in refused


async def test_exits_command_lists_the_choice(testnet: LoopbackNet) -> None:
    def run(*extra: str) -> str:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "hopchain",
                "exits",
                "--authority",
                str(testnet.authority_address),
                *extra,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    with trio.fail_after(90):
        everything = await trio.to_thread.run_sync(run)
        only_nl = await trio.to_thread.run_sync(run, "--exit-country", "nl")
    assert everything.startswith(
        "2 of 2 running exits match, 100% of weighted exit bandwidth"
    )
    assert only_nl.startswith(
        "1 of 2 running exits match, 50% of weighted exit bandwidth"
    )
    assert " NL " in only_nl
    assert " DE " not in only_nl
    assert "warning: so few exits" in only_nl


async def test_fallback_circuits_are_reused_not_rebuilt_per_stream(
    testnet: LoopbackNet,
) -> None:
    async with trio.open_nursery() as nursery:
        client = ClientNode(
            ClientConfig(
                authorities=[testnet.authority_address],
                socks_port=None,
                test_network=True,
                countries=CountryRules(exit_countries=frozenset({"JP"})),
                predicted_circuits=0,  # count only the builds streams cause
            ),
            testnet.network,
            random.Random(4),
        )
        with trio.fail_after(60):
            await nursery.start(client.serve)
            manager = client.manager
            assert manager is not None
            for _ in range(3):
                await echo_once(manager, testnet.origin_port)
        assert manager.built == 1  # the warm-up circuit served every stream
        nursery.cancel_scope.cancel()


async def test_bad_exits_are_never_used(testnet: LoopbackNet) -> None:
    by_country = {r.config.country: r for r in testnet.relays}
    testnet.authority.bad_exits = frozenset({by_country["DE"].identity.public})
    testnet.authority.listing_changed()  # the operator's change takes effect
    with trio.fail_after(60):
        async with connect(
            [testnet.authority_address], test_network=True, network=testnet.network
        ) as client:
            for n in range(8):  # a coin flip each without BadExit
                stream = await client.open_stream(
                    "127.0.0.1", testnet.origin_port, isolation=str(n)
                )
                async with stream:
                    await stream.send_all(b"ECHO\n")
                    line = await stream.receive_some(100)
                assert line == f"peer {by_country['NL'].config.address}\n".encode()
