"""One benchmark job: validate -> (skip?) -> track -> acquire -> measured part in a child process
(``runner.worker``) -> log what it wrote. Config errors surface before anything expensive; any
later ending ends the job's MLflow run with the reason: FAILED for an exception, a crash, a
timeout or a full disk; KILLED for SIGTERM/SIGHUP/SIGINT (runner.signals) or submitit's exit on
SLURM's time-limit/preemption signal, after which the exception goes on (exit 128 + signal).
Whatever the child measured is logged on every ending: the latencies it stored (``partial.*``
statistics and ``latencies.csv`` from the memory-mapped log) and the telemetry rows it wrote.
File names and atomic writes: ``runner.jobdir``."""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from runner import backends, config, data, fingerprint, jobdir, reference, signals
from runner.config import JobConfig
from runner.results import describe, table
from runner.worker import JobSpec, dataset_dict

if TYPE_CHECKING:  # runner.tracking imports MLflow lazily; the job imports it when it tracks
    from runner.fingerprint import Fingerprint
    from runner.tracking import Tracker

log = logging.getLogger(__name__)

MAX_SERIES_POINTS = 1000  # per sampled quantity logged as an MLflow time series
#: config keys that do not change what a job measures (left out of its identity hash)
NOT_IDENTITY = config.NOT_MEASURED
OUTCOME = jobdir.OUTCOME
PUBLISHED = jobdir.PUBLISHED
#: seconds the worker gets to write what it has after SIGTERM before it is SIGKILLed (it handles
#: the signal once the model call in flight returns; a hung call never does)
STOP_GRACE_S = 10.0
#: metrics of a job's telemetry that the parent can rebuild from samples.csv for a job that did
#: not finish (name -> (column, statistic)); the full set comes from runner.telemetry
PARTIAL_TELEMETRY = {"host_cpu_util_mean": ("host_cpu_util_pct", "mean"),
                     "host_cpu_util_max": ("host_cpu_util_pct", "max"),
                     "process_cpu_util_mean": ("process_cpu_util_pct", "mean"),
                     "process_rss_peak_mb": ("process_rss_mb", "max"),
                     "gpu_util_mean": ("gpu_util_pct", "mean"),
                     "gpu_util_max": ("gpu_util_pct", "max"),
                     "gpu_mem_peak_mb": ("mem_used_mb", "max"),
                     "gpu_temp_max_c": ("temperature_c", "max"),
                     "gpu_sm_clock_mean_mhz": ("sm_clock_mhz", "mean")}


class JobFailed(RuntimeError):
    """The measured part did not complete. ``error_type`` and ``message`` are the child's own
    exception's (or ``Timeout`` / ``WorkerCrashed``); ``signum`` is set when a signal ended it."""

    def __init__(self, message: str, error_type: str = "JobFailed",
                 signum: int | None = None) -> None:
        super().__init__(message)
        self.message, self.error_type, self.signum = message, error_type, signum


@dataclass
class Outcome:
    """How a job ended (``outcome.json``): error type and message as separate fields."""

    status: str  # FINISHED | FAILED | KILLED
    error_type: str | None = None
    error: str | None = None  # the message alone
    traceback: str | None = None
    signal: int | None = None

    @property
    def text(self) -> str | None:
        """``Type: message`` for people (the run's ``error`` tag, the summary)."""
        if self.error is None:
            return None
        return f"{self.error_type}: {self.error}" if self.error_type else self.error

    def write(self, job_dir: Path) -> None:
        jobdir.write_json(job_dir / OUTCOME, self.__dict__)

    @classmethod
    def read(cls, job_dir: Path) -> Outcome:
        raw = jobdir.read_json(job_dir / OUTCOME)
        if not isinstance(raw, dict) or raw.get("status") not in ("FINISHED", "FAILED", "KILLED"):
            raise jobdir.JobDirError(f"{job_dir / OUTCOME} has no valid status: {raw!r:.200}")
        return cls(str(raw["status"]), raw.get("error_type"), raw.get("error"),
                   raw.get("traceback"), raw.get("signal"))


