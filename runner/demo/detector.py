"""The demo detector: a small CenterNet-style network with in-graph preprocessing, decoding and NMS,
exported with the TF2 Detection Model Zoo's serving contract (see ``../shared/reference/zoo.md``,
beside the checkout)."""

from __future__ import annotations

from pathlib import Path

import keras
import tensorflow as tf
from keras import layers

#: Side of the square the model squashes every image to (like SSD's fixed-shape resizer).
INPUT_SIZE = 256
#: Output stride of the heads.
STRIDE = 4
MAX_DETECTIONS = 100


def _conv_bn(x: tf.Tensor, filters: int, stride: int = 1, kernel: int = 3) -> tf.Tensor:
    x = layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False)(x)
    x = layers.BatchNormalization()(x)
    return layers.ReLU()(x)


def _block(x: tf.Tensor, filters: int, stride: int) -> tf.Tensor:
    """A residual block of two 3x3 convolutions; the first may downsample."""
    shortcut = x
    y = _conv_bn(x, filters, stride)
    y = layers.Conv2D(filters, 3, padding="same", use_bias=False)(y)
    y = layers.BatchNormalization()(y)
    if stride != 1 or shortcut.shape[-1] != filters:
        shortcut = layers.Conv2D(filters, 1, strides=stride, use_bias=False)(shortcut)
        shortcut = layers.BatchNormalization()(shortcut)
    return layers.ReLU()(layers.Add()([y, shortcut]))


def build_network(num_classes: int) -> keras.Model:
    """Normalized float image [B, 256, 256, 3] -> heatmap logits, sizes and offsets at stride 4."""
    inputs = keras.Input((INPUT_SIZE, INPUT_SIZE, 3))
    c1 = _conv_bn(inputs, 24, stride=2)  # 128
    c2 = _block(c1, 32, 2)  # 64
    c3 = _block(c2, 64, 2)  # 32
    c4 = _block(c3, 96, 2)  # 16
    c5 = _block(c4, 128, 2)  # 8
    p = layers.Conv2D(64, 1)(c5)
    for lateral, width in ((c4, 64), (c3, 64), (c2, 48)):  # top-down to stride 4
        p = layers.UpSampling2D(interpolation="bilinear")(p)
        p = layers.Add()([layers.Conv2D(width, 1)(p), layers.Conv2D(width, 1)(lateral)])
        p = _conv_bn(p, width)
    shared = _conv_bn(p, 48)

    def head(out: int, bias: float = 0.0) -> tf.Tensor:
        init = keras.initializers.Constant(bias)
        return layers.Conv2D(out, 1, bias_initializer=init)(shared)

    heatmap = head(num_classes, bias=-2.19)  # prior 0.1, as in CenterNet
    size = head(2)
    offset = head(2)
    return keras.Model(inputs, [heatmap, size, offset], name="demo_centernet")


def preprocess(images_uint8: tf.Tensor) -> tf.Tensor:
    """uint8 [B, H, W, 3] -> float [B, 256, 256, 3] in [-1, 1]."""
    x = tf.image.resize(tf.cast(images_uint8, tf.float32), (INPUT_SIZE, INPUT_SIZE))
    return x / 127.5 - 1.0


def decode(
    heatmap_logits: tf.Tensor, size: tf.Tensor, offset: tf.Tensor, max_detections: int
) -> dict[str, tf.Tensor]:
    """CenterNet decoding (3x3 peak extraction, top-k) followed by class-wise NMS."""
    heat = tf.sigmoid(heatmap_logits)
    peaks = tf.cast(tf.equal(heat, tf.nn.max_pool2d(heat, 3, 1, "SAME")), heat.dtype)
    heat = heat * peaks
    batch = tf.shape(heat)[0]
    out_h, out_w, num_classes = heat.shape[1], heat.shape[2], heat.shape[3]
    scores, idx = tf.math.top_k(tf.reshape(heat, [batch, -1]), k=max_detections)
    cls = idx % num_classes
    cell = idx // num_classes
    ys, xs = cell // out_w, cell % out_w
    cell_size = tf.gather(tf.reshape(size, [batch, -1, 2]), cell, batch_dims=1)
    cell_off = tf.gather(tf.reshape(offset, [batch, -1, 2]), cell, batch_dims=1)
    cy = tf.cast(ys, tf.float32) + cell_off[..., 0]
    cx = tf.cast(xs, tf.float32) + cell_off[..., 1]
    h, w = cell_size[..., 0], cell_size[..., 1]
    boxes = tf.stack(
        [(cy - h / 2) / out_h, (cx - w / 2) / out_w, (cy + h / 2) / out_h, (cx + w / 2) / out_w],
        axis=-1,
    )
    boxes = tf.clip_by_value(boxes, 0.0, 1.0)
    class_scores = tf.one_hot(cls, num_classes) * scores[..., None]
    nms = tf.image.combined_non_max_suppression(
        boxes[:, :, None, :],
        class_scores,
        max_output_size_per_class=max_detections,
        max_total_size=max_detections,
        iou_threshold=0.6,
        score_threshold=0.01,
        clip_boxes=True,
    )
    return {
        "detection_boxes": nms.nmsed_boxes,
        "detection_classes": nms.nmsed_classes + 1.0,  # 1-based label-map ids
        "detection_scores": nms.nmsed_scores,
        "num_detections": tf.cast(nms.valid_detections, tf.float32),
    }


class ServingModule(tf.Module):
    """What the SavedModel holds: the network and the zoo-contract serving function."""

    def __init__(self, network: keras.Model, max_detections: int = MAX_DETECTIONS) -> None:
        super().__init__()
        self.network = network
        self.max_detections = max_detections

    @tf.function(
        input_signature=[tf.TensorSpec([1, None, None, 3], tf.uint8, name="input_tensor")]
    )
    def serve(self, input_tensor: tf.Tensor) -> dict[str, tf.Tensor]:
        heatmap, size, offset = self.network(preprocess(input_tensor), training=False)
        return decode(heatmap, size, offset, self.max_detections)


def export(network: keras.Model, export_dir: Path) -> None:
    """Write a SavedModel whose ``serving_default`` follows the zoo's contract."""
    module = ServingModule(network)
    tf.saved_model.save(module, str(export_dir), signatures={"serving_default": module.serve})
