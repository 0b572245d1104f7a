"""ONNX Runtime for real: the shipped demo detector converted with tf2onnx (FP32, and statically
quantized to INT8 on disjoint calibration images), timed and evaluated through
``python -m runner`` beside Native FP32 in one sweep, then exported; config checks."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from runner import config
from runner.config import ConfigError
from tests.conftest import compose_job, runs_by_precision

#: |AP(ONNX Runtime FP32) - AP(Native FP32)| allowed, AP points x100, same images and inputs:
#: the same float32 model (outputs measured equal to 4e-7); ties in NMS may reorder a box
AP_TOLERANCE = 0.1


#: AP(ONNX Runtime INT8) - AP(Native FP32) allowed below zero, AP points x100, 30 demo images:
#: static INT8 of the convolutions (calibrated on 10 disjoint images) moves boxes by a quantization
#: step; LiteRT INT8 on the same demo lost 1.35 points on 100 images (benchmarks/README.md)
INT8_AP_TOLERANCE = 5.0


@dataclass
class Sweep:
    runs: dict[str, Any]
    uri: str
    stdout: str


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Sweep:
    """One sweep: Native FP32, ONNX Runtime FP32 and INT8 on the shipped demo, 30 images."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("tf2onnx")
    tmp_path = tmp_path_factory.mktemp("onnx")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cmd = [sys.executable, "-m", "runner", "-m", f"hydra.sweep.dir={tmp_path / 'm'}",
           "precision=fp32,onnx_fp32,onnx_int8", "precision.onnx.intra_op_threads=1",
           "precision.onnx.calibration_images=10", "dataset.num_images=30",
           "benchmark.warmup=2", "benchmark.telemetry=false", "benchmark.isolate=false"]
    proc = subprocess.run(cmd, cwd=tmp_path, env={**os.environ, "MLFLOW_TRACKING_URI": uri},
                          capture_output=True, text=True, timeout=1150)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    runs = runs_by_precision(uri)
    return Sweep(runs, uri, proc.stdout)


@pytest.mark.timeout(1200)
@pytest.mark.slow
def test_onnx_runtime_converts_times_and_keeps_ap(sweep: Sweep) -> None:
    native, onnx = sweep.runs["fp32"], sweep.runs["onnx_fp32"]
    tags, metrics = onnx.data.tags, onnx.data.metrics
    assert onnx.info.status == "FINISHED", tags.get("error")
    assert tags["backend.backend"] == "onnx" and tags["backend.opset"] == "17"
    assert tags["backend.converter"].startswith("tf2onnx 1.")
    assert tags["backend.providers_active"].split(",")[0] == "CPUExecutionProvider"
    assert tags["backend.intra_op_threads"] == "1"
    assert tags["backend.graph_optimization_level"] == "all"
    assert tags["backend.input_shape"] == "[1, None, None, 3]"  # the model's own, no resize
    assert tags["env.onnxruntime"] == tags["backend.onnxruntime"]
    assert tags["backend.mode"] == "fp32" and "backend.quantized_nodes" not in tags
    diff = 100 * (metrics["bbox.AP"] - native.data.metrics["bbox.AP"])
    assert abs(diff) <= AP_TOLERANCE, diff
    assert metrics["reference.bbox.AP_diff"] == pytest.approx(diff, abs=1e-6)
    assert metrics["onnx.model_bytes"] > 0 and _converted(metrics)


def _converted(metrics: dict[str, float]) -> bool:
    """Converted in this run, or taken from the job cache that an earlier run filled."""
    if metrics["onnx.cache_hit"] == 1:
        return metrics["onnx.conversion_s"] == 0 and metrics["onnx.first_conversion_s"] > 0
    return metrics["onnx.conversion_s"] > 0


