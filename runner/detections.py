"""The one detection type every model is adapted to (see ``signatures.py``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Detections:
    """Valid detections of one image.

    ``boxes`` are normalized ``[ymin, xmin, ymax, xmax]`` in ``[0, 1]`` relative to the image the
    model was given (which covers the whole original image), ``classes`` are COCO category ids,
    ``scores`` are confidences. All arrays have the same first dimension N.
    """

    boxes: np.ndarray  # float32 [N, 4]
    classes: np.ndarray  # int64 [N]
    scores: np.ndarray  # float32 [N]
    keypoints: np.ndarray | None = None  # float32 [N, K, 2] normalized (y, x)
    keypoint_scores: np.ndarray | None = None  # float32 [N, K]
    masks: np.ndarray | None = None  # float32 [N, h, w] relative to each box, values in [0, 1]

    def __post_init__(self) -> None:
        n = len(self.scores)
        if self.boxes.shape != (n, 4) or self.classes.shape != (n,):
            raise ValueError(
                f"inconsistent detections: boxes {self.boxes.shape}, classes {self.classes.shape}, "
                f"scores {self.scores.shape}"
            )
        for name in ("keypoints", "keypoint_scores", "masks"):
            value = getattr(self, name)
            if value is not None and len(value) != n:
                raise ValueError(f"inconsistent detections: {name} {value.shape} for {n} boxes")

    def __len__(self) -> int:
        return len(self.scores)
