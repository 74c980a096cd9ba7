"""Stream isolation, NEWNYM, required credentials, the control socket, limits."""

import subprocess
import sys
from pathlib import Path

import pytest
import socks
import trio
import trio.testing
from hopchain.client.control import request
from hopchain.client.doctor import report
from hopchain.client.socks import SocksOptions

from .conftest import LoopbackNet, start_testnet

pytestmark = pytest.mark.trio


def _circuit_of_session(
    net: LoopbackNet, username: str | None = None, password: str = "x"
) -> int:
    """Run one ECHO session; return the id of the circuit that carried it."""
    manager = net.client.manager
    assert manager is not None
    seen: list[int] = []
    with socks.socksocket() as sock:
        sock.set_proxy(
            socks.SOCKS5,
            "127.0.0.1",
            net.socks_port,
            rdns=True,
            username=username,
            password=password if username else None,
        )
        sock.settimeout(20)
        sock.connect(("127.0.0.1", net.origin_port))
        sock.sendall(b"ECHO\n")
        assert sock.recv(100).startswith(b"peer ")

        def circuits_with_streams() -> None:
            # This user's circuits carrying a stream (other sessions may run
            # at the same time, on their own circuits).
            name = None if username is None else username.encode()
            seen.extend(
                handle.circ_id
                for handle in manager.table
                if handle.streams
                and handle.isolation is not None
                and handle.isolation.username == name
            )

        trio.from_thread.run_sync(circuits_with_streams)
    (circuit,) = seen
    return circuit


async def test_different_usernames_never_share_a_circuit(testnet: LoopbackNet) -> None:
    with trio.fail_after(60):
        alice = await trio.to_thread.run_sync(_circuit_of_session, testnet, "alice")
        bob = await trio.to_thread.run_sync(_circuit_of_session, testnet, "bob")
        alice_again = await trio.to_thread.run_sync(
            _circuit_of_session, testnet, "alice"
        )
        anonymous = await trio.to_thread.run_sync(_circuit_of_session, testnet, None)
    assert alice != bob
    assert alice_again == alice
    assert anonymous not in (alice, bob)


async def test_concurrent_usernames_use_different_circuits(
    testnet: LoopbackNet,
) -> None:
    results: dict[str, int] = {}

    async def one(name: str) -> None:
        results[name] = await trio.to_thread.run_sync(
            _circuit_of_session, testnet, name
        )

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for name in ("carol", "dave"):
                nursery.start_soon(one, name)
    assert results["carol"] != results["dave"]


async def test_newnym_gives_new_streams_a_new_circuit(testnet: LoopbackNet) -> None:
    manager = testnet.client.manager
    assert manager is not None
    with trio.fail_after(60):
        before = await trio.to_thread.run_sync(_circuit_of_session, testnet)
        again = await trio.to_thread.run_sync(_circuit_of_session, testnet)
        manager.newnym()
        after = await trio.to_thread.run_sync(_circuit_of_session, testnet)
    assert again == before
    assert after != before


async def test_required_credentials_refuse_others(nursery: trio.Nursery) -> None:
    with trio.fail_after(60):
        net = await start_testnet(
            nursery, socks=SocksOptions(required_credentials=(b"user", b"secret"))
        )
    with trio.fail_after(60):
        await trio.to_thread.run_sync(_circuit_of_session, net, "user", "secret")
        with pytest.raises(socks.GeneralProxyError, match="authentication failed"):
            await trio.to_thread.run_sync(_circuit_of_session, net, "user", "wrong")
        with pytest.raises(socks.GeneralProxyError, match="methods were rejected"):
            await trio.to_thread.run_sync(_circuit_of_session, net, None)


async def test_doctor_reports_dns_leaks_and_exits(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    data_dir = tmp_path / "client"
    with trio.fail_after(60):
        net = await start_testnet(nursery, data_dir=data_dir)

    def by_name_then_by_ip() -> None:
        for host, rdns in (("localhost", True), ("127.0.0.1", False)):
            with socks.socksocket() as sock:
                sock.set_proxy(socks.SOCKS5, "127.0.0.1", net.socks_port, rdns=rdns)
                sock.settimeout(20)
                sock.connect((host, net.origin_port))
                sock.sendall(b"ECHO\n")
                assert sock.recv(100).startswith(b"peer ")

    with trio.fail_after(60):
        await trio.to_thread.run_sync(by_name_then_by_ip)
        reply = await request(data_dir / "control.sock", "status")
    assert reply["ok"] is True
    status = reply["status"]
    assert isinstance(status, dict)
    text = report(status)
    assert "1 request named the destination" in text
    assert "DNS LEAK: 1 request arrived as bare IP addresses (1 over socks5)" in text
    assert "socks5h://" in text
    exit_names = {r.config.nickname for r in net.relays if r.config.exit}
    assert any(name in text for name in exit_names)
    assert "127.0.0.1" not in text
    assert oct((data_dir / "control.sock").stat().st_mode & 0o777) == oct(0o600)
    with trio.fail_after(10):
        assert (await request(data_dir / "control.sock", "newnym"))["ok"] is True
        assert (await request(data_dir / "control.sock", "bogus"))["ok"] is False

    def cli(command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "hopchain", command, "--data-dir", str(data_dir)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    with trio.fail_after(60):
        doctor = await trio.to_thread.run_sync(cli, "doctor")
        newnym = await trio.to_thread.run_sync(cli, "newnym")
    assert doctor.returncode == 0, doctor.stderr
    assert "DNS LEAK" in doctor.stdout
    assert newnym.returncode == 0, newnym.stderr
    assert "new circuits" in newnym.stdout


async def test_pending_handshake_limit(nursery: trio.Nursery) -> None:
    with trio.fail_after(60):
        net = await start_testnet(nursery, socks=SocksOptions(max_pending=1))
        idle = await trio.open_tcp_stream("127.0.0.1", net.socks_port)
        await trio.testing.wait_all_tasks_blocked(cushion=0.05)
        refused = await trio.open_tcp_stream("127.0.0.1", net.socks_port)
        assert await refused.receive_some(10) == b""  # closed at once
        await refused.aclose()
        await idle.aclose()
        await trio.testing.wait_all_tasks_blocked(cushion=0.05)
        peer = await trio.to_thread.run_sync(_circuit_of_session, net)
    assert peer
    assert net.client.stats.limits_hit["socks pending connections"] == 1
