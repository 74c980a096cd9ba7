#!/usr/bin/env python3
"""Measure a relay's resource limits: rate-limit accuracy and memory under
clients that stop reading.

Starts, as child processes (``python -m hopchain ...``), an authority on
127.0.0.1 and three relays on 127.0.0.2-4 (the last one an exit), all with
``--test-network`` and the limit options of the scenario, plus an origin
server in this process that sends bytes for as long as it is read.  Three
scenarios, each on a fresh network:

rate       relays at ``--rate`` bytes/s (burst = rate); one 3-hop download
           through the Python API for 2 + ``--seconds`` s; the throughput of
           the last ``--seconds`` (after the burst) against the rate.
stall      one 3-hop download through the Python API whose reader stops
           after 1 MiB; the relays' RSS while it stalls (flow control).
flood      raw 1-hop circuits to the exit (``--circuits`` circuits with two
           downloads each) over a link whose reader stops at once, with a
           4 KiB receive buffer: what only the queue cap bounds.  Run with
           ``--cap`` and again with no cap (``--max-queued-bytes 0``).

RSS is VmRSS from /proc of each relay process, sampled every 0.25 s.
Everything stays on 127.0.0.0/8.  Prints a Markdown summary (and JSON with
``--json``).

    .venv/bin/python bench/limits.py --rate 1M --cap 8M --seconds 10
"""

import argparse
import json
import secrets
import socket
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import trio
from hopchain.client.api import connect
from hopchain.relay.link import initiate

from hopchain.circuit import ClientCircuit, HopSpec
from hopchain.crypto.keys import IdentityKey, OnionKey
from hopchain.relaylimits import parse_size
from hopchain.wire import CellCommand

MIB = 1024 * 1024
SAMPLE = 0.25


@dataclass
class Network:
    authority: str
    relays: list[trio.Process]
    exit_port: int
    exit_keys: Path


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def start_child(argv: list[str], log: Path) -> tuple[trio.Process, str]:
    """Start ``hopchain ARGV``; its ``ready`` line's value once it is ready."""
    with log.open("wb") as err:
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-m", "hopchain", *argv],
            stdout=subprocess.PIPE,
            stderr=err,
        )
    assert proc.stdout is not None
    line = b""
    with trio.fail_after(120):
        while not line.endswith(b"\n"):
            chunk = await proc.stdout.receive_some(1)
            if not chunk:
                break
            line += chunk
    if not line.startswith(b"ready "):
        proc.kill()
        raise RuntimeError(f"{argv[0]} did not start; see {log}")
    return proc, line.decode().split()[1]


@asynccontextmanager
async def network(base: Path, relay_args: list[str]) -> AsyncIterator[Network]:
    procs: list[trio.Process] = []
    await trio.Path(base).mkdir()
    try:
        auth, authority = await start_child(
            [
                "authority",
                "--data-dir",
                str(base / "auth"),
                "--address",
                "127.0.0.1",
                "--port",
                "0",
                "--test-network",
            ],
            base / "auth.log",
        )
        procs.append(auth)
        relays = []
        exit_port = 0
        for i in range(3):
            argv = [
                "relay",
                "--data-dir",
                str(base / f"relay{i}"),
                "--nickname",
                f"bench{i}",
                "--address",
                f"127.0.0.{2 + i}",
                "--port",
                "0",
                "--authority",
                authority,
                "--test-network",
                "--publish-interval",
                "5",
                *relay_args,
            ]
            if i == 2:
                argv.append("--exit")
            proc, address = await start_child(argv, base / f"relay{i}.log")
            procs.append(proc)
            relays.append(proc)
            exit_port = int(address.rsplit(":", 1)[1])
        yield Network(authority, relays, exit_port, base / "relay2")
    finally:
        for proc in procs:
            proc.terminate()
        with trio.move_on_after(10):
            for proc in procs:
                await proc.wait()


class Origin:
    """Sends 64 KiB chunks to every connection until it is closed."""

    def __init__(self) -> None:
        self.port = 0

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, stream: trio.SocketStream) -> None:
        chunk = b"x" * 65536
        try:
            while True:
                await stream.send_all(chunk)
        except trio.BrokenResourceError:
            pass
        finally:
            await stream.aclose()


async def sample_rss(relays: list[trio.Process], seconds: float) -> list[list[int]]:
    """RSS of each relay, every SAMPLE seconds, for ``seconds``."""
    samples: list[list[int]] = [[] for _ in relays]
    for _ in range(int(seconds / SAMPLE)):
        for i, proc in enumerate(relays):
            samples[i].append(rss_kib(proc.pid))
        await trio.sleep(SAMPLE)
    return samples


async def rate_scenario(
    base: Path, origin: Origin, rate: int, seconds: float
) -> dict[str, Any]:
    args = ["--bandwidth-rate", str(rate), "--bandwidth-burst", str(rate)]
    async with (
        network(base / "rate", args) as net,
        connect([net.authority], test_network=True) as client,
    ):
        stream = await client.open_stream("127.0.0.1", origin.port)
        got = 0
        start = trio.current_time()
        marks: list[tuple[float, int]] = []
        with trio.move_on_after(2 + seconds):
            while data := await stream.receive_some(1 << 20):
                got += len(data)
                marks.append((trio.current_time() - start, got))
        await stream.aclose()
    warm = next(n for t, n in marks if t >= 2.0)
    t0 = next(t for t, n in marks if t >= 2.0)
    t1, end = marks[-1]
    measured = (end - warm) / (t1 - t0)
    return {
        "rate": rate,
        "seconds": round(t1 - t0, 2),
        "bytes": end - warm,
        "throughput": round(measured),
        "ratio": round(measured / rate, 3),
    }


