"""MLflow: the only module that talks to the tracking store. One run per job, created through
``MlflowClient`` (no global active-run state), always ended with a terminal status."""

from __future__ import annotations

import functools
import json
import math
import os
import socket
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Self

from omegaconf import DictConfig, OmegaConf

DEFAULT_URI = "sqlite:///mlflow.db"
UI_HOST = "http://127.0.0.1:5000"
_BATCH = 1000  # MLflow's limit of metrics per log_batch call
RETRY_S = 120.0  # how long a store call is retried while SQLite reports "database is locked"
# A dead tracking server should fail a call in seconds, not after MLflow's default ~2 minutes.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
_ARTIFACT_PROGRESS_VAR = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
HEARTBEAT_TAG = "detbench.heartbeat"  # unix seconds, refreshed while the run's process lives
HEARTBEAT_S = 60.0
#: a RUNNING run on another host whose heartbeat is older than this is reaped (15 missed beats:
#: a loaded store or a paused VM does not look dead)
STALE_AFTER_S = 900.0


class TrackingUnavailable(RuntimeError):
    """The tracking server does not answer; the message says which and what to do."""


def check_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """For an HTTP tracking URI, GET /health once (fast) instead of MLflow's long retries."""
    if not uri.startswith(("http://", "https://")):
        return
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s) as reply:
            if reply.status == 200:
                return
            problem = f"HTTP {reply.status}"
    except (urllib.error.URLError, OSError) as exc:
        problem = str(getattr(exc, "reason", exc))
    raise TrackingUnavailable(
        f"the MLflow tracking server at {uri} is not reachable ({problem}); start it "
        "(make docker-mlflow, or mlflow server) or choose another store with tracking.uri=... "
        "or MLFLOW_TRACKING_URI")


def _transient(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "database is locked" in text or "database table is locked" in text


def retrying(call: Any, *args: Any, **kwargs: Any) -> Any:
    """Call a store operation, retrying with backoff while SQLite is locked by another writer."""
    delay, deadline = 0.05, time.monotonic() + RETRY_S
    while True:
        try:
            return call(*args, **kwargs)
        except Exception as exc:
            if not _transient(exc) or time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 2.0)


