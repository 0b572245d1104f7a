"""What a person sees at the end of a job: the public table's row and where the run is."""

from __future__ import annotations

from runner.results import table
from runner.job import JobResult


def _details(m: dict[str, float]) -> str:
    parts = [
        f"{int(m['count'])} calls timed",
        "images/sec = images / total timed seconds "
        f"(95% CI {m['images_per_sec_ci_low']:.2f}-{m['images_per_sec_ci_high']:.2f})",
        f"latency p90 {m['latency_p90_ms']:.2f} ms",
        f"p95 {m['latency_p95_ms']:.2f} ms",
        f"max {m['latency_max_ms']:.2f} ms",
        f"CV {m['latency_cv']:.3f}",
    ]
    if "gpu_util_mean" in m:
        parts.append(f"GPU util mean {m['gpu_util_mean']:.0f}%")
    if "gpu_energy_per_image_j" in m:
        parts.append(f"{m['gpu_energy_per_image_j']:.3f} J/image")
    if "cpu_util_mean" in m:
        parts.append(f"CPU util mean {m['cpu_util_mean']:.0f}%")
    return "; ".join(parts)


def print_result(result: JobResult) -> None:
    if result.status == "FINISHED":
        print()
        print(table.markdown([result.row]))
        print()
        print(_details(result.metrics))
        if result.metrics.get("stable", 1.0) == 0.0:
            print("unstable measurement (tag detbench.stability_warning says why): compare with "
                  "care")
    elif result.status == "SKIPPED":
        print(f"\njob {result.name} SKIPPED: {result.error}")
        return
    else:
        print(f"\njob {result.status}: {result.error}")
    if result.pending_dir is not None:
        print(f"NOT logged to {result.tracking_uri} ({result.pending_reason}): results kept in "
              f"{result.pending_dir}; upload them with: python -m runner.sync "
              f"{result.pending_dir}")
        return
    print(f"MLflow run {result.run_id} ({result.status}) in {result.tracking_uri}")
    if result.tracking_uri.startswith(("http://", "https://")):
        print(f"  browse: {result.ui_link}")
    else:  # a local store has no server: the UI is `make mlflow-ui`'s, on UI_HOST
        print(f"  browse: make mlflow-ui, then open {result.ui_link}")
    if result.experiment_id is not None:
        from runner.tracking import runs_table_link

        print(f"  all runs: {runs_table_link(result.experiment_id, result.tracking_uri)}")
