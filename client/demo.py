"""``hopchain demo``: a whole hopchain network on loopback, one process per node.

The ``authorities`` directory authorities listen on 127.0.0.1 and vote
every ``voting.TEST_NETWORK_INTERVAL`` seconds; relay i listens on
127.0.0.(2+i), so an origin server can tell which exit connected to it; the
last ``exits`` relays are exits.  Relays publish to every authority and the
client pins them all.  Every node is a ``python -m hopchain`` child process,
so the network uses both cores and every CLI path is exercised.  Each child
prints a ``ready`` line on stdout; its log goes to ``<data-dir>/<name>.log``.
When the demo is cancelled (Ctrl-C, SIGTERM) trio terminates every child,
and a temporary data directory is removed.

Each authority must know its peers' addresses and keys when it starts, so
the demo creates the authorities' keys itself and picks their ports by
binding port 0 and releasing it (with one authority it just uses port 0).
"""

import logging
import shutil
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Final

import trio
from hopchain.relay.dirclient import AuthorityAddress
from hopchain.relay.keystore import load_authority_identity

from hopchain.errors import ConfigError

logger = logging.getLogger(__name__)

READY_TIMEOUT: Final = 120.0


@dataclass(frozen=True, slots=True)
class DemoOptions:
    """What ``hopchain demo`` was asked for."""

    authorities: int
    relays: int
    exits: int
    socks_port: int
    hops: int
    data_dir: Path | None
    log_level: str
    client_argv: list[str]
    unsafe_logging: bool = False


EXIT_COUNTRIES: Final = ("DE", "NL", "SE", "CH", "FR", "IS")
MIDDLE_COUNTRIES: Final = ("FR", "SE", "US", "CA", "GB", "JP")


def _country(index: int, first_exit: int) -> str:
    """The country relay ``index`` declares: exits alternate DE, NL, ...

    Declared, not looked up: every demo relay is on 127.0.0.0/8.
    """
    if index >= first_exit:
        return EXIT_COUNTRIES[(index - first_exit) % len(EXIT_COUNTRIES)]
    return MIDDLE_COUNTRIES[index % len(MIDDLE_COUNTRIES)]


AUTHORITY_HOST: Final = "127.0.0.1"


def _released_port(host: str) -> int:
    """A port the kernel just handed out for ``host`` and that is free again."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
    return port


def _authority_addresses(root: Path, count: int) -> list[AuthorityAddress]:
    """Create each authority's key in its data directory; choose its port."""
    addresses = []
    for i in range(count):
        key = load_authority_identity(root / f"authority{i + 1}")
        port = 0 if count == 1 else _released_port(AUTHORITY_HOST)
        addresses.append(AuthorityAddress(AUTHORITY_HOST, port, key.public))
    return addresses


class _Child:
    """One node process: its name, log file, and the ready line it printed."""

    def __init__(self, name: str, log: Path) -> None:
        self.name = name
        self.log = log
        self.ready_line = ""


