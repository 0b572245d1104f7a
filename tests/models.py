"""Tiny SavedModels with the zoo's serving contract that behave well or badly, for sweep tests."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

BEHAVIOURS = ("ok", "raise", "abort", "hang", "bad_shape", "float_input")


class _Fixture(tf.Module):
    def __init__(self, behaviour: str) -> None:
        super().__init__()
        self.behaviour = behaviour
        dtype = tf.float32 if behaviour == "float_input" else tf.uint8
        spec = tf.TensorSpec([1, None, None, 3], dtype, name="input_tensor")
        self.serve = tf.function(self._serve, input_signature=[spec])

    def _serve(self, input_tensor: tf.Tensor) -> dict[str, tf.Tensor]:
        mean = tf.reduce_mean(tf.cast(input_tensor, tf.float32))
        if self.behaviour == "raise":
            tf.debugging.Assert(mean < 0, ["fixture model refuses every image"])
        elif self.behaviour == "abort":
            with tf.control_dependencies([tf.raw_ops.Abort(error_msg="fixture model aborts")]):
                mean = tf.identity(mean)
        elif self.behaviour == "hang":
            (i,) = tf.while_loop(lambda i: i >= 0, lambda i: i + 1, [tf.constant(0, tf.int64)])
            mean += tf.cast(i, tf.float32) * 0.0
        box = tf.constant([[[0.1, 0.1, 0.6, 0.6]]], tf.float32) + 0.0 * mean
        if self.behaviour == "bad_shape":
            box = box[0]  # [1, 4] instead of [1, N, 4]
        return {"detection_boxes": box, "detection_classes": tf.constant([[1.0]]),
                "detection_scores": tf.constant([[0.9]]), "num_detections": tf.constant([1.0])}


def build(directory: Path, behaviour: str) -> Path:
    """Write a SavedModel that is ``ok``, raises, aborts (SIGABRT), hangs, returns boxes of the
    wrong shape or takes float32 instead of uint8."""
    if behaviour not in BEHAVIOURS:
        raise ValueError(f"behaviour={behaviour!r}; valid: {BEHAVIOURS}")
    module = _Fixture(behaviour)
    tf.saved_model.save(module, str(directory), signatures={"serving_default": module.serve})
    return directory


#: The one object every contract fixture detects: normalized [ymin, xmin, ymax, xmax].
BOX = (0.25, 0.25, 0.75, 0.75)
#: Its 17 keypoints, normalized (y, x), inside the box.
KEYPOINTS = tuple((0.3 + 0.025 * k, 0.3 + 0.02 * k) for k in range(17))
CONTRACTS = ("keypoints", "masks", "numbered_outputs")


class _Contract(tf.Module):
    """Constant outputs in one of the zoo's output contracts (100 rows, 1 valid)."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        spec = (tf.TensorSpec([1, 512, 512, 3], tf.float32, name="input")
                if kind == "numbered_outputs"
                else tf.TensorSpec([1, None, None, 3], tf.uint8, name="input_tensor"))
        self.serve = tf.function(self._serve, input_signature=[spec])

    def _serve(self, image: tf.Tensor) -> dict[str, tf.Tensor]:
        zero = 0.0 * tf.reduce_mean(tf.cast(image, tf.float32))
        pad = [[0, 0], [0, 99], [0, 0]]
        boxes = tf.pad(tf.constant([[BOX]], tf.float32), pad) + zero
        scores = tf.pad(tf.constant([[0.95]]), [[0, 0], [0, 99]])
        classes = tf.zeros([1, 100]) if self.kind == "numbered_outputs" else tf.ones([1, 100])
        keypoints = tf.tile(tf.constant([[KEYPOINTS]], tf.float32), [1, 100, 1, 1])
        kp_scores = tf.ones([1, 100, 17])
        num = tf.constant([1.0])
        if self.kind == "numbered_outputs":  # the exporter's reversed, generic outputs
            parts = [kp_scores, keypoints, num, scores, classes, boxes]
            return {f"output_{i}": t for i, t in enumerate(parts)}
        out = {"detection_boxes": boxes, "detection_classes": classes,
               "detection_scores": scores, "num_detections": num}
        if self.kind == "keypoints":
            out |= {"detection_keypoints": keypoints, "detection_keypoint_scores": kp_scores}
        else:
            out["detection_masks"] = tf.ones([1, 100, 33, 33])
        return out