def resolve_uri(configured: str | None) -> str:
    """Config value, else $MLFLOW_TRACKING_URI, else an SQLite store in the working directory."""
    return configured or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def flatten(cfg: DictConfig | Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config -> ``{"model.name": "demo", ...}`` with string values (MLflow params)."""
    data = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    assert isinstance(data, Mapping)
    flat: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key!s}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = json.dumps(value) if isinstance(value, list | dict) else str(value)
    return flat


def _store_init_lock(uri: str) -> Any:
    """Serialize first use of an SQLite store: two processes creating its tables at once fail."""
    import contextlib

    from filelock import FileLock

    if not uri.startswith("sqlite:///"):
        return contextlib.nullcontext()
    path = Path(uri[len("sqlite:///"):].split("?", 1)[0]).expanduser()
    return FileLock(str(path.parent.resolve() / f".{path.name}.init.lock"))


class _Retrying:
    """An MlflowClient whose calls are retried while SQLite is locked (two sweeps, one store)."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        return functools.partial(retrying, attr) if callable(attr) else attr


def client(uri: str | None = None) -> Any:
    """An MlflowClient for ``uri`` (resolved as the runner does), safe for concurrent use of one
    SQLite store: its first use is serialized and "database is locked" is retried."""
    from mlflow.tracking import MlflowClient

    resolved = resolve_uri(uri)
    with _store_init_lock(resolved):
        wrapped = _Retrying(MlflowClient(tracking_uri=resolved))
        wrapped.search_experiments(max_results=1)  # creates a new store's tables, under the lock
    return wrapped


def process_identity() -> dict[str, str]:
    """Tags that let a later run tell whether the process behind a RUNNING run is still alive."""
    import psutil

    me = psutil.Process()
    return {"detbench.host": socket.gethostname(), "detbench.pid": str(me.pid),
            "detbench.pid_start": f"{me.create_time():.3f}", HEARTBEAT_TAG: f"{time.time():.0f}"}


class Heartbeat:
    """Refreshes a run's ``detbench.heartbeat`` tag every ``interval_s`` from a daemon thread
    while the process that owns the run lives, so that a job on any host can tell a live run
    from one whose process or host is gone (Tracker.reap_orphans). A failed refresh is retried
    at the next beat (the store may be down for a while)."""

    def __init__(self, uri: str, run_id: str, interval_s: float = HEARTBEAT_S) -> None:
        self.uri, self.run_id, self.interval_s = uri, run_id, interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Self:
        self._thread = threading.Thread(target=self._run, name="detbench-heartbeat", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        store: Any = None
        while not self._stop.wait(self.interval_s):
            try:
                store = store or client(self.uri)
                store.set_tag(self.run_id, HEARTBEAT_TAG, f"{time.time():.0f}")
            except Exception:  # noqa: BLE001, S112 - the next beat tries again
                continue

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)


def orphan_reason(tags: Mapping[str, str], host: str, now: float,
                  stale_after_s: float = STALE_AFTER_S) -> str | None:
    """Why a RUNNING run with these tags is an orphan, None while its owner may be alive: on
    this host, its process is gone (pid and start time); on another host, its heartbeat is
    older than ``stale_after_s``. A run from another host without a heartbeat (written before
    heartbeats) is left alone: nothing tells whether it lives."""
    if "detbench.host" not in tags:
        return None
    pid, owner = tags.get("detbench.pid"), tags["detbench.host"]
    if owner == host:
        if _alive(tags):
            return None
        return (f"orphaned: the process that ran it (pid {pid} on {host}) ended without "
                "closing it, e.g. killed with SIGKILL")
    try:
        age = now - float(tags[HEARTBEAT_TAG])
    except (KeyError, ValueError):
        return None
    if not math.isfinite(age) or age <= stale_after_s:
        return None
    return (f"orphaned: no heartbeat from its process (pid {pid} on {owner}) for {age:.0f} s "
            f"(over {stale_after_s:.0f} s): the process or its host is gone")


def _alive(tags: Mapping[str, str]) -> bool:
    import psutil

    try:
        proc = psutil.Process(int(tags["detbench.pid"]))
        return abs(proc.create_time() - float(tags["detbench.pid_start"])) < 1.0
    except (KeyError, ValueError, psutil.Error):
        return False


class Tracker:
    """A single MLflow run: params, tags, metrics, time series, artifacts, terminal status."""

    def __init__(self, uri: str | None, experiment: str) -> None:
        self.uri = resolve_uri(uri)
        check_reachable(self.uri)
        self.client: Any = client(self.uri)
        self.experiment_id = self._experiment(experiment)
        self.run_id: str | None = None

    def _experiment(self, name: str) -> str:
        found = self.client.get_experiment_by_name(name)
        if found:
            return str(found.experiment_id)
        try:
            return str(self.client.create_experiment(name))
        except Exception:  # another process created it first
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return str(found.experiment_id)

    def reap_orphans(self, stale_after_s: float = STALE_AFTER_S) -> list[str]:
        """End as FAILED every RUNNING run whose process is gone: by pid on this host, by
        heartbeat age on any other (a SIGKILLed job, a node that went down); see
        :func:`orphan_reason`."""
        host, now = socket.gethostname(), time.time()
        runs = self.client.search_runs([self.experiment_id],
                                       filter_string="attributes.status = 'RUNNING'")
        reaped = []
        for run in runs:
            reason = orphan_reason(run.data.tags, host, now, stale_after_s)
            if reason is None:
                continue
            self.client.set_tag(run.info.run_id, "error", reason)
            self.client.set_terminated(run.info.run_id, "FAILED")
            reaped.append(run.info.run_id)
        return reaped

    def start(self, run_name: str, params: Mapping[str, str], tags: Mapping[str, str]) -> str:
        from mlflow.entities import Param, RunTag

        all_tags = {**tags, **process_identity()}
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags=all_tags)
        self.run_id = run.info.run_id
        items = [Param(k, v[:6000]) for k, v in params.items()]
        for start in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[start : start + 100])
        self.client.log_batch(self.run_id, tags=[RunTag("mlflow.note.content", run_name)])
        return self.run_id

    def log_dataset(self, name: str, source: str, images: int, digest: str) -> None:
        """The dataset as an MLflow dataset input, so the UI's Dataset column names it."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        dataset = Dataset(name=name, digest=digest[:36], source_type="local", source=source,
                          profile=json.dumps({"num_images": images}))
        tag = InputTag(key="mlflow.data.context", value="eval")
        self.client.log_inputs(self._id(), datasets=[DatasetInput(dataset, tags=[tag])])

    def attach(self, run_id: str) -> None:
        """Continue logging to an existing run (runner.sync)."""
        self.run_id = run_id

    def find_finished(self, identity: str) -> str | None:
        """The id of a FINISHED run in this experiment with tag detbench.identity, if any."""
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`detbench.identity` = '{identity}' and "
                          "attributes.status = 'FINISHED'",
            max_results=1,
        )
        return runs[0].info.run_id if runs else None

    def latest_finished(self, key: str, value: str) -> tuple[str, dict[str, str]] | None:
        """(run id, tags) of the newest FINISHED run in this experiment with tag ``key`` =
        ``value``, if any (resume decides with it)."""
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{key}` = '{value}' and attributes.status = 'FINISHED'",
            max_results=1, order_by=["attributes.start_time DESC"])
        return (runs[0].info.run_id, dict(runs[0].data.tags)) if runs else None

    def latest_finished_metrics(self, tags: Mapping[str, str]
                                ) -> tuple[str, dict[str, float]] | None:
        """(run id, metrics) of the newest FINISHED run in this experiment with these tags."""
        where = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
        runs = self.client.search_runs(
            [self.experiment_id], filter_string=f"{where} and attributes.status = 'FINISHED'",
            order_by=["attributes.start_time DESC"], max_results=1)
        return (runs[0].info.run_id, dict(runs[0].data.metrics)) if runs else None

    def find_by_tag(self, key: str, value: str) -> str | None:
        runs = self.client.search_runs([self.experiment_id],
                                       filter_string=f"tags.`{key}` = '{value}'", max_results=1)
        return runs[0].info.run_id if runs else None

    def _id(self) -> str:
        if self.run_id is None:
            raise RuntimeError("no MLflow run started")
        return self.run_id

    def set_tags(self, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)[:5000]) for k, v in tags.items()]
        for start in range(0, len(items), 100):
            self.client.log_batch(self._id(), tags=items[start : start + 100])

    def logged_metrics(self) -> dict[str, float]:
        """The run's metrics so far (latest value per key): what a second publish skips."""
        return dict(self.client.get_run(self._id()).data.metrics)

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        self._log_metric_items(items)

    def log_series(self, name: str, values: Sequence[float], timestamps_s: Sequence[float]) -> None:
        """One metric as a time series: step = sample index, timestamp = wall clock (ms)."""
        from mlflow.entities import Metric

        items = [Metric(name, float(v), int(t * 1000), i)
                 for i, (v, t) in enumerate(zip(values, timestamps_s, strict=True))]
        self._log_metric_items(items)

    def _log_metric_items(self, items: Sequence[Any]) -> None:
        for start in range(0, len(items), _BATCH):
            self.client.log_batch(self._id(), metrics=list(items[start : start + _BATCH]))

    def log_artifacts(self, files: Iterable[Path], artifact_path: str | None = None) -> None:
        for path in files:
            self.client.log_artifact(self._id(), str(path), artifact_path)

    def log_text(self, text: str, name: str) -> None:
        self.client.log_text(self._id(), text, name)

    def end(self, status: str, error: str | None = None, traceback_text: str | None = None) -> None:
        """Terminal status; FAILED/KILLED runs get tag ``error`` and ``error/traceback.txt``."""
        try:
            if error:
                self.set_tags({"error": error})
            if traceback_text:
                self.log_text(traceback_text, "error/traceback.txt")
        finally:
            self.client.set_terminated(self._id(), status)

    def finish(self) -> None:
        self.client.set_terminated(self._id(), "FINISHED")

    def ui_link(self) -> str:
        return f"{ui_host(self.uri)}/#/experiments/{self.experiment_id}/runs/{self._id()}"

    def runs_table_link(self) -> str:
        """The experiment's runs table (MLflow 3 otherwise opens a GenAI overview)."""
        return runs_table_link(self.experiment_id, self.uri)


