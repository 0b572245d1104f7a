"""The measured part of a job, run in a fresh child process (``python -m runner.worker JOB_DIR``):
load -> prepare (untimed, chunked) -> warm up -> time -> evaluate. It talks to nobody: it reads
``JOB_DIR/job.json`` and writes its results as files into JOB_DIR as it goes, so that whatever it
measured survives a crash, a kill or a timeout. The parent (``runner.job``) logs them to MLflow.

Files written (names and atomic writes: ``runner.jobdir``), in order: ``environment.json``
(tags), ``latencies.npy`` (every latency stored as it is measured, memory-mapped),
``backend.json``, ``latencies.csv`` and the telemetry files (also when interrupted),
``detections.json`` (+ ``keypoints.json``, ``masks.json``), ``metrics.json``; ``error.json`` if it
failed with an exception or a signal (SIGTERM/SIGHUP: exit code 128 + signal).
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from runner import backends, config, data, jobdir, signals
from runner.backends import Backend
from runner.config import JobConfig
from runner.detections import Detections

JOB_FILE = jobdir.JOB


@dataclass
class JobSpec:
    """What the parent hands the child (everything already resolved and acquired)."""

    cfg: dict[str, Any]  # the resolved JobConfig as a container
    model_dir: str
    dataset: dict[str, Any]  # data.Dataset fields
    keypoint_annotations: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def write(self, job_dir: Path) -> None:
        jobdir.write_json(job_dir / JOB_FILE, self.__dict__, indent=None)

    @classmethod
    def read(cls, job_dir: Path) -> JobSpec:
        return cls(**jobdir.read_json(job_dir / JOB_FILE))

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
            "images": [r.to_json() for r in ds.images]}


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


def write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    jobdir.write_csv(path, rows)


def _input_spec(cfg: JobConfig, backend: Any) -> data.InputSpec:
    """How inputs are prepared before timing (size, resize rule, values): ``data.input_spec``."""
    return data.input_spec(cfg, backend.input_shape, backend.input_dtype)


def seed_order(dataset: data.Dataset) -> data.Dataset:
    """For the ``seed`` policy: the dataset's images in the annotation file's order (the public
    script took them so; ``load_dataset`` sorts by id), so that the same images are the first 50
    whose timings are dropped, and the timed sequence is the script's."""
    position = {int(info["id"]): i for i, info in enumerate(
        json.loads(Path(dataset.annotations).read_text())["images"])}
    ordered = sorted(dataset.images, key=lambda r: position.get(r.image_id, len(position)))
    return data.Dataset(dataset.name, dataset.display_name, dataset.annotations, tuple(ordered),
                        dataset.keypoint_annotations, dataset.unscored)


def _records(rows: Sequence[Any]) -> list[data.ImageRecord]:
    """``ImageRecord``s from their JSON form (``ImageRecord.to_json``)."""
    return [data.ImageRecord.from_json(r) for r in rows]


def _backend(cfg: JobConfig, spec: JobSpec, dataset: data.Dataset,
             gpus: Sequence[Mapping[str, Any]]) -> Backend:
    """The system under test, made by its backend's plugin (``runner.backends``); inputs it
    needs for conversion are prepared off the timed path as the job prepares its inputs."""
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
        prepare=lambda records, dtype, shape: [p.tensor for p in data.prepare(
            records, spec=data.input_spec(cfg, shape, dtype))])
    return backends.get(cfg.precision.backend).create(ctx)


def _in_format(backend: Backend, prepared: Sequence[data.PreparedImage]
               ) -> list[data.PreparedImage]:
    """The prepared images in the backend's input format (its untimed input hook)."""
    return [replace(p, tensor=backend.prepare_input(p.tensor)) for p in prepared]


def _adapter(cfg: JobConfig) -> Any:
    from runner import signatures

    return signatures.from_config(cfg.model)


@dataclass
class Measured:
    """What the timed part hands the scoring step (``time_model`` -> ``score``)."""

    latencies: np.ndarray  # seconds, repeats x images (the latency log's rows)
    results: Results  # the COCO results of the first pass's outputs
    timings: dict[str, float]  # seconds per stage: load_s, prepare_s, warmup_s
    telemetry: dict[str, float]  # the sampler's summary, the backend's and the output checks'


