"""Which images calibrate INT8 (TF-TRT, LiteRT, ...): by default a deterministic sample disjoint
from the images being scored (MLPerf's rule), or, to reproduce the public table, the scored images
themselves."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from runner.config import ConfigError
from runner.data import ImageRecord


def select(candidates: Sequence[ImageRecord], scored: Sequence[ImageRecord], count: int,
           source: str = "disjoint", seed: int = 0,
           config_path: str = "precision.trt") -> list[ImageRecord]:
    """``count`` calibration images, sorted by id; the same inputs always give the same set.

    ``disjoint``: sampled (seeded) from ``candidates`` minus every scored image id.
    ``seed``: the first ``count`` scored images, as the public table calibrated.
    ``config_path``: the backend's config section, named in error messages. ``count`` > 0 and
    ``source`` in ``runner.backends.CALIBRATION_SOURCES`` are the backend's ``validate()``'s to
    check (once, before any run); what only the data can tell (too few disjoint images) is checked
    here.
    """
    if source == "seed":
        pool = sorted(scored, key=lambda r: r.image_id)
        return pool[:count]
    scored_ids = {r.image_id for r in scored}
    pool = sorted((r for r in candidates if r.image_id not in scored_ids),
                  key=lambda r: r.image_id)
    if len(pool) < count:
        raise ConfigError(
            f"only {len(pool)} images are disjoint from the {len(scored_ids)} scored ones, but "
            f"{config_path}.calibration_images={count}: score fewer images (dataset.num_images), "
            f"calibrate on fewer, or set {config_path}.calibration_source=seed (the public "
            "table's choice: calibrate on the scored images)")
    picks = np.random.default_rng(seed).choice(len(pool), size=count, replace=False)
    return [pool[i] for i in sorted(picks.tolist())]
