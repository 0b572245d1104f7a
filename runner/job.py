"""One benchmark job: validate -> (skip?) -> track -> acquire -> measured part in a child process
(``runner.worker``) -> log what it wrote. Config errors surface before anything expensive; any
later failure (exception, crash, signal, timeout) ends the job's MLflow run as FAILED with the
reason, and whatever the child already measured is still logged."""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from runner import backends, config, data, reference, table
from runner.config import JobConfig
from runner.worker import JobSpec, dataset_dict

log = logging.getLogger(__name__)

MAX_SERIES_POINTS = 1000  # per sampled quantity logged as an MLflow time series
#: config keys that do not change what a job measures (left out of its identity hash)
NOT_IDENTITY = ("tracking", "benchmark.rerun", "benchmark.timeout_s", "benchmark.isolate",
                "cache_dir")
PARENT_ENV = "DETBENCH_PARENT_RUN_ID"
OUTCOME = "outcome.json"  # the job's status, error and traceback, written before logging
PUBLISHED = "published.json"  # written once the job directory is logged to MLflow


class JobFailed(RuntimeError):
    """The measured part did not complete: the message says why (exception, signal, timeout)."""


@dataclass
class JobResult:
    status: str  # FINISHED | FAILED | KILLED | SKIPPED
    run_id: str | None
    tracking_uri: str
    metrics: dict[str, float] = field(default_factory=dict)
    row: dict[str, str] = field(default_factory=dict)
    error: str | None = None
    ui_link: str | None = None
    experiment_id: str | None = None
    name: str = ""
    pending_dir: Path | None = None  # set when results could not be logged (runner.sync them)


def model_dir(cfg: JobConfig) -> Path:
    if cfg.model.source == "embedded":
        return Path(str(resources.files("runner.demo") / "assets" / "demo_centernet"))
    if cfg.model.source == "zoo":
        from runner import acquire

        resolution = config.nominal_resolution(cfg)
        cache = Path(cfg.cache_dir).expanduser()
        return acquire.ensure_zoo_model(cfg.model.name, resolution, cache)
    assert cfg.model.path is not None
    return Path(cfg.model.path).expanduser()


def run_name(cfg: JobConfig) -> str:
    return cfg.tracking.run_name or (
        f"{cfg.model.name}@{config.nominal_resolution(cfg)}/{cfg.precision.name}"
    )


def identity(cfg: DictConfig) -> str:
    """A hash of everything that changes what a job measures (resume skips on it)."""
    flat = _flat(cfg)
    kept = {k: v for k, v in flat.items() if not any(
        k == n or k.startswith(n + ".") for n in NOT_IDENTITY)}
    return hashlib.sha1(json.dumps(kept, sort_keys=True).encode()).hexdigest()[:16]


def _flat(cfg: DictConfig) -> dict[str, str]:
    from runner.tracking import flatten

    return flatten(cfg)


def _params(cfg: DictConfig, choices: Mapping[str, str]) -> dict[str, str]:
    params = _flat(cfg)
    params.update({f"choice.{k}": str(v) for k, v in choices.items() if not k.startswith("hydra")})
    return params


