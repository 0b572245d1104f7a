"""How a job ends, inflicted for real (issue 11 items 1, 2, 4, 12): SIGTERM to a sweep's whole
process group, SIGHUP / SIGINT to the job alone, SIGTERM to the worker alone, a model that hangs
inside the timed loop, a 600 KiB job directory, corrupt job directories for runner.sync, runs of
a host that is gone, a read-only store. The signal is sent once the job is inside its timed loop
(the latency log in the job directory says so), the MLflow store is read afterwards."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
from mlflow.tracking import MlflowClient

from runner import jobdir, tracking
from tests.conftest import ROOT
from tests.test_faults import _runs, _wait_for, _workers

SWEEP_IMAGES = ("8", "200")  # the first job finishes, the second is killed while timing
#: 200 images (the synthetic split's all) x 4 passes per chunk of 50: long enough to be signalled
LONG = ("benchmark.warmup=1", "benchmark.chunk_size=50", "benchmark.repeats=4")
IN_LOOP = 60  # latencies stored before the signal: the first chunk's second pass is unfinished


def _env(uri: str, cache: Path) -> dict[str, str]:
    return {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": str(ROOT),
            "DETBENCH_CACHE": str(cache)}


def _measured(job_dir: Path) -> int:
    """Latencies the worker has stored so far (the memory-mapped log), 0 before it exists."""
    try:
        log = np.load(job_dir / jobdir.LATENCY_LOG, mmap_mode="r")
    except (OSError, ValueError):
        return 0
    return int(np.count_nonzero(~np.isnan(log)))


def _family(proc: psutil.Process) -> list[psutil.Process]:
    """A worker and what it started (the sampling process)."""
    try:
        return [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return [proc]


def _gone(procs: list[psutil.Process]) -> bool:
    def dead(p: psutil.Process) -> bool:
        try:
            return not p.is_running() or p.status() == psutil.STATUS_ZOMBIE
        except psutil.Error:
            return True
    return all(dead(p) for p in procs)


def _job(tmp: Path, uri: str, cache: Path, *overrides: str, multirun: bool = False,
         **popen: Any) -> subprocess.Popen[str]:
    flags = (["-m", f"hydra.sweep.dir={tmp / 'multi'}"] if multirun
             else [f"hydra.run.dir={tmp / 'run'}"])
    return subprocess.Popen([sys.executable, "-m", "runner", *flags, *overrides], cwd=tmp,
                            env=_env(uri, cache), text=True, **popen)


def _in_loop(job_dir: Path, proc: subprocess.Popen[str], count: int = IN_LOOP) -> int:
    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"the job ended ({proc.returncode}) before it was signalled")
        return _measured(job_dir) >= count
    _wait_for(ready, 300, f"{count} timed calls in {job_dir}")
    return _measured(job_dir)


def _artifact_rows(uri: str, run_id: str, name: str, dest: Path) -> list[str]:
    path = MlflowClient(uri).download_artifacts(run_id, name, str(dest))
    return Path(path).read_text().splitlines()[1:]


# -- SIGTERM to a whole sweep (docker stop, scancel) ----------------------------------------------


@pytest.fixture(scope="module")
def killed_sweep(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("killed_sweep")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    overrides = (f"dataset.num_images={','.join(SWEEP_IMAGES)}", *LONG)
    with (tmp / "out.txt").open("w") as out, (tmp / "err.txt").open("w") as err:
        sweep = _job(tmp, uri, cache_dir, *overrides, multirun=True, stdout=out, stderr=err,
                     start_new_session=True)
        job_dir = tmp / "multi" / "1"
        measured = _in_loop(job_dir, sweep)
        (worker,) = _workers(job_dir)
        family = _family(worker)
        os.killpg(sweep.pid, signal.SIGTERM)
        code = sweep.wait(timeout=120)
    return {"tmp": tmp, "uri": uri, "code": code, "measured": measured, "family": family,
            "overrides": overrides, "cache": cache_dir, "job_dir": job_dir,
            "stderr": (tmp / "err.txt").read_text()}


def test_sigterm_to_a_sweep_exits_143_and_ends_every_open_run_killed(
        killed_sweep: dict[str, Any]) -> None:
    assert killed_sweep["code"] == 128 + signal.SIGTERM, killed_sweep["stderr"][-3000:]
    assert "Traceback" not in killed_sweep["stderr"]
    runs = {r.data.params["dataset.num_images"]: r for r in _runs(killed_sweep["uri"])}
    assert runs["8"].info.status == "FINISHED"
    killed = runs["200"]
    assert killed.info.status == "KILLED"
    assert "SIGTERM" in killed.data.tags["error"]
    assert killed.data.tags["error.type"] == "Terminated"
    assert killed.data.tags["error.signal"] == "SIGTERM"
    (parent,) = [r for r in _runs(killed_sweep["uri"], sweeps=True)
                 if "detbench.model" not in r.data.tags]
    assert parent.info.status == "KILLED" and "SIGTERM" in parent.data.tags["error"]
    assert not [r for r in _runs(killed_sweep["uri"], sweeps=True) if r.info.status == "RUNNING"]


def test_sigterm_to_a_sweep_keeps_every_latency_measured(killed_sweep: dict[str, Any]) -> None:
    (killed,) = [r for r in _runs(killed_sweep["uri"]) if r.info.status == "KILLED"]
    count = killed.data.metrics["partial.count"]
    assert count >= killed_sweep["measured"]  # the unfinished chunk included
    assert count < 4 * int(SWEEP_IMAGES[1])
    log = jobdir.read_latency_log(killed_sweep["job_dir"])
    assert log is not None and count == np.count_nonzero(~np.isnan(log))
    rows = _artifact_rows(killed_sweep["uri"], killed.info.run_id, jobdir.LATENCIES,
                          killed_sweep["tmp"] / "dl")
    assert len(rows) == np.count_nonzero(~np.isnan(log[0]))  # the first pass, image by image
    assert killed.data.metrics["partial.latency_mean_ms"] > 0
    assert "bbox.AP" not in killed.data.metrics and "latency_mean_ms" not in killed.data.metrics


def test_sigterm_to_a_sweep_leaves_no_worker_or_sampler(killed_sweep: dict[str, Any]) -> None:
    assert len(killed_sweep["family"]) >= 2  # the worker and its sampling process were there
    _wait_for(lambda: _gone(killed_sweep["family"]), 30, "worker and sampler to end")


@pytest.mark.slow  # measures the killed 200-image job again
def test_rerunning_a_killed_sweep_resumes_it(killed_sweep: dict[str, Any]) -> None:
    tmp, uri = killed_sweep["tmp"], killed_sweep["uri"]
    again = _job(tmp, uri, killed_sweep["cache"], *killed_sweep["overrides"], multirun=True,
                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = again.communicate(timeout=600)
    assert again.returncode == 0, err[-3000:]
    assert "1 skipped" in out and "1 finished" in out
    statuses = sorted((r.data.params["dataset.num_images"], r.info.status) for r in _runs(uri))
    assert statuses == [("200", "FINISHED"), ("200", "KILLED"), ("8", "FINISHED")]


# -- one signal to one process --------------------------------------------------------------------


@pytest.mark.slow
def test_sighup_to_the_job_alone_stops_its_worker_and_logs_partial_telemetry(
        tmp_path: Path, cache_dir: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    job = _job(tmp_path, uri, cache_dir, "dataset.num_images=200", *LONG,
               "benchmark.sample_interval_s=0.02",
               stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    job_dir = tmp_path / "run"
    measured = _in_loop(job_dir, job)
    (worker,) = _workers(job_dir)
    family = _family(worker)
    os.kill(job.pid, signal.SIGHUP)  # the parent only: it must stop the worker itself
    _, err = job.communicate(timeout=120)
    assert job.returncode == 128 + signal.SIGHUP, err[-3000:]
    (run,) = _runs(uri)
    assert run.info.status == "KILLED" and "SIGHUP" in run.data.tags["error"]
    assert run.data.metrics["partial.count"] >= measured
    assert run.data.metrics["partial.host_cpu_util_mean"] >= 0  # from the rows the sampler took
    assert run.data.metrics["partial.samples_count"] >= 1
    names = {a.path for a in MlflowClient(uri).list_artifacts(run.info.run_id)}
    assert {jobdir.LATENCIES, jobdir.SAMPLES, jobdir.TELEMETRY} <= names
    assert len(family) >= 2
    _wait_for(lambda: _gone(family), 30, "worker and sampler to end")
    outcome = json.loads((job_dir / jobdir.OUTCOME).read_text())
    assert outcome["status"] == "KILLED" and outcome["error_type"] == "Terminated"
    assert outcome["signal"] == signal.SIGHUP


@pytest.mark.slow
def test_sigterm_to_the_worker_alone_keeps_the_unfinished_chunk(tmp_path: Path,
                                                                cache_dir: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    job = _job(tmp_path, uri, cache_dir, "dataset.num_images=200", *LONG,
               "benchmark.telemetry=false",
               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    job_dir = tmp_path / "run"
    measured = _in_loop(job_dir, job)
    (worker,) = _workers(job_dir)
    worker.send_signal(signal.SIGTERM)
    out, err = job.communicate(timeout=120)
    assert job.returncode == 1, err[-3000:]
    assert "job KILLED" in out and "SIGTERM" in out
    (run,) = _runs(uri)
    assert run.info.status == "KILLED" and run.data.tags["error.signal"] == "SIGTERM"
    assert run.data.metrics["partial.count"] >= measured
    rows = _artifact_rows(uri, run.info.run_id, jobdir.LATENCIES, tmp_path / "dl")
    assert 50 <= len(rows) <= run.data.metrics["partial.count"]  # first pass of each chunk


# -- a model that hangs inside the timed loop ------------------------------------------------------


def _build_hang_after(directory: Path, calls: int, fifo: Path) -> Path:
    """A zoo-contract SavedModel whose call number ``calls + 1`` blocks for ever in the C++
    runtime (opening a FIFO nobody writes to: no CPU used, no Python signal handler runs)."""
    import tensorflow as tf

    class HangAfter(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.calls = tf.Variable(0, dtype=tf.int64)
            spec = tf.TensorSpec([1, None, None, 3], tf.uint8, name="input_tensor")
            self.serve = tf.function(self._serve, input_signature=[spec])

        def _serve(self, image: tf.Tensor) -> dict[str, tf.Tensor]:
            n = self.calls.assign_add(1)
            # the name depends on n, so that grappler cannot constant-fold the read at load time
            name = tf.strings.join([str(fifo), tf.strings.substr(tf.strings.as_string(n), 0, 0)])
            blocked = tf.cond(n > calls, lambda: tf.io.read_file(name), lambda: tf.constant(""))
            zero = 0.0 * tf.cast(tf.strings.length(blocked), tf.float32)
            zero += 0.0 * tf.reduce_mean(tf.cast(image, tf.float32))
            return {"detection_boxes": tf.constant([[[0.1, 0.1, 0.6, 0.6]]]) + zero,
                    "detection_classes": tf.constant([[1.0]]),
                    "detection_scores": tf.constant([[0.9]]),
                    "num_detections": tf.constant([1.0])}

    module = HangAfter()
    tf.saved_model.save(module, str(directory), signatures={"serving_default": module.serve})
    return directory


@pytest.mark.slow  # waits out timeout_s
def test_a_model_hung_in_the_timed_loop_times_out_with_its_latencies(
        tmp_path: Path, cache_dir: Path) -> None:
    fifo = tmp_path / "never_written.fifo"
    os.mkfifo(fifo)
    # the model blocks from its 41st call on: well inside the timed loop over 60 images, after
    # the untimed calls (what ran, the output checks of the first calls, 1 warm-up call)
    model = _build_hang_after(tmp_path / "hang_after", 40, fifo)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    job = _job(tmp_path, uri, cache_dir, "model=custom", f"model.path={model}",
               "dataset.num_images=60", "benchmark.warmup=1", "benchmark.timeout_s=40",
               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = job.communicate(timeout=300)
    assert job.returncode == 1, err[-3000:]
    (run,) = _runs(uri)
    assert run.info.status == "FAILED" and run.data.tags["error.type"] == "Timeout"
    assert "benchmark.timeout_s=40" in run.data.tags["error"]
    timed = _measured(tmp_path / "run")
    assert 20 <= timed < 40  # the calls before the hang, minus the untimed ones
    assert run.data.metrics["partial.count"] == timed
    rows = _artifact_rows(uri, run.info.run_id, jobdir.LATENCIES, tmp_path / "dl")
    assert len(rows) == timed
    assert not _workers(tmp_path)
    # the worker was SIGKILLed (hung in C++): the sampler's streamed rows are what is left
    if not (tmp_path / "run" / jobdir.SAMPLES).exists():
        assert run.data.metrics["partial.samples_count"] >= 1
        assert run.data.metrics["partial.telemetry_all_phases"] == 1.0


# -- a full disk -------------------------------------------------------------------------------


@contextlib.contextmanager
def _tmpfs(mount: Path, size: str) -> Iterator[Path]:
    """A real tmpfs of ``size`` at ``mount`` (root and mount permission needed; the test is
    skipped with the reason otherwise)."""
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a {size} tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 600 KiB filesystem: what issue 11 found 0-byte protocol files on."""
    with _tmpfs(tmp_path / "small", "600k") as mount:
        yield mount


