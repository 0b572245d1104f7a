"""Output adapters: everything model-specific about outputs stops here. Each adapter turns one
model call's materialized outputs into :class:`~runner.detections.Detections` (normalized yx
boxes, COCO category ids, scores, optional keypoints and masks).

- ``zoo``, ``zoo_keypoints``, ``zoo_masks``: the exporter_lib_v2 contract (shared/reference/zoo.md).
- ``centernet_tflite``: the two CenterNet MobileNetV2 archives, whose signature returns generic
  ``output_N`` keys in the reversed order of (boxes, classes, scores, num_detections[, keypoints,
  keypoint_scores]) with 0-based classes. Tensors are matched by shape where that is unambiguous.
- ``custom``: any SavedModel, with output keys, box format and class offset from config.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from runner.detections import Detections

Outputs = Mapping[str, np.ndarray]
#: outputs, (height, width) of the tensor fed to the model -> detections
Adapter = Callable[[Outputs, tuple[int, int]], Detections]

ROLES = ("boxes", "classes", "scores", "num_detections")
ZOO_KEYS = {"boxes": "detection_boxes", "classes": "detection_classes",
            "scores": "detection_scores", "num_detections": "num_detections"}
BOX_FORMATS = ("normalized", "pixels")
BOX_ORDERS = ("yx", "xy")


@dataclass(frozen=True)
class OutputSpec:
    """How to read a model's outputs (the ``custom`` adapter's settings)."""

    keys: Mapping[str, str]
    box_format: str = "normalized"
    box_order: str = "yx"
    class_offset: int = 0
    keypoints_key: str | None = None
    keypoint_scores_key: str | None = None
    masks_key: str | None = None


def _get(outputs: Outputs, key: str, role: str) -> np.ndarray:
    if key not in outputs:
        raise ValueError(f"model outputs lack {key!r} ({role}); got {sorted(outputs)}")
    return np.asarray(outputs[key])


def _count(num: np.ndarray, available: int) -> int:
    n = int(np.asarray(num).reshape(-1)[0]) if np.asarray(num).size else available
    return max(0, min(n, available))


def read(outputs: Outputs, spec: OutputSpec, input_hw: tuple[int, int]) -> Detections:
    boxes = _get(outputs, spec.keys["boxes"], "boxes")
    if boxes.ndim != 3 or boxes.shape[0] != 1 or boxes.shape[2] != 4:
        raise ValueError(f"{spec.keys['boxes']} has shape {boxes.shape}; expected [1, N, 4]")
    total = boxes.shape[1]
    num_key = spec.keys.get("num_detections")
    n = _count(_get(outputs, num_key, "num_detections"), total) if num_key else total
    b = boxes[0, :n].astype(np.float32)
    if spec.box_order == "xy":
        b = b[:, [1, 0, 3, 2]]
    if spec.box_format == "pixels":
        h, w = input_hw
        b = (b / np.array([h, w, h, w], np.float32)).astype(np.float32)
    classes = _get(outputs, spec.keys["classes"], "classes")[0, :n]
    extra: dict[str, np.ndarray | None] = {}
    for field, key in (("keypoints", spec.keypoints_key),
                       ("keypoint_scores", spec.keypoint_scores_key), ("masks", spec.masks_key)):
        extra[field] = _get(outputs, key, field)[0, :n].astype(np.float32) if key else None
    return Detections(
        boxes=b,
        classes=np.rint(classes).astype(np.int64) + spec.class_offset,
        scores=_get(outputs, spec.keys["scores"], "scores")[0, :n].astype(np.float32),
        **extra,
    )


ZOO = OutputSpec(keys=ZOO_KEYS)
ZOO_KEYPOINTS = OutputSpec(keys=ZOO_KEYS, keypoints_key="detection_keypoints",
                           keypoint_scores_key="detection_keypoint_scores")
ZOO_MASKS = OutputSpec(keys=ZOO_KEYS, masks_key="detection_masks")


def zoo_outputs(outputs: Outputs, input_hw: tuple[int, int] = (1, 1)) -> Detections:
    """The TF2 Detection Model Zoo contract (exporter_lib_v2): batch 1, the first
    ``num_detections`` rows valid, normalized yx boxes, 1-based label-map ids == COCO ids."""
    return read(outputs, ZOO, input_hw)


def centernet_tflite_spec(outputs: Outputs) -> OutputSpec:
    """Map ``output_N`` keys to roles: by shape where unique, else by the exporter's reversed
    order (scores come before classes), checked against integrality of the class values."""
    keys = sorted((k for k in outputs if re.fullmatch(r"output_\d+", k)),
                  key=lambda k: int(k.split("_")[1]))
    shapes = {k: np.asarray(outputs[k]).shape for k in keys}
    boxes = [k for k in keys if len(shapes[k]) == 3 and shapes[k][-1] == 4]
    nums = [k for k in keys if len(shapes[k]) == 1]
    kps = [k for k in keys if len(shapes[k]) == 4 and shapes[k][-1] == 2]
    pairs = [k for k in keys if len(shapes[k]) == 2]
    kp_scores = [k for k in keys if len(shapes[k]) == 3 and shapes[k][-1] != 4]
    if len(boxes) != 1 or len(nums) != 1 or len(pairs) != 2:
        raise ValueError(f"cannot map CenterNet outputs by shape: {shapes}")
    scores, classes = pairs  # reversed export order: scores precede classes
    values = {k: np.asarray(outputs[k]) for k in pairs}
    if not np.allclose(values[classes], np.rint(values[classes])) and np.allclose(
            values[scores], np.rint(values[scores])):
        scores, classes = classes, scores
    return OutputSpec(
        keys={"boxes": boxes[0], "classes": classes, "scores": scores, "num_detections": nums[0]},
        class_offset=1,
        keypoints_key=kps[0] if kps else None,
        keypoint_scores_key=kp_scores[0] if kp_scores else None,
    )


def centernet_tflite(outputs: Outputs, input_hw: tuple[int, int]) -> Detections:
    return read(outputs, centernet_tflite_spec(outputs), input_hw)


ADAPTERS: dict[str, Adapter] = {
    "zoo": zoo_outputs,
    "zoo_keypoints": lambda out, hw: read(out, ZOO_KEYPOINTS, hw),
    "zoo_masks": lambda out, hw: read(out, ZOO_MASKS, hw),
    "centernet_tflite": centernet_tflite,
}
ADAPTER_NAMES = (*ADAPTERS, "custom")


def adapter(name: str, custom: OutputSpec | None = None) -> Adapter:
    if name == "custom":
        if custom is None:
            raise ValueError("the custom adapter needs an OutputSpec")
        spec = custom
        return lambda out, hw: read(out, spec, hw)
    try:
        return ADAPTERS[name]
    except KeyError:
        raise ValueError(f"unknown output adapter {name!r}; valid: {list(ADAPTER_NAMES)}") from None
