"""A prototype of two changes proposed for ``runner/worker.py`` (not part of the runner): the
worker entry point (``python -m runner.worker JOB_DIR``) with

- ``stream``: ``detections.json`` written by ``ResultsAccumulator.write_json`` (the same bytes,
  50,000 detections at a time) instead of ``json.dumps(results.boxes.to_json_list())``, which
  holds every detection as a dict plus the whole JSON text at once (about 730 bytes per detection:
  365 MB at COCO val's 500,000);
- ``release``: each chunk's tensors released after its timing; ``on_output`` binds ``tensors`` as a
  default argument, so the previous chunk stays referenced while the next one is prepared (two
  chunks in memory: 236 MB more at chunk_size 256 of 640x480 images).

    python -m benchmarks.proposed_worker JOB_DIR [stream] [release]

Used by ``benchmarks/memory.py --prototype`` to measure what the changes would save.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def _patch_stream() -> None:
    """``runner.worker.evaluate`` as it is, but for the line that writes detections.json."""
    from runner import worker

    def evaluate(spec: Any, measured: Mapping[str, Any], job_dir: Path) -> dict[str, float]:
        import time

        from runner import evaluate_extra
        from runner.evaluate import evaluate_bbox
        from runner.stats import summarize

        cfg, dataset = spec.job_config(), spec.dataset_obj()
        ids = [r.image_id for r in dataset.images]
        results = measured["results"]
        results.boxes.write_json(job_dir / "detections.json")  # the proposed change
        stats = summarize(measured["latencies"], cfg.benchmark.percentile_method)
        start = time.perf_counter()
        metrics = {f"bbox.{k}": v for k, v in evaluate_bbox(dataset.annotations, results.boxes,
                                                              ids).items()}
        if results.masks:
            (job_dir / "masks.json").write_text(json.dumps(results.masks))
            segm = evaluate_extra.evaluate(dataset.annotations, results.masks, ids, "segm")
            metrics |= {f"segm.{k}": v for k, v in segm.items()}
        if results.keypoints and spec.keypoint_annotations:
            (job_dir / "keypoints.json").write_text(json.dumps(results.keypoints))
            kp = evaluate_extra.evaluate(spec.keypoint_annotations, results.keypoints, ids,
                                         "keypoints")
            metrics |= {f"keypoints.{k}": v for k, v in kp.items()}
        timings = {**measured["timings"], "evaluate_s": time.perf_counter() - start}
        return {**stats.as_metrics(), **metrics, **measured["telemetry"],
                **{f"time.{k}": v for k, v in timings.items()},
                "detections": float(len(results.boxes))}

    worker.evaluate = evaluate


def _patch_release() -> None:
    from runner import measure

    original = measure.time_calls

    def time_calls(predict: Callable[[Any], Mapping[str, np.ndarray]], inputs: Sequence[Any],
                   on_output: Callable[[int, Mapping[str, np.ndarray]], None] | None = None,
                   **kwargs: Any) -> np.ndarray:
        try:
            return original(predict, inputs, on_output, **kwargs)
        finally:  # what a fixed worker does: nothing keeps the chunk once it is timed
            if on_output is not None and getattr(on_output, "__defaults__", None):
                on_output.__defaults__ = tuple(None for _ in on_output.__defaults__ or ())

    measure.time_calls = time_calls  # type: ignore[assignment]


def main(argv: Sequence[str]) -> int:
    from runner import worker

    if "stream" in argv:
        _patch_stream()
    if "release" in argv:
        _patch_release()
    return worker.main([argv[0]])


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.exit(main(sys.argv[1:]))
