"""One benchmark job: validate -> dataset -> load model -> prepare -> warm up -> time -> evaluate
-> track. Config errors surface before anything expensive; any later failure ends the job's MLflow
run as FAILED with its traceback, keeping whatever was already logged."""

from __future__ import annotations

import csv
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from runner import config, data, table
from runner.config import JobConfig

log = logging.getLogger(__name__)

MAX_SERIES_POINTS = 1000  # per sampled quantity logged as an MLflow time series


@dataclass
class JobResult:
    status: str  # FINISHED | FAILED | KILLED
    run_id: str | None
    tracking_uri: str
    metrics: dict[str, float] = field(default_factory=dict)
    row: dict[str, str] = field(default_factory=dict)
    error: str | None = None
    ui_link: str | None = None
    experiment_id: str | None = None


@dataclass
class Measurement:
    latencies_s: np.ndarray
    image_ids: list[int]
    results: Any  # evaluate.ResultsAccumulator
    samples: list[dict[str, Any]]
    telemetry: dict[str, float]
    timings: dict[str, float]
    backend: dict[str, str]
    sampler_info: dict[str, Any]


def model_dir(cfg: JobConfig) -> Path:
    if cfg.model.source == "embedded":
        return Path(str(resources.files("runner.demo") / "assets" / "demo_centernet"))
    assert cfg.model.path is not None
    return Path(cfg.model.path).expanduser()


def run_name(cfg: JobConfig) -> str:
    return cfg.tracking.run_name or (
        f"{cfg.model.name}@{config.nominal_resolution(cfg)}/{cfg.precision.name}"
    )


def _params(cfg: DictConfig, choices: Mapping[str, str]) -> dict[str, str]:
    from runner.tracking import flatten

    params = flatten(cfg)
    params.update({f"choice.{k}": str(v) for k, v in choices.items() if not k.startswith("hydra")})
    return params


def run(cfg: DictConfig, choices: Mapping[str, str], output_dir: Path) -> JobResult:
    """Run one job; raises ConfigError (before any model loads) for bad input."""
    job_cfg = config.to_object(cfg)
    config.validate(job_cfg)
    directory = model_dir(job_cfg)
    if not (directory / "saved_model.pb").is_file():
        raise config.ConfigError(f"no SavedModel at {str(directory)!r} (saved_model.pb missing)")
    dataset = data.load_dataset(job_cfg.dataset, job_cfg.cache_dir)

    from runner.tracking import Tracker

    tracker = Tracker(job_cfg.tracking.uri, job_cfg.tracking.experiment)
    name = run_name(job_cfg)
    tags = {"detbench.model": job_cfg.model.name, "detbench.precision": job_cfg.precision.name,
            "detbench.resolution": config.nominal_resolution(job_cfg),
            "detbench.dataset": dataset.display_name}
    tracker.start(name, _params(cfg, choices), tags)
    result = JobResult("RUNNING", tracker.run_id, tracker.uri, ui_link=tracker.ui_link(),
                       experiment_id=tracker.experiment_id)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    tracker.log_artifacts([output_dir / "config.yaml"])
    try:
        measurement = measure(job_cfg, directory, dataset, tracker)
        metrics = _evaluate(dataset, measurement, job_cfg)
        _log_results(tracker, measurement, metrics, output_dir, dataset)
        result.metrics = metrics
        result.row = table.row(job_cfg.model.display_name, config.nominal_resolution(job_cfg),
                               job_cfg.precision.display_name, metrics)
        tracker.log_text(table.markdown([result.row]), "table_row.md")
        tracker.finish()
        result.status = "FINISHED"
    except (Exception, KeyboardInterrupt) as exc:
        tracker.fail(exc)
        result.status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
        result.error = f"{type(exc).__name__}: {exc}"
        log.exception("job failed: %s", result.error)
        if isinstance(exc, KeyboardInterrupt):
            raise
    return result


