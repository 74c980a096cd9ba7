"""``hopchain demo`` as a user runs it: child processes, stopped by a signal."""

import functools
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import socks
import trio

from .conftest import _origin_handler

pytestmark = pytest.mark.trio


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if text.encode() in cmdline:
            found.append(int(entry.name))
    return found


def _echo(socks_port: int, origin_port: int) -> str:
    with socks.socksocket() as sock:
        sock.set_proxy(socks.SOCKS5, "127.0.0.1", socks_port, rdns=True)
        sock.settimeout(20)
        sock.connect(("127.0.0.1", origin_port))
        sock.sendall(b"ECHO\n")
        sock.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
    return data.split(b"\n")[0].decode().split()[1]


def _echo_via_http_connect(http_port: int, origin_port: int) -> str:
    with socket.create_connection(("127.0.0.1", http_port), timeout=20) as sock:
        sock.sendall(
            f"CONNECT 127.0.0.1:{origin_port} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
        )
        reply = b""
        while b"\r\n\r\n" not in reply:
            chunk = sock.recv(4096)
            assert chunk, reply
            reply += chunk
        assert reply.startswith(b"HTTP/1.1 200 "), reply
        sock.sendall(b"ECHO\n")
        sock.shutdown(socket.SHUT_WR)
        data = reply.split(b"\r\n\r\n", 1)[1]
        while chunk := sock.recv(4096):
            data += chunk
    return data.split(b"\n")[0].decode().split()[1]


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
async def test_demo_serves_socks_and_stops_cleanly(
    tmp_path: Path, nursery: trio.Nursery, stop_signal: signal.Signals
) -> None:
    data_dir = tmp_path / "demo"
    socks_port = _free_port()
    http_port = _free_port()
    origin = await nursery.start(
        functools.partial(trio.serve_tcp, _origin_handler, 0, host="127.0.0.1")
    )
    origin_port = origin[0].socket.getsockname()[1]
    process = await trio.lowlevel.open_process(
        [
            sys.executable,
            "-m",
            "hopchain",
            "demo",
            "--socks-port",
            str(socks_port),
            "--http-port",
            str(http_port),
            "--data-dir",
            str(data_dir),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None
    output = b""
    try:
        with trio.fail_after(90):
            while b"Press Ctrl-C" not in output:
                chunk = await process.stdout.receive_some(4096)
                assert chunk, f"demo exited early: {output.decode()}"
                output += chunk
            peer = await trio.to_thread.run_sync(_echo, socks_port, origin_port)
            assert f"HTTP proxy: 127.0.0.1:{http_port}".encode() in output
            assert b"hopchain demo is up: 3 authorities" in output
            authority_lines = re.findall(
                rb"^  (127\.0\.0\.1:\d+=[0-9a-f]{64})$", output, re.MULTILINE
            )
            assert len(set(authority_lines)) == 3
            via_http = await trio.to_thread.run_sync(
                _echo_via_http_connect, http_port, origin_port
            )
        assert via_http.startswith("127.0.0.")
        assert via_http not in ("127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4")
        assert peer.startswith("127.0.0.")
        assert peer not in ("127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4")
        process.send_signal(stop_signal)
        with trio.fail_after(30):
            code = await process.wait()
        assert code == 0
        # Every child was waited for by the demo before it exited.
        assert _processes_mentioning(str(data_dir)) == []
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        for pipe in (process.stdout, process.stderr):
            if pipe is not None:
                await pipe.aclose()
    assert (data_dir / "client.log").exists()
    assert sorted(p.name for p in data_dir.glob("*.log")) == [
        "authority1.log",
        "authority2.log",
        "authority3.log",
        "client.log",
        "exit4.log",
        "exit5.log",
        "relay1.log",
        "relay2.log",
        "relay3.log",
    ]
    assert os.stat(data_dir / "exit4" / "identity.key").st_mode & 0o777 == 0o600
