"""The fault campaign: each fault inflicted for real. Nothing already measured is lost."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from tests import servers
from tests.conftest import ROOT


def _cmd(tmp_path: Path, *overrides: str, multirun: bool = True) -> list[str]:
    flags = ["-m", f"hydra.sweep.dir={tmp_path / 'multi'}"] if multirun else [
        f"hydra.run.dir={tmp_path / 'run'}"]
    return [sys.executable, "-m", "runner", *flags, *overrides]


def _env(uri: str) -> dict[str, str]:
    return {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": str(ROOT)}


def _runs(uri: str, sweeps: bool = False) -> list[Run]:
    """The jobs' runs (and with ``sweeps`` the sweeps' parent runs too)."""
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("detbench")
    runs = [] if exp is None else client.search_runs([exp.experiment_id])
    return [r for r in runs if sweeps or "detbench.model" in r.data.tags]


def _wait_for(predicate: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def _workers(under: Path) -> list[psutil.Process]:
    """Worker processes measuring a job directory below ``under``."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info.get("cmdline") or []
        if "runner.worker" in cmdline and str(under) in " ".join(cmdline):
            found.append(proc)
    return found


# long enough to outlast a server shutdown started when the job's run exists
SLOW = ("dataset.num_images=100", "benchmark.warmup=300", "benchmark.telemetry=false")


