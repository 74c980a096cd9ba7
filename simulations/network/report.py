"""Write a network simulation's results: CSV, JSON and PNG plots.

Files in the output directory:

* ``transfers.csv``: one row per download (client, model, size, start,
  end, time to first byte, total time, error);
* ``builds.csv``: one row per circuit build (client, when, seconds);
* ``relays.csv``: per relay its country, exit or not, advertised bandwidth
  and the bytes it sent;
* ``summary.json``: the parameters, the seed, the wall time, and for each
  distribution its count and percentiles, failures by kind and by minute;
* ``ttfb.png``, ``download_times.png``, ``build_times.png``,
  ``failures.png``, ``relay_load.png`` (matplotlib, the ``sim`` extra).
"""

import csv
import dataclasses
import json
import statistics
from collections import Counter
from pathlib import Path
from typing import Any, Final

from hopchain.simulations.network.params import SIZES, SimResult, Transfer

from hopchain.errors import ConfigError

__all__ = ["PERCENTILES", "summary", "write"]

PERCENTILES: Final = (10, 25, 50, 75, 90, 99)
_SIZE_LABELS: Final = {SIZES[0]: "50 KiB", SIZES[1]: "1 MiB", SIZES[2]: "5 MiB"}


def _distribution(values: list[float]) -> dict[str, float | int | None]:
    """Count, mean and percentiles (None when there is no value)."""
    out: dict[str, float | int | None] = {"n": len(values)}
    if len(values) >= 2:
        cuts = statistics.quantiles(values, n=100, method="inclusive")
        out.update({f"p{p}": round(cuts[p - 1], 4) for p in PERCENTILES})
    else:
        out.update({f"p{p}": values[0] if values else None for p in PERCENTILES})
    out["mean"] = round(statistics.fmean(values), 4) if values else None
    return out


def summary(result: SimResult) -> dict[str, Any]:
    """The JSON summary of a run."""
    params = dataclasses.asdict(result.params)
    ok = [t for t in result.transfers if t.ok]
    minutes = int(result.params.minutes + 0.999)
    per_minute = [{"minute": m, "ok": 0, "failed": 0} for m in range(minutes)]
    for t in result.transfers:
        slot = per_minute[min(minutes - 1, max(0, int(t.end // 60)))]
        slot["ok" if t.ok else "failed"] += 1
    return {
        "parameters": params,
        "seed": result.params.seed,
        "wall_seconds": round(result.wall_seconds, 2),
        "downloads": len(result.transfers),
        "failed": len(result.transfers) - len(ok),
        "failures_by_kind": dict(
            sorted(Counter(t.error for t in result.transfers if not t.ok).items())
        ),
        "downloads_by_minute": per_minute,
        "events": [{"at_s": round(at, 3), "what": what} for at, what in result.events],
        "circuit_build_s": _distribution([b.seconds for b in result.builds]),
        "bootstrap_s": _distribution(result.bootstraps),
        "ttfb_s": {
            _SIZE_LABELS[size]: _distribution(
                [t.ttfb for t in ok if t.size == size and t.ttfb is not None]
            )
            for size in SIZES
        },
        "download_s": {
            _SIZE_LABELS[size]: _distribution(
                [t.duration for t in ok if t.size == size and t.duration is not None]
            )
            for size in SIZES
        },
        "relay_bytes_sent": {r.nickname: r.bytes_sent for r in result.relays},
    }


def _write_csv(path: Path, header: list[str], rows: list[list[object]]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def _round(value: float | None) -> float | str:
    return "" if value is None else round(value, 6)


def _times(t: Transfer) -> list[float | str]:
    return [_round(t.start), _round(t.end), _round(t.ttfb), _round(t.duration)]


def write(result: SimResult, out: Path, *, plots: bool = True) -> list[Path]:
    """Write every output file into ``out`` (created); return their paths.

    Raises:
        ConfigError: ``out`` exists and is not a directory, or cannot be made.
    """
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot use {out} as the output directory: {exc}") from exc
    written = [out / "transfers.csv", out / "builds.csv", out / "relays.csv"]
    _write_csv(
        written[0],
        [
            "client",
            "model",
            "size_bytes",
            "start_s",
            "end_s",
            "ttfb_s",
            "total_s",
            "error",
        ],
        [[t.client, t.model, t.size, *_times(t), t.error] for t in result.transfers],
    )
    _write_csv(
        written[1],
        ["client", "at_s", "build_s"],
        [[b.client, _round(b.at), _round(b.seconds)] for b in result.builds],
    )
    _write_csv(
        written[2],
        ["relay", "country", "exit", "bandwidth_bytes_per_s", "bytes_sent"],
        [
            [r.nickname, r.country, int(r.exit), r.bandwidth, r.bytes_sent]
            for r in result.relays
        ],
    )
    summary_path = out / "summary.json"
    summary_path.write_text(json.dumps(summary(result), indent=2) + "\n")
    written.append(summary_path)
    if plots:
        from hopchain.simulations.network.plots import plot_all

        written += plot_all(result, out)
    return written
