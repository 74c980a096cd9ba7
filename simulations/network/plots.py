"""PNG plots of a network simulation (matplotlib, Agg backend, no display)."""

from pathlib import Path
from typing import Final

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
from hopchain.simulations.network.params import SIZES, SimResult
from hopchain.simulations.plotting import save_figure
from matplotlib.axes import Axes
from matplotlib.patches import Patch

__all__ = ["plot_all"]

_LABELS: Final = {SIZES[0]: "50 KiB", SIZES[1]: "1 MiB", SIZES[2]: "5 MiB"}
_DPI: Final = 120


def _subtitle(result: SimResult) -> str:
    p = result.params
    return (
        f"{p.relays} relays, {p.clients} clients ({p.workload}), "
        f"{p.minutes:g} min, latency x{p.latency_scale:g}, seed {p.seed}"
    )


def _cdf(ax: Axes, values: list[float], label: str) -> None:
    """An empirical CDF; a series without values is only named in the legend."""
    data = sorted(values)
    n = len(data)
    if n == 0:
        ax.plot([], [], label=f"{label} (none)")
        return
    ax.step(
        data, [(i + 1) / n for i in range(n)], where="post", label=f"{label} (n={n})"
    )


def _ttfb(result: SimResult, out: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for size in SIZES:
        _cdf(
            ax,
            [t.ttfb for t in result.transfers if t.ok and t.size == size and t.ttfb],
            _LABELS[size],
        )
    ax.set_title(f"Time to first byte\n{_subtitle(result)}", fontsize=10)
    ax.set_xlabel("time to first byte (s)")
    ax.set_ylabel("fraction of downloads")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(title="download size")
    return save_figure(fig, out / "ttfb.png", _DPI)


def _downloads(result: SimResult, out: Path) -> Path:
    fig, axes = plt.subplots(1, 3, figsize=(12, 4))
    for ax, size in zip(axes, SIZES, strict=True):
        _cdf(
            ax,
            [
                t.duration
                for t in result.transfers
                if t.ok and t.size == size and t.duration is not None
            ],
            _LABELS[size],
        )
        ax.set_title(f"{_LABELS[size]} downloads", fontsize=10)
        ax.set_xlabel("time to last byte (s)")
        ax.set_ylabel("fraction of downloads")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
    fig.suptitle(f"Download times: {_subtitle(result)}", fontsize=10)
    return save_figure(fig, out / "download_times.png", _DPI)


def _builds(result: SimResult, out: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    _cdf(ax, [b.seconds for b in result.builds], f"{result.params.hops}-hop circuits")
    ax.set_title(f"Circuit build time\n{_subtitle(result)}", fontsize=10)
    ax.set_xlabel("build time (s)")
    ax.set_ylabel("fraction of circuits")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, out / "build_times.png", _DPI)


def _events_by_time(result: SimResult) -> list[tuple[float, str]]:
    """Faults at one time share a line: "kill r3, kill r7"."""
    grouped: dict[float, list[str]] = {}
    for at, what in result.events:
        grouped.setdefault(round(at, 3), []).append(what)
    return [(at, ", ".join(whats)) for at, whats in sorted(grouped.items())]


def _failures(result: SimResult, out: Path) -> Path:
    minutes = int(result.params.minutes + 0.999)
    ok = [0] * minutes
    failed = [0] * minutes
    for t in result.transfers:
        slot = min(minutes - 1, max(0, int(t.end // 60)))
        if t.ok:
            ok[slot] += 1
        else:
            failed[slot] += 1
    fig, ax = plt.subplots(figsize=(8, 4.5))
    starts = list(range(minutes))
    ax.bar(starts, ok, width=0.9, align="edge", label="succeeded", color="tab:blue")
    ax.bar(
        starts,
        failed,
        width=0.9,
        align="edge",
        bottom=ok,
        label="failed",
        color="tab:red",
    )
    ax.set_ylim(0, max(1, *(a + b for a, b in zip(ok, failed, strict=True))) * 1.25)
    for at, what in _events_by_time(result):
        ax.axvline(at / 60, color="black", linestyle="--", linewidth=1)
        ax.annotate(
            what,
            (at / 60, ax.get_ylim()[1] * 0.95),
            rotation=90,
            fontsize=8,
            ha="right",
            va="top",
        )
    ax.set_title(
        f"Downloads by the minute they ended\n{_subtitle(result)}", fontsize=10
    )
    ax.set_xlabel("simulated time since clients started (min)")
    ax.set_ylabel("downloads ended in the minute")
    ax.legend(loc="upper left")
    return save_figure(fig, out / "failures.png", _DPI)


def _relay_load(result: SimResult, out: Path) -> Path:
    relays = sorted(result.relays, key=lambda r: -r.bytes_sent)
    fig, ax = plt.subplots(figsize=(max(7.0, 0.35 * len(relays)), 4.5))
    colors = ["tab:orange" if r.exit else "tab:blue" for r in relays]
    ax.bar(
        [r.nickname for r in relays],
        [r.bytes_sent / 2**20 for r in relays],
        color=colors,
    )
    ax.legend(
        handles=[
            Patch(color="tab:orange", label="exit"),
            Patch(color="tab:blue", label="guard or middle"),
        ]
    )
    ax.set_title(f"Relay load: bytes sent\n{_subtitle(result)}", fontsize=10)
    ax.set_xlabel("relay")
    ax.set_ylabel("sent (MiB)")
    ax.tick_params(axis="x", labelrotation=90, labelsize=8)
    return save_figure(fig, out / "relay_load.png", _DPI)


def plot_all(result: SimResult, out: Path) -> list[Path]:
    """Write every plot into ``out``; return their paths."""
    return [
        _ttfb(result, out),
        _downloads(result, out),
        _builds(result, out),
        _failures(result, out),
        _relay_load(result, out),
    ]
