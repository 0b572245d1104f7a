"""A deterministic synthetic COCO-format detection dataset: shapes of several classes on textured
backgrounds, images of varied sizes, written in COCO's layout::

    <root>/<split>/<image_id:012d>.jpg
    <root>/annotations/instances_<split>.json

The same seed and parameters always produce the same files, so the shipped demo detector, which was
trained on the ``train`` split, can be scored on a ``val`` split regenerated on any machine.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

#: Bump when the generator's output changes: it is part of the cache directory name.
GENERATOR_VERSION = 1

CATEGORIES: tuple[dict[str, Any], ...] = (
    {"id": 1, "name": "circle", "supercategory": "shape"},
    {"id": 2, "name": "square", "supercategory": "shape"},
    {"id": 3, "name": "triangle", "supercategory": "shape"},
    {"id": 4, "name": "cross", "supercategory": "shape"},
)


@dataclass(frozen=True)
class SynthSpec:
    """Everything that determines the generated files."""

    seed: int = 0
    num_train: int = 2000
    num_val: int = 200
    min_side: int = 192
    max_side: int = 384
    max_objects: int = 6
    min_object: int = 16
    max_object: int = 96

    def split_size(self, split: str) -> int:
        sizes = {"train": self.num_train, "val": self.num_val}
        if split not in sizes:
            raise ValueError(f"unknown split {split!r}; valid splits: {sorted(sizes)}")
        return sizes[split]

    def dirname(self) -> str:
        """Cache folder name: the default spec gets a short name, any other spec its values."""
        name = f"synthetic-v{GENERATOR_VERSION}-seed{self.seed}"
        if self != SynthSpec(seed=self.seed):
            name += "-" + "-".join(str(v) for v in asdict(self).values())
        return name


def _polygon(cls: int, x0: float, y0: float, w: float, h: float) -> list[tuple[float, float]]:
    """The outline of a shape of category ``cls`` inscribed in the box (x0, y0, w, h)."""
    cx, cy = x0 + w / 2, y0 + h / 2
    if cls == 1:  # ellipse as a 32-gon
        return [
            (cx + w / 2 * math.cos(t), cy + h / 2 * math.sin(t))
            for t in np.linspace(0, 2 * math.pi, 32, endpoint=False)
        ]
    if cls == 2:
        return [(x0, y0), (x0 + w, y0), (x0 + w, y0 + h), (x0, y0 + h)]
    if cls == 3:
        return [(cx, y0), (x0 + w, y0 + h), (x0, y0 + h)]
    t = 0.34  # cross: arm thickness relative to the box
    a, b = (1 - t) / 2, (1 + t) / 2
    pts = [(a, 0), (b, 0), (b, a), (1, a), (1, b), (b, b), (b, 1), (a, 1), (a, b), (0, b), (0, a),
           (a, a)]
    return [(x0 + px * w, y0 + py * h) for px, py in pts]


def _polygon_area(points: list[tuple[float, float]]) -> float:
    xs = np.array([p[0] for p in points])
    ys = np.array([p[1] for p in points])
    return float(0.5 * abs(np.dot(xs, np.roll(ys, 1)) - np.dot(ys, np.roll(xs, 1))))


def _iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def _background(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """A smooth two-colour gradient with mild noise: texture without shapes."""
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    angle = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:h, 0:w]
    t = (xx * math.cos(angle) + yy * math.sin(angle)) / max(w, h)
    t = (t - t.min()) / max(float(np.ptp(t)), 1e-6)
    img = c0[None, None, :] * (1 - t[..., None]) + c1[None, None, :] * t[..., None]
    img += rng.normal(0, 8, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def _contrasting_colour(rng: np.random.Generator, bg: np.ndarray) -> tuple[int, int, int]:
    for _ in range(20):
        colour = rng.integers(0, 256, 3)
        if np.abs(colour - bg).sum() > 180:
            break
    return (int(colour[0]), int(colour[1]), int(colour[2]))


def _draw_image(
    rng: np.random.Generator, spec: SynthSpec, image_id: int
) -> tuple[Image.Image, list[dict[str, Any]]]:
    w, h = (int(v) for v in rng.integers(spec.min_side, spec.max_side + 1, 2))
    img = _background(rng, w, h)
    draw = ImageDraw.Draw(img)
    boxes: list[tuple[float, float, float, float]] = []
    anns: list[dict[str, Any]] = []
    for _ in range(int(rng.integers(1, spec.max_objects + 1))):
        cls = int(rng.integers(1, len(CATEGORIES) + 1))
        bw = float(rng.uniform(spec.min_object, min(spec.max_object, w - 2)))
        bh = bw * float(rng.uniform(0.6, 1.6)) if cls != 4 else bw * float(rng.uniform(0.8, 1.25))
        bh = min(bh, h - 2.0)
        box = (float(rng.uniform(0, w - bw)), float(rng.uniform(0, h - bh)), bw, bh)
        if any(_iou(box, other) > 0.1 for other in boxes):
            continue
        poly = _polygon(cls, *box)
        centre = np.asarray(img)[int(box[1] + bh / 2), int(box[0] + bw / 2)].astype(int)
        draw.polygon(poly, fill=_contrasting_colour(rng, centre))
        boxes.append(box)
        anns.append(
            {
                "image_id": image_id,
                "category_id": cls,
                "bbox": [round(v, 2) for v in box],
                "area": round(_polygon_area(poly), 2),
                "iscrowd": 0,
                "segmentation": [[round(c, 2) for p in poly for c in p]],
            }
        )
    return img, anns


def _write_split(root: Path, split: str, spec: SynthSpec) -> None:
    split_seed = {"train": 1, "val": 2}[split]
    rng = np.random.default_rng([spec.seed, split_seed])
    (root / split).mkdir(parents=True, exist_ok=True)
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    first_id = 1 if split == "train" else 1_000_000
    for image_id in range(first_id, first_id + spec.split_size(split)):
        img, anns = _draw_image(rng, spec, image_id)
        file_name = f"{image_id:012d}.jpg"
        img.save(root / split / file_name, quality=92)
        images.append(
            {"id": image_id, "file_name": file_name, "width": img.width, "height": img.height}
        )
        for ann in anns:
            annotations.append({"id": len(annotations) + 1, **ann})
    doc = {
        "info": {"description": "detbench synthetic shapes", "spec": asdict(spec),
                 "generator_version": GENERATOR_VERSION},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": list(CATEGORIES),
    }
    (root / "annotations").mkdir(exist_ok=True)
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(doc))


def ensure_split(cache_dir: Path, split: str, spec: SynthSpec | None = None) -> Path:
    """Return the dataset root holding ``split``, generating it first if needed.

    Generation happens in a temporary directory that is renamed into place, so an interrupted
    run never leaves a half-written split behind.
    """
    spec = spec or SynthSpec()
    spec.split_size(split)
    root = Path(cache_dir).expanduser() / spec.dirname()
    marker = root / "annotations" / f"instances_{split}.json"
    if marker.is_file():
        return root
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{split}-", dir=root))
    try:
        _write_split(tmp, split, spec)
        (root / "annotations").mkdir(exist_ok=True)
        if not (root / split).exists():
            os.replace(tmp / split, root / split)
        os.replace(tmp / "annotations" / marker.name, marker)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("~/.cache/detbench/datasets"))
    parser.add_argument("--split", choices=["train", "val"], action="append")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-train", type=int, default=SynthSpec.num_train)
    parser.add_argument("--num-val", type=int, default=SynthSpec.num_val)
    args = parser.parse_args(argv)
    spec = SynthSpec(seed=args.seed, num_train=args.num_train, num_val=args.num_val)
    for split in args.split or ["train", "val"]:
        print(ensure_split(args.out, split, spec) / split)


if __name__ == "__main__":
    main()
