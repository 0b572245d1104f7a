"""Output adapters: everything model-specific about outputs stops here. Each adapter turns one
model call's materialized outputs into :class:`~runner.detections.Detections` (boxes normalized
[ymin, xmin, ymax, xmax] relative to the *original* image, COCO category ids, scores, optional
keypoints and masks).

- ``zoo``, ``zoo_keypoints``, ``zoo_masks``: the exporter_lib_v2 contract
  (``../shared/reference/zoo.md``, beside the checkout).
- ``numbered_outputs``: a SavedModel whose signature returns generic ``output_0``..``output_N``
  keys in the reversed order of (boxes, classes, scores, num_detections[, keypoints,
  keypoint_scores]) with 0-based classes: the two CenterNet MobileNetV2 zoo archives, exported
  through the TFLite-graph path but still run as SavedModels. Tensors are matched by shape where
  that is unambiguous. Its old name ``centernet_tflite`` (which read like a TFLite runtime) is
  still accepted (:data:`ADAPTER_ALIASES`).
- ``custom``: any SavedModel, with output keys, box format, box frame, class offset / map and
  padding rules from config (``model.*``); the conventions of other exporters are expressed here:

  ============== ===============================================================================
  box_format     ``rel_*`` relative to the frame's size, the others in its pixels (KerasCV names):
                 ``yxyx`` ``xyxy`` ``xywh`` (corner + size) ``center_xywh``; legacy ``normalized``
                 / ``pixels`` + ``box_order`` (yx | xy) mean ``rel_yxyx`` / ``yxyx`` (or ``*xyxy``)
  box_frame      what the pixels are pixels *of*: ``input`` the tensor fed to the model (after
                 detbench's own resize or pad), ``original`` the original image, ``image_info`` the
                 model's internally resized image whose scale is in an ``image_info`` output [1,4,2]
                 ([[orig_h, orig_w], [scaled_h, scaled_w], [scale_y, scale_x], [offset_y,
                 offset_x]], Model Garden), ``internal`` a declared internal size the model resizes
                 the fed tensor to with ``internal_resize`` (squash | pad | pad_center)
  padding        (custom only) rows with a negative class, zero area or a score <= score_floor are
                 dropped; outputs may lack the batch dimension ([N, 4], [N], [N])
  ============== ===============================================================================
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from runner.detections import Detections, Frame

if TYPE_CHECKING:
    from runner.config import ModelConfig

Outputs = Mapping[str, np.ndarray]
#: outputs, the frame of the tensor fed to the model (or its (height, width)) -> detections
Adapter = Callable[[Outputs, "Frame | tuple[int, int]"], Detections]

ROLES = ("boxes", "classes", "scores", "num_detections")
#: optional output roles of outputs=custom (keypoints [N, K, 2], their scores [N, K], box masks)
EXTRA_ROLES = ("keypoints", "keypoint_scores", "masks", "image_info")
ZOO_KEYS = {"boxes": "detection_boxes", "classes": "detection_classes",
            "scores": "detection_scores", "num_detections": "num_detections"}
#: KerasCV / KerasHub names; ``rel_*`` are relative to the frame, the others in its pixels
KERAS_FORMATS = ("yxyx", "xyxy", "xywh", "center_xywh",
                 "rel_yxyx", "rel_xyxy", "rel_xywh", "rel_center_xywh")
BOX_FORMATS = ("normalized", "pixels", *KERAS_FORMATS)
BOX_ORDERS = ("yx", "xy")
BOX_FRAMES = ("input", "original", "image_info", "internal")
RESIZE_RULES = ("squash", "pad", "pad_center")
CLASS_MAPS = ("none", "coco80")
#: contiguous 80-class index -> COCO 2017 category id (the 80 of the 91 ids that have annotations)
COCO80_IDS = np.array(
    [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27,
     28, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53,
     54, 55, 56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80,
     81, 82, 84, 85, 86, 87, 88, 89, 90], np.int64)


class OutputError(ValueError):
    """The model's outputs do not fit the configured contract (missing key, wrong shape)."""


def canonical_format(box_format: str, box_order: str = "yx") -> str:
    """The KerasCV name of a format: ``normalized`` + yx -> ``rel_yxyx``, ``pixels`` + xy ->
    ``xyxy``; KerasCV names are returned as they are (their order is part of the name)."""
    if box_format == "normalized":
        return "rel_yxyx" if box_order == "yx" else "rel_xyxy"
    if box_format == "pixels":
        return "yxyx" if box_order == "yx" else "xyxy"
    return box_format


