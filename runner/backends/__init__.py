"""Backends: the system under test. Each loads a model and exposes ``predict``: one prepared
input tensor -> the model's outputs materialized as numpy arrays."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np


class Backend(Protocol):
    input_dtype: str
    input_shape: list[int | None]

    def predict(self, image: Any) -> Mapping[str, np.ndarray]: ...

    def check_executed(self, example: Any) -> dict[str, str]:
        """Record what actually ran for one untimed call; raise if it is not what was asked."""
        ...

    def metrics(self) -> dict[str, float]:
        """Backend-specific metrics (e.g. TF-TRT conversion)."""
        ...

    def describe(self) -> dict[str, str]: ...
