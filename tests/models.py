"""Tiny SavedModels with the zoo's serving contract that behave well or badly, for sweep tests."""

from __future__ import annotations

from pathlib import Path

import tensorflow as tf

BEHAVIOURS = ("ok", "raise", "abort", "hang")


class _Fixture(tf.Module):
    def __init__(self, behaviour: str) -> None:
        super().__init__()
        self.behaviour = behaviour

    @tf.function(input_signature=[tf.TensorSpec([1, None, None, 3], tf.uint8,
                                                name="input_tensor")])
    def serve(self, input_tensor: tf.Tensor) -> dict[str, tf.Tensor]:
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
        return {"detection_boxes": box, "detection_classes": tf.constant([[1.0]]),
                "detection_scores": tf.constant([[0.9]]), "num_detections": tf.constant([1.0])}


def build(directory: Path, behaviour: str) -> Path:
    """Write a SavedModel that is ``ok``, raises, aborts (SIGABRT) or hangs when called."""
    if behaviour not in BEHAVIOURS:
        raise ValueError(f"behaviour={behaviour!r}; valid: {BEHAVIOURS}")
    module = _Fixture(behaviour)
    tf.saved_model.save(module, str(directory), signatures={"serving_default": module.serve})
    return directory