@pytest.mark.slow
def test_sigkilled_sweep_is_resumed(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    overrides = ("benchmark.warmup=1,300", "dataset.num_images=50", "benchmark.telemetry=false")
    sweep = subprocess.Popen(_cmd(tmp_path, *overrides), cwd=tmp_path, env=_env(uri),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    second = tmp_path / "multi" / "1" / "job.json"  # written after the job's run is created
    _wait_for(second.is_file, 240, "the second job to start")
    _wait_for(lambda: bool(_workers(tmp_path)), 60, "the second job's worker")
    sweep.send_signal(signal.SIGKILL)
    sweep.wait()
    _wait_for(lambda: not _workers(tmp_path), 30, "the orphaned worker to die with its parent")
    statuses = sorted(r.info.status for r in _runs(uri))
    assert statuses == ["FINISHED", "RUNNING"]

    again = subprocess.run(_cmd(tmp_path, *overrides), cwd=tmp_path, env=_env(uri),
                           capture_output=True, text=True, timeout=400)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "1 skipped" in again.stdout and "1 finished" in again.stdout
    runs = _runs(uri)
    orphan = [r for r in runs if r.info.status == "FAILED"]
    assert len(orphan) == 1 and "orphaned" in orphan[0].data.tags["error"]
    assert orphan[0].data.params["benchmark.warmup"] == "300"
    finished = [r.data.params["benchmark.warmup"] for r in runs if r.info.status == "FINISHED"]
    assert sorted(finished) == ["1", "300"]
    parents = [r for r in _runs(uri, sweeps=True) if "detbench.model" not in r.data.tags]
    assert sorted(r.info.status for r in parents) == ["FAILED", "FINISHED"]  # killed, resumed


@pytest.mark.slow
def test_ctrl_c_to_the_job_alone_ends_killed_and_keeps_the_unfinished_chunk(
        tmp_path: Path) -> None:
    import numpy as np

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    job = subprocess.Popen(
        _cmd(tmp_path, "dataset.num_images=200", "benchmark.warmup=1", "benchmark.chunk_size=20",
             "benchmark.repeats=4", "benchmark.telemetry=false", multirun=False),
        cwd=tmp_path, env=_env(uri), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    log = tmp_path / "run" / "latencies.npy"  # every latency, stored as it is measured

    def measured() -> int:
        try:
            return int(np.count_nonzero(~np.isnan(np.load(log, mmap_mode="r"))))
        except (OSError, ValueError):
            return 0

    _wait_for(lambda: job.poll() is None and measured() > 90, 240, "a chunk and a half")
    before = measured()
    os.kill(job.pid, signal.SIGINT)  # the parent alone: it stops its worker itself
    job.wait(timeout=60)
    assert job.returncode == 128 + signal.SIGINT
    (run,) = _runs(uri)
    assert run.info.status == "KILLED" and "SIGINT" in run.data.tags["error"]
    assert run.data.metrics["partial.count"] >= before
    names = {a.path for a in MlflowClient(uri).list_artifacts(run.info.run_id)}
    assert "latencies.csv" in names
    _wait_for(lambda: not _workers(tmp_path), 30, "no worker left behind")


def test_tracking_server_down_at_start_refuses_before_any_model_loads(tmp_path: Path) -> None:
    uri = f"http://127.0.0.1:{servers.free_port()}"
    for multirun in (True, False):
        start = time.monotonic()
        proc = subprocess.run(_cmd(tmp_path, "dataset.num_images=2", multirun=multirun),
                              cwd=tmp_path, env=_env(uri), capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert "not reachable" in proc.stderr and uri in proc.stderr
        assert "Traceback" not in proc.stderr
        assert time.monotonic() - start < 30
    assert not list(tmp_path.rglob("job.json"))


@pytest.mark.slow
def test_server_down_mid_job_then_sync_uploads_once(tmp_path: Path) -> None:
    store, port = tmp_path / "server", servers.free_port()
    with servers.mlflow_server(store, port) as url:
        job = subprocess.Popen(_cmd(tmp_path, *SLOW, multirun=False), cwd=tmp_path,
                               env=_env(url), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                               text=True)
        _wait_for((tmp_path / "run" / "job.json").is_file, 120, "the job's run")
    # the server is down now; the job measures on and keeps its results
    stdout, _ = job.communicate(timeout=400)
    assert job.returncode == 3  # measured, not logged
    job_dir = tmp_path / "run"
    assert (job_dir / "metrics.json").is_file() and not (job_dir / "published.json").exists()
    assert f"python -m runner.sync {job_dir}" in stdout
    with servers.mlflow_server(store, port) as url:
        env = _env(url)
        sync = [sys.executable, "-m", "runner.sync", str(job_dir)]
        first = subprocess.run(sync, cwd=tmp_path, env=env, capture_output=True, text=True,
                               timeout=120)
        assert first.returncode == 0 and "1 job directory uploaded" in first.stdout, first.stderr
        second = subprocess.run(sync, cwd=tmp_path, env=env, capture_output=True, text=True,
                                timeout=120)
        assert "0 job directories uploaded" in second.stdout
        (run,) = _runs(url)
        assert run.info.status == "FINISHED"
        metrics = json.loads((job_dir / "metrics.json").read_text())
        assert run.data.metrics["bbox.AP"] == pytest.approx(metrics["bbox.AP"])


@pytest.mark.slow  # 6 jobs in two sweeps
def test_two_sweeps_share_one_sqlite_store(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    sweeps = [
        subprocess.Popen(
            [sys.executable, "-m", "runner", "-m", f"hydra.sweep.dir={tmp_path / f'm{i}'}",
             f"benchmark.warmup={i}1,{i}2,{i}3", "dataset.num_images=3",
             "benchmark.telemetry=false", "benchmark.isolate=false"],
            cwd=tmp_path, env=_env(uri), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True)
        for i in (1, 2)
    ]
    outputs = [s.communicate(timeout=400) for s in sweeps]
    for sweep, (_, err) in zip(sweeps, outputs, strict=True):
        assert sweep.returncode == 0, err[-3000:]
        assert "database is locked" not in err
    runs = _runs(uri)
    assert len(runs) == 6 and all(r.info.status == "FINISHED" for r in runs)


_FULL_DISK_SCRIPT = """
import resource, signal, sys
from pathlib import Path
from runner import acquire
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)      # writes past the limit fail with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, 256 * 1024))
try:
    acquire.extract_tar(Path(sys.argv[1]), Path(sys.argv[2]), top="model")
except acquire.AcquireError as exc:
    print(exc)
    sys.exit(3)
"""


def test_full_disk_while_extracting_leaves_the_cache_consistent(tmp_path: Path) -> None:
    import io
    import tarfile

    from runner import acquire

    archive, dest = tmp_path / "model.tar.gz", tmp_path / "models"
    with tarfile.open(archive, "w:gz") as tar:
        for name, size in (("model/saved_model/saved_model.pb", 1024),
                           ("model/saved_model/variables/variables.data-00000-of-00001",
                            1024 * 1024)):
            info = tarfile.TarInfo(name)
            info.size = size
            tar.addfile(info, io.BytesIO(os.urandom(size)))
    proc = subprocess.run([sys.executable, "-c", _FULL_DISK_SCRIPT, str(archive), str(dest)],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "no space left while extracting model.tar.gz" in proc.stdout
    assert "free space" in proc.stdout
    assert sorted(p.name for p in dest.iterdir() if not p.name.endswith(".lock")) == []
    assert archive.is_file()  # the download is kept: the next attempt only extracts
    extracted = acquire.extract_tar(archive, dest, top="model")
    assert (extracted / "saved_model" / "variables").is_dir()
