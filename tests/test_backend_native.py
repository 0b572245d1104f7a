from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from runner import signatures
from runner.backends.native import NativeBackend, SignatureError
from tests.conftest import DEMO_MODEL


@pytest.fixture(scope="module")
def backend() -> NativeBackend:
    return NativeBackend(DEMO_MODEL)


def test_shipped_model_follows_the_zoo_contract(backend: NativeBackend) -> None:
    assert backend.input_shape == [1, None, None, 3] and backend.input_dtype == "uint8"
    for h, w in ((200, 300), (384, 192)):
        image = tf.zeros((1, h, w, 3), tf.uint8)
        out = backend.predict(image)
        assert all(isinstance(v, np.ndarray) for v in out.values())
        assert out["detection_boxes"].shape == (1, 100, 4)
        assert out["detection_scores"].shape == (1, 100)
        assert out["num_detections"].shape == (1,)
        det = signatures.zoo_outputs(out)
        assert np.all((det.boxes >= 0) & (det.boxes <= 1))
        assert np.all((det.classes >= 1) & (det.classes <= 4))


def test_wrong_signature_input_or_dtype(tmp_path: Path) -> None:
    with pytest.raises(SignatureError, match="serving_default"):
        NativeBackend(DEMO_MODEL, signature="predict")
    with pytest.raises(SignatureError, match="input_tensor"):
        NativeBackend(DEMO_MODEL, input_name="input")
    with pytest.raises(SignatureError, match="uint8"):
        NativeBackend(DEMO_MODEL, input_dtype="float32")
