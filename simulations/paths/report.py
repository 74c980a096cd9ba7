"""Writing a study's results: CSV, JSON and PNG plots.

File names are fixed (``FILES``) so scripts can find them.  Nothing written
depends on the wall clock or the machine: the same seeds and parameters give
the same CSV and JSON bytes.  Plots use matplotlib's Agg backend (no
display needed); matplotlib is the optional ``sim`` extra.
"""

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from hopchain.simulations.paths.results import SCALARS, SeedResult, Summary, hours_grid
from hopchain.simulations.paths.stats import Estimate
from hopchain.simulations.plotting import load_pyplot, save_figure

FILES: Final = {
    "per_seed": "per_seed.csv",
    "over_time": "compromise_over_time.csv",
    "first_compromise": "time_to_first_compromise.csv",
    "exit_countries": "exit_countries.csv",
    "summary": "summary.json",
    "plot_over_time": "compromise_over_time.png",
    "plot_first_compromise": "time_to_first_compromise.png",
    "plot_exit_countries": "exit_countries.png",
    "sweep": "sweep.csv",
    "sweep_summary": "sweep.json",
    "plot_sweep": "sweep.png",
}
TOP_COUNTRIES: Final = 12
_DPI: Final = 100


def _number(value: float) -> str:
    """Fixed formatting so files are byte-for-byte reproducible."""
    if isinstance(value, int):
        return str(value)
    return "" if math.isnan(value) else f"{value:.6g}"


def write_csv(
    path: Path, header: Sequence[str], rows: Sequence[Sequence[object]]
) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        for row in rows:
            writer.writerow(
                [_number(v) if isinstance(v, (int, float)) else v for v in row]
            )


def seed_row(result: SeedResult) -> list[object]:
    """One seed's scalars, in ``SEED_COLUMNS`` order."""
    return [
        result.seed,
        result.users,
        result.relays,
        result.guard_share,
        result.exit_share,
        result.guard_selection_share,
        result.exit_selection_share,
        result.streams,
        result.compromised_streams,
        result.circuits,
        result.compromised_circuits,
        result.failed_streams,
        *(result.scalar(name) for name in SCALARS),
    ]


SEED_COLUMNS: Final = (
    "seed",
    "users",
    "relays",
    "adversary_guard_share",
    "adversary_exit_share",
    "adversary_guard_selection_share",
    "adversary_exit_selection_share",
    "streams",
    "compromised_streams",
    "circuits",
    "compromised_circuits",
    "failed_streams",
    *SCALARS,
)


def write_tables(summary: Summary, out: Path) -> None:
    """The study's CSV files."""
    seeds = summary.seeds
    write_csv(out / FILES["per_seed"], SEED_COLUMNS, [seed_row(s) for s in seeds])
    grid = hours_grid(summary.days)
    write_csv(
        out / FILES["over_time"],
        ["day", "median", "ci_low", "ci_high", *(f"seed_{s.seed}" for s in seeds)],
        [
            [day, e.median, e.low, e.high, *(s.curve[i] for s in seeds)]
            for i, (day, e) in enumerate(zip(grid, summary.curve, strict=True))
        ],
    )
    write_csv(
        out / FILES["first_compromise"],
        ["seed", "days"],
        [[s.seed, d] for s in seeds for d in s.first_compromise_days],
    )
    write_csv(
        out / FILES["exit_countries"],
        [
            "country",
            "stream_share_median",
            "stream_share_ci_low",
            "stream_share_ci_high",
            "users_median",
            "users_ci_low",
            "users_ci_high",
            *(f"stream_share_seed_{s.seed}" for s in seeds),
        ],
        [
            [
                country,
                e.median,
                e.low,
                e.high,
                summary.exit_country_users[country].median,
                summary.exit_country_users[country].low,
                summary.exit_country_users[country].high,
                *(s.exit_share_of(country) for s in seeds),
            ]
            for country, e in sorted(
                summary.exit_countries.items(),
                key=lambda item: (-item[1].median, item[0]),
            )
        ],
    )


def write_json(path: Path, document: dict[str, Any]) -> None:
    """Sorted keys and fixed indentation: reproducible bytes."""
    path.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")


