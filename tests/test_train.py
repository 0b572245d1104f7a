"""The demo detector's training script runs and exports the zoo contract (not that it converges)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from runner.demo import train
from tests.conftest import ROOT


def test_targets_put_a_peak_at_each_object_centre() -> None:
    anns = [{"bbox": [10.0, 20.0, 40.0, 30.0], "category_id": 3}]
    t = train.build_targets(anns, width=256, height=256, num_classes=4)
    heat = t["heatmap"]
    assert heat.shape == (64, 64, 4)
    cy, cx = (20 + 15) / 4, (10 + 20) / 4
    assert heat[int(cy), int(cx), 2] == 1.0 and heat[..., [0, 1, 3]].max() == 0
    np.testing.assert_allclose(t["size"][0], [30 / 4, 40 / 4])
    np.testing.assert_allclose(t["offset"][0], [cy - int(cy), cx - int(cx)])
    assert t["index"][0] == int(cy) * 64 + int(cx) and t["mask"].sum() == 1


@pytest.mark.slow  # trains for real: a TensorFlow start, 2 steps, an export
def test_training_script_runs_and_exports(tmp_path: Path) -> None:
    out = tmp_path / "model"
    cmd = [sys.executable, "-m", "runner.demo.train", "--out", str(out), "--data",
           str(tmp_path / "data"), "--steps", "2", "--num-train", "8", "--num-val", "4",
           "--batch-size", "4", "--no-jit"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "step 2/2" in proc.stdout and "val AP=" in proc.stdout
    fn = tf.saved_model.load(str(out)).signatures["serving_default"]
    spec = fn.structured_input_signature[1]["input_tensor"]
    assert spec.dtype == tf.uint8 and spec.shape.as_list() == [1, None, None, 3]
    outputs = fn(input_tensor=tf.zeros((1, 50, 70, 3), tf.uint8))
    assert set(outputs) == {"detection_boxes", "detection_classes", "detection_scores",
                            "num_detections"}
