"""The entry points as a user gets them: a non-editable wheel of this checkout installed into a
fresh venv (its dependencies borrowed from the test's environment by a .pth, so nothing is
downloaded), run from a directory that is not the checkout: ``detbench`` and
``python -m runner`` find the shipped configs, ``--version``, ``--help`` with the groups and
examples, tab completion for the console script; one real job, then the same job again (the
stored row, its link and how to measure again); config errors refused before any run exists."""

from __future__ import annotations

import os
import site
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ROOT

#: a wheel built and installed into a fresh venv, then real jobs from it: the slow lane
pytestmark = pytest.mark.slow


@dataclass
class Installed:
    venv: Path
    work: Path  # a directory outside the checkout

    def bin(self, name: str) -> str:
        return str(self.venv / "bin" / name)

    def run(self, *args: str, env: dict[str, str] | None = None,
            timeout: float = 400) -> subprocess.CompletedProcess[str]:
        clean = {k: v for k, v in os.environ.items()
                 if k not in ("PYTHONPATH", "DETBENCH_PARENT_RUN_ID", "MLFLOW_TRACKING_URI")}
        return subprocess.run(list(args), cwd=self.work, env={**clean, **(env or {})},
                              capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    base = tmp_path_factory.mktemp("installed")
    wheels = base / "wheels"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation",
         "-q", "-w", str(wheels)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = wheels.glob("detbench-*.whl")
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    py = venv / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                    str(wheel)], check=True, timeout=300)
    purelib = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_path("
                              "'purelib'))"], capture_output=True, text=True, check=True)
    # the dependencies: this environment's site-packages (their .pth files are not read, so
    # an editable detbench there stays invisible)
    deps = [p for p in (*site.getsitepackages(), *sys.path)
            if p.endswith("site-packages") and Path(p).is_dir()]
    (Path(purelib.stdout.strip()) / "detbench-test-deps.pth").write_text(
        "\n".join(dict.fromkeys(deps)) + "\n")
    work = base / "elsewhere"
    work.mkdir()
    return Installed(venv, work)


def test_installed_package_is_the_wheel_with_its_configs(installed: Installed) -> None:
    proc = installed.run(installed.bin("python"), "-c",
                         "import runner, runner.conf, importlib.resources as r; "
                         "print(runner.__file__); "
                         "print(r.files('runner.conf').joinpath('config.yaml').is_file())")
    assert proc.returncode == 0, proc.stderr
    location, has_config = proc.stdout.split()
    assert str(installed.venv) in location and str(ROOT) not in location
    assert has_config == "True"


def test_version_help_and_completion(installed: Installed) -> None:
    version = installed.run(installed.bin("detbench"), "--version")
    assert version.returncode == 0 and version.stdout.startswith("detbench 0.1.0"), version
    for command in ([installed.bin("detbench")], [installed.bin("python"), "-m", "runner"]):
        proc = installed.run(*command, "--help")
        assert proc.returncode == 0, proc.stderr[-2000:]
        for needle in ("Config groups", "precision", "efficientdet_d0", "Examples:",
                       "-sc install=bash"):
            assert needle in proc.stdout, needle
    script = installed.run(installed.bin("detbench"), "-sc", "install=bash")
    assert script.returncode == 0 and "complete" in script.stdout
    query = installed.run(installed.bin("detbench"), "-sc", "query=bash",
                          env={"COMP_LINE": "detbench preci"})
    assert "precision=" in query.stdout, query.stdout + query.stderr
    query = installed.run(installed.bin("detbench"), "-sc", "query=bash",
                          env={"COMP_LINE": "detbench precision=amp"})
    assert "precision=amp_bf16" in query.stdout, query.stdout


def _runs_in(db: Path) -> int:
    if not db.exists():
        return 0
    with sqlite3.connect(db) as conn:
        try:
            return int(conn.execute("select count(*) from runs").fetchone()[0])
        except sqlite3.OperationalError:  # no tables: no run
            return 0


def test_config_errors_exit_2_before_any_run(installed: Installed) -> None:
    db = installed.work / "refused.db"
    uri = f"tracking.uri=sqlite:///{db}"
    for args, needle in ((["+benchmark.warmpu=3"], "did you mean benchmark.warmup"),
                         (["precision=amp_fp16"], "needs an NVIDIA GPU")):
        proc = installed.run(installed.bin("detbench"), *args, uri,
                             env={"CUDA_VISIBLE_DEVICES": "-1"})
        assert proc.returncode == 2, proc.stdout + proc.stderr[-2000:]
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and needle in lines[0], proc.stderr
    # Hydra's own refusals (a key without '+', a group choice that does not exist): exit 2 too
    for args, needle in ((["benchmark.warmpu=3"], "warmpu"), (["model=nope"], "nope")):
        proc = installed.run(installed.bin("detbench"), *args, uri)
        assert proc.returncode == 2 and needle in proc.stderr, proc.stderr[-2000:]
    assert _runs_in(db) == 0


def test_a_job_from_anywhere_then_the_stored_result(installed: Installed) -> None:
    db = installed.work / "mlflow.db"
    args = ["benchmark=quick", "dataset.num_images=4", "benchmark.warmup=1",
            "benchmark.isolate=false", f"tracking.uri=sqlite:///{db}"]
    first = installed.run(installed.bin("detbench"), *args)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    out = first.stdout
    headline = next(i for i, line in enumerate(out.splitlines()) if "images/sec" in line
                    and line.startswith("demo@"))
    header = next(i for i, line in enumerate(out.splitlines()) if line.startswith("| Model"))
    assert headline < header  # a short headline before the 21-column row
    assert "img/s]" not in first.stderr  # no progress bar without a terminal
    assert _runs_in(db) == 1
    second = installed.run(installed.bin("python"), "-m", "runner", *args)
    assert second.returncode == 0, second.stderr[-3000:]
    text = second.stdout
    assert "SKIPPED: already measured" in text and "stored result (run " in text
    assert "| Model" in text and "Demo CenterNet" in text
    assert "#/experiments/" in text and "benchmark.rerun=true" in text
    assert _runs_in(db) == 1
