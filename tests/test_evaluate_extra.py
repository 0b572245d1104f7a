from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from runner import evaluate_extra
from runner.detections import Detections

W, H = 200, 100


def _kp_gt() -> dict[str, Any]:
    kps = []
    for k in range(17):
        kps += [20.0 + 5 * k, 10.0 + 4 * k, 2]
    return {
        "images": [{"id": 1, "width": W, "height": H, "file_name": "a.jpg"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 5, 100, 90],
                         "area": 9000.0, "iscrowd": 0, "num_keypoints": 17, "keypoints": kps}],
        "categories": [{"id": 1, "name": "person", "keypoints": [str(i) for i in range(17)],
                        "skeleton": []}],
    }


def _kp_det(shift_px: float) -> Detections:
    kps = _kp_gt()["annotations"][0]["keypoints"]
    xs, ys = np.array(kps[0::3]) + shift_px, np.array(kps[1::3])
    yx = np.stack([ys / H, xs / W], axis=-1)[None].astype(np.float32)
    return Detections(np.array([[0.05, 0.05, 0.95, 0.55]], np.float32), np.array([1]),
                      np.array([0.9], np.float32), keypoints=yx,
                      keypoint_scores=np.ones((1, 17), np.float32))


def test_exact_keypoints_give_ap_one(tmp_path: Any) -> None:
    import json

    gt = tmp_path / "kp.json"
    gt.write_text(json.dumps(_kp_gt()))
    res = evaluate_extra.keypoint_results(1, W, H, _kp_det(0.0))
    assert res[0]["keypoints"][:3] == pytest.approx([20.0, 10.0, 1.0])
    stats = evaluate_extra.evaluate(gt, res, [1], "keypoints")
    assert stats["AP"] == pytest.approx(1.0)
    far = evaluate_extra.evaluate(gt, evaluate_extra.keypoint_results(1, W, H, _kp_det(40.0)),
                                  [1], "keypoints")
    assert far["AP"] < 0.2


def test_non_person_detections_have_no_keypoint_results() -> None:
    det = _kp_det(0.0)
    other = Detections(det.boxes, np.array([3]), det.scores, keypoints=det.keypoints)
    assert evaluate_extra.keypoint_results(1, W, H, other) == []


def test_reframe_full_mask_fills_its_box() -> None:
    box = np.array([0.2, 0.1, 0.6, 0.5], np.float32)  # rows 20..60, cols 20..100
    image = evaluate_extra.reframe_mask(np.ones((33, 33)), box, H, W)
    assert image.shape == (H, W) and image.sum() == 40 * 80
    assert image[20:60, 20:100].all() and not image[:20].any() and not image[:, 100:].any()
    half = np.zeros((33, 33))
    half[:, :16] = 1.0  # left half of the box
    left = evaluate_extra.reframe_mask(half, box, H, W)
    assert left[20:60, 20:58].all() and not left[:, 62:].any()


def test_mask_ap_from_reframed_masks(tmp_path: Any) -> None:
    import json

    poly = [20.0, 20.0, 100.0, 20.0, 100.0, 60.0, 20.0, 60.0]
    gt = {"images": [{"id": 1, "width": W, "height": H, "file_name": "a"}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 2, "bbox": [20, 20, 80, 40],
                           "area": 3200.0, "iscrowd": 0, "segmentation": [poly]}],
          "categories": [{"id": 2, "name": "x"}]}
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    det = Detections(np.array([[0.2, 0.1, 0.6, 0.5]], np.float32), np.array([2]),
                     np.array([0.8], np.float32), masks=np.ones((1, 33, 33), np.float32))
    res = evaluate_extra.mask_results(1, W, H, det)
    assert isinstance(res[0]["segmentation"]["counts"], str)
    assert evaluate_extra.evaluate(path, res, [1], "segm")["AP"] == pytest.approx(1.0)
    half = np.zeros((1, 33, 33), np.float32)
    half[0, :, :8] = 1.0  # a quarter of the box: IoU ~0.25, below every threshold
    det_half = Detections(det.boxes, det.classes, det.scores, masks=half)
    low = evaluate_extra.evaluate(path, evaluate_extra.mask_results(1, W, H, det_half), [1],
                                  "segm")
    assert low["AP"] == 0.0
    with pytest.raises(ValueError, match="keypoints, segm"):
        evaluate_extra.evaluate(path, res, [1], "bbox")