def ending(exc: BaseException) -> Outcome:
    """The outcome of a job that ``exc`` ended."""
    trace = "".join(traceback.format_exception(exc))
    if isinstance(exc, signals.Terminated):
        return Outcome("KILLED", "Terminated",
                       f"{signals.describe(exc.signum)}: the job was stopped (docker stop, "
                       "SLURM time limit, preemption or scancel, timeout, a closed terminal)",
                       trace, exc.signum)
    if isinstance(exc, KeyboardInterrupt):
        return Outcome("KILLED", "KeyboardInterrupt", "interrupted (SIGINT, Ctrl-C)", trace,
                       signal.SIGINT)
    if isinstance(exc, SystemExit) or type(exc).__name__ == "UncompletedJobError":
        return Outcome("KILLED", type(exc).__name__,
                       f"the job was told to exit ({exc!s}): submitit does this on SLURM's "
                       "time-limit or preemption signal", trace)
    if isinstance(exc, JobFailed):
        return Outcome("KILLED" if exc.signum else "FAILED", exc.error_type, exc.message, trace,
                       exc.signum)
    return Outcome("FAILED", type(exc).__name__, str(exc), trace)


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
    pending_reason: str | None = None  # why they could not be logged


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
    """``model@resolution/precision``, then the job's other swept settings in brackets."""
    if cfg.tracking.run_name:
        return cfg.tracking.run_name
    base = f"{cfg.model.name}@{config.nominal_resolution(cfg)}/{cfg.precision.name}"
    return describe.run_name(base, job_variant())


def job_variant() -> str:
    """The overrides that tell this job apart from its sweep's others (describe.variant)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return ""
    overrides = [str(o) for o in HydraConfig.get().overrides.task]
    return describe.variant(overrides, describe.swept_from_env())


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
                    output_dir: Path, prints: Fingerprint | None = None
                    ) -> tuple[Tracker | None, str | None, str | None]:
    """(tracker with a started run, None, None); (tracker attached to the stored run, a skip
    reason, None) when the job already FINISHED with the same config, model bytes, dataset and
    environment (``prints``);
    (None, None, why) when the store cannot take the run (the server gone mid-sweep, a
    read-only database). Writes tracking.json for runner.sync."""
    from mlflow.exceptions import MlflowException

    from runner.callbacks import PARENT_ENV  # set by the sweep's parent run
    from runner.tracking import Tracker, TrackingUnavailable, redact, resolve_uri

    name = run_name(job_cfg)
    tags = {"detbench.model": job_cfg.model.name, "detbench.precision": job_cfg.precision.name,
            "detbench.resolution": config.nominal_resolution(job_cfg),
            "detbench.dataset": job_cfg.dataset.display_name, "detbench.identity": key,
            "detbench.input_policy": job_cfg.benchmark.input_policy,
            "detbench.job_dir": str(output_dir.resolve()), **reference.tags(job_cfg, cfg)}
    if prints is not None:  # model bytes, dataset and env.key (runner.fingerprint)
        tags.update({**prints.tags(key), "detbench.identity": prints.identity(key)})
    if job_variant():
        tags[describe.VARIANT_TAG] = job_variant()
    # tracking.CONFIG_TAG: the runs view groups repeats of one config (same identity) on it
    tags["detbench.config"] = (f"{job_cfg.model.name}@{config.nominal_resolution(job_cfg)}/"
                               f"{job_cfg.precision.name} #{tags['detbench.identity'][:8]}")
    if os.environ.get(PARENT_ENV):
        tags["mlflow.parentRunId"] = os.environ[PARENT_ENV]
    params = {k: redact(v) for k, v in _params(cfg, choices).items()}  # no credentials
    record = {"uri": redact(resolve_uri(job_cfg.tracking.uri)),
              "experiment": job_cfg.tracking.experiment,
              "name": name, "params": params, "tags": tags, "run_id": None}
    tracker: Tracker | None = None
    problem: str | None = None
    try:
        tracker = Tracker(job_cfg.tracking.uri, job_cfg.tracking.experiment)
        tracker.reap_orphans()
        if not job_cfg.benchmark.rerun and prints is not None:
            skip, note = fingerprint.resume_decision(tracker, key, prints)
            if skip:
                stored = tracker.latest_finished("detbench.identity", prints.identity(key))
                if stored is not None:
                    tracker.attach(stored[0])  # its row and link are shown (results.report)
                return tracker, skip, None
            if note:
                log.info("%s", note)
        record["run_id"] = tracker.start(name, params, tags)
    except (TrackingUnavailable, MlflowException, OSError) as exc:
        problem = _store_problem(str(record["uri"]), exc)
        log.warning("tracking unavailable, results stay in %s (python -m runner.sync uploads "
                    "them later): %s", output_dir, problem)
        tracker = None
    output_dir.mkdir(parents=True, exist_ok=True)
    try:
        jobdir.write_json(output_dir / jobdir.TRACKING, record)
    except jobdir.JobDirError as exc:  # only runner.sync needs it; the job fails on its next write
        log.warning("%s", exc)
    return tracker, None, problem


def _store_problem(uri: str, exc: BaseException) -> str:
    """Why the store did not take the run, in words that fit the cause."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if "readonly database" in text.lower() or "read-only" in text.lower():
        return (f"the MLflow store {uri} is read-only ({text}): make the file and its directory "
                "writable, or choose another store with tracking.uri=... or MLFLOW_TRACKING_URI")
    if uri.startswith(("http://", "https://")):
        return f"the tracking server at {uri} did not take the run: {text}"
    return f"the MLflow store {uri} did not take the run: {text}"


