"""MLflow: the only module that talks to the tracking store. One run per job, created through
``MlflowClient`` (no global active-run state), always ended with a terminal status."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import re
import socket
import sys
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


class BrokenStore(TrackingUnavailable):
    """The local store is not a usable MLflow database (truncated, junk, another schema)."""


# ------------------------------------------------------------------------------- credentials

USER_VAR, PASSWORD_VAR, TOKEN_VAR = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
                                     "MLFLOW_TRACKING_TOKEN")
REDACTED = "***"
#: ``scheme://userinfo@`` in any text (also as Hydra logs an override: ``http\://u\:p@``):
#: the userinfo is what must never be recorded
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*\\?://)(?P<info>[^/?#@\s]+)@")


def redact(text: str) -> str:
    """``postgresql://me:pw@db/x`` -> ``postgresql://me:***@db/x`` (a token alone -> ``***``);
    used on everything that records a tracking URI: params, tags, config.yaml, tracking.json,
    Hydra's files in the job directory, log records and error messages."""

    def hide(match: re.Match[str]) -> str:
        user, colon, _ = match["info"].partition(":")
        return f"{match['scheme']}{user + ':' if colon else ''}{REDACTED}@"

    return _USERINFO.sub(hide, text)


def _split_credentials(uri: str) -> str:
    """An http(s) URI's ``user:password@`` moves into MLflow's own variables (MLFLOW_TRACKING_
    USERNAME / _PASSWORD, read by MLflow's REST client and by check_reachable) and the URI
    without it is what gets used and recorded. Other schemes (database URIs) keep theirs: the
    driver needs it; they are redacted wherever recorded."""
    from urllib.parse import unquote, urlsplit, urlunsplit

    if not uri.startswith(("http://", "https://")):
        return uri
    parts = urlsplit(uri)
    if parts.username is None:
        return uri
    os.environ[USER_VAR] = unquote(parts.username)
    if parts.password is not None:
        os.environ[PASSWORD_VAR] = unquote(parts.password)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=host))


def _auth_headers() -> dict[str, str]:
    import base64

    if os.environ.get(TOKEN_VAR):
        return {"Authorization": f"Bearer {os.environ[TOKEN_VAR]}"}
    if os.environ.get(USER_VAR) and os.environ.get(PASSWORD_VAR):
        pair = f"{os.environ[USER_VAR]}:{os.environ[PASSWORD_VAR]}".encode()
        return {"Authorization": f"Basic {base64.b64encode(pair).decode()}"}
    return {}


_FACTORY_INSTALLED = False


def redact_logs() -> None:
    """Redact credentials in every log record from now on, whatever handler it reaches: done
    in the record factory because Hydra reconfigures its handlers when a sweep launches (a
    handler filter installed before is dropped, and Hydra logs each job's overrides)."""
    global _FACTORY_INSTALLED
    if _FACTORY_INSTALLED:
        return
    _FACTORY_INSTALLED = True
    make = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record is logging's to report
            return record
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return record

    logging.setLogRecordFactory(factory)


def scrub_files(paths: Iterable[Path]) -> None:
    """Rewrite text files (Hydra's .hydra/*.yaml, multirun.yaml) with credentials redacted."""
    for path in paths:
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError):
            continue
        cleaned = redact(text)
        if cleaned != text:
            tmp = path.with_name(f".{path.name}.redacted")
            tmp.write_text(cleaned)
            os.replace(tmp, path)


def protect_job_dir(output_dir: Path) -> None:
    """Credentials out of what Hydra wrote before the job started (the job's .hydra/ files and
    the sweep's multirun.yaml) and out of the logs from now on."""
    redact_logs()
    hydra_dir = output_dir / ".hydra"
    files = list(hydra_dir.glob("*.yaml")) if hydra_dir.is_dir() else []
    scrub_files([*files, output_dir.parent / "multirun.yaml"])


# ------------------------------------------------------------------------------------- stores