def time_model(spec: JobSpec, cfg: JobConfig, dataset: data.Dataset, job_dir: Path) -> Measured:
    """Load, prepare, warm up and time with the sampler running. The latency log, latencies.csv
    and the telemetry files are written whatever ends it."""
    from runner.telemetry import Sampler

    plugin = backends.get(cfg.precision.backend)
    plugin.before_import(cfg.precision)
    bench = cfg.benchmark
    seed = bench.input_policy == "seed"
    timings: dict[str, float] = {"prepare_s": 0.0}
    # every latency lands in the memory-mapped log as it is measured (kept whatever ends this)
    log = jobdir.create_latency_log(job_dir, bench.repeats, len(dataset.images))
    # the sampler's rows stream to the job directory as they are taken (kept whatever ends this)
    sampler = Sampler(interval_s=bench.sample_interval_s, enabled=bench.telemetry,
                      rows_path=job_dir / jobdir.TELEMETRY_ROWS)
    sampler.start()
    wall_start = sampler.wall_start
    try:
        _write_environment(sampler, seed, job_dir, plugin.environment(
            spec.extra.get("backend_available", {})))
        sampler.mark_phase("load")
        start = time.perf_counter()
        backend = _backend(cfg, spec, dataset, sampler.gpus)
        timings["load_s"] = time.perf_counter() - start
        from runner import checks

        guard = checks.OutputGuard.for_job(  # output sanity checks: before and after timing
            _adapter(cfg), dataset.annotations,
            [r.image_id for r in dataset.images[:checks.FIRST_CALLS]], cfg.model.output_checks)
        results = Results(truncate_boxes=seed)
        latencies = _timed_passes(cfg, dataset, backend, guard, results, sampler, log, timings,
                                  job_dir)
        guard.after_timing(job_dir)  # every call's outputs, judged after the last timed call
        sampler.mark_phase("done")
    finally:
        sampler.stop()
        jobdir.write_latencies_csv(job_dir, [r.image_id for r in dataset.images], log)
        write_telemetry(sampler, job_dir, wall_start)
    backend_metrics = backend.metrics()
    return Measured(latencies, results, timings,
                    {**sampler.summary("timed", num_images=len(dataset.images)),
                     **backend_metrics, **guard.metrics()})


def _write_environment(sampler: Any, seed: bool, job_dir: Path,
                       backend_env: Mapping[str, str]) -> None:
    """``environment.json``: the machine, the backend's packages, what telemetry found and the
    timing method (tags)."""
    from runner import environment

    env = {**environment.collect(sampler.gpus, extra=backend_env),
           "telemetry.source": sampler.source,
           "telemetry.gpu_found": str(sampler.gpu_found).lower(),
           "telemetry.reason": sampler.reason or "",
           "telemetry.sampler": sampler.mode or "off",
           "detbench.timing_method": SEED_METHOD if seed else NATIVE_METHOD}
    jobdir.write_json(job_dir / jobdir.ENVIRONMENT, env)


