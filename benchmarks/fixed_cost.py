"""Fixed cost of a job: seconds from the job's start to its first timed call, and from its last
timed call to its MLflow run being logged, with a breakdown. Model download and conversion are
excluded (the demo detector is embedded; the synthetic dataset is generated before timing).

Jobs are the real ``python -m runner`` (demo detector, synthetic split, ``dataset.num_images``
10 or 20, ``benchmark.warmup`` 5..8), run as Hydra sweeps (``-m``: one process, one worker child
per job) and watched from outside. Times come from the processes' start times (psutil, put on
``time.time()``'s scale), the MLflow runs' ``start_time`` / ``end_time``, each worker's
``telemetry.json`` (sampler start and phase marks: ``start`` = environment record, ``load``,
``prepare``, ``warmup``, ``timed`` = first timed call to the end of the last), its files'
modification times (``detections.json`` is written as evaluation starts, ``metrics.json`` when it
ends) and the last poll that saw the worker alive. A job's start is its process's start for the
first job of a sweep, the previous job's run logged for the next ones.

Full mode: a sweep of 2 jobs on a fresh tracking store (its creation is part of the first job's
cost), 3 rounds of probes that import and initialize each piece in a fresh interpreter (python,
Hydra + the runner's config, MLflow + Trackers on an existing / the same / a fresh store,
TensorFlow, the environment record, the model load, the worker's exit with and without
``os._exit``), then a sweep of 4 jobs on the existing store. ``--quick``: the first sweep only.
Checks: every job FINISHED, the phases add up to the totals (within 5%), and ceilings (120 s
before the first timed call, 60 s after the last) that only a regression of minutes would break.

    python benchmarks/fixed_cost.py [--quick]
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common  # noqa: E402

CEILING_BEFORE_S = 120.0
CEILING_AFTER_S = 60.0

#: each probe runs in a fresh interpreter and prints a JSON object of step -> seconds
PROBES: dict[str, str] = {
    "python": "import json; print(json.dumps({}))",
    "parent_imports": """
import json, time
t = time.perf_counter()
import hydra, omegaconf
from runner import config, job
from runner.results import report
config.register()
print(json.dumps({"hydra_and_runner_imports_s": time.perf_counter() - t}))
""",
    "mlflow": """
import json, sys, time
t = time.perf_counter()
from runner.tracking import Tracker
import mlflow
from mlflow.tracking import MlflowClient
imported = time.perf_counter()
Tracker(sys.argv[1], "detbench")
existing = time.perf_counter()
Tracker(sys.argv[1], "detbench")
again = time.perf_counter()
Tracker(sys.argv[2], "detbench")
fresh = time.perf_counter()
print(json.dumps({"mlflow_import_s": imported - t, "tracker_existing_store_s": existing - imported,
                  "tracker_same_store_again_s": again - existing,
                  "tracker_fresh_store_s": fresh - again}))
""",
    "worker_steps": """
import json, sys, time
from pathlib import Path
t0 = time.perf_counter()
import numpy
from runner import config, data, worker
from runner.telemetry import Sampler
t1 = time.perf_counter()
sampler = Sampler(); sampler.start(); sampler.stop()
t2 = time.perf_counter()
import tensorflow as tf
t3 = time.perf_counter()
from runner import environment
environment.collect(sampler.gpus)
t4 = time.perf_counter()
environment.git_commit(environment.PROJECT_DIR)
t5 = time.perf_counter()
from runner.backends.native import NativeBackend
NativeBackend(Path(sys.argv[1]))
t6 = time.perf_counter()
print(json.dumps({"worker_imports_s": t1 - t0, "sampler_setup_s": t2 - t1,
                  "tensorflow_import_s": t3 - t2, "environment_collect_s": t4 - t3,
                  "git_commit_s": t5 - t4, "model_load_s": t6 - t5}))
""",
    # the worker's last act: from writing its results to the process being gone, with a
    # normal interpreter exit and with os._exit (argv[2] == "os_exit")
    "teardown": """
import json, os, sys, time
from pathlib import Path
import numpy as np
import tensorflow as tf
from runner.backends.native import NativeBackend
backend = NativeBackend(Path(sys.argv[1]))
backend.predict(tf.constant(np.zeros((1, 480, 640, 3), np.uint8)))
print(json.dumps({"done_at": time.time()}), flush=True)
if sys.argv[2] == "os_exit":
    os._exit(0)