async def stall_scenario(base: Path, origin: Origin, seconds: float) -> dict[str, Any]:
    async with (
        network(base / "stall", []) as net,
        connect([net.authority], test_network=True) as client,
    ):
        before = [rss_kib(p.pid) for p in net.relays]
        stream = await client.open_stream("127.0.0.1", origin.port)
        got = 0
        while got < MIB:
            got += len(await stream.receive_some(65536))
        samples = await sample_rss(net.relays, seconds)  # not reading meanwhile
        await stream.aclose()
    return {
        "rss_before_kib": before,
        "rss_max_kib": [max(s) for s in samples],
        "rss_last_kib": [s[-1] for s in samples],
    }


async def flood(
    exit_port: int, keys: Path, origin_port: int, circuits: int
) -> trio.SocketStream:
    """Open the stalled 1-hop downloads; return the (never read) socket."""
    identity = IdentityKey((keys / "identity.key").read_bytes())
    onion = OnionKey((keys / "onion.key").read_bytes())
    spec = HopSpec(identity.public, onion.public, "127.0.0.4", exit_port)
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    await sock.bind(("127.0.0.1", 0))
    await sock.connect(("127.0.0.4", exit_port))
    stream = trio.SocketStream(sock)
    link = await initiate(stream, spec.identity, spec.onion_key)
    cores = {}
    for circ_id in range(1, circuits + 1):
        cores[circ_id] = ClientCircuit()
        body = cores[circ_id].create(spec, secrets.token_bytes(32))
        link.send(circ_id, CellCommand.CREATE, body)
    created = 0
    async with trio.open_nursery() as nursery:
        nursery.start_soon(link.run_writer)
        cells = link.receive_cells()
        async for batch in cells:
            for cell in batch:
                if cell.command is CellCommand.CREATED:
                    core = cores[cell.circ_id]
                    core.on_created(cell.body)
                    for _ in range(2):
                        _, begin = core.open_stream("127.0.0.1", origin_port)
                        link.send(cell.circ_id, CellCommand.RELAY, begin)
                    created += 1
            if created == circuits:
                break
        await trio.sleep(0.5)  # let the writer send the BEGINs
        nursery.cancel_scope.cancel()
        await cells.aclose()
    return stream


async def flood_scenario(
    base: Path, origin: Origin, cap: int, circuits: int, seconds: float
) -> dict[str, Any]:
    args = ["--max-queued-bytes", str(cap)]
    async with network(base / f"flood{cap}", args) as net:
        exit_proc = net.relays[2]
        before = rss_kib(exit_proc.pid)
        stream = await flood(net.exit_port, net.exit_keys, origin.port, circuits)
        samples = await sample_rss([exit_proc], seconds)
        await stream.aclose()
        await trio.sleep(1)
        after = rss_kib(exit_proc.pid)
    return {
        "cap": cap,
        "circuits": circuits,
        "exit_rss_before_kib": before,
        "exit_rss_max_kib": max(samples[0]),
        "exit_rss_after_close_kib": after,
    }


def markdown(results: dict[str, Any]) -> str:
    rate = results["rate"]
    lines = [
        "| scenario | figure |",
        "|---|---|",
        f"| rate limit {rate['rate']} B/s, {rate['seconds']} s after the burst | "
        f"{rate['throughput']} B/s payload ({rate['ratio']:.3f} of the rate) |",
    ]
    stall = results["stall"]
    lines.extend(
        f"| stalled reader, relay {i} RSS before / max / last (MiB) | "
        f"{stall['rss_before_kib'][i] / 1024:.1f} / "
        f"{stall['rss_max_kib'][i] / 1024:.1f} / "
        f"{stall['rss_last_kib'][i] / 1024:.1f} |"
        for i in range(3)
    )
    for run in results["flood"]:
        cap = f"{run['cap'] / MIB:g} MiB cap" if run["cap"] else "no cap"
        lines.append(
            f"| flood, {run['circuits']} circuits x 2 downloads, {cap}: exit RSS "
            f"before / max / after close (MiB) | "
            f"{run['exit_rss_before_kib'] / 1024:.1f} / "
            f"{run['exit_rss_max_kib'] / 1024:.1f} / "
            f"{run['exit_rss_after_close_kib'] / 1024:.1f} |"
        )
    return "\n".join(lines)


async def main_async(options: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="hopchain-limits-") as tmp:
        base = Path(tmp)
        origin = Origin()
        async with trio.open_nursery() as nursery:
            await nursery.start(origin.serve)
            step: Callable[..., Any]
            for name, step in (
                (
                    "rate",
                    partial(rate_scenario, base, origin, options.rate, options.seconds),
                ),
                ("stall", partial(stall_scenario, base, origin, options.seconds)),
            ):
                print(f"running {name} ...", file=sys.stderr)
                results[name] = await step()
            results["flood"] = []
            for cap in (options.cap, 0):
                print(f"running flood (cap {cap}) ...", file=sys.stderr)
                results["flood"].append(
                    await flood_scenario(
                        base, origin, cap, options.circuits, options.seconds
                    )
                )
            nursery.cancel_scope.cancel()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rate", type=parse_size, default=MIB, help="bytes/s (default 1M)"
    )
    parser.add_argument(
        "--cap", type=parse_size, default=8 * MIB, help="queue cap (default 8M)"
    )
    parser.add_argument(
        "--circuits", type=int, default=16, help="flood circuits (default 16)"
    )
    parser.add_argument(
        "--seconds", type=float, default=10.0, help="measuring time (default 10)"
    )
    parser.add_argument(
        "--json", action="store_true", help="also print the raw figures as JSON"
    )
    options = parser.parse_args()
    results = trio.run(main_async, options)
    print(markdown(results))
    if options.json:
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
