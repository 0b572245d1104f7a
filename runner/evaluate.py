"""COCO box evaluation: ``Detections`` -> COCO results -> the 12 ``COCOeval`` bbox stats.

The engine is faster-coco-eval (``COCOeval_faster``), a C++ drop-in for pycocotools whose
bbox stats agree with pycocotools' to ~1e-16, not bit for bit (checked in
``tests/test_evaluate.py``). Its ``COCO`` and ``COCOeval`` messages go to this module's logger
at DEBUG level, never stdout.

Boxes are converted to pixels of the original image as floats (the public table truncated them to
int, a likely cause of its lower AP): normalized coordinates are clipped to ``[0, 1]``, then
``[xmin*W, ymin*H, (xmax-xmin)*W, (ymax-ymin)*H]`` in float64.

The ``seed`` input policy converts as the script behind the public table did instead
(``ResultsAccumulator(truncate=True)``): the same four products in **float32** (the model's
output dtype), **no clipping** to the image (a box that leaves the image keeps its coordinates, a
negative width stays negative), then truncated toward zero to int. The precision moves a pixel:
the model's float32 0.7 (0.69999999) times 640 is 448.0 in float32 but 447.99999 in float64,
truncated to 447; and clipping changes AP for any model whose boxes leave the image.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Iterable, Sequence
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


def _as_dicts(
    image_ids: np.ndarray, xywh: np.ndarray, scores: np.ndarray, classes: np.ndarray
) -> list[dict[str, Any]]:
    return [
        {"image_id": i, "category_id": c, "bbox": b, "score": s}
        for i, c, b, s in zip(
            image_ids.tolist(), classes.tolist(), xywh.tolist(), scores.tolist(), strict=True
        )
    ]


Columns = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # image ids, xywh, scores, classes


class ResultsAccumulator:
    """Collects per-image detections as arrays; turns them into COCO results on demand.

    Each image may be added once (a second ``add`` for the same id raises ``ValueError``).
    ``add`` runs between timed calls, so it only checks and copies the arrays as given; the
    conversion to pixel boxes happens for all images at once when results are asked for.
    """

    def __init__(self, truncate: bool = False) -> None:
        """``truncate``: convert boxes as the public table's script did (the ``seed`` policy):
        float32 products, no clipping, truncated to int (see the module docstring)."""
        self.truncate = truncate
        self._boxes: list[np.ndarray] = []  # normalized [ymin, xmin, ymax, xmax] as given
        self._scores: list[np.ndarray] = []
        self._classes: list[np.ndarray] = []
        self._image_ids: list[int] = []
        self._sizes: list[tuple[int, int]] = []  # (width, height) per image
        self._seen: set[int] = set()
        self._count = 0

    def add(self, image_id: int, width: int, height: int, det: Detections) -> None:
        """Add the detections of one image (``width``/``height`` of the original image)."""
        image_id = int(image_id)
        if image_id in self._seen:
            raise ValueError(f"image_id {image_id} was already added")
        if width <= 0 or height <= 0:
            raise ValueError(f"image size must be positive, got width={width}, height={height}")
        boxes = np.array(det.boxes).reshape(-1, 4)
        if np.isnan(boxes).any():  # infinities clip to the image's edge (_columns)
            raise ValueError("detection boxes contain non-finite values")
        if self.truncate and np.isinf(boxes).any():  # no clipping here: int(inf) has no value
            raise ValueError("detection boxes contain infinite values, which the public script's "
                             "conversion (benchmark.input_policy='seed') cannot truncate to int")
        scores = np.array(det.scores).reshape(-1)
        if not np.isfinite(scores).all():
            raise ValueError("detection scores contain non-finite values")
        self._seen.add(image_id)
        self._image_ids.append(image_id)
        self._sizes.append((int(width), int(height)))
        self._boxes.append(boxes)
        self._scores.append(scores)
        self._classes.append(np.array(det.classes, dtype=np.int64).reshape(-1))
        self._count += len(scores)

    def __len__(self) -> int:
        """Number of detections (not images)."""
        return self._count

    @property
    def image_ids(self) -> list[int]:
        """Ids of the images added, in order (images without detections included)."""
        return list(self._image_ids)

    def _columns(self) -> Columns:
        """(image ids, pixel xywh float64, scores float64, classes int64), one row per detection,
        computed for all images at once: normalized boxes clipped to ``[0, 1]``, then
        ``[xmin*W, ymin*H, (xmax-xmin)*W, (ymax-ymin)*H]`` in float64 (or the ``truncate``
        policy)."""
        if not self._image_ids:
            return (
                np.zeros(0, np.int64),
                np.zeros((0, 4), np.float64),
                np.zeros(0, np.float64),
                np.zeros(0, np.int64),
            )
        counts = np.array([len(s) for s in self._scores], dtype=np.int64)
        if self.truncate:
            xywh = _public_script_xywh(self._boxes, self._sizes, counts)
        else:
            sizes = np.array(self._sizes, dtype=np.float64).reshape(-1, 2)
            width, height = np.repeat(sizes[:, 0], counts), np.repeat(sizes[:, 1], counts)
            b = np.clip(np.concatenate(self._boxes).astype(np.float64, copy=False), 0.0, 1.0)
            xywh = np.empty_like(b)
            xywh[:, 0] = b[:, 1] * width
            xywh[:, 1] = b[:, 0] * height
            xywh[:, 2] = np.maximum(b[:, 3] - b[:, 1], 0.0) * width
            xywh[:, 3] = np.maximum(b[:, 2] - b[:, 0], 0.0) * height
        return (
            np.repeat(np.array(self._image_ids, dtype=np.int64), counts),
            xywh,
            np.concatenate(self._scores).astype(np.float64, copy=False),
            np.concatenate(self._classes),
        )

    def to_json_list(self) -> list[dict[str, Any]]:
        """COCO results format (JSON-serializable: Python ints and floats)."""
        return _as_dicts(*self._columns())

    def to_array(self) -> np.ndarray:
        """Nx7 float64 ``[image_id, x, y, w, h, score, class]``, as ``COCO.loadRes`` accepts."""
        ids, xywh, scores, classes = self._columns()
        return np.column_stack([ids, xywh, scores, classes]).astype(np.float64).reshape(-1, 7)

    def write_json(self, path: str | Path, chunk: int = 50_000) -> None:
        """Write ``json.dumps(self.to_json_list())`` to ``path`` (the same bytes), ``chunk``
        detections at a time, so that memory does not grow with the number of detections."""
        columns = self._columns()
        with open(path, "w") as fh:
            fh.write("[")
            for start in range(0, len(columns[0]), chunk):
                part = json.dumps(_as_dicts(*(c[start : start + chunk] for c in columns)))
                fh.write((", " if start else "") + part[1:-1])
            fh.write("]")


def _public_script_xywh(boxes: list[np.ndarray], sizes: list[tuple[int, int]],
                        counts: np.ndarray) -> np.ndarray:
    """Pixel ``[x, y, w, h]`` as the public table's script computed them: per box
    ``int(xmin * W), int(ymin * H), int((xmax - xmin) * W), int((ymax - ymin) * H)`` with the
    normalized coordinates in float32 and no clipping; returned as float64 holding integers."""
    b = np.concatenate(boxes).astype(np.float32, copy=False).reshape(-1, 4)
    size = np.array(sizes, dtype=np.float32).reshape(-1, 2)
    width = np.repeat(size[:, 0], counts)
    height = np.repeat(size[:, 1], counts)
    xywh = np.empty(b.shape, dtype=np.float32)
    xywh[:, 0] = b[:, 1] * width
    xywh[:, 1] = b[:, 0] * height
    xywh[:, 2] = (b[:, 3] - b[:, 1]) * width
    xywh[:, 3] = (b[:, 2] - b[:, 0]) * height
    return np.trunc(xywh).astype(np.float64)


def load_ground_truth(path: str | Path) -> COCO:
    """Load a COCO instances file once; pass the result to ``evaluate_bbox`` repeatedly."""
    return COCO(str(path), print_function=logger.debug)


def _gt_coco(gt: str | Path | dict[str, Any] | COCO) -> COCO:
    if isinstance(gt, COCO):
        return gt
    if isinstance(gt, dict):
        return COCO(gt, use_deepcopy=True, print_function=logger.debug)
    return load_ground_truth(gt)


def _checked_ids(coco_gt: COCO, image_ids: Sequence[int], result_ids: Iterable[int]) -> list[int]:
    ids = sorted({int(i) for i in image_ids})
    if not ids:
        raise ValueError("image_ids is empty: nothing to evaluate")
    known = set(coco_gt.getImgIds())
    missing = [i for i in ids if i not in known]
    stray = sorted({int(i) for i in result_ids} - known)
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


def _results_from_columns(
    coco_gt: COCO, ids: np.ndarray, xywh: np.ndarray, scores: np.ndarray, classes: np.ndarray,
    ann_ids: np.ndarray | None = None,
) -> COCO:
    """What ``coco_gt.loadRes`` makes of these box results (``area`` = w * h, ``id`` = 1..N,
    ``iscrowd`` = 0), built in one pass from the arrays and without the box polygon
    (``segmentation``) that loadRes adds but bbox evaluation never reads: about half the time and
    memory per detection. ``ann_ids``: the results' ids (default 1..N, as loadRes numbers them)."""
    if not len(ids):
        return _load_results(coco_gt, [])
    area = xywh[:, 2] * xywh[:, 3]
    numbers = range(1, len(ids) + 1) if ann_ids is None else ann_ids.tolist()
    anns = [
        {"image_id": i, "category_id": c, "bbox": b, "score": s, "area": a, "id": k,
         "iscrowd": 0}
        for k, i, c, b, s, a in zip(
            numbers, ids.tolist(), classes.tolist(), xywh.tolist(),
            scores.tolist(), area.tolist(), strict=True,
        )
    ]
    res = COCO(print_function=logger.debug)
    res.dataset = {
        "info": copy.deepcopy(coco_gt.dataset.get("info", {})),
        "images": list(coco_gt.dataset.get("images", [])),
        "annotations": anns,
        "categories": copy.deepcopy(coco_gt.dataset.get("categories", [])),
    }
    res.createIndex()
    return res


