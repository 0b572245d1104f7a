"""The measured part of a job, run in a fresh child process (``python -m runner.worker JOB_DIR``):
load -> prepare (untimed, chunked) -> warm up -> time -> evaluate. It talks to nobody: it reads
``JOB_DIR/job.json`` and writes its results as files into JOB_DIR as it goes, so that whatever it
measured survives a crash, a kill or a timeout. The parent (``runner.job``) logs them to MLflow.

Files written, in order: ``environment.json`` (tags), ``latencies.csv`` (appended per chunk),
``samples.csv``, ``detections.json`` (+ ``keypoints.json``, ``masks.json``), ``metrics.json``,
``backend.json``; ``error.json`` if it failed with an exception.
"""

from __future__ import annotations

import csv
import json
import os
import sys
import time
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from runner import backends, config, data
from runner.backends import Backend
from runner.config import JobConfig
from runner.detections import Detections

JOB_FILE = "job.json"


@dataclass
class JobSpec:
    """What the parent hands the child (everything already resolved and acquired)."""

    cfg: dict[str, Any]  # the resolved JobConfig as a container
    model_dir: str
    dataset: dict[str, Any]  # data.Dataset fields
    keypoint_annotations: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def write(self, job_dir: Path) -> None:
        (job_dir / JOB_FILE).write_text(json.dumps(self.__dict__, default=str))

    @classmethod
    def read(cls, job_dir: Path) -> JobSpec:
        return cls(**json.loads((job_dir / JOB_FILE).read_text()))

    def job_config(self) -> JobConfig:
        from omegaconf import OmegaConf

        schema = OmegaConf.structured(JobConfig)
        return config.to_object(OmegaConf.merge(schema, self.cfg))  # type: ignore[arg-type]

    def dataset_obj(self) -> data.Dataset:
        d = self.dataset
        return data.Dataset(d["name"], d["display_name"], Path(d["annotations"]),
                            tuple(_records(d["images"])))


def dataset_dict(ds: data.Dataset) -> dict[str, Any]:
    return {"name": ds.name, "display_name": ds.display_name, "annotations": str(ds.annotations),
            "images": [(r.image_id, str(r.path), r.width, r.height) for r in ds.images]}


class Results:
    """Per-image outputs turned into COCO results between timed calls (boxes always; keypoints
    and masks when the model has them)."""

    def __init__(self, truncate_boxes: bool) -> None:
        from runner.evaluate import ResultsAccumulator

        self.boxes = ResultsAccumulator(truncate=truncate_boxes)
        self.keypoints: list[dict[str, Any]] = []
        self.masks: list[dict[str, Any]] = []

    def add(self, record: data.ImageRecord, det: Detections) -> None:
        from runner import evaluate_extra

        self.boxes.add(record.image_id, record.width, record.height, det)
        if det.keypoints is not None:
            self.keypoints += evaluate_extra.keypoint_results(record.image_id, record.width,
                                                              record.height, det)
        if det.masks is not None:
            self.masks += evaluate_extra.mask_results(record.image_id, record.width,
                                                      record.height, det)


def _append_latencies(path: Path, records: Sequence[data.ImageRecord],
                      latencies: np.ndarray) -> None:
    new = not path.exists()
    with path.open("a", newline="") as fh:
        writer = csv.writer(fh)
        if new:
            writer.writerow(["image_id", "latency_ms"])
        writer.writerows((r.image_id, round(float(t) * 1000, 6))
                         for r, t in zip(records, latencies, strict=True))


def write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def _resize_target(cfg: JobConfig, input_shape: Sequence[int | None]) -> tuple[int, int] | None:
    """Where inputs must be resized before timing: the nominal size for the ``seed`` policy, the
    model's fixed input size when it has one, else nothing (the model resizes)."""
    if cfg.benchmark.input_policy == "seed":
        return config.resolution_hw(config.nominal_resolution(cfg))
    h, w = input_shape[1], input_shape[2]
    return (int(h), int(w)) if h is not None and w is not None else None


def _records(rows: Sequence[Sequence[Any]]) -> list[data.ImageRecord]:
    return [data.ImageRecord(int(r[0]), Path(r[1]), int(r[2]), int(r[3])) for r in rows]


def _backend(cfg: JobConfig, spec: JobSpec, dataset: data.Dataset,
             gpus: Sequence[Mapping[str, Any]]) -> Backend:
    """The system under test, made by its backend's plugin (``runner.backends``); inputs it
    needs for conversion are prepared off the timed path with the job's resize rule."""
    nominal = config.nominal_resolution(cfg)
    m = cfg.model
    ctx = backends.BuildContext(
        model_dir=Path(spec.model_dir), signature=m.signature, input_name=m.input_name,
        input_dtype=m.input_dtype, precision=cfg.precision,
        cache_dir=Path(cfg.cache_dir).expanduser(),
        gpu_name=str(gpus[0].get("name")) if gpus else "none",
        nominal_hw=None if nominal == "native" else config.resolution_hw(nominal),
        available=spec.extra.get("backend_available", {}),
        build_images=dataset.images[:1],
        calibration_images=_records(spec.extra.get("calibration", [])),
        prepare=lambda records, dtype, shape: [
            p.tensor for p in data.prepare(records, dtype, _resize_target(cfg, shape))])
    return backends.get(cfg.precision.backend).create(ctx)


