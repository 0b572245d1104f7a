from __future__ import annotations

import traceback
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from runner import tracking


def test_uri_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert tracking.resolve_uri(None) == "sqlite:///mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    assert tracking.resolve_uri(None) == "http://127.0.0.1:1"
    assert tracking.resolve_uri("sqlite:///x.db") == "sqlite:///x.db"


def test_flatten() -> None:
    cfg = OmegaConf.create({"a": {"b": 1, "c": [1, 2]}, "d": None})
    assert tracking.flatten(cfg) == {"a.b": "1", "a.c": "[1, 2]", "d": "None"}


def test_run_lifecycle_finished(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    t = tracking.Tracker(uri, "exp")
    run_id = t.start("demo@256x256/fp32", {"p": "1"}, {"t": "x"})
    t.log_metrics({"m": 2.5})
    t.log_series("s", [1.0, 2.0, 3.0], [100.0, 100.1, 100.2])
    f = tmp_path / "a.txt"
    f.write_text("hi")
    t.log_artifacts([f])
    t.finish()
    client = MlflowClient(uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "demo@256x256/fp32"
    assert run.data.params == {"p": "1"} and run.data.metrics["m"] == 2.5
    assert [m.value for m in client.get_metric_history(run_id, "s")] == [1.0, 2.0, 3.0]
    assert "a.txt" in [a.path for a in client.list_artifacts(run_id)]
    assert f"/#/experiments/{t.experiment_id}/runs/{run_id}" in t.ui_link()


def test_failed_run_keeps_error_and_traceback(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    t = tracking.Tracker(uri, "exp")
    run_id = t.start("x", {}, {})
    try:
        raise RuntimeError("boom")
    except RuntimeError as exc:
        t.end("FAILED", f"{type(exc).__name__}: {exc}",
              "".join(traceback.format_exception(exc)))
    client = MlflowClient(uri)
    run = client.get_run(run_id)
    assert run.info.status == "FAILED" and run.data.tags["error"] == "RuntimeError: boom"
    local = client.download_artifacts(run_id, "error/traceback.txt", str(tmp_path))
    assert "RuntimeError: boom" in Path(local).read_text()
