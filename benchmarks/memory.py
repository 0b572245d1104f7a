"""Memory: peak RSS of the measured part of a job (the worker process) at two dataset sizes, N and
N/4, measured from outside.

The script writes a COCO-format dataset of 640x480 JPEGs (64 distinct pictures, the rest hard
links; a few ground-truth boxes each over COCO's category ids) and runs the real job on it twice,
``python -m runner dataset=coco_files ... dataset.num_images=N/4`` then ``=N`` (demo detector,
``benchmark.warmup=5``, a temporary SQLite tracking store), each under a wrapper whose
``getrusage(RUSAGE_CHILDREN).ru_maxrss`` is the kernel's exact peak RSS of the largest process of
the job (the worker), while this script polls the process tree's RSS every 20 ms. The polled
series, placed on the worker's phase times (``telemetry.json``), splits the peak into the timed
loop (load, prepare, warm-up, timing) and evaluation (after the last timed call).

Checks (chunk_size <= N/8, so that both runs prepare full chunks back to back):
- whole measured part: peak(N) <= peak(N/4) + 50 MB + 1,024 bytes per extra detection (the
  results and their evaluation are the only thing that grows with N);
- timed loop: peak(N) <= peak(N/4) + 50 MB (only the results arrays grow, about 6 kB per image at
  100 detections);
- the exact (rusage) and polled worker peaks agree within 5% + 20 MB.

Full mode: N = 5,000 (COCO val's size), chunk_size 256 (the default). ``--quick``: N = 200,
chunk_size 25. ``--images N`` overrides N.

    python benchmarks/memory.py [--quick] [--images N]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common  # noqa: E402

SLACK_MB, TIMED_SLACK_MB = 50.0, 50.0
PER_DETECTION_BYTES = 1024  # the results and their evaluation grow with N (measured: about 800)


def run_job(tmp: Path, images_dir: Path, annotations: Path, num_images: int,
            chunk_size: int) -> dict[str, Any]:
    job_dir = tmp / f"run-{num_images}"
    cmd = [sys.executable, "-m", "runner", "dataset=coco_files",
           f"dataset.images_dir={images_dir}", f"dataset.annotations={annotations}",
           f"dataset.num_images={num_images}", "benchmark.warmup=5",
           f"benchmark.chunk_size={chunk_size}", "benchmark.rerun=true",
           f"tracking.uri=sqlite:///{tmp / 'mlflow.db'}", f"hydra.run.dir={job_dir}"]
    # cwd: the store's artifacts (./mlruns) stay in the temporary folder
    watched = common.run_watched(cmd, env=common.child_env(DETBENCH_CACHE=str(tmp / "cache")),
                                 cwd=tmp)
    out: dict[str, Any] = {"n": num_images, "rc": watched.returncode, "wall_s": watched.wall_s,
                           "exact_peak_mb": watched.rusage_maxrss_mb,
                           "polled_worker_peak_mb": watched.peak_hwm_mb.get("worker", 0.0),
                           "polled_runner_peak_mb": watched.peak_hwm_mb.get("runner", 0.0),
                           "tail": watched.stderr[-2000:]}
    metrics_file, telemetry_file = job_dir / "metrics.json", job_dir / "telemetry.json"
    if watched.returncode or not metrics_file.is_file() or not telemetry_file.is_file():
        return out
    metrics = json.loads(metrics_file.read_text())
    telemetry = json.loads(telemetry_file.read_text())
    wall0 = float(telemetry["wall_start"])
    timed_end = wall0 + float(telemetry["phases"]["timed"][1])
    worker = [(t, rss) for t, label, rss in watched.series if label == "worker"]
    out.update(detections=int(metrics["detections"]),
               timed_peak_mb=max((rss for t, rss in worker if t <= timed_end), default=0.0),
               evaluation_peak_mb=max((rss for t, rss in worker if t > timed_end), default=0.0),
               evaluate_s=float(metrics["time.evaluate_s"]), polls=len(worker))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    def extra(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--images", type=int, help="N (default 5000, --quick 200)")

    args = common.arguments(__doc__.splitlines()[0], argv, extra)
    report = common.Report("memory", args.quick)
    common.header(report, "peak RSS of the measured part at N and N/4 images, from outside")
    n = args.images or (200 if args.quick else 5000)
    chunk = min(256, max(1, n // 8))  # N/4 holds at least two full chunks
    with tempfile.TemporaryDirectory(prefix="detbench-mem-") as name:
        tmp = Path(name)
        images_dir, annotations = common.write_jpeg_dataset(tmp / "dataset", n)
        report.info(f"dataset: {n} 640x480 JPEGs in COCO format; chunk_size {chunk}; "
                    f"runs: N/4 = {n // 4}, then N = {n}")
        runs = [run_job(tmp, images_dir, annotations, size, chunk) for size in (n // 4, n)]
    small, large = runs
    for run in runs:
        report.info(f"N={run['n']}: exit {run['rc']} in {run['wall_s']:.0f} s, "
                    f"{run.get('detections', 0)} detections; worker peak RSS exact "
                    f"{run['exact_peak_mb']:.0f} MB (polled {run['polled_worker_peak_mb']:.0f}), "
                    f"timed loop {run.get('timed_peak_mb', 0):.0f} MB, evaluation "
                    f"{run.get('evaluation_peak_mb', 0):.0f} MB ({run.get('evaluate_s', 0):.1f} "
                    f"s); parent process {run['polled_runner_peak_mb']:.0f} MB")
    ok = report.check("jobs_finished", all(r["rc"] == 0 and r.get("detections", 0) > 0
                                           for r in runs),
                      "both jobs exited 0 and logged their detections")
    if not ok:
        for run in runs:
            print(run["tail"], file=sys.stderr)
        return report.finish(args.json)
    report.figure("peak_rss_mb_N", large["exact_peak_mb"], f"(N = {n})")
    report.figure("peak_rss_mb_N_over_4", small["exact_peak_mb"], f"(N/4 = {n // 4})")
    report.figure("peak_ratio", large["exact_peak_mb"] / small["exact_peak_mb"])
    report.figure("timed_peak_ratio", large["timed_peak_mb"] / small["timed_peak_mb"],
                  f"(timed loop: {large['timed_peak_mb']:.0f} / {small['timed_peak_mb']:.0f} MB)")
    growth = (large["exact_peak_mb"] - small["exact_peak_mb"]) * 1024 / (n - n // 4)
    report.figure("growth_kb_per_image", growth, "(peak(N) - peak(N/4)) / (N - N/4)")
    per_det = (large["exact_peak_mb"] - small["exact_peak_mb"]) * 2**20 / max(
        1, large["detections"] - small["detections"])
    report.figure("growth_bytes_per_detection", per_det,
                  f"({large['detections']} vs {small['detections']} detections: the results and "
                  "their evaluation, which holds one group of categories at a time)")
    extra_mb = PER_DETECTION_BYTES * (large["detections"] - small["detections"]) / 2**20
    bound = small["exact_peak_mb"] + SLACK_MB + extra_mb
    report.check("peak_bounded", large["exact_peak_mb"] <= bound,
                 f"peak(N) {large['exact_peak_mb']:.0f} MB <= peak(N/4) "
                 f"{small['exact_peak_mb']:.0f} MB + {SLACK_MB:.0f} MB + "
                 f"{PER_DETECTION_BYTES} B per extra detection ({extra_mb:.0f} MB) = {bound:.0f} MB"
                 " (the images cost nothing once timed; only the results grow)")
    timed_bound = small["timed_peak_mb"] + TIMED_SLACK_MB
    report.check("timed_loop_bounded", large["timed_peak_mb"] <= timed_bound,
                 f"timed loop peak(N) {large['timed_peak_mb']:.0f} MB <= peak(N/4) "
                 f"{small['timed_peak_mb']:.0f} MB + {TIMED_SLACK_MB:.0f} MB")
    agree = all(abs(r["exact_peak_mb"] - r["polled_worker_peak_mb"])
                <= 0.05 * r["exact_peak_mb"] + 20 for r in runs)
    report.check("polling_agrees", agree,
                 "the polled worker peak is within 5% + 20 MB of the exact one in both runs")
    return report.finish(args.json)


if __name__ == "__main__":
    sys.exit(main())
