"""The control socket's cookie, and ``hopchain circuits``."""

import json
import sys
from pathlib import Path

import pytest
import socks
import trio
from hopchain.client.control import COOKIE_FILE, request

from .conftest import start_testnet

pytestmark = pytest.mark.trio


async def _raw(path: Path, message: dict[str, object]) -> dict[str, object]:
    stream = await trio.open_unix_socket(str(path))
    async with stream:
        await stream.send_all(json.dumps(message).encode() + b"\n")
        buffer = b""
        while not buffer.endswith(b"\n"):
            data = await stream.receive_some(65536)
            if not data:
                break
            buffer += data
    reply = json.loads(buffer)
    assert isinstance(reply, dict)
    return reply


async def test_requests_need_the_cookie_and_circuits_lists_every_hop(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    data_dir = tmp_path / "client"
    with trio.fail_after(60):
        net = await start_testnet(nursery, data_dir=data_dir)
    socket_path = data_dir / "control.sock"
    cookie = (data_dir / COOKIE_FILE).read_bytes()
    assert len(cookie) == 32
    assert oct((data_dir / COOKIE_FILE).stat().st_mode & 0o777) == oct(0o600)
    with trio.fail_after(10):
        for message in (
            {"command": "status"},
            {"command": "status", "cookie": "00" * 32},
            {"command": "newnym", "cookie": cookie.hex()[:-2]},
            {"command": "status", "cookie": 5},
        ):
            reply = await _raw(socket_path, message)
            assert reply == {
                "ok": False,
                "error": f"missing or wrong cookie (see {COOKIE_FILE})",
            }
        assert (await _raw(socket_path, {"command": "status", "cookie": cookie.hex()}))[
            "ok"
        ]
        assert (await request(socket_path, "status"))["ok"] is True

    def session() -> None:
        with socks.socksocket() as sock:
            sock.set_proxy(socks.SOCKS5, "127.0.0.1", net.socks_port, rdns=True)
            sock.settimeout(20)
            sock.connect(("127.0.0.1", net.origin_port))
            sock.sendall(b"ECHO\n")
            assert sock.recv(100).startswith(b"peer ")
            trio.from_thread.run(circuits_now)

    listed: list[str] = []

    async def circuits_now() -> None:
        result = await trio.run_process(
            [sys.executable, "-m", "hopchain", "circuits", "--data-dir", str(data_dir)],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        listed.append(result.stdout.decode())

    with trio.fail_after(60):
        await trio.to_thread.run_sync(session)
    (text,) = listed
    manager = net.client.manager
    assert manager is not None
    used = next(h for h in manager.table if h.dirty_since is not None)
    assert f"circuit {used.circ_id:08x}: in use, 1 stream, " in text
    by_identity = {r.identity.public: r for r in net.relays}
    for position, descriptor in zip(
        ("guard", "middle", "exit"), used.path, strict=True
    ):
        relay = by_identity[descriptor.identity]
        line = next(x for x in text.splitlines() if descriptor.identity[:8].hex() in x)
        assert position in line
        assert relay.config.nickname in line
        assert relay.config.country in line
        assert "Running" in line
    assert "Exit" in line  # the last hop's flags
    assert "127.0.0" not in text  # no addresses, no destinations
