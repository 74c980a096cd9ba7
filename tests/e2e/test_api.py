"""The Python API, and its documented example run as a user would run it."""

import subprocess
import sys
from pathlib import Path

import pytest
import trio
from hopchain.client.api import HopchainClient, connect

from hopchain.errors import PathSelectionError

from .conftest import LoopbackNet

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
        async with connect([testnet.authority_address], test_network=True) as client:
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
        async with connect([testnet.authority_address], test_network=True) as client:
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