def _timed_passes(cfg: JobConfig, dataset: data.Dataset, backend: Backend, guard: Any,
                  results: Results, sampler: Any, log: np.ndarray, timings: dict[str, float],
                  job_dir: Path) -> np.ndarray:
    """Chunk by chunk: prepare (untimed), then ``benchmark.repeats`` timed passes, each latency
    into ``log`` as it is measured; the first pass's outputs become ``results`` after the chunk's
    last timed call. Before the first chunk is timed: what ran, the outputs and the warm-up
    (``_before_timing``). Returns the latencies, repeats x images."""
    from tqdm import tqdm

    from runner.measure import time_calls

    bench = cfg.benchmark
    inputs = _input_spec(cfg, backend)
    latencies: list[np.ndarray] = []
    bar: Any = None
    offset = 0
    for index, chunk in enumerate(data.chunked(dataset.images, bench.chunk_size)):
        sampler.mark_phase("prepare")
        start = time.perf_counter()
        prepared = _in_format(backend, data.prepare(chunk, spec=inputs))
        tensors = [p.tensor for p in prepared]
        timings["prepare_s"] += time.perf_counter() - start
        if index == 0:
            timings["warmup_s"] = _before_timing(cfg, backend, guard, chunk, prepared, inputs,
                                                 sampler, job_dir)
            bar = tqdm(total=len(dataset.images), desc="timed", unit="img", file=sys.stderr,
                       disable=None)  # None: drawn on a terminal only, not into logs
        sampler.mark_phase("timed")

        sizes = [p.frame for p in prepared]

        def on_output(i: int, outputs: Mapping[str, np.ndarray],
                      chunk: Sequence[data.ImageRecord] = chunk,
                      sizes: Sequence[Any] = sizes) -> None:
            results.add(chunk[i], guard(outputs, sizes[i]))

        end = offset + len(tensors)
        # outputs are handled after the chunk's last timed call (nothing in between)
        passes = [time_calls(backend.predict, tensors, on_output, progress=bar.update,
                             defer_outputs=True, out=log[0, offset:end])]
        passes += [time_calls(backend.predict, tensors, out=log[r, offset:end])
                   for r in range(1, bench.repeats)]
        sampler.mark_phase("record")
        latencies.append(np.stack(passes))
        offset = end
        del tensors, prepared, on_output
    if bar is not None:
        bar.close()
    return np.concatenate(latencies, axis=1)


def _before_timing(cfg: JobConfig, backend: Backend, guard: Any,
                   chunk: Sequence[data.ImageRecord], prepared: Sequence[data.PreparedImage],
                   inputs: data.InputSpec, sampler: Any, job_dir: Path) -> float:
    """On the first chunk, untimed: check what ran (e.g. that AMP fired), write
    ``backend.json``, check the first calls' outputs, then warm up. Returns the warm-up's
    seconds."""
    from runner import checks
    from runner.measure import warm_up

    tensors = [p.tensor for p in prepared]
    backend.check_executed(tensors[0])
    jobdir.write_json(job_dir / jobdir.BACKEND, backend.describe())
    first = chunk[:checks.FIRST_CALLS]

    def reprepare(spec: data.InputSpec) -> Any:
        return _in_format(backend, data.prepare(first, spec=spec, progress=False))

    guard.before_timing(backend.predict, prepared[:checks.FIRST_CALLS], reprepare, inputs)
    sampler.mark_phase("warmup")
    start = time.perf_counter()
    # the seed policy's warm-up is its first 50 timed calls, dropped afterwards
    seed = cfg.benchmark.input_policy == "seed"
    warm_up(backend.predict, tensors, 0 if seed else cfg.benchmark.warmup)
    return time.perf_counter() - start


#: the public script timed every image and dropped its first 50 timings (its warm-up)
SEED_DROPPED_TIMINGS = 50
NATIVE_METHOD = "native: count / total time, p99 as benchmark.percentile_method"
SEED_METHOD = ("seed: public script (first 50 timings dropped, images/sec = mean of per-call "
               "rates, p99 'lower')")


def add_tags(job_dir: Path, tags: Mapping[str, str]) -> None:
    """Add run tags to ``environment.json`` (the parent logs its contents as tags)."""
    current = jobdir.read_json_if(job_dir / jobdir.ENVIRONMENT) or {}
    jobdir.write_json(job_dir / jobdir.ENVIRONMENT, {**current, **tags})


def write_telemetry(sampler: Any, job_dir: Path, wall_start: float) -> None:
    """After the sampler stopped: ``samples.csv`` (rows tagged by phase), ``telemetry.json``
    (what was sampled, how, the phases) and, when the time series miss part of the run, the tag
    ``telemetry.incomplete`` with the reason."""
    samples = sampler.samples()
    if samples:
        write_csv(job_dir / jobdir.SAMPLES, samples)
    jobdir.write_text(job_dir / jobdir.TELEMETRY, json.dumps(
        {"wall_start": wall_start, "source": sampler.source, "gpus": sampler.gpus,
         "reason": sampler.reason, "errors": sampler.errors, "notes": sampler.notes,
         "incomplete": sampler.incomplete, "sampler": sampler.mode,
         "interval_s": sampler.interval_s, "sampler_cpu_share": sampler.cpu_share,
         "phases": sampler.phase_times(), "intervals": sampler.intervals()},
        indent=1, default=str))
    if sampler.incomplete:
        add_tags(job_dir, {"telemetry.incomplete": sampler.incomplete})
        print(f"WARNING: telemetry incomplete: {sampler.incomplete}", file=sys.stderr)


