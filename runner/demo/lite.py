"""The demo detector exported for LiteRT: the shipped weights and the same decoding, with the
class-wise NMS done by LiteRT's builtin ``NON_MAX_SUPPRESSION_V5`` instead of TensorFlow's
``CombinedNonMaxSuppression``, which LiteRT runs only through the Flex delegate (Select TF ops),
and no pip package of LiteRT or TensorFlow 2.21 ships that delegate. This is what the zoo did
for its ``_od`` CenterNet MobileNetV2 archives: export the same network with post-processing
LiteRT has builtins for.

Class-wise NMS with one single-class NMS call: each class's boxes (coordinates in [0, 1]) are
shifted by 2 x class id, so boxes of different classes never overlap and are never suppressed
by each other; the outputs are taken from the unshifted boxes. ``python -m runner.demo.lite OUT``
writes the SavedModel.
"""

from __future__ import annotations

import argparse
from importlib import resources
from pathlib import Path

import tensorflow as tf

from runner.demo import detector


def decode(heatmap_logits: tf.Tensor, size: tf.Tensor, offset: tf.Tensor,
           max_detections: int) -> dict[str, tf.Tensor]:
    """CenterNet decoding as ``detector.decode`` (batch 1), NMS with builtin ops."""
    heat = tf.sigmoid(heatmap_logits)
    peaks = tf.cast(tf.equal(heat, tf.nn.max_pool2d(heat, 3, 1, "SAME")), heat.dtype)
    heat = heat * peaks
    out_h, out_w, num_classes = heat.shape[1], heat.shape[2], heat.shape[3]
    scores, idx = tf.math.top_k(tf.reshape(heat, [1, -1]), k=max_detections)
    scores, idx = scores[0], idx[0]
    cls = idx % num_classes
    cell = idx // num_classes
    ys, xs = cell // out_w, cell % out_w
    cell_size = tf.gather(tf.reshape(size, [-1, 2]), cell)
    cell_off = tf.gather(tf.reshape(offset, [-1, 2]), cell)
    cy = tf.cast(ys, tf.float32) + cell_off[:, 0]
    cx = tf.cast(xs, tf.float32) + cell_off[:, 1]
    h, w = cell_size[:, 0], cell_size[:, 1]
    boxes = tf.stack([(cy - h / 2) / out_h, (cx - w / 2) / out_w,
                      (cy + h / 2) / out_h, (cx + w / 2) / out_w], axis=-1)
    return class_wise_nms(tf.clip_by_value(boxes, 0.0, 1.0), scores, cls, max_detections,
                          score_threshold=0.01)


def class_wise_nms(boxes: tf.Tensor, scores: tf.Tensor, classes: tf.Tensor, max_detections: int,
                   score_threshold: float) -> dict[str, tf.Tensor]:
    """NMS per class with one builtin NMS op (LiteRT and OpenVINO convert it; not
    CombinedNonMaxSuppression): the boxes [N, 4] (normalized) of class c are shifted by 2c, so
    they never overlap another class's. Zoo outputs, batch 1, padded to ``max_detections``."""
    shifted = boxes + 2.0 * tf.cast(classes, tf.float32)[:, None]
    selected, selected_scores, valid = tf.raw_ops.NonMaxSuppressionV5(
        boxes=shifted, scores=scores, max_output_size=max_detections, iou_threshold=0.6,
        score_threshold=score_threshold, soft_nms_sigma=0.0, pad_to_max_output_size=True)
    keep = tf.cast(tf.sequence_mask(valid, max_detections), tf.float32)
    out_boxes = tf.gather(boxes, selected) * keep[:, None]
    out_classes = tf.cast(tf.gather(classes, selected), tf.float32) * keep + 1.0
    return {
        "detection_boxes": out_boxes[None],
        "detection_classes": out_classes[None],  # 1-based label-map ids; padding 1, as Combined
        "detection_scores": (selected_scores * keep)[None],
        "num_detections": tf.cast(tf.reshape(valid, [1]), tf.float32),
    }


class LiteServingModule(detector.ServingModule):
    @tf.function(
        input_signature=[tf.TensorSpec([1, None, None, 3], tf.uint8, name="input_tensor")]
    )
    def serve(self, input_tensor: tf.Tensor) -> dict[str, tf.Tensor]:
        heatmap, size, offset = self.network(detector.preprocess(input_tensor), training=False)
        return decode(heatmap, size, offset, self.max_detections)


def shipped_model() -> Path:
    return Path(str(resources.files("runner.demo") / "assets" / "demo_centernet"))


def export(out: Path, source: Path | None = None) -> Path:
    """The shipped demo's weights (checkpoint of ``source``) in a SavedModel with builtin NMS."""
    network = detector.build_network(len(detector_categories()))
    ckpt = tf.train.Checkpoint(network=network)
    ckpt.read(str((source or shipped_model()) / "variables" / "variables")) \
        .assert_existing_objects_matched().expect_partial()
    module = LiteServingModule(network)
    tf.saved_model.save(module, str(out), signatures={"serving_default": module.serve})
    return out


def detector_categories() -> tuple[object, ...]:
    from runner.demo import synth

    return synth.CATEGORIES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="SavedModel directory to write")
    print(export(parser.parse_args().out))


if __name__ == "__main__":
    main()
