"""Resume identity (issue 11 item 3): a rerun skips a job only when a FINISHED run has the same
config, model bytes, dataset and environment, and says why it skips or measures again."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from runner import config, fingerprint
from runner.tracking import Tracker
from tests import models
from tests.conftest import ROOT, compose_job


def _run(tmp_path: Path, *overrides: str, env: dict[str, str] | None = None
         ) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
               "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-m", "runner", f"hydra.run.dir={tmp_path / 'r'}",
                           "benchmark.warmup=1", "benchmark.telemetry=false", *overrides],
                          cwd=tmp_path, env=environ, capture_output=True, text=True, timeout=300)


def _finished(tmp_path: Path) -> list[str]:
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("detbench")
    assert exp is not None
    return [r.info.run_id for r in client.search_runs([exp.experiment_id])
            if r.info.status == "FINISHED" and "detbench.model" in r.data.tags]


@pytest.mark.slow  # two jobs
def test_replacing_the_savedmodel_at_the_same_path_is_measured_again(tmp_path: Path) -> None:
    model = models.build(tmp_path / "model", "ok")
    args = ("model=custom", f"model.path={model}", "dataset.num_images=2")
    first = _run(tmp_path, *args)
    assert first.returncode == 0, first.stderr[-3000:]
    (run_id,) = _finished(tmp_path)
    again = _run(tmp_path, *args)
    assert again.returncode == 0, again.stderr[-3000:]
    out = again.stdout + again.stderr
    assert (f"already measured: run {run_id} has the same config, model bytes, dataset and "
            "environment") in out
    assert _finished(tmp_path) == [run_id]
    (model / "assets").mkdir(exist_ok=True)  # another SavedModel at the same path
    (model / "assets" / "vocab.txt").write_text("changed\n")
    third = _run(tmp_path, *args)
    assert third.returncode == 0, third.stderr[-3000:]
    out = third.stdout + third.stderr
    assert f"re-measuring: the SavedModel at {model} changed since run {run_id}" in out
    assert len(_finished(tmp_path)) == 2


def _coco_copy(tmp_path: Path, cache_dir: Path) -> tuple[Path, Path]:
    """A coco_files dataset: a copy of the synthetic split's annotations, its images in place."""
    from runner import data

    synthetic = data.load_dataset(config.to_object(compose_job()).dataset, str(cache_dir))
    annotations = tmp_path / "instances.json"
    shutil.copy(synthetic.annotations, annotations)
    return synthetic.images[0].path.parent, annotations


def test_dataset_and_environment_changes_are_named(
        tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    images, annotations = _coco_copy(tmp_path, cache_dir)
    raw = compose_job(["dataset=coco_files", f"dataset.images_dir={images}",
                       f"dataset.annotations={annotations}", "dataset.num_images=5",
                       f"cache_dir={tmp_path / 'cache'}"])
    cfg = config.to_object(raw)
    monkeypatch.delenv("DETBENCH_IMAGE", raising=False)
    before = fingerprint.of_job(cfg)
    assert before == fingerprint.of_job(cfg)  # stable (and from the stat cache the 2nd time)
    assert (tmp_path / "cache" / fingerprint.CACHE_FILE).is_file()
    tracker = Tracker(None, "detbench")
    config_key = "cfg0"
    tracker.start("earlier", {}, {**before.tags(config_key),
                                  "detbench.identity": before.identity(config_key)})
    tracker.finish()
    skip, _ = fingerprint.resume_decision(tracker, config_key, before)
    assert skip and f"run {tracker.run_id} has the same config" in skip

    doc = json.loads(annotations.read_text())
    doc["annotations"][0]["bbox"][0] += 1.0  # one box moved by a pixel
    annotations.write_text(json.dumps(doc))
    monkeypatch.setenv("DETBENCH_IMAGE", "detbench:next")  # another container image
    after = fingerprint.of_job(cfg)
    assert after.model == before.model
    assert after.identity(config_key) != before.identity(config_key)
    skip, note = fingerprint.resume_decision(tracker, config_key, after)
    assert skip is None
    assert f"the dataset ({annotations}) changed" in note
    assert f"the environment changed (env.key {before.env} -> {after.env})" in note
    assert note.endswith(f"since run {tracker.run_id}")


def test_prerun_env_key_is_the_workers_env_key() -> None:
    """The parent's key (no TensorFlow import on a non-TensorRT build) equals env.key."""
    from runner import environment

    assert environment.prerun_key(telemetry=False) == environment.collect([])["env.key"]
