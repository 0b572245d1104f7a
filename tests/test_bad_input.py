"""Bad input gets a clear error naming the file or value; fuzzed config values never give the
user a traceback, only validation messages."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra.errors import ConfigCompositionException, HydraException
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mlflow.tracking import MlflowClient
from omegaconf.errors import OmegaConfBaseException
from PIL import Image

from runner import config
from tests import models
from tests.conftest import ROOT, compose_job


def _run(tmp_path: Path, *overrides: str,
         multirun: bool = False) -> subprocess.CompletedProcess[str]:
    flags = ["-m", f"hydra.sweep.dir={tmp_path / 'm'}"] if multirun else [
        f"hydra.run.dir={tmp_path / 'r'}"]
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
           "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "runner", *flags, *overrides], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)


def _errors(tmp_path: Path) -> dict[str, str]:
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("detbench")
    assert exp is not None
    return {r.data.params.get("model.path", ""): r.data.tags.get("error", "")
            for r in client.search_runs([exp.experiment_id]) if "detbench.model" in r.data.tags}


@pytest.mark.slow
def test_bad_savedmodels_fail_their_own_job_with_the_reason(tmp_path: Path) -> None:
    bad_shape = models.build(tmp_path / "bad_shape", "bad_shape")
    float_input = models.build(tmp_path / "float_input", "float_input")
    proc = _run(tmp_path, "model=custom", f"model.path={bad_shape},{float_input}",
                "dataset.num_images=2", "benchmark.warmup=1", "benchmark.telemetry=false",
                multirun=True)
    assert proc.returncode == 1 and "2 failed" in proc.stdout
    errors = _errors(tmp_path)
    assert "detection_boxes has shape (1, 4); expected [1, N, 4]" in errors[str(bad_shape)]
    assert "is float32, but model.input_dtype is 'uint8'" in errors[str(float_input)]
    assert "Traceback" not in proc.stdout


@pytest.mark.slow
def test_missing_signature_lists_the_ones_there(tmp_path: Path) -> None:
    ok = models.build(tmp_path / "ok", "ok")
    proc = _run(tmp_path, "model=custom", f"model.path={ok}", "model.signature=detect",
                "dataset.num_images=2", "benchmark.telemetry=false")
    assert proc.returncode == 1
    assert "no signature 'detect'; it has ['serving_default']" in proc.stdout


@pytest.mark.slow
def test_truncated_image_fails_the_job_naming_the_file(tmp_path: Path) -> None:
    images = tmp_path / "img"
    images.mkdir()
    pixels = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(images / "good.jpg")
    Image.fromarray(pixels).save(images / "cut.jpg")
    data = (images / "cut.jpg").read_bytes()
    (images / "cut.jpg").write_bytes(data[: len(data) // 2])
    doc = {"images": [{"id": i, "file_name": f, "width": 64, "height": 48}
                      for i, f in ((1, "good.jpg"), (2, "cut.jpg"))],
           "annotations": [], "categories": [{"id": 1, "name": "x"}]}
    (tmp_path / "ann.json").write_text(json.dumps(doc))
    proc = _run(tmp_path, "dataset=coco_files", f"dataset.images_dir={images}",
                f"dataset.annotations={tmp_path / 'ann.json'}", "benchmark.warmup=1",
                "benchmark.telemetry=false")
    assert proc.returncode == 1 and "cut.jpg" in proc.stdout


def test_cmyk_jpeg_becomes_rgb(tmp_path: Path) -> None:
    from runner import data

    cmyk = np.random.default_rng(1).integers(0, 255, (20, 30, 4), dtype=np.uint8)
    Image.fromarray(cmyk, "CMYK").save(tmp_path / "c.jpg")
    record = data.ImageRecord(1, tmp_path / "c.jpg", 30, 20)
    tensor = data.decode(record)
    expected = np.asarray(Image.open(tmp_path / "c.jpg").convert("RGB"), dtype=float)
    assert tuple(tensor.shape) == (1, 20, 30, 3)
    assert np.abs(tensor.numpy()[0].astype(float) - expected).mean() < 3


FIELDS = {
    "benchmark.warmup": st.integers(-10, 10**6) | st.text(max_size=5),
    "benchmark.chunk_size": st.integers(-5, 10**5),
    "benchmark.sample_interval_s": st.floats(allow_nan=True, allow_infinity=True),
    "benchmark.timeout_s": st.floats(allow_nan=True, allow_infinity=True),
    "benchmark.percentile_method": st.text(max_size=12),
    "benchmark.input_policy": st.sampled_from(["native", "seed", "squash", ""]),
    "benchmark.repeats": st.integers(-3, 5),
    "dataset.num_images": st.integers(-5, 10**7) | st.none(),
    "dataset.split": st.text(max_size=6),
    "precision.amp": st.text(max_size=6),
    "precision.trt.precision_mode": st.sampled_from(["FP32", "FP16", "INT8", "int4", ""]),
    "precision.trt.calibration_images": st.integers(-5, 1000),
    "model.box_format": st.text(max_size=8),
    "resolution": st.sampled_from(["default", "640x640", "256x256", "1x1"]),
}
VALIDATION_ERRORS = (config.ConfigError, ConfigCompositionException, HydraException,
                     OmegaConfBaseException)


def _value(v: object) -> str:
    if v is None:
        return "null"
    text = str(v)
    return "'" + text.replace("\\\\", "").replace("'", "") + "'" if isinstance(v, str) else text


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(sorted(FIELDS)), st.none(), min_size=1, max_size=4)
       .flatmap(lambda keys: st.fixed_dictionaries({k: FIELDS[k] for k in keys})))
def test_fuzzed_config_values_give_validation_messages_only(values: dict[str, object]) -> None:
    overrides = [f"{k}={_value(v)}" for k, v in values.items()]
    try:
        cfg = config.to_object(compose_job(overrides))
        config.validate(cfg)
        config.skip_reason(cfg)
    except VALIDATION_ERRORS as exc:
        assert str(exc).strip(), "a validation error must say what is wrong"


def test_cli_prints_messages_not_tracebacks(tmp_path: Path) -> None:
    for bad in ("benchmark.warmup=lots", "benchmark.sample_interval_s=nan", "model=nope",
                "benchmark.percentile_method=p99"):
        proc = _run(tmp_path, bad)
        assert proc.returncode != 0, bad
        assert "Traceback" not in proc.stderr, (bad, proc.stderr[-2000:])
        assert bad.split("=")[1] in proc.stderr, (bad, proc.stderr[-2000:])
