"""Keypoint (OKS) and mask (segm) evaluation for the zoo's keypoint and Mask R-CNN models.

Keypoints come normalized (y, x) per detection and become COCO keypoint results in image pixels.
Masks come relative to each box (e.g. 33x33, as exporter_lib_v2 gives them); they are reframed
into the image as the OD API's ``reframe_box_masks_to_image_masks`` does, thresholded at 0.5 and
RLE-encoded with pycocotools.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from faster_coco_eval import COCO, COCOeval_faster
from pycocotools import mask as mask_utils

from runner.detections import Detections
from runner.evaluate import STAT_NAMES, _load_results, logger

KEYPOINT_STAT_NAMES: tuple[str, ...] = (
    "AP", "AP50", "AP75", "APmedium", "APlarge", "AR", "AR50", "AR75", "ARmedium", "ARlarge",
)
PERSON = 1
MASK_THRESHOLD = 0.5


def keypoint_results(image_id: int, width: int, height: int,
                     det: Detections) -> list[dict[str, Any]]:
    """COCO keypoint results (person detections only): ``[x1, y1, v1, ...]`` in pixels."""
    if det.keypoints is None:
        return []
    out = []
    kp_scores = det.keypoint_scores
    for i in np.flatnonzero(det.classes == PERSON):
        yx = det.keypoints[i].astype(np.float64)
        vis = kp_scores[i] if kp_scores is not None else np.ones(len(yx))
        flat = np.column_stack([yx[:, 1] * width, yx[:, 0] * height, vis]).reshape(-1)
        out.append({"image_id": int(image_id), "category_id": PERSON,
                    "keypoints": [float(v) for v in flat], "score": float(det.scores[i])})
    return out


def _resize_bilinear(mask: np.ndarray, out_h: int, out_w: int, y0: float, x0: float,
                     box_h: float, box_w: float) -> np.ndarray:
    """Sample a box-relative mask at the centres of the image pixels the box covers."""
    mh, mw = mask.shape
    ys = (np.arange(out_h) + 0.5 - y0) / box_h * mh - 0.5
    xs = (np.arange(out_w) + 0.5 - x0) / box_w * mw - 0.5
    ys, xs = np.clip(ys, 0, mh - 1), np.clip(xs, 0, mw - 1)
    y_lo, x_lo = np.floor(ys).astype(int), np.floor(xs).astype(int)
    y_hi, x_hi = np.minimum(y_lo + 1, mh - 1), np.minimum(x_lo + 1, mw - 1)
    wy, wx = (ys - y_lo)[:, None], (xs - x_lo)[None, :]
    top = mask[y_lo][:, x_lo] * (1 - wx) + mask[y_lo][:, x_hi] * wx
    bottom = mask[y_hi][:, x_lo] * (1 - wx) + mask[y_hi][:, x_hi] * wx
    return np.asarray(top * (1 - wy) + bottom * wy)


def reframe_mask(mask: np.ndarray, box: np.ndarray, height: int, width: int) -> np.ndarray:
    """A box-relative mask -> a binary uint8 [height, width] image mask; pixels whose centres lie
    outside the box stay 0."""
    scale = np.array([height, width, height, width], np.float64)
    y0, x0, y1, x1 = (float(v) for v in np.asarray(box, np.float64) * scale)
    image = np.zeros((height, width), np.uint8)
    r0, r1 = max(0, int(np.ceil(y0 - 0.5))), min(height, int(np.ceil(y1 - 0.5)))
    c0, c1 = max(0, int(np.ceil(x0 - 0.5))), min(width, int(np.ceil(x1 - 0.5)))
    if r1 <= r0 or c1 <= c0:
        return image
    values = _resize_bilinear(mask.astype(np.float64), r1 - r0, c1 - c0, y0 - r0, x0 - c0,
                              max(y1 - y0, 1e-6), max(x1 - x0, 1e-6))
    image[r0:r1, c0:c1] = values >= MASK_THRESHOLD
    return image


def mask_results(image_id: int, width: int, height: int, det: Detections) -> list[dict[str, Any]]:
    """COCO segm results with RLE masks (``counts`` as str)."""
    if det.masks is None:
        return []
    out = []
    for i in range(len(det)):
        binary = reframe_mask(det.masks[i], det.boxes[i], height, width)
        rle = mask_utils.encode(np.asfortranarray(binary))
        rle["counts"] = rle["counts"].decode("ascii")
        out.append({"image_id": int(image_id), "category_id": int(det.classes[i]),
                    "segmentation": rle, "score": float(det.scores[i])})
    return out


def evaluate(gt: str | Path | COCO, results: list[dict[str, Any]], image_ids: Sequence[int],
             iou_type: str) -> dict[str, float]:
    """COCO stats for ``iou_type`` "keypoints" (10 stats) or "segm" (12 stats)."""
    names = {"keypoints": KEYPOINT_STAT_NAMES, "segm": STAT_NAMES}.get(iou_type)
    if names is None:
        raise ValueError(f"iou_type={iou_type!r}; valid: keypoints, segm")
    coco_gt = gt if isinstance(gt, COCO) else COCO(str(gt), print_function=logger.debug)
    coco_dt = _load_results(coco_gt, [dict(r) for r in results])
    ev = COCOeval_faster(coco_gt, coco_dt, iou_type, print_function=logger.debug)
    ev.params.imgIds = sorted({int(i) for i in image_ids})
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return dict(zip(names, (float(v) for v in ev.stats[: len(names)]), strict=True))