def _adapter(cfg: JobConfig) -> Any:
    from runner import signatures

    custom = None
    if cfg.model.outputs == "custom":
        keys = {role: key for role in config.ROLES
                if (key := getattr(cfg.model.output_keys, role))}
        custom = signatures.OutputSpec(keys=keys,
                                       box_format=cfg.model.box_format,
                                       box_order=cfg.model.box_order,
                                       class_offset=cfg.model.class_offset)
    return signatures.adapter(cfg.model.outputs, custom)


def measure(spec: JobSpec, cfg: JobConfig, dataset: data.Dataset,
            job_dir: Path) -> dict[str, Any]:
    """Load, prepare, warm up and time with the sampler running; returns what evaluate needs."""
    from tqdm import tqdm

    from runner import environment
    from runner.measure import time_calls, warm_up
    from runner.telemetry import Sampler

    plugin = backends.get(cfg.precision.backend)
    plugin.before_import(cfg.precision)
    bench = cfg.benchmark
    timings: dict[str, float] = {"prepare_s": 0.0}
    sampler = Sampler(interval_s=bench.sample_interval_s, enabled=bench.telemetry)
    sampler.start()
    wall_start = time.time()
    latencies_file = job_dir / "latencies.csv"
    try:
        env = {**environment.collect(sampler.gpus, extra=plugin.environment(
                   spec.extra.get("backend_available", {}))),
               "telemetry.backend": sampler.backend,
               "telemetry.gpu_found": str(sampler.gpu_found).lower(),
               "telemetry.reason": sampler.reason or "",
               "telemetry.sampler": sampler.mode or "off"}
        (job_dir / "environment.json").write_text(json.dumps(env, indent=1))
        sampler.mark_phase("load")
        start = time.perf_counter()
        backend = _backend(cfg, spec, dataset, sampler.gpus)
        timings["load_s"] = time.perf_counter() - start
        adapt = _adapter(cfg)
        resize = _resize_target(cfg, backend.input_shape)
        results = Results(truncate_boxes=bench.input_policy == "seed")
        latencies: list[np.ndarray] = []
        bar: Any = None
        for index, chunk in enumerate(data.chunked(dataset.images, bench.chunk_size)):
            sampler.mark_phase("prepare")
            start = time.perf_counter()
            tensors = [backend.prepare_input(p.tensor)  # the backend's input format, untimed
                       for p in data.prepare(chunk, backend.input_dtype, resize)]
            timings["prepare_s"] += time.perf_counter() - start
            if index == 0:
                backend.check_executed(tensors[0])  # what ran, e.g. that AMP fired
                (job_dir / "backend.json").write_text(json.dumps(backend.describe(), indent=1))
                first = tensors[0]  # outputs checked against the contract before any timing
                adapt(backend.predict(first), (int(first.shape[1]), int(first.shape[2])))
                sampler.mark_phase("warmup")
                start = time.perf_counter()
                warm_up(backend.predict, tensors, bench.warmup)
                timings["warmup_s"] = time.perf_counter() - start
                bar = tqdm(total=len(dataset.images), desc="timed", unit="img", file=sys.stderr)
            sampler.mark_phase("timed")

            sizes = [(int(t.shape[1]), int(t.shape[2])) for t in tensors]

            def on_output(i: int, outputs: Mapping[str, np.ndarray],
                          chunk: Sequence[data.ImageRecord] = chunk,
                          sizes: Sequence[tuple[int, int]] = sizes) -> None:
                results.add(chunk[i], adapt(outputs, sizes[i]))

            measured = np.full(len(tensors), np.nan)
            try:  # outputs are handled after the chunk's last timed call (nothing in between)
                chunk_latencies = time_calls(backend.predict, tensors, on_output,
                                             progress=bar.update, defer_outputs=True,
                                             out=measured)
            except BaseException:  # keep what this chunk measured before the interruption
                done = ~np.isnan(measured)
                _append_latencies(latencies_file,
                                  [r for r, d in zip(chunk, done, strict=True) if d],
                                  measured[done])
                raise
            passes = [chunk_latencies] + [time_calls(backend.predict, tensors)
                                          for _ in range(bench.repeats - 1)]
            sampler.mark_phase("record")
            latencies.append(np.stack(passes))
            _append_latencies(latencies_file, chunk, chunk_latencies)
            del tensors, on_output
        if bar is not None:
            bar.close()
        sampler.mark_phase("done")
    finally:
        sampler.stop()
        samples = sampler.samples()
        if samples:
            write_csv(job_dir / "samples.csv", samples)
        (job_dir / "telemetry.json").write_text(json.dumps(
            {"wall_start": wall_start, "backend": sampler.backend, "gpus": sampler.gpus,
             "reason": sampler.reason, "errors": sampler.errors, "sampler": sampler.mode,
             "sampler_cpu_share": sampler.cpu_share, "phases": sampler.phase_times(),
             "intervals": sampler.intervals()},
            indent=1, default=str))
    backend_metrics = backend.metrics()
    return {"latencies": np.concatenate(latencies, axis=1), "results": results,
            "timings": timings,
            "telemetry": {**sampler.summary("timed", num_images=len(dataset.images)),
                          **backend_metrics}}


