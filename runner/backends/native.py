"""Native TensorFlow: a SavedModel called through its serving signature."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np


class SignatureError(ValueError):
    """The SavedModel does not offer the configured signature or input."""


class NativeBackend:
    def __init__(self, model_dir: Path, signature: str = "serving_default",
                 input_name: str = "input_tensor", input_dtype: str = "uint8") -> None:
        import tensorflow as tf

        self.model_dir = model_dir
        self._model = tf.saved_model.load(str(model_dir))
        signatures = dict(self._model.signatures)
        if signature not in signatures:
            raise SignatureError(f"SavedModel {str(model_dir)!r} has no signature {signature!r}; "
                                 f"it has {sorted(signatures)}")
        self._fn = signatures[signature]
        specs = self._fn.structured_input_signature[1]
        if input_name not in specs:
            raise SignatureError(f"signature {signature!r} has no input {input_name!r}; "
                                 f"its inputs are {sorted(specs)}")
        dtype = specs[input_name].dtype.name
        if dtype != input_dtype:
            raise SignatureError(f"input {input_name!r} of {signature!r} is {dtype}, "
                                 f"but model.input_dtype is {input_dtype!r}")
        self.signature, self.input_name, self.input_dtype = signature, input_name, dtype
        self.input_shape = [d if d is None else int(d) for d in specs[input_name].shape]

    def predict(self, image: Any) -> Mapping[str, np.ndarray]:
        """One call; ``.numpy()`` forces the outputs so device work is finished on return."""
        outputs = self._fn(**{self.input_name: image})
        return {key: value.numpy() for key, value in outputs.items()}

    def describe(self) -> dict[str, str]:
        return {"backend": "native", "signature": self.signature, "input_name": self.input_name,
                "input_dtype": self.input_dtype, "input_shape": str(self.input_shape)}
