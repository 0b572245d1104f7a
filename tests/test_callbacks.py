"""SweepParentRun composed directly, with child runs made by hand through MlflowClient (the real
sweep, with runner jobs, is in tests/test_export.py)."""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.utils import JobReturn, JobStatus
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig

from runner.callbacks import PARENT_ENV, SWEEP_TAG, SweepParentRun, sweep_params, sweep_status
from runner.evaluate import STAT_NAMES
from runner.results.table import COLUMNS
from tests.conftest import CONF_DIR

ARGV = ["/x/runner/__main__.py", "-m", "benchmark.warmup=5,10", "tracking.uri=sqlite:///a b.db"]
PLOTS = {"latency_mean.png", "ap_vs_latency.png", "throughput.png"}


@pytest.fixture(scope="module")
def uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One store for the module (creating one takes a second): sweeps differ by parent id."""
    return f"sqlite:///{tmp_path_factory.mktemp('callbacks') / 'store.db'}"


@pytest.fixture
def sweep_cfg(tmp_path: Path, uri: str) -> DictConfig:
    overrides = ["benchmark.warmup=5", f"tracking.uri={uri}", f"hydra.sweep.dir={tmp_path / 'sw'}"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=overrides, return_hydra_config=True)


@pytest.fixture
def started(sweep_cfg: DictConfig, monkeypatch: pytest.MonkeyPatch) -> Iterator[SweepParentRun]:
    monkeypatch.setattr(sys, "argv", ARGV)
    monkeypatch.delenv(PARENT_ENV, raising=False)
    callback = SweepParentRun()
    callback.on_multirun_start(config=sweep_cfg)
    yield callback
    if callback.run_id is not None:  # a failed test: never leave the run open
        callback.close("KILLED")


def _child(uri: str, parent: str | None, status: str = "FINISHED", latency_ms: float = 20.0,
           error: str | None = None, model: str = "m1") -> str:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("detbench")
    assert exp is not None
    tags = {"detbench.model": model, "detbench.resolution": "256x256",
            "detbench.precision": "fp32", "env.key": "k1", "env.gpu_name": "none",
            "env.tensorflow": "2.99", "env.cpu_model": "cpu"}
    if parent:
        tags["mlflow.parentRunId"] = parent
    if error:
        tags["error"] = error
    run = client.create_run(exp.experiment_id, run_name=f"{model}@256x256/fp32", tags=tags)
    run_id = run.info.run_id
    client.log_param(run_id, "model.display_name", f"Model {model}")
    client.log_param(run_id, "precision.display_name", "Native FP32")
    if status == "FINISHED":
        for i, stat in enumerate(STAT_NAMES):
            client.log_metric(run_id, f"bbox.{stat}", 0.3 + i / 100)
        for name in ("latency_mean_ms", "latency_median_ms", "latency_min_ms", "latency_p99_ms"):
            client.log_metric(run_id, name, latency_ms)
        client.log_metric(run_id, "images_per_sec", 1000 / latency_ms)
        client.log_metric(run_id, "total_time_s", latency_ms / 100)
    if status != "RUNNING":
        client.set_terminated(run_id, status)
    return run_id


def _artifacts(uri: str, run_id: str) -> set[str]:
    return {a.path for a in MlflowClient(uri).list_artifacts(run_id)}


def _table(uri: str, run_id: str, tmp_path: Path) -> list[list[str]]:
    path = MlflowClient(uri).download_artifacts(run_id, "table.md", str(tmp_path))
    lines = Path(path).read_text().splitlines()
    return [[c.strip() for c in line.strip("|").split("|")] for line in lines]


def test_start_creates_parent_and_exposes_its_id(started: SweepParentRun, uri: str) -> None:
    assert started.run_id and os.environ[PARENT_ENV] == started.run_id
    run = MlflowClient(uri).get_run(started.run_id)
    assert run.info.status == "RUNNING"
    assert run.info.run_name.startswith("sweep 20") and len(run.info.run_name) == 25
    assert run.data.tags[SWEEP_TAG] == "true" and "detbench.model" not in run.data.tags
    params = run.data.params
    assert params["command"] == shlex.join(ARGV)
    assert params["overrides"] == f"benchmark.warmup=5 tracking.uri={uri}"
    assert params["override.benchmark.warmup"] == "5"
    assert params["override.tracking.uri"] == uri


def test_all_children_finished_parent_finished_with_report(
        started: SweepParentRun, sweep_cfg: DictConfig, uri: str, tmp_path: Path) -> None:
    parent = started.run_id
    assert parent is not None
    kids = [_child(uri, parent, latency_ms=20.0), _child(uri, parent, latency_ms=10.0)]
    _child(uri, None, "FAILED", error="not mine")  # a run of no sweep: ignored
    started.on_job_end(config=sweep_cfg, job_return=JobReturn(
        status=JobStatus.COMPLETED, _return_value={"status": "FINISHED"}))
    started.on_job_end(config=sweep_cfg, job_return=JobReturn(
        status=JobStatus.COMPLETED, _return_value={"status": "SKIPPED"}))
    started.on_multirun_end(config=sweep_cfg)
    assert started.run_id is None and PARENT_ENV not in os.environ
    client = MlflowClient(uri)
    run = client.get_run(parent)
    assert run.info.status == "FINISHED"
    assert run.data.tags["detbench.children"] == "2 FINISHED"
    assert {"table.md", "table.csv", *PLOTS} <= _artifacts(uri, parent)
    header, _, *rows = _table(uri, parent, tmp_path)
    assert header == list(COLUMNS) and len(rows) == 2
    assert [r[0] for r in rows] == ["Model m1", "Model m1"]
    assert [r[COLUMNS.index("latency_mean(ms)")] for r in rows] == ["20.00", "10.00"]
    assert (tmp_path / "sw" / "report" / "table.md").is_file()  # also next to the jobs' outputs
    assert all(client.get_run(k).data.tags["mlflow.parentRunId"] == parent for k in kids)


def test_a_failed_child_fails_the_parent(started: SweepParentRun, sweep_cfg: DictConfig,
                                         uri: str, tmp_path: Path) -> None:
    parent = started.run_id
    assert parent is not None
    _child(uri, parent)
    _child(uri, parent, "FAILED", error="ValueError: boom\nmore", model="m2")
    started.on_multirun_end(config=sweep_cfg)
    run = MlflowClient(uri).get_run(parent)
    assert run.info.status == "FAILED"
    assert run.data.tags["detbench.children"] == "1 FAILED, 1 FINISHED"
    _, _, *rows = _table(uri, parent, tmp_path)
    failed = next(r for r in rows if r[0] == "Model m2")
    assert failed[COLUMNS.index("AP")] == "failed: ValueError: boom"
    assert all(cell == "" for cell in failed[COLUMNS.index("AP50"):])


def test_a_child_left_running_fails_the_parent(started: SweepParentRun, sweep_cfg: DictConfig,
                                               uri: str) -> None:
    assert started.run_id is not None
    parent = started.run_id
    _child(uri, parent, "RUNNING")
    started.on_multirun_end(config=sweep_cfg)
    assert MlflowClient(uri).get_run(parent).info.status == "FAILED"


def test_all_skipped_is_finished_without_plots(started: SweepParentRun, sweep_cfg: DictConfig,
                                               uri: str) -> None:
    parent = started.run_id
    assert parent is not None
    started.on_multirun_end(config=sweep_cfg)
    run = MlflowClient(uri).get_run(parent)
    assert run.info.status == "FINISHED" and run.data.tags["detbench.children"] == "none"
    assert _artifacts(uri, parent) == {"table.md", "table.csv"}


def test_a_job_that_failed_without_a_run_fails_the_parent(
        started: SweepParentRun, sweep_cfg: DictConfig, uri: str) -> None:
    parent = started.run_id
    assert parent is not None
    _child(uri, parent)
    started.on_job_end(config=sweep_cfg, job_return=JobReturn(
        status=JobStatus.FAILED, _return_value=RuntimeError("no run")))
    started.on_multirun_end(config=sweep_cfg)
    assert MlflowClient(uri).get_run(parent).info.status == "FAILED"


def test_sweep_that_never_ends_is_closed_failed_at_exit(
        sweep_cfg: DictConfig, uri: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PARENT_ENV, "outer")
    callback = SweepParentRun(report=False)
    callback.on_multirun_start(config=sweep_cfg)
    parent = callback.run_id
    assert parent is not None and os.environ[PARENT_ENV] == parent
    callback._abandoned()  # what atexit runs when on_multirun_end never came
    run = MlflowClient(uri).get_run(parent)
    assert run.info.status == "FAILED" and "before its end callback" in run.data.tags["error"]
    assert os.environ[PARENT_ENV] == "outer"  # the previous value is back
    callback.on_multirun_end(config=sweep_cfg)  # nothing left to do
    assert MlflowClient(uri).get_run(parent).info.status == "FAILED"


def test_explicit_uri_and_experiment_win_over_the_config(
        sweep_cfg: DictConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PARENT_ENV, raising=False)
    other = f"sqlite:///{tmp_path / 'other.db'}"
    callback = SweepParentRun(tracking_uri=other, experiment="sweeps", report=False)
    callback.on_multirun_start(config=sweep_cfg)
    parent = callback.run_id
    assert parent is not None
    callback.on_multirun_end(config=sweep_cfg)
    client = MlflowClient(other)
    run = client.get_run(parent)
    exp = client.get_experiment(run.info.experiment_id)
    assert exp.name == "sweeps" and run.info.status == "FINISHED"


def test_sweep_params_and_status_rules() -> None:
    params = sweep_params(["a", "b c"], ["+x=1", "~y", "model@m=q", "++hydra/launcher=s"])
    assert params["command"] == "a 'b c'"
    assert params["overrides"] == "+x=1 ~y model@m=q ++hydra/launcher=s"
    assert params["override.x"] == "1" and params["override.model_m"] == "q"
    assert params["override.hydra/launcher"] == "s" and "override.y" not in params
    assert len(sweep_params(["x" * 7000], [])["command"]) == 6000
    assert sweep_status([]) == "FINISHED"
    assert sweep_status(["FINISHED", "FINISHED"]) == "FINISHED"
    assert sweep_status(["FINISHED", "KILLED"]) == "FAILED"
    assert sweep_status(["FINISHED"], jobs_failed=1) == "FAILED"


def test_config_names_the_callbacks_module_and_the_old_path_still_resolves(
        sweep_cfg: DictConfig) -> None:
    """conf/config.yaml's hydra.callbacks point at runner.callbacks (one module for both);
    ``runner.sweep.SweepSummary``, named by configs and job dirs written before the merge,
    resolves to the same class."""
    from hydra.utils import get_class

    from runner.callbacks import SweepSummary

    targets = {name: entry["_target_"] for name, entry in sweep_cfg.hydra.callbacks.items()}
    assert targets == {"sweep_summary": "runner.callbacks.SweepSummary",
                       "sweep_parent": "runner.callbacks.SweepParentRun"}
    assert get_class("runner.sweep.SweepSummary") is SweepSummary


def test_sweep_summary_counts_failures_and_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    from runner.callbacks import SweepSummary

    summary = SweepSummary()
    done = JobReturn(overrides=["model=a"], status=JobStatus.COMPLETED,
                     _return_value={"name": "a@256", "status": "FINISHED"})
    skipped = JobReturn(overrides=["model=b"], status=JobStatus.COMPLETED,
                        _return_value={"name": "b@256", "status": "SKIPPED", "error": "why"})
    raised = JobReturn(overrides=["model=c"], status=JobStatus.FAILED,
                       _return_value=OSError("disk full"))
    for job in (done, skipped):
        summary.on_job_end(config=DictConfig({}), job_return=job)
    summary.on_multirun_end(config=DictConfig({}))  # all went well: no exit
    assert "1 finished, 1 skipped" in capsys.readouterr().out
    summary.on_job_end(config=DictConfig({}), job_return=raised)
    with pytest.raises(SystemExit) as exited:
        summary.on_multirun_end(config=DictConfig({}))
    assert exited.value.code == 1
    out = capsys.readouterr().out
    lines = [line.split() for line in out.splitlines()]
    assert ["FAILED", "model=c", "OSError:", "disk", "full"] in lines
    assert ["SKIPPED", "b@256", "[model=b]", "why"] in lines