@pytest.mark.timeout(1200)
@pytest.mark.slow
def test_onnx_runtime_int8_is_quantized_calibrated_and_close(sweep: Sweep) -> None:
    native, fp32, int8 = (sweep.runs[p] for p in ("fp32", "onnx_fp32", "onnx_int8"))
    tags, metrics = int8.data.tags, int8.data.metrics
    assert int8.info.status == "FINISHED", tags.get("error")
    assert tags["backend.mode"] == "int8"
    # the file that ran holds quantization nodes (QDQ: QuantizeLinear/DequantizeLinear pairs)
    nodes = dict(item.split(":") for item in tags["backend.quantized_nodes"].split(","))
    assert int(nodes["QuantizeLinear"]) > 0 and int(nodes["DequantizeLinear"]) > 0
    assert metrics["onnx.quantized_nodes"] == sum(int(v) for v in nodes.values())
    assert (tags["backend.quant_format"], tags["backend.calibrate_method"],
            tags["backend.activation_type"], tags["backend.weight_type"],
            tags["backend.quantize_ops"]) == ("qdq", "minmax", "uint8", "int8",
                                              "Conv,MatMul,Gemm")
    assert tags["backend.calibration_images"] == "10" and metrics["onnx.calibration_images"] == 10
    assert tags["backend.calibration_source"] == "disjoint"
    assert tags["backend.intra_op_threads"] == "1" and _converted(metrics)
    # int8 weights: the file is well under the FP32 one (measured 0.30x on the demo)
    assert metrics["onnx.model_bytes"] < 0.5 * fp32.data.metrics["onnx.model_bytes"]
    diff = 100 * (metrics["bbox.AP"] - native.data.metrics["bbox.AP"])
    assert -INT8_AP_TOLERANCE <= diff <= 1.0, diff
    assert metrics["reference.bbox.AP_diff"] == pytest.approx(diff, abs=1e-6)


@pytest.mark.timeout(1200)
@pytest.mark.slow
def test_the_export_shows_each_runtime_and_its_ap_difference(sweep: Sweep,
                                                             tmp_path: Path) -> None:
    from runner.results import export
    from runner.results.runs import load_runs
    from runner.results.table import PRECISION_COLUMN

    df = load_runs(sweep.uri)
    # each runtime's packages are part of its env.key; one machine all the same: one table
    assert df["env_key"].nunique() == 2 and df["machine_key"].nunique() == 1
    native = df[df["precision"] == "fp32"].iloc[0]
    assert native["machine_key"] == native["env_key"]
    export.write_report(df, tmp_path, extra="apdiff")  # no --mix-environments needed
    csv = export.read_table_csv(tmp_path / "table.csv")
    diffs = dict(zip(csv[PRECISION_COLUMN], csv[export.AP_DIFF_COLUMN], strict=True))
    assert list(csv[PRECISION_COLUMN]) == ["Native FP32", "ONNX Runtime FP32", "ONNX Runtime INT8"]
    for precision, display in (("onnx_fp32", "ONNX Runtime FP32"),
                               ("onnx_int8", "ONNX Runtime INT8")):
        logged = sweep.runs[precision].data.metrics["reference.bbox.AP_diff"]
        assert diffs[display] == pytest.approx(logged, abs=1e-9)
    md = (tmp_path / "table.md").read_text()
    assert f"| {export.AP_DIFF_COLUMN} |" in md and PRECISION_COLUMN in md


@pytest.mark.parametrize(("override", "message"), [
    ("precision.onnx.graph_optimization_level=max",
     r"graph_optimization_level='max' is not valid; choose one of: disable, basic, extended"),
    ("precision.onnx.intra_op_threads=-2", r"precision.onnx.intra_op_threads=-2 is not valid"),
    ("precision.onnx.opset=5", r"precision.onnx.opset=5 is not valid"),
    ("precision.onnx.mode=int4", r"precision.onnx.mode='int4' is not valid; choose one of: fp32, "
                                 r"int8"),
    ("precision.onnx.quant_format=qlinear", r"quant_format='qlinear' is not valid; choose one "
                                            r"of: qdq, qoperator"),
    ("precision.onnx.calibration_images=0", r"precision.onnx.calibration_images=0 is not valid"),
    ("precision.onnx.calibration_source=train", r"calibration_source='train' is not valid"),
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
