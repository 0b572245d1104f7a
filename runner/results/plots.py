"""The figures of an export: latency per model, AP against latency with its Pareto front,
throughput per model and precision (from the report's frame), and one run's utilization and
power over time (from its telemetry samples). matplotlib, no display needed."""

from __future__ import annotations

import io
import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from runner import tracking
from runner.results.table import (
    CI_HIGH,
    CI_LOW,
    ENV_COLUMN,
    PERCENT_COLUMNS,
    PRECISION_COLUMN,
)
from runner.tracking import resolve_uri

log = logging.getLogger(__name__)

DPI = 100
SCATTER_SIZE_IN = (8.0, 6.0)
TIMELINE_SIZE_IN = (12.0, 5.0)
BAR_WIDTH_IN = 10.0


class NoSamplesError(ValueError):
    """A run without the telemetry samples a timeline needs."""


# -- plots --------------------------------------------------------------------------------------


def _figure(size_in: tuple[float, float]) -> Any:
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    matplotlib.rcParams["axes.formatter.useoffset"] = False  # plain tick labels, no "+7.12e1"
    fig = Figure(figsize=size_in, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)  # a renderer to measure text with (label placement) before saving
    return fig


def _save(fig: Any, path: Path) -> Path:
    fig.savefig(path, dpi=DPI)
    return path


def bar_size_in(n_bars: int) -> tuple[float, float]:
    """Figure size (inches) of a horizontal bar chart with ``n_bars`` bars."""
    return BAR_WIDTH_IN, float(min(40.0, max(4.0, 1.2 + 0.3 * n_bars)))


#: The AP axis never spans less than this (AP points, x100): runs 0.03 apart are equal, and a
#: tighter axis would draw noise as a trend.
MIN_AP_SPAN = 2.0
LOG_X_RATIO = 8.0  # latency spans beyond this factor get a log axis
VARIANT = "Variant"
INTERVAL_NOTE = ("error bars: 95% interval (one run: batch means over its timed calls;\n"
                 "n runs of one config: t-interval of their mean)")


def _finished(frame: pd.DataFrame, *columns: str) -> pd.DataFrame:
    """FINISHED rows with a number in each column (COCO's "n/a" is no number)."""
    frame = frame.copy()
    for col in columns:
        if col in PERCENT_COLUMNS or frame[col].dtype == object:
            frame[col] = pd.to_numeric(frame[col], errors="coerce")
    keep = frame["status"] == "FINISHED"
    for col in columns:
        keep &= frame[col].notna()
    return frame[keep]


def _suffixes(frame: pd.DataFrame) -> list[str]:
    """" [benchmark.warmup=5]" for swept settings, " (n=3)" for averaged repeats, " unstable"."""
    variant = frame[VARIANT] if VARIANT in frame else pd.Series("", index=frame.index)
    n = frame["n"] if "n" in frame else pd.Series(1, index=frame.index)
    stability = frame["stability"] if "stability" in frame else pd.Series("", index=frame.index)
    out = []
    for v, k, s in zip(variant, n, stability, strict=True):
        text = f" [{v}]" if isinstance(v, str) and v else ""
        text += f" (n={int(k)})" if pd.notna(k) and int(k) > 1 else ""
        text += " unstable" if s == "unstable" else ""
        out.append(text)
    return out


def run_labels(frame: pd.DataFrame, with_precision: bool | None = None) -> list[str]:
    """"Model Input" (+ precision when the runs have several, + environment when mixed), with
    the run id's start where two runs would read the same."""
    if with_precision is None:
        with_precision = frame[PRECISION_COLUMN].nunique() > 1
    labels = [(f"{label} {p}" if with_precision else label) + suffix
              for label, p, suffix in zip(_model_labels(frame), frame[PRECISION_COLUMN],
                                          _suffixes(frame), strict=True)]
    counts = pd.Series(labels).value_counts()
    if not with_precision:  # a model's rows of several precisions: name the precision
        labels = [f"{lab} {p}" if counts[lab] > 1 else lab
                  for lab, p in zip(labels, frame[PRECISION_COLUMN], strict=True)]
        counts = pd.Series(labels).value_counts()
    return [f"{lab} ({rid[:6]})" if counts[lab] > 1 else lab
            for lab, rid in zip(labels, frame["run_id"], strict=True)]