def _band(
    ax: Any,
    x: Sequence[float],
    estimates: Sequence[Estimate],
    label: str,
    color: str | None = None,
) -> None:
    line = ax.plot(
        x, [100 * e.median for e in estimates], label=f"{label} (median)", color=color
    )[0]
    coverage = min(e.coverage for e in estimates)
    ax.fill_between(
        x,
        [100 * e.low for e in estimates],
        [100 * e.high for e in estimates],
        color=line.get_color(),
        alpha=0.25,
        linewidth=0,
        label=f"{label}: {coverage:.0%} CI across seeds",
    )


def plot_study(summary: Summary, title: str, out: Path) -> list[Path]:
    """The three plots of a study; returns their paths."""
    plt = load_pyplot()
    grid = hours_grid(summary.days)
    paths = []

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for s in summary.seeds:
        ax.plot(grid, [100 * v for v in s.curve], color="0.6", linewidth=0.7, alpha=0.8)
    ax.plot([], [], color="0.6", linewidth=0.7, label="one seed")
    _band(ax, grid, summary.curve, "all seeds")
    ax.set_title(f"Users with at least one compromised circuit\n{title}")
    ax.set_xlabel("time since start (days)")
    ax.set_ylabel("users compromised (%)")
    ax.set_xlim(0, summary.days)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    paths.append(save_figure(fig, out / FILES["plot_over_time"], _DPI))

    fig, ax = plt.subplots(figsize=(8, 4.5))
    days = [d for s in summary.seeds for d in s.first_compromise_days]
    bins = max(1, math.ceil(summary.days))
    weights = [100 / (len(summary.seeds) * summary.seeds[0].users)] * len(days)
    ax.hist(
        days,
        bins=bins,
        range=(0, bins),
        weights=weights,
        color="tab:red",
        alpha=0.7,
        label=f"first compromise ({len(summary.seeds)} seeds pooled)",
    )
    median = summary.scalars["median_days_to_first_compromise"]
    if median is not None:
        ax.axvline(
            median.median,
            color="black",
            linestyle="--",
            label=f"median of compromised users: {median.median:.1f} days "
            "(median across seeds)",
        )
    ax.set_title(f"Time to first compromise\n{title}")
    ax.set_xlabel("time to first compromised circuit (days)")
    ax.set_ylabel("users per day (% of all users)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right")
    paths.append(save_figure(fig, out / FILES["plot_first_compromise"], _DPI))

    fig, ax = plt.subplots(figsize=(8, 4.5))
    top = sorted(summary.exit_countries.items(), key=lambda i: (-i[1].median, i[0]))[
        :TOP_COUNTRIES
    ]
    names = [c for c, _ in top]
    medians = [100 * e.median for _, e in top]
    errors = [
        [100 * (e.median - e.low) for _, e in top],
        [100 * (e.high - e.median) for _, e in top],
    ]
    coverage = min((e.coverage for _, e in top), default=0.0)
    ax.bar(
        names,
        medians,
        yerr=errors,
        capsize=3,
        color="tab:blue",
        label=f"median across seeds, {coverage:.0%} CI",
    )
    ax.set_title(f"Where streams exit (top {len(top)} countries)\n{title}")
    ax.set_xlabel("exit relay's country")
    ax.set_ylabel("streams exiting there (%)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper right")
    paths.append(save_figure(fig, out / FILES["plot_exit_countries"], _DPI))
    return paths


def plot_sweep(
    points: Sequence[tuple[str, Summary]], parameter: str, title: str, out: Path
) -> Path:
    """Compromise curves of every sweep point, with their bands."""
    plt = load_pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for value, summary in points:
        _band(ax, hours_grid(summary.days), summary.curve, f"{parameter}={value}")
    ax.set_title(
        f"Users with at least one compromised circuit, by {parameter}\n{title}"
    )
    ax.set_xlabel("time since start (days)")
    ax.set_ylabel("users compromised (%)")
    ax.set_xlim(0, points[0][1].days)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize="small")
    return save_figure(fig, out / FILES["plot_sweep"], _DPI)
