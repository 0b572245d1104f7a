"""The environment a benchmark ran in, as flat ``env.*`` string tags for MLflow."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import socket
import subprocess
from collections.abc import Callable, Mapping
from importlib import import_module, metadata
from pathlib import Path
from typing import Any

PROJECT_DIR = Path(__file__).resolve().parents[1]
NONE = "none"
PACKAGES = ("numpy", "mlflow", "hydra-core", "faster-coco-eval", "pycocotools", "nvidia-ml-py")
CONTAINER_VARS = ("DETBENCH_IMAGE", "NVIDIA_TENSORFLOW_VERSION", "NVIDIA_BUILD_ID")
# The tags that must match for two runs to be comparable; env.key is their hash.
KEY_FIELDS = (
    "env.gpu_name",
    "env.gpu_driver",
    "env.tensorflow",
    "env.tf_cuda_version",
    "env.tensorrt_linked_version",
    "env.tensorrt_loaded_version",
    "env.cpu_model",
    "env.container_image",
)
TF_KEYS = (
    "env.tensorflow",
    "env.tf_cuda_build",
    "env.tf_cuda_version",
    "env.tf_cudnn_version",
    "env.tf_tensorrt_build",
    "env.tensorrt_linked_version",
    "env.tensorrt_loaded_version",
)
_MAX_VALUE_LEN = 500


def collect(
    gpus: list[dict[str, Any]] | None = None, project_dir: Path | None = None,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Environment tags; ``gpus`` is ``Sampler.gpus``; ``extra``: the job's backend's fields
    (``Plugin.environment``: runtime package versions), part of ``env.key``. Never raises."""
    parts: dict[str, Callable[[], dict[str, str]]] = {
        "host": _host,
        "tensorflow": _tensorflow,
        "gpu": lambda: _gpu(gpus or []),
        "container": _container,
        "git": lambda: {"env.git_commit": git_commit(project_dir or PROJECT_DIR)},
        "packages": _packages,
    }
    tags: dict[str, str] = {}
    for name, part in parts.items():
        try:
            tags.update(part())
        except Exception as e:  # noqa: BLE001 - the environment record must never fail a run
            tags[f"env.error.{name}"] = f"{type(e).__name__}: {e}"
    tags.update(extra or {})
    tags = {k: str(v)[:_MAX_VALUE_LEN] for k, v in tags.items()}
    tags["env.key"] = environment_key(tags, tuple(sorted(extra or {})))
    return tags


def prerun_key(telemetry: bool = True, extra: Mapping[str, str] | None = None) -> str:
    """``env.key`` as the worker's :func:`collect` will compute it, for the parent's resume
    check before any run exists. It avoids importing TensorFlow (5.7 s on a 2-core VM) by
    reading TF's version from its package metadata and its build from
    ``tensorflow/python/platform/build_info.py``; only a TensorRT build imports TF, since the
    TensorRT versions are known only to TF-TRT. GPUs are discovered the way the worker's
    sampler does (none when ``benchmark.telemetry`` is off, as in the worker). ``extra``: the
    backend's environment fields, as the worker passes them to :func:`collect`."""
    tags: dict[str, str] = {"env.cpu_model": cpu_model(), **_container()}
    try:
        tags.update(_gpu(_visible_gpus() if telemetry else []))
    except Exception as e:  # noqa: BLE001 - as collect(): never fails
        tags["env.error.gpu"] = f"{type(e).__name__}: {e}"
    try:
        tags.update(_tensorflow_light())
    except Exception:  # noqa: BLE001 - fall back to what collect() does
        tags.update(_tensorflow())
    tags.update(extra or {})
    return environment_key({k: str(v)[:_MAX_VALUE_LEN] for k, v in tags.items()},
                           tuple(sorted(extra or {})))


def _visible_gpus() -> list[dict[str, Any]]:
    from runner.telemetry import Sampler

    sampler = Sampler(separate_process=False)
    try:
        return list(sampler.gpus)
    finally:
        sampler.stop()


def _tensorflow_light() -> dict[str, str]:
    """The KEY_FIELDS of :func:`_tensorflow` without importing TensorFlow (see prerun_key)."""
    import importlib.util
    import runpy

    spec = importlib.util.find_spec("tensorflow")
    if spec is None or not spec.submodule_search_locations:
        return _tensorflow()
    root = Path(next(iter(spec.submodule_search_locations)))
    build = dict(runpy.run_path(str(root / "python" / "platform" / "build_info.py"))["build_info"])
    if build.get("is_tensorrt_build"):
        return _tensorflow()
    dists = metadata.packages_distributions().get("tensorflow") or []
    if not dists:
        return _tensorflow()
    return {"env.tensorflow": metadata.version(dists[0]),
            "env.tf_cuda_version": str(build.get("cuda_version") or NONE),
            "env.tensorrt_linked_version": NONE, "env.tensorrt_loaded_version": NONE}


def environment_key(tags: dict[str, str], extra_fields: tuple[str, ...] = ()) -> str:
    """12 hex digits of sha1 over the KEY_FIELDS values (then ``extra_fields``' names and
    values, when a backend adds some: without them the key is what it always was)."""
    values: list[str] = [tags.get(k, "") for k in KEY_FIELDS]
    values += [f"{k}={tags.get(k, '')}" for k in extra_fields]
    payload = json.dumps(values)
    return hashlib.sha1(payload.encode()).hexdigest()[:12]


