"""Every export convention on a real SavedModel whose detection is the ground truth: AP 1.0
under the right ``model.*`` mapping, a loud failure naming the fix under a wrong one (issue 13,
issue 11 item 5). The measured part runs in-process (worker.execute); the process boundary is
tested elsewhere."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner import checks
from tests import conventions, models
from tests.models import Convention

ZOO_KEYS = ("model.output_keys.boxes=detection_boxes", "model.output_keys.classes="
            "detection_classes", "model.output_keys.scores=detection_scores")


@pytest.fixture(scope="module")
def rects(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return models.rectangles_dataset(tmp_path_factory.mktemp("rects"))


def _model(tmp_path: Path, conv: Convention) -> Path:
    return models.build_convention(tmp_path / "model", conv)


def _ap(tmp_path: Path, model: Path, rects: tuple[Path, Path], *overrides: str,
        preset: str = "custom") -> dict[str, float]:
    return conventions.run(tmp_path / "job", model, *rects, *overrides, model=preset)


def _fails(tmp_path: Path, model: Path, rects: tuple[Path, Path], *overrides: str,
           preset: str = "custom") -> str:
    with pytest.raises(checks.OutputCheckError) as info:
        conventions.run(tmp_path / "bad", model, *rects, *overrides, model=preset)
    return str(info.value)


CASES = {
    # name: (convention, right overrides, wrong overrides, what the failure must name)
    "pixels_of_input": (
        Convention(box_format="yxyx"),
        ["model.outputs=custom", *ZOO_KEYS, "model.box_format=pixels"],
        [], "model.box_format=yxyx"),
    "xywh": (
        Convention(box_format="xywh", keys=("boxes", "classes", "scores", "num")),
        ["model.outputs=custom", "model.output_keys.boxes=boxes",
         "model.output_keys.classes=classes", "model.output_keys.scores=scores",
         "model.box_format=xywh"],
        ["model.outputs=custom", "model.output_keys.boxes=boxes",
         "model.output_keys.classes=classes", "model.output_keys.scores=scores",
         "model.box_format=xyxy"], "model.box_format=xywh"),
    "rel_center_xywh": (
        Convention(box_format="rel_center_xywh"),
        ["model.outputs=custom", *ZOO_KEYS, "model.box_format=rel_center_xywh"],
        ["model.outputs=custom", *ZOO_KEYS, "model.box_format=rel_xyxy"],
        "model.box_format=rel_center_xywh"),
    "rel_xyxy_legacy_order": (
        Convention(box_format="rel_xyxy"),
        ["model.outputs=custom", *ZOO_KEYS, "model.box_order=xy"],
        ["model.outputs=custom", *ZOO_KEYS], "model.box_format=rel_xyxy"),
    "zero_based_classes": (
        Convention(class_offset=1),
        ["model.outputs=custom", *ZOO_KEYS, "model.class_offset=1"],
        [], "model.class_offset=1"),
    "coco80_indices": (
        Convention(coco80=True),
        ["model.outputs=custom", *ZOO_KEYS, "model.class_map=coco80"],
        [], "model.class_map=coco80"),
    "internal_size_pad": (
        Convention(box_format="yxyx", internal=(384, 384), internal_resize="pad"),
        ["model.outputs=custom", *ZOO_KEYS, "model.box_format=yxyx", "model.box_frame=internal",
         "model.internal_size=384x384", "model.internal_resize=pad"],
        ["model.outputs=custom", *ZOO_KEYS, "model.box_format=yxyx"], None),
    "internal_size_letterbox_rel": (
        Convention(box_format="rel_yxyx", internal=(256, 256), internal_resize="pad_center"),
        ["model.outputs=custom", *ZOO_KEYS, "model.box_frame=internal",
         "model.internal_size=256x256", "model.internal_resize=pad_center"],
        ["model.outputs=custom", *ZOO_KEYS, "model.box_frame=internal",
         "model.internal_size=256x256", "model.internal_resize=pad"],
        "model.internal_resize=pad_center"),
    "scores_and_classes_swapped": (
        Convention(),
        ["model.outputs=custom", *ZOO_KEYS],
        ["model.outputs=custom", "model.output_keys.boxes=detection_boxes",
         "model.output_keys.classes=detection_scores",
         "model.output_keys.scores=detection_classes"],
        "model.output_keys.classes=detection_classes"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_output_convention_scores_1_right_and_fails_wrong(
        name: str, tmp_path: Path, rects: tuple[Path, Path]) -> None:
    conv, right, wrong, fix = CASES[name]
    model = _model(tmp_path, conv)
    metrics = _ap(tmp_path, model, rects, *right)
    assert metrics["bbox.AP"] == pytest.approx(1.0), name
    message = _fails(tmp_path, model, rects, *wrong)
    assert "sanity check" in message
    if fix:
        assert fix in message, message


def test_unbatched_outputs_and_padding_rows_are_dropped(
        tmp_path: Path, rects: tuple[Path, Path]) -> None:
    """No batch dimension, no num_detections, KerasCV's -1 padding and zero-score rows: 8
    detections for 8 images, not 800."""
    model = _model(tmp_path, Convention(batched=False, num_detections=False, padding="minus_one",
                                        box_format="rel_yxyx"))
    metrics = _ap(tmp_path, model, rects, "model.outputs=custom", *ZOO_KEYS)
    assert metrics["bbox.AP"] == pytest.approx(1.0)
    assert metrics["detections"] == 8 and metrics["checks.padding"] == 8 * 99
    zeros = _model(tmp_path / "z", Convention(num_detections=False))
    metrics = _ap(tmp_path / "z", zeros, rects, "model.outputs=custom", *ZOO_KEYS)
    assert metrics["detections"] == 8
    # a floor above the real score drops everything: the floor is really applied
    floor = _ap(tmp_path / "f", zeros, rects, "model.outputs=custom", *ZOO_KEYS,
                "model.score_floor=0.5", "model.output_checks=warn")
    assert floor["detections"] == 8
    high = _ap(tmp_path / "h", zeros, rects, "model.outputs=custom", *ZOO_KEYS,
               "model.score_floor=1.0", "model.output_checks=warn")
    assert high["detections"] == 0


INPUTS = {
    "float_0_1": (Convention(input_dtype="float32", value_range=(0.0, 1.0)),
                  ["model.input_dtype=float32", "model.input_range=[0,1]"],
                  ["model.input_dtype=float32"], "model.input_range=[0,1]"),
    "imagenet_mean_std": (
        Convention(input_dtype="float32", value_range=(0.0, 1.0), mean=(0.485, 0.456, 0.406),
                   std=(0.229, 0.224, 0.225)),
        ["model.input_dtype=float32", "model.input_range=[0,1]",
         "model.input_mean=[0.485,0.456,0.406]", "model.input_std=[0.229,0.224,0.225]"],
        ["model.input_dtype=float32", "model.input_range=[0,1]"], None),
    "caffe_bgr": (
        Convention(input_dtype="float32", bgr=True, mean=(103.939, 116.779, 123.68)),
        ["model.input_dtype=float32", "model.channel_order=bgr",
         "model.input_mean=[103.939,116.779,123.68]"],
        ["model.input_dtype=float32", "model.input_mean=[103.939,116.779,123.68]"],
        "model.channel_order=bgr"),
    "minus1_1": (Convention(input_dtype="float32", value_range=(-1.0, 1.0)),
                 ["model.input_dtype=float32", "model.input_range=[-1,1]"],
                 ["model.input_dtype=float32", "model.input_range=[0,1]"],
                 "model.input_range=[-1,1]"),
}


@pytest.mark.parametrize("name", list(INPUTS))
def test_input_convention_scores_1_right_and_fails_wrong(
        name: str, tmp_path: Path, rects: tuple[Path, Path]) -> None:
    conv, right, wrong, fix = INPUTS[name]
    model = _model(tmp_path, conv)
    assert _ap(tmp_path, model, rects, *right)["bbox.AP"] == pytest.approx(1.0), name
    message = _fails(tmp_path, model, rects, *wrong)
    if fix:
        assert fix in message, message


def test_fixed_input_size_pad_keeps_aspect_and_squash_is_the_default(
        tmp_path: Path, rects: tuple[Path, Path]) -> None:
    """A fixed 192x192 input: detbench resizes; ``model.resize=pad`` keeps the aspect ratio and
    maps boxes back through the padding; both give the ground truth back."""
    model = _model(tmp_path, Convention(fixed_size=(192, 192)))
    padded = _ap(tmp_path / "pad", model, rects, "model.resize=pad")
    assert padded["bbox.AP"] == pytest.approx(1.0)
    centered = _ap(tmp_path / "center", model, rects, "model.resize=pad_center")
    assert centered["bbox.AP"] == pytest.approx(1.0)


def test_resolution_hxw_resizes_a_dynamic_custom_model(
        tmp_path: Path, rects: tuple[Path, Path]) -> None:
    model = _model(tmp_path, Convention(box_format="yxyx"))
    args = ("model.outputs=custom", *ZOO_KEYS, "model.box_format=yxyx")
    metrics = _ap(tmp_path, model, rects, *args, "resolution.name=200x300", "model.resize=pad")
    assert metrics["bbox.AP"] == pytest.approx(1.0)
    import json

    backend = json.loads((tmp_path / "job" / "backend.json").read_text())
    assert backend["input_shape"] == "[1, None, None, 3]"
