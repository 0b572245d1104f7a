"""What a finished job adds to its MLflow run for a reader, after everything measured is logged:
the description (table row and headline numbers), the full package list, and two latency
figures (distribution and drift over the call index). Called by ``job.publish``; nothing here
may fail a job (each part logs a warning instead), and nothing runs while the timer does.

matplotlib is imported here, after the measured part ended (about 0.4 s on the 2-core dev
machine); pandas is not."""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner import jobdir
from runner.results import describe

if TYPE_CHECKING:  # for the annotation only: this module runs after the job's own tracking
    from runner.tracking import Tracker

log = logging.getLogger(__name__)

PACKAGES_FILE = "packages.txt"
PLOTS_DIR = "plots"
HIST_BINS_MAX = 60


def packages_text() -> str:
    """Every installed distribution as ``name==version``, sorted (``pip freeze``'s form,
    without running pip: importlib.metadata reads the same records in ~20 ms)."""
    seen: dict[str, str] = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name and name.lower() not in seen:
            seen[name.lower()] = f"{name}=={dist.version}"
    return "\n".join(seen[k] for k in sorted(seen)) + "\n"


def read_latencies_ms(path: Path) -> list[float]:
    if not path.is_file():
        return []
    with path.open() as fh:
        return [float(r["latency_ms"]) for r in csv.DictReader(fh) if r.get("latency_ms")]


def latency_figures(latencies_ms: Sequence[float], title: str, out_dir: Path) -> list[Path]:
    """``latency_distribution.png`` (histogram with its ECDF, mean/median/p99 marked) and
    ``latency_by_call.png`` (each timed call in order: drift, throttling, periodic stalls)."""
    import numpy as np
    from matplotlib.figure import Figure

    values = np.asarray(latencies_ms, dtype=np.float64)
    if values.size == 0:
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    mean, median, p99 = float(values.mean()), float(np.median(values)), float(
        np.percentile(values, 99))

    fig = Figure(figsize=(8.0, 4.5), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    bins = int(min(HIST_BINS_MAX, max(5, math.sqrt(values.size) * 2)))
    ax.hist(values, bins=bins, color="#4c72b0", alpha=0.75, label=f"{values.size} timed calls")
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel("calls")
    ecdf = ax.twinx()
    xs = np.sort(values)
    ecdf.step(xs, np.arange(1, xs.size + 1) / xs.size, where="post", color="#222222",
              linewidth=1.2, label="ECDF")
    ecdf.set_ylim(0, 1.02)
    ecdf.set_ylabel("fraction of calls <= latency (ECDF)")
    for value, name, style in ((mean, "mean", "-"), (median, "median", "--"), (p99, "p99", ":")):
        ax.axvline(value, color="#c44e52", linestyle=style, linewidth=1.2,
                   label=f"{name} {value:.2f} ms")
    handles, labels = ax.get_legend_handles_labels()
    h2, l2 = ecdf.get_legend_handles_labels()
    ax.legend(handles + h2, labels + l2, loc="center right", fontsize=8)
    ax.set_title(f"{title}: latency distribution", fontsize=10)
    first = out_dir / "latency_distribution.png"
    fig.savefig(first)

    fig = Figure(figsize=(8.0, 4.0), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    calls = np.arange(values.size)
    ax.plot(calls, values, ".", markersize=3, color="#4c72b0", label="one timed call")
    window = max(1, values.size // 20)
    if window > 1:
        rolling = np.convolve(values, np.ones(window) / window, mode="valid")
        ax.plot(calls[window - 1:], rolling, color="#c44e52", linewidth=1.5,
                label=f"mean of {window} calls")
    ax.axhline(median, color="#555555", linestyle="--", linewidth=1,
               label=f"median {median:.2f} ms")
    low, high = float(values.min()), float(values.max())
    pad = max((high - low) * 0.1, median * 0.02)
    ax.set_ylim(max(0.0, low - pad), high + pad)
    ax.set_xlabel("timed call (in order)")
    ax.set_ylabel("latency (ms)")
    ax.set_title(f"{title}: latency by call (drift, throttling)", fontsize=10)
    ax.legend(loc="upper right", fontsize=8)
    second = out_dir / "latency_by_call.png"
    fig.savefig(second)
    return [first, second]


def _try(what: str, call: Any, *args: Any) -> Any:
    try:
        return call(*args)
    except Exception as exc:  # noqa: BLE001 - presentation never fails a job
        log.warning("run presentation: no %s (%s: %s)", what, type(exc).__name__, exc)
        return None


def present_run(tracker: Tracker, job_dir: Path, status: str, error: str | None,
                metrics: Mapping[str, float] | None) -> None:
    """Description, package list and latency figures of one job's run (see module doc)."""
    record = _try("tracking record", lambda: json.loads((job_dir / jobdir.TRACKING).read_text()))
    record = record or {}
    name = str(record.get("name") or job_dir.name)
    tags = record.get("tags") or {}
    _try("package list", tracker.log_text, packages_text(), PACKAGES_FILE)
    if metrics:
        from runner.tracking import display_metrics

        _try("display metrics", tracker.log_metrics, display_metrics(metrics))
    latencies = _try("latencies", read_latencies_ms, job_dir / jobdir.LATENCIES) or []
    figures = _try("latency figures", latency_figures, latencies, name, job_dir / PLOTS_DIR)
    if figures:
        _try("latency figures", tracker.log_artifacts, figures, PLOTS_DIR)
    stability = None
    stability_file = job_dir / jobdir.STABILITY
    if stability_file.is_file():
        verdict = _try("stability", lambda: json.loads(stability_file.read_text())) or {}
        stability = "stable" if verdict.get("stable") else f"unstable: {verdict.get('warning')}"
    row = _try("table row", _row_of, job_dir / jobdir.TABLE_ROW)
    note = describe.run_note(name, status, metrics, row, error,
                             str(tags.get(describe.VARIANT_TAG, "")), stability)
    _try("description", tracker.set_tags, {"mlflow.note.content": note})


def _row_of(path: Path) -> dict[str, str] | None:
    """The row back from table_row.md (header and one row of the public table)."""
    if not path.is_file():
        return None
    lines = [line for line in path.read_text().splitlines() if line.startswith("|")]
    if len(lines) < 3:
        return None

    def cells(line: str) -> list[str]:
        return [c.strip() for c in line.strip().strip("|").split("|")]

    return dict(zip(cells(lines[0]), cells(lines[2]), strict=False))