def _host() -> dict[str, str]:
    affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    return {
        "env.python": platform.python_version(),
        "env.platform": platform.platform(),
        "env.hostname": socket.gethostname(),
        "env.cpu_model": cpu_model(),
        "env.cpu_count": str(os.cpu_count()),
        "env.cpu_affinity_count": str(len(affinity)) if affinity else "unknown",
    }


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    try:
        with cpuinfo.open() as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _tensorflow() -> dict[str, str]:
    try:
        import tensorflow as tf
    except Exception:  # noqa: BLE001 - ImportError, or a broken install
        tags = dict.fromkeys(TF_KEYS, NONE)
        return {**tags, "env.tensorflow": "not installed", "env.tf_cuda_build": "false"}
    tags = {"env.tensorflow": str(tf.__version__)}
    try:
        tags["env.tf_cuda_build"] = _bool(tf.test.is_built_with_cuda())
    except Exception:  # noqa: BLE001
        tags["env.tf_cuda_build"] = "unknown"
    try:
        build: dict[str, Any] = dict(tf.sysconfig.get_build_info())
    except Exception:  # noqa: BLE001
        build = {}
    tags["env.tf_cuda_version"] = str(build.get("cuda_version") or NONE)
    tags["env.tf_cudnn_version"] = str(build.get("cudnn_version") or NONE)
    linked, loaded = tensorrt_versions()
    trt_build = bool(build.get("is_tensorrt_build")) or linked != NONE
    tags["env.tf_tensorrt_build"] = _bool(trt_build)
    tags["env.tensorrt_linked_version"] = linked
    tags["env.tensorrt_loaded_version"] = loaded
    return tags


def tensorrt_versions() -> tuple[str, str]:
    """(linked, loaded) TensorRT versions TF-TRT reports, "none" when absent (a build without
    TensorRT reports 0.0.0). The one reader: the TF-TRT backend's availability check uses it too."""
    utils = None
    for module, attr in (
        ("tensorflow.python.compiler.tensorrt.trt_convert", "_pywrap_py_utils"),
        ("tensorflow.compiler.tf2tensorrt._pywrap_py_utils", None),
    ):
        try:
            loaded_module = import_module(module)
            utils = getattr(loaded_module, attr) if attr else loaded_module
            break
        except Exception:  # noqa: BLE001, S112 - try the next location
            continue
    linked = _version(utils, "get_linked_tensorrt_version")
    loaded = _version(utils, "get_loaded_tensorrt_version") if linked != NONE else NONE
    return linked, loaded


def _version(utils: Any, getter: str) -> str:
    try:
        parts = tuple(getattr(utils, getter)())
    except Exception:  # noqa: BLE001
        return NONE
    return NONE if not any(parts) else ".".join(str(p) for p in parts)


def _gpu(gpus: list[dict[str, Any]]) -> dict[str, str]:
    if not gpus:
        keys = ("gpu_name", "gpu_driver", "gpu_memory_mb", "gpu_power_limit_w", "gpu_clocks_locked")
        return {"env.gpu_count": "0", **{f"env.{k}": NONE for k in keys}}
    first = gpus[0]
    names = list(dict.fromkeys(str(g.get("name")) for g in gpus))
    locked = first.get("clocks_locked")
    return {
        "env.gpu_name": ",".join(names),
        "env.gpu_driver": str(first.get("driver_version") or "unknown"),
        "env.gpu_count": str(len(gpus)),
        "env.gpu_memory_mb": _number(first.get("memory_total_mb")),
        "env.gpu_power_limit_w": _number(first.get("power_limit_w")),
        "env.gpu_clocks_locked": "unknown" if locked is None else _bool(locked),
    }


def _container() -> dict[str, str]:
    found = [f"{k}={os.environ[k]}" for k in CONTAINER_VARS if os.environ.get(k)]
    return {"env.container_image": ";".join(found) or NONE}


def git_commit(project_dir: Path, timeout_s: float = 2.0) -> str:
    """HEAD of the repository at project_dir, "+dirty" if it has changes, else "unknown"."""
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}

    def git(*args: str) -> str:
        result = subprocess.run(
            ["git", "-C", str(project_dir), *args],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            env=env,
            check=True,
        )
        return result.stdout.strip()

    try:
        commit = git("rev-parse", "--verify", "HEAD")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    try:
        dirty = bool(git("status", "--porcelain"))
    except (OSError, subprocess.SubprocessError):
        return commit
    return commit + "+dirty" if dirty else commit


def _packages() -> dict[str, str]:
    tags = {}
    for name in PACKAGES:
        try:
            tags[f"env.pkg.{name}"] = metadata.version(name)
        except metadata.PackageNotFoundError:
            tags[f"env.pkg.{name}"] = "not installed"
    return tags


def _bool(value: Any) -> str:
    return "true" if value else "false"


def _number(value: Any) -> str:
    if value is None:
        return "unknown"
    number = float(value)
    return str(int(number)) if number.is_integer() else f"{number:.1f}"
