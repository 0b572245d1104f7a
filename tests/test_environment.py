from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from runner import environment
from runner.environment import collect, git_commit

EXPECTED_KEYS = {
    "env.python",
    "env.platform",
    "env.hostname",
    "env.cpu_model",
    "env.cpu_count",
    "env.tensorflow",
    "env.tf_cuda_build",
    "env.tf_cuda_version",
    "env.tf_cudnn_version",
    "env.tf_tensorrt_build",
    "env.tensorrt_linked_version",
    "env.tensorrt_loaded_version",
    "env.gpu_name",
    "env.gpu_driver",
    "env.gpu_count",
    "env.gpu_memory_mb",
    "env.gpu_power_limit_w",
    "env.gpu_clocks_locked",
    "env.container_image",
    "env.git_commit",
    "env.key",
    *(f"env.pkg.{name}" for name in environment.PACKAGES),
}


def h200(name: str = "NVIDIA H200") -> list[dict[str, Any]]:
    return [
        {
            "index": 0,
            "name": name,
            "driver_version": "570.86.15",
            "memory_total_mb": 143771.0,
            "power_limit_w": 700.0,
            "clocks_locked": None,
        }
    ]


@pytest.fixture(scope="module")
def tags() -> dict[str, str]:
    return collect(h200())


def test_keys_and_types(tags: dict[str, str]) -> None:
    assert EXPECTED_KEYS - set(tags) == set()
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in tags.items())
    assert not [k for k in tags if k.startswith("env.error.")]
    assert re.fullmatch(r"[0-9a-f]{12}", tags["env.key"])
    assert tags["env.tf_cuda_build"] in {"true", "false"}
    assert tags["env.tf_tensorrt_build"] in {"true", "false"}
    assert tags["env.gpu_name"] == "NVIDIA H200"
    assert tags["env.gpu_driver"] == "570.86.15"
    assert tags["env.gpu_count"] == "1"
    assert tags["env.gpu_memory_mb"] == "143771"
    assert tags["env.gpu_power_limit_w"] == "700"
    assert tags["env.gpu_clocks_locked"] == "unknown"


def test_no_gpu() -> None:
    tags = collect(None)
    assert tags["env.gpu_name"] == tags["env.gpu_driver"] == "none"
    assert tags["env.gpu_count"] == "0"


def test_fast_once_tensorflow_is_imported(tags: dict[str, str]) -> None:
    start = time.perf_counter()
    collect(h200())
    assert time.perf_counter() - start < 1.0


def test_key_stable_and_sensitive(tags: dict[str, str]) -> None:
    assert collect(h200())["env.key"] == tags["env.key"]
    assert collect(h200("NVIDIA H100 80GB HBM3"))["env.key"] != tags["env.key"]


def test_container_image(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in environment.CONTAINER_VARS:
        monkeypatch.delenv(var, raising=False)
    assert collect()["env.container_image"] == "none"
    monkeypatch.setenv("NVIDIA_TENSORFLOW_VERSION", "24.02-tf2")
    tagged = collect()["env.container_image"]
    assert tagged == "NVIDIA_TENSORFLOW_VERSION=24.02-tf2"


def test_git_commit_outside_a_repo(tmp_path: Path) -> None:
    assert git_commit(tmp_path) == "unknown"
    assert collect(project_dir=tmp_path)["env.git_commit"] == "unknown"


def test_git_commit_and_dirty(tmp_path: Path) -> None:
    def git(*args: str) -> None:
        subprocess.run(
            ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t", *args],
            check=True,
            capture_output=True,
        )

    (tmp_path / "a.txt").write_text("a")
    git("init", "-q")
    git("add", "a.txt")
    git("commit", "-q", "-m", "init")
    commit = git_commit(tmp_path)
    assert re.fullmatch(r"[0-9a-f]{40}", commit)
    (tmp_path / "a.txt").write_text("b")
    assert git_commit(tmp_path) == commit + "+dirty"


def test_cpu_model_fallback(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: AMD EPYC 9654 96-Core Processor\n")
    assert environment.cpu_model(cpuinfo) == "AMD EPYC 9654 96-Core Processor"
    assert environment.cpu_model(tmp_path / "missing")  # platform.processor() or "unknown"
