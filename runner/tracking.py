"""MLflow: the only module that talks to the tracking store. One run per job, created through
``MlflowClient`` (no global active-run state), always ended with a terminal status."""

from __future__ import annotations

import json
import os
import tempfile
import time
import traceback
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

DEFAULT_URI = "sqlite:///mlflow.db"
UI_HOST = "http://127.0.0.1:5000"
_BATCH = 1000  # MLflow's limit of metrics per log_batch call


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


class Tracker:
    """A single MLflow run: params, tags, metrics, time series, artifacts, terminal status."""

    def __init__(self, uri: str | None, experiment: str) -> None:
        from mlflow.tracking import MlflowClient

        self.uri = resolve_uri(uri)
        self.client = MlflowClient(tracking_uri=self.uri)
        found = self.client.get_experiment_by_name(experiment)
        self.experiment_id = (
            found.experiment_id if found else self.client.create_experiment(experiment)
        )
        self.run_id: str | None = None

    def start(self, run_name: str, params: Mapping[str, str], tags: Mapping[str, str]) -> str:
        from mlflow.entities import Param, RunTag

        run = self.client.create_run(self.experiment_id, run_name=run_name, tags=dict(tags))
        self.run_id = run.info.run_id
        items = [Param(k, v[:6000]) for k, v in params.items()]
        for start in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[start : start + 100])
        self.client.log_batch(self.run_id, tags=[RunTag("mlflow.note.content", run_name)])
        return self.run_id

    def find_finished(self, identity: str) -> str | None:
        """The id of a FINISHED run in this experiment with tag detbench.identity, if any."""
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`detbench.identity` = '{identity}' and "
                          "attributes.status = 'FINISHED'",
            max_results=1,
        )
        return runs[0].info.run_id if runs else None

    def _id(self) -> str:
        if self.run_id is None:
            raise RuntimeError("no MLflow run started")
        return self.run_id

    def set_tags(self, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self._id(), tags=[RunTag(k, str(v)) for k, v in tags.items()])

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

    def fail(self, exc: BaseException) -> None:
        """End the run as FAILED (KILLED for an interrupt) with the error and its traceback."""
        if self.run_id is None:
            return
        status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
        try:
            self.set_tags({"error": f"{type(exc).__name__}: {exc}"[:5000]})
            self.log_text("".join(traceback.format_exception(exc)), "error/traceback.txt")
        finally:
            self.client.set_terminated(self.run_id, status)

    def finish(self) -> None:
        self.client.set_terminated(self._id(), "FINISHED")

    def ui_link(self) -> str:
        return f"{UI_HOST}/#/experiments/{self.experiment_id}/runs/{self._id()}"


def write_temp_json(data: Any, name: str, directory: Path | None = None) -> Path:
    folder = directory or Path(tempfile.mkdtemp(prefix="detbench-"))
    path = folder / name
    path.write_text(json.dumps(data))
    return path
