"""Tiny SavedModels with the zoo's serving contract that behave well or badly, for sweep tests."""

from __future__ import annotations

from pathlib import Path

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
CONTRACTS = ("keypoints", "masks", "centernet_tflite")


class _Contract(tf.Module):
    """Constant outputs in one of the zoo's output contracts (100 rows, 1 valid)."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        spec = (tf.TensorSpec([1, 512, 512, 3], tf.float32, name="input")
                if kind == "centernet_tflite"
                else tf.TensorSpec([1, None, None, 3], tf.uint8, name="input_tensor"))
        self.serve = tf.function(self._serve, input_signature=[spec])

    def _serve(self, image: tf.Tensor) -> dict[str, tf.Tensor]:
        zero = 0.0 * tf.reduce_mean(tf.cast(image, tf.float32))
        pad = [[0, 0], [0, 99], [0, 0]]
        boxes = tf.pad(tf.constant([[BOX]], tf.float32), pad) + zero
        scores = tf.pad(tf.constant([[0.95]]), [[0, 0], [0, 99]])
        classes = tf.zeros([1, 100]) if self.kind == "centernet_tflite" else tf.ones([1, 100])
        keypoints = tf.tile(tf.constant([[KEYPOINTS]], tf.float32), [1, 100, 1, 1])
        kp_scores = tf.ones([1, 100, 17])
        num = tf.constant([1.0])
        if self.kind == "centernet_tflite":  # the exporter's reversed, generic outputs
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