#: why a keypoint model's keypoints have no metrics (the tag ``keypoints.no_metrics``)
NO_KEYPOINT_ANNOTATIONS = ("the dataset has no person keypoint annotations "
                           "(dataset.keypoint_annotations): keypoints.json kept, not scored")


def timed_latencies(passes: np.ndarray, cfg: JobConfig) -> np.ndarray:
    """The latencies the statistics are computed over (``passes``: repeats x images): all of them,
    or for the ``seed`` policy all but the first ``SEED_DROPPED_TIMINGS`` of each pass, as the
    public script did (its statistics are over N - 50 images)."""
    if cfg.benchmark.input_policy != "seed":
        return passes
    if passes.shape[1] <= SEED_DROPPED_TIMINGS:
        raise ValueError(f"benchmark.input_policy='seed' drops the first {SEED_DROPPED_TIMINGS} "
                         f"timings as the public script did, but only {passes.shape[1]} images "
                         f"were timed: use dataset.num_images > {SEED_DROPPED_TIMINGS}")
    return passes[:, SEED_DROPPED_TIMINGS:]


def timing_metrics(passes: np.ndarray, cfg: JobConfig, telemetry: Mapping[str, float],
                   job_dir: Path) -> dict[str, float]:
    """Statistics of all timed calls (``passes``: repeats x images), batch-means 95% intervals of
    mean latency and throughput (valid for autocorrelated calls), between-run spread and interval
    when the config ran more than once (``repeats``), and the stability verdict. The ``seed``
    policy computes them as the public script did (``SEED_METHOD``): ``images_per_sec`` is then
    the mean of per-call rates and its interval that of the rates."""
    from runner.stats import mean_interval, stability, summarize, summarize_repeats

    seed = cfg.benchmark.input_policy == "seed"
    method = "lower" if seed else cfg.benchmark.percentile_method
    kept = timed_latencies(passes, cfg)
    pooled = kept.reshape(-1)
    out = summarize(pooled, method).as_metrics()
    if seed:
        out["images_per_sec"] = out["images_per_sec_mean_of_rates"]
        out["timings_dropped"] = float(passes.size - kept.size)
    # one interval per pass (a pass is a dependent series), pooled passes are one series too
    latency = mean_interval(pooled)
    out |= {"latency_mean_ci_low_ms": latency.low * 1000,
            "latency_mean_ci_high_ms": latency.high * 1000,
            "ci_batch_size": float(latency.batch_size),
            "latency_autocorrelation_time": latency.autocorrelation_time}
    if seed:
        rates = mean_interval(1.0 / pooled)
        low, high = rates.low, rates.high
    else:
        low, high = 1.0 / latency.high, 1.0 / latency.low
    out |= {"images_per_sec_ci_low": low, "images_per_sec_ci_high": high}
    if len(kept) > 1:
        per_repeat = [summarize(p, method).as_metrics() for p in kept]
        if seed:
            for metrics in per_repeat:
                metrics["images_per_sec"] = metrics["images_per_sec_mean_of_rates"]
        out |= {f"repeats.{k}": v for k, v in summarize_repeats(per_repeat).items()}
    coverage = telemetry.get("telemetry_coverage")
    stable, warning = stability(pooled, cfg.benchmark.cv_threshold,
                                throttled=telemetry.get("gpu_throttle_thermal_or_power", 0) > 0,
                                telemetry_coverage=None if coverage is None else float(coverage))
    out["stable"] = float(stable)
    jobdir.write_json(job_dir / jobdir.STABILITY, {
        "stable": stable, "warning": warning,
        "timing_method": SEED_METHOD if seed else NATIVE_METHOD,
        "interval": f"{int(100 * latency.confidence)}% batch means within the run "
                    f"(batches of {latency.batch_size} calls)"})
    if warning:
        print(f"WARNING: {warning}", file=sys.stderr)
    return out


