"""A broken local store is refused in one line before anything loads (issue 11 item 8), and
tracking credentials never reach the store, the job directory or the output (item 9)."""

from __future__ import annotations

import base64
import os
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from runner import tracking
from tests.conftest import ROOT
from tests.servers import free_port, mlflow_server

SECRET = "s3cr3t-Pa55"


def _cli(tmp_path: Path, *args: str, uri: str | None = None,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    environ["MLFLOW_TRACKING_URI"] = uri or f"sqlite:///{tmp_path / 'mlflow.db'}"
    flags = [a for a in args if a.startswith("-")]
    overrides = [a for a in args if not a.startswith("-")]
    return subprocess.run([sys.executable, "-m", "runner", *flags,
                           f"hydra.run.dir={tmp_path / 'r'}", f"hydra.sweep.dir={tmp_path / 'm'}",
                           *overrides], cwd=tmp_path,
                          env=environ, capture_output=True, text=True, timeout=300)


# ------------------------------------------------------------------------------ broken store


def _good_store(path: Path) -> None:
    MlflowClient(f"sqlite:///{path}").search_experiments()


def _truncated(path: Path) -> None:
    _good_store(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _junk(path: Path) -> None:
    path.write_bytes(b"this is not a database\n" * 200)


def _other_schema(path: Path) -> None:
    with sqlite3.connect(path) as con:
        con.execute("CREATE TABLE inventory (item TEXT, count INTEGER)")


@pytest.mark.parametrize(("make", "problem"), [
    (_truncated, "is truncated ("),
    (_junk, "is not an SQLite database"),
    (_other_schema, "is an SQLite database of another program (tables: inventory"),
])
def test_a_broken_store_is_one_line_exit_2_and_nothing_loaded(
        tmp_path: Path, make: object, problem: str) -> None:
    store = tmp_path / "mlflow.db"
    make(store)  # type: ignore[operator]
    before = store.read_bytes()
    proc = _cli(tmp_path, "dataset.num_images=2")
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines == [line for line in lines if line.startswith("detbench: the MLflow store")]
    assert len(lines) == 1, proc.stderr
    assert f"the MLflow store {store} {problem}" in lines[0]
    assert f"mv {store} {store}.broken" in lines[0]
    assert store.read_bytes() == before  # not touched
    assert not (tmp_path / "r" / "config.yaml").exists()  # the job never started


def test_a_broken_store_stops_a_sweep_before_its_parent_run(tmp_path: Path) -> None:
    _junk(tmp_path / "mlflow.db")
    proc = _cli(tmp_path, "-m", "benchmark.warmup=1,2")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "detbench: sweep not started: the MLflow store" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "m" / "0").exists()


def test_a_healthy_or_new_store_passes(tmp_path: Path) -> None:
    tracking.check_store(f"sqlite:///{tmp_path / 'new.db'}")
    _good_store(tmp_path / "ok.db")
    tracking.check_store(f"sqlite:///{tmp_path / 'ok.db'}")
    (tmp_path / "empty.db").write_bytes(b"")
    tracking.check_store(f"sqlite:///{tmp_path / 'empty.db'}")


# ------------------------------------------------------------------------------- credentials


def test_redact_hides_passwords_and_tokens_only() -> None:
    assert tracking.redact("postgresql://me:pw@db:5432/x") == "postgresql://me:***@db:5432/x"
    assert tracking.redact("x tracking.uri=https://tok3n@host/y z") == (
        "x tracking.uri=https://***@host/y z")
    assert tracking.redact("sqlite:///mlflow.db and me@example.com") == (
        "sqlite:///mlflow.db and me@example.com")


def _files_containing(root: Path, secret: str) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


@pytest.mark.slow  # a server and a job
def test_credentials_in_the_uri_reach_no_record(tmp_path: Path) -> None:
    """A sweep against a real MLflow server, the password in tracking.uri: the server's store
    and artifacts, the job and sweep directories and the output never contain it."""
    store = tmp_path / "server"
    with mlflow_server(store) as url:
        uri = url.replace("http://", f"http://alice:{SECRET}@")
        (tmp_path / "w").mkdir()
        proc = _cli(tmp_path / "w", "-m",
                    f"tracking.uri={uri}", "dataset.num_images=2", "benchmark.warmup=1",
                    "benchmark.telemetry=false", uri=f"sqlite:///{tmp_path / 'unused.db'}")
        assert proc.returncode == 0, proc.stderr[-3000:]
        client = MlflowClient(url)
        exp = client.get_experiment_by_name("detbench")
        assert exp is not None
        runs = client.search_runs([exp.experiment_id])
        assert len(runs) == 2  # the sweep's parent and its job
    assert SECRET not in proc.stdout + proc.stderr
    assert _files_containing(store, SECRET) == []
    assert _files_containing(tmp_path / "w", SECRET) == []
    parent = next(r for r in runs if "command" in r.data.params)
    assert "tracking.uri=http://alice:***@127.0.0.1" in parent.data.params["command"]
    job = next(r for r in runs if "detbench.model" in r.data.tags)
    assert job.data.params["tracking.uri"] == f"http://alice:***@{url[len('http://'):]}"


def test_credentials_in_a_dead_uri_give_a_correct_error_without_the_password(
        tmp_path: Path) -> None:
    port = free_port()
    proc = _cli(tmp_path, f"tracking.uri=http://alice:{SECRET}@127.0.0.1:{port}",
                "dataset.num_images=2")
    assert proc.returncode == 2
    assert f"the MLflow tracking server at http://127.0.0.1:{port} is not reachable" in (
        proc.stderr)
    assert SECRET not in proc.stdout + proc.stderr and "Traceback" not in proc.stderr


class _AuthHandler(BaseHTTPRequestHandler):
    expected = ""

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        ok = self.headers.get("Authorization") == self.expected
        self.send_response(200 if ok else 401)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"OK")


