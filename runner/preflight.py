"""Checks that refuse a job before any MLflow run exists (exit 2, one line), for what
``config.validate`` cannot see from the typed values alone: keys that the schema does not have
(a typo that Hydra's ``+key=value`` hint lets through). Raises ``config.ConfigError`` naming the
value and the choices. A precision this machine cannot run is the backend's own availability
check (``runner.backends``, e.g. AMP FP16 without a GPU): ``runner.job`` asks it next, and
``runner.__main__`` turns it into exit 2 for one job, SKIPPED with the reason in a sweep."""

from __future__ import annotations

import dataclasses
import difflib
import os
import typing
from typing import Any

from omegaconf import DictConfig, OmegaConf

from runner.config import ConfigError, JobConfig


def check(cfg: DictConfig, job_cfg: JobConfig) -> None:
    unknown_keys(cfg)


def unknown_keys(cfg: DictConfig) -> None:
    """Every key of the composed config must be a field of the schema: ``+benchmark.warmpu=3``
    composes (Hydra adds it) but would be ignored or fail late in the worker."""
    container = OmegaConf.to_container(cfg, resolve=False)
    assert isinstance(container, dict)
    problems = list(_unknown(container, JobConfig, ""))
    if problems:
        key, valid = problems[0]
        parent, _, name = key.rpartition(".")
        close = difflib.get_close_matches(name, valid, n=1)
        hint = f" (did you mean {parent + '.' if parent else ''}{close[0]}?)" if close else ""
        raise ConfigError(f"unknown config key {key!r}{hint}; valid keys here: "
                          f"{', '.join(sorted(valid))}")


def _unknown(data: dict[Any, Any], schema: type, prefix: str) -> Any:
    hints = typing.get_type_hints(schema)
    names = [f.name for f in dataclasses.fields(schema)]
    for key, value in data.items():
        if key not in names:
            yield f"{prefix}{key}", names
        elif dataclasses.is_dataclass(hints.get(key)) and isinstance(value, dict):
            yield from _unknown(value, hints[key], f"{prefix}{key}.")


def gpu_count() -> tuple[int, str]:
    """(NVIDIA GPUs this process may use, how that was decided), without importing TensorFlow:
    NVML's GPUs as ``CUDA_VISIBLE_DEVICES`` selects them, read by the one parser the GPU lock and
    the sampler share (runner.telemetry.visible: UUID and MIG entries, the list stopping at the
    first entry that names no GPU, as CUDA reads it)."""
    from runner import gpu_lock

    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    uuids = gpu_lock.gpu_uuids()
    if not uuids:
        return 0, "NVML reports no GPU (no driver, no nvidia-ml-py or no device)"
    count = len(gpu_lock.visible_gpus(uuids, visible))
    if visible is None:
        return count, f"NVML sees {count}"
    return count, f"CUDA_VISIBLE_DEVICES={visible!r} selects {count} of the {len(uuids)} GPUs"
