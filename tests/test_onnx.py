"""ONNX Runtime for real: the shipped demo detector converted with tf2onnx, timed and evaluated
through ``python -m runner`` beside Native FP32 in one sweep; config checks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from runner import config
from runner.config import ConfigError
from tests.conftest import compose_job

#: |AP(ONNX Runtime FP32) - AP(Native FP32)| allowed, AP points x100, same images and inputs:
#: the same float32 model (outputs measured equal to 4e-7); ties in NMS may reorder a box
AP_TOLERANCE = 0.1


@pytest.mark.timeout(900)
def test_onnx_runtime_converts_times_and_keeps_ap(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("tf2onnx")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cmd = [sys.executable, "-m", "runner", "-m", f"hydra.sweep.dir={tmp_path / 'm'}",
           "precision=fp32,onnx_fp32", "precision.onnx.intra_op_threads=1",
           "dataset.num_images=30", "benchmark.warmup=2", "benchmark.telemetry=false",
           "benchmark.isolate=false"]
    proc = subprocess.run(cmd, cwd=tmp_path, env={**os.environ, "MLFLOW_TRACKING_URI": uri},
                          capture_output=True, text=True, timeout=850)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("detbench")
    assert exp is not None
    runs = {r.data.tags["detbench.precision"]: r for r in client.search_runs([exp.experiment_id])
            if "detbench.precision" in r.data.tags}
    native, onnx = runs["fp32"], runs["onnx_fp32"]
    tags, metrics = onnx.data.tags, onnx.data.metrics
    assert onnx.info.status == "FINISHED", tags.get("error")
    assert tags["backend.backend"] == "onnx" and tags["backend.opset"] == "17"
    assert tags["backend.converter"].startswith("tf2onnx 1.")
    assert tags["backend.providers_active"].split(",")[0] == "CPUExecutionProvider"
    assert tags["backend.intra_op_threads"] == "1"
    assert tags["backend.input_shape"] == "[1, None, None, 3]"  # the model's own, no resize
    assert tags["env.onnxruntime"] == tags["backend.onnxruntime"]
    diff = 100 * (metrics["bbox.AP"] - native.data.metrics["bbox.AP"])
    assert abs(diff) <= AP_TOLERANCE, diff
    assert metrics["reference.bbox.AP_diff"] == pytest.approx(diff, abs=1e-6)
    assert metrics["onnx.model_bytes"] > 0 and metrics["onnx.conversion_s"] > 0


@pytest.mark.parametrize(("override", "message"), [
    ("precision.onnx.graph_optimization_level=max",
     r"graph_optimization_level='max' is not valid; choose one of: disable, basic, extended"),
    ("precision.onnx.intra_op_threads=-2", r"precision.onnx.intra_op_threads=-2 is not valid"),
    ("precision.onnx.opset=5", r"precision.onnx.opset=5 is not valid"),
])
def test_bad_onnx_values_are_named(override: str, message: str) -> None:
    cfg = config.to_object(compose_job(["precision=onnx_fp32", override]))
    with pytest.raises(ConfigError, match=message):
        config.validate(cfg)


def test_a_provider_that_is_not_here_is_refused_before_anything_runs() -> None:
    pytest.importorskip("onnxruntime")
    from runner import backends

    cfg = config.to_object(compose_job(["precision=onnx_fp32",
                                        "precision.onnx.providers=[TensorrtExecutionProvider]"]))
    with pytest.raises(backends.UnsupportedPrecision, match="onnxruntime-gpu"):
        backends.check_available(cfg.precision)
