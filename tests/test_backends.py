"""The backend registry: a backend defined outside runner/ plugs in through DETBENCH_BACKENDS
and runs end to end (its config section, availability check once per job, calibration, input
hook, environment field), and the registry's validation and table order."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from runner import backends, config, environment
from runner.config import ConfigError
from tests.conftest import ROOT, compose_job, runs_by_precision


def test_a_dummy_backend_plugs_in_without_touching_the_orchestrator(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    calls = tmp_path / "calls.txt"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "DETBENCH_BACKENDS": "tests.dummy_backend",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "runner", f"hydra.run.dir={tmp_path / 'run'}",
           "precision.backend=dummy", "precision.name=dummy", "precision.display_name=Dummy FP32",
           f"precision.dummy.calls_file={calls}", "dataset.num_images=6",
           "dataset.calibration_split=null", "benchmark.warmup=1", "benchmark.telemetry=false"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("detbench")
    assert exp is not None
    (run,) = client.search_runs([exp.experiment_id])
    tags, metrics = run.data.tags, run.data.metrics
    assert run.info.status == "FINISHED"
    assert tags["backend.backend"] == "dummy"
    assert tags["backend.input_type"] == "ndarray"  # every timed call got the hook's format
    assert tags["backend.calibration_images"] == "3" and metrics["dummy.calibration_images"] == 3
    assert tags["env.dummy_runtime"] == "1.0"  # the backend's environment field ...
    plain = {k: v for k, v in tags.items() if k.startswith("env.") and k != "env.dummy_runtime"}
    assert tags["env.key"] != environment.environment_key(plain)  # ... is part of env.key
    assert "Dummy FP32" in proc.stdout
    pids = calls.read_text().split()
    assert len(pids) == 1, pids  # checked once per job: the parent, not the child again
    assert tags["backend.available_pid"] == pids[0]  # the child got the parent's result


def test_unknown_backend_names_the_registered_ones() -> None:
    cfg = config.to_object(compose_job(["precision.backend=coreml"]))
    with pytest.raises(ConfigError, match=r"precision.backend='coreml' is not valid; choose one "
                                          r"of: native, tftrt, litert, onnx, openvino"):
        config.validate(cfg)


def test_a_field_of_another_backend_is_refused() -> None:
    cfg = config.to_object(compose_job(["precision=litert_fp32", "precision.amp=bf16"]))
    with pytest.raises(ConfigError, match=r"precision.amp='bf16' applies to the native backend "
                                          r"only, but precision.backend='litert'"):
        config.validate(cfg)
    # a section of another backend may carry sweep-wide values
    config.validate(config.to_object(compose_job(["precision=fp32",
                                                  "precision.litert.num_threads=2"])))


def test_table_order_comes_from_the_plugins() -> None:
    labels = ["LiteRT INT8", "TF-TRT FP16", "Native AMP BF16", "LiteRT FP32", "Native FP32",
              "TF-TRT INT8", "TF-TRT FP32"]
    assert sorted(labels, key=backends.table_rank) == [
        "Native FP32", "TF-TRT FP32", "TF-TRT FP16", "TF-TRT INT8", "LiteRT FP32", "LiteRT INT8",
        "Native AMP BF16"]


def test_every_precision_config_names_a_registered_backend() -> None:
    for path in sorted((ROOT / "conf" / "precision").glob("*.yaml")):
        cfg = config.to_object(compose_job([f"precision={path.stem}"]))
        config.validate(cfg)
        plugin = backends.get(cfg.precision.backend)
        assert cfg.precision.display_name in plugin.display_order or plugin.name == "native", (
            path.name)


def test_reference_precision_is_the_default_one() -> None:
    def ref(*overrides: str) -> bool:
        cfg = config.to_object(compose_job(list(overrides)))
        return backends.is_reference(cfg.precision, config.PrecisionConfig)

    assert ref("precision=fp32") and ref("precision=fp32", "precision.litert.mode=int8")
    assert not ref("precision=amp_bf16") and not ref("precision=litert_fp32")
    assert not ref("precision=fp32", "precision.xla=true")


def _runner(tmp_path: Path, *args: str, env: dict[str, str] | None = None,
            multirun: bool = False, cache: Path | None = None
            ) -> tuple[subprocess.CompletedProcess[str], Path]:
    """``python -m runner``; an empty cache under tmp_path unless ``cache`` is given (the
    session's: the synthetic split is not generated again)."""
    db = tmp_path / "mlflow.db"
    cmd = [sys.executable, "-m", "runner", *(["-m"] if multirun else []),
           f"hydra.run.dir={tmp_path / 'run'}", f"hydra.sweep.dir={tmp_path / 'sweep'}",
           f"tracking.uri=sqlite:///{db}", f"cache_dir={cache or tmp_path / 'cache'}", *args]
    proc = subprocess.run(cmd, cwd=tmp_path, env={**os.environ, **(env or {})},
                          capture_output=True, text=True, timeout=600)
    return proc, db


def _runs_in(db: Path) -> list[str]:
    """Precisions of the job runs in the store (a sweep's own parent run aside)."""
    if not db.exists():
        return []
    client = MlflowClient(f"sqlite:///{db}")
    exp = client.get_experiment_by_name("detbench")
    if exp is None:
        return []
    return [r.data.tags.get("detbench.precision", "?") for r in
            client.search_runs([exp.experiment_id]) if "detbench.sweep" not in r.data.tags]


@pytest.mark.parametrize("precision, needle", [
    ("trt_fp16", "TF-TRT is not available"),  # TensorFlow here has no TensorRT
    ("amp_fp16", "needs an NVIDIA GPU"),  # CUDA_VISIBLE_DEVICES=-1 hides any GPU
])
def test_an_unavailable_precision_asked_for_alone_exits_2_with_one_line(
        tmp_path: Path, precision: str, needle: str) -> None:
    # a zoo model not in the (empty) cache: a download attempted first would fail differently
    proc, db = _runner(tmp_path, "model=centernet_resnet50_v2", f"precision={precision}",
                       env={"CUDA_VISIBLE_DEVICES": "-1"})
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0] and lines[0].startswith("detbench: "), lines
    assert _runs_in(db) == []
    assert not list((tmp_path / "cache").rglob("*.tar.gz"))  # nothing downloaded


def test_a_sweep_skips_unavailable_precisions_with_their_reason(tmp_path: Path,
                                                               cache_dir: Path) -> None:
    proc, db = _runner(tmp_path, "precision=trt_fp16,amp_fp16,fp32",
                       "dataset.num_images=4", "dataset.calibration_split=null",
                       "benchmark.warmup=1", "benchmark.telemetry=false",
                       env={"CUDA_VISIBLE_DEVICES": "-1"}, multirun=True, cache=cache_dir)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = proc.stdout[proc.stdout.index("Sweep summary"):]
    assert "1 finished, 2 skipped" in summary, summary
    skipped = [line for line in summary.splitlines() if line.strip().startswith("SKIPPED")]
    assert any("trt_fp16" in line and "not built with TensorRT" in line for line in skipped)
    assert any("amp_fp16" in line and "needs an NVIDIA GPU" in line for line in skipped)
    assert "make docker-bench" in proc.stdout  # TF-TRT's own message: where to run it
    assert _runs_in(db) == ["fp32"]  # no run was created for the skipped ones
    assert runs_by_precision(f"sqlite:///{db}")["fp32"].info.status == "FINISHED"