""",
}


def run_probe(name: str, args: Sequence[str], tmp: Path) -> dict[str, float]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", PROBES[name], *args], env=common.child_env(),
                          cwd=tmp, capture_output=True, text=True, check=True)
    ended = time.time()
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    result["process_s"] = time.perf_counter() - start
    if "done_at" in result:
        result = {"exit_s": ended - result.pop("done_at"), "process_s": result["process_s"]}
    return result


def mlflow_times(uri: str, run_id: str) -> tuple[float, float, str]:
    from mlflow.tracking import MlflowClient

    run = MlflowClient(tracking_uri=uri).get_run(run_id)
    return run.info.start_time / 1000, (run.info.end_time or 0) / 1000, run.info.status


def run_sweep(tmp: Path, name: str, store: str, num_images: int,
              jobs: int) -> list[dict[str, Any]]:
    """``python -m runner -m benchmark.warmup=5,6,...``: ``jobs`` jobs in one process (Hydra's
    basic launcher runs them one after the other), each with its own worker. Returns each job's
    time marks (time.time() scale); job k > 0 starts when job k - 1's run was logged."""
    sweep_dir = tmp / name
    warmups = ",".join(str(5 + k) for k in range(jobs))
    cmd = [sys.executable, "-m", "runner", "-m", f"benchmark.warmup={warmups}",
           f"dataset.num_images={num_images}", "benchmark.rerun=true", f"tracking.uri={store}",
           f"hydra.sweep.dir={sweep_dir}"]
    # cwd: the store's artifacts (./mlruns) stay in the temporary folder
    w = common.run_watched(cmd, env=common.child_env(DETBENCH_CACHE=str(tmp / "cache")), cwd=tmp)
    if w.returncode != 0:
        raise RuntimeError(f"the sweep failed (exit {w.returncode}):\n{w.stderr[-3000:]}")
    workers = [(start, last) for label, start, last in w.processes if label == "worker"]
    if len(workers) < jobs:
        raise RuntimeError(f"saw {len(workers)} worker processes for {jobs} jobs")
    # a short-lived fork of a worker (e.g. a subprocess it starts) shows the worker's command
    # line for a moment: keep the jobs' workers, the longest-lived ones, in start order
    workers = sorted(sorted(workers, key=lambda sl: sl[1] - sl[0])[-jobs:])
    out: list[dict[str, Any]] = []
    for k in range(jobs):
        job_dir = sweep_dir / str(k)
        run_id = json.loads((job_dir / "tracking.json").read_text())["run_id"]
        start_time, end_time, status = mlflow_times(store, run_id)
        telemetry = json.loads((job_dir / "telemetry.json").read_text())
        wall0 = float(telemetry["wall_start"])
        at = {p: (wall0 + float(a), wall0 + float(b)) for p, (a, b) in telemetry["phases"].items()}
        marks = {
            "job_start": w.started["runner"] if k == 0 else out[k - 1]["marks"]["run_logged"],
            "run_created": start_time,
            "worker_start": workers[k][0],
            "sampler_start": wall0,
            "load_start": at["load"][0],
            "prepare_start": at["prepare"][0],
            "warmup_start": at["warmup"][0],
            "first_timed_call": at["timed"][0],
            "last_timed_call_end": at["timed"][1],
            "evaluation_start": (job_dir / "detections.json").stat().st_mtime,
            "metrics_written": (job_dir / "metrics.json").stat().st_mtime,
            "worker_exit": workers[k][1] + 0.01,  # last poll that saw it + half the interval
            "run_logged": end_time,
        }
        out.append({"status": status, "marks": marks, "process_exit": w.launched + w.wall_s})
    return out


BEFORE = (("job_start", "run_created",
           "parent: to the run's creation (first job: python, Hydra, config, MLflow import and "
           "store; next jobs: Hydra's next job, Tracker, run created)"),
          ("run_created", "worker_start", "parent: params logged, dataset listed, child started"),
          ("worker_start", "sampler_start", "worker: python + runner imports + job spec"),
          ("sampler_start", "load_start",
           "worker: environment record (mostly the TensorFlow import)"),
          ("load_start", "prepare_start", "worker: model load"),
          ("prepare_start", "warmup_start", "worker: first chunk prepared"),
          ("warmup_start", "first_timed_call", "worker: warm-up calls"))
AFTER = (("last_timed_call_end", "evaluation_start", "worker: latencies, samples, telemetry"),
         ("evaluation_start", "metrics_written", "worker: detections.json + COCO evaluation"),
         ("metrics_written", "worker_exit", "worker: process exit (interpreter teardown)"),
         ("worker_exit", "run_logged", "parent: metrics, series, artifacts logged, run ended"))


def span(job: dict[str, Any], a: str, b: str) -> float:
    return float(job["marks"][b] - job["marks"][a])


