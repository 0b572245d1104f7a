"""Hydra callbacks, both named in conf/config.yaml's ``hydra.callbacks``.

:class:`SweepSummary` ends a sweep with a summary of every job (finished, failed and why,
skipped and why) and an exit code that says whether all went well (non-zero only after every job
has run).

:class:`SweepParentRun` gives a sweep (``python -m runner -m ...``) a parent
MLflow run: each job's run carries the tag ``mlflow.parentRunId`` (runner/job.py reads the id
from ``$DETBENCH_PARENT_RUN_ID``, set here before the first job; an environment variable reaches
jobs run in this process by the basic launcher and in child processes by submitit), and at the end
the parent gets the sweep's status and its children's table and plots (runner.results.export)."""

from __future__ import annotations

import atexit
import logging
import os
import re
import shlex
import signal
import sys
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from runner.results.describe import SWEPT_ENV
from runner.tracking import resolve_uri

log = logging.getLogger(__name__)

PARENT_ENV = "DETBENCH_PARENT_RUN_ID"
SWEEP_TAG = "detbench.sweep"
MAX_PARAM_CHARS = 6000  # MLflow's limit on a param value
_BAD_KEY_CHARS = re.compile(r"[^\w\-. /]")


def sweep_status(child_statuses: list[str], jobs_failed: int = 0) -> str:
    """FINISHED when every child run FINISHED (jobs skipped before a run are not children) and
    no job failed outside its run; FAILED otherwise (a child still RUNNING included)."""
    ok = jobs_failed == 0 and all(s == "FINISHED" for s in child_statuses)
    return "FINISHED" if ok else "FAILED"


def sweep_params(argv: list[str], overrides: list[str]) -> dict[str, str]:
    """The parent's params: the command line, the overrides, and one ``override.<key>`` each."""
    params = {"command": shlex.join(argv), "overrides": " ".join(overrides)}
    for item in overrides:
        key, sep, value = item.partition("=")
        if sep:
            name = _BAD_KEY_CHARS.sub("_", key.lstrip("+~"))
            params[f"override.{name}"] = value
    from runner.tracking import redact

    return {k: redact(v)[:MAX_PARAM_CHARS] for k, v in params.items()}


OK = ("FINISHED", "SKIPPED")  # the job statuses SweepSummary does not count as failures


def outcome(job_return: JobReturn) -> dict[str, str]:
    """Status, name and reason of one job from what the task function returned or raised."""
    overrides = " ".join(job_return.overrides or [])
    if job_return.status == JobStatus.FAILED:
        exc = job_return._return_value  # the exception the task raised
        return {"status": "FAILED", "name": overrides, "reason": f"{type(exc).__name__}: {exc}"}
    value: Any = job_return._return_value
    if isinstance(value, dict):
        name = f"{value.get('name')} [{overrides}]" if overrides else str(value.get("name"))
        if value.get("pending"):  # measured, but not in the store: runner.sync uploads it
            return {"status": "UNLOGGED", "name": name,
                    "reason": f"{value.get('status')} but not logged: {value['pending']}"}
        return {"status": str(value.get("status")), "name": name,
                "reason": str(value.get("error") or "")}
    return {"status": "UNKNOWN", "name": overrides, "reason": repr(value)}