def run(cfg: DictConfig, choices: Mapping[str, str], output_dir: Path) -> JobResult:
    """Run one job; raises ConfigError (before any model loads) for bad input and
    backends.UnsupportedPrecision (before any download or run) for a backend this machine
    cannot run. An ending signal
    (SIGTERM, SIGHUP, SIGINT) or submitit's SystemExit ends the run KILLED and is then re-raised
    (``python -m runner`` exits 128 + signal)."""
    from runner.tracking import Heartbeat, protect_job_dir, redact, resolve_uri

    protect_job_dir(output_dir)  # no credentials in Hydra's files or the logs
    job_cfg = config.to_object(cfg)
    config.validate(job_cfg)
    from runner import preflight

    preflight.check(cfg, job_cfg)  # unknown keys
    name = run_name(job_cfg)
    uri = redact(resolve_uri(job_cfg.tracking.uri))
    reason = config.skip_reason(job_cfg)
    if reason:
        return JobResult("SKIPPED", None, uri, error=reason, name=name)
    # once per job, before any download or run; raises backends.UnsupportedPrecision (exit 2
    # for one job, SKIPPED with its reason in a sweep: runner.__main__)
    available = backends.check_available(job_cfg.precision)
    prints = fingerprint.of_job(  # loads and validates the dataset: before any run
        job_cfg, backends.get(job_cfg.precision.backend).environment(available))
    signals.install()  # also where submitit runs the job without runner.__main__
    tracker, skip, problem = _start_tracking(job_cfg, cfg, choices, identity(cfg), output_dir,
                                             prints)
    if skip:
        return JobResult("SKIPPED", tracker.run_id if tracker else None, uri, error=skip,
                         name=name, ui_link=tracker.ui_link() if tracker else None,
                         experiment_id=tracker.experiment_id if tracker else None)
    result = JobResult("RUNNING", tracker.run_id if tracker else None, uri, name=name,
                       ui_link=tracker.ui_link() if tracker else None,
                       experiment_id=tracker.experiment_id if tracker else None)
    # a tracker that did not skip has started its run, so it has a run id
    heartbeat = (Heartbeat(tracker.uri, tracker.run_id).start()
                 if tracker and tracker.run_id else None)
    stopped_by: BaseException | None = None
    try:
        jobdir.write_text(output_dir / jobdir.CONFIG,
                          redact(OmegaConf.to_yaml(cfg, resolve=True)))
        result.metrics = _acquire_and_measure(job_cfg, cfg, output_dir, available)
        result.row = table.row(job_cfg.model.display_name, config.nominal_resolution(job_cfg),
                               job_cfg.precision.display_name, result.metrics)
        jobdir.write_text(output_dir / jobdir.TABLE_ROW, table.markdown([result.row]) + "\n")
        outcome = Outcome("FINISHED")
    except BaseException as exc:  # noqa: BLE001 - every ending is recorded, signals re-raised
        stopped_by = None if isinstance(exc, Exception) else exc
        outcome = ending(exc)
        log.debug("job %s %s: %s", name, outcome.status, outcome.text)
    finally:
        if heartbeat is not None:
            heartbeat.stop()
    result.status, result.error = outcome.status, outcome.text
    if tracker is not None and result.status == "FINISHED":  # the AP a conversion costs
        try:
            result.metrics |= reference.log_difference(tracker, job_cfg, cfg, result.metrics)
        except Exception as exc:  # noqa: BLE001 - the server went away: publishing says so
            log.warning("AP difference to Native FP32 not logged: %s", exc)
    with signals.deferred():  # a signal now ends the process after the run is ended, not during
        result.pending_reason = _record_outcome(output_dir, outcome, tracker, problem)
    if result.pending_reason:
        result.pending_dir = output_dir
        log.warning("could not log to %s (%s); results kept in %s: upload them with "
                    "python -m runner.sync %s", uri, result.pending_reason, output_dir,
                    output_dir)
    if stopped_by is not None:
        raise stopped_by
    return result


