"""Train the demo detector on the synthetic ``train`` split; export a zoo-contract SavedModel.

Rebuild the shipped model (about 20 minutes on 2 cores)::

    python -m runner.demo.train --out runner/demo/assets/demo_centernet

Quick check that training runs (what the tests do)::

    python -m runner.demo.train --out /tmp/demo --steps 3 --num-train 16 --no-eval --no-jit
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from runner.demo import detector, synth

OUT_SIZE = detector.INPUT_SIZE // detector.STRIDE
MAX_OBJECTS = 8


def gaussian_radius(height: float, width: float, min_overlap: float = 0.7) -> float:
    """CenterNet's radius: the largest centre shift that keeps IoU >= min_overlap (all 3 cases)."""
    b1, c1 = height + width, width * height * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + math.sqrt(b1**2 - 4 * c1)) / 2
    b2, c2 = 2 * (height + width), (1 - min_overlap) * width * height
    r2 = (b2 + math.sqrt(b2**2 - 16 * c2)) / 2
    a3 = 4 * min_overlap
    b3, c3 = -2 * min_overlap * (height + width), (min_overlap - 1) * width * height
    r3 = (b3 + math.sqrt(b3**2 - 4 * a3 * c3)) / 2
    return min(r1, r2, r3)


def _draw_gaussian(heat: np.ndarray, cx: int, cy: int, radius: int) -> None:
    sigma = (2 * radius + 1) / 6
    ys, xs = np.ogrid[-radius : radius + 1, -radius : radius + 1]
    g = np.exp(-(xs * xs + ys * ys) / (2 * sigma * sigma))
    h, w = heat.shape
    top, bottom = min(cy, radius), min(h - cy, radius + 1)
    left, right = min(cx, radius), min(w - cx, radius + 1)
    region = heat[cy - top : cy + bottom, cx - left : cx + right]
    patch = g[radius - top : radius + bottom, radius - left : radius + right]
    np.maximum(region, patch, out=region)


def build_targets(
    anns: list[dict[str, Any]], width: int, height: int, num_classes: int
) -> dict[str, np.ndarray]:
    """Heatmap, per-object sizes/offsets/indices at stride 4 for one image squashed to 256x256."""
    heat = np.zeros((num_classes, OUT_SIZE, OUT_SIZE), np.float32)
    size = np.zeros((MAX_OBJECTS, 2), np.float32)
    offset = np.zeros((MAX_OBJECTS, 2), np.float32)
    index = np.zeros((MAX_OBJECTS,), np.int32)
    mask = np.zeros((MAX_OBJECTS,), np.float32)
    sx, sy = OUT_SIZE / width, OUT_SIZE / height
    for k, ann in enumerate(anns[:MAX_OBJECTS]):
        x, y, w, h = ann["bbox"]
        cx, cy, ow, oh = (x + w / 2) * sx, (y + h / 2) * sy, w * sx, h * sy
        ix, iy = min(int(cx), OUT_SIZE - 1), min(int(cy), OUT_SIZE - 1)
        radius = max(0, int(gaussian_radius(oh, ow)))
        _draw_gaussian(heat[ann["category_id"] - 1], ix, iy, radius)
        size[k], offset[k] = (oh, ow), (cy - iy, cx - ix)
        index[k] = iy * OUT_SIZE + ix
        mask[k] = 1.0
    return {"heatmap": heat.transpose(1, 2, 0), "size": size, "offset": offset, "index": index,
            "mask": mask}


