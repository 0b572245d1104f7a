from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from runner import config, jobdir, worker
from tests.conftest import compose_job


def _cfg(*overrides: str) -> config.JobConfig:
    return config.to_object(compose_job(list(overrides)))


def test_timing_metrics_pool_repeats_and_report_their_spread(tmp_path: Path) -> None:
    passes = np.array([[0.010, 0.012, 0.011], [0.011, 0.013, 0.012]])
    m = worker.timing_metrics(passes, _cfg("benchmark.repeats=2"), {}, tmp_path)
    assert m["count"] == 6 and m["latency_mean_ms"] == pytest.approx(11.5)
    assert m["repeats.latency_mean_ms.mean"] == pytest.approx(11.5)
    assert m["repeats.latency_mean_ms.std"] == pytest.approx(np.std([11.0, 12.0], ddof=1))
    assert m["latency_mean_ci_low_ms"] <= 11.5 <= m["latency_mean_ci_high_ms"]
    assert m["stable"] == 1.0 and json.loads((tmp_path / "stability.json").read_text())["stable"]


def test_noisy_or_throttled_timings_are_flagged(tmp_path: Path) -> None:
    noisy = np.array([[0.010, 0.030, 0.011, 0.050]])
    assert worker.timing_metrics(noisy, _cfg(), {}, tmp_path)["stable"] == 0.0
    steady = np.array([[0.010, 0.010, 0.0101]])
    throttled = {"gpu_throttle_thermal_or_power": 1.0}
    assert worker.timing_metrics(steady, _cfg(), throttled, tmp_path)["stable"] == 0.0
    assert "throttling" in json.loads((tmp_path / "stability.json").read_text())["warning"]


def test_resize_target_follows_policy_and_fixed_inputs() -> None:
    from runner import data

    assert data.input_spec(_cfg(), [1, None, None, 3], "uint8").size is None
    assert data.input_spec(_cfg(), [1, 512, 512, 3], "uint8").size == (512, 512)
    seed = _cfg("benchmark.input_policy=seed")
    assert data.input_spec(seed, [1, None, None, 3], "uint8").size == (256, 256)


def _public_script_numbers(timings_s: np.ndarray) -> dict[str, float]:
    """The six timing numbers as the public table's script computed them from its per-image
    timings: the first 50 dropped, images/sec the mean of per-call rates, p99 'lower'."""
    kept = timings_s[50:]
    return {"images_per_sec": float(np.mean(1.0 / kept)),
            "latency_p99_ms": float(np.percentile(kept * 1000, 99, method="lower")),
            "total_time_s": float(np.sum(kept)),
            "latency_mean_ms": float(np.mean(kept) * 1000),
            "latency_median_ms": float(np.median(kept) * 1000),
            "latency_min_ms": float(np.min(kept) * 1000)}


def test_seed_policy_computes_the_public_scripts_timing_numbers(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    timings = 0.02 + rng.lognormal(-6, 1.0, 180)  # the first 50 are dropped
    timings[:50] += 0.5  # slow first calls (warm-up): must not reach any statistic
    got = worker.timing_metrics(timings[None, :], _cfg("benchmark.input_policy=seed"), {},
                                tmp_path)
    for name, value in _public_script_numbers(timings).items():
        assert got[name] == value, name  # to the bit
    assert got["count"] == 130 and got["timings_dropped"] == 50
    assert got["images_per_sec_ci_low"] < got["images_per_sec"] < got["images_per_sec_ci_high"]
    verdict = json.loads((tmp_path / "stability.json").read_text())
    assert verdict["timing_method"] == worker.SEED_METHOD and "batch means" in verdict["interval"]
    native = worker.timing_metrics(timings[None, :], _cfg(), {}, tmp_path)
    assert native["count"] == 180 and native["images_per_sec"] == 180 / timings.sum()
    assert json.loads((tmp_path / "stability.json").read_text())["timing_method"] == (
        worker.NATIVE_METHOD)


def test_seed_policy_refuses_fifty_images_or_fewer(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="drops the first 50.*only 50 images.*num_images > 50"):
        worker.timing_metrics(np.full((1, 50), 0.01), _cfg("benchmark.input_policy=seed"), {},
                              tmp_path)


def test_seed_order_is_the_annotation_files(tmp_path: Path) -> None:
    from runner import data

    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"images": [{"id": 9}, {"id": 2}, {"id": 5}],
                               "annotations": [], "categories": []}))
    records = tuple(data.ImageRecord(i, tmp_path / f"{i}.jpg", 4, 4) for i in (2, 5, 9))
    ordered = worker.seed_order(data.Dataset("d", "D", ann, records))
    assert [r.image_id for r in ordered.images] == [9, 2, 5]


