"""``python -m runner.inspect``: prints the signature, runs one image, proposes overrides, and
with a dataset corrects them against the ground truth."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner import inspect
from tests import models
from tests.models import Convention


def test_inspect_proposes_overrides_and_corrects_them_with_ground_truth(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conv = Convention(input_name="images", input_dtype="float32", box_format="xywh",
                      keys=("boxes", "labels", "confidence", "num"), batched=False,
                      class_offset=1, padding="minus_one")
    model = models.build_convention(tmp_path / "model", conv)
    assert inspect.main([str(model)]) == 0
    out = capsys.readouterr().out
    assert "input  images: float32 [1, None, None, 3]" in out
    assert "boxes: float32 [100, 4]" in out  # the call's outputs, unbatched
    for line in ("model.input_name=images", "model.input_dtype=float32", "model.outputs=custom",
                 "model.output_keys.boxes=boxes", "model.output_keys.classes=labels",
                 "model.output_keys.scores=confidence", "model.output_keys.num_detections=num"):
        assert line in out, line
    images, annotations = models.rectangles_dataset(tmp_path / "data")
    assert inspect.main([str(model), "--images", str(images),
                         "--annotations", str(annotations)]) == 0
    out = capsys.readouterr().out
    assert "corrected by the ground truth" in out
    proposed = out.split("proposed overrides")[1]
    assert "model.box_format=xywh" in proposed and "model.class_offset=1" in proposed


def test_inspect_refuses_a_directory_without_a_savedmodel(tmp_path: Path) -> None:
    assert inspect.main([str(tmp_path)]) == 2
