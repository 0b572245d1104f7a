"""COCO box evaluation: ``Detections`` -> COCO results -> the 12 ``COCOeval`` bbox stats.

The engine is faster-coco-eval (``COCOeval_faster``), a C++ drop-in for pycocotools whose
bbox stats agree with pycocotools' to ~1e-16, not bit for bit (checked in
``tests/test_evaluate.py``). Its ``COCO`` and ``COCOeval`` messages go to this module's logger
at DEBUG level, never stdout.

Boxes are converted to pixels of the original image as floats (the public table truncated them to
int, a likely cause of its lower AP): normalized coordinates are clipped to ``[0, 1]``, then
``[xmin*W, ymin*H, (xmax-xmin)*W, (ymax-ymin)*H]`` in float64.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from faster_coco_eval import COCO, COCOeval_faster

from runner.detections import Detections

logger = logging.getLogger(__name__)

STAT_NAMES: tuple[str, ...] = (
    "AP",
    "AP50",
    "AP75",
    "APsmall",
    "APmedium",
    "APlarge",
    "ARmax1",
    "ARmax10",
    "ARmax100",
    "ARsmall",
    "ARmedium",
    "ARlarge",
)


def _pixel_xywh(width: int, height: int, boxes: np.ndarray) -> np.ndarray:
    """Normalized ``[ymin, xmin, ymax, xmax]`` -> pixel ``[x, y, w, h]`` (float64, clipped)."""
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got width={width}, height={height}")
    b = np.clip(np.asarray(boxes, dtype=np.float64).reshape(-1, 4), 0.0, 1.0)
    if not np.isfinite(b).all():
        raise ValueError("detection boxes contain non-finite values")
    ymin, xmin, ymax, xmax = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
    xywh = np.empty_like(b)
    xywh[:, 0] = xmin * width
    xywh[:, 1] = ymin * height
    xywh[:, 2] = np.maximum(xmax - xmin, 0.0) * width
    xywh[:, 3] = np.maximum(ymax - ymin, 0.0) * height
    return xywh


def _scores(det: Detections) -> np.ndarray:
    scores = np.asarray(det.scores, dtype=np.float64).reshape(-1)
    if not np.isfinite(scores).all():
        raise ValueError("detection scores contain non-finite values")
    return scores


def _as_dicts(
    image_ids: np.ndarray, xywh: np.ndarray, scores: np.ndarray, classes: np.ndarray
) -> list[dict[str, Any]]:
    return [
        {"image_id": i, "category_id": c, "bbox": b, "score": s}
        for i, c, b, s in zip(
            image_ids.tolist(), classes.tolist(), xywh.tolist(), scores.tolist(), strict=True
        )
    ]


def to_coco_results(
    image_id: int, width: int, height: int, det: Detections
) -> list[dict[str, Any]]:
    """COCO results (``image_id, category_id, bbox [x, y, w, h], score``) of one image.

    ``width``/``height`` are the original image's pixel size; bbox values are Python floats.
    """
    xywh = _pixel_xywh(width, height, det.boxes)
    classes = np.asarray(det.classes, dtype=np.int64).reshape(-1)
    ids = np.full(len(classes), int(image_id), dtype=np.int64)
    return _as_dicts(ids, xywh, _scores(det), classes)


class ResultsAccumulator:
    """Collects per-image detections as arrays; turns them into COCO results on demand.

    Each image may be added once (a second ``add`` for the same id raises ``ValueError``).
    """

    def __init__(self, truncate: bool = False) -> None:
        """``truncate``: cut pixel boxes to int, as the public table did (its ``seed`` policy)."""
        self.truncate = truncate
        self._ids: list[np.ndarray] = []
        self._xywh: list[np.ndarray] = []
        self._scores: list[np.ndarray] = []
        self._classes: list[np.ndarray] = []
        self._image_ids: list[int] = []
        self._seen: set[int] = set()
        self._count = 0

    def add(self, image_id: int, width: int, height: int, det: Detections) -> None:
        """Add the detections of one image (``width``/``height`` of the original image)."""
        image_id = int(image_id)
        if image_id in self._seen:
            raise ValueError(f"image_id {image_id} was already added")
        xywh = _pixel_xywh(width, height, det.boxes)
        if self.truncate:
            xywh = np.trunc(xywh)
        scores = _scores(det)
        self._seen.add(image_id)
        self._image_ids.append(image_id)
        self._ids.append(np.full(len(scores), image_id, dtype=np.int64))
        self._xywh.append(xywh)
        self._scores.append(scores)
        self._classes.append(np.asarray(det.classes, dtype=np.int64).reshape(-1))
        self._count += len(scores)

    def __len__(self) -> int:
        """Number of detections (not images)."""
        return self._count

    @property
    def image_ids(self) -> list[int]:
        """Ids of the images added, in order (images without detections included)."""
        return list(self._image_ids)

    def _columns(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        if not self._ids:
            return (
                np.zeros(0, np.int64),
                np.zeros((0, 4), np.float64),
                np.zeros(0, np.float64),
                np.zeros(0, np.int64),
            )
        return (
            np.concatenate(self._ids),
            np.concatenate(self._xywh),
            np.concatenate(self._scores),
            np.concatenate(self._classes),
        )

    def to_json_list(self) -> list[dict[str, Any]]:
        """COCO results format (JSON-serializable: Python ints and floats)."""
        return _as_dicts(*self._columns())

    def to_array(self) -> np.ndarray:
        """Nx7 float64 ``[image_id, x, y, w, h, score, class]``, as ``COCO.loadRes`` accepts."""
        ids, xywh, scores, classes = self._columns()
        return np.column_stack([ids, xywh, scores, classes]).astype(np.float64).reshape(-1, 7)


def load_ground_truth(path: str | Path) -> COCO:
    """Load a COCO instances file once; pass the result to ``evaluate_bbox`` repeatedly."""
    return COCO(str(path), print_function=logger.debug)


def _gt_coco(gt: str | Path | dict[str, Any] | COCO) -> COCO:
    if isinstance(gt, COCO):
        return gt
    if isinstance(gt, dict):
        return COCO(gt, use_deepcopy=True, print_function=logger.debug)
    return load_ground_truth(gt)


def _checked_ids(
    coco_gt: COCO, image_ids: Sequence[int], results: list[dict[str, Any]]
) -> list[int]:
    ids = sorted({int(i) for i in image_ids})
    if not ids:
        raise ValueError("image_ids is empty: nothing to evaluate")
    known = set(coco_gt.getImgIds())
    missing = [i for i in ids if i not in known]
    stray = sorted({int(r["image_id"]) for r in results} - known)
    for what, bad in (("image_ids", missing), ("results", stray)):
        if bad:
            raise ValueError(
                f"{what} hold {len(bad)} image id(s) not in the ground truth, e.g. {bad[:5]}"
            )
    return ids


def _load_results(coco_gt: COCO, res: list[dict[str, Any]]) -> COCO:
    """``coco_gt.loadRes(res)``; an empty ``res`` (which pycocotools' loadRes rejects) gives an
    empty but evaluable results set."""
    if res:
        return coco_gt.loadRes(res)
    empty = COCO(print_function=logger.debug)
    empty.dataset = {
        "images": list(coco_gt.dataset.get("images", [])),
        "annotations": [],
        "categories": list(coco_gt.dataset.get("categories", [])),
    }
    empty.createIndex()
    return empty


def evaluate_bbox(
    gt: str | Path | dict[str, Any] | COCO,
    results: ResultsAccumulator | list[dict[str, Any]],
    image_ids: Sequence[int],
) -> dict[str, float]:
    """The 12 COCO bbox stats (``STAT_NAMES`` -> fraction in [0, 1], or -1 where COCO has none).

    Evaluation is restricted to ``image_ids``; images among them without detections still count
    (their objects are misses). Zero detections give 0.0 for every stat COCO defines.
    """
    coco_gt = _gt_coco(gt)
    if isinstance(results, ResultsAccumulator):
        res = results.to_json_list()
    else:
        res = [dict(r) for r in results]  # loadRes adds keys to each dict: keep the caller's intact
    ids = _checked_ids(coco_gt, image_ids, res)
    coco_dt = _load_results(coco_gt, res)
    ev = COCOeval_faster(coco_gt, coco_dt, "bbox", print_function=logger.debug)
    ev.params.imgIds = ids
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    stats = [float(v) for v in ev.stats[: len(STAT_NAMES)]]
    logger.info("bbox eval on %d images, %d detections: AP %.4f", len(ids), len(res), stats[0])
    return dict(zip(STAT_NAMES, stats, strict=True))
