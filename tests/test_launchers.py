"""Sweeps through hydra-submitit-launcher: the presets compose, SLURM gets the batch script we mean,
and a real ``submitit_local`` sweep (one process per job) logs every job to a real MLflow server
started here with the flags of docker/compose.yaml."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_dir

from tests import servers

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = ROOT / "conf"


def _compose(overrides: list[str]) -> Any:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=overrides, return_hydra_config=True)


# --- the presets ------------------------------------------------------------------------------

@pytest.mark.parametrize(("choice", "target"), [
    ("submitit_local", "LocalLauncher"),
    ("local", "LocalLauncher"),
    ("submitit_slurm", "SlurmLauncher"),
    ("slurm", "SlurmLauncher"),
])
def test_launchers_compose(choice: str, target: str) -> None:
    cfg = _compose([f"hydra/launcher={choice}"])
    assert cfg.hydra.launcher._target_.endswith(f"submitit_launcher.{target}")
    if choice in ("local", "slurm"):
        assert cfg.hydra.launcher.gpus_per_node == 1
        assert cfg.hydra.launcher.tasks_per_node == 1
        assert cfg.hydra.launcher.timeout_min > 0


def test_slurm_preset_is_overridable_and_passes_the_tracking_uri(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracker.example:5000")
    cfg = _compose(["hydra/launcher=slurm", "hydra.launcher.partition=gpu",
                    "hydra.launcher.timeout_min=30", "hydra.launcher.cpus_per_task=4",
                    "hydra.launcher.mem_gb=32", "hydra.launcher.array_parallelism=2",
                    "hydra.launcher.setup=[module load cuda,echo ready]"])
    launcher = cfg.hydra.launcher
    assert (launcher.partition, launcher.timeout_min, launcher.cpus_per_task, launcher.mem_gb,
            launcher.array_parallelism) == ("gpu", 30, 4, 32, 2)
    assert list(launcher.setup) == ["module load cuda", "echo ready"]
    assert launcher.additional_parameters.export == (
        "ALL,MLFLOW_TRACKING_URI=http://tracker.example:5000")


def test_slurm_sweep_submits_one_gpu_per_job(tmp_path: Path, mlflow_server: str) -> None:
    """The whole path to sbatch, with a stand-in sbatch that keeps the batch script and fails."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")
    (bin_dir / "sbatch").write_text(
        '#!/bin/sh\ncp "$1" "$SBATCH_SCRIPT_COPY"\necho "sbatch: no cluster here" >&2\nexit 1\n')
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    script = tmp_path / "batch.sh"
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
           "SBATCH_SCRIPT_COPY": str(script), "MLFLOW_TRACKING_URI": mlflow_server}
    proc = subprocess.run(
        [sys.executable, "-m", "runner", "-m", "hydra/launcher=slurm", "benchmark.warmup=1,2",
         "hydra.launcher.partition=gpu", "hydra.launcher.array_parallelism=1",
         "hydra.launcher.setup=[module load cuda/12.8]", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "sbatch: no cluster here" in proc.stderr
    lines = script.read_text().splitlines()
    for expected in ("#SBATCH --gpus-per-node=1", "#SBATCH --ntasks-per-node=1",
                     "#SBATCH --nodes=1", "#SBATCH --partition=gpu", "#SBATCH --cpus-per-task=8",
                     "#SBATCH --mem=64GB", "#SBATCH --array=0-1%1", "#SBATCH --time=180",
                     "#SBATCH --signal=USR2@300",
                     "#SBATCH --job-name=detbench",
                     f"#SBATCH --export=ALL,MLFLOW_TRACKING_URI={mlflow_server}",
                     "module load cuda/12.8"):
        assert expected in lines, f"{expected!r} not in the batch script:\n" + "\n".join(lines)


# --- a real MLflow server and a real submitit_local sweep --------------------------------------

@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with servers.mlflow_server(tmp_path_factory.mktemp("mlflow-server")) as url:
        yield url


def test_server_accepts_the_compose_host_names_only(mlflow_server: str) -> None:
    api = f"{mlflow_server}/api/2.0/mlflow/experiments/search?max_results=1"
    assert servers.http_status(api, host="mlflow:5000") == 200  # the bench container
    assert servers.http_status(api, host="localhost:5000") == 200  # a browser on the host
    assert servers.http_status(api) == 200  # 127.0.0.1:<port>
    assert servers.http_status(api, host="attacker.example") == 403


@pytest.fixture(scope="module")
def local_sweep(mlflow_server: str, cache_dir: Path,
                tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from runner.demo import synth

    synth.ensure_split(cache_dir / "datasets", "val", synth.SynthSpec(seed=0))  # not in 2 jobs
    work = tmp_path_factory.mktemp("sweep")
    env = {k: v for k, v in os.environ.items()
           if k not in ("MLFLOW_TRACKING_URI", "DETBENCH_PARENT_RUN_ID")}
    env["DETBENCH_CACHE"] = str(cache_dir)
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "runner", "-m", "hydra/launcher=submitit_local",
         "benchmark.warmup=1,2", "dataset.num_images=4", "benchmark.telemetry=false",
         f"tracking.uri={mlflow_server}", f"hydra.sweep.dir={work / 'multirun'}"],
        cwd=work, env=env, capture_output=True, text=True, timeout=400)
    logs = "\n".join(f"--- {p}\n{p.read_text()[-2000:]}"
                     for p in sorted((work / "multirun").glob(".submitit/*/*_log.*")))
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}\n{logs}"

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server)
    runs = [run for exp in client.search_experiments()
            for run in client.search_runs([exp.experiment_id])]
    parents = {run.data.tags.get("mlflow.parentRunId") for run in runs} - {None}
    return {"client": client, "runs": runs, "parents": parents,
            "jobs": [run for run in runs if run.info.run_id not in parents
                     and run.data.tags.get("detbench.sweep") != "true"],
            "dir": work / "multirun", "seconds": time.monotonic() - start}


@pytest.mark.slow
def test_every_job_of_a_submitit_local_sweep_arrives_finished(local_sweep: dict[str, Any]) -> None:
    jobs = local_sweep["jobs"]
    assert sorted(run.data.params.get("benchmark.warmup") for run in jobs) == ["1", "2"]
    assert [run.info.status for run in jobs] == ["FINISHED", "FINISHED"]
    for run in jobs:
        assert run.data.params.get("dataset.num_images") == "4"
        assert "images_per_sec" in run.data.metrics
    assert len(list(local_sweep["dir"].glob(".submitit/*/*_result.pkl"))) == 2  # 2 processes


@pytest.mark.slow
def test_sweep_jobs_share_one_parent_run(local_sweep: dict[str, Any]) -> None:
    jobs, parents = local_sweep["jobs"], local_sweep["parents"]
    if not parents:
        pytest.skip("the runs carry no mlflow.parentRunId tag (no parent-run linking yet)")
    assert len(parents) == 1
    assert all(run.data.tags.get("mlflow.parentRunId") in parents for run in jobs)
    parent = local_sweep["client"].get_run(next(iter(parents)))
    assert parent.info.status == "FINISHED"
