"""The job end to end, as a user runs it: ``python -m runner`` in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from runner.evaluate import STAT_NAMES
from runner.results.table import COLUMNS

TIMING = ("images_per_sec", "latency_mean_ms", "latency_median_ms", "latency_min_ms",
          "latency_max_ms", "latency_p90_ms", "latency_p95_ms", "latency_p99_ms", "total_time_s")


def _run(tmp_path: Path, *overrides: str) -> tuple[subprocess.CompletedProcess[str], str]:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    flags = [o for o in overrides if o.startswith("-")]
    rest = [o for o in overrides if not o.startswith("-")]
    cmd = [sys.executable, "-m", "runner", *flags, f"hydra.run.dir={tmp_path / 'out'}",
           f"hydra.sweep.dir={tmp_path / 'multi'}", *rest]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    return proc, uri


def _runs(uri: str) -> list[Run]:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("detbench")
    runs = [] if exp is None else client.search_runs([exp.experiment_id])
    return [r for r in runs if "detbench.model" in r.data.tags]  # not the sweep's parent run


def test_job_end_to_end(tmp_path: Path) -> None:
    proc, uri = _run(tmp_path, "dataset.num_images=60", "benchmark.warmup=3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    header = next(line for line in proc.stdout.splitlines() if line.startswith("| Model"))
    assert [c.strip() for c in header.strip("|").split("|")] == list(COLUMNS)
    assert "MLflow run" in proc.stdout
    assert "#/experiments/1/runs?workflowType=machine_learning" in proc.stdout
    (run,) = _runs(uri)
    assert run.info.status == "FINISHED"
    m = run.data.metrics
    for stat in STAT_NAMES:
        assert f"bbox.{stat}" in m
    assert 0.3 < m["bbox.AP50"] <= 1.0 and 0.15 < m["bbox.AP"] <= m["bbox.AP50"]
    for key in TIMING:
        assert m[key] > 0
    assert m["latency_min_ms"] <= m["latency_median_ms"] <= m["latency_p99_ms"]
    assert m["latency_p99_ms"] <= m["latency_max_ms"]
    assert m["count"] == 60
    assert m["total_time_s"] == pytest.approx(m["count"] / m["images_per_sec"])
    assert m["host_cpu_util_mean"] >= 0 and m["time.load_s"] > 0
    assert m["latency_mean_ci_low_ms"] <= m["latency_mean_ms"] <= m["latency_mean_ci_high_ms"]
    assert m["images_per_sec_ci_low"] <= m["images_per_sec"] <= m["images_per_sec_ci_high"]
    assert run.data.tags["detbench.stability"] in ("stable", "unstable")
    assert run.inputs is not None
    (dataset_input,) = run.inputs.dataset_inputs
    assert dataset_input.dataset.name == "Synthetic shapes val (60 images)"
    assert run.data.params["model.name"] == "demo" and run.data.params["choice.precision"] == "fp32"
    tags = run.data.tags
    assert tags["telemetry.source"] == "psutil" and tags["env.gpu_count"] == "0"
    assert tags["env.tensorflow"] and tags["mlflow.runName"] == "demo@256x256/fp32"
    client = MlflowClient(uri)
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "detections.json", "latencies.csv", "samples.csv",
            "table_row.md"} <= names
    latencies = Path(client.download_artifacts(run.info.run_id, "latencies.csv", str(tmp_path)))
    assert len(latencies.read_text().splitlines()) == 61
    assert client.get_metric_history(run.info.run_id, "sample.cpu.host_cpu_util_pct")


def test_config_error_fails_before_any_run(tmp_path: Path) -> None:
    proc, uri = _run(tmp_path, "dataset.num_images=0")
    assert proc.returncode == 2
    assert "dataset.num_images=0" in proc.stderr and "Traceback" not in proc.stderr
    assert _runs(uri) == []


@pytest.mark.slow  # a broken model in the fast lane: test_export.py (its sweep)
def test_broken_model_ends_failed_with_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad_model"
    bad.mkdir()
    (bad / "saved_model.pb").write_bytes(b"\x00garbage")
    proc, uri = _run(tmp_path, "model=custom", f"model.path={bad}", "dataset.num_images=2")
    assert proc.returncode == 1
    (run,) = _runs(uri)
    assert run.info.status == "FAILED" and run.data.tags["error"]
    names = {a.path for a in MlflowClient(uri).list_artifacts(run.info.run_id, "error")}
    assert "error/traceback.txt" in names


@pytest.mark.slow  # -m sweeps in the fast lane: test_export.py, test_lifecycle.py
def test_multirun_over_warmup(tmp_path: Path) -> None:
    proc, uri = _run(tmp_path, "-m", "benchmark.warmup=1,2", "dataset.num_images=4",
                     "benchmark.telemetry=false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = _runs(uri)
    assert sorted(r.data.params["benchmark.warmup"] for r in runs) == ["1", "2"]
    assert all(r.info.status == "FINISHED" for r in runs)


def _int8(tmp_path: Path, *overrides: str) -> tuple[list[Any], Any]:
    from runner import config, data, job
    from tests.conftest import compose_job

    cfg = config.to_object(compose_job(["precision=trt_int8", "dataset.num_images=20",
                                        "precision.trt.calibration_images=8", *overrides]))
    dataset = data.load_dataset(cfg.dataset, cfg.cache_dir)
    return job._calibration(cfg, dataset, tmp_path), dataset


def test_int8_calibration_draws_unscored_images_without_a_second_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from runner import data

    real_load = data.load_dataset
    loads: list[str] = []

    def counted(cfg: Any, cache_dir: str) -> data.Dataset:
        loads.append(cfg.split)
        return real_load(cfg, cache_dir)

    monkeypatch.setattr(data, "load_dataset", counted)
    rows, dataset = _int8(tmp_path, "dataset.calibration_split=null")
    scored = {r.image_id for r in dataset.images}
    chosen = {row["image_id"] for row in rows}
    assert len(rows) == 8 and not scored & chosen
    assert chosen <= {r.image_id for r in dataset.unscored}
    assert loads == ["val"]  # the job's own load only
    written = json.loads((tmp_path / "calibration.json").read_text())
    assert written["count"] == 8 and written["images"] == rows
    assert [data.ImageRecord.from_json(row) for row in rows] == sorted(
        (r for r in dataset.unscored if r.image_id in chosen), key=lambda r: r.image_id)


def test_int8_calibration_names_a_missing_image_file(tmp_path: Path) -> None:
    from dataclasses import replace

    from runner import config, data, job
    from tests.conftest import compose_job

    cfg = config.to_object(compose_job(["precision=trt_int8", "dataset.num_images=20",
                                        "dataset.calibration_split=null",
                                        "precision.trt.calibration_images=8"]))
    dataset = data.load_dataset(cfg.dataset, cfg.cache_dir)
    gone = tuple(replace(r, path=tmp_path / "gone" / r.path.name) for r in dataset.unscored)
    with pytest.raises(config.ConfigError, match=r"8 calibration image file\(s\) are missing, "
                                                 r"e\.g\. '.*/gone/"):
        job._calibration(cfg, replace(dataset, unscored=gone), tmp_path)


@pytest.mark.parametrize("policy, dropped", [("native", 0), ("seed", 50)])
def test_partial_statistics_follow_the_input_policy(tmp_path: Path, policy: str,
                                                    dropped: int) -> None:
    """A job that did not finish gets ``partial.*`` over the latencies its log holds; under the
    ``seed`` policy without the first 50 timings of each pass, as the finished statistics."""
    from runner import job, jobdir
    from runner.worker import SEED_DROPPED_TIMINGS

    assert dropped in (0, SEED_DROPPED_TIMINGS)
    log = jobdir.create_latency_log(tmp_path, 2, 100)
    log[0, :80] = 0.010  # the first pass measured 80 of 100 images, the second 60
    log[1, :60] = 0.020
    log[:, :SEED_DROPPED_TIMINGS] = 1.0  # slow first calls: left out under the seed policy only
    images = [{"image_id": i, "path": f"{i}.jpg", "width": 4, "height": 4} for i in range(100)]
    jobdir.write_json(tmp_path / jobdir.JOB, {"cfg": {"benchmark": {"input_policy": policy}},
                                              "dataset": {"images": images}})
    partial = job._partial_metrics(tmp_path)
    assert partial["partial.count"] == 140 - 2 * dropped
    assert partial["partial.latency_max_ms"] == pytest.approx(20.0 if dropped else 1000.0)
