"""A backend plugged in from outside runner/ (``DETBENCH_BACKENDS=tests.dummy_backend``): the
demo SavedModel behind a NumPy input format, with its own config section, availability check
(which appends a line to a file per call), calibration need, environment field and table label.
``tests/test_backends.py`` runs it through ``python -m runner``."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from runner.backends import BuildContext, CalibrationNeed, Plugin
from runner.backends.native import NativeBackend


@dataclass
class DummyConfig:
    calls_file: str | None = None  # check_available appends "<pid>\n" here
    calibration_images: int = 3


class DummyBackend:
    def __init__(self, ctx: BuildContext) -> None:
        self.native = NativeBackend(ctx.model_dir, ctx.signature, ctx.input_name,
                                    ctx.input_dtype)
        self.input_dtype, self.input_shape = self.native.input_dtype, self.native.input_shape
        self.calibration = len(ctx.calibration_images)
        self.available = dict(ctx.available)
        self.inputs: set[str] = set()

    def prepare_input(self, tensor: Any) -> np.ndarray:
        return tensor.numpy()

    def predict(self, image: Any) -> Mapping[str, np.ndarray]:
        if not isinstance(image, np.ndarray):  # the hook must have run, untimed
            raise TypeError(f"predict got {type(image).__name__}, not the prepared ndarray")
        self.inputs.add(type(image).__name__)
        return self.native.predict(image)

    def check_executed(self, example: Any) -> dict[str, str]:
        self.predict(example)
        return {}

    def metrics(self) -> dict[str, float]:
        return {"dummy.calibration_images": float(self.calibration)}

    def describe(self) -> dict[str, str]:
        return {"backend": "dummy", "input_type": ",".join(sorted(self.inputs)),
                "calibration_images": str(self.calibration),
                "available_pid": self.available.get("pid", "")}


class DummyPlugin(Plugin):
    name, label, order = "dummy", "Dummy", 5
    where = "tests only"
    display_order = ("Dummy FP32",)

    def fields(self) -> list[tuple[str, Any, Any]]:
        return [("dummy", DummyConfig, dataclasses.field(default_factory=DummyConfig))]

    def check_available(self, precision: Any) -> dict[str, str]:
        if precision.dummy.calls_file:
            with Path(precision.dummy.calls_file).open("a") as fh:
                fh.write(f"{os.getpid()}\n")
        return {"pid": str(os.getpid()), "runtime": "1.0"}

    def environment(self, available: Mapping[str, str]) -> dict[str, str]:
        return {"env.dummy_runtime": available.get("runtime", "none")}

    def calibration(self, precision: Any) -> CalibrationNeed | None:
        return CalibrationNeed(precision.dummy.calibration_images, "disjoint", "precision.dummy")

    def create(self, ctx: BuildContext) -> DummyBackend:
        return DummyBackend(ctx)


PLUGIN = DummyPlugin()
