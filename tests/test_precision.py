"""Precision: native AMP bf16 for real on this CPU, TF-TRT's clear refusal here, and the
TF-TRT cache and calibration logic (a stand-in converter serves the cache logic only)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from runner import calibration
from runner.backends import tftrt
from runner.backends.trt_cache import ConversionCache, cache_key
from runner.config import ConfigError, TrtConfig
from runner.data import ImageRecord
from tests.conftest import runs_by_precision

BF16_AP_TOLERANCE = 0.03  # absolute box AP, bf16 against fp32 on the same images


def _sweep(tmp_path: Path, *overrides: str) -> tuple[subprocess.CompletedProcess[str], str]:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cmd = [sys.executable, "-m", "runner", "-m", f"hydra.sweep.dir={tmp_path / 'm'}", *overrides]
    proc = subprocess.run(cmd, cwd=tmp_path, env={**os.environ, "MLFLOW_TRACKING_URI": uri},
                          capture_output=True, text=True, timeout=400)
    return proc, uri


def _cpu_has_bf16() -> bool:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return "avx512f" in text or "amx_bf16" in text


@pytest.mark.skipif(not _cpu_has_bf16(), reason="oneDNN bf16 needs AVX-512 or AMX")
@pytest.mark.slow  # two 60-image jobs
def test_amp_bf16_runs_records_bf16_and_keeps_ap(tmp_path: Path) -> None:
    proc, uri = _sweep(tmp_path, "precision=fp32,amp_bf16", "dataset.num_images=60",
                       "benchmark.warmup=3", "benchmark.telemetry=false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = runs_by_precision(uri)
    fp32, bf16 = runs["fp32"], runs["amp_bf16"]
    assert bf16.info.status == "FINISHED"
    assert int(bf16.data.tags["backend.bfloat16_nodes"]) > 0
    assert int(fp32.data.tags["backend.bfloat16_nodes"]) == 0
    ap32 = fp32.data.metrics["bbox.AP"]
    ap16 = bf16.data.metrics["bbox.AP"]
    assert abs(ap16 - ap32) <= BF16_AP_TOLERANCE, (ap32, ap16)


# TF-TRT skipped here with its reason while the sweep goes on: in
# tests/test_backends.py::test_a_sweep_skips_unavailable_precisions_with_their_reason (one sweep
# for both: the same skip path, the same assertions)


def test_check_available_names_the_fix() -> None:
    with pytest.raises(tftrt.UnsupportedPrecision, match="NVIDIA's TensorFlow container"):
        tftrt.check_available()


INGREDIENTS = {"source_sha256": "abc", "precision_mode": "FP16", "minimum_segment_size": 3,
               "input_shape": [1, 512, 512, 3], "tensorflow": "2.17.0", "tensorrt": "10.8.0",
               "gpu": "NVIDIA H100"}


@pytest.mark.parametrize("ingredient", sorted(INGREDIENTS))
def test_every_ingredient_changes_the_cache_key(ingredient: str) -> None:
    changed = {**INGREDIENTS, ingredient: "something else"}
    assert cache_key(changed) != cache_key(INGREDIENTS)
    assert cache_key(dict(reversed(list(INGREDIENTS.items())))) == cache_key(INGREDIENTS)


def test_cache_hit_skips_conversion(tmp_path: Path) -> None:
    calls: list[Path] = []

    def stand_in(out: Path) -> dict[str, float]:  # cache logic only: no claim about TF-TRT
        calls.append(out)
        out.mkdir(parents=True)
        (out / "saved_model.pb").write_bytes(b"converted")
        return {"segments": 2.0, "tf_nodes": 40.0}

    cache = ConversionCache(tmp_path)
    first = cache.get_or_convert(INGREDIENTS, stand_in)
    assert not first.hit and first.stats["segments"] == 2 and first.stats["conversion_s"] >= 0
    second = cache.get_or_convert(INGREDIENTS, stand_in)
    assert second.hit and second.stats["conversion_s"] == 0.0 and len(calls) == 1
    assert (second.path / "saved_model.pb").read_bytes() == b"converted"
    other = cache.get_or_convert({**INGREDIENTS, "precision_mode": "INT8"}, stand_in)
    assert not other.hit and len(calls) == 2


def test_failed_conversion_leaves_no_entry(tmp_path: Path) -> None:
    def broken(out: Path) -> dict[str, float]:
        out.mkdir(parents=True)
        raise RuntimeError("engine build failed")

    cache = ConversionCache(tmp_path)
    with pytest.raises(RuntimeError):
        cache.get_or_convert(INGREDIENTS, broken)
    assert not [p for p in tmp_path.iterdir() if p.is_dir()]


def test_converter_kwargs_follow_config() -> None:
    kwargs = tftrt.converter_kwargs(TrtConfig(precision_mode="INT8", minimum_segment_size=20))
    assert kwargs["precision_mode"] == "INT8" and kwargs["use_calibration"] is True
    assert kwargs["minimum_segment_size"] == 20 and kwargs["maximum_cached_engines"] == 1
    assert tftrt.converter_kwargs(TrtConfig())["use_calibration"] is False


def _records(ids: range) -> list[ImageRecord]:
    return [ImageRecord(i, Path(f"{i}.jpg"), 10, 10) for i in ids]


def test_calibration_is_disjoint_sized_and_deterministic() -> None:
    scored, everything = _records(range(0, 50)), _records(range(0, 200))
    chosen = calibration.select(everything, scored, 20)
    assert len(chosen) == 20 and not {r.image_id for r in chosen} & set(range(50))
    assert chosen == calibration.select(everything, scored, 20)
    assert [r.image_id for r in chosen] == sorted(r.image_id for r in chosen)
    assert chosen != calibration.select(everything, scored, 20, seed=1)
    seed = calibration.select(everything, scored, 5, source="seed")
    assert [r.image_id for r in seed] == [0, 1, 2, 3, 4]
    with pytest.raises(ConfigError, match="calibration_source=seed"):
        calibration.select(everything, scored, 151)
