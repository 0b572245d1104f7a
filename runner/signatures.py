"""Output adapters: everything model-specific about outputs stops here. Each adapter turns one
model call's materialized outputs into :class:`~runner.detections.Detections`."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from runner.detections import Detections

Outputs = Mapping[str, np.ndarray]
Adapter = Callable[[Outputs], Detections]

ZOO_KEYS = ("detection_boxes", "detection_classes", "detection_scores", "num_detections")


def zoo_outputs(outputs: Outputs) -> Detections:
    """The TF2 Detection Model Zoo contract (exporter_lib_v2): batch 1, the first
    ``num_detections`` rows valid, normalized yx boxes, 1-based label-map ids == COCO ids."""
    missing = [key for key in ZOO_KEYS if key not in outputs]
    if missing:
        raise ValueError(f"model outputs lack {missing}; got {sorted(outputs)} "
                         f"(expected the zoo contract: {list(ZOO_KEYS)})")
    boxes = np.asarray(outputs["detection_boxes"])
    if boxes.ndim != 3 or boxes.shape[0] != 1 or boxes.shape[2] != 4:
        raise ValueError(f"detection_boxes has shape {boxes.shape}; expected [1, N, 4]")
    n = int(np.asarray(outputs["num_detections"]).reshape(-1)[0])
    n = max(0, min(n, boxes.shape[1]))
    return Detections(
        boxes=boxes[0, :n].astype(np.float32, copy=False),
        classes=np.asarray(outputs["detection_classes"])[0, :n].astype(np.int64),
        scores=np.asarray(outputs["detection_scores"])[0, :n].astype(np.float32, copy=False),
    )


ADAPTERS: dict[str, Adapter] = {"zoo": zoo_outputs}


def adapter(name: str) -> Adapter:
    try:
        return ADAPTERS[name]
    except KeyError:
        raise ValueError(f"unknown output adapter {name!r}; valid: {sorted(ADAPTERS)}") from None
