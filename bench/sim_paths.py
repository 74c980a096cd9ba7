#!/usr/bin/env python3
"""Time ``hopchain sim paths`` at the acceptance size.

    bench/sim_paths.py                       # 7,000 relays, 1,000 users, 30 days
    bench/sim_paths.py --users 200 --days 5  # quick

Runs the study as a child process (``python -m hopchain sim paths``, default
seeds and workers) and prints its wall time and the CPU time of the child
and its workers. CPU time is the figure to compare on a shared machine:
wall time is at least CPU time divided by the cores the run had.
``bench/path_select.py`` times ``select_path`` alone, on the first
consensus of the same synthetic network.
"""

import argparse
import resource
import subprocess
import sys
import tempfile
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--relays", type=int, default=7000)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--days", type=float, default=30.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as out:
        command = [
            sys.executable, "-m", "hopchain", "sim", "paths", "--no-plots",
            "--relays", str(args.relays), "--users", str(args.users),
            "--days", str(args.days), "--out", out, "--log-level", "warning",
        ]  # fmt: skip
        started = time.monotonic()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        wall = time.monotonic() - started
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = usage.ru_utime + usage.ru_stime
    print(
        f"sim paths: {args.relays} relays, {args.users} users, {args.days:g} days, "
        f"5 seeds: wall {wall:.0f} s, CPU {cpu:.0f} s"
    )


if __name__ == "__main__":
    main()