def _model_labels(frame: pd.DataFrame) -> list[str]:
    """"Model Input" (+ environment when mixed): the runs of one model share it."""
    env = frame[ENV_COLUMN] if ENV_COLUMN in frame else pd.Series(None, index=frame.index)
    return [f"{m} {i}" + (f" [{e}]" if isinstance(e, str) else "")
            for m, i, e in zip(frame["Model"], frame["Input"], env, strict=True)]


def _precision_colors(precisions: Sequence[str]) -> dict[str, Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {p: cmap(i % 10) for i, p in enumerate(dict.fromkeys(precisions))}


def plot_latency_mean(frame: pd.DataFrame, out_dir: Path) -> Path | None:
    """latency_mean.png: latency mean per model, the public table's figure (table order)."""
    data = _finished(frame, "latency_mean(ms)")
    if data.empty:
        log.info("latency_mean.png: no finished run with a latency; not drawn")
        return None
    labels = run_labels(data)
    colors = _precision_colors(list(data[PRECISION_COLUMN]))
    fig = _figure(bar_size_in(len(data)))
    ax = fig.add_subplot()
    values = data["latency_mean(ms)"].to_numpy()
    bars = ax.barh(range(len(data)), values, color=[colors[p] for p in data[PRECISION_COLUMN]])
    _hatch_unstable(bars, data)
    ax.bar_label(bars, labels=[f"{v:.2f}" for v in values], padding=3, fontsize=8)
    _bar_axes(ax, labels, "latency mean (ms), batch 1", "Latency mean per model", margin=0.12)
    if len(colors) > 1:
        _legend(ax, colors)
    return _save(fig, out_dir / "latency_mean.png")


def _hatch_unstable(bars: Any, data: pd.DataFrame) -> None:
    if "stability" not in data:
        return
    for bar, stability in zip(bars, data["stability"], strict=True):
        if stability == "unstable":
            bar.set_hatch("//")
            bar.set_edgecolor("black")


def _bar_axes(ax: Any, labels: Sequence[str], xlabel: str, title: str, margin: float) -> None:
    """Horizontal bars: one label per bar from the top, value axis gridded, room for values."""
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.margins(x=margin)
    ax.grid(axis="x", alpha=0.3)


def _legend(ax: Any, colors: Mapping[str, Any], title: str = "precision") -> None:
    from matplotlib.patches import Patch

    ax.legend(handles=[Patch(color=c, label=p) for p, c in colors.items()], title=title,
              fontsize=8, loc="best")


def pareto_front(latency: Sequence[float], ap: Sequence[float]) -> list[int]:
    """Indices of the points no other point beats (lower or equal latency and higher or equal
    AP, one strictly), by increasing latency."""
    order = sorted(range(len(latency)), key=lambda i: (latency[i], -ap[i]))
    front: list[int] = []
    best = -math.inf
    for i in order:
        if ap[i] > best:
            front.append(i)
            best = ap[i]
    return front


def plot_ap_vs_latency(frame: pd.DataFrame, out_dir: Path) -> Path | None:
    """ap_vs_latency.png: AP against latency mean, one series and one Pareto front per
    precision (a front across precisions would compare an FP32 run with an INT8 one), labels
    placed by adjustText so that none overlaps, an AP axis of at least MIN_AP_SPAN."""
    data = _finished(frame, "latency_mean(ms)", "AP")
    if data.empty:
        log.info("ap_vs_latency.png: no finished run with AP and latency; not drawn")
        return None
    fig = _figure(SCATTER_SIZE_IN if len(data) <= 12 else (14.0, 10.0))
    ax = fig.add_subplot()
    colors = _precision_colors(list(data[PRECISION_COLUMN]))
    for precision, group in data.groupby(PRECISION_COLUMN, sort=False):
        color = colors[str(precision)]
        lat, ap = list(group["latency_mean(ms)"]), list(group["AP"])
        ax.scatter(lat, ap, s=36, color=color, label=str(precision), zorder=3)
        front = pareto_front(lat, ap)
        ax.step([lat[i] for i in front], [ap[i] for i in front], where="post", color=color,
                linestyle="--", linewidth=1.2, zorder=2)
        ax.scatter([lat[i] for i in front], [ap[i] for i in front], s=130, facecolors="none",
                   edgecolors=color, linewidths=1.2, zorder=4)
    ax.plot([], [], color="black", linestyle="--", marker="o", markerfacecolor="none",
            markersize=10, label="Pareto front (per precision)")
    _min_span(ax, data["AP"], MIN_AP_SPAN)
    latency = data["latency_mean(ms)"]
    log_x = float(latency.max()) > LOG_X_RATIO * float(latency.min())
    if log_x:  # the zoo spans 35-1200 ms: on a linear axis the fast half would be one clump
        ax.set_xscale("log")
        from matplotlib.ticker import FixedLocator, NullFormatter, ScalarFormatter

        ticks = [t * 10.0 ** e for e in range(-1, 6) for t in (1, 2, 5)]
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("latency mean (ms), batch 1" + (", log scale" if log_x else ""))
    ax.set_ylabel("COCO AP (box, x100)")
    ax.set_title("Accuracy against latency")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    _place_labels(ax, list(data["latency_mean(ms)"]), list(data["AP"]),
                  run_labels(data, with_precision=False))  # precision: the colour
    return _save(fig, out_dir / "ap_vs_latency.png")


def _min_span(ax: Any, values: pd.Series, span: float) -> None:
    low, high = float(values.min()), float(values.max())
    pad = max((high - low) * 0.08, (span - (high - low)) / 2, 0.0)
    ax.set_ylim(low - pad, high + pad)


#: adjustText iterations per round, and rounds at most (each round continues from the last)
LABEL_ITERATIONS = 300
LABEL_ROUNDS = 8


def _place_labels(ax: Any, xs: Sequence[float], ys: Sequence[float],
                  labels: Sequence[str]) -> None:
    """Point labels that do not overlap each other or the points (adjustText moves them and
    draws a leader line where a label had to move away)."""
    from adjustText import adjust_text

    fontsize = 7 if len(labels) <= 20 else 6
    texts = [ax.text(x, y, label, fontsize=fontsize) for x, y, label in
             zip(xs, ys, labels, strict=True)]
    ax.figure.canvas.draw()  # adjustText measures rendered text
    # Rounds of a fixed number of iterations, never a time limit: with adjustText's time_lim=10
    # the placement depended on the CPU it got (a zoo-scale figure: 1403 iterations in 10 s on
    # an idle core, fewer on a loaded one, and 1 overlapping pair left there). Its result is not
    # monotonic in the iterations (300: 0 overlaps, 1000: 1), hence rounds until none overlap.
    overlaps = 0
    for _ in range(LABEL_ROUNDS):
        adjust_text(texts, x=list(xs), y=list(ys), ax=ax, expand=(1.03, 1.15),
                    force_text=(0.05, 0.15), force_static=(0.05, 0.1), ensure_inside_axes=True,
                    iter_lim=LABEL_ITERATIONS)
        overlaps = label_overlaps(ax, texts)
        if not overlaps:
            break
    for (x, y), text in zip(zip(xs, ys, strict=True), texts, strict=True):
        text.set_in_layout(False)
        if text.get_position() != (x, y):  # moved away from its point: a leader line
            ax.annotate("", xy=(x, y), xytext=text.get_position(),
                        arrowprops={"arrowstyle": "-", "color": "0.5", "lw": 0.5})
    if overlaps:
        log.warning("ap_vs_latency.png: %d label pair(s) still overlap", overlaps)


def label_overlaps(ax: Any, texts: Sequence[Any]) -> int:
    """Pairs of labels whose rendered boxes intersect (0 is what a reader needs)."""
    renderer = ax.figure.canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in texts]
    return sum(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])


