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
from runner.results.table import CI_HIGH, CI_LOW, ENV_COLUMN
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
    from matplotlib.figure import Figure

    matplotlib.rcParams["axes.formatter.useoffset"] = False  # plain tick labels, no "+7.12e1"
    return Figure(figsize=size_in, dpi=DPI, layout="constrained")


def _save(fig: Any, path: Path) -> Path:
    fig.savefig(path, dpi=DPI)
    return path


def bar_size_in(n_bars: int) -> tuple[float, float]:
    """Figure size (inches) of a horizontal bar chart with ``n_bars`` bars."""
    return BAR_WIDTH_IN, float(min(40.0, max(4.0, 1.2 + 0.3 * n_bars)))


def _finished(frame: pd.DataFrame, *columns: str) -> pd.DataFrame:
    keep = frame["status"] == "FINISHED"
    for col in columns:
        keep &= frame[col].notna()
    return frame[keep]


def run_labels(frame: pd.DataFrame, with_precision: bool | None = None) -> list[str]:
    """"Model Input" (+ precision when the runs have several, + environment when mixed), with
    the run id's start where two runs would read the same."""
    if with_precision is None:
        with_precision = frame["TF-TRT"].nunique() > 1
    labels = [f"{label} {p}" if with_precision else label
              for label, p in zip(_model_labels(frame), frame["TF-TRT"], strict=True)]
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
    colors = _precision_colors(list(data["TF-TRT"]))
    fig = _figure(bar_size_in(len(data)))
    ax = fig.add_subplot()
    values = data["latency_mean(ms)"].to_numpy()
    bars = ax.barh(range(len(data)), values, color=[colors[p] for p in data["TF-TRT"]])
    ax.bar_label(bars, labels=[f"{v:.2f}" for v in values], padding=3, fontsize=8)
    _bar_axes(ax, labels, "latency mean (ms), batch 1", "Latency mean per model", margin=0.12)
    if len(colors) > 1:
        _legend(ax, colors)
    return _save(fig, out_dir / "latency_mean.png")


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
    """ap_vs_latency.png: AP against latency mean, one series per precision, Pareto front."""
    data = _finished(frame, "latency_mean(ms)", "AP")
    if data.empty:
        log.info("ap_vs_latency.png: no finished run with AP and latency; not drawn")
        return None
    fig = _figure(SCATTER_SIZE_IN)
    ax = fig.add_subplot()
    colors = _precision_colors(list(data["TF-TRT"]))
    for precision, group in data.groupby("TF-TRT", sort=False):
        ax.scatter(group["latency_mean(ms)"], group["AP"], s=36, color=colors[str(precision)],
                   label=str(precision), zorder=3)
    lat, ap = list(data["latency_mean(ms)"]), list(data["AP"])
    front = pareto_front(lat, ap)
    ax.step([lat[i] for i in front], [ap[i] for i in front], where="post", color="black",
            linestyle="--", linewidth=1, zorder=2)
    ax.scatter([lat[i] for i in front], [ap[i] for i in front], s=130, facecolors="none",
               edgecolors="black", linewidths=1.2, label="Pareto front", zorder=4)
    middle = (min(lat) + max(lat)) / 2
    for x, y, label in zip(lat, ap, run_labels(data, with_precision=False), strict=True):
        right = x > middle
        text = ax.annotate(label, (x, y), textcoords="offset points",
                           xytext=(-4 if right else 4, 4), ha="right" if right else "left",
                           fontsize=7)
        text.set_in_layout(False)
    ax.set_xlabel("latency mean (ms), batch 1")
    ax.set_ylabel("COCO AP (box, x100)")
    ax.set_title("Accuracy against latency")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return _save(fig, out_dir / "ap_vs_latency.png")


def plot_throughput(frame: pd.DataFrame, out_dir: Path) -> Path | None:
    """throughput.png: images/sec per model, one bar per precision; error bars: the 95 % CI of
    a single run (when computed), the min-max range of several runs."""
    data = _finished(frame, "images/sec")
    if data.empty:
        log.info("throughput.png: no finished run with images/sec; not drawn")
        return None
    data = data.assign(_group=_model_labels(data))
    groups = list(dict.fromkeys(data["_group"]))
    precisions = list(dict.fromkeys(data["TF-TRT"]))
    colors = _precision_colors(precisions)
    fig = _figure(bar_size_in(len(groups) * len(precisions)))
    ax = fig.add_subplot()
    height = 0.8 / len(precisions)
    for j, precision in enumerate(precisions):
        ys, values, errors = [], [], []
        for g, group in enumerate(groups):
            cell = data[(data["_group"] == group) & (data["TF-TRT"] == precision)]
            if cell.empty:
                continue
            value, low, high = _bar_value(cell)
            ys.append(g - 0.4 + height * (j + 0.5))
            values.append(value)
            errors.append((value - low, high - value))
        err = np.array(errors, dtype=np.float64).T if errors else None
        bars = ax.barh(ys, values, height=height, color=colors[precision], label=precision,
                       xerr=err, error_kw={"elinewidth": 1, "capsize": 2})
        ax.bar_label(bars, labels=[f"{v:.2f}" for v in values], padding=3, fontsize=7)
    _bar_axes(ax, groups, "images/sec (images / total timed seconds), batch 1",
              "Throughput per model and precision", margin=0.15)
    ax.legend(title="precision", fontsize=8, loc="best")
    return _save(fig, out_dir / "throughput.png")


def _bar_value(cell: pd.DataFrame) -> tuple[float, float, float]:
    """(value, low, high) of one bar: mean of the runs, their range, or one run's CI."""
    values = cell["images/sec"].to_numpy(dtype=np.float64)
    value = float(values.mean())
    if len(values) > 1:
        return value, float(values.min()), float(values.max())
    if CI_LOW in cell and pd.notna(cell[CI_LOW].iloc[0]) and pd.notna(cell[CI_HIGH].iloc[0]):
        low, high = float(cell[CI_LOW].iloc[0]), float(cell[CI_HIGH].iloc[0])
        return value, min(low, value), max(high, value)
    return value, value, value


# -- timeline -----------------------------------------------------------------------------------


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
    if "cpu_util_pct" in samples and samples["cpu_util_pct"].notna().any():
        return "cpu_util_pct", [d for d in devices if not d.startswith("gpu")], None
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
    kind = "GPU" if util == "gpu_util_pct" else "CPU"
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