class SweepSummary(Callback):
    """Collects each job's outcome; prints the summary and exits 1 if any job did not end
    FINISHED or SKIPPED."""

    def __init__(self) -> None:
        self.jobs: list[dict[str, str]] = []

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Refuse to start a sweep whose tracking server is down, before any model loads."""
        from runner.tracking import refuse_unusable_store

        refuse_unusable_store(config.tracking.uri, "detbench: sweep not started: ")

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        self.jobs.append(outcome(job_return))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if not self.jobs:
            return
        from runner.tracking import redact

        print(redact(summary_text(self.jobs)))  # overrides may hold a tracking.uri password
        if any(job["status"] not in OK for job in self.jobs):
            sys.exit(1)


def summary_text(jobs: list[dict[str, str]]) -> str:
    counts = {s: sum(j["status"] == s for j in jobs) for s in sorted({j["status"] for j in jobs})}
    lines = ["", "Sweep summary: " + ", ".join(f"{n} {s.lower()}" for s, n in counts.items())]
    width = max(len(j["name"]) for j in jobs)
    for job in jobs:
        reason = f"  {job['reason']}" if job["reason"] else ""
        lines.append(f"  {job['status']:<8} {job['name']:<{width}}{reason}")
    return "\n".join(lines)


class SweepParentRun(Callback):
    """One parent MLflow run per multirun; ``tracking_uri`` / ``experiment`` default to the
    sweep config's ``tracking.uri`` / ``tracking.experiment``. ``report``: attach table.md,
    table.csv and the plots of the children (``extra`` as ``python -m runner.results.export
    --extra``)."""

    def __init__(self, tracking_uri: str | None = None, experiment: str | None = None,
                 report: bool = True, extra: str = "", compare: str = "auto") -> None:
        self.compare = compare  # reference for runner.results.compare (auto: by input policy)
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.report = report
        self.extra = extra
        self.run_id: str | None = None
        self.uri: str | None = None
        self.jobs_failed = 0
        self._previous_env: str | None = None
        self._swept_env: str | None = None
        self._report_dir: Path | None = None
        self._heartbeat: Any = None

    def __getstate__(self) -> dict[str, Any]:
        """The submitit launchers pickle the callbacks with every job: the parent run's heartbeat
        (a thread and its lock) stays in the sweep's own process, which owns the run."""
        return {**self.__dict__, "_heartbeat": None}

    # -- hydra hooks ------------------------------------------------------------------------

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from mlflow.entities import Param, RunTag

        from runner import signals, tracking

        signals.install()  # SIGTERM/SIGHUP end this run KILLED (see _abandoned)
        self.uri = resolve_uri(self.tracking_uri or _select(config, "tracking.uri"))
        experiment = self.experiment or _select(config, "tracking.experiment") or "detbench"
        tracking.redact_logs()  # Hydra logs each job's overrides, tracking.uri included
        client = tracking.client(self.uri)
        found = client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found else client.create_experiment(experiment)
        tracking.present_experiment(client, experiment_id)
        name = f"sweep {datetime.now():%Y-%m-%d %H:%M:%S}"
        overrides = [str(o) for o in (_select(config, "hydra.overrides.task") or [])]
        run = client.create_run(experiment_id, run_name=name,
                                tags={SWEEP_TAG: "true", **tracking.standard_tags(),
                                      **tracking.process_identity()})
        self.run_id = run.info.run_id
        params = sweep_params(list(sys.argv), overrides)
        client.log_batch(self.run_id, params=[Param(k, v) for k, v in params.items()],
                         tags=[RunTag("mlflow.note.content", f"{name}: {params['command']}")])
        self._previous_env = os.environ.get(PARENT_ENV)
        os.environ[PARENT_ENV] = self.run_id
        self._swept_env = _export_swept_keys(config, overrides)
        self._report_dir = _sweep_report_dir(config)
        self._heartbeat = tracking.Heartbeat(self.uri, self.run_id).start()
        atexit.register(self._abandoned)
        log.info("sweep parent MLflow run %s (%s) in %s", self.run_id, name, self.uri)

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        """Count the jobs the launcher saw fail, a run or not (an exception out of the task, or
        status FAILED / KILLED returned). Only in-process launchers call this here; submitit's
        jobs are judged by their runs alone."""
        value = job_return._return_value
        status = value.get("status") if isinstance(value, dict) else None
        if job_return.status == JobStatus.FAILED or status in ("FAILED", "KILLED"):
            self.jobs_failed += 1

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from runner import signals

        with signals.deferred():  # a SIGTERM now is raised once the parent run has ended
            self._end(config)

    def _end(self, config: DictConfig) -> None:
        if self.run_id is None:
            return
        status = "FAILED"
        try:
            try:
                statuses = self._child_statuses()
                status = sweep_status(statuses, self.jobs_failed)
                self._tag({"detbench.children": _counts(statuses) or "none"})
            except Exception as exc:  # noqa: BLE001 - the parent must still end with a status
                log.exception("sweep parent run %s: no child status", self.run_id)
                self._tag({"error": f"{type(exc).__name__}: {exc}"[:5000]})
            if self.report:
                try:
                    self._attach_report()
                except Exception as exc:  # noqa: BLE001 - a report problem is not a job failure
                    log.exception("sweep parent run %s: no report", self.run_id)
                    self._tag({"detbench.report_error": f"{type(exc).__name__}: {exc}"[:5000]})
        finally:
            self.close(status)

    # -- helpers ----------------------------------------------------------------------------

    def close(self, status: str) -> None:
        """End the parent run with ``status`` and restore $DETBENCH_PARENT_RUN_ID."""
        from runner import tracking

        if self.run_id is None:
            return
        run_id, self.run_id = self.run_id, None
        atexit.unregister(self._abandoned)
        if self._heartbeat is not None:
            self._heartbeat.stop()
        if self._previous_env is None:
            os.environ.pop(PARENT_ENV, None)
        else:
            os.environ[PARENT_ENV] = self._previous_env
        _restore_env(SWEPT_ENV, self._swept_env)
        tracking.client(self.uri).set_terminated(run_id, status)
        log.info("sweep parent MLflow run %s ended %s", run_id, status)

    def _abandoned(self) -> None:
        """At interpreter exit without on_multirun_end: KILLED with the signal as reason after
        SIGTERM/SIGHUP/SIGINT (runner.signals), FAILED otherwise (a job called sys.exit)."""
        from runner import signals

        if self.run_id is None:
            return
        signum = signals.received()
        if signum is not None:
            self._tag({"error": f"the sweep was {signals.describe(signum)}; rerun the same "
                                "command to resume it (finished jobs are skipped)",
                       "error.type": "Terminated", "error.signal": signal.Signals(signum).name})
            self.close("KILLED")
        else:
            self._tag({"error": "the sweep ended before its end callback ran"})
            self.close("FAILED")

    def _tag(self, tags: dict[str, str]) -> None:
        from runner import tracking

        if self.run_id is None:
            return
        client = tracking.client(self.uri)
        for key, value in tags.items():
            client.set_tag(self.run_id, key, value)

    def _child_statuses(self) -> list[str]:
        from runner.results.runs import search_all_runs

        runs = search_all_runs(self.uri, f"tags.`mlflow.parentRunId` = '{self.run_id}'")
        return [r.info.status for r in runs]

    def _attach_report(self) -> None:
        from runner import tracking
        from runner.results import export, runs

        assert self.run_id is not None
        children = runs.load_runs(self.uri, runs.Filters(parent=self.run_id))
        with tempfile.TemporaryDirectory(prefix="detbench-sweep-") as tmp:
            out = self._report_dir or Path(tmp)
            paths = export.write_report(children, out, export.parse_extra(self.extra),
                                        mix_environments=True)
            client = tracking.client(self.uri)
            for path in paths:
                client.log_artifact(self.run_id, str(path))
            summarize_parent(client, self.run_id, children, paths[0].read_text())
            try:
                from runner.results import compare

                compare.log_to_runs(self.uri, self.run_id, children,
                                    compare.resolve(self.compare, self.uri), out)
            except Exception as exc:  # noqa: BLE001 - a comparison problem is not a job failure
                log.exception("sweep parent run %s: no comparison", self.run_id)
                self._tag({"detbench.compare_error": f"{type(exc).__name__}: {exc}"[:5000]})
        log.info("sweep report: %s", ", ".join(p.name for p in paths))


