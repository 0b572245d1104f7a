from __future__ import annotations

import numpy as np
import pytest

from runner import signatures


def _outputs(n: int, total: int = 5) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "detection_boxes": rng.uniform(0, 1, (1, total, 4)).astype(np.float32),
        "detection_classes": np.arange(1, total + 1, dtype=np.float32)[None],
        "detection_scores": np.linspace(0.9, 0.1, total, dtype=np.float32)[None],
        "num_detections": np.array([n], np.float32),
    }


def test_zoo_adapter_keeps_valid_rows_only() -> None:
    out = _outputs(3)
    det = signatures.zoo_outputs(out)
    assert len(det) == 3
    np.testing.assert_array_equal(det.classes, [1, 2, 3])
    np.testing.assert_array_equal(det.boxes, out["detection_boxes"][0, :3])
    assert det.classes.dtype == np.int64


def test_zoo_adapter_clamps_num_detections() -> None:
    assert len(signatures.zoo_outputs(_outputs(9))) == 5
    assert len(signatures.zoo_outputs(_outputs(0))) == 0


def test_zoo_adapter_errors_name_keys_and_shapes() -> None:
    out = _outputs(2)
    del out["detection_scores"]
    with pytest.raises(ValueError, match="detection_scores"):
        signatures.zoo_outputs(out)
    bad = _outputs(2)
    bad["detection_boxes"] = bad["detection_boxes"][0]
    with pytest.raises(ValueError, match=r"\[1, N, 4\]"):
        signatures.zoo_outputs(bad)
    with pytest.raises(ValueError, match="valid"):
        signatures.adapter("tflite")