@pytest.mark.slow
def test_full_disk_ends_the_run_failed_with_no_space_left(tmp_path: Path, cache_dir: Path,
                                                          small_fs: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"  # the store is elsewhere: only the job dir is full
    job_dir = small_fs / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "runner", f"hydra.run.dir={job_dir}", "dataset.num_images=200",
         "benchmark.warmup=1", "benchmark.telemetry=false"],
        cwd=tmp_path, env=_env(uri, cache_dir), capture_output=True, text=True, timeout=400)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "no space left on" in proc.stdout
    (run,) = _runs(uri)
    assert run.info.status == "FAILED"
    assert "no space left on" in run.data.tags["error"]
    assert run.data.metrics["partial.count"] > 0  # the latencies were measured before
    empty = [p.name for p in job_dir.iterdir() if p.is_file() and p.name.endswith(".json")
             and p.stat().st_size == 0]
    assert not empty, f"0-byte protocol files: {empty}"
    for name in (jobdir.OUTCOME, jobdir.ERROR, jobdir.TRACKING):
        if (job_dir / name).exists():
            jobdir.read_json(job_dir / name)  # whole or absent, never torn


# -- runner.sync over corrupt directories, republishing --------------------------------------------


def _pending_dir(root: Path, name: str, uri: str, latencies: list[float]) -> Path:
    """A job directory as a job leaves it when the store was down: tracking record, spec,
    outcome (FAILED), latency log."""
    job_dir = root / name
    job_dir.mkdir(parents=True)
    ids = list(range(1, len(latencies) + 2))
    jobdir.write_json(job_dir / jobdir.TRACKING, {
        "uri": uri, "experiment": "detbench", "name": name, "run_id": None,
        "params": {"model.name": "demo"},
        "tags": {"detbench.model": "demo", "detbench.job_dir": str(job_dir.resolve())}})
    jobdir.write_json(job_dir / jobdir.JOB, {"dataset": {
        "display_name": "tiny", "annotations": "/nonexistent.json",
        "images": [[i, f"/img{i}.jpg", 8, 8] for i in ids]}})
    log = jobdir.create_latency_log(job_dir, 1, len(ids))
    log[0, :len(latencies)] = latencies
    del log
    jobdir.write_json(job_dir / jobdir.OUTCOME, {"status": "FAILED", "error_type": "Timeout",
                                                 "error": "ran past benchmark.timeout_s"})
    return job_dir