def category_groups(counts: Sequence[int], limit: int) -> list[range]:
    """Consecutive index ranges over categories whose detection ``counts`` sum to at most
    ``limit`` each (a category above ``limit`` on its own); one range when the total fits."""
    groups: list[range] = []
    start, total = 0, 0
    for index, count in enumerate(counts):
        if index > start and total + count > limit:
            groups.append(range(start, index))
            start, total = index, 0
        total += count
    if len(counts) > start or not groups:
        groups.append(range(start, len(counts)))
    return groups


def _evaluate_pass(
    coco_gt: COCO, coco_dt: COCO, image_ids: list[int], cat_ids: list[int] | None
) -> COCOeval_faster:
    ev = COCOeval_faster(coco_gt, coco_dt, "bbox", print_function=logger.debug)
    ev.params.imgIds = image_ids
    if cat_ids is not None:
        ev.params.catIds = cat_ids
    ev.evaluate()
    ev.accumulate()
    return ev


def _evaluate_columns(
    coco_gt: COCO, columns: Columns, image_ids: list[int], limit: int
) -> COCOeval_faster:
    """Evaluate box results given as arrays, in passes over groups of categories holding at most
    ``limit`` detections each. COCO's precision and recall are computed per category (each
    category's detections are ranked and matched on their own), so the passes' arrays joined
    along the category axis are those of a single pass and give the same stats, while memory
    holds one group's result dicts and evaluation state at a time instead of all of them."""
    cat_ids = sorted(int(c) for c in coco_gt.getCatIds())
    ann_ids = np.arange(1, len(columns[0]) + 1)
    classes = columns[3]
    ordered = np.sort(classes)
    counts = (np.searchsorted(ordered, cat_ids, side="right")
              - np.searchsorted(ordered, cat_ids, side="left")).tolist()
    groups = category_groups(counts, limit)
    if len(groups) == 1:
        return _evaluate_pass(coco_gt, _results_from_columns(coco_gt, *columns), image_ids, None)
    precision, recall = [], []
    for group in groups:
        cats = [cat_ids[i] for i in group]
        keep = np.isin(classes, cats)
        image, xywh, scores, cls = (c[keep] for c in columns)
        coco_dt = _results_from_columns(coco_gt, image, xywh, scores, cls, ann_ids[keep])
        ev = _evaluate_pass(coco_gt, coco_dt, image_ids, cats)
        precision.append(ev.eval["precision"])
        recall.append(ev.eval["recall"])
        del coco_dt, ev
    whole = COCOeval_faster(coco_gt, None, "bbox", print_function=logger.debug)
    whole.params.imgIds, whole.params.catIds = image_ids, cat_ids
    whole.eval = {"precision": np.concatenate(precision, axis=2),
                  "recall": np.concatenate(recall, axis=1)}
    return whole


