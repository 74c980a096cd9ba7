#!/usr/bin/env python3
"""New streams per second through a proxy, next to Tor in the same run.

For each target, ``--workers`` threads loop for ``--seconds``: open a new
connection to the proxy, ask for the origin (SOCKS5 CONNECT, HTTP CONNECT,
or an absolute-form HTTP GET), send ``GET /bytes/16``, read the whole answer,
close.  Every answer is checked (status 200 and 16 body bytes).  The rate is
completed requests per second; latency is per request.

    bench/stream_rate.py                    # starts origin, hopchain demo, Tor
    bench/stream_rate.py --no-tor --runs 1  # hopchain only, quick

Targets measured (rotated order in each run):
  hopchain-socks   SOCKS5 CONNECT on the demo's SOCKS port (a warm circuit)
  hopchain-http    absolute-form GET on the demo's HTTP proxy port
  hopchain-connect HTTP CONNECT on the demo's HTTP proxy port
  tor-socks        Tor's SocksPort          (private network from shared/bench)
  tor-connect      Tor's HTTPTunnelPort (CONNECT only: Tor has no GET proxy)

Loopback only; every loop is bounded by time and every socket by a timeout.
"""

import argparse
import json
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED_BENCH = ROOT.parent / "shared" / "bench"
TIMEOUT = 20.0


def _request(origin: str) -> bytes:
    head = f"GET /bytes/16 HTTP/1.1\r\nHost: {origin}\r\nConnection: close\r\n\r\n"
    return head.encode()


def _read_all(sock: socket.socket) -> bytes:
    chunks = []
    while data := sock.recv(65536):
        chunks.append(data)
    return b"".join(chunks)


def _socks5_connect(sock: socket.socket, host: str, port: int) -> None:
    sock.sendall(b"\x05\x01\x00")
    if sock.recv(2) != b"\x05\x00":
        raise OSError("socks greeting refused")
    name = host.encode()
    sock.sendall(
        b"\x05\x01\x00\x03" + bytes([len(name)]) + name + port.to_bytes(2, "big")
    )
    reply = b""
    while len(reply) < 10:
        data = sock.recv(10 - len(reply))
        if not data:
            raise OSError("socks closed")
        reply += data
    if reply[1] != 0:
        raise OSError(f"socks reply {reply[1]}")