@pytest.fixture
def auth_server() -> Iterator[str]:
    _AuthHandler.expected = "Basic " + base64.b64encode(b"bob:right").decode()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _AuthHandler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_mlflow_credential_variables_are_used_and_a_refusal_is_named(
        auth_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(tracking.USER_VAR, "bob")
    monkeypatch.setenv(tracking.PASSWORD_VAR, "right")
    tracking.check_reachable(auth_server)  # no credentials in the URI
    monkeypatch.setenv(tracking.PASSWORD_VAR, SECRET)
    with pytest.raises(tracking.TrackingUnavailable) as err:
        tracking.check_reachable(auth_server)
    assert "refused the credentials (HTTP 401)" in str(err.value)
    assert tracking.PASSWORD_VAR in str(err.value) and SECRET not in str(err.value)
    monkeypatch.delenv(tracking.PASSWORD_VAR)
    monkeypatch.delenv(tracking.USER_VAR)
    uri = tracking.resolve_uri(auth_server.replace("http://", "http://bob:right@"))
    assert uri == auth_server and os.environ[tracking.USER_VAR] == "bob"
    tracking.check_reachable(uri)
    monkeypatch.setenv(tracking.TOKEN_VAR, "t0ken")  # a bearer token is sent instead
    with pytest.raises(tracking.TrackingUnavailable, match="refused the credentials"):
        tracking.check_reachable(uri)


def test_a_redacted_uri_takes_its_password_from_the_environment(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    full = "postgresql://me:pw@db/x"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", full)
    assert tracking.resolve_uri("postgresql://me:***@db/x") == full
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'x.db'}")
    with pytest.raises(tracking.TrackingUnavailable, match="recorded without its password"):
        tracking.resolve_uri("postgresql://me:***@db/x")
    tracker = tracking.Tracker(None, "detbench")
    tracker.start("r", {"tracking.uri": full}, {"note": f"from {full}"})
    run = tracker.client.get_run(tracker.run_id)
    assert run.data.params["tracking.uri"] == "postgresql://me:***@db/x"
    assert run.data.tags["note"] == "from postgresql://me:***@db/x"


def test_every_client_refuses_a_broken_store_with_the_same_line(tmp_path: Path) -> None:
    """runner.sync, the export and the sweep's parent run open the store through client()."""
    _junk(tmp_path / "junk.db")
    with pytest.raises(tracking.BrokenStore, match="is not an SQLite database"):
        tracking.client(f"sqlite:///{tmp_path / 'junk.db'}")
