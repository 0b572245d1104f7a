from __future__ import annotations

import contextlib
import copy
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pycocotools.coco import COCO as PyCOCO
from pycocotools.cocoeval import COCOeval as PyCOCOeval

from runner.detections import Detections
from runner.evaluate import (
    STAT_NAMES,
    ResultsAccumulator,
    evaluate_bbox,
    load_ground_truth,
)

# ---------------------------------------------------------------- helpers


def _ann(
    ann_id: int, image_id: int, cat: int, x: float, y: float, w: float, h: float, iscrowd: int = 0
) -> dict[str, Any]:
    seg = [[x, y, x + w, y, x + w, y + h, x, y + h]]
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": cat,
        "bbox": [x, y, w, h],
        "area": w * h,
        "iscrowd": iscrowd,
        "segmentation": seg,
    }


def _gt(
    images: list[tuple[int, int, int]], anns: list[dict[str, Any]], ncat: int = 2
) -> dict[str, Any]:
    return {
        "images": [
            {"id": i, "width": w, "height": h, "file_name": f"{i}.jpg"} for i, w, h in images
        ],
        "annotations": anns,
        "categories": [{"id": c, "name": f"c{c}"} for c in range(1, ncat + 1)],
    }


def _det(boxes: list[list[float]], classes: list[int], scores: list[float]) -> Detections:
    return Detections(
        boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        classes=np.asarray(classes, dtype=np.int64),
        scores=np.asarray(scores, dtype=np.float32),
    )