def _record_outcome(job_dir: Path, outcome: Outcome, tracker: Tracker | None,
                    problem: str | None) -> str | None:
    """Write outcome.json and log the job directory; None when logged, else why not. A full
    disk does not stop the logging: the outcome in memory ends the run."""
    try:
        outcome.write(job_dir)
    except jobdir.JobDirError as exc:
        log.warning("%s", exc)
        if outcome.status == "FINISHED":  # its results are on a disk that is full: not trusted
            outcome.status, outcome.error_type, outcome.error = "FAILED", "NoSpace", str(exc)
    try:
        if tracker is None:
            raise ConnectionError(problem or "no MLflow run was started")
        publish(job_dir, tracker, outcome)
    except Exception as exc:  # noqa: BLE001 - the store went away: keep the files for runner.sync
        return str(exc) or type(exc).__name__
    return None


def publish(job_dir: Path, tracker: Tracker, outcome: Outcome | None = None) -> None:
    """Log a job directory's results to the tracker's run and end it with the job's outcome
    (``outcome.json`` unless given); ``published.json`` marks the directory done (runner.sync
    skips it). Publishing again (runner.sync after a partial upload) logs no metric twice."""
    outcome = outcome or Outcome.read(job_dir)
    metrics = None
    if outcome.status == "FINISHED":
        metrics = jobdir.read_json(job_dir / jobdir.METRICS)
    _log_outputs(tracker, job_dir, metrics)
    spec = jobdir.read_json_if(job_dir / jobdir.JOB)
    if spec is not None:
        ds = spec["dataset"]
        digest = hashlib.sha1(json.dumps([ds["annotations"], _image_ids(ds["images"])])
                              .encode()).hexdigest()
        tracker.log_dataset(f"{ds['display_name']} ({len(ds['images'])} images)",
                            ds["annotations"], len(ds["images"]), digest)
    from runner.results.presentation import present_run

    present_run(tracker, job_dir, outcome.status, outcome.text, metrics)
    if outcome.status == "FINISHED":
        tracker.finish()
    else:
        tracker.set_tags({k: v for k, v in (("error.type", outcome.error_type),
                                            ("error.message", outcome.error)) if v})
        if outcome.signal:
            tracker.set_tags({"error.signal": signal.Signals(outcome.signal).name})
        tracker.end(outcome.status, outcome.text, outcome.traceback)
    try:
        jobdir.write_json(job_dir / PUBLISHED, {"run_id": tracker.run_id, "uri": tracker.uri})
    except jobdir.JobDirError as exc:  # logged all the same; runner.sync would not duplicate it
        log.warning("%s", exc)