@dataclass(frozen=True)
class OutputSpec:
    """How to read a model's outputs (the ``custom`` adapter's settings; the zoo's are fixed)."""

    keys: Mapping[str, str]
    box_format: str = "normalized"
    box_order: str = "yx"
    class_offset: int = 0
    keypoints_key: str | None = None
    keypoint_scores_key: str | None = None
    masks_key: str | None = None
    box_frame: str = "input"
    internal_size: tuple[int, int] | None = None  # box_frame=internal
    internal_resize: str = "squash"
    image_info_key: str | None = None  # box_frame=image_info
    class_map: str = "none"
    #: custom only: accept [N, ...] outputs and drop padding rows (negative class, zero area,
    #: score <= score_floor); the zoo's exporters never pad inside num_detections
    lenient: bool = False
    score_floor: float = 0.0

    @property
    def format(self) -> str:
        return canonical_format(self.box_format, self.box_order)


@dataclass(frozen=True)
class Parsed:
    """One call's detections and what reading them saw (for ``runner.checks``)."""

    detections: Detections
    rows: int  # rows the model returned
    num_detections: int | None  # as returned (may be negative or above rows)
    padding: int  # rows dropped as padding
    #: the kept boxes in pixels of the original image [N, 4] (y0, x0, y1, x1), before any
    #: clipping: what the checks judge
    pixel_boxes: np.ndarray = field(repr=False, default_factory=lambda: np.zeros((0, 4)))


def _get(outputs: Outputs, key: str, role: str) -> np.ndarray:
    if key not in outputs:
        raise OutputError(f"model outputs lack {key!r} ({role}); got {sorted(outputs)}")
    return np.asarray(outputs[key])


def _as_frame(frame: Frame | tuple[int, int]) -> Frame:
    return frame if isinstance(frame, Frame) else Frame.identity(int(frame[0]), int(frame[1]))


def _rows(value: np.ndarray, key: str, batched: bool, trailing: int) -> np.ndarray:
    """Drop the batch dimension of one output (batch 1), or take it as unbatched."""
    if batched:
        if value.ndim < 1 + trailing + 1 or value.shape[0] != 1:
            raise OutputError(f"{key} has shape {value.shape}; expected batch 1 "
                              f"[1, N{', ...' * bool(trailing)}] like the boxes")
        return value[0]
    if value.ndim < 1 + trailing:
        raise OutputError(f"{key} has shape {value.shape}; expected [N{', ...' * bool(trailing)}]"
                          " like the unbatched boxes")
    return value


def _to_yxyx(b: np.ndarray, fmt: str) -> np.ndarray:
    """[N, 4] in ``fmt`` -> [N, 4] (y0, x0, y1, x1) in the same units."""
    base = fmt.removeprefix("rel_")
    if base == "yxyx":
        return b
    if base == "xyxy":
        return b[:, [1, 0, 3, 2]]
    if base == "xywh":
        x, y, w, h = b.T
        return np.stack([y, x, y + h, x + w], axis=1)
    if base == "center_xywh":
        cx, cy, w, h = b.T
        return np.stack([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2], axis=1)
    raise OutputError(f"unknown box format {fmt!r}; valid: {list(BOX_FORMATS)}")


def _image_info(outputs: Outputs, spec: OutputSpec) -> np.ndarray:
    key = spec.image_info_key or "image_info"
    info = _get(outputs, key, "image_info").astype(np.float64)
    info = info.reshape(-1, 4, 2) if info.size % 8 == 0 and info.size else info
    if info.ndim != 3 or info.shape[0] != 1:
        raise OutputError(f"{key} has shape {np.asarray(outputs[key]).shape}; expected [1, 4, 2] "
                          "= [[orig_h, orig_w], [scaled_h, scaled_w], [scale_y, scale_x], "
                          "[offset_y, offset_x]]")
    if not np.all(info[0, 2] > 0):
        raise OutputError(f"{key} has a non-positive scale {info[0, 2].tolist()}")
    return info[0]