#: Box results evaluated per pass over a group of categories (see ``_evaluate_columns``). On a
#: COCO-val-sized case (5,000 images, 500,000 detections) one pass peaked 1.1 GB above the results
#: themselves; passes of 20,000 detections peak at 160 MB, in the same time (benchmarks/README.md).
MAX_DETECTIONS_PER_PASS = 20_000


def evaluate_bbox(
    gt: str | Path | dict[str, Any] | COCO,
    results: ResultsAccumulator | list[dict[str, Any]],
    image_ids: Sequence[int],
) -> dict[str, float]:
    """The 12 COCO bbox stats (``STAT_NAMES`` -> fraction in [0, 1], or -1 where COCO has none).

    Evaluation is restricted to ``image_ids``; images among them without detections still count
    (their objects are misses). Zero detections give 0.0 for every stat COCO defines. Results in
    a ``ResultsAccumulator`` are evaluated in passes of at most ``MAX_DETECTIONS_PER_PASS``
    detections (same stats, bounded memory).
    """
    coco_gt = _gt_coco(gt)
    if isinstance(results, ResultsAccumulator):
        columns = results._columns()
        ids = _checked_ids(coco_gt, image_ids, np.unique(columns[0]).tolist())
        ev = _evaluate_columns(coco_gt, columns, ids, MAX_DETECTIONS_PER_PASS)
        count = len(columns[0])
    else:
        res = [dict(r) for r in results]  # loadRes adds keys to each dict: keep the caller's intact
        ids = _checked_ids(coco_gt, image_ids, (r["image_id"] for r in res))
        ev = _evaluate_pass(coco_gt, _load_results(coco_gt, res), ids, None)
        count = len(res)
    ev.summarize()
    stats = [float(v) for v in ev.stats[: len(STAT_NAMES)]]
    logger.info("bbox eval on %d images, %d detections: AP %.4f", len(ids), count, stats[0])
    return dict(zip(STAT_NAMES, stats, strict=True))
