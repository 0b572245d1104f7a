"""What a person sees at the end of a job: the public table's row and where the run is."""

from __future__ import annotations

from datetime import datetime

from runner.job import JobResult
from runner.results import table


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
    if "process_cpu_util_mean" in m:
        parts.append(f"CPU util mean: process tree {m['process_cpu_util_mean']:.0f}%, "
                     f"host {m.get('host_cpu_util_mean', float('nan')):.0f}%")
    return "; ".join(parts)


def print_stored(result: JobResult) -> None:
    """A job skipped as already measured: the stored run's row, its link, how to measure
    again. A store that cannot be read here only loses the row, never the skip."""
    from runner import tracking

    try:
        run = tracking.client(result.tracking_uri).get_run(result.run_id)
    except Exception as exc:  # noqa: BLE001 - the row is a courtesy
        print(f"(stored run {result.run_id} not readable: {type(exc).__name__}: {exc})")
        return
    params, tags = run.data.params, run.data.tags
    row = table.row(params.get("model.display_name") or tags.get("detbench.model", "?"),
                    tags.get("detbench.resolution", "?"),
                    params.get("precision.display_name") or tags.get("detbench.precision", "?"),
                    run.data.metrics)
    when = datetime.fromtimestamp(run.info.start_time / 1000).strftime("%Y-%m-%d %H:%M")
    print(f"\nstored result (run {result.run_id}, measured {when}):\n")
    print(table.markdown([row]))
    print()
    if result.ui_link:
        print(f"  browse: {result.ui_link}")
    print("  measure again: add benchmark.rerun=true (a new run beside the stored one)")


def print_result(result: JobResult) -> None:
    if result.status == "FINISHED":
        from runner.results.describe import headline

        print(f"\n{result.name}: {headline(result.metrics).replace('**', '')}\n")
        print(table.markdown([result.row]))
        print()
        print(_details(result.metrics))
        if result.metrics.get("stable", 1.0) == 0.0:
            print("unstable measurement (tag detbench.stability_warning says why): compare with "
                  "care")
    elif result.status == "SKIPPED":
        print(f"\njob {result.name} SKIPPED: {result.error}")
        if result.run_id:
            print_stored(result)
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
