"""Run one job's measured part in-process (worker.execute: prepare, output checks, time,
evaluate) on a fixture SavedModel and a COCO-format dataset; returns its metrics."""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import OmegaConf

from runner import config, data, worker
from tests.conftest import CONF_DIR, compose_job

__all__ = ["CONF_DIR", "checks_file", "run"]


def run(job_dir: Path, model_dir: Path, images: Path, annotations: Path,
        *overrides: str, model: str = "custom") -> dict[str, float]:
    cfg = compose_job([f"model={model}", f"model.path={model_dir}", "dataset=coco_files",
                       f"dataset.images_dir={images}", f"dataset.annotations={annotations}",
                       "benchmark.warmup=1", "benchmark.telemetry=false", *overrides])
    config.validate(cfg)
    job_cfg = config.to_object(cfg)
    dataset = data.load_dataset(job_cfg.dataset, job_cfg.cache_dir)
    job_dir.mkdir(parents=True, exist_ok=True)
    spec = worker.JobSpec(cfg=OmegaConf.to_container(cfg, resolve=True),  # type: ignore[arg-type]
                          model_dir=str(model_dir), dataset=worker.dataset_dict(dataset))
    spec.write(job_dir)
    return worker.execute(job_dir)


def checks_file(job_dir: Path) -> dict[str, object]:
    return json.loads((job_dir / "output_checks.json").read_text())
