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
