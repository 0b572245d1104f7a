"""LiteRT for real: the demo detector (exported with builtin NMS, runner.demo.lite) converted,
timed and evaluated through ``python -m runner`` in every mode beside Native FP32 in one sweep;
the shipped demo (CombinedNonMaxSuppression) refused naming the op; config checks."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib import util
from pathlib import Path

import pytest

from runner import config
from runner.backends import UnsupportedPrecision, litert
from runner.config import ConfigError
from tests.conftest import DEMO_MODEL, compose_job, runs_by_precision

#: |AP(LiteRT) - AP(Native FP32)| allowed, in AP points (x100) on the same 30 images: FP32 is
#: the same arithmetic (measured 0.01); float16 weights and int8 quantization move boxes
#: (measured up to 2.3 points on 60 images), so the bounds are loose on purpose
AP_TOLERANCE = {"litert_fp32": 0.5, "litert_fp16": 3.0, "litert_int8_dynamic": 4.0,
                "litert_int8": 6.0}
MODES = {"litert_fp32": "fp32", "litert_fp16": "fp16", "litert_int8_dynamic": "dynamic_int8",
         "litert_int8": "int8"}


@pytest.fixture(scope="module")
def lite_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("lite") / "demo_lite"
    done = subprocess.run([sys.executable, "-m", "runner.demo.lite", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return out


@pytest.mark.timeout(1200)  # four conversions of ~20 s each on 2 shared cores, five jobs
@pytest.mark.slow
def test_every_litert_mode_converts_times_and_keeps_ap(tmp_path: Path, lite_model: Path,
                                                        cache_dir: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    precisions = ",".join(["fp32", *MODES])  # Native FP32 first: the reference of the others
    cmd = [sys.executable, "-m", "runner", "-m", f"hydra.sweep.dir={tmp_path / 'm'}",
           f"precision={precisions}", "model=custom", f"model.path={lite_model}",
           "model.resolutions=[256x256]", "dataset.num_images=30",
           "dataset.calibration_split=null", "precision.litert.calibration_images=10",
           "precision.litert.num_threads=1", "benchmark.warmup=2", "benchmark.telemetry=false",
           "benchmark.isolate=false"]
    proc = subprocess.run(cmd, cwd=tmp_path, env={**os.environ, "MLFLOW_TRACKING_URI": uri},
                          capture_output=True, text=True, timeout=1100)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    runs = runs_by_precision(uri)
    native = runs["fp32"]
    ap32 = native.data.metrics["bbox.AP"]
    assert native.data.tags["detbench.reference"] == "true"
    sizes = {}
    for name, mode in MODES.items():
        run = runs[name]
        tags, metrics = run.data.tags, run.data.metrics
        assert run.info.status == "FINISHED", tags.get("error")
        assert tags["backend.backend"] == "litert" and tags["backend.mode"] == mode
        expected = "ai_edge_litert" if util.find_spec("ai_edge_litert") else "tensorflow"
        assert tags["backend.interpreter"] == expected == tags["env.litert_interpreter"]
        assert tags["backend.num_threads"] == "1" and metrics["litert.num_threads"] == 1
        assert tags["backend.input_shape"] == "[1, 256, 256, 3]"
        diff = 100 * (metrics["bbox.AP"] - ap32)
        assert abs(diff) <= AP_TOLERANCE[name], (name, diff)
        assert tags["detbench.reference_run"] == native.info.run_id
        assert metrics["reference.bbox.AP_diff"] == pytest.approx(diff, abs=1e-6)
        assert metrics["litert.conversion_s"] > 0 and metrics["litert.cache_hit"] == 0
        sizes[mode] = metrics["litert.model_bytes"]
        assert int(tags["backend.tensors_int8"]) > 0 if "int8" in mode else True
        assert int(tags["backend.tensors_float16"]) > 0 if mode == "fp16" else True
        calibrated = 10 if mode == "int8" else 0
        assert tags["backend.calibration_images"] == str(calibrated)
    # float16 weights halve the file, int8 weights quarter it (small non-weight parts remain)
    assert sizes["fp16"] < 0.6 * sizes["fp32"]
    assert sizes["dynamic_int8"] < 0.35 * sizes["fp32"]
    assert sizes["int8"] < 0.35 * sizes["fp32"]
    # one cache entry per converted model
    assert len(list((cache_dir / "litert").glob("*/model.tflite"))) >= 4


def test_ops_outside_the_builtins_fail_naming_them(tmp_path: Path) -> None:
    """The shipped demo's CombinedNonMaxSuppression has no LiteRT builtin."""
    with pytest.raises(UnsupportedPrecision, match=r"it needs CombinedNonMaxSuppression\. "
                                                   r"Select TF ops"):
        litert.convert(DEMO_MODEL, tmp_path / "m.tflite", "serving_default", "input_tensor",
                       "uint8", (256, 256), litert.LiteRTConfig(), [])
    assert not (tmp_path / "m.tflite").exists()


@pytest.mark.parametrize(("override", "message"), [
    ("precision.litert.mode=int4", r"precision.litert.mode='int4' is not valid; choose one of: "
                                   r"fp32, fp16, dynamic_int8, int8"),
    ("precision.litert.num_threads=-1", r"precision.litert.num_threads=-1 is not valid"),
    ("precision.litert.input_size=256", r"precision.litert.input_size='256' is not valid"),
    ("precision.litert.calibration_images=0",
     r"precision.litert.calibration_images=0 is not valid"),
])
def test_bad_litert_values_are_named(override: str, message: str) -> None:
    cfg = config.to_object(compose_job(["precision=litert_int8", override]))
    with pytest.raises(ConfigError, match=message):
        config.validate(cfg)


def test_fixed_input_shape_rules() -> None:
    cfg = litert.LiteRTConfig()
    assert litert.fixed_hw(cfg, [1, None, None, 3], (256, 256)) == (256, 256)
    assert litert.fixed_hw(cfg, [1, 320, 320, 3], (256, 256)) == (320, 320)
    assert litert.fixed_hw(litert.LiteRTConfig(input_size="128x96"), [1, None, None, 3],
                           None) == (128, 96)
    with pytest.raises(UnsupportedPrecision, match="choose a resolution"):
        litert.fixed_hw(cfg, [1, None, None, 3], None)