def timing_metrics(passes: np.ndarray, cfg: JobConfig, telemetry: Mapping[str, float],
                   job_dir: Path) -> dict[str, float]:
    """Statistics of all timed calls (``passes``: repeats x images), bootstrap 95% CIs of mean
    latency and throughput, per-repeat mean and spread, and the stability verdict."""
    from runner.stats import bootstrap_ci, stability, summarize, summarize_repeats

    method = cfg.benchmark.percentile_method
    pooled = passes.reshape(-1)
    out = summarize(pooled, method).as_metrics()
    low, high = bootstrap_ci(pooled, "mean")
    out |= {"latency_mean_ci_low_ms": low * 1000, "latency_mean_ci_high_ms": high * 1000}
    low, high = bootstrap_ci(pooled, "throughput")
    out |= {"images_per_sec_ci_low": low, "images_per_sec_ci_high": high}
    if len(passes) > 1:
        per_repeat = [summarize(p, method).as_metrics() for p in passes]
        out |= {f"repeats.{k}": v for k, v in summarize_repeats(per_repeat).items()}
    stable, warning = stability(pooled, cfg.benchmark.cv_threshold,
                                throttled=telemetry.get("gpu_throttle_thermal_or_power", 0) > 0)
    out["stable"] = float(stable)
    (job_dir / "stability.json").write_text(json.dumps({"stable": stable, "warning": warning}))
    if warning:
        print(f"WARNING: {warning}", file=sys.stderr)
    return out


def evaluate(spec: JobSpec, cfg: JobConfig, dataset: data.Dataset, measured: Mapping[str, Any],
             job_dir: Path) -> dict[str, float]:
    from runner import evaluate_extra
    from runner.evaluate import evaluate_bbox

    ids = [r.image_id for r in dataset.images]
    results: Results = measured["results"]
    results.boxes.write_json(job_dir / "detections.json")
    timing = timing_metrics(measured["latencies"], cfg, measured["telemetry"], job_dir)
    start = time.perf_counter()
    metrics = {f"bbox.{k}": v for k, v in evaluate_bbox(dataset.annotations, results.boxes,
                                                          ids).items()}
    if results.masks:
        (job_dir / "masks.json").write_text(json.dumps(results.masks))
        segm = evaluate_extra.evaluate(dataset.annotations, results.masks, ids, "segm")
        metrics |= {f"segm.{k}": v for k, v in segm.items()}
    if results.keypoints and spec.keypoint_annotations:
        (job_dir / "keypoints.json").write_text(json.dumps(results.keypoints))
        kp = evaluate_extra.evaluate(spec.keypoint_annotations, results.keypoints, ids,
                                     "keypoints")
        metrics |= {f"keypoints.{k}": v for k, v in kp.items()}
    timings = {**measured["timings"], "evaluate_s": time.perf_counter() - start}
    return {**timing, **metrics, **measured["telemetry"],
            **{f"time.{k}": v for k, v in timings.items()},
            "detections": float(len(results.boxes))}


def execute(job_dir: Path) -> dict[str, float]:
    """The whole measured part; writes ``metrics.json`` and returns the metrics."""
    spec = JobSpec.read(job_dir)
    cfg, dataset = spec.job_config(), spec.dataset_obj()  # parsed once for both steps
    measured = measure(spec, cfg, dataset, job_dir)
    metrics = evaluate(spec, cfg, dataset, measured, job_dir)
    (job_dir / "metrics.json").write_text(json.dumps(metrics, indent=1))
    return metrics


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m runner.worker JOB_DIR", file=sys.stderr)
        return 2
    job_dir = Path(args[0])
    try:
        execute(job_dir)
    except BaseException as exc:  # recorded for the parent, then the exit code says it failed
        (job_dir / "error.json").write_text(json.dumps({
            "type": type(exc).__name__, "message": str(exc),
            "traceback": "".join(traceback.format_exception(exc))}))
        if isinstance(exc, KeyboardInterrupt):
            return 130
        traceback.print_exc()
        return 1
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # everything is on disk: skip TensorFlow's ~1 s interpreter teardown