def _pycoco_stats(
    gt: dict[str, Any], results: list[dict[str, Any]] | np.ndarray, ids: list[int]
) -> dict[str, float]:
    """Reference: plain pycocotools (which needs a non-empty results list)."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = PyCOCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        res = results if isinstance(results, np.ndarray) else copy.deepcopy(results)
        ev = PyCOCOeval(coco_gt, coco_gt.loadRes(res), "bbox")
        ev.params.imgIds = ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return dict(zip(STAT_NAMES, (float(v) for v in ev.stats), strict=True))


# One 100x100 (large: area 10000 > 96**2) object at x, y = 20..120 in a 200x200 image.
ONE_GT = _gt([(1, 200, 200)], [_ann(1, 1, 1, 20, 20, 100, 100)])
PERFECT = [0.1, 0.1, 0.6, 0.6]  # normalized ymin, xmin, ymax, xmax


def _results(image_id: int, width: int, height: int, det: Detections) -> list[dict[str, Any]]:
    """COCO results of one image, through the path the job uses (``ResultsAccumulator``)."""
    acc = ResultsAccumulator()
    acc.add(image_id, width, height, det)
    return acc.to_json_list()


def _single(det: Detections, gt: dict[str, Any] = ONE_GT) -> dict[str, float]:
    acc = ResultsAccumulator()
    acc.add(1, 200, 200, det)
    return evaluate_bbox(gt, acc, [1])


# ---------------------------------------------------------------- conversion


def test_results_hand_computed_floats_no_truncation() -> None:
    det = _det([[0.375, 0.125, 0.625, 0.875]], [18], [0.5])
    (r,) = _results(42, 333, 101, det)
    # x = 0.125*333, y = 0.375*101, w = (0.875-0.125)*333, h = (0.625-0.375)*101 (all exact)
    assert r == {
        "image_id": 42,
        "category_id": 18,
        "bbox": [41.625, 37.875, 249.75, 25.25],
        "score": 0.5,
    }
    assert all(type(v) is float for v in r["bbox"])
    assert (
        type(r["score"]) is float and type(r["category_id"]) is int and type(r["image_id"]) is int
    )


def test_results_float32_inputs_computed_in_float64() -> None:
    (r,) = _results(1, 640, 480, _det([[0.1, 0.2, 0.3, 0.7]], [1], [0.9]))
    f = [float(np.float32(v)) for v in (0.1, 0.2, 0.3, 0.7)]
    assert r["bbox"] == [f[1] * 640, f[0] * 480, (f[3] - f[1]) * 640, (f[2] - f[0]) * 480]
    assert r["score"] == float(np.float32(0.9))


def test_results_clips_to_image() -> None:
    det = _det([[-0.1, 0.5, 0.5, 1.2], [0.75, -0.5, 1.5, -0.125]], [3, 4], [0.7, 0.6])
    r = _results(5, 200, 100, det)
    assert r[0]["bbox"] == [100.0, 0.0, 100.0, 50.0]
    assert r[1]["bbox"] == [0.0, 75.0, 0.0, 25.0]  # entirely left of the image: zero width


def test_results_empty() -> None:
    assert _results(1, 10, 10, _det([], [], [])) == []


def test_results_rejects_non_finite() -> None:
    with pytest.raises(ValueError, match="non-finite"):
        _results(1, 10, 10, _det([[0, 0, np.nan, 1]], [1], [0.5]))


def test_accumulator_array_and_json_agree() -> None:
    acc = ResultsAccumulator()
    acc.add(3, 100, 50, _det([[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]], [1, 2], [0.9, 0.1]))
    acc.add(4, 10, 10, _det([], [], []))
    acc.add(2, 20, 40, _det([[0.25, 0.25, 0.75, 0.75]], [7], [0.5]))
    assert len(acc) == 3
    assert acc.image_ids == [3, 4, 2]
    arr = acc.to_array()
    assert arr.shape == (3, 7) and arr.dtype == np.float64
    np.testing.assert_array_equal(
        arr,
        [
            [3, 0, 0, 50, 25, np.float32(0.9), 1],
            [3, 50, 25, 50, 25, np.float32(0.1), 2],
            [2, 5, 10, 10, 20, 0.5, 7],
        ],
    )
    assert acc.to_json_list() == [
        {"image_id": 3, "category_id": 1, "bbox": [0.0, 0.0, 50.0, 25.0],
         "score": float(np.float32(0.9))},
        {"image_id": 3, "category_id": 2, "bbox": [50.0, 25.0, 50.0, 25.0],
         "score": float(np.float32(0.1))},
        {"image_id": 2, "category_id": 7, "bbox": [5.0, 10.0, 10.0, 20.0], "score": 0.5},
    ]
    json.dumps(acc.to_json_list())  # serializable


def test_accumulator_empty_and_duplicate() -> None:
    acc = ResultsAccumulator()
    assert len(acc) == 0 and acc.to_json_list() == [] and acc.to_array().shape == (0, 7)
    acc.add(1, 10, 10, _det([], [], []))
    with pytest.raises(ValueError, match="already added"):
        acc.add(1, 10, 10, _det([], [], []))


# ---------------------------------------------------------------- hand-computed COCO stats


def test_perfect_detection() -> None:
    stats = _single(_det([PERFECT], [1], [0.9]))
    for name in ("AP", "AP50", "AP75", "APlarge", "ARmax1", "ARmax10", "ARmax100", "ARlarge"):
        assert stats[name] == pytest.approx(1.0, abs=1e-9)
    for name in ("APsmall", "APmedium", "ARsmall", "ARmedium"):
        assert stats[name] == -1.0  # no small / medium objects in the ground truth


@pytest.mark.parametrize(
    ("dx_px", "expected_ap"),
    [
        (0, 1.0),  # IoU 1
        (10, 0.7),  # IoU 90/110 = 0.818: passes 0.50..0.80 = 7 of 10 thresholds
        (20, 0.4),  # IoU 80/120 = 0.667: passes 0.50..0.65 = 4 of 10
        (40, 0.0),  # IoU 60/140 = 0.429: passes none
    ],
)
def test_shifted_box_ap_is_fraction_of_thresholds(dx_px: int, expected_ap: float) -> None:
    dx = dx_px / 200
    stats = _single(_det([[0.1, 0.1 + dx, 0.6, 0.6 + dx]], [1], [0.9]))
    # one object, one detection: precision is 1 at every threshold it passes, else 0
    assert stats["AP"] == pytest.approx(expected_ap, abs=1e-9)
    assert stats["ARmax100"] == pytest.approx(expected_ap, abs=1e-9)
    assert stats["AP50"] == pytest.approx(1.0 if dx_px < 40 else 0.0, abs=1e-9)
    assert stats["AP75"] == pytest.approx(1.0 if dx_px < 20 else 0.0, abs=1e-9)


def test_wrong_class_scores_zero() -> None:
    stats = _single(_det([PERFECT], [2], [0.9]))
    assert stats["AP"] == 0.0 and stats["AP50"] == 0.0 and stats["ARmax100"] == 0.0


def test_image_without_detections_lowers_recall() -> None:
    gt = _gt(
        [(1, 200, 200), (2, 200, 200)],
        [_ann(1, 1, 1, 20, 20, 100, 100), _ann(2, 2, 1, 20, 20, 100, 100)],
    )
    acc = ResultsAccumulator()
    acc.add(1, 200, 200, _det([PERFECT], [1], [0.9]))  # image 2 was run but found nothing
    stats = evaluate_bbox(gt, acc, [1, 2])
    # recall 1/2 at every IoU threshold; precision 1 up to recall 0.5: 51 of the 101
    # recall thresholds 0.00..0.50, so AP = 51/101
    assert stats["ARmax100"] == pytest.approx(0.5, abs=1e-9)
    assert stats["AP"] == pytest.approx(51 / 101, abs=1e-9)
    # restricted to image 1 only, the miss on image 2 does not count
    assert evaluate_bbox(gt, acc, [1])["AP"] == pytest.approx(1.0, abs=1e-9)


def test_more_than_100_detections_per_image_are_capped() -> None:
    # 100 false positives scored above the true one: the true one is cut by maxDets=100
    fps = [[0.8, 0.8, 0.9, 0.9]] * 100
    det = _det([*fps, PERFECT], [1] * 101, [0.9] * 100 + [0.1])
    stats = _single(det)
    assert stats["ARmax100"] == 0.0 and stats["AP"] == 0.0


# ---------------------------------------------------------------- zero detections


def _three_sizes_gt() -> dict[str, Any]:
    anns = [
        _ann(1, 1, 1, 0, 0, 10, 10),  # small
        _ann(2, 1, 2, 20, 20, 50, 50),  # medium
        _ann(3, 2, 1, 0, 0, 200, 200),  # large
    ]
    return _gt([(1, 300, 300), (2, 300, 300)], anns)


@pytest.mark.parametrize("empty", [[], ResultsAccumulator()])
def test_zero_detections_give_zero(empty: list[dict[str, Any]] | ResultsAccumulator) -> None:
    stats = evaluate_bbox(_three_sizes_gt(), empty, [1, 2])
    assert stats == dict.fromkeys(STAT_NAMES, 0.0)


def test_zero_detections_keep_minus_one_where_coco_has_none() -> None:
    stats = evaluate_bbox(ONE_GT, [], [1])
    assert stats["AP"] == 0.0 and stats["ARmax1"] == 0.0 and stats["APlarge"] == 0.0
    assert stats["APsmall"] == -1.0 and stats["ARmedium"] == -1.0


# ---------------------------------------------------------------- parity with pycocotools


def _random_case(
    seed: int, n_images: int = 50, ncat: int = 5
) -> tuple[dict[str, Any], ResultsAccumulator]:
    rng = np.random.default_rng(seed)
    images: list[tuple[int, int, int]] = []
    anns: list[dict[str, Any]] = []
    acc = ResultsAccumulator()
    for image_id in range(1, n_images + 1):
        w, h = int(rng.integers(100, 700)), int(rng.integers(100, 700))
        images.append((image_id, w, h))
        boxes, classes = [], []
        for _ in range(int(rng.integers(0, 9))):
            bw, bh = rng.uniform(3, w * 0.6), rng.uniform(3, h * 0.6)
            x, y = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
            cat = int(rng.integers(1, ncat + 1))
            crowd = int(rng.random() < 0.08)
            anns.append(_ann(len(anns) + 1, image_id, cat, x, y, bw, bh, iscrowd=crowd))
            for _ in range(int(rng.integers(0, 4))):  # jittered hits, some with the wrong class
                jx, jy, jw, jh = rng.normal(0, 0.12, 4)
                x0, y0 = (x + jx * bw) / w, (y + jy * bh) / h
                boxes.append([y0, x0, y0 + bh * (1 + jh) / h, x0 + bw * (1 + jw) / w])
                classes.append(cat if rng.random() < 0.85 else int(rng.integers(1, ncat + 1)))
        n_fp = int(rng.integers(90, 140)) if rng.random() < 0.15 else int(rng.integers(0, 12))
        for _ in range(n_fp):
            y0, x0 = rng.uniform(-0.05, 0.9, 2)
            boxes.append([y0, x0, y0 + rng.uniform(0.0, 0.5), x0 + rng.uniform(0.0, 0.5)])
            classes.append(int(rng.integers(1, ncat + 1)))
        n_hits = len(boxes) - n_fp  # hits score higher on average, so AP is not trivial
        scores = np.concatenate([rng.uniform(0.2, 1.0, n_hits), rng.uniform(0.0, 0.8, n_fp)])
        if image_id % 3 == 0:
            scores = np.round(scores, 1)  # ties, across and within images
        if image_id % 7 != 0:  # every 7th image: run, nothing found
            acc.add(image_id, w, h, _det(boxes, classes, scores.tolist()))
    # image n+1 has no ground truth but gets detections
    images.append((n_images + 1, 320, 240))
    acc.add(n_images + 1, 320, 240, _det([[0.1, 0.1, 0.5, 0.5]], [1], [0.99]))
    return _gt(images, anns, ncat), acc


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_identical_to_pycocotools_on_random_case(seed: int) -> None:
    gt, acc = _random_case(seed)
    ids = list(range(1, 52)) if seed != 1 else list(range(1, 40))
    ours = evaluate_bbox(gt, acc, ids)
    ref = _pycoco_stats(gt, acc.to_json_list(), ids)
    assert list(ours) == list(STAT_NAMES)
    for name in STAT_NAMES:
        assert ours[name] == pytest.approx(ref[name], abs=1e-9), name
    assert 0.05 < ours["AP"] < 0.95  # a non-trivial case
    # to_array() is a valid loadRes input that evaluates the same
    ref_arr = _pycoco_stats(gt, acc.to_array(), ids)
    assert ref_arr == pytest.approx(ref, abs=1e-12)


def test_zero_detections_match_pycocotools_empty_results() -> None:
    gt = _three_sizes_gt()
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = PyCOCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        coco_dt = PyCOCO()  # pycocotools' loadRes([]) raises IndexError: build it by hand
        coco_dt.dataset = {
            "images": gt["images"],
            "annotations": [],
            "categories": gt["categories"],
        }
        coco_dt.createIndex()
        ev = PyCOCOeval(coco_gt, coco_dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert evaluate_bbox(gt, [], [1, 2]) == dict(zip(STAT_NAMES, map(float, ev.stats), strict=True))


# ---------------------------------------------------------------- inputs, reuse, quietness


def test_ground_truth_from_file_is_reusable(tmp_path: Path) -> None:
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(ONE_GT))
    acc = ResultsAccumulator()
    acc.add(1, 200, 200, _det([PERFECT], [1], [0.9]))
    coco = load_ground_truth(path)
    first = evaluate_bbox(coco, acc, [1])
    assert evaluate_bbox(coco, [], [1])["AP"] == 0.0
    assert evaluate_bbox(coco, acc, [1]) == first
    assert evaluate_bbox(str(path), acc, [1]) == first
    assert evaluate_bbox(path, acc.to_json_list(), [1]) == first


def test_inputs_are_not_mutated() -> None:
    gt = copy.deepcopy(ONE_GT)
    results = _results(1, 200, 200, _det([PERFECT], [1], [0.9]))
    before_gt, before_res = copy.deepcopy(gt), copy.deepcopy(results)
    evaluate_bbox(gt, results, [1])
    assert gt == before_gt and results == before_res


def test_unknown_image_ids_raise() -> None:
    with pytest.raises(ValueError, match=r"image_ids .*\[9\]"):
        evaluate_bbox(ONE_GT, [], [1, 9])
    with pytest.raises(ValueError, match=r"results .*\[8\]"):
        evaluate_bbox(ONE_GT, _results(8, 10, 10, _det([PERFECT], [1], [0.5])), [1])
    with pytest.raises(ValueError, match="empty"):
        evaluate_bbox(ONE_GT, [], [])


def test_nothing_printed(capfd: pytest.CaptureFixture[str]) -> None:
    gt, acc = _random_case(3, n_images=5)
    evaluate_bbox(gt, acc, [1, 2, 3])
    evaluate_bbox(gt, [], [1, 2, 3])
    out, err = capfd.readouterr()
    assert out == "" and err == ""


# ---------------------------------------------------------------- the public script's conversion


def _public_script_boxes(image_w: int, image_h: int, boxes: np.ndarray) -> list[list[int]]:
    """The public table's script, written out per box as it did it: float32 coordinates times
    the image size, no clipping, int() truncation."""
    out = []
    for ymin, xmin, ymax, xmax in boxes.astype(np.float32):
        out.append([int(xmin * image_w), int(ymin * image_h), int((xmax - xmin) * image_w),
                    int((ymax - ymin) * image_h)])
    return out


def test_seed_conversion_is_the_public_scripts_float32_unclipped_truncation() -> None:
    boxes = np.array([[0.1, 0.7, 0.5, 0.9],     # 0.7 * 640: 448 in float32, 447.99999 in float64
                      [-0.05, -0.1, 0.3, 1.2],  # leaves the image: not clipped
                      [0.2, 0.6, 0.1, 0.4],     # inverted: negative width and height
                      [0.123457, 0.333333, 0.987654, 0.999999]], dtype=np.float32)
    det = Detections(boxes=boxes, scores=np.array([0.9, 0.8, 0.7, 0.6], np.float32),
                     classes=np.array([1, 2, 3, 4]))
    seed = ResultsAccumulator(truncate=True)
    seed.add(7, 640, 427, det)
    got = [r["bbox"] for r in seed.to_json_list()]
    assert got == _public_script_boxes(640, 427, boxes)
    assert got[0][0] == 448 and got[1][0] == -64 and got[2][2] < 0
    native = ResultsAccumulator()
    native.add(7, 640, 427, det)
    assert [r["bbox"] for r in native.to_json_list()][1][0] == 0.0  # native clips to the image
    assert int(np.float64(np.float32(0.7)) * 640) == 447  # what float64 would have truncated to


def test_seed_conversion_refuses_infinite_boxes() -> None:
    det = Detections(boxes=np.array([[0.0, 0.0, np.inf, 0.5]], np.float32),
                     scores=np.array([0.5], np.float32), classes=np.array([1]))
    with pytest.raises(ValueError, match="infinite.*input_policy='seed'"):
        ResultsAccumulator(truncate=True).add(1, 10, 10, det)