def measure(cfg: JobConfig, directory: Path, dataset: data.Dataset, tracker: Any) -> Measurement:
    """Load, prepare (untimed, chunked), warm up and time; the sampler runs throughout."""
    from tqdm import tqdm

    from runner import environment, signatures
    from runner.backends.native import NativeBackend
    from runner.evaluate import ResultsAccumulator
    from runner.measure import time_calls, warm_up
    from runner.telemetry import Sampler

    bench = cfg.benchmark
    timings: dict[str, float] = {"prepare_s": 0.0}
    sampler = Sampler(interval_s=bench.sample_interval_s, enabled=bench.telemetry)
    sampler.start()
    try:
        tracker.set_tags({**environment.collect(sampler.gpus),
                          "telemetry.backend": sampler.backend,
                          "telemetry.gpu_found": str(sampler.gpu_found).lower(),
                          "telemetry.reason": sampler.reason or ""})
        sampler.mark_phase("load")
        start = time.perf_counter()
        backend = NativeBackend(directory, cfg.model.signature, cfg.model.input_name,
                                cfg.model.input_dtype)
        timings["load_s"] = time.perf_counter() - start
        adapt = signatures.adapter(cfg.model.outputs)
        results = ResultsAccumulator()
        latencies: list[np.ndarray] = []
        bar = tqdm(total=len(dataset.images), desc="timed", unit="img")
        for index, chunk in enumerate(data.chunked(dataset.images, bench.chunk_size)):
            sampler.mark_phase("prepare")
            start = time.perf_counter()
            prepared = data.prepare(chunk, cfg.model.input_dtype)
            timings["prepare_s"] += time.perf_counter() - start
            tensors = [p.tensor for p in prepared]
            if index == 0:
                sampler.mark_phase("warmup")
                start = time.perf_counter()
                warm_up(backend.predict, tensors, bench.warmup)
                timings["warmup_s"] = time.perf_counter() - start
            sampler.mark_phase("timed")

            def on_output(i: int, outputs: Mapping[str, np.ndarray],
                          chunk: Sequence[data.ImageRecord] = chunk) -> None:
                record = chunk[i]
                results.add(record.image_id, record.width, record.height, adapt(outputs))

            latencies.append(time_calls(backend.predict, tensors, on_output, progress=bar.update))
            del prepared, tensors
        bar.close()
        sampler.mark_phase("done")
    finally:
        sampler.stop()
    return Measurement(
        latencies_s=np.concatenate(latencies),
        image_ids=[r.image_id for r in dataset.images],
        results=results,
        samples=sampler.samples(),
        telemetry=sampler.summary("timed", num_images=len(dataset.images)),
        timings=timings,
        backend=backend.describe(),
        sampler_info={"backend": sampler.backend, "gpus": sampler.gpus},
    )


def _evaluate(dataset: data.Dataset, m: Measurement, cfg: JobConfig) -> dict[str, float]:
    from runner.evaluate import evaluate_bbox
    from runner.stats import summarize

    stats = summarize(m.latencies_s, cfg.benchmark.percentile_method)
    start = time.perf_counter()
    coco = evaluate_bbox(dataset.annotations, m.results, m.image_ids)
    timings = {**m.timings, "evaluate_s": time.perf_counter() - start}
    return {
        **stats.as_metrics(),
        **{f"bbox.{k}": v for k, v in coco.items()},
        **m.telemetry,
        **{f"time.{k}": v for k, v in timings.items()},
        "detections": float(len(m.results)),
    }


def _write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def _log_series(tracker: Any, samples: Sequence[Mapping[str, Any]]) -> None:
    """Each numeric sampled quantity per device as an MLflow time series (at most 1000 points)."""
    wall0 = time.time() - time.monotonic()
    series: dict[str, tuple[list[float], list[float]]] = {}
    for s in samples:
        for key, value in s.items():
            if key in ("t_s", "phase", "device", "t_mono") or not isinstance(value, int | float):
                continue
            values, stamps = series.setdefault(f"sample.{s['device']}.{key}", ([], []))
            values.append(float(value))
            stamps.append(wall0 + float(s.get("t_mono", s["t_s"])))
    for name, (values, stamps) in series.items():
        stride = max(1, len(values) // MAX_SERIES_POINTS)
        tracker.log_series(name, values[::stride], stamps[::stride])


def _log_results(tracker: Any, m: Measurement, metrics: Mapping[str, float], out: Path,
                 dataset: data.Dataset) -> None:
    tracker.log_metrics(metrics)
    tracker.set_tags({f"backend.{k}": v for k, v in m.backend.items()})
    files = [
        _write_csv(out / "latencies.csv", [
            {"image_id": i, "latency_ms": round(float(t) * 1000, 6)}
            for i, t in zip(m.image_ids, m.latencies_s, strict=True)]),
        out / "detections.json",
        out / "environment.json",
    ]
    (out / "detections.json").write_text(json.dumps(m.results.to_json_list()))
    (out / "environment.json").write_text(json.dumps(m.sampler_info, indent=1, default=str))
    if m.samples:
        files.append(_write_csv(out / "samples.csv", m.samples))
        _log_series(tracker, m.samples)
    tracker.log_artifacts(files)