def _calibration(cfg: JobConfig, dataset: data.Dataset, job_dir: Path) -> list[dict[str, Any]]:
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
    rows = [r.to_json() for r in chosen]
    jobdir.write_json(job_dir / jobdir.CALIBRATION,
                      {"source": need.source, "count": len(rows), "images": rows})
    return rows


def _acquire_and_measure(cfg: JobConfig, raw: DictConfig, job_dir: Path,
                         available: Mapping[str, str]) -> dict[str, float]:
    directory = model_dir(cfg)
    if not (directory / "saved_model.pb").is_file():
        raise FileNotFoundError(f"no SavedModel at {str(directory)!r} (saved_model.pb missing)")
    dataset = data.load_dataset(cfg.dataset, cfg.cache_dir)
    container = OmegaConf.to_container(raw, resolve=True)
    assert isinstance(container, dict)
    if isinstance(container.get("tracking"), dict) and container["tracking"].get("uri"):
        from runner.tracking import redact  # the worker never needs the store's password

        container["tracking"]["uri"] = redact(str(container["tracking"]["uri"]))
    spec = JobSpec(cfg={str(k): v for k, v in container.items()}, model_dir=str(directory),
                   dataset=dataset_dict(dataset),
                   keypoint_annotations=(str(dataset.keypoint_annotations)
                                         if dataset.keypoint_annotations else None),
                   extra={"calibration": _calibration(cfg, dataset, job_dir),
                          "backend_available": dict(available)})
    spec.write(job_dir)
    from runner.gpu_lock import exclusive_gpu

    # never two timed jobs on one GPU: hold its lock for the measured part
    with exclusive_gpu(cfg.cache_dir, timeout_s=None, in_process=not cfg.benchmark.isolate) as slot:
        log.info("measuring on %s", slot.name)
        if not cfg.benchmark.isolate:
            from runner.worker import execute

            return execute(job_dir)
        run_child(job_dir, cfg.benchmark.timeout_s)
    metrics = jobdir.read_json(job_dir / jobdir.METRICS)
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
    """``python -m runner.worker job_dir`` in a fresh process; raises JobFailed with the reason.
    On any ending here (timeout, a signal to this process) the worker and what it started (the
    sampling process) are stopped: SIGTERM, then SIGKILL after STOP_GRACE_S."""
    preexec = _die_with_parent if sys.platform.startswith("linux") else None
    child = subprocess.Popen([sys.executable, "-m", "runner.worker", str(job_dir)],
                             preexec_fn=preexec)  # noqa: PLW1509 - only prctl, no locks
    try:
        code = child.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _stop(child)
        raise JobFailed(f"the measured part ran past benchmark.timeout_s={timeout_s:g} and was "
                        "stopped (timeout); the latencies measured until then are logged as "
                        "partial.*", "Timeout") from None
    except BaseException:
        _stop(child)
        raise
    if code == 0:
        return
    try:
        err = jobdir.read_json_if(job_dir / jobdir.ERROR)
    except jobdir.JobDirError as exc:
        raise JobFailed(f"the measured part exited with code {code}; {exc}",
                        "WorkerCrashed") from None
    if err is not None:
        raise JobFailed(str(err.get("message")), str(err.get("type")), err.get("signal"))
    if code < 0:
        raise JobFailed(f"the measured part was killed by signal {signal.Signals(-code).name}",
                        "WorkerCrashed")
    reason = f"the measured part exited with code {code} without recording why"
    free = shutil.disk_usage(job_dir).free
    if free < 1024 * 1024:
        raise JobFailed(f"no space left on the job directory's filesystem ({free} bytes free "
                        f"in {job_dir}): {reason}", "NoSpace")
    raise JobFailed(reason + " (see its output above)", "WorkerCrashed")


