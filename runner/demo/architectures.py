"""Real detector architectures with random weights, built offline, exported with the zoo's
serving contract: what ``benchmarks/runtimes.py --model`` and tests/test_architectures.py convert
through every runtime to see whether a real graph (not the tiny demo) converts, and what it costs.

The demo detector is a few convolutions; a runtime that converts it may still refuse a real
network (depthwise/separable convolutions, FPN up-sampling, anchor decoding, a library's NMS).
No weights are downloaded (nothing here can be): the networks are built from their code/config
with random weights, so their AP on any dataset is ~0 and says nothing about the conversion.
What does: the AP of a runtime's detections scored against Native FP32's own detections as the
ground truth (``agreement``): Native FP32 scores ~100 against itself, a faithful conversion the
same, a conversion that moves boxes or scores less.

Architectures (``ARCHITECTURES``):

- ``mobilenetv2_ssd``: SSDLite-style: ``keras.applications.MobileNetV2`` (``weights=None``, ships
  with TensorFlow) at 1/16 and 1/32, two extra stride-2 layers, separable-conv box/class heads
  on 4 levels x 3 anchors, SSD box decoding (variances 10/10/5/5), sigmoid scores, class-wise NMS
  on LiteRT's builtin NON_MAX_SUPPRESSION_V5 (the class-offset trick of ``runner.demo.lite``).
  Built in seconds; CI can build it (no extra package).
- ``keras_hub_retinanet``: KerasHub's ``RetinaNetObjectDetector`` on a ResNet-18-shaped
  ``ResNetBackbone`` constructed from its config (no preset download), FPN P3-P5, served with its
  own ``decode_predictions`` (anchor generator, box decoding, KerasHub's NMS layer): the graph a
  KerasHub user exports. ``keras_hub_retinanet_builtin_nms``: the same network, its anchors and
  box decoding, NMS on the builtin op instead of KerasHub's layer. Needs ``pip install keras-hub``.

Every export takes ``input_tensor`` uint8 [1, H, W, 3] of any size (squash-resized inside the
graph to the network's fixed size) and returns ``detection_boxes`` (normalized yxyx),
``detection_scores``, ``detection_classes`` (1-based), ``num_detections``: the zoo contract, so
``model=custom`` reads it with no adapter settings.

    python -m runner.demo.architectures mobilenetv2_ssd OUT [--size 320] [--classes 90]
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from runner.demo import lite

MAX_DETECTIONS = 100
PRE_NMS = 300


@dataclass(frozen=True)
class Built:
    """What ``build`` wrote: the SavedModel and the network's description."""

    path: Path
    name: str
    size: int
    classes: int
    params: int


def _photo_like(count: int, size: int, seed: int) -> tf.Tensor:
    """Smooth random images (up-sampled low-resolution noise + fine noise), 0..255 float32."""
    rng = np.random.default_rng(seed)
    coarse = tf.image.resize(rng.uniform(0, 255, (count, 8, 8, 3)).astype(np.float32),
                             (size, size), method="bicubic")
    fine = rng.normal(0, 12, (count, size, size, 3)).astype(np.float32)
    return tf.clip_by_value(coarse + fine, 0.0, 255.0)


def calibrate_batchnorm(network: Any, images: tf.Tensor) -> int:
    """Set every BatchNormalization layer's moving statistics to its batch statistics on
    ``images`` (one training-mode pass, momentum 0): a freshly initialized network's moving
    statistics (mean 0, variance 1) do not match its activations, which then die out through
    the ReLUs: measured, MobileNetV2-SSD gave the same score (the class bias) and the same box
    to all 100 detections of every image, nothing a conversion could get wrong. After this the
    activations keep their scale and the scores and boxes vary with the image. Returns the count
    of layers set."""
    layers = [layer for layer in network._flatten_layers()
              if isinstance(layer, tf.keras.layers.BatchNormalization)]
    momenta = [layer.momentum for layer in layers]
    for layer in layers:
        layer.momentum = 0.0
    network(images, training=True)
    for layer, momentum in zip(layers, momenta, strict=True):
        layer.momentum = momentum
    return len(layers)