def plot_throughput(frame: pd.DataFrame, out_dir: Path) -> Path | None:
    """throughput.png: images/sec, one bar per row of the table (runs that differ in anything
    measured are never merged into one bar; repeats of one config are one row already), colour
    by precision, unstable runs hatched; error bars are the 95 % interval (INTERVAL_NOTE), and
    a bar without one says so instead of drawing a zero-width bar."""
    data = _finished(frame, "images/sec")
    if data.empty:
        log.info("throughput.png: no finished run with images/sec; not drawn")
        return None
    labels = run_labels(data)
    colors = _precision_colors(list(data[PRECISION_COLUMN]))
    fig = _figure(bar_size_in(len(data)))
    ax = fig.add_subplot()
    values = data["images/sec"].to_numpy(dtype=np.float64)
    low = pd.to_numeric(data[CI_LOW], errors="coerce").to_numpy(dtype=np.float64) \
        if CI_LOW in data else np.full(len(data), np.nan)
    high = pd.to_numeric(data[CI_HIGH], errors="coerce").to_numpy(dtype=np.float64) \
        if CI_HIGH in data else np.full(len(data), np.nan)
    has_ci = ~(np.isnan(low) | np.isnan(high))
    err = np.vstack([np.where(has_ci, values - np.minimum(low, values), 0.0),
                     np.where(has_ci, np.maximum(high, values) - values, 0.0)])
    bars = ax.barh(range(len(data)), values, color=[colors[p] for p in data[PRECISION_COLUMN]],
                   xerr=err, error_kw={"elinewidth": 1, "capsize": 3})
    _hatch_unstable(bars, data)
    texts = [f"{v:.2f}" if ok else f"{v:.2f} (no interval)"
             for v, ok in zip(values, has_ci, strict=True)]
    ax.bar_label(bars, labels=texts, padding=4, fontsize=7)
    _bar_axes(ax, labels, "images/sec (images / total timed seconds), batch 1\n" + INTERVAL_NOTE,
              "Throughput per run", margin=0.18)
    if len(colors) > 1:
        _legend(ax, colors)
    return _save(fig, out_dir / "throughput.png")


