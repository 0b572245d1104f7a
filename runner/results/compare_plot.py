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
WIDTH_IN = 18.0
#: Marker colour of each verdict (matplotlib's tab palette).
TICKS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 0.67, 1.0, 1.5, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0)
COLOURS = {"reproduced": "tab:green", "outside": "tab:red", "subset": "tab:orange",
           "other dataset": "tab:purple"}


def _labels(frame: pd.DataFrame, statuses: list[str]) -> list[str]:
    """"Model Input" (+ precision where the rows have several, + the images of a subset)."""
    several = frame["precision"].nunique() > 1
    labels = [f"{m} {r}" + (f" {p}" if several else "")
              + (f" [{int(n)} img]" if status == "subset" and pd.notna(n) else "")
              for m, r, p, n, status in zip(frame["display_name"], frame["resolution"],
                                            frame["precision"], frame["images"], statuses,
                                            strict=True)]
    counts = pd.Series(labels).value_counts()
    return [f"{lab} ({str(rid)[:6]})" if counts[lab] > 1 else lab
            for lab, rid in zip(labels, frame["run_id"], strict=True)]


def plot(comparison: Comparison, path: Path) -> Path | None:
    """Write the picture to ``path``; None when no row has both box APs nor a latency ratio."""
    import matplotlib
    from matplotlib.figure import Figure

    matplotlib.rcParams["axes.formatter.useoffset"] = False
    statuses = [v.status for v in comparison.verdicts]
    frame = comparison.frame.assign(label=_labels(comparison.frame, statuses),
                                    verdict=statuses,
                                    tol=[v.tolerance for v in comparison.verdicts])
    ap = frame[frame["AP"].notna() & frame["ref AP"].notna()]
    ratio = frame[frame["diff latency_mean(ms)"].notna()].sort_values("diff latency_mean(ms)")
    if ap.empty and ratio.empty:
        return None
    height = float(min(40.0, max(6.0, 1.5 + 0.3 * max(len(ratio), len(ap)))))
    fig = Figure(figsize=(WIDTH_IN, height), dpi=DPI, layout="constrained")
    left, middle, right = fig.subplots(1, 3, width_ratios=[1.0, 1.0, 1.0])
    _ap_panel(left, ap)
    _diff_panel(middle, ap.assign(diff=ap["AP"] - ap["ref AP"]).sort_values("diff"))
    _ratio_panel(right, ratio)
    refs = ", ".join(comparison.references) or "none"
    fig.suptitle(f"Measured vs reference ({refs}); measured on {comparison.measured_header}",
                 fontsize=10)
    fig.savefig(path, dpi=DPI)
    return path


def _ap_panel(ax: Any, ap: pd.DataFrame) -> None:
    ax.set_title("Box AP: measured vs reference (identity line, tolerance band)", fontsize=10)
    # rows are named in the difference panel beside it: labels here would overlap
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
    ax.set_xlim(low, high)
    ax.set_ylim(low, high)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")


def _diff_panel(ax: Any, ap: pd.DataFrame) -> None:
    ax.set_title("Box AP difference, measured - reference (points)", fontsize=10)
    if ap.empty:
        ax.text(0.5, 0.5, "no row with both box APs", ha="center", va="center",
                transform=ax.transAxes)
        ax.set_yticks([])
        return
    positions = list(range(len(ap)))
    colours = [COLOURS.get(str(s), "tab:gray") for s in ap["verdict"]]
    ax.barh(positions, ap["diff"], color=colours, height=0.7)
    for tol in sorted(set(ap["tol"].dropna())):
        ax.axvspan(-tol, tol, color="tab:green", alpha=0.15, linewidth=0)
    ax.axvline(0.0, color="black", linewidth=1)
    ax.set_yticks(positions, list(ap["label"]), fontsize=8)
    for pos, value in zip(positions, ap["diff"], strict=True):
        ax.annotate(f"{round(value, 2) + 0.0:+.2f}", (value, pos), textcoords="offset points",
                    xytext=(3 if value >= 0 else -3, 0), ha="left" if value >= 0 else "right",
                    va="center", fontsize=7)
    reach = max(float(ap["diff"].abs().max()), float(ap["tol"].max()), 0.1) * 1.35
    ax.set_xlim(-reach, reach)
    ax.set_xlabel("AP points (green band: within the tolerance)")
    ax.grid(True, axis="x", alpha=0.3)


def _ratio_panel(ax: Any, ratio: pd.DataFrame) -> None:
    ax.set_title("Latency mean ratio, measured / reference", fontsize=10)
    if ratio.empty:
        ax.text(0.5, 0.5, "no row with both latencies", ha="center", va="center",
                transform=ax.transAxes)
        ax.set_yticks([])
        return
    values = ratio["diff latency_mean(ms)"].to_numpy(dtype=float)
    colours = ["tab:blue" if v <= 1 else "tab:red" for v in values]
    positions = range(len(values))
    ax.barh(list(positions), values - 1.0, left=1.0, color=colours, height=0.7)  # from 1
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
    ax.set_xlabel("log scale, < 1: faster here (reference: "
                  + ", ".join(sorted(set(ratio["reference"]))) + ")")
    ax.grid(True, axis="x", alpha=0.3)
