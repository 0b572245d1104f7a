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


@dataclass(frozen=True)
class Frame:
    """Where the pixels of the tensor fed to the model come from (the hand-off from input
    preparation in ``data.py`` to the output adapters in ``signatures.py``).

    The original image of ``original`` = (height, width) was resized by ``scale`` = (sy, sx) and
    placed at ``offset`` = (oy, ox) in a tensor of ``fed`` = (height, width); the rest of the
    tensor is padding. A pixel coordinate p of the fed tensor is (p - offset) / scale in the
    original image.
    """

    original: tuple[int, int]
    fed: tuple[int, int]
    scale: tuple[float, float] = (1.0, 1.0)
    offset: tuple[float, float] = (0.0, 0.0)

    @classmethod
    def identity(cls, height: int, width: int) -> Frame:
        """The original image fed as it is."""
        return cls((height, width), (height, width))

    def to_original(self, points_yx: np.ndarray) -> np.ndarray:
        """Pixel (y, x) points of the fed tensor -> pixel points of the original image."""
        offset = np.asarray(self.offset, np.float64)
        return (points_yx - offset) / np.asarray(self.scale, np.float64)

    @property
    def covers(self) -> bool:
        """The fed tensor shows the whole original image and nothing else (no padding)."""
        return self.offset == (0.0, 0.0) and self.scale == (
            self.fed[0] / self.original[0], self.fed[1] / self.original[1])