def _class_wise_nms(boxes: tf.Tensor, scores: tf.Tensor) -> dict[str, tf.Tensor]:
    """Top ``PRE_NMS`` (anchor, class) pairs of ``scores`` [N, C], NMS per class with one builtin
    NMS call (``lite.class_wise_nms``), zoo outputs."""
    num_classes = scores.shape[-1]
    top, idx = tf.math.top_k(tf.reshape(scores, [1, -1]), k=PRE_NMS)
    top, idx = top[0], idx[0]
    cls = idx % num_classes
    picked = tf.clip_by_value(tf.gather(boxes, idx // num_classes), 0.0, 1.0)
    return lite.class_wise_nms(picked, top, cls, MAX_DETECTIONS, score_threshold=0.0)


def _anchors(grids: list[tuple[int, int]], ratios: tuple[float, ...]) -> np.ndarray:
    """SSD anchors [N, 4] (cy, cx, h, w), normalized: scales 0.2..0.95 over the levels."""
    out = []
    count = len(grids)
    for level, (gh, gw) in enumerate(grids):
        scale = 0.2 + (0.95 - 0.2) * level / max(count - 1, 1)
        ys, xs = np.meshgrid((np.arange(gh) + 0.5) / gh, (np.arange(gw) + 0.5) / gw,
                             indexing="ij")
        for y, x in zip(ys.ravel(), xs.ravel(), strict=True):
            for ratio in ratios:
                out.append((y, x, scale / math.sqrt(ratio), scale * math.sqrt(ratio)))
    return np.asarray(out, np.float32)


def _combined_nms(boxes: tf.Tensor, scores: tf.Tensor) -> dict[str, tf.Tensor]:
    """TensorFlow's ``CombinedNonMaxSuppression`` (what the TF2 zoo's exports and the shipped
    demo use; LiteRT has no builtin for it, so a LiteRT conversion must refuse it by name)."""
    nmsed = tf.image.combined_non_max_suppression(
        tf.clip_by_value(boxes, 0.0, 1.0)[None, :, None, :], scores[None], MAX_DETECTIONS,
        MAX_DETECTIONS, iou_threshold=0.6, score_threshold=0.0, clip_boxes=False)
    return {"detection_boxes": nmsed.nmsed_boxes, "detection_scores": nmsed.nmsed_scores,
            "detection_classes": nmsed.nmsed_classes + 1.0,
            "num_detections": tf.cast(nmsed.valid_detections, tf.float32)}


NMS = {"builtin": _class_wise_nms, "combined": _combined_nms}


def mobilenetv2_ssd(size: int, classes: int, alpha: float = 1.0, seed: int = 0,
                    nms: str = "builtin"
                    ) -> tuple[tf.keras.Model, Callable[[tf.Tensor], dict[str, tf.Tensor]]]:
    """SSDLite MobileNetV2 (Keras applications, random weights) and its decoding; ``nms``:
    ``builtin`` (NON_MAX_SUPPRESSION_V5, every runtime has it) or ``combined``
    (CombinedNonMaxSuppression, as the TF2 zoo exports)."""
    if nms not in NMS:
        raise ValueError(f"nms={nms!r} is not valid; choose one of {', '.join(NMS)}")
    tf.keras.utils.set_random_seed(seed)
    layers = tf.keras.layers
    backbone = tf.keras.applications.MobileNetV2(input_shape=(size, size, 3), alpha=alpha,
                                                 include_top=False, weights=None)
    features = [backbone.get_layer("block_13_expand_relu").output, backbone.output]
    x = backbone.output
    for filters in (256, 128):  # SSDLite's extra layers: 1x1 bottleneck, 3x3/2 separable
        x = layers.Conv2D(filters // 2, 1, activation="relu6")(x)
        x = layers.SeparableConv2D(filters, 3, strides=2, padding="same", activation="relu6")(x)
        features.append(x)
    ratios = (1.0, 2.0, 0.5)
    box_out, cls_out = [], []
    for feature in features:
        box = layers.SeparableConv2D(len(ratios) * 4, 3, padding="same")(feature)
        cls = layers.SeparableConv2D(
            len(ratios) * classes, 3, padding="same",
            # random logits 4x the Glorot spread (16x the variance): scores from ~0.001 to ~0.5
            # as a trained head's, not all within 0.014..0.018 where any rounding reorders them
            pointwise_initializer=tf.keras.initializers.VarianceScaling(16.0, "fan_avg"),
            bias_initializer=tf.keras.initializers.Constant(-4.6))(feature)
        box_out.append(layers.Reshape((-1, 4))(box))
        cls_out.append(layers.Reshape((-1, classes))(cls))
    network = tf.keras.Model(backbone.input, [layers.Concatenate(axis=1)(box_out),
                                              layers.Concatenate(axis=1)(cls_out)],
                             name="ssdlite_mobilenetv2")
    calibrate_batchnorm(network, _photo_like(8, size, seed) / 127.5 - 1.0)
    grids = [(int(f.shape[1]), int(f.shape[2])) for f in features]
    anchors = tf.constant(_anchors(grids, ratios))

    def serve(input_tensor: tf.Tensor) -> dict[str, tf.Tensor]:
        x = tf.image.resize(tf.cast(input_tensor, tf.float32), (size, size)) / 127.5 - 1.0
        deltas, logits = network(x, training=False)
        d = deltas[0]
        cy = d[:, 0] / 10.0 * anchors[:, 2] + anchors[:, 0]
        cx = d[:, 1] / 10.0 * anchors[:, 3] + anchors[:, 1]
        h = tf.exp(tf.minimum(d[:, 2] / 5.0, 4.0)) * anchors[:, 2]
        w = tf.exp(tf.minimum(d[:, 3] / 5.0, 4.0)) * anchors[:, 3]
        boxes = tf.stack([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2], axis=-1)
        return NMS[nms](boxes, tf.sigmoid(logits[0]))

    return network, serve


def keras_hub_retinanet(size: int, classes: int, seed: int = 0, nms: str = "keras_hub"
                        ) -> tuple[Any, Callable[[tf.Tensor], dict[str, tf.Tensor]]]:
    """KerasHub RetinaNet, ResNet-18-shaped backbone from its config; ``nms``: ``keras_hub``
    (its own ``decode_predictions``: anchors, box decoding, its NMS layer) or ``builtin`` (its
    anchors and box decoding, then the class-wise NMS on NON_MAX_SUPPRESSION_V5: what a user
    exports for LiteRT, whose builtins lack the BitwiseAnd of KerasHub's NMS)."""
    import keras
    import keras_hub

    if nms not in ("keras_hub", "builtin"):
        raise ValueError(f"nms={nms!r} is not valid; choose one of keras_hub, builtin")

    tf.keras.utils.set_random_seed(seed)
    encoder = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[7],
        stackwise_num_filters=[64, 128, 256, 512], stackwise_num_blocks=[2, 2, 2, 2],
        stackwise_num_strides=[1, 2, 2, 2], block_type="basic_block",
        use_pre_activation=False, image_shape=(size, size, 3))
    backbone = keras_hub.models.RetinaNetBackbone(image_encoder=encoder, min_level=3,
                                                  max_level=5, use_p5=False)
    detector = keras_hub.models.RetinaNetObjectDetector(
        backbone=backbone, num_classes=classes, bounding_box_format="yxyx",
        max_detections=MAX_DETECTIONS)
    images = _photo_like(4, size, seed) / 255.0
    calibrate_batchnorm(detector, images)
    # its heads have no normalization (and KerasHub 0.32 puts the prior-probability bias on the
    # box head, not the classification head): with random weights the logits came out with a
    # spread of ~50, every score 1.0. Scale each head's last layer to a trained head's spread.
    outputs = detector(images, training=False)
    for head, key, spread, bias in (("classification_head", "cls_logits", 1.5, -4.6),
                                    ("box_head", "bbox_regression", 0.3, 0.0)):
        layer = detector.get_layer(head).prediction_layer
        current = float(np.std(np.asarray(outputs[key]) - np.asarray(layer.bias)[:1]))
        layer.kernel.assign(layer.kernel * (spread / max(current, 1e-6)))
        layer.bias.assign(tf.fill(layer.bias.shape, bias))

    def builtin(input_tensor: tf.Tensor) -> dict[str, tf.Tensor]:
        images = tf.image.resize(tf.cast(input_tensor, tf.float32), (size, size))
        raw = detector(images / 255.0, training=False)
        anchors = detector.anchor_generator(images)
        anchors = tf.concat(list(anchors.values()), axis=0)
        boxes = keras.utils.bounding_boxes.decode_deltas_to_boxes(
            anchors=anchors, boxes_delta=raw["bbox_regression"], encoded_format="center_xywh",
            anchor_format=detector.anchor_generator.bounding_box_format,
            box_format="yxyx", image_shape=(size, size, 3))
        return _class_wise_nms(boxes[0] / float(size), tf.sigmoid(raw["cls_logits"][0]))

    def serve(input_tensor: tf.Tensor) -> dict[str, tf.Tensor]:
        images = tf.image.resize(tf.cast(input_tensor, tf.float32), (size, size))
        out = detector.decode_predictions(detector(images / 255.0, training=False), images)
        valid = tf.cast(out["num_detections"], tf.int32)
        keep = tf.cast(tf.sequence_mask(valid, MAX_DETECTIONS), tf.float32)
        boxes = tf.clip_by_value(tf.cast(out["boxes"], tf.float32) / float(size), 0.0, 1.0)
        labels = tf.cast(out["labels"], tf.float32)
        return {
            "detection_boxes": boxes * keep[..., None],
            "detection_classes": (labels + 1.0) * keep + (1.0 - keep),
            "detection_scores": tf.cast(out["confidence"], tf.float32) * keep,
            "num_detections": tf.cast(tf.reshape(valid, [1]), tf.float32),
        }

    return detector, serve if nms == "keras_hub" else builtin


ARCHITECTURES: dict[str, Callable[..., tuple[Any, Callable[[tf.Tensor], dict[str, tf.Tensor]]]]]
ARCHITECTURES = {"mobilenetv2_ssd": mobilenetv2_ssd, "keras_hub_retinanet": keras_hub_retinanet,
                 "keras_hub_retinanet_builtin_nms": partial(keras_hub_retinanet, nms="builtin")}
DEFAULT_SIZE = {"mobilenetv2_ssd": 320, "keras_hub_retinanet": 384,
                "keras_hub_retinanet_builtin_nms": 384}


def build(name: str, out: Path, size: int | None = None, classes: int = 90,
          fixed_input: bool = False, **options: Any) -> Built:
    """Build architecture ``name`` with random weights and save it to ``out``; its input is
    [1, H, W, 3] of any size, or with ``fixed_input`` [1, size, size, 3] (then a job feeds every
    runtime the same resized pixels: with any-size input Native FP32 gets the original image,
    a fixed-shape runtime such as LiteRT the job's resize of it)."""
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; choose one of "
                         f"{', '.join(ARCHITECTURES)}")
    size = size or DEFAULT_SIZE[name]
    network, serve = ARCHITECTURES[name](size, classes, **options)
    module = tf.Module()
    module.network = network
    shape = [1, size, size, 3] if fixed_input else [1, None, None, 3]
    module.serve = tf.function(serve, input_signature=[
        tf.TensorSpec(shape, tf.uint8, name="input_tensor")])
    tf.saved_model.save(module, str(out), signatures={"serving_default": module.serve})
    params = int(sum(np.prod(v.shape) for v in network.weights))
    return Built(out, name, size, classes, params)


def agreement_ground_truth(detections: list[dict[str, Any]], images: list[dict[str, Any]],
                           top: int, num_classes: int) -> dict[str, Any]:
    """A COCO ground truth made of a reference run's detections (COCO results: image_id, bbox
    xywh in pixels, score, category_id): its ``top x len(images)`` highest-scored boxes over all
    images, as objects. Scored against it, the reference run gets AP 100: COCO ranks a class's
    detections across images, so the cut must be one score for all images (a per-image top 20
    gave the reference itself AP 58: other images' lower-ranked boxes scored above them). A
    conversion that moves boxes, scores or their order loses AP: the fidelity of a
    random-weight network's conversion, whose AP on real objects is ~0 either way."""
    kept = [d for d in detections if d["bbox"][2] > 0 and d["bbox"][3] > 0]
    kept = sorted(kept, key=lambda d: -d["score"])[:top * len(images)]
    annotations: list[dict[str, Any]] = []
    for det in sorted(kept, key=lambda d: (int(d["image_id"]), -d["score"])):
        x, y, w, h = (float(v) for v in det["bbox"])
        annotations.append({"id": len(annotations) + 1, "image_id": int(det["image_id"]),
                            "category_id": int(det["category_id"]), "bbox": [x, y, w, h],
                            "area": w * h, "iscrowd": 0})
    return {"images": [dict(i) for i in images], "annotations": annotations,
            "categories": [{"id": c, "name": str(c)} for c in range(1, num_classes + 1)]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name", choices=sorted(ARCHITECTURES))
    parser.add_argument("out", type=Path, help="SavedModel directory to write")
    parser.add_argument("--size", type=int, default=None, help="network input side (pixels)")
    parser.add_argument("--classes", type=int, default=90)
    parser.add_argument("--alpha", type=float, default=None,
                        help="MobileNetV2 width multiplier (mobilenetv2_ssd only)")
    parser.add_argument("--nms", choices=sorted(NMS), default=None,
                        help="mobilenetv2_ssd's NMS: builtin (default) or combined")
    parser.add_argument("--fixed-input", action="store_true",
                        help="input_tensor of [1, size, size, 3] instead of any size")
    args = parser.parse_args()
    options = {k: v for k, v in (("alpha", args.alpha), ("nms", args.nms)) if v is not None}
    built = build(args.name, args.out, args.size, args.classes, args.fixed_input, **options)
    print(f"{built.path} {built.name} {built.size}x{built.size} {built.classes} classes "
          f"{built.params} parameters")


if __name__ == "__main__":
    main()