def _stop(child: subprocess.Popen[bytes]) -> None:
    """SIGTERM the worker (it writes its telemetry and exits 143), SIGKILL it after
    STOP_GRACE_S, then stop any process it left behind (its sampling process)."""
    import psutil

    try:
        descendants = psutil.Process(child.pid).children(recursive=True)
    except psutil.Error:
        descendants = []
    child.terminate()
    try:
        child.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()
    alive = [p for p in descendants if p.is_running()]
    for proc in alive:
        with _suppress_psutil():
            proc.terminate()
    _, alive = psutil.wait_procs(alive, timeout=STOP_GRACE_S)
    for proc in alive:
        with _suppress_psutil():
            proc.kill()


def _suppress_psutil() -> Any:
    import contextlib

    import psutil

    return contextlib.suppress(psutil.Error)


def _log_outputs(tracker: Tracker, job_dir: Path, metrics: Mapping[str, float] | None) -> None:
    """Log whatever the measured part wrote; a job that did not finish gets ``partial.*``
    statistics of the latencies it stored and of the telemetry rows it wrote, and its
    ``latencies.csv`` is rebuilt from the latency log (the worker may not have written it)."""
    env = jobdir.read_json_if(job_dir / jobdir.ENVIRONMENT)
    if env:
        tracker.set_tags(env)
    verdict = jobdir.read_json_if(job_dir / jobdir.STABILITY)
    if verdict:
        tracker.set_tags({"detbench.stability": "stable" if verdict["stable"] else "unstable",
                          "detbench.stability_warning": verdict["warning"]})
    checks = jobdir.read_json_if(job_dir / jobdir.OUTPUT_CHECKS)  # runner.checks' findings
    if checks:
        tracker.set_tags({"detbench.output_checks": checks["summary"][:5000]})
    described = jobdir.read_json_if(job_dir / jobdir.BACKEND)
    if described:
        tracker.set_tags({f"backend.{k}": v for k, v in described.items()})
    if metrics is None:
        metrics = {**_partial_metrics(job_dir), **_partial_telemetry(job_dir)}
    logged = tracker.logged_metrics()
    fresh = {k: v for k, v in metrics.items() if k not in logged}
    if fresh:
        tracker.log_metrics(fresh)
    _log_samples(tracker, job_dir, logged)
    names: tuple[str, ...] = jobdir.ARTIFACTS
    if not (job_dir / jobdir.SAMPLES).is_file():  # a killed worker: the rows it streamed
        names = (*names, jobdir.TELEMETRY_ROWS)
    tracker.log_artifacts(jobdir.existing(job_dir, names))


def _image_ids(rows: list[Any]) -> list[int]:
    """The image ids of ``job.json``'s dataset records (``data.ImageRecord.to_json``)."""
    return [data.ImageRecord.from_json(r).image_id for r in rows]


def _partial_metrics(job_dir: Path) -> dict[str, float]:
    """``partial.*`` statistics of every latency in the log (all passes), and latencies.csv
    rebuilt from it; without a log (a directory from before it), from latencies.csv."""
    from runner.stats import summarize

    log_ = jobdir.read_latency_log(job_dir)
    spec = jobdir.read_json_if(job_dir / jobdir.JOB)
    if log_ is not None:
        if spec is not None:
            ids = _image_ids(spec["dataset"]["images"])
            try:
                jobdir.write_latencies_csv(job_dir, ids, log_)
            except jobdir.JobDirError as exc:
                log.warning("%s", exc)
        if _seed_policy(spec):  # as the finished statistics: the public script's first 50
            from runner.worker import SEED_DROPPED_TIMINGS  # timings of each pass are dropped

            log_ = log_[:, SEED_DROPPED_TIMINGS:]
        values = list(jobdir.measured(log_))
    elif (job_dir / jobdir.LATENCIES).is_file():
        with (job_dir / jobdir.LATENCIES).open() as fh:
            values = [float(r["latency_ms"]) / 1000 for r in csv.DictReader(fh)]
    else:
        return {}
    if not values:
        return {}
    return {f"partial.{k}": v for k, v in summarize(values).as_metrics().items()}


