"""runner.results.plots: the timeline from samples.csv (phases from telemetry.json, else from the
samples) and from the metric histories alone, the Pareto front (the report's figures on real
runs are checked in tests/test_export.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from runner.results import plots
from runner.results.table import PRECISION_COLUMN
from tests.conftest import check_png


def test_timeline_of_gpu_samples_and_from_metric_history(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'gpu.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("detbench")
    rows = []
    for i in range(60):
        t = i * 0.1
        phase = "load" if t < 1 else "prepare" if t < 1.5 else "warmup" if t < 2.5 else \
            "timed" if t < 5.8 else "done"
        for gpu in ("gpu0", "gpu1"):
            rows.append({"t_s": t, "phase": phase, "device": gpu,
                         "gpu_util_pct": 90.0 if phase in ("warmup", "timed") else 5.0,
                         "power_w": 250.0 if phase == "timed" else 60.0 + i})
    pd.DataFrame(rows).to_csv(tmp_path / "samples.csv", index=False)
    run = client.create_run(exp, run_name="gpu run").info.run_id
    client.log_artifact(run, str(tmp_path / "samples.csv"))
    samples = plots.load_samples(uri, run)
    assert plots._timeline_quantities(samples) == ("gpu_util_pct", ["gpu0", "gpu1"], "power_w")
    spans = plots.phase_spans(samples)
    assert [p for p, _, _ in spans] == ["load", "prepare", "warmup", "timed", "done"]
    assert spans[2][1:] == pytest.approx((1.5, 2.5))
    assert plots.load_phases(uri, run) is None  # no telemetry.json: the samples' phases serve
    out = plots.plot_timeline(uri, run, tmp_path / "out")
    assert out.name == f"timeline_{run}.png"
    check_png(out, (1200, 500))
    marked = [["load", 0.0, 1.02], ["warmup", 1.02, 1.04], ["timed", 1.04, 5.9]]
    (tmp_path / "telemetry.json").write_text(json.dumps({"intervals": marked}))
    client.log_artifact(run, str(tmp_path / "telemetry.json"))
    assert plots.load_phases(uri, run) == [tuple(m) for m in marked]  # a warm-up between samples
    check_png(plots.plot_timeline(uri, run, tmp_path / "out"), (1200, 500))

    bare = client.create_run(exp, run_name="series only").info.run_id
    for i in range(20):  # the time series alone (no samples.csv): no phases
        client.log_metric(bare, "sample.gpu0.gpu_util_pct", 10.0 * (i % 10), 1_000 + 50 * i, i)
        client.log_metric(bare, "sample.gpu0.power_w", 100.0 + i, 1_000 + 50 * i, i)
    samples = plots.load_samples(uri, bare)
    assert list(samples["t_s"]) == pytest.approx([0.05 * i for i in range(20)])
    assert plots.phase_spans(samples) == []
    check_png(plots.plot_timeline(uri, bare, tmp_path / "out"), (1200, 500))
    empty = client.create_run(exp, run_name="nothing").info.run_id
    with pytest.raises(plots.NoSamplesError, match="no utilization samples"):
        plots.plot_timeline(uri, empty, tmp_path / "out")


def test_pareto_front() -> None:
    lat, ap = [10.0, 20.0, 15.0, 30.0, 10.0, 40.0], [30.0, 40.0, 25.0, 45.0, 20.0, 44.0]
    assert plots.pareto_front(lat, ap) == [0, 1, 3]
    assert plots.pareto_front([], []) == []


# -- the report's figures at the zoo's scale (tests/zoo_frame.py) ------------------------------


@pytest.fixture(scope="module")
def zoo_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, object]]:
    """The report of the constructed zoo-scale store; the figures drawn are kept too."""
    from runner.results.export import write_report
    from tests.zoo_frame import zoo_runs

    out = tmp_path_factory.mktemp("zoo")
    figures: dict[str, object] = {}
    original = plots._save

    def keep(fig: object, path: Path) -> Path:
        figures[path.name] = fig
        return original(fig, path)

    mp = pytest.MonkeyPatch()
    mp.setattr(plots, "_save", keep)
    try:
        write_report(zoo_runs(), out)
    finally:
        mp.undo()
    return out, figures


def test_zoo_scale_report_tells_rows_apart_and_aggregates_repeats(
        zoo_report: tuple[Path, dict[str, object]]) -> None:
    from runner.results.export import read_table_csv
    from tests import zoo_frame

    out, _ = zoo_report
    frame = read_table_csv(out / "table.csv")
    # three runs of one config: one row, their mean, n and spread, a t-interval
    repeated = frame[frame["model"] == zoo_frame.REPEATED]
    assert len(repeated) == 1 and int(repeated["n"].iloc[0]) == 3
    assert repeated["images/sec_min"].iloc[0] < repeated["images/sec"].iloc[0] \
        < repeated["images/sec_max"].iloc[0]
    assert len(repeated["run_ids"].iloc[0].split(";")) == 3
    # a swept setting: two rows, told apart by their Variant
    swept = frame[frame["model"] == zoo_frame.SWEPT]
    assert sorted(swept["Variant"]) == ["benchmark.warmup=10", "benchmark.warmup=50"]
    md = (out / "table.md").read_text()
    assert "benchmark.warmup=10" in md and "benchmark.warmup=50" in md
    # COCO's -1: n/a in table.md and table.csv, NaN (not -1, not -100) when read back
    no_small = frame[frame["model"] == zoo_frame.NO_SMALL].iloc[0]
    assert pd.isna(no_small["APsmall"])
    def cells(line: str) -> list[str]:
        return [c.strip() for c in line.strip().strip("|").split("|")]

    header = cells(md.splitlines()[0])
    row = next(line for line in md.splitlines() if "FPNLite" in line and "320x320" in line)
    assert dict(zip(header, cells(row), strict=True))["APsmall"] == "n/a"
    assert "n/a" in (out / "table.csv").read_text()


def test_zoo_scale_figures(zoo_report: tuple[Path, dict[str, object]],
                           caplog: pytest.LogCaptureFixture) -> None:
    """Real PNGs; labels placed without overlap; one Pareto front per precision; one bar per
    row (no merging), each with its 95 % interval."""
    from tests import zoo_frame

    out, figures = zoo_report
    for name in ("ap_vs_latency.png", "throughput.png", "latency_mean.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    scatter = figures["ap_vs_latency.png"].axes[0]  # type: ignore[attr-defined]
    texts = [t for t in scatter.texts if t.get_text()]
    frame = pd.read_csv(out / "table.csv")
    finished = frame[frame["status"] == "FINISHED"]
    assert len(texts) == len(finished)
    assert plots.label_overlaps(scatter, texts) == 0
    fronts = [line for line in scatter.get_lines() if line.get_linestyle() == "--"
              and len(line.get_xdata()) > 0]
    assert len(fronts) == finished[PRECISION_COLUMN].nunique() == 2
    bars = figures["throughput.png"].axes[0]  # type: ignore[attr-defined]
    assert len(bars.patches) == len(finished)
    assert "95% interval" in bars.get_xlabel()
    labels = [t.get_text() for t in bars.get_yticklabels()]
    assert len(set(labels)) == len(labels)  # every bar tells itself apart
    assert any("(n=3)" in lab for lab in labels) and any("unstable" in lab for lab in labels)
    assert sum(zoo_frame.SWEPT in lab or "warmup=" in lab for lab in labels) == 2


def test_ap_axis_never_zooms_into_noise(tmp_path: Path) -> None:
    """AP 71.207-71.236 (four runs of the demo) on an axis of at least MIN_AP_SPAN points."""
    from tests.zoo_frame import zoo_runs

    runs = zoo_runs().head(4).copy()
    runs["metrics.bbox.AP"] = [0.71207, 0.71236, 0.71221, 0.71230]
    figures: dict[str, object] = {}
    original = plots._save

    def keep(fig: object, path: Path) -> Path:
        figures[path.name] = fig
        return original(fig, path)

    from runner.results.export import write_report

    mp = pytest.MonkeyPatch()
    mp.setattr(plots, "_save", keep)
    try:
        write_report(runs, tmp_path)
    finally:
        mp.undo()
    low, high = figures["ap_vs_latency.png"].axes[0].get_ylim()  # type: ignore[attr-defined]
    assert high - low >= plots.MIN_AP_SPAN and low < 71.207 and high > 71.236
