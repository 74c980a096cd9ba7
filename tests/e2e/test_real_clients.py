"""Real SOCKS clients through a whole network: curl, httpx, proxychains4, Chromium.

Each fetches a page from a local HTTP origin that answers with the peer
address it saw; the page must arrive and the peer must be an exit relay.
A test whose tool is not installed is skipped with the reason (``.ci/run``
installs them, so CI runs them all).
"""

import functools
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest
import trio

from .conftest import LoopbackNet

pytestmark = pytest.mark.trio


async def _http_origin(stream: trio.SocketStream) -> None:
    """A tiny HTTP/1.1 origin: any request gets a page naming the peer."""
    async with stream:
        head = b""
        with trio.move_on_after(10):
            while b"\r\n\r\n" not in head and len(head) < 65536:
                data = await stream.receive_some(65536)
                if not data:
                    return
                head += data
        peer = stream.socket.getpeername()[0]
        body = f"<html><body><p id=peer>peer={peer}</p></body></html>".encode()
        await stream.send_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nConnection: close\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )


@pytest.fixture
async def http_origin(nursery: trio.Nursery) -> int:
    listeners = await nursery.start(
        functools.partial(trio.serve_tcp, _http_origin, 0, host="127.0.0.1")
    )
    port: int = listeners[0].socket.getsockname()[1]
    return port


def _peer(page: str) -> str:
    return page.split("peer=", 1)[1].split("<", 1)[0]


async def _run(argv: list[str], timeout: float = 60) -> str:
    completed = await trio.to_thread.run_sync(
        functools.partial(
            subprocess.run, argv, capture_output=True, text=True, timeout=timeout
        )
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    return completed.stdout


def _needs(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} is not installed (apt-get install {tool})")
    return path


@pytest.mark.parametrize(
    ("flag", "host"),
    [("--socks5", "127.0.0.1"), ("--socks5-hostname", "localhost")],
)
async def test_curl(
    testnet: LoopbackNet, http_origin: int, flag: str, host: str
) -> None:
    curl = _needs("curl")
    with trio.fail_after(60):
        page = await _run(
            [
                curl,
                "-sS",
                "--max-time",
                "30",
                flag,
                f"127.0.0.1:{testnet.socks_port}",
                f"http://{host}:{http_origin}/",
            ]
        )
    assert _peer(page) in testnet.exit_addresses


async def test_httpx_socks_client(testnet: LoopbackNet, http_origin: int) -> None:
    def fetch() -> str:
        proxy = f"socks5://127.0.0.1:{testnet.socks_port}"
        with httpx.Client(proxy=proxy, timeout=30) as client:
            response = client.get(f"http://127.0.0.1:{http_origin}/")
            response.raise_for_status()
            return response.text

    with trio.fail_after(60):
        page = await trio.to_thread.run_sync(fetch)
    assert _peer(page) in testnet.exit_addresses


async def test_proxychains4_wrapping_curl(
    testnet: LoopbackNet, http_origin: int, tmp_path: Path
) -> None:
    proxychains = _needs("proxychains4")
    curl = _needs("curl")
    config = tmp_path / "proxychains.conf"
    config.write_text(
        "strict_chain\nproxy_dns\nquiet_mode\ntcp_read_time_out 15000\n"
        "tcp_connect_time_out 8000\n[ProxyList]\n"
        f"socks5 127.0.0.1 {testnet.socks_port}\n"
    )
    with trio.fail_after(60):
        page = await _run(
            [
                proxychains,
                "-q",
                "-f",
                str(config),
                curl,
                "-sS",
                "--max-time",
                "30",
                f"http://127.0.0.1:{http_origin}/",
            ]
        )
    assert _peer(page) in testnet.exit_addresses


async def test_headless_chromium(
    testnet: LoopbackNet, http_origin: int, tmp_path: Path
) -> None:
    chromium = shutil.which("chromium") or _needs("chromium-browser")
    argv = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-default-apps",
        "--disable-extensions",
        "--disable-client-side-phishing-detection",
        "--disable-domain-reliability",
        "--disable-breakpad",
        "--no-pings",
        "--no-default-browser-check",
        "--metrics-recording-only",
        "--safebrowsing-disable-auto-update",
        "--disable-features=OptimizationHints,MediaRouter,Translate,"
        "OptimizationGuideModelDownloading,AutofillServerCommunication,"
        "CertificateTransparencyComponentUpdater",
        f"--user-data-dir={tmp_path / 'profile'}",
        f"--proxy-server=socks5://127.0.0.1:{testnet.socks_port}",
        "--proxy-bypass-list=<-loopback>",  # loopback goes through the proxy too
        "--dump-dom",
        f"http://127.0.0.1:{http_origin}/",
    ]
    with trio.fail_after(90):
        page = await _run(argv, timeout=80)
    assert _peer(page) in testnet.exit_addresses
    # Chromium's own background requests that still came through the proxy
    # were refused by the test network's resolver: no DNS query and no
    # packet left the machine. Anything else would fail the fixture.
    noise = [v for v in testnet.network.violations if v.startswith("resolve ")]
    print("refused chromium background requests:", noise)
    testnet.network.violations[:] = [
        v for v in testnet.network.violations if not v.startswith("resolve ")
    ]