def check_store(uri: str) -> None:
    """For an SQLite store that exists: refuse a file that is not an MLflow database before
    anything is loaded, with one line naming it and what to do (MLflow itself prints an
    80-line traceback, late). Reads the header and the table list only (milliseconds)."""
    import sqlite3

    if not uri.startswith("sqlite:///"):
        return
    path = Path(uri[len("sqlite:///"):].split("?", 1)[0]).expanduser()
    if not path.is_file() or path.stat().st_size == 0:
        return  # MLflow creates it
    problem = _sqlite_problem(path)
    if problem is None:
        try:
            with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as con:
                tables = {row[0] for row in con.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.DatabaseError as exc:
            problem = f"not a readable SQLite database ({exc})"
        else:
            missing = {"alembic_version", "experiments", "runs"} - tables
            if tables and missing:
                problem = (f"an SQLite database of another program (tables: "
                           f"{', '.join(sorted(tables)[:8])}; no MLflow tables "
                           f"{', '.join(sorted(missing))})")
    if problem:
        raise BrokenStore(
            f"the MLflow store {path} is {problem}; nothing was run. Move it aside (mv {path} "
            f"{path}.broken) to start a new store there, or choose another store with "
            "tracking.uri=... or MLFLOW_TRACKING_URI")


def _sqlite_problem(path: Path) -> str | None:
    """What is wrong with the file as SQLite, from its 100-byte header: the magic string, and
    the page count times the page size against the file's size (a truncated copy)."""
    with path.open("rb") as fh:
        header = fh.read(100)
    if not header.startswith(b"SQLite format 3\x00"):
        return "not an SQLite database (its first bytes are not 'SQLite format 3')"
    if len(header) < 100:
        return f"truncated ({path.stat().st_size} bytes, shorter than an SQLite header)"
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    pages = int.from_bytes(header[28:32], "big")
    valid_for, changes = header[92:96], header[24:28]
    expected = page_size * pages
    if valid_for == changes and pages and path.stat().st_size < expected:
        return (f"truncated ({path.stat().st_size:,} bytes; its header says "
                f"{expected:,})")
    return None


def check_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """For an HTTP tracking URI, GET /health once (fast) instead of MLflow's long retries,
    with MLflow's credential variables; for an SQLite store, :func:`check_store`."""
    check_store(uri)
    if not uri.startswith(("http://", "https://")):
        return
    import urllib.error
    import urllib.request

    uri = _split_credentials(uri)
    request = urllib.request.Request(f"{uri.rstrip('/')}/health", headers=_auth_headers())
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as reply:
            if reply.status == 200:
                return
            problem = f"HTTP {reply.status}"
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            raise TrackingUnavailable(
                f"the MLflow tracking server at {uri} refused the credentials (HTTP {exc.code}); "
                f"set {USER_VAR} and {PASSWORD_VAR} (or {TOKEN_VAR}) for it") from None
        problem = f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        problem = redact(str(getattr(exc, "reason", exc)))
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
    """Config value, else $MLFLOW_TRACKING_URI, else an SQLite store in the working directory.
    An http(s) URI's credentials move into MLflow's variables (see _split_credentials); a URI
    recorded redacted (tracking.json, for runner.sync) gets its password back from
    $MLFLOW_TRACKING_URI when that is the same URI."""
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI
    if f":{REDACTED}@" in uri or f"//{REDACTED}@" in uri:
        full = os.environ.get("MLFLOW_TRACKING_URI") or ""
        if redact(full) != uri:
            raise TrackingUnavailable(
                f"{uri} was recorded without its password; give the full URI with --uri or "
                "MLFLOW_TRACKING_URI")
        uri = full
    return _split_credentials(uri)


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
    check_store(resolved)  # a broken SQLite file: BrokenStore's one line, not MLflow's traceback
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
        present_experiment(self.client, self.experiment_id)
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

        all_tags = {k: redact(str(v))
                    for k, v in {**standard_tags(), **tags, **process_identity()}.items()}
        run = self.client.create_run(self.experiment_id, run_name=redact(run_name),
                                     tags=all_tags)
        self.run_id = run.info.run_id
        items = [Param(k, redact(v)[:6000]) for k, v in params.items()]
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

        items = [RunTag(k, redact(str(v))[:5000]) for k, v in tags.items()]
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
        self.client.log_text(self._id(), redact(text), name)

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
        return (f"{ui_host(self.uri)}/#/experiments/{self.experiment_id}/runs/{self._id()}"
                "?workflowType=machine_learning")  # the model-training layout, not GenAI's

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
    return runs_view_link(experiment_id, uri)


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


def refuse_unusable_store(configured: str | None, prefix: str) -> None:
    """Before a job or a sweep starts: a tracking store that is down or read-only ends the
    program with exit 2 and one line on stderr (``prefix`` says what did not start)."""
    uri = resolve_uri(configured)
    try:
        check_reachable(uri)
        check_writable(uri)
    except TrackingUnavailable as exc:
        print(f"{prefix}{exc}", file=sys.stderr)
        sys.exit(2)


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


# -- presentation: how the MLflow UI shows detbench's experiments and runs ----------------------
# MLflow 3's UI opens an experiment in its GenAI layout unless the experiment tag
# ``mlflow.experimentKind`` says otherwise (read by the UI bundle of mlflow 3.17: the value
# ``custom_model_development`` selects the model-training layout). A runs-table link chooses its
# columns through a "shared view": the experiment tag ``mlflow.sharedViewState.<key>`` holds the
# view as JSON and ``?viewStateShareKey=<key>`` applies it (the UI's own "Share" button does the
# same). Tested in headless Chromium against a real server: tests/test_ui.py.

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
VIEW_KEY = "detbench"
SHARED_VIEW_TAG = f"mlflow.sharedViewState.{VIEW_KEY}"
NOTE_TAG = "mlflow.note.content"
#: The headline numbers as the public table shows them (AP x100, two decimals), logged as
#: ``table/<name>`` metrics beside the exact ones: the UI prints metrics unrounded
#: (0.7307321625019645), which no reader scans down a column.
DISPLAY_METRICS = {"AP": ("bbox.AP", 100.0), "AP50": ("bbox.AP50", 100.0),
                   "images_per_sec": ("images_per_sec", 1.0),
                   "latency_mean_ms": ("latency_mean_ms", 1.0),
                   "latency_p99_ms": ("latency_p99_ms", 1.0)}
DISPLAY_PREFIX = "table/"
VIEW_TAGS = ("detbench.variant", "detbench.stability")
#: The view groups runs by this tag (model@resolution/precision #identity): repeats of one
#: config fold into one row with their average; a sweep's parent (no such tag) goes to
#: "Additional runs", so its children are not folded away under it (the UI opens nested runs
#: collapsed).
CONFIG_TAG = "detbench.config"


def runs_view_state() -> dict[str, Any]:
    """The shared view a printed runs-table link opens: newest runs first, headline metric
    columns selected (MLflow's column keys are ``<type>.`<name>```)."""
    metrics = [f"metrics.`{DISPLAY_PREFIX}{m}`" for m in DISPLAY_METRICS]
    tags = [f"tags.`{t}`" for t in VIEW_TAGS]
    # the UI applies columnWidths only to the columns named in columnOrder
    widths = {"attributes.`Run Name`": 330, "runDateAndNestInfo": 120, "duration": 80,
              **dict.fromkeys(metrics, 120), tags[0]: 200, tags[1]: 90}
    return {"orderByKey": "attributes.start_time", "orderByAsc": False,
            "selectedColumns": [*metrics, *tags], "columnOrder": list(widths),
            "columnWidths": widths,
            "groupBy": f"tag.average.{CONFIG_TAG}"}


def display_metrics(metrics: Mapping[str, float]) -> dict[str, float]:
    """``table/AP`` = 73.07 for ``bbox.AP`` = 0.730732...: the runs view's columns. COCO's -1
    ("not applicable") is left out rather than shown as a number."""
    out = {}
    for name, (source, scale) in DISPLAY_METRICS.items():
        value = metrics.get(source)
        if value is not None and not (source.startswith("bbox.") and value < 0):
            out[f"{DISPLAY_PREFIX}{name}"] = round(float(value) * scale, 2)
    return out


def present_experiment(mlflow_client: Any, experiment_id: str) -> None:
    """Tag an experiment so the UI opens it as a model-training experiment on detbench's view
    of the runs table; only tags that differ are written (one read per job otherwise)."""
    experiment = mlflow_client.get_experiment(experiment_id)
    wanted = {EXPERIMENT_KIND_TAG: EXPERIMENT_KIND,
              SHARED_VIEW_TAG: json.dumps(runs_view_state(), separators=(",", ":"))}
    for key, value in wanted.items():
        if experiment.tags.get(key) != value:
            mlflow_client.set_experiment_tag(experiment_id, key, value)


def standard_tags(project_dir: Path | None = None) -> dict[str, str]:
    """MLflow's own user, source and git tags (the UI's "Created by", "Source" and commit),
    which a run created through ``MlflowClient`` does not get by itself."""
    import getpass

    from mlflow.entities import SourceType

    from runner.environment import PROJECT_DIR, git_commit

    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry for this uid (containers)
        user = os.environ.get("USER", "unknown")
    program = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
    source = "detbench" if program == "detbench" else "python -m runner"
    tags = {"mlflow.user": user, "mlflow.source.name": source,
            "mlflow.source.type": SourceType.to_string(SourceType.LOCAL)}
    commit = git_commit(project_dir or PROJECT_DIR)
    if commit != "unknown":
        tags["mlflow.source.git.commit"] = commit.removesuffix("+dirty")
    return tags


def system_metric_name(device: str, quantity: str) -> str:
    """A sampled quantity under the ``system/`` prefix that MLflow's "System metrics" tab
    shows, in MLflow's own naming where one exists (``system/gpu_0_utilization_percentage``)."""
    index = device[3:] if device.startswith("gpu") and device[3:].isdigit() else None
    names = {"gpu_util_pct": "utilization_percentage", "mem_util_pct": "memory_usage_percentage",
             "mem_used_mb": "memory_usage_megabytes", "power_w": "power_usage_watts",
             "temperature_c": "temperature_celsius", "sm_clock_mhz": "sm_clock_mhz"}
    if index is not None:
        return f"system/gpu_{index}_{names.get(quantity, quantity)}"
    cpu = {"host_cpu_util_pct": "cpu_utilization_percentage",
           "host_mem_used_mb": "system_memory_usage_megabytes",
           "process_cpu_util_pct": "process_cpu_utilization_percentage",
           "process_rss_mb": "process_memory_rss_megabytes",
           "cpu_util_pct": "cpu_utilization_percentage",  # the sampler's names before 2026-12
           "mem_used_mb": "system_memory_usage_megabytes"}
    return f"system/{cpu.get(quantity, f'{device}_{quantity}')}"


def runs_view_link(experiment_id: str, uri: str | None = None) -> str:
    """The runs table with the headline metric columns in view (detbench's shared view)."""
    return (f"{ui_host(uri)}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
            f"&viewStateShareKey={VIEW_KEY}")
