"""Backends: the system under test. Each loads a model and exposes ``predict``: one prepared
input tensor -> the model's outputs materialized as numpy arrays."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from runner.config import JobConfig


class Backend(Protocol):
    input_dtype: str
    input_shape: list[int | None]

    def predict(self, image: Any) -> Mapping[str, np.ndarray]: ...

    def describe(self) -> dict[str, str]: ...


def create(cfg: JobConfig, model_dir: Path) -> Backend:
    """The backend the precision config asks for, loaded and ready to call."""
    from runner.backends.native import NativeBackend

    if cfg.precision.backend == "native":
        return NativeBackend(model_dir, cfg.model.signature, cfg.model.input_name,
                             cfg.model.input_dtype)
    raise ValueError(f"precision.backend={cfg.precision.backend!r} is not available")
