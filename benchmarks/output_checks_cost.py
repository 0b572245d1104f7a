"""Cost of runner.checks: reading one call's outputs (100 rows, the zoo contract), reading plus
the tally every call gets after the chunk's timed calls, and the search over other readings
(``examine``) that runs once on the first 8 images before timing.

    python benchmarks/output_checks_cost.py
"""

from __future__ import annotations

import time

import numpy as np

from runner import checks, signatures
from runner.detections import Frame


def _outputs(rng: np.random.Generator) -> dict[str, np.ndarray]:
    corners = np.sort(rng.uniform(0, 1, (1, 100, 2, 2)), axis=2)
    boxes = corners.transpose(0, 1, 3, 2).reshape(1, 100, 4).astype(np.float32)
    return {"detection_boxes": boxes,
            "detection_classes": rng.integers(1, 91, (1, 100)).astype(np.float32),
            "detection_scores": np.sort(rng.uniform(0, 1, (1, 100)))[:, ::-1].astype(np.float32),
            "num_detections": np.array([100.0], np.float32)}


def main() -> None:
    rng = np.random.default_rng(0)
    outs = [_outputs(rng) for _ in range(checks.FIRST_CALLS)]
    frames = [Frame.identity(480, 640)] * len(outs)
    truth = checks.Truth(np.array([1, 2, 3]), np.array(
        [[0.1, 0.1, 0.5, 0.5], [0.2, 0.3, 0.6, 0.9], [0.5, 0.5, 0.9, 0.9]]))
    categories = frozenset(range(1, 91))
    reader = signatures.adapter("zoo")
    start = time.perf_counter()
    checks.examine(reader, outs, frames, [truth] * len(outs), categories)
    examine_s = time.perf_counter() - start
    guard = checks.OutputGuard(reader, categories, {})
    n = 500
    start = time.perf_counter()
    for _ in range(n):
        reader(outs[0], frames[0])
    read_ms = (time.perf_counter() - start) / n * 1000
    start = time.perf_counter()
    for _ in range(n):
        guard(outs[0], frames[0])
    guard_ms = (time.perf_counter() - start) / n * 1000
    variants = len(signatures.variants(reader.spec_for(outs[0]), outs[0]))
    print(f"read {read_ms:.3f} ms/call, read + tally {guard_ms:.3f} ms/call (after timing); "
          f"examine {len(outs)} images x {variants} readings {examine_s:.2f} s (before timing)")


if __name__ == "__main__":
    main()
