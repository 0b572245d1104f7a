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


def test_keypoint_and_mask_adapters_keep_extra_outputs() -> None:
    out = _outputs(2)
    out["detection_keypoints"] = np.zeros((1, 5, 17, 2), np.float32)
    out["detection_keypoint_scores"] = np.ones((1, 5, 17), np.float32)
    out["detection_masks"] = np.ones((1, 5, 33, 33), np.float32)
    kp = signatures.adapter("zoo_keypoints")(out, (10, 10))
    assert kp.keypoints is not None and kp.keypoints.shape == (2, 17, 2) and kp.masks is None
    masks = signatures.adapter("zoo_masks")(out, (10, 10))
    assert masks.masks is not None and masks.masks.shape == (2, 33, 33)


def _centernet_outputs(with_keypoints: bool) -> dict[str, np.ndarray]:
    """The exporter's reversed order: (num, scores, classes, boxes) or with keypoints first."""
    boxes = np.array([[[0.1, 0.2, 0.5, 0.6], [0.0, 0.0, 1.0, 1.0], [0, 0, 0, 0]]], np.float32)
    scores = np.array([[0.9, 0.4, 0.0]], np.float32)
    classes = np.array([[0.0, 2.0, 0.0]], np.float32)  # 0-based
    num = np.array([2.0], np.float32)
    parts = [num, scores, classes, boxes]
    if with_keypoints:
        parts = [np.ones((1, 3, 17), np.float32), np.zeros((1, 3, 17, 2), np.float32), *parts]
    return {f"output_{i}": v for i, v in enumerate(parts)}


@pytest.mark.parametrize("with_keypoints", [False, True])
def test_numbered_outputs_are_mapped_by_shape_and_order(with_keypoints: bool) -> None:
    det = signatures.adapter("numbered_outputs")(_centernet_outputs(with_keypoints), (512, 512))
    assert len(det) == 2
    np.testing.assert_array_equal(det.classes, [1, 3])  # 0-based + 1 = COCO ids
    np.testing.assert_allclose(det.scores, [0.9, 0.4])
    np.testing.assert_allclose(det.boxes[0], [0.1, 0.2, 0.5, 0.6])
    assert (det.keypoints is not None) == with_keypoints


def test_adapter_old_name_maps_to_the_new_one_and_unknown_lists_choices() -> None:
    old = signatures.adapter("centernet_tflite")
    assert old == signatures.adapter("numbered_outputs") and old.name == "numbered_outputs"
    assert len(old(_centernet_outputs(False), (512, 512))) == 2
    with pytest.raises(ValueError) as err:
        signatures.adapter("tflite")
    assert all(name in str(err.value) for name in signatures.ADAPTER_NAMES)


def test_custom_adapter_pixels_xy_and_offset() -> None:
    spec = signatures.OutputSpec(keys={"boxes": "b", "classes": "c", "scores": "s"},
                                 box_format="pixels", box_order="xy", class_offset=1)
    out = {"b": np.array([[[20.0, 10.0, 60.0, 50.0]]], np.float32),
           "c": np.array([[4.0]], np.float32), "s": np.array([[0.5]], np.float32)}
    det = signatures.adapter("custom", spec)(out, (100, 200))
    np.testing.assert_allclose(det.boxes[0], [0.1, 0.1, 0.5, 0.3])
    assert det.classes.tolist() == [5]


def test_custom_outputs_name_keypoint_and_mask_outputs() -> None:
    """issue 12 item 5: model.output_keys.keypoints / keypoint_scores / masks reach the spec;
    keypoints follow the boxes' units and order (here pixels, x first)."""
    from runner import config
    from tests.conftest import compose_job

    cfg = config.to_object(compose_job([
        "model=custom", "model.outputs=custom", "model.output_keys.boxes=b",
        "model.output_keys.classes=c", "model.output_keys.scores=s",
        "model.output_keys.keypoints=k", "model.output_keys.keypoint_scores=ks",
        "model.output_keys.masks=m", "model.box_format=xyxy"]))
    reader = signatures.from_config(cfg.model)
    out = {"b": np.array([[[20.0, 10.0, 60.0, 50.0]]], np.float32),
           "c": np.array([[1.0]]), "s": np.array([[0.9]]),
           "k": np.array([[[[40.0, 30.0], [20.0, 10.0]]]], np.float32),
           "ks": np.array([[[1.0, 0.5]]], np.float32), "m": np.ones((1, 1, 5, 5), np.float32)}
    det = reader(out, (100, 200))
    np.testing.assert_allclose(det.boxes[0], [0.1, 0.1, 0.5, 0.3])
    assert det.keypoints is not None and det.masks is not None
    np.testing.assert_allclose(det.keypoints[0], [[0.3, 0.2], [0.1, 0.1]])  # (y, x) normalized
    assert det.keypoint_scores is not None and det.masks.shape == (1, 5, 5)


def test_frames_map_boxes_back_through_padding_and_image_info() -> None:
    from runner.detections import Frame

    # a 100x200 image padded into 200x200 at scale 1 (bottom padding): relative boxes of the fed
    # tensor are not relative to the image
    frame = Frame((100, 200), (200, 200), (1.0, 1.0), (0.0, 0.0))
    spec = signatures.OutputSpec(keys={"boxes": "b", "classes": "c", "scores": "s"},
                                 box_format="rel_yxyx", lenient=True)
    out = {"b": np.array([[[0.25, 0.25, 0.5, 0.75]]], np.float32),
           "c": np.array([[1.0]]), "s": np.array([[0.9]])}
    np.testing.assert_allclose(signatures.read(out, spec, frame).boxes[0], [0.5, 0.25, 1.0, 0.75])
    # Model Garden: pixels of the image scaled by 3 (info row 2), offset 0
    info_spec = signatures.OutputSpec(keys=spec.keys, box_format="yxyx", box_frame="image_info",
                                      lenient=True)
    out_info = {"b": np.array([[[30.0, 60.0, 150.0, 300.0]]], np.float32),
                "c": np.array([[1]], np.int32), "s": np.array([[0.9]], np.float32),
                "image_info": np.array([[[100, 200], [384, 384], [3, 3], [0, 0]]], np.float32)}
    det = signatures.read(out_info, info_spec, Frame.identity(100, 200))
    np.testing.assert_allclose(det.boxes[0], [0.1, 0.1, 0.5, 0.5])


def test_unknown_box_frame_and_bad_combinations_are_config_errors() -> None:
    from runner import config
    from tests.conftest import compose_job

    for overrides, match in (
            (["model.box_frame=model"], "model.box_frame='model' is not valid; choose one of"),
            (["model.box_format=xywh", "model.box_order=xy"], "names its own order"),
            (["model.box_frame=internal"], "needs model.internal_size=HxW"),
            (["model.input_range=[0,1]"], "need a float input"),
            (["model.channel_order=grb"], "choose one of: rgb, bgr")):
        with pytest.raises(config.ConfigError, match=match):
            config.validate(compose_job(["model=custom", *overrides]))