def build_contract(directory: Path, kind: str) -> Path:
    if kind not in CONTRACTS:
        raise ValueError(f"kind={kind!r}; valid: {CONTRACTS}")
    module = _Contract(kind)
    tf.saved_model.save(module, str(directory), signatures={"serving_default": module.serve})
    return directory


# --- Export conventions of other families (issue 13), each a real SavedModel that *computes* its
# detection from the image: the object is the one red rectangle (red > 128 on a dark background),
# its class the rectangle's green value / 12. Under the right ``model.*`` mapping its detection is
# the ground truth exactly (AP 1.0); under a wrong one it is not.

#: contiguous COCO-80 index -> COCO id, for fixtures that emit 80-class indices
COCO80 = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25,
          27, 28, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51,
          52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77,
          78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90)


@dataclass(frozen=True)
class Convention:
    """How a fixture takes its input and returns its outputs."""

    input_name: str = "input_tensor"
    input_dtype: str = "uint8"
    fixed_size: tuple[int, int] | None = None  # [1, H, W, 3] instead of [1, None, None, 3]
    value_range: tuple[float, float] = (0.0, 255.0)
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    bgr: bool = False
    internal: tuple[int, int] | None = None  # resizes its input to this size first ...
    internal_resize: str = "pad"  # ... squash | pad | pad_center
    image_info: bool = False  # Model Garden: pixel boxes of the internal image + image_info
    box_format: str = "rel_yxyx"  # KerasCV names; non-rel: pixels of its canvas
    class_offset: int = 0  # emits category id - class_offset (after coco80)
    coco80: bool = False  # emits the contiguous 80-class index
    rows: int = 100
    batched: bool = True
    num_detections: bool = True
    padding: str = "zeros"  # zeros | minus_one (KerasCV: boxes and classes -1)
    keys: tuple[str, str, str, str] = ("detection_boxes", "detection_classes",
                                       "detection_scores", "num_detections")
    int_outputs: bool = False  # classes and num_detections as int32 (Model Garden)
    extra: str = "none"  # none | ssd | faster_rcnn | centernet | centernet_kpts (exporter keys)
    score: float = 1.0
    zero_for_class: int | None = None  # num_detections 0 on images of this category
    #: the CenterNet MobileNetV2 TFLite-graph export: output_0.. = (num, scores, classes, boxes),
    #: or with "keypoints" (keypoint scores, keypoints, num, scores, classes, boxes)
    tflite_outputs: str = "none"
    #: nonsense outputs (issue 11 item 5): negative_num | inf_box | score_above_1 | class_1000 |
    #: class_negative | inverted | slightly_outside (only images of category 3, by 3% of width)
    fault: str = "none"


def _resize_like(image: tf.Tensor, size: tuple[int, int], rule: str) -> tuple[tf.Tensor, Any]:
    """Resize [1, h, w, 3] as a model would; returns the image and (scale, content size)."""
    h = tf.cast(tf.shape(image)[1], tf.float32)
    w = tf.cast(tf.shape(image)[2], tf.float32)
    if rule == "squash":
        return tf.image.resize(image, size), None
    s = tf.minimum(size[0] / h, size[1] / w)
    ch = tf.minimum(tf.cast(tf.round(h * s), tf.int32), size[0])
    cw = tf.minimum(tf.cast(tf.round(w * s), tf.int32), size[1])
    resized = tf.image.resize(image, tf.stack([ch, cw]))
    top = (size[0] - ch) // 2 if rule == "pad_center" else 0
    left = (size[1] - cw) // 2 if rule == "pad_center" else 0
    return tf.image.pad_to_bounding_box(resized, top, left, size[0], size[1]), (s, ch, cw)