def _http_connect(sock: socket.socket, host: str, port: int) -> None:
    sock.sendall(
        f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        data = sock.recv(1)
        if not data:
            raise OSError("proxy closed")
        head += data
    if b" 200" not in head.split(b"\r\n", 1)[0]:
        raise OSError(f"CONNECT refused: {head[:40]!r}")


def one_request(kind: str, proxy: tuple[str, int], origin: tuple[str, int]) -> None:
    host, port = origin
    with socket.create_connection(proxy, timeout=TIMEOUT) as sock:
        if kind == "socks":
            _socks5_connect(sock, host, port)
            sock.sendall(_request(f"{host}:{port}"))
        elif kind == "connect":
            _http_connect(sock, host, port)
            sock.sendall(_request(f"{host}:{port}"))
        else:
            sock.sendall(
                f"GET http://{host}:{port}/bytes/16 HTTP/1.1\r\nHost: {host}:{port}\r\n"
                "Connection: close\r\n\r\n".encode()
            )
        answer = _read_all(sock)
    head, _, body = answer.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200") or len(body) != 16:
        raise OSError(f"bad answer: {answer[:60]!r}")


def measure(
    kind: str,
    proxy: tuple[str, int],
    origin: tuple[str, int],
    seconds: float,
    workers: int,
) -> dict[str, object]:
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def work() -> None:
        while time.monotonic() < deadline:
            start = time.monotonic()
            try:
                one_request(kind, proxy, origin)
            except OSError as exc:
                with lock:
                    errors.append(str(exc))
                continue
            with lock:
                latencies.append(time.monotonic() - start)

    started = time.monotonic()
    threads = [threading.Thread(target=work) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 2 * TIMEOUT)
    elapsed = time.monotonic() - started
    ordered = sorted(latencies)
    return {
        "requests": len(latencies),
        "per_second": round(len(latencies) / elapsed, 1),
        "latency_median_ms": round(statistics.median(ordered) * 1000, 2)
        if ordered
        else None,
        "latency_p90_ms": round(ordered[int(0.9 * (len(ordered) - 1))] * 1000, 2)
        if ordered
        else None,
        "errors": len(errors),
        "error_samples": errors[:3],
    }


def _wait_line(process: subprocess.Popen[str], prefix: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith(prefix):
            return line
        if time.monotonic() > deadline:
            break
    raise SystemExit(f"no {prefix!r} line within {timeout} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-tor", action="store_true")
    parser.add_argument("--origin-port", type=int, default=18090)
    parser.add_argument("--socks-port", type=int, default=19060)
    parser.add_argument("--http-port", type=int, default=19061)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    origin = ("127.0.0.1", args.origin_port)
    started: list[subprocess.Popen[str]] = []
    tor_started = False
    data_dir = tempfile.mkdtemp(prefix="hopchain-rate-")
    try:
        started.append(
            subprocess.Popen(
                [
                    sys.executable,
                    str(SHARED_BENCH / "origin.py"),
                    "--listen",
                    f"127.0.0.1:{args.origin_port}",
                    "--lifetime",
                    "3600",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                text=True,
            )
        )
        demo = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "hopchain",
                "demo",
                "--socks-port",
                str(args.socks_port),
                "--http-port",
                str(args.http_port),
                "--data-dir",
                data_dir,
                "--log-level",
                "warning",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        started.append(demo)
        _wait_line(demo, "SOCKS5 proxy:", 120)
        targets = {
            "hopchain-socks": ("socks", ("127.0.0.1", args.socks_port)),
            "hopchain-http": ("get", ("127.0.0.1", args.http_port)),
            "hopchain-connect": ("connect", ("127.0.0.1", args.http_port)),
        }
        if not args.no_tor:
            subprocess.run(
                [str(SHARED_BENCH / "tor-net"), "up"],
                check=True,
                timeout=400,
                env={
                    "HOPCHAIN_BENCH_ORIGIN": f"127.0.0.1:{args.origin_port}",
                    "PATH": "/usr/bin:/bin:/usr/sbin:/sbin",
                },
            )
            tor_started = True
            targets["tor-socks"] = ("socks", ("127.0.0.1", 17050))
            targets["tor-connect"] = ("connect", ("127.0.0.1", 17051))
        results: dict[str, list[dict[str, object]]] = {name: [] for name in targets}
        names = list(targets)
        for run in range(args.runs):
            order = names[run % len(names) :] + names[: run % len(names)]
            for name in order:
                kind, proxy = targets[name]
                result = measure(kind, proxy, origin, args.seconds, args.workers)
                results[name].append(result)
                print(f"run {run + 1}: {name}: {result}", file=sys.stderr, flush=True)
    finally:
        if tor_started:
            subprocess.run(
                [str(SHARED_BENCH / "tor-net"), "down"], check=False, timeout=120
            )
        for process in reversed(started):
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
    summary = {
        name: {
            "per_second_median": statistics.median(r["per_second"] for r in runs),  # type: ignore[misc]
            "latency_median_ms": statistics.median(
                r["latency_median_ms"]
                for r in runs
                if r["latency_median_ms"] is not None  # type: ignore[misc]
            ),
            "errors": sum(r["errors"] for r in runs),  # type: ignore[misc]
            "runs": runs,
        }
        for name, runs in results.items()
    }
    text = json.dumps(
        {"workers": args.workers, "seconds": args.seconds, "results": summary}, indent=2
    )
    if args.out:
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