def _start_tracking(job_cfg: JobConfig, cfg: DictConfig, choices: Mapping[str, str], key: str,
                    output_dir: Path) -> tuple[Any, str | None]:
    """(tracker with a started run, None) or, with the server gone mid-sweep, (None, a skip
    reason when the job already FINISHED). Writes tracking.json for runner.sync either way."""
    from mlflow.exceptions import MlflowException

    from runner.tracking import Tracker, TrackingUnavailable, resolve_uri

    name = run_name(job_cfg)
    tags = {"detbench.model": job_cfg.model.name, "detbench.precision": job_cfg.precision.name,
            "detbench.resolution": config.nominal_resolution(job_cfg),
            "detbench.dataset": job_cfg.dataset.display_name, "detbench.identity": key,
            "detbench.input_policy": job_cfg.benchmark.input_policy,
            "detbench.job_dir": str(output_dir.resolve()), **reference.tags(job_cfg, cfg)}
    if os.environ.get(PARENT_ENV):
        tags["mlflow.parentRunId"] = os.environ[PARENT_ENV]
    params = _params(cfg, choices)
    record = {"uri": resolve_uri(job_cfg.tracking.uri), "experiment": job_cfg.tracking.experiment,
              "name": name, "params": params, "tags": tags, "run_id": None}
    tracker: Any = None
    try:
        tracker = Tracker(job_cfg.tracking.uri, job_cfg.tracking.experiment)
        tracker.reap_orphans()
        done = None if job_cfg.benchmark.rerun else tracker.find_finished(key)
        if done:
            return None, (f"already measured: FINISHED run {done} has the same config "
                          "(benchmark.rerun=true measures it again)")
        record["run_id"] = tracker.start(name, params, tags)
    except (TrackingUnavailable, MlflowException, OSError) as exc:
        log.warning("tracking unavailable, results stay in %s (python -m runner.sync uploads "
                    "them later): %s", output_dir, exc)
        tracker = None
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "tracking.json").write_text(json.dumps(record, indent=1))
    return tracker, None