def load_split(root: Path, split: str, limit: int | None = None) -> dict[str, np.ndarray]:
    """All images of a split squashed to 256x256 (uint8) with their targets."""
    doc = json.loads((root / "annotations" / f"instances_{split}.json").read_text())
    by_image: dict[int, list[dict[str, Any]]] = {}
    for ann in doc["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    num_classes = len(doc["categories"])
    images, targets = [], []
    for info in doc["images"][:limit]:
        raw = tf.io.decode_jpeg(tf.io.read_file(str(root / split / info["file_name"])), channels=3)
        resized = tf.image.resize(tf.cast(raw, tf.float32), (detector.INPUT_SIZE,) * 2)
        images.append(tf.cast(tf.round(resized), tf.uint8).numpy())
        anns = by_image.get(info["id"], [])
        targets.append(build_targets(anns, info["width"], info["height"], num_classes))
    stacked = {key: np.stack([t[key] for t in targets]) for key in targets[0]}
    return {"image": np.stack(images), **stacked}


def focal_loss(logits: tf.Tensor, target: tf.Tensor) -> tf.Tensor:
    """CenterNet's penalty-reduced pixel-wise focal loss, normalized by the number of objects."""
    p = tf.clip_by_value(tf.sigmoid(logits), 1e-4, 1 - 1e-4)
    pos = tf.cast(tf.equal(target, 1.0), tf.float32)
    pos_loss = tf.math.log(p) * tf.square(1 - p) * pos
    neg_loss = tf.math.log(1 - p) * tf.square(p) * tf.pow(1 - target, 4) * (1 - pos)
    num_pos = tf.maximum(tf.reduce_sum(pos), 1.0)
    return -(tf.reduce_sum(pos_loss) + tf.reduce_sum(neg_loss)) / num_pos


def regression_loss(pred: tf.Tensor, batch: dict[str, tf.Tensor], key: str) -> tf.Tensor:
    flat = tf.reshape(pred, [tf.shape(pred)[0], -1, 2])
    gathered = tf.gather(flat, batch["index"], batch_dims=1)
    mask = batch["mask"][..., None]
    l1 = tf.reduce_sum(tf.abs(gathered - batch[key]) * mask)
    return l1 / tf.maximum(tf.reduce_sum(mask), 1.0)


def train(data: dict[str, np.ndarray], steps: int, batch_size: int, lr: float, seed: int,
          log_every: int = 100, jit: bool = True) -> tf.keras.Model:
    tf.keras.utils.set_random_seed(seed)
    num_classes = data["heatmap"].shape[-1]
    network = detector.build_network(num_classes)
    schedule = tf.keras.optimizers.schedules.CosineDecay(lr, decay_steps=max(steps, 1),
                                                         warmup_target=None)
    optimizer = tf.keras.optimizers.Adam(schedule, clipnorm=5.0)
    dataset = (
        tf.data.Dataset.from_tensor_slices(data)
        .shuffle(len(data["image"]), seed=seed, reshuffle_each_iteration=True)
        .repeat()
        .batch(batch_size, drop_remainder=True)
        .prefetch(2)
    )

    @tf.function(jit_compile=jit)
    def step(batch: dict[str, tf.Tensor]) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        with tf.GradientTape() as tape:
            heat, size, offset = network(detector.preprocess(batch["image"]), training=True)
            l_heat = focal_loss(heat, batch["heatmap"])
            l_size = regression_loss(size, batch, "size")
            l_off = regression_loss(offset, batch, "offset")
            loss = l_heat + 0.1 * l_size + l_off
        grads = tape.gradient(loss, network.trainable_variables)
        optimizer.apply_gradients(zip(grads, network.trainable_variables, strict=True))
        return l_heat, l_size, l_off

    start = time.monotonic()
    for i, batch in enumerate(dataset.take(steps), start=1):
        losses = step(batch)
        if i % log_every == 0 or i == steps:
            heat_l, size_l, off_l = (float(v) for v in losses)
            print(f"step {i}/{steps} heat {heat_l:.3f} size {size_l:.3f} offset {off_l:.3f} "
                  f"({time.monotonic() - start:.0f} s)", flush=True)
    return network


def evaluate_saved_model(export_dir: Path, root: Path, split: str) -> dict[str, float]:
    """Score the exported SavedModel through its serving signature, as the runner does."""
    from runner.detections import Detections
    from runner.evaluate import ResultsAccumulator, evaluate_bbox

    fn = tf.saved_model.load(str(export_dir)).signatures["serving_default"]
    ann_file = root / "annotations" / f"instances_{split}.json"
    doc = json.loads(ann_file.read_text())
    acc = ResultsAccumulator()
    for info in doc["images"]:
        raw = tf.io.decode_jpeg(tf.io.read_file(str(root / split / info["file_name"])), channels=3)
        out = {k: v.numpy()[0] for k, v in fn(input_tensor=raw[None]).items()}
        n = int(out["num_detections"])
        det = Detections(out["detection_boxes"][:n], out["detection_classes"][:n].astype(np.int64),
                         out["detection_scores"][:n])
        acc.add(info["id"], info["width"], info["height"], det)
    return evaluate_bbox(ann_file, acc, [info["id"] for info in doc["images"]])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train and export the demo detector.")
    parser.add_argument("--out", type=Path, required=True, help="SavedModel directory to write")
    parser.add_argument("--data", type=Path, default=Path("~/.cache/detbench/datasets"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-train", type=int, default=synth.SynthSpec.num_train,
                        help="size of the generated train split")
    parser.add_argument("--steps", type=int, default=1600)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--num-val", type=int, default=synth.SynthSpec.num_val)
    parser.add_argument("--no-eval", action="store_true", help="skip scoring on the val split")
    parser.add_argument("--no-jit", action="store_true", help="no XLA (faster start, slower steps)")
    args = parser.parse_args(argv)

    spec = synth.SynthSpec(seed=args.seed, num_train=args.num_train, num_val=args.num_val)
    root = synth.ensure_split(args.data, "train", spec)
    data = load_split(root, "train")
    print(f"loaded {len(data['image'])} training images from {root}", flush=True)
    network = train(data, args.steps, min(args.batch_size, len(data["image"])), args.lr, args.seed,
                    jit=not args.no_jit)
    detector.export(network, args.out)
    print(f"exported SavedModel to {args.out}", flush=True)
    if not args.no_eval:
        synth.ensure_split(args.data, "val", spec)
        stats = evaluate_saved_model(args.out, root, "val")
        print("val " + " ".join(f"{k}={v:.4f}" for k, v in stats.items()), flush=True)


if __name__ == "__main__":
    main()
