"""The MLflow UI as a reader sees it: a real ``mlflow server``, one small sweep of the runner into
it, and headless Chromium (Debian's package, tests/browser.py) reading what the UI renders at
the links the runner prints. Skipped, saying why, where no Chromium is installed.

``DETBENCH_SCREENSHOTS=<dir>`` keeps the screenshots (docs/ui_runs_table.png comes from here)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from runner import tracking
from tests.browser import CLOSED_PANELS, chromium_page, find_chromium
from tests.servers import mlflow_server

pytestmark = pytest.mark.skipif(
    find_chromium() is None,
    reason="no Chromium installed, so the MLflow UI was NOT checked (apt-get install chromium; "
           ".ci/run installs it)")


@dataclass
class Store:
    url: str
    children: list[Any]  # mlflow Run objects
    parent_id: str
    experiment_id: str
    log: str


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Iterator[Store]:
    """One sweep of two jobs (benchmark.warmup=1,2) into a real server, in one process."""
    from mlflow.tracking import MlflowClient

    base = tmp_path_factory.mktemp("ui")
    with mlflow_server(base / "server") as url:
        env = {**os.environ, "DETBENCH_CACHE": str(cache_dir), "MLFLOW_TRACKING_URI": url}
        env.pop("DETBENCH_PARENT_RUN_ID", None)
        proc = subprocess.run(
            [sys.executable, "-m", "runner", "-m", "benchmark.warmup=1,2",
             "dataset.num_images=8", "benchmark.isolate=false", f"tracking.uri={url}",
             f"hydra.sweep.dir={base / 'multi'}"],
            cwd=base, env=env, capture_output=True, text=True, timeout=400)
        log = proc.stdout + proc.stderr
        assert proc.returncode == 0, log[-4000:]
        client = MlflowClient(url)
        experiment = client.get_experiment_by_name("detbench")
        assert experiment is not None, log[-4000:]
        runs = client.search_runs([experiment.experiment_id])
        parent = [r for r in runs if r.data.tags.get("detbench.sweep") == "true"]
        children = [r for r in runs if "detbench.model" in r.data.tags]
        assert len(parent) == 1 and len(children) == 2, log[-4000:]
        yield Store(url, children, parent[0].info.run_id, experiment.experiment_id, log)


def _local(link: str, url: str) -> str:
    """A printed link on the test's server (links of an http store name the server itself)."""
    if link.startswith(tracking.UI_HOST):
        return url + link[len(tracking.UI_HOST):]
    assert link.startswith(url), (link, url)
    return link


def _keep(path: Path) -> None:
    target = os.environ.get("DETBENCH_SCREENSHOTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(target) / path.name)


def _ap(run: Any) -> str:
    return f"{run.data.metrics['bbox.AP'] * 100:.2f}"


@pytest.mark.slow
def test_printed_links_land_on_the_numbers(store: Store, tmp_path: Path) -> None:
    """The experiment opens in the model-training layout; the runs link shows every run by its
    distinguishing name with rounded AP and images/sec; a run link shows the run's headline
    numbers at the top; its sampled telemetry is under System metrics; the parent run shows
    the sweep's table."""
    names = sorted(r.info.run_name for r in store.children)
    assert names == ["demo@256x256/fp32 [benchmark.warmup=1]",
                     "demo@256x256/fp32 [benchmark.warmup=2]"]
    # the printed links, as the job printed them
    run_links = [line.split("browse: ")[-1].split(", then open ")[-1]
                 for line in store.log.splitlines() if "browse:" in line]
    assert run_links, store.log[-2000:]
    child = store.children[0]
    with chromium_page(store.url, CLOSED_PANELS) as page:
        page.goto(_local(tracking.runs_table_link(store.experiment_id, store.url), store.url))
        text = page.wait_for_text(*names, _ap(child), "table/AP", "table/images_per_sec")
        assert "Evaluation runs" not in text  # not the GenAI layout
        for run in store.children:
            assert f"{run.data.metrics['images_per_sec']:.2f}".rstrip("0").rstrip(".") in text
        page.screenshot(tmp_path / "ui_runs_table.png", width=1700, height=620)
        _keep(tmp_path / "ui_runs_table.png")

        link = next(x for x in run_links if child.info.run_id in x)
        page.goto(_local(link, store.url))
        text = page.wait_for_text(f"AP {_ap(child)}", "images/sec", "Description")
        assert "Evaluation runs" not in text
        first_screen = text[: text.index("Metrics (")]  # above the metrics list: in view
        assert f"AP {_ap(child)}" in first_screen and child.info.run_name in first_screen
        _keep(page.screenshot(tmp_path / "ui_run.png"))

        page.goto(_local(link.replace("?", "/system-metrics?"), store.url))
        page.wait_for_text("cpu_utilization_percentage", "Time")

        parent_link = _local(tracking.UI_HOST + f"/#/experiments/{store.experiment_id}/runs/"
                             f"{store.parent_id}?workflowType=machine_learning", store.url)
        page.goto(parent_link)
        page.wait_for_text("children 2 FINISHED", "table/AP", "AP50")


@pytest.mark.slow
def test_store_tags_behind_the_view(store: Store) -> None:
    """What the UI read: experiment kind and view, MLflow's user/source/git tags, system/
    metrics against wall-clock time, the description holding the table row."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(store.url)
    tags = client.get_experiment(store.experiment_id).tags
    assert tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"
    assert tracking.SHARED_VIEW_TAG in tags
    run = client.get_run(store.children[0].info.run_id)
    for key in ("mlflow.user", "mlflow.source.name", "mlflow.source.type"):
        assert run.data.tags.get(key), key
    assert re.fullmatch(r"[0-9a-f]{40}", run.data.tags["mlflow.source.git.commit"])
    note = run.data.tags["mlflow.note.content"]
    assert f"AP {_ap(run)}" in note and "| Model" in note and "Demo CenterNet" in note
    history = client.get_metric_history(run.info.run_id, "system/cpu_utilization_percentage")
    stamps = [m.timestamp for m in history]
    assert len(stamps) >= 2 and stamps == sorted(stamps) and stamps[-1] > stamps[0]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"packages.txt", "plots"} <= artifacts
    plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert plots == {"plots/latency_distribution.png", "plots/latency_by_call.png"}
    parent = client.get_run(store.parent_id)
    assert parent.data.metrics["children_finished"] == 2.0
    assert "| Model" in parent.data.tags["mlflow.note.content"]
