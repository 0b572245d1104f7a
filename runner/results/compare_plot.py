"""The comparison's picture: measured box AP against the reference's (identity line, tolerance
band, points by verdict) beside the latency ratio measured / reference per model (sorted, log
scale, 1 marked). matplotlib without a display."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

if TYPE_CHECKING:
    from runner.results.compare import Comparison

DPI = 100
WIDTH_IN = 15.0
#: Marker colour of each verdict (matplotlib's tab palette).
TICKS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 0.67, 1.0, 1.5, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0)
COLOURS = {"reproduced": "tab:green", "outside": "tab:red", "subset": "tab:orange",
           "other dataset": "tab:purple"}


def _labels(frame: pd.DataFrame) -> list[str]:
    """"Model Input" (+ precision, + images scored where the rows differ in them)."""
    several = frame["precision"].nunique() > 1
    images = frame["images"].nunique() > 1
    labels = [f"{m} {r}" + (f" {p}" if several else "")
              + (f" [{int(n)} img]" if images and pd.notna(n) else "")
              for m, r, p, n in zip(frame["display_name"], frame["resolution"], frame["precision"],
                                    frame["images"], strict=True)]
    counts = pd.Series(labels).value_counts()
    return [f"{lab} ({str(rid)[:6]})" if counts[lab] > 1 else lab
            for lab, rid in zip(labels, frame["run_id"], strict=True)]


def plot(comparison: Comparison, path: Path) -> Path | None:
    """Write the picture to ``path``; None when no row has both box APs nor a latency ratio."""
    import matplotlib
    from matplotlib.figure import Figure

    matplotlib.rcParams["axes.formatter.useoffset"] = False
    frame = comparison.frame.assign(label=_labels(comparison.frame),
                                    verdict=[v.status for v in comparison.verdicts],
                                    tol=[v.tolerance for v in comparison.verdicts])
    ap = frame[frame["AP"].notna() & frame["ref AP"].notna()]
    ratio = frame[frame["diff latency_mean(ms)"].notna()].sort_values("diff latency_mean(ms)")
    if ap.empty and ratio.empty:
        return None
    height = float(min(40.0, max(6.0, 1.5 + 0.3 * len(ratio))))
    fig = Figure(figsize=(WIDTH_IN, height), dpi=DPI, layout="constrained")
    left, right = fig.subplots(1, 2, width_ratios=[1.0, 1.1])
    _ap_panel(left, ap)
    _ratio_panel(right, ratio)
    refs = ", ".join(comparison.references) or "none"
    fig.suptitle(f"Measured vs reference ({refs}); measured on {comparison.measured_header}",
                 fontsize=10)
    fig.savefig(path, dpi=DPI)
    return path


def _ap_panel(ax: Any, ap: pd.DataFrame) -> None:
    ax.set_title("Box AP: measured vs reference (identity line, tolerance band)", fontsize=10)
    ax.set_xlabel("reference AP (x100)")
    ax.set_ylabel("measured AP (x100)")
    if ap.empty:
        ax.text(0.5, 0.5, "no row with both box APs", ha="center", va="center",
                transform=ax.transAxes)
        return
    values = pd.concat([ap["AP"], ap["ref AP"]])
    pad = max(1.0, 0.08 * float(values.max() - values.min()))
    low, high = float(values.min()) - pad, float(values.max()) + pad
    line = [low, high]
    ax.plot(line, line, color="black", linewidth=1, label="identity (measured = reference)")
    for tol in sorted(set(ap["tol"].dropna())):
        ax.fill_between(line, [low - tol, high - tol], [low + tol, high + tol], color="tab:green",
                        alpha=0.15, linewidth=0, label=f"within {tol:g} AP points")
    for status, group in ap.groupby("verdict", sort=False):
        ax.scatter(group["ref AP"], group["AP"], s=36, zorder=3,
                   color=COLOURS.get(str(status), "tab:gray"), label=str(status))
    if len(ap) <= 45:
        for _, row in ap.iterrows():
            ax.annotate(f"{row['label']} ({row['AP'] - row['ref AP']:+.2f})",
                        (row["ref AP"], row["AP"]), textcoords="offset points", xytext=(4, 3),
                        fontsize=7)
    ax.set_xlim(low, high)
    ax.set_ylim(low, high)
    ax.set_aspect("equal", adjustable="box")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")


def _ratio_panel(ax: Any, ratio: pd.DataFrame) -> None:
    ax.set_title("Latency mean, measured / reference (log scale; < 1: faster here)", fontsize=10)
    if ratio.empty:
        ax.text(0.5, 0.5, "no row with both latencies", ha="center", va="center",
                transform=ax.transAxes)
        ax.set_yticks([])
        return
    values = ratio["diff latency_mean(ms)"].to_numpy(dtype=float)
    colours = ["tab:blue" if v <= 1 else "tab:red" for v in values]
    positions = range(len(values))
    ax.barh(list(positions), values, color=colours, height=0.7)
    ax.set_yticks(list(positions), list(ratio["label"]), fontsize=8)
    ax.set_xscale("log")
    ax.axvline(1.0, color="black", linewidth=1)
    span = max(abs(math.log10(float(values.min()))), abs(math.log10(float(values.max()))), 0.3)
    low, high = 10 ** (-span * 1.25), 10 ** (span * 1.25)
    ax.set_xlim(low, high)
    ticks = [t for t in TICKS if low <= t <= high]
    ax.set_xticks(ticks, [f"x{t:g}" for t in ticks])
    ax.minorticks_off()
    for pos, value in zip(positions, values, strict=True):
        ax.annotate(f"x{value:.2f}", (value, pos), textcoords="offset points",
                    xytext=(3 if value >= 1 else -3, 0), ha="left" if value >= 1 else "right",
                    va="center", fontsize=7)
    ax.set_xlabel("ratio (reference: " + ", ".join(sorted(set(ratio["reference"]))) + ")")
    ax.grid(True, axis="x", alpha=0.3)
