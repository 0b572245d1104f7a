"""A constructed store at the zoo's scale, as ``load_runs`` returns it: the 41 rows of the
public table (runner.zoo's catalogue, in its order) with realistic spreads (AP 20-48, latency
35-1200 ms, images/sec CIs of a few percent), plus what a real store holds beside them: TF-TRT
FP16 rows of some models, a swept warm-up, three repeats of one config, an unstable run, two
failed models and a COCO -1. Deterministic (seeded); for the plots' and table's tests and for
looking at the figures (``python -m tests.zoo_frame OUT_DIR``)."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from runner import zoo
from runner.evaluate import STAT_NAMES
from runner.results.runs import RUN_COLUMNS

FAILED_MODELS = ("centernet_mobilenetv2_fpn", "centernet_mobilenetv2_fpn_kpts")
TRT_MODELS = ("efficientdet_d0", "efficientdet_d1", "ssd_mobilenet_v2", "faster_rcnn_resnet50_v1",
              "ssd_resnet50_v1_fpn", "centernet_resnet50_v1_fpn")
REPEATED = "ssd_mobilenet_v2"  # three runs of one config
SWEPT = "efficientdet_d0"  # benchmark.warmup=10,50
UNSTABLE = "faster_rcnn_resnet101_v1"
NO_SMALL = "ssd_mobilenet_v2_fpnlite"  # APsmall = -1


def _metrics(rng: np.random.Generator, latency_ms: float, ap: float) -> dict[str, float]:
    ips = 1000.0 / latency_ms * rng.uniform(0.98, 1.02)
    half = ips * rng.uniform(0.008, 0.03)
    stats = [ap / 100, ap / 100 * 1.55, ap / 100 * 1.08, ap / 100 * 0.45, ap / 100 * 1.1,
             ap / 100 * 1.45, ap / 100 * 0.85, ap / 100 * 1.33, ap / 100 * 1.42, ap / 100 * 0.9,
             ap / 100 * 1.5, ap / 100 * 1.9]
    out = {f"metrics.bbox.{name}": min(v, 0.99) for name, v in zip(STAT_NAMES, stats,
                                                                      strict=True)}
    out |= {"metrics.images_per_sec": ips, "metrics.images_per_sec_ci_low": ips - half,
            "metrics.images_per_sec_ci_high": ips + half * rng.uniform(0.8, 1.3),
            "metrics.latency_mean_ms": latency_ms, "metrics.latency_median_ms": latency_ms * 0.998,
            "metrics.latency_min_ms": latency_ms * 0.86, "metrics.latency_p99_ms": latency_ms * 1.1,
            "metrics.total_time_s": latency_ms * 4.95, "metrics.count": 4950.0}
    return out


def zoo_runs(seed: int = 14) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows: list[dict[str, Any]] = []

    def add(key: str, resolution: str, precision: str, latency: float, ap: float,
            **extra: Any) -> None:
        model = zoo.get(key)
        i = len(rows)
        status = extra.pop("status", "FINISHED")
        row = {"run_id": f"{i:032x}", "run_name": f"{key}@{resolution}/{precision}",
               "experiment_id": "1", "experiment": "detbench", "status": status,
               "start_time": pd.Timestamp(1_790_000_000_000 + 60_000 * i, unit="ms", tz="UTC"),
               "end_time": pd.NaT, "model": key, "resolution": resolution,
               "precision": precision, "dataset": "COCO 2017 val", "env_key": "k1",
               "gpu_name": "NVIDIA H100", "tensorflow": "2.21.0", "cpu_model": "cpu",
               "error": None, "parent_run_id": "p" * 32, "variant": None,
               "identity": f"id{i}", "stability": "stable",
               "model_display": model.display_name,
               "precision_display": {"fp32": "Native FP32", "trt_fp16": "TF-TRT FP16"}[precision],
               "artifact_uri": "", "tracking_uri": "sqlite:///unused.db", **extra}
        if status == "FINISHED":
            row |= _metrics(rng, latency, ap)
        else:
            row["error"] = "JobFailed: ValueError: the SavedModel's outputs do not match"
        rows.append(row)

    for key, resolution in zoo.public_table_rows():
        size = int(resolution.split("x")[0])
        latency = 30 + size * size / 3000 * rng.uniform(0.5, 1.6)
        ap = 19 + 29 * (1 - math.exp(-latency / 250)) + rng.normal(0, 1.5)
        if key in FAILED_MODELS:
            add(key, resolution, "fp32", latency, ap, status="FAILED")
            continue
        extra: dict[str, Any] = {}
        if key == UNSTABLE and size == 640:
            extra["stability"] = "unstable"
        if key == SWEPT:
            for warmup in (10, 50):
                add(key, resolution, "fp32", latency * (1.03 if warmup == 10 else 1.0),
                    ap, variant=f"benchmark.warmup={warmup}")
            continue
        if key == REPEATED:
            for _ in range(3):
                add(key, resolution, "fp32", latency * rng.uniform(0.97, 1.03), ap,
                    identity="repeat")
            continue
        add(key, resolution, "fp32", latency, ap, **extra)
        if key == NO_SMALL and size == 320:
            rows[-1]["metrics.bbox.APsmall"] = -1.0
        if key in TRT_MODELS and key != REPEATED:
            add(key, resolution, "trt_fp16", latency * rng.uniform(0.35, 0.5),
                ap - rng.uniform(0.0, 0.3))
    metric_cols = sorted({k for r in rows for k in r if k.startswith("metrics.")})
    return pd.DataFrame(rows, columns=[*RUN_COLUMNS, *metric_cols])


if __name__ == "__main__":
    from runner.results.export import write_report

    for path in write_report(zoo_runs(), Path(sys.argv[1])):
        print(path)