def load_samples(uri: str | None, run_id: str) -> pd.DataFrame:
    """A run's telemetry samples as in samples.csv (t_s, phase, device, quantities); without
    that artifact, rebuilt from the ``sample.<device>.<quantity>`` metric histories (no
    phases)."""
    resolved = resolve_uri(uri)
    try:
        return pd.read_csv(io.BytesIO(tracking.read_artifact(resolved, run_id, "samples.csv")))
    except Exception as exc:  # noqa: BLE001 - fall back to the metric histories
        log.info("run %s: no samples.csv (%s); using the sample.* metrics", run_id, exc)
    return _samples_from_metrics(resolved, run_id)


def _samples_from_metrics(uri: str, run_id: str) -> pd.DataFrame:
    client = tracking.client(uri)
    run = client.get_run(run_id)
    points = []
    for name in run.data.metrics:
        _, _, rest = name.partition("sample.")
        device, _, quantity = rest.partition(".")
        if not name.startswith("sample.") or not quantity:
            continue
        for m in client.get_metric_history(run_id, name):
            points.append({"device": device, "step": m.step, "ts": m.timestamp,
                           "quantity": quantity, "value": m.value})
    if not points:
        return pd.DataFrame(columns=["t_s", "phase", "device"])
    long = pd.DataFrame(points)
    wide = long.pivot_table(index=["device", "step"], columns="quantity", values="value")
    stamps = long.groupby(["device", "step"])["ts"].min()
    wide.insert(0, "t_s", (stamps - long["ts"].min()) / 1000.0)
    wide.insert(1, "phase", None)
    return wide.reset_index().drop(columns="step").sort_values("t_s")


def load_phases(uri: str | None, run_id: str) -> list[tuple[str, float, float]] | None:
    """The phases the job marked, (name, start, end) on the samples' clock, from the run's
    telemetry.json; None for a run without them."""
    try:
        telemetry = json.loads(tracking.read_artifact(resolve_uri(uri), run_id, "telemetry.json"))
        intervals = telemetry["intervals"]
        return [(str(name), float(start), float(end)) for name, start, end in intervals]
    except Exception as exc:  # noqa: BLE001 - older runs: phases from the samples instead
        log.info("run %s: no phase intervals (%s); using the samples' phases", run_id, exc)
        return None


def phase_spans(samples: pd.DataFrame) -> list[tuple[str, float, float]]:
    """(phase, start, end) of each stretch of consecutive samples in one phase; a stretch ends
    where the next one starts (its last sample for the final stretch). An approximation of the
    marked phases (``load_phases``), for runs that did not record them."""
    rows = samples[samples["phase"].notna()].sort_values("t_s", kind="stable")
    if rows.empty:
        return []
    ts, phases = rows["t_s"].to_numpy(dtype=np.float64), rows["phase"].astype(str).to_numpy()
    starts = [0, *(i for i in range(1, len(ts)) if phases[i] != phases[i - 1])]
    ends = [*(ts[i] for i in starts[1:]), ts[-1]]
    return [(str(phases[s]), float(ts[s]), float(e)) for s, e in zip(starts, ends, strict=True)]