def score(spec: JobSpec, cfg: JobConfig, dataset: data.Dataset, measured: Measured,
          job_dir: Path) -> dict[str, float]:
    """The run's metrics: timing statistics, COCO box (and mask, keypoint) metrics, telemetry and
    stage times; writes detections.json (+ masks.json, keypoints.json)."""
    from runner import evaluate_extra
    from runner.evaluate import evaluate_bbox

    ids = [r.image_id for r in dataset.images]
    results = measured.results
    results.boxes.write_json(job_dir / jobdir.DETECTIONS)
    timing = timing_metrics(measured.latencies, cfg, measured.telemetry, job_dir)
    start = time.perf_counter()
    metrics = {f"bbox.{k}": v for k, v in evaluate_bbox(dataset.annotations, results.boxes,
                                                          ids).items()}
    if results.masks:
        jobdir.write_json(job_dir / jobdir.MASKS, results.masks, indent=None)
        segm = evaluate_extra.evaluate(dataset.annotations, results.masks, ids, "segm")
        metrics |= {f"segm.{k}": v for k, v in segm.items()}
    if results.keypoints:
        jobdir.write_json(job_dir / jobdir.KEYPOINTS, results.keypoints, indent=None)
        if spec.keypoint_annotations:
            kp = evaluate_extra.evaluate(spec.keypoint_annotations, results.keypoints, ids,
                                         "keypoints")
            metrics |= {f"keypoints.{k}": v for k, v in kp.items()}
        else:
            add_tags(job_dir, {"keypoints.no_metrics": NO_KEYPOINT_ANNOTATIONS})
            print(f"WARNING: no keypoint metrics: {NO_KEYPOINT_ANNOTATIONS}", file=sys.stderr)
    timings = {**measured.timings, "evaluate_s": time.perf_counter() - start}
    return {**timing, **metrics, **measured.telemetry,
            **{f"time.{k}": v for k, v in timings.items()},
            "detections": float(len(results.boxes))}


def execute(job_dir: Path) -> dict[str, float]:
    """The whole measured part; writes ``metrics.json`` and returns the metrics."""
    spec = JobSpec.read(job_dir)
    cfg, dataset = spec.job_config(), spec.dataset_obj()  # parsed once for both steps
    if cfg.benchmark.input_policy == "seed":
        timed_latencies(np.zeros((1, len(dataset.images))), cfg)  # refuse N <= 50 before timing
        dataset = seed_order(dataset)
    measured = time_model(spec, cfg, dataset, job_dir)
    metrics = score(spec, cfg, dataset, measured, job_dir)
    jobdir.write_json(job_dir / jobdir.METRICS, metrics)
    return metrics


def record_error(job_dir: Path, exc: BaseException) -> int:
    """``error.json`` for the parent (type and message as separate fields, the signal if one
    ended the child) and the exit code: 128 + signal for a signal, 1 otherwise. If even that
    write fails (a full disk), the message goes to stderr, which the parent shows."""
    code = signals.exit_code(exc) or 1
    record: dict[str, Any] = {"type": type(exc).__name__, "message": str(exc),
                              "traceback": "".join(traceback.format_exception(exc))}
    if isinstance(exc, signals.Terminated):
        record["signal"] = exc.signum
    elif isinstance(exc, KeyboardInterrupt):
        record["signal"] = code - 128
    try:
        jobdir.write_json(job_dir / jobdir.ERROR, record, indent=None)
    except jobdir.JobDirError as write_failed:
        print(f"detbench worker: {type(exc).__name__}: {exc}; and {write_failed}",
              file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m runner.worker JOB_DIR", file=sys.stderr)
        return 2
    job_dir = Path(args[0])
    signals.install()  # SIGTERM/SIGHUP unwind like Ctrl-C: telemetry and latencies are written
    try:
        execute(job_dir)
    except BaseException as exc:  # recorded for the parent, then the exit code says it failed
        code = record_error(job_dir, exc)
        if code == 1:
            traceback.print_exc()
        return code
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # everything is on disk: skip TensorFlow's ~1 s interpreter teardown