async def _run_child(
    child: _Child,
    argv: list[str],
    stopping: trio.Event,
    *,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run a node until cancelled; report its ready line via task_status."""
    command = [sys.executable, "-m", "hopchain", *argv]
    with child.log.open("ab") as log:
        async with trio.open_nursery() as nursery:
            process = await nursery.start(
                partial(
                    trio.run_process,
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=log,
                    check=False,
                )
            )
            assert process.stdout is not None
            buffer = b""
            with trio.move_on_after(READY_TIMEOUT):
                while b"\n" not in buffer:
                    chunk = await process.stdout.receive_some(4096)
                    if not chunk:
                        break
                    buffer += chunk
            line = buffer.split(b"\n", 1)[0].decode(errors="replace").strip()
            if not line.startswith("ready"):
                raise ConfigError(
                    f"{child.name} did not start (exit code {process.returncode}); "
                    f"see {child.log}"
                )
            child.ready_line = line
            task_status.started(line)
            code = await process.wait()
            if not stopping.is_set():
                raise ConfigError(
                    f"{child.name} exited with code {code}; see {child.log}"
                )


async def run_demo(options: DemoOptions) -> None:
    """Start the network, print where to connect, and run until cancelled."""
    temporary = options.data_dir is None
    root = (
        Path(tempfile.mkdtemp(prefix="hopchain-demo-"))
        if temporary
        else options.data_dir
    )
    assert root is not None
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    stopping = trio.Event()
    common = ["--log-level", options.log_level]
    if options.unsafe_logging:
        common.append("--unsafe-logging")
    clean = False
    try:
        async with trio.open_nursery() as nursery:
            planned = _authority_addresses(root, options.authorities)
            print(
                f"starting {options.authorities} directory authorities on "
                f"{AUTHORITY_HOST} (data in {root})",
                flush=True,
            )
            authorities = [""] * len(planned)  # from the ready lines, in order
            async with trio.open_nursery() as starting:
                for i, address in enumerate(planned):
                    name = f"authority{i + 1}"
                    peers = [f"--peer={peer}" for peer in planned if peer != address]
                    argv = [
                        "authority",
                        "--data-dir",
                        str(root / name),
                        "--address",
                        AUTHORITY_HOST,
                        "--port",
                        str(address.port),
                        "--test-network",
                        *peers,
                        *common,
                    ]

                    async def start(index: int, name: str, argv: list[str]) -> None:
                        line = await nursery.start(
                            _run_child,
                            _Child(name, root / f"{name}.log"),
                            argv,
                            stopping,
                        )
                        authorities[index] = line.split()[1]

                    starting.start_soon(start, i, name, argv)
            authority_args = [f"--authority={a}" for a in authorities]
            print(
                f"starting {options.relays} relays ({options.exits} exits)", flush=True
            )
            async with trio.open_nursery() as starting:
                for i in range(options.relays):
                    is_exit = i >= options.relays - options.exits
                    name = f"{'exit' if is_exit else 'relay'}{i + 1}"
                    argv = [
                        "relay",
                        "--data-dir",
                        str(root / name),
                        "--nickname",
                        name,
                        "--address",
                        f"127.0.0.{2 + i}",
                        "--port",
                        "0",
                        *authority_args,
                        "--test-network",
                        "--country",
                        _country(i, options.relays - options.exits),
                        *common,
                    ]
                    if is_exit:
                        argv.append("--exit")
                    starting.start_soon(
                        partial(
                            nursery.start,
                            _run_child,
                            _Child(name, root / f"{name}.log"),
                            argv,
                            stopping,
                        )
                    )
            print("starting the client", flush=True)
            client = _Child("client", root / "client.log")
            line = await nursery.start(
                _run_child,
                client,
                [
                    "client",
                    *authority_args,
                    "--socks-port",
                    str(options.socks_port),
                    "--data-dir",
                    str(root / "client"),
                    "--test-network",
                    *options.client_argv,
                    *common,
                ],
                stopping,
            )
            # "ready socks5 HOST:PORT [http HOST:PORT]"
            words = line.split()
            socks = words[2]
            http = (
                f"HTTP proxy: {words[4]}\n"
                f"  try: curl --proxy http://{words[4]} http://127.0.0.1:8000/\n"
                if words[3:4] == ["http"]
                else ""
            )
            authority_lines = "".join(f"  {a}\n" for a in authorities)
            print(
                f"\nhopchain demo is up: {options.authorities} "
                f"{'authority' if options.authorities == 1 else 'authorities'}, "
                f"{options.relays} relays ({options.exits} exits), "
                f"{options.hops}-hop circuits.\n"
                f"SOCKS5 proxy: {socks}\n"
                f"  try: curl --socks5-hostname {socks} http://127.0.0.1:8000/\n"
                f"{http}"
                f"authorities:\n{authority_lines}"
                f"  (another client: hopchain client --test-network "
                f"{' '.join(authority_args)} --socks-port 9150 --http-port 8119)\n"
                f"status: hopchain doctor --data-dir {root / 'client'}\n"
                f"logs: {root}/*.log\n"
                "Press Ctrl-C to stop.",
                flush=True,
            )
            try:
                await trio.sleep_forever()
            finally:
                stopping.set()
                clean = True
    finally:
        stopping.set()
        if temporary and clean:
            shutil.rmtree(root, ignore_errors=True)
        print("hopchain demo stopped", flush=True)