def _timeline_quantities(samples: pd.DataFrame) -> tuple[str, list[str], str | None]:
    """(utilization column, devices, power column or None): the GPUs when sampled, else CPU."""
    if "device" not in samples:
        return "", [], None
    devices = [str(d) for d in dict.fromkeys(samples["device"].dropna())]
    gpus = [d for d in devices if d.startswith("gpu")]
    if gpus and "gpu_util_pct" in samples and samples["gpu_util_pct"].notna().any():
        power = "power_w" if "power_w" in samples and samples["power_w"].notna().any() else None
        return "gpu_util_pct", gpus, power
    if "host_cpu_util_pct" in samples and samples["host_cpu_util_pct"].notna().any():
        return "host_cpu_util_pct", [d for d in devices if not d.startswith("gpu")], None
    return "", [], None


def plot_timeline(uri: str | None, run_id: str, out_dir: str | Path) -> Path:
    """timeline_<run_id>.png: GPU utilization (solid) and power (dashed) per GPU over time, the
    warm-up shaded and the phases marked; CPU utilization when the run has no GPU samples."""
    from matplotlib import colormaps


    samples = load_samples(uri, run_id)
    util, devices, power = _timeline_quantities(samples)
    if not util:
        raise NoSamplesError(f"run {run_id} has no utilization samples to plot")
    name = tracking.client(uri).get_run(run_id).info.run_name or run_id
    kind = "GPU" if util == "gpu_util_pct" else "host CPU"
    fig = _figure(TIMELINE_SIZE_IN)
    ax = fig.add_subplot()
    twin = ax.twinx() if power else None
    palette = colormaps["tab10"]
    for i, device in enumerate(devices):
        rows = samples[samples["device"] == device].sort_values("t_s")
        color = palette((2 * i) % 10)  # blue, green, red, ...: clear of the warm-up's yellow
        ax.plot(rows["t_s"], rows[util], linewidth=1.2, color=color,
                label=f"{device} utilization")
        if twin is not None and power:
            twin.plot(rows["t_s"], rows[power], linewidth=1.0, linestyle="--", color=color,
                      label=f"{device} power")
    ax.set(ylabel=f"{kind} utilization (%)", ylim=(0, 105),
           xlabel="time since sampling started (s)")
    if twin is not None:
        twin.set(ylabel="power (W)", ylim=(0, None))
    phases = load_phases(uri, run_id)
    _mark_phases(ax, phase_spans(samples) if phases is None else phases)
    handles, labels = ax.get_legend_handles_labels()
    if twin is not None:
        more = twin.get_legend_handles_labels()
        handles, labels = handles + more[0], labels + more[1]
    fig.legend(handles, labels, fontsize=8, loc="outside lower center", ncols=len(labels))
    title = "GPU utilization and power" if kind == "GPU" else "CPU utilization (no GPU samples)"
    ax.set_title(f"{title}: {name}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return _save(fig, out / f"timeline_{run_id}.png")


def _mark_phases(ax: Any, spans: Sequence[tuple[str, float, float]]) -> None:
    """Shade the warm-up; a dotted line and the name at each phase's start (inside the top of
    the axes, staggered where phases start close together)."""
    from matplotlib.transforms import blended_transform_factory

    top = blended_transform_factory(ax.transData, ax.transAxes)
    low, high = ax.get_xlim()
    close = 0.05 * (high - low)
    warm, level, last = False, 0, -math.inf
    for phase, start, end in spans:
        if phase == "warmup":
            ax.axvspan(start, end, color="gold", alpha=0.3, label=None if warm else "warm-up")
            warm = True
        ax.axvline(start, color="grey", linewidth=0.6, linestyle=":")
        level = (level + 1) % 3 if start - last < close else 0
        last = start
        ax.text(start, 0.98 - 0.05 * level, f" {phase}", transform=top, fontsize=7, va="top",
                color="dimgrey")