def _select(config: DictConfig, key: str) -> Any:
    try:
        value = OmegaConf.select(config, key, default=None)
    except Exception:  # noqa: BLE001 - an unresolvable interpolation
        return None
    if OmegaConf.is_config(value):
        return OmegaConf.to_container(value, resolve=True)
    return value


def _sweep_report_dir(config: DictConfig) -> Path | None:
    """``<hydra.sweep.dir>/report`` (next to the jobs' outputs), None when unknown."""
    sweep_dir = _select(config, "hydra.sweep.dir")
    return Path(str(sweep_dir)) / "report" if sweep_dir else None


def _export_swept_keys(config: DictConfig, overrides: list[str]) -> str | None:
    """Tell the jobs which keys this sweep varies (their run names carry those values);
    returns the variable's previous value."""
    from runner.results.describe import swept_keys

    previous = os.environ.get(SWEPT_ENV)
    params = _select(config, "hydra.sweeper.params")
    os.environ[SWEPT_ENV] = ",".join(swept_keys(overrides, params if isinstance(params, dict)
                                                else None))
    return previous


def _restore_env(name: str, previous: str | None) -> None:
    if previous is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = previous


def summarize_parent(client: Any, run_id: str, children: Any, table_md: str) -> None:
    """The sweep's headline numbers as the parent run's own metrics (the runs table and the
    parent's page show them without opening an artifact) and the rendered table as its
    description."""
    from mlflow.entities import Metric, RunTag

    from runner import tracking
    from runner.results.describe import sweep_note

    finished = children[children["status"] == "FINISHED"] if len(children) else children
    metrics: dict[str, float] = {"children_total": float(len(children)),
                                 "children_finished": float(len(finished))}
    best_of: dict[str, float] = {}
    best = {"bbox.AP": "max", "images_per_sec": "max", "latency_mean_ms": "min",
            "latency_p99_ms": "min"}
    for metric, how in best.items():
        column = f"metrics.{metric}"
        if column in finished and finished[column].notna().any():
            values = finished[column].dropna()
            values = values[values >= 0]  # COCO's -1: not applicable
            if len(values):
                metrics[f"{how}.{metric}"] = float(values.max() if how == "max" else values.min())
                best_of[metric] = metrics[f"{how}.{metric}"]
    metrics.update(tracking.display_metrics(best_of))  # the runs view's columns
    now = int(datetime.now().timestamp() * 1000)
    run = client.get_run(run_id)
    statuses = list(children["status"]) if len(children) else []
    shown = {k.removeprefix(tracking.DISPLAY_PREFIX): v
             for k, v in tracking.display_metrics(best_of).items()}
    note = sweep_note(run.info.run_name or run_id, run.data.params.get("command", ""), table_md,
                      _counts(statuses) or "none", shown)
    client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in metrics.items()],
                     tags=[RunTag("mlflow.note.content", note[:5000])])


def _counts(statuses: list[str]) -> str:
    return ", ".join(f"{statuses.count(s)} {s}" for s in sorted(set(statuses)))