def ui_host(uri: str | None = None) -> str:
    """Where the MLflow UI of ``uri`` is: the tracking server itself for an http(s) URI
    (credentials left out), else ``make mlflow-ui``'s address (UI_HOST) for a local store."""
    if uri and uri.startswith(("http://", "https://")):
        from urllib.parse import urlsplit

        parts = urlsplit(uri)
        netloc = parts.hostname or ""
        if ":" in netloc:
            netloc = f"[{netloc}]"
        if parts.port:
            netloc += f":{parts.port}"
        return f"{parts.scheme}://{netloc}{parts.path.rstrip('/')}"
    return UI_HOST


def runs_table_link(experiment_id: str, uri: str | None = None) -> str:
    return f"{ui_host(uri)}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def check_writable(uri: str) -> None:
    """For a local SQLite store, refuse a read-only database file or directory up front (MLflow
    says "attempt to write a readonly database" only when the first run is created)."""
    if not uri.startswith("sqlite:///"):
        return
    path = Path(uri[len("sqlite:///"):].split("?", 1)[0]).expanduser()
    target = path if path.exists() else path.parent
    if target.exists() and not os.access(target, os.W_OK):
        what = "file" if target == path else "directory"
        raise TrackingUnavailable(
            f"the MLflow store {uri} is read-only (its {what} {target} is not writable): make "
            "it writable, or choose another store with tracking.uri=... or MLFLOW_TRACKING_URI")


def read_artifact(uri: str, run_id: str, artifact: str) -> bytes:
    """The bytes of one artifact of a run (downloaded to a temporary directory, without
    MLflow's progress bar); raises what MLflow raises when the run has no such artifact."""
    import tempfile

    import mlflow.artifacts

    previous = os.environ.get(_ARTIFACT_PROGRESS_VAR)
    os.environ[_ARTIFACT_PROGRESS_VAR] = "false"
    try:
        with tempfile.TemporaryDirectory(prefix="detbench-artifact-") as tmp:
            local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact,
                                                        dst_path=tmp, tracking_uri=uri)
            return Path(local).read_bytes()
    finally:
        if previous is None:
            os.environ.pop(_ARTIFACT_PROGRESS_VAR, None)
        else:
            os.environ[_ARTIFACT_PROGRESS_VAR] = previous