def show(report: common.Report, label: str, jobs: Sequence[dict[str, Any]],
         parts: Sequence[tuple[str, str, str]], total: tuple[str, str], what: str) -> float:
    value = statistics.median(span(j, *total) for j in jobs)
    report.figure(f"{label}_s", value, f"({what})")
    summed = 0.0
    for a, b, text in parts:
        part = statistics.median(span(j, a, b) for j in jobs)
        summed += part
        report.info(f"  {part:6.2f} s  {text}")
    report.check(f"{label}_adds_up", abs(summed - value) <= 0.05 * value + 0.05,
                 f"the phases sum to {summed:.2f} s of {value:.2f} s")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    args = common.arguments(__doc__.splitlines()[0], argv)
    report = common.Report("fixed_cost", args.quick)
    common.header(report, "job start -> first timed call, last timed call -> run logged")
    num_images = 10 if args.quick else 20
    probes: dict[str, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="detbench-fixed-") as name:
        tmp = Path(name)
        from runner.demo import synth

        synth.ensure_split(tmp / "cache" / "datasets", "val")  # generated once, not timed
        store = f"sqlite:///{tmp / 'mlflow.db'}"
        fresh = run_sweep(tmp, "fresh", store, num_images, 2)  # job 0: a fresh store
        rounds = 0 if args.quick else 3
        for r in range(rounds):
            for probe in PROBES:
                extra = {"mlflow": [[store, f"sqlite:///{tmp / f'fresh-{r}.db'}"]],
                         "worker_steps": [[str(common.DEMO_MODEL)]],
                         "teardown": [[str(common.DEMO_MODEL), "normal"],
                                      [str(common.DEMO_MODEL), "os_exit"]]}.get(probe, [[]])
                for args_ in extra:
                    key = probe if probe != "teardown" else f"teardown_{args_[1]}"
                    probes.setdefault(key, []).append(run_probe(probe, args_, tmp))
        sweep = fresh if args.quick else run_sweep(tmp, "sweep", store, num_images, 4)
    jobs = fresh + ([] if args.quick else sweep)
    report.check("jobs_finished", all(j["status"] == "FINISHED" for j in jobs),
                 f"{sum(j['status'] == 'FINISHED' for j in jobs)} of {len(jobs)} jobs FINISHED")
    first, steady = sweep[0], sweep[1:]
    first_what = "a job started alone on a fresh store" if args.quick else (
        "a job started alone on an existing store")
    report.info(f"{first_what}:")
    before = show(report, "before_first_timed_call", [first], BEFORE,
                  ("job_start", "first_timed_call"), first_what)
    after = show(report, "after_last_timed_call", [first], AFTER,
                 ("last_timed_call_end", "run_logged"), first_what)
    report.figure("sweep_end_s", first["process_exit"] - sweep[-1]["marks"]["run_logged"],
                  "(the last run logged -> the sweep's process gone: report, sweep summary and "
                  "callbacks, Hydra, teardown; once per sweep)")
    report.info(f"next jobs of the sweep (median of {len(steady)}), starting when the previous "
                "run was logged:")
    show(report, "sweep_before_first_timed_call", steady, BEFORE,
         ("job_start", "first_timed_call"), "in a sweep: from the previous run logged")
    sweep_after = show(report, "sweep_after_last_timed_call", steady, AFTER,
                       ("last_timed_call_end", "run_logged"), "in a sweep")
    gaps = [b["marks"]["first_timed_call"] - a["marks"]["last_timed_call_end"]
            for a, b in zip(sweep, sweep[1:], strict=False)]
    gap = statistics.median(gaps)
    report.figure("sweep_gap_s", gap, "(a sweep's last timed call of one job to the first timed "
                                      "call of the next: the fixed cost a sweep pays per job)")
    report.figure("sweep_of_41_fixed_s", before + after + 40 * gap,
                  "(41 jobs: the first job's before + after, then 40 gaps)")
    if not args.quick:
        fresh_extra = span(fresh[0], "job_start", "run_created") - span(
            first, "job_start", "run_created")
        report.figure("fresh_store_extra_s", fresh_extra,
                      "(a new tracking store's creation, paid once per store)")
        report_probes(report, probes)
    report.target("before_ceiling", before <= CEILING_BEFORE_S,
                 f"{before:.1f} s <= {CEILING_BEFORE_S:.0f} s")
    report.target("after_ceiling", max(after, sweep_after) <= CEILING_AFTER_S,
                 f"{max(after, sweep_after):.1f} s <= {CEILING_AFTER_S:.0f} s")
    return report.finish(args.json)


def report_probes(report: common.Report, probes: dict[str, list[dict[str, float]]]) -> None:
    med = statistics.median
    report.info("breakdown by probes (fresh interpreters, medians):")
    for probe, results in probes.items():
        report.info(f"  {probe}: " + ", ".join(f"{k} {med(r[k] for r in results):.2f}"
                                                for k in results[0]))
    steps = {k: med(r[k] for r in probes["worker_steps"]) for k in probes["worker_steps"][0]}
    ml = {k: med(r[k] for r in probes["mlflow"]) for k in probes["mlflow"][0]}
    report.figure("tensorflow_import_s", steps["tensorflow_import_s"])
    report.figure("environment_record_s", steps["environment_collect_s"],
                  f"(after TensorFlow is imported; git commit + status alone "
                  f"{steps['git_commit_s']:.2f} s)")
    report.figure("model_load_s", steps["model_load_s"])
    report.figure("mlflow_import_s", ml["mlflow_import_s"],
                  f"(then a Tracker on an existing store {ml['tracker_existing_store_s']:.2f} s, "
                  f"again on it {ml['tracker_same_store_again_s']:.2f} s, on a fresh store "
                  f"{ml['tracker_fresh_store_s']:.2f} s)")
    normal = med(r["exit_s"] for r in probes["teardown_normal"])
    fast = med(r["exit_s"] for r in probes["teardown_os_exit"])
    report.figure("worker_teardown_s", normal,
                  f"(results written -> process gone, TensorFlow loaded; with os._exit {fast:.2f} "
                  "s)")


if __name__ == "__main__":
    sys.exit(main())