def run(cfg: DictConfig, choices: Mapping[str, str], output_dir: Path) -> JobResult:
    """Run one job; raises ConfigError (before any model loads) for bad input."""
    from runner.tracking import resolve_uri

    job_cfg = config.to_object(cfg)
    config.validate(job_cfg)
    name = run_name(job_cfg)
    uri = resolve_uri(job_cfg.tracking.uri)
    reason = config.skip_reason(job_cfg)
    if reason:
        return JobResult("SKIPPED", None, uri, error=reason, name=name)
    tracker, skip = _start_tracking(job_cfg, cfg, choices, identity(cfg), output_dir)
    if skip:
        return JobResult("SKIPPED", None, uri, error=skip, name=name)
    result = JobResult("RUNNING", tracker.run_id if tracker else None, uri, name=name,
                       ui_link=tracker.ui_link() if tracker else None,
                       experiment_id=tracker.experiment_id if tracker else None)
    (output_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    interrupted = False
    try:
        result.metrics = _acquire_and_measure(job_cfg, cfg, output_dir)
        result.row = table.row(job_cfg.model.display_name, config.nominal_resolution(job_cfg),
                               job_cfg.precision.display_name, result.metrics)
        (output_dir / "table_row.md").write_text(table.markdown([result.row]) + "\n")
        outcome = {"status": "FINISHED"}
    except (Exception, KeyboardInterrupt) as exc:
        interrupted = isinstance(exc, KeyboardInterrupt)
        outcome = {"status": "KILLED" if interrupted else "FAILED",
                   "error": f"{type(exc).__name__}: {exc}",
                   "traceback": "".join(traceback.format_exception(exc))}
        log.debug("job %s %s: %s", name, outcome["status"], outcome["error"])
    (output_dir / OUTCOME).write_text(json.dumps(outcome, indent=1))
    result.status, result.error = outcome["status"], outcome.get("error")
    if tracker is not None and result.status == "FINISHED":  # the AP a conversion costs
        try:
            result.metrics |= reference.log_difference(tracker, job_cfg, cfg, result.metrics)
        except Exception as exc:  # noqa: BLE001 - the server went away: publish says so
            log.warning("AP difference to Native FP32 not logged: %s", exc)
    try:
        if tracker is None:
            raise ConnectionError("the tracking server was unreachable when the job started")
        publish(output_dir, tracker)
    except Exception as exc:  # the server went away: keep the files for runner.sync
        result.pending_dir = output_dir
        log.warning("could not log to %s (%s); results kept in %s: upload them with "
                    "python -m runner.sync %s", uri, exc, output_dir, output_dir)
    if interrupted:
        raise KeyboardInterrupt
    return result


def publish(job_dir: Path, tracker: Any) -> None:
    """Log a job directory's results to the tracker's run and end it with the job's outcome;
    ``published.json`` marks the directory done (runner.sync skips it)."""
    outcome = json.loads((job_dir / OUTCOME).read_text())
    metrics_file = job_dir / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if outcome["status"] == "FINISHED" else None
    _log_outputs(tracker, job_dir, metrics)
    spec_file = job_dir / "job.json"
    if spec_file.is_file():
        ds = json.loads(spec_file.read_text())["dataset"]
        digest = hashlib.sha1(json.dumps([ds["annotations"], [r[0] for r in ds["images"]]])
                              .encode()).hexdigest()
        tracker.log_dataset(f"{ds['display_name']} ({len(ds['images'])} images)",
                            ds["annotations"], len(ds["images"]), digest)
    if outcome["status"] == "FINISHED":
        tracker.finish()
    else:
        tracker.end(outcome["status"], outcome.get("error"), outcome.get("traceback"))
    (job_dir / PUBLISHED).write_text(json.dumps({"run_id": tracker.run_id, "uri": tracker.uri}))


def _calibration(cfg: JobConfig, dataset: data.Dataset, job_dir: Path) -> list[Any]:
    """INT8 calibration images (written to calibration.json and logged with the run)."""
    from dataclasses import replace

    from runner import calibration

    need = backends.get(cfg.precision.backend).calibration(cfg.precision)
    if need is None:
        return []
    candidates = dataset.images + dataset.unscored
    split = cfg.dataset.calibration_split
    if need.source == "disjoint" and split:
        source = replace(cfg.dataset, split=split, num_images=None)
        candidates = data.load_dataset(source, cfg.cache_dir).images
    chosen = calibration.select(candidates, dataset.images, need.count, need.source,
                                config_path=need.config_path)
    data.require_files(chosen, "calibration image file(s)")
    rows = [(r.image_id, str(r.path), r.width, r.height) for r in chosen]
    (job_dir / "calibration.json").write_text(json.dumps(
        {"source": need.source, "count": len(rows), "images": rows}, indent=1))
    return rows


def _acquire_and_measure(cfg: JobConfig, raw: DictConfig, job_dir: Path) -> dict[str, float]:
    available = backends.check_available(cfg.precision)  # once per job, before any download
    directory = model_dir(cfg)
    if not (directory / "saved_model.pb").is_file():
        raise FileNotFoundError(f"no SavedModel at {str(directory)!r} (saved_model.pb missing)")
    dataset = data.load_dataset(cfg.dataset, cfg.cache_dir)
    container = OmegaConf.to_container(raw, resolve=True)
    assert isinstance(container, dict)
    spec = JobSpec(cfg={str(k): v for k, v in container.items()}, model_dir=str(directory),
                   dataset=dataset_dict(dataset),
                   keypoint_annotations=(str(dataset.keypoint_annotations)
                                         if dataset.keypoint_annotations else None),
                   extra={"calibration": _calibration(cfg, dataset, job_dir),
                          "backend_available": available})
    spec.write(job_dir)
    from runner.gpu_lock import exclusive_gpu

    # never two timed jobs on one GPU: hold its lock for the measured part
    with exclusive_gpu(cfg.cache_dir, timeout_s=None, in_process=not cfg.benchmark.isolate) as slot:
        log.info("measuring on %s", slot.name)
        if not cfg.benchmark.isolate:
            from runner.worker import execute

            return execute(job_dir)
        run_child(job_dir, cfg.benchmark.timeout_s)
    metrics = json.loads((job_dir / "metrics.json").read_text())
    assert isinstance(metrics, dict)
    return metrics


def _die_with_parent() -> None:
    """In the child before exec (Linux): SIGKILL it when the parent dies, so a killed sweep
    leaves no worker running on behind it."""
    import contextlib
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def run_child(job_dir: Path, timeout_s: float) -> None:
    """``python -m runner.worker job_dir`` in a fresh process; raises JobFailed with the reason."""
    preexec = _die_with_parent if sys.platform.startswith("linux") else None
    child = subprocess.Popen([sys.executable, "-m", "runner.worker", str(job_dir)],
                             preexec_fn=preexec)  # noqa: PLW1509 - only prctl, no locks
    try:
        code = child.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _stop(child)
        raise JobFailed(f"timeout: the measured part ran past benchmark.timeout_s={timeout_s:g} "
                        "and was killed") from None
    except BaseException:
        _stop(child)
        raise
    if code == 0:
        return
    error_file = job_dir / "error.json"
    if error_file.is_file():
        err = json.loads(error_file.read_text())
        raise JobFailed(f"{err['type']}: {err['message']}")
    if code < 0:
        raise JobFailed(f"the measured part was killed by signal {signal.Signals(-code).name}")
    raise JobFailed(f"the measured part exited with code {code}")


def _stop(child: subprocess.Popen[bytes]) -> None:
    child.terminate()
    try:
        child.wait(timeout=10)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


def _log_outputs(tracker: Any, job_dir: Path, metrics: Mapping[str, float] | None) -> None:
    """Log whatever the measured part wrote; a partial latencies file still gives statistics."""
    env_file = job_dir / "environment.json"
    if env_file.is_file():
        tracker.set_tags(json.loads(env_file.read_text()))
    stability_file = job_dir / "stability.json"
    if stability_file.is_file():
        verdict = json.loads(stability_file.read_text())
        tracker.set_tags({"detbench.stability": "stable" if verdict["stable"] else "unstable",
                          "detbench.stability_warning": verdict["warning"]})
    backend_file = job_dir / "backend.json"
    if backend_file.is_file():
        tracker.set_tags({f"backend.{k}": v for k, v in json.loads(
            backend_file.read_text()).items()})
    if metrics is None:
        metrics = _partial_metrics(job_dir)
    if metrics:
        tracker.log_metrics(metrics)
    _log_samples(tracker, job_dir)
    names = ("config.yaml", "latencies.csv", "samples.csv", "detections.json", "keypoints.json",
             "masks.json", "environment.json", "telemetry.json", "backend.json", "table_row.md",
             "calibration.json")
    tracker.log_artifacts([job_dir / n for n in names if (job_dir / n).is_file()])


def _partial_metrics(job_dir: Path) -> dict[str, float]:
    from runner.stats import summarize

    path = job_dir / "latencies.csv"
    if not path.is_file():
        return {}
    with path.open() as fh:
        values = [float(r["latency_ms"]) / 1000 for r in csv.DictReader(fh)]
    if not values:
        return {}
    return {f"partial.{k}": v for k, v in summarize(values).as_metrics().items()}


def _log_samples(tracker: Any, job_dir: Path) -> None:
    """Each numeric sampled quantity per device as an MLflow time series (at most 1000 points)."""
    samples, meta = job_dir / "samples.csv", job_dir / "telemetry.json"
    if not samples.is_file() or not meta.is_file():
        return
    wall0 = float(json.loads(meta.read_text())["wall_start"])
    series: dict[str, tuple[list[float], list[float]]] = {}
    with samples.open() as fh:
        for s in csv.DictReader(fh):
            for key, value in s.items():
                if key in ("t_s", "phase", "device") or value in ("", None):
                    continue
                try:
                    number = float(value)
                except ValueError:
                    continue
                values, stamps = series.setdefault(f"sample.{s['device']}.{key}", ([], []))
                values.append(number)
                stamps.append(wall0 + float(s["t_s"]))
    for name, (values, stamps) in series.items():
        stride = max(1, len(values) // MAX_SERIES_POINTS)
        tracker.log_series(name, values[::stride], stamps[::stride])