def test_low_telemetry_coverage_marks_the_run_unstable(tmp_path: Path) -> None:
    steady = np.array([[0.010, 0.010, 0.0101]])
    got = worker.timing_metrics(steady, _cfg(), {"telemetry_coverage": 0.5}, tmp_path)
    assert got["stable"] == 0.0
    assert "telemetry coverage 0.50" in json.loads((tmp_path / "stability.json").read_text())[
        "warning"]
    assert worker.timing_metrics(steady, _cfg(), {"telemetry_coverage": 0.97},
                                 tmp_path)["stable"] == 1.0


def test_keypoint_model_without_keypoint_annotations_keeps_keypoints_and_says_why(
        tmp_path: Path) -> None:
    """The real worker, in-process, with a keypoint SavedModel on a dataset that has no person
    keypoint annotations: keypoints.json is written, the run is tagged with the reason, and the
    telemetry of the run (sampling process, coverage) reaches the metrics and files."""
    from omegaconf import OmegaConf
    from PIL import Image

    from runner import data
    from tests import models

    model_dir = models.build_contract(tmp_path / "model", "keypoints")
    (tmp_path / "img").mkdir()
    images = []
    for i in (1, 2):
        Image.new("RGB", (64, 48), (i * 60, 90, 120)).save(tmp_path / "img" / f"{i}.png")
        images.append({"id": i, "file_name": f"{i}.png", "width": 64, "height": 48})
    ann = tmp_path / "instances.json"
    ann.write_text(json.dumps({"images": images, "categories": [{"id": 1, "name": "person"}],
                               "annotations": [{"id": 1, "image_id": 1, "category_id": 1,
                                                "bbox": [16, 12, 32, 24], "area": 768,
                                                "iscrowd": 0}]}))
    raw = compose_job(["model=centernet_hg104_kpts", "dataset=coco_files",
                       f"dataset.images_dir={tmp_path / 'img'}", f"dataset.annotations={ann}",
                       "benchmark.warmup=1", "benchmark.sample_interval_s=0.01"])
    cfg = config.to_object(raw)
    dataset = data.load_dataset(cfg.dataset, cfg.cache_dir)
    container = OmegaConf.to_container(raw, resolve=True)
    assert isinstance(container, dict)
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    worker.JobSpec(cfg={str(k): v for k, v in container.items()}, model_dir=str(model_dir),
                   dataset=worker.dataset_dict(dataset)).write(job_dir)
    metrics = worker.execute(job_dir)
    keypoints = json.loads((job_dir / "keypoints.json").read_text())
    assert len(keypoints) >= 2 and len(keypoints[0]["keypoints"]) == 17 * 3
    tags = json.loads((job_dir / "environment.json").read_text())
    assert tags["keypoints.no_metrics"] == worker.NO_KEYPOINT_ANNOTATIONS
    assert not any(k.startswith("keypoints.") for k in metrics)
    assert metrics["bbox.AP"] >= 0
    # telemetry through the worker: coverage logged, rows streamed, exact CPU means labelled
    # (two timed calls last milliseconds: whether a sample or a /proc/stat tick (10 ms) falls
    # inside them depends on the machine's load, so only their presence where defined is checked)
    assert 0 <= metrics["telemetry_coverage"] <= 1
    assert "process_cpu_util_mean" in metrics  # the clock's resolution, always defined
    assert 0 <= metrics.get("host_cpu_util_mean", 0) <= 100
    assert (job_dir / jobdir.TELEMETRY_ROWS).is_file() and (job_dir / "samples.csv").is_file()
    telemetry = json.loads((job_dir / "telemetry.json").read_text())
    assert telemetry["incomplete"] == "" and "telemetry.incomplete" not in tags
    assert tags["detbench.timing_method"] == worker.NATIVE_METHOD


def test_a_killed_sampling_process_tags_the_run_telemetry_incomplete(tmp_path: Path) -> None:
    """What the worker writes when its sampling process was SIGKILLed mid-run: the rows taken
    before the kill in samples.csv, and the tag telemetry.incomplete with the reason."""
    import os
    import signal
    import time

    from runner.telemetry import Sampler

    jobdir.write_json(tmp_path / jobdir.ENVIRONMENT, {"env.key": "k"})
    sampler = Sampler(interval_s=0.01, rows_path=tmp_path / jobdir.TELEMETRY_ROWS)
    sampler.start()
    sampler.mark_phase("timed")
    time.sleep(0.05)
    sampler.mark_phase("record")
    assert sampler._child is not None
    os.kill(sampler._child.pid, signal.SIGKILL)
    sampler._child.wait()
    sampler.stop()
    worker.write_telemetry(sampler, tmp_path, sampler.wall_start)
    tags = json.loads((tmp_path / jobdir.ENVIRONMENT).read_text())
    assert tags["env.key"] == "k" and "signal 9" in tags["telemetry.incomplete"]
    assert "timed" in (tmp_path / jobdir.SAMPLES).read_text()
    assert json.loads((tmp_path / jobdir.TELEMETRY).read_text())["incomplete"] == (
        tags["telemetry.incomplete"])
