#!/usr/bin/env python3
"""Measure hopchain's demo next to direct, microsocks and a private Tor network.

Starts ``hopchain demo`` (one process per node), records the RSS of every
node, runs ``shared/bench/run-anchor.py`` with hopchain as one more target in
the same interleaved run as the baselines, records RSS again, and stops the
demo.  Results go to the run-anchor output directory, plus
``hopchain-memory.json`` and ``hopchain-memory.md`` there.

    bench/run.py                         # direct, microsocks, tor, hopchain; 3 runs
    bench/run.py --targets direct,microsocks --runs 1   # quick, no Tor

Needs Debian's tor and microsocks for those targets (see shared/bench/README.md).
Loopback only; every child is bounded by a timeout and stopped by its PID.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED_BENCH = ROOT.parent / "shared" / "bench"


def rss_of_nodes(demo_pid: int) -> dict[str, dict[str, int]]:
    """VmRSS and VmHWM (KiB) of the demo and every node process it started."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            status = (entry / "status").read_text()
        except OSError:
            continue
        ppid = int(status.split("PPid:", 1)[1].split()[0])
        if demo_pid not in (ppid, int(entry.name)):
            continue
        args = [a.decode(errors="replace") for a in argv if a]
        if "-m" not in args or "hopchain" not in args:
            continue
        role = args[args.index("hopchain") + 1]
        name = role
        if "--nickname" in args:
            name = args[args.index("--nickname") + 1]
        elif role == "authority" and "--data-dir" in args:  # one directory each
            name = Path(args[args.index("--data-dir") + 1]).name
        fields = dict(
            line.split(":", 1) for line in status.splitlines() if line.startswith("Vm")
        )
        found[name] = {
            "pid": int(entry.name),
            "rss_kib": int(fields["VmRSS"].split()[0]),
            "hwm_kib": int(fields["VmHWM"].split()[0]),
        }
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", default="direct,microsocks,tor")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--socks-port", type=int, default=19050)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    out = args.out or Path(
        f"/tmp/hopchain-bench/results/{time.strftime('%Y%m%d-%H%M%S')}"
    )
    out.mkdir(parents=True, exist_ok=True)
    data_dir = Path(tempfile.mkdtemp(prefix="hopchain-bench-"))
    demo = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hopchain",
            "demo",
            "--socks-port",
            str(args.socks_port),
            "--data-dir",
            str(data_dir),
            "--no-http",  # the anchor measures the SOCKS port only
            "--log-level",
            "warning",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        assert demo.stdout is not None
        authorities: list[str] = []
        for line in demo.stdout:
            print(f"demo: {line.rstrip()}", flush=True)
            if time.monotonic() > deadline:
                raise SystemExit("demo did not come up in 120 s")
            # "authorities:", then one indented HOST:PORT=KEY line each.
            words = line.split()
            if authorities and not (line.startswith("  ") and "=" in line):
                break
            if line.startswith("  ") and len(words) == 1 and "=" in words[0]:
                authorities.append(words[0])
        if not authorities:
            raise SystemExit("the demo printed no authority lines")
        before = rss_of_nodes(demo.pid)
        builds = subprocess.run(
            [
                sys.executable,
                str(ROOT / "bench" / "circuit_build.py"),
                *(f"--authority={a}" for a in authorities),
                "--n",
                "20",
            ],
            check=True,
            capture_output=True,
            text=True,
            timeout=600,
        )
        (out / "hopchain-circuit-build.json").write_text(builds.stdout)
        print("hopchain circuit build:", builds.stdout.strip(), flush=True)
        command = [
            sys.executable,
            str(SHARED_BENCH / "run-anchor.py"),
            "--targets",
            args.targets,
            "--target",
            f"hopchain=socks5://127.0.0.1:{args.socks_port}",
            "--runs",
            str(args.runs),
            "--out",
            str(out),
        ]
        print("running:", " ".join(command), flush=True)
        subprocess.run(command, check=True, timeout=3600)
        after = rss_of_nodes(demo.pid)
    finally:
        demo.send_signal(signal.SIGTERM)
        try:
            demo.wait(timeout=30)
        except subprocess.TimeoutExpired:
            demo.kill()
    memory = {"before": before, "after": after}
    (out / "hopchain-memory.json").write_text(json.dumps(memory, indent=2))
    lines = [
        "| node | RSS before (MiB) | RSS after (MiB) | peak (MiB) |",
        "|---|---|---|---|",
    ]
    for name in sorted(after):
        b = before.get(name, {}).get("rss_kib", 0) / 1024
        a = after[name]["rss_kib"] / 1024
        h = after[name]["hwm_kib"] / 1024
        lines.append(f"| {name} | {b:.1f} | {a:.1f} | {h:.1f} |")
    table = "\n".join(lines)
    (out / "hopchain-memory.md").write_text(table + "\n")
    print(table)
    print(f"results in {out}")
    os.sync()


if __name__ == "__main__":
    main()