def resize_geometry(src: tuple[int, int], dst: tuple[int, int],
                    rule: str) -> tuple[tuple[float, float], tuple[float, float], tuple[int, int]]:
    """How ``rule`` puts an image of ``src`` = (h, w) into ``dst``: (scale, offset, content size).
    ``squash`` stretches to ``dst``; ``pad`` keeps the aspect ratio, content at the top left (Model
    Garden, TF OD API's keep_aspect_ratio_resizer); ``pad_center`` centers it (letterbox)."""
    (h, w), (th, tw) = src, dst
    if rule == "squash":
        return (th / h, tw / w), (0.0, 0.0), (th, tw)
    s = min(th / h, tw / w)
    ch, cw = min(th, max(1, round(h * s))), min(tw, max(1, round(w * s)))
    if rule == "pad":
        return (s, s), (0.0, 0.0), (ch, cw)
    if rule == "pad_center":
        return (s, s), (float((th - ch) // 2), float((tw - cw) // 2)), (ch, cw)
    raise ValueError(f"unknown resize rule {rule!r}; valid: {list(RESIZE_RULES)}")


def _to_normalized(points: np.ndarray, relative: bool, spec: OutputSpec, frame: Frame,
                   outputs: Outputs) -> np.ndarray:
    """(y, x) points [..., 2] in the configured frame -> (y, x) relative to the original image.
    Relative points of a fed tensor that shows the whole image unpadded are returned as they are
    (bit for bit: the seed policy's squash-resize must give the public script's numbers)."""
    if relative and spec.box_frame == "input" and frame.covers:
        return points.astype(np.float64)
    p = points.astype(np.float64)
    if spec.box_frame == "original":
        if relative:
            return p
        return p / np.asarray(frame.original, np.float64)
    if spec.box_frame == "image_info":
        info = _image_info(outputs, spec)
        if relative:
            p = p * info[1]
        p = (p + info[3]) / info[2]  # Model Garden: scaled = original * scale - offset
    elif spec.box_frame == "internal":
        if spec.internal_size is None:
            raise OutputError("box_frame=internal needs the model's internal input size")
        if relative:
            p = p * np.asarray(spec.internal_size, np.float64)
        scale, offset, _ = resize_geometry(frame.fed, spec.internal_size, spec.internal_resize)
        p = (p - np.asarray(offset)) / np.asarray(scale)
    elif relative:
        p = p * np.asarray(frame.fed, np.float64)
    return frame.to_original(p) / np.asarray(frame.original, np.float64)


def read_parsed(outputs: Outputs, spec: OutputSpec, frame: Frame | tuple[int, int]) -> Parsed:
    """Read one call's outputs under ``spec``; see the module docstring for the conventions."""
    frame = _as_frame(frame)
    boxes_key = spec.keys["boxes"]
    boxes = _get(outputs, boxes_key, "boxes")
    batched = boxes.ndim == 3
    if not (boxes.ndim == 3 and boxes.shape[0] == 1 and boxes.shape[2] == 4) and not (
            spec.lenient and boxes.ndim == 2 and boxes.shape[1] == 4):
        raise OutputError(f"{boxes_key} has shape {boxes.shape}; expected [1, N, 4]"
                          + (" or [N, 4]" if spec.lenient else ""))
    raw = boxes[0] if batched else boxes
    rows = raw.shape[0]
    num_key = spec.keys.get("num_detections")
    num: int | None = None
    n = rows
    if num_key:
        value = _get(outputs, num_key, "num_detections").reshape(-1)
        if value.size:
            num = int(value[0])
            n = max(0, min(num, rows))
    fmt = spec.format
    relative = fmt.startswith("rel_")
    with np.errstate(invalid="ignore", over="ignore"):  # non-finite rows are the checks' job
        b = _to_yxyx(raw[:n].astype(np.float64), fmt)
    classes = _rows(_get(outputs, spec.keys["classes"], "classes"), spec.keys["classes"],
                    batched, 0).reshape(-1)
    scores = _rows(_get(outputs, spec.keys["scores"], "scores"), spec.keys["scores"],
                   batched, 0).reshape(-1)
    if len(classes) < n or len(scores) < n:
        raise OutputError(f"{len(classes)} classes and {len(scores)} scores for {n} boxes")
    raw_classes = np.rint(classes[:n].astype(np.float64))
    scores = scores[:n].astype(np.float32)
    keep = np.ones(n, bool)
    if spec.lenient:
        zero_area = (b[:, 2] == b[:, 0]) | (b[:, 3] == b[:, 1])
        keep = ~((raw_classes < 0) | zero_area | (scores <= spec.score_floor))
    with np.errstate(invalid="ignore", over="ignore"):
        normalized = _to_normalized(b.reshape(-1, 2, 2), relative, spec, frame,
                                    outputs).reshape(-1, 4)[keep]
        h, w = frame.original
        pixel = normalized * np.array([h, w, h, w], np.float64)
    ids = raw_classes[keep] + spec.class_offset
    if spec.class_map == "coco80":
        inside = (ids >= 0) & (ids < len(COCO80_IDS))
        ids = np.where(inside, COCO80_IDS[np.clip(ids, 0, len(COCO80_IDS) - 1).astype(np.int64)],
                       -1)
    extra: dict[str, np.ndarray | None] = {}
    for name, key in (("keypoints", spec.keypoints_key),
                      ("keypoint_scores", spec.keypoint_scores_key), ("masks", spec.masks_key)):
        if not key:
            extra[name] = None
            continue
        value = _rows(_get(outputs, key, name), key, batched, 1)[:n][keep].astype(np.float32)
        if name == "keypoints":
            value = _read_keypoints(value, key, fmt, relative, spec, frame, outputs)
        extra[name] = value
    det = Detections(boxes=normalized.astype(np.float32), classes=ids.astype(np.int64),
                     scores=scores[keep], **extra)
    return Parsed(det, rows, num, int(n - keep.sum()), pixel)


def _read_keypoints(value: np.ndarray, key: str, fmt: str, relative: bool, spec: OutputSpec,
                    frame: Frame, outputs: Outputs) -> np.ndarray:
    """Keypoints [N, K, 2] in the boxes' units and axis order (y, x unless the box format starts
    with x) and frame -> normalized (y, x) of the original image."""
    if value.ndim != 3 or value.shape[-1] != 2:
        raise OutputError(f"{key} has shape {value.shape} per image; expected [N, K, 2]")
    yx = value if fmt.removeprefix("rel_").startswith("y") else value[..., ::-1]
    return _to_normalized(yx, relative, spec, frame, outputs).astype(np.float32)


def read(outputs: Outputs, spec: OutputSpec, frame: Frame | tuple[int, int]) -> Detections:
    return read_parsed(outputs, spec, frame).detections


ZOO = OutputSpec(keys=ZOO_KEYS)
ZOO_KEYPOINTS = OutputSpec(keys=ZOO_KEYS, keypoints_key="detection_keypoints",
                           keypoint_scores_key="detection_keypoint_scores")
ZOO_MASKS = OutputSpec(keys=ZOO_KEYS, masks_key="detection_masks")


def zoo_outputs(outputs: Outputs, input_hw: Frame | tuple[int, int] = (1, 1)) -> Detections:
    """The TF2 Detection Model Zoo contract (exporter_lib_v2): batch 1, the first
    ``num_detections`` rows valid, normalized yx boxes, 1-based label-map ids == COCO ids."""
    return read(outputs, ZOO, input_hw)


def numbered_outputs_spec(outputs: Outputs) -> OutputSpec:
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


def numbered_outputs(outputs: Outputs, input_hw: Frame | tuple[int, int]) -> Detections:
    return read(outputs, numbered_outputs_spec(outputs), input_hw)


ADAPTERS: dict[str, Adapter] = {
    "zoo": zoo_outputs,
    "zoo_keypoints": lambda out, hw: read(out, ZOO_KEYPOINTS, hw),
    "zoo_masks": lambda out, hw: read(out, ZOO_MASKS, hw),
    "numbered_outputs": numbered_outputs,
}
ADAPTER_NAMES = (*ADAPTERS, "custom")
#: former adapter names -> the current one (configs and job dirs written before a rename)
ADAPTER_ALIASES = {"centernet_tflite": "numbered_outputs"}


def canonical_adapter(name: str) -> str:
    """The current name of adapter ``name`` (an old name maps to its new one; others as given)."""
    return ADAPTER_ALIASES.get(name, name)


_FIXED = {"zoo": ZOO, "zoo_keypoints": ZOO_KEYPOINTS, "zoo_masks": ZOO_MASKS}


@dataclass(frozen=True)
class OutputReader:
    """An adapter that can say how it reads (for ``runner.checks``): ``name`` of the adapter and
    its spec (None for numbered_outputs, whose spec is derived from each call's outputs)."""

    name: str
    spec: OutputSpec | None

    def spec_for(self, outputs: Outputs) -> OutputSpec:
        return self.spec if self.spec is not None else numbered_outputs_spec(outputs)

    def parse(self, outputs: Outputs, frame: Frame | tuple[int, int]) -> Parsed:
        return read_parsed(outputs, self.spec_for(outputs), frame)

    def __call__(self, outputs: Outputs, frame: Frame | tuple[int, int]) -> Detections:
        return self.parse(outputs, frame).detections


def adapter(name: str, custom: OutputSpec | None = None) -> OutputReader:
    """The adapter called ``name`` (a name in :data:`ADAPTER_ALIASES` gives the adapter it was
    renamed to); ``custom`` needs its spec."""
    name = canonical_adapter(name)
    if name == "custom":
        if custom is None:
            raise ValueError("the custom adapter needs an OutputSpec")
        return OutputReader(name, custom)
    if name not in ADAPTERS:
        raise ValueError(f"unknown output adapter {name!r}; valid: {', '.join(ADAPTER_NAMES)} "
                         f"(old names: {', '.join(ADAPTER_ALIASES)})")
    return OutputReader(name, _FIXED.get(name))


def custom_spec(model: ModelConfig) -> OutputSpec:
    """The ``custom`` adapter's spec from ``model.*`` (output_keys, box_format, box_frame, ...)."""
    keys = {role: key for role in ROLES if (key := getattr(model.output_keys, role, None))}
    size = model.internal_size
    return OutputSpec(
        keys=keys, box_format=model.box_format, box_order=model.box_order,
        class_offset=model.class_offset,
        keypoints_key=model.output_keys.keypoints,
        keypoint_scores_key=model.output_keys.keypoint_scores,
        masks_key=model.output_keys.masks,
        box_frame=model.box_frame,
        internal_size=_hw(size) if size else None,
        internal_resize=model.internal_resize,
        image_info_key=model.output_keys.image_info,
        class_map=model.class_map, lenient=True, score_floor=model.score_floor)


def _hw(size: str) -> tuple[int, int]:
    h, _, w = size.partition("x")
    return int(h), int(w)


def from_config(model: ModelConfig) -> OutputReader:
    """The adapter ``model.outputs`` names, with the ``custom`` settings where it is custom."""
    return adapter(model.outputs, custom_spec(model) if model.outputs == "custom" else None)


def overrides(spec: OutputSpec, current: str, current_spec: OutputSpec | None) -> list[str]:
    """``model.*`` command-line overrides that make the runner read outputs as ``spec`` does,
    given the adapter ``current`` (and its spec) now configured."""
    out: list[str] = []
    base = current_spec if current == "custom" and current_spec is not None else None
    if base is None:
        out.append("model.outputs=custom")
        base = OutputSpec(keys={})
    for role in ROLES:
        if spec.keys.get(role) != base.keys.get(role) and spec.keys.get(role):
            out.append(f"model.output_keys.{role}={spec.keys[role]}")
    for attr, name in (("keypoints_key", "keypoints"), ("keypoint_scores_key", "keypoint_scores"),
                       ("masks_key", "masks"), ("image_info_key", "image_info")):
        if getattr(spec, attr) and getattr(spec, attr) != getattr(base, attr):
            out.append(f"model.output_keys.{name}={getattr(spec, attr)}")
    if spec.format != base.format:
        out.append(f"model.box_format={spec.format}")
    for attr in ("box_frame", "internal_resize", "class_offset", "class_map", "score_floor"):
        if getattr(spec, attr) != getattr(base, attr):
            out.append(f"model.{attr}={getattr(spec, attr)}")
    if spec.internal_size != base.internal_size and spec.internal_size:
        out.append(f"model.internal_size={spec.internal_size[0]}x{spec.internal_size[1]}")
    return out


def variants(spec: OutputSpec, outputs: Outputs) -> list[OutputSpec]:
    """Plausible other readings of the same outputs (for a wrong mapping's suggested fix): every
    box format, frame and class offset / map, and scores and classes swapped."""
    frames = ["input"]
    info_key = spec.image_info_key or ("image_info" if "image_info" in outputs else None)
    if info_key and info_key in outputs:
        frames.append("image_info")
    resizes = [spec.internal_resize]
    if spec.box_frame == "internal":
        frames.append("internal")
        resizes = list(RESIZE_RULES)
    keysets = [dict(spec.keys)]
    if "classes" in spec.keys and "scores" in spec.keys:
        keysets.append({**spec.keys, "classes": spec.keys["scores"],
                        "scores": spec.keys["classes"]})
    out = []
    for keys in keysets:
        for fmt in KERAS_FORMATS:
            for frame in frames:
                for offset in (spec.class_offset, spec.class_offset + 1, spec.class_offset - 1):
                    for class_map in CLASS_MAPS:
                        for rule in resizes if frame == "internal" else [spec.internal_resize]:
                            out.append(replace(
                                spec, keys=keys, box_format=fmt, box_order="yx",
                                box_frame=frame, class_offset=offset, class_map=class_map,
                                internal_resize=rule, image_info_key=(
                                    info_key if frame == "image_info" else spec.image_info_key)))
    return out


def describe(outputs: Outputs) -> list[dict[str, Any]]:
    """Name, dtype, shape and value range of each output (for ``runner.inspect``)."""
    rows = []
    for key in sorted(outputs):
        value = np.asarray(outputs[key])
        finite = value[np.isfinite(value)] if value.dtype.kind == "f" else value
        rows.append({"key": key, "dtype": value.dtype.name, "shape": list(value.shape),
                     "min": float(finite.min()) if finite.size else None,
                     "max": float(finite.max()) if finite.size else None})
    return rows