def test_sync_reports_a_corrupt_directory_and_uploads_the_others_once(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    root = tmp_path / "multirun"
    good = _pending_dir(root, "0", uri, [0.010, 0.020, 0.030])
    bad = _pending_dir(root, "1", uri, [0.010])
    (bad / jobdir.OUTCOME).write_bytes(b"")  # what a full disk left before atomic writes
    _pending_dir(root, "2", uri, [0.040])
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": str(ROOT)}
    sync = [sys.executable, "-m", "runner.sync", str(root)]
    first = subprocess.run(sync, cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=120)
    assert first.returncode == 1
    assert "Traceback" not in first.stderr
    assert f"{bad}: not uploaded" in first.stderr and "empty (0 bytes)" in first.stderr
    assert "2 job directories uploaded, 1 not" in first.stdout
    runs = {r.info.run_name: r for r in _runs(uri)}
    assert set(runs) == {"0", "2"}
    assert runs["0"].info.status == "FAILED"
    assert runs["0"].data.tags["error.type"] == "Timeout"
    assert runs["0"].data.metrics["partial.count"] == 3
    assert runs["0"].data.metrics["partial.latency_mean_ms"] == pytest.approx(20.0)
    assert len((good / jobdir.LATENCIES).read_text().splitlines()) == 4  # rebuilt from the log
    # republish (e.g. the first upload broke off after the metrics): no metric logged twice
    (good / jobdir.PUBLISHED).unlink()
    again = subprocess.run([sys.executable, "-m", "runner.sync", str(good)], cwd=tmp_path,
                           env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    client = MlflowClient(uri)
    for key in ("partial.count", "partial.latency_mean_ms"):
        assert len(client.get_metric_history(runs["0"].info.run_id, key)) == 1
    assert {r.info.run_name for r in _runs(uri)} == {"0", "2"}  # no duplicate run
    missing = subprocess.run([sys.executable, "-m", "runner.sync", str(tmp_path / "nope")],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and "no such directory" in missing.stderr
    assert "Traceback" not in missing.stderr


# -- orphans on other hosts -------------------------------------------------------------------


def test_runs_of_a_gone_host_are_reaped_by_heartbeat_age(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = tracking.Tracker(uri, "detbench")
    client = MlflowClient(uri)
    now = time.time()

    def run(name: str, heartbeat: float | None) -> str:
        tags = {"detbench.host": "node-gone-17", "detbench.pid": "4242",
                "detbench.pid_start": "1.0"}
        if heartbeat is not None:
            tags[tracking.HEARTBEAT_TAG] = f"{heartbeat:.0f}"
        return str(client.create_run(tracker.experiment_id, run_name=name, tags=tags)
                   .info.run_id)

    stale = run("stale", now - tracking.STALE_AFTER_S - 60)
    fresh = run("fresh", now - 30)
    legacy = run("no heartbeat", None)
    assert tracker.reap_orphans() == [stale]
    reaped = client.get_run(stale)
    assert reaped.info.status == "FAILED"
    assert "no heartbeat" in reaped.data.tags["error"] and "node-gone-17" in reaped.data.tags[
        "error"]
    assert client.get_run(fresh).info.status == "RUNNING"
    assert client.get_run(legacy).info.status == "RUNNING"


def test_heartbeat_refreshes_the_tag_of_a_live_run(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = tracking.Tracker(uri, "detbench")
    run_id = tracker.start("beating", {}, {})
    client = MlflowClient(uri)
    first = float(client.get_run(run_id).data.tags[tracking.HEARTBEAT_TAG])
    beat = tracking.Heartbeat(uri, run_id, interval_s=0.2).start()
    try:
        _wait_for(lambda: float(client.get_run(run_id).data.tags[tracking.HEARTBEAT_TAG])
                  > first, 30, "a heartbeat")
    finally:
        beat.stop()
    tracker.finish()


# -- exit codes, messages and links -------------------------------------------------------------


def test_read_only_store_is_refused_before_any_model_loads(tmp_path: Path,
                                                           cache_dir: Path) -> None:
    source, view = tmp_path / "store", tmp_path / "store_ro"
    source.mkdir()
    view.mkdir()
    tracking.client(f"sqlite:///{source / 'mlflow.db'}")  # a real store, seen read-only below
    bind = subprocess.run(["mount", "--bind", str(source), str(view)], capture_output=True,
                          text=True)
    if bind.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {bind.stderr.strip()}")
    try:
        ro = subprocess.run(["mount", "-o", "remount,ro,bind", str(view)], capture_output=True,
                            text=True)
        if ro.returncode != 0:
            pytest.skip(f"cannot remount read-only: {ro.stderr.strip()}")
        _refused(tmp_path, view / "mlflow.db", cache_dir)
    finally:
        subprocess.run(["umount", "-l", str(view)], check=False)


def _refused(tmp_path: Path, db: Path, cache_dir: Path) -> None:
    for multirun in (False, True):
        flags = ["-m", f"hydra.sweep.dir={tmp_path / 'multi'}"] if multirun else [
            f"hydra.run.dir={tmp_path / 'run'}"]
        proc = subprocess.run([sys.executable, "-m", "runner", *flags, "dataset.num_images=2"],
                              cwd=tmp_path, env=_env(f"sqlite:///{db}", cache_dir),
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert "read-only" in proc.stderr and str(db) in proc.stderr
        assert "unreachable" not in proc.stderr and "Traceback" not in proc.stderr
    assert not list(tmp_path.rglob(jobdir.JOB))


def test_ui_link_is_the_tracking_servers_own() -> None:
    assert tracking.ui_host("http://user:secret@tracker.example:5001/mlflow/") == (
        "http://tracker.example:5001/mlflow")
    assert tracking.ui_host("https://mlflow.example.org") == "https://mlflow.example.org"
    assert tracking.ui_host("sqlite:///mlflow.db") == tracking.UI_HOST
    assert tracking.runs_table_link("3", "http://10.0.0.5:8080").startswith(
        "http://10.0.0.5:8080/#/experiments/3/runs")


def test_slurm_preset_leaves_time_to_end_the_runs() -> None:
    from tests.test_launchers import _compose

    cfg = _compose(["hydra/launcher=slurm"])
    limit_s = cfg.hydra.launcher.timeout_min * 60
    assert limit_s >= cfg.benchmark.timeout_s + cfg.hydra.launcher.signal_delay_s + 600
    assert cfg.hydra.launcher.signal_delay_s >= 120


def test_endings_keep_error_type_and_message_apart() -> None:
    from runner import job, signals
    from runner.results import export

    killed = job.ending(signals.Terminated(signal.SIGTERM))
    assert (killed.status, killed.error_type, killed.signal) == ("KILLED", "Terminated", 15)
    told = job.ending(SystemExit(-1))  # what submitit raises on SLURM's time-limit signal
    assert told.status == "KILLED" and "submitit" in (told.error or "")
    failed = job.ending(job.JobFailed("boom", "ValueError"))
    assert (failed.status, failed.error_type, failed.error) == ("FAILED", "ValueError", "boom")
    assert failed.text == "ValueError: boom"
    assert export.short_error("FAILED", failed.text, "ValueError", "boom") == (
        "failed: ValueError: boom")
    assert export.short_error("FAILED", "JobFailed: OSError: bad\ntrace") == "failed: OSError: bad"


def test_a_signal_while_an_ending_is_logged_is_raised_after_it() -> None:
    from runner import signals

    previous = {s: signal.getsignal(s) for s in (*signals.HANDLED, signal.SIGINT)}
    logged = []
    try:
        assert signals.install()
        with pytest.raises(signals.Terminated) as raised, signals.deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.01)  # the handler runs between two bytecodes: here, and returns
            logged.append("the run's status")
        assert logged == ["the run's status"] and raised.value.exit_code == 143
        assert signals.received() == signal.SIGTERM
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        signals._received = None