def _seed_policy(spec: Any) -> bool:
    """Whether a job directory's spec (job.json) ran the ``seed`` input policy."""
    try:
        return bool(spec["cfg"]["benchmark"]["input_policy"] == "seed")
    except (TypeError, KeyError):
        return False


def _sample_rows(job_dir: Path) -> list[dict[str, str]]:
    path = job_dir / jobdir.SAMPLES
    if not path.is_file():
        return []
    try:
        with path.open(newline="") as fh:
            return list(csv.DictReader(fh))
    except (OSError, csv.Error, UnicodeDecodeError) as exc:
        log.warning("%s is unreadable (%s): its samples are not logged", path, exc)
        return []


def _streamed_rows(job_dir: Path) -> list[dict[str, str]]:
    """The sampler's rows as streamed to telemetry_rows.csv (no phase: that is kept in the
    worker's memory), for a worker killed before it wrote samples.csv."""
    path = job_dir / jobdir.TELEMETRY_ROWS
    if not path.is_file():
        return []
    try:
        with path.open(newline="") as fh:
            return [{**r, "t_s": r.get("t", "")} for r in csv.DictReader(fh)]
    except (OSError, csv.Error, UnicodeDecodeError) as exc:
        log.warning("%s is unreadable (%s): its rows are not logged", path, exc)
        return []


def _partial_telemetry(job_dir: Path) -> dict[str, float]:
    """``partial.*`` telemetry of the timed phase from the rows in samples.csv (means and
    peaks of the quantities in PARTIAL_TELEMETRY), for a job that did not finish; from every
    row streamed to telemetry_rows.csv when the worker was killed before it wrote samples.csv
    (then ``partial.telemetry_all_phases`` = 1: load and warm-up are in the figures)."""
    rows = [r for r in _sample_rows(job_dir) if r.get("phase") == "timed"]
    all_phases = not (job_dir / jobdir.SAMPLES).is_file()
    if all_phases:
        rows = _streamed_rows(job_dir)
    out: dict[str, float] = {}
    for name, (column, statistic) in PARTIAL_TELEMETRY.items():
        values = [v for r in rows if (v := _number(r.get(column))) is not None]
        if values:
            out[f"partial.{name}"] = max(values) if statistic == "max" else (
                sum(values) / len(values))
    if rows:
        out["partial.samples_count"] = float(len({r.get("t_s") for r in rows}))
        if all_phases:
            out["partial.telemetry_all_phases"] = 1.0
    return out


def _number(value: str | None) -> float | None:
    try:
        number = float(value) if value not in (None, "") else None
    except ValueError:
        return None
    return number if number is not None and math.isfinite(number) else None


def _log_samples(tracker: Tracker, job_dir: Path, logged: Mapping[str, float]) -> None:
    """Each numeric sampled quantity per device as an MLflow time series (at most 1000 points);
    a series already logged (a second publish) is not logged again."""
    meta = jobdir.read_json_if(job_dir / jobdir.TELEMETRY)
    rows = _sample_rows(job_dir)
    if not rows or not meta:
        return
    wall0 = float(meta["wall_start"])
    series: dict[str, tuple[list[float], list[float]]] = {}
    for s in rows:
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
    from runner.tracking import system_metric_name

    for name, (values, stamps) in series.items():
        if name in logged:
            continue
        stride = max(1, len(values) // MAX_SERIES_POINTS)
        tracker.log_series(name, values[::stride], stamps[::stride])
        _, device, quantity = name.split(".", 2)  # also where MLflow shows system metrics
        tracker.log_series(system_metric_name(device, quantity), values[::stride],
                           stamps[::stride])