def _find_rectangle(pixels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """[1, H, W, 3] pixels 0..255 -> (yxyx pixel box [4], COCO id, canvas h, canvas w)."""
    img = pixels[0]
    mask = img[..., 0] > 128.0
    rows = tf.cast(tf.reduce_any(mask, axis=1), tf.int32)
    cols = tf.cast(tf.reduce_any(mask, axis=0), tf.int32)
    height, width = tf.shape(rows)[0], tf.shape(cols)[0]
    y0 = tf.cast(tf.argmax(rows), tf.int32)
    y1 = height - tf.cast(tf.argmax(tf.reverse(rows, [0])), tf.int32)
    x0 = tf.cast(tf.argmax(cols), tf.int32)
    x1 = width - tf.cast(tf.argmax(tf.reverse(cols, [0])), tf.int32)
    green = tf.reduce_max(tf.where(mask, img[..., 1], 0.0))
    box = tf.cast(tf.stack([y0, x0, y1, x1]), tf.float32)
    return box, tf.round(green / 12.0), tf.cast(height, tf.float32), tf.cast(width, tf.float32)


def _in_format(box: tf.Tensor, fmt: str, height: tf.Tensor, width: tf.Tensor) -> tf.Tensor:
    y0, x0, y1, x1 = tf.unstack(box)
    if fmt.startswith("rel_"):
        y0, y1, x0, x1 = y0 / height, y1 / height, x0 / width, x1 / width
    base = fmt.removeprefix("rel_")
    parts = {"yxyx": [y0, x0, y1, x1], "xyxy": [x0, y0, x1, y1],
             "xywh": [x0, y0, x1 - x0, y1 - y0],
             "center_xywh": [(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0]}[base]
    return tf.stack(parts)


class _ConventionModel(tf.Module):
    def __init__(self, conv: Convention) -> None:
        super().__init__()
        self.conv = conv
        shape = [1, *(conv.fixed_size or (None, None)), 3]
        spec = tf.TensorSpec(shape, tf.as_dtype(conv.input_dtype), name=conv.input_name)
        self.serve = tf.function(self._serve, input_signature=[spec])

    def _serve(self, image: tf.Tensor) -> dict[str, tf.Tensor]:
        c = self.conv
        x = tf.cast(image, tf.float32)
        if c.std is not None:
            x = x * tf.constant(c.std)
        if c.mean is not None:
            x = x + tf.constant(c.mean)
        if c.bgr:
            x = x[..., ::-1]
        low, high = c.value_range
        pixels = (x - low) / (high - low) * 255.0
        fed_h = tf.cast(tf.shape(image)[1], tf.float32)
        fed_w = tf.cast(tf.shape(image)[2], tf.float32)
        info = None
        if c.internal is not None:
            pixels, geometry = _resize_like(pixels, c.internal, c.internal_resize)
            if c.image_info:
                s, ch, cw = geometry
                ch, cw = tf.cast(ch, tf.float32), tf.cast(cw, tf.float32)
                # as official.vision's resize_and_crop_image: [original size, desired size,
                # realized scale (scaled size / original), offset]
                info = tf.stack([tf.stack([fed_h, fed_w]), tf.constant(c.internal, tf.float32),
                                 tf.stack([ch / fed_h, cw / fed_w]), tf.zeros([2])])[None]
        box, coco_id, height, width = _find_rectangle(pixels)
        if c.fault == "inverted":
            box = tf.gather(box, [2, 3, 0, 1])
        elif c.fault == "inf_box":
            box = box + tf.constant([0.0, 0.0, np.inf, 0.0], tf.float32)
        elif c.fault == "slightly_outside":
            box = tf.where(tf.equal(coco_id, 3.0),
                           tf.stack([box[0], box[1], box[2], width * 1.03]), box)
        label = coco_id
        if c.coco80:
            label = tf.cast(tf.argmax(tf.cast(tf.equal(tf.constant(COCO80, tf.float32),
                                                       coco_id), tf.int32)), tf.float32)
        label = label - c.class_offset
        if c.fault in ("class_1000", "class_negative"):
            label = tf.constant(1000.0 if c.fault == "class_1000" else -5.0)
        pad = c.rows - 1
        fill = -1.0 if c.padding == "minus_one" else 0.0
        boxes = tf.concat([_in_format(box, c.box_format, height, width)[None],
                           tf.fill([pad, 4], fill)], 0)
        classes = tf.concat([label[None], tf.fill([pad], fill)], 0)
        top = 7.5 if c.fault == "score_above_1" else c.score
        scores = tf.concat([tf.constant([top]), tf.zeros([pad])], 0)
        num = tf.constant([1.0])
        if c.fault == "negative_num":
            num = tf.constant([-3.0])
        if c.zero_for_class is not None:
            num = tf.where(tf.equal(coco_id, float(c.zero_for_class)), 0.0, 1.0)[None]
        if c.int_outputs:
            classes, num = tf.cast(classes, tf.int32), tf.cast(num, tf.int32)
        out = {c.keys[0]: boxes, c.keys[1]: classes, c.keys[2]: scores}
        if c.batched:
            out = {k: v[None] for k, v in out.items()}
        if c.num_detections:
            out[c.keys[3]] = num if c.batched else num[0]
        if info is not None:
            out["image_info"] = info
        out |= _exporter_extras(c, boxes, scores, classes)
        if c.tflite_outputs != "none":
            parts = [out[c.keys[3]], out[c.keys[2]], out[c.keys[1]], out[c.keys[0]]]
            if c.tflite_outputs == "keypoints":
                parts = [tf.ones([1, c.rows, 17]), tf.zeros([1, c.rows, 17, 2]), *parts]
            return {f"output_{i}": t for i, t in enumerate(parts)}
        return out


def _exporter_extras(c: Convention, boxes: tf.Tensor, scores: tf.Tensor,
                     classes: tf.Tensor) -> dict[str, tf.Tensor]:
    """The TF OD API exporters' other outputs (exporter_lib_v2), shaped as they are."""
    n = c.rows
    if c.extra == "none":
        return {}
    columns = 90 if c.extra.startswith("centernet") else 91  # no background column in CenterNet
    hot = tf.one_hot(tf.cast(classes, tf.int32) - (1 if columns == 90 else 0), columns) * \
        scores[:, None]
    out = {"detection_multiclass_scores": hot[None]}
    if c.extra in ("ssd", "faster_rcnn"):
        anchors = 1917 if c.extra == "ssd" else 300
        out |= {"raw_detection_boxes": tf.concat([boxes[None], tf.zeros([1, anchors - n, 4])],
                                                 1),
                "raw_detection_scores": tf.concat([hot[None], tf.zeros([1, anchors - n, 91])],
                                                  1),
                "detection_anchor_indices": tf.range(n, dtype=tf.float32)[None]}
    else:
        out["detection_boxes_strided"] = boxes[None] / 4.0
    if c.extra == "centernet_kpts":
        out |= {"detection_keypoints": tf.zeros([1, n, 17, 2]),
                "detection_keypoint_scores": tf.zeros([1, n, 17])}
    return out


def build_convention(directory: Path, conv: Convention) -> Path:
    module = _ConventionModel(conv)
    tf.saved_model.save(module, str(directory), signatures={"serving_default": module.serve})
    return directory


def rectangles_dataset(root: Path, sizes: tuple[tuple[int, int], ...] = (
        (96, 128), (128, 96), (96, 96), (64, 128), (128, 64), (96, 128), (128, 96), (96, 96)),
        categories: tuple[int, ...] = (1, 3, 18)) -> tuple[Path, Path]:
    """Images (height, width) with one red rectangle each, its class in its green value (id *
    12), edges on multiples of 8, at least half the image a side; COCO annotations of it."""
    from PIL import Image, ImageDraw

    (root / "img").mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for i, (h, w) in enumerate(sizes, start=1):
        cat = categories[i % len(categories)]
        y0, x0 = 8 * (i % 3), 8 * ((i + 1) % 3)
        y1, x1 = y0 + (h // 2 // 8 + 1) * 8, x0 + (w // 2 // 8 + 2) * 8
        image = Image.new("RGB", (w, h), (30, 0, 30))
        ImageDraw.Draw(image).rectangle([x0, y0, x1 - 1, y1 - 1], fill=(220, cat * 12, 40))
        image.save(root / "img" / f"{i}.png")
        images.append({"id": i, "file_name": f"{i}.png", "width": w, "height": h})
        anns.append({"id": i, "image_id": i, "category_id": cat, "iscrowd": 0,
                     "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0)})
    doc = {"images": images, "annotations": anns,
           "categories": [{"id": c, "name": f"c{c}"} for c in sorted(set(categories))]}
    (root / "instances.json").write_text(json.dumps(doc))
    return root / "img", root / "instances.json"
