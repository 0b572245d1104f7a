"""COCO evaluation at full scale: the project's evaluation against plain pycocotools.

A synthetic case the size of COCO 2017 val (5,000 images of COCO's sizes, about 36,800 ground-truth
boxes over COCO's 80 category ids with their gaps, 1% crowd, 100 detections per image: 500,000)
is evaluated end to end from per-image ``Detections`` (normalized boxes), ground truth read from
the same JSON file, by

- the project: ``runner.evaluate.ResultsAccumulator.add`` per image + ``evaluate_bbox``;
- plain pycocotools: the result dicts built per detection the usual way, ``COCO(file)``,
  ``loadRes``, ``COCOeval(..., "bbox")`` evaluate / accumulate / summarize;

in alternating order (AB BA). Checks: the 12 stats are identical (to 1e-9) in every round and the
project is at least 5x faster; also that the project's evaluation in passes over category groups
gives a single pass's stats, and that its streamed detections.json has the usual bytes.
``--quick``: 500 images, same checks.

    python benchmarks/coco_eval.py [--quick]
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from benchmarks import common  # noqa: E402

MIN_SPEEDUP = 5.0
TOLERANCE = 1e-9


def project(case: common.CocoCase, gt_file: Path, ids: list[int]) -> tuple[np.ndarray, dict]:
    from runner.evaluate import STAT_NAMES, ResultsAccumulator, evaluate_bbox

    times: dict[str, float] = {}
    start = time.perf_counter()
    acc = ResultsAccumulator()
    for (image_id, width, height), det in zip(case.sizes, case.detections, strict=True):
        acc.add(image_id, width, height, det)
    times["convert_s"] = time.perf_counter() - start
    stats = evaluate_bbox(gt_file, acc, ids)
    times["total_s"] = time.perf_counter() - start
    times["evaluate_s"] = times["total_s"] - times["convert_s"]
    return np.array([stats[k] for k in STAT_NAMES]), times


def plain_pycocotools(case: common.CocoCase, gt_file: Path,
                      ids: list[int]) -> tuple[np.ndarray, dict]:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    times: dict[str, float] = {}
    start = time.perf_counter()
    results = []
    for (image_id, width, height), det in zip(case.sizes, case.detections, strict=True):
        for (ymin, xmin, ymax, xmax), category, score in zip(
                det.boxes.tolist(), det.classes.tolist(), det.scores.tolist(), strict=True):
            results.append({"image_id": image_id, "category_id": category,
                            "bbox": [xmin * width, ymin * height, (xmax - xmin) * width,
                                     (ymax - ymin) * height],
                            "score": score})
    times["convert_s"] = time.perf_counter() - start
    with common.quiet_stdout():
        coco_gt = COCO(str(gt_file))
        coco_dt = coco_gt.loadRes(results)
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.params.imgIds = ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    times["total_s"] = time.perf_counter() - start
    times["evaluate_s"] = times["total_s"] - times["convert_s"]
    return np.asarray(ev.stats[:12], dtype=np.float64), times


def grouped_checks(report: common.Report, case: common.CocoCase, ids: list[int],
                   stats: np.ndarray) -> None:
    """The project's own invariants at this size: evaluation in passes over category groups
    (``MAX_DETECTIONS_PER_PASS``) gives the stats of a single pass, and
    ``ResultsAccumulator.write_json`` writes the bytes of ``json.dumps(to_json_list())``."""
    from runner import evaluate

    default = evaluate.MAX_DETECTIONS_PER_PASS
    other = 10**12 if case.num_detections > default else max(1, case.num_detections // 10)
    with tempfile.TemporaryDirectory(prefix="detbench-coco-") as tmp:
        gt_file = Path(tmp) / "instances_val.json"
        gt_file.write_text(json.dumps(case.gt))
        evaluate.MAX_DETECTIONS_PER_PASS = other
        try:
            again, _ = project(case, gt_file, ids)
        finally:
            evaluate.MAX_DETECTIONS_PER_PASS = default
        acc = evaluate.ResultsAccumulator()
        for (image_id, width, height), det in zip(case.sizes, case.detections, strict=True):
            acc.add(image_id, width, height, det)
        streamed = Path(tmp) / "detections.json"
        acc.write_json(streamed)
        same_bytes = streamed.read_bytes() == json.dumps(acc.to_json_list()).encode()
    passes = {n: len(evaluate.category_groups(_counts(case), n)) for n in (default, other)}
    diff = float(np.max(np.abs(again - stats)))
    report.check("passes_same_stats", diff <= 1e-12,
                 f"{passes[default]} pass(es) of <= {default} detections and {passes[other]} of "
                 f"<= {other} give stats within {diff:.3g}")
    report.check("streamed_json_same_bytes", same_bytes,
                 "ResultsAccumulator.write_json writes json.dumps(to_json_list())'s bytes")


def _counts(case: common.CocoCase) -> list[int]:
    classes = np.concatenate([d.classes for d in case.detections])
    return [int((classes == c).sum()) for c in common.COCO_CATEGORY_IDS]


def main(argv: Sequence[str] | None = None) -> int:
    args = common.arguments(__doc__.splitlines()[0], argv)
    report = common.Report("coco_eval", args.quick)
    common.header(report, "project evaluation vs plain pycocotools, interleaved")
    num_images = 500 if args.quick else 5000
    start = time.perf_counter()
    case = common.synthetic_coco(num_images, seed=0)
    ids = [s[0] for s in case.sizes]
    boxes = len(case.gt["annotations"])
    crowd = sum(a["iscrowd"] for a in case.gt["annotations"])
    report.info(f"case: {num_images} images, {boxes} ground-truth boxes ({crowd} crowd), "
                f"{len(case.gt['categories'])} categories (ids 1..90 with COCO's gaps), "
                f"{case.num_detections} detections; generated in "
                f"{time.perf_counter() - start:.1f} s")
    with tempfile.TemporaryDirectory(prefix="detbench-coco-") as tmp:
        gt_file = Path(tmp) / "instances_val.json"
        gt_file.write_text(json.dumps(case.gt))
        got = common.interleave({"project": lambda _: project(case, gt_file, ids),
                                 "pycocotools": lambda _: plain_pycocotools(case, gt_file, ids)},
                                rounds=2)
    for name, runs in got.items():
        for r, (_, t) in enumerate(runs):
            report.info(f"{name} round {r + 1}: convert {t['convert_s']:.2f} s, load + evaluate "
                        f"{t['evaluate_s']:.2f} s, total {t['total_s']:.2f} s")
    total = {name: sum(t["total_s"] for _, t in runs) for name, runs in got.items()}
    speedup = total["pycocotools"] / total["project"]
    diffs = [float(np.max(np.abs(a[0] - b[0])))
             for a in got["project"] for b in got["pycocotools"]]
    stats = got["project"][0][0]
    report.info("stats: " + ", ".join(f"{v:.4f}" for v in stats))
    report.figure("speedup", speedup, f"(pycocotools / project end-to-end time: "
                  f"{total['pycocotools'] / 2:.2f} s / {total['project'] / 2:.2f} s per round)")
    report.figure("max_abs_stat_difference", max(diffs))
    report.check("same_stats", max(diffs) <= TOLERANCE and bool(np.all(stats > 0)),
                 f"the 12 stats agree within {max(diffs):.3g} <= {TOLERANCE:g} in every round "
                 "(and none is 0 or -1)")
    report.target("speedup", speedup >= MIN_SPEEDUP,
                 f"project {speedup:.2f}x faster than pycocotools >= {MIN_SPEEDUP:g}x")
    grouped_checks(report, case, ids, stats)
    report.check("case_size", case.num_detections == 100 * num_images and
                 6.5 * num_images <= boxes <= 8.5 * num_images,
                 f"{case.num_detections} detections (100 per image), {boxes} boxes "
                 f"({boxes / num_images:.2f} per image; COCO val: 7.36)")
    return report.finish(args.json)


if __name__ == "__main__":
    sys.exit(main())
