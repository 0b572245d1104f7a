"""The sample library: a COCO-format dataset's image list and the inputs prepared from it.

Inputs are decoded to uint8 tensors in chunks *before* they are timed: decoding competes with the
model for the CPU, so it never overlaps a timed call, and only one chunk is held in memory.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.config import ConfigError, DatasetConfig


@dataclass(frozen=True)
class ImageRecord:
    image_id: int
    path: Path
    width: int
    height: int


@dataclass(frozen=True)
class Dataset:
    name: str
    display_name: str
    annotations: Path
    images: tuple[ImageRecord, ...]
    keypoint_annotations: Path | None = None  # person keypoints, for keypoint models' OKS metrics
    #: the annotation file's other images, left out by ``num_images`` (INT8 calibration draws
    #: from them without loading the dataset again); their files are not checked here
    unscored: tuple[ImageRecord, ...] = ()


@dataclass(frozen=True)
class PreparedImage:
    record: ImageRecord
    tensor: Any  # tf.Tensor [1, H, W, 3] of the model's input dtype


def _read_annotations(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"annotations file {str(path)!r} is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list):
        raise ConfigError(f"annotations file {str(path)!r} has no 'images' list: not COCO format")
    for key in ("annotations", "categories"):
        if not isinstance(doc.get(key), list):
            raise ConfigError(f"annotations file {str(path)!r} has no {key!r} list: "
                              "not COCO format")
    return doc


def load_dataset(cfg: DatasetConfig, cache_dir: str) -> Dataset:
    """The dataset's sorted image list, cut to ``num_images`` (synthetic data generated first,
    COCO 2017 acquired once)."""
    keypoints = Path(cfg.keypoint_annotations).expanduser() if cfg.keypoint_annotations else None
    if cfg.kind == "synthetic":
        from runner.demo import synth

        root = synth.ensure_split(Path(cache_dir).expanduser() / "datasets", cfg.split,
                                  synth.SynthSpec(seed=cfg.seed))
        images_dir = root / cfg.split
        ann_path = root / "annotations" / f"instances_{cfg.split}.json"
    elif cfg.kind == "coco2017":
        from runner import acquire

        images_dir, ann_path, keypoints = acquire.ensure_coco_val2017(
            Path(cache_dir).expanduser())
    else:
        assert cfg.images_dir is not None and cfg.annotations is not None
        images_dir = Path(cfg.images_dir).expanduser()
        ann_path = Path(cfg.annotations).expanduser()
    doc = _read_annotations(ann_path)
    infos = sorted(doc["images"], key=lambda info: int(info["id"]))
    if cfg.num_images is not None and cfg.num_images > len(infos):
        raise ConfigError(f"dataset.num_images={cfg.num_images} exceeds the {len(infos)} "
                          f"images of {str(ann_path)!r}")
    every = tuple(
        ImageRecord(int(i["id"]), images_dir / i["file_name"], int(i["width"]), int(i["height"]))
        for i in infos
    )
    cut = len(every) if cfg.num_images is None else cfg.num_images
    records, unscored = every[:cut], every[cut:]
    require_files(records, f"image file(s) listed in {str(ann_path)!r}")
    return Dataset(cfg.name, cfg.display_name, ann_path, records, keypoints, unscored)


def require_files(records: Sequence[ImageRecord], what: str) -> None:
    """ConfigError naming the first of ``records`` whose file is missing, and how many are."""
    missing = [r.path for r in records if not r.path.is_file()]
    if missing:
        raise ConfigError(f"{len(missing)} {what} are missing, e.g. {str(missing[0])!r}")


def chunked(records: Sequence[ImageRecord], size: int) -> Iterator[Sequence[ImageRecord]]:
    for start in range(0, len(records), size):
        yield records[start : start + size]


def decode(record: ImageRecord, dtype: str = "uint8",
           resize: tuple[int, int] | None = None) -> Any:
    """One image as a [1, H, W, 3] tensor (grayscale and RGBA become RGB), optionally squashed to
    ``resize`` = (height, width) with ``tf.image.resize`` (bilinear, aspect ratio not kept)."""
    import tensorflow as tf

    try:
        raw = tf.io.read_file(str(record.path))
        image = tf.io.decode_image(raw, channels=3, expand_animations=False)
    except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError) as exc:
        raise ValueError(f"cannot decode image {str(record.path)!r}: {exc.message}") from exc
    height, width = int(image.shape[0]), int(image.shape[1])
    if (height, width) != (record.height, record.width):
        raise ValueError(f"image {str(record.path)!r} is {width}x{height} but its annotation says "
                         f"{record.width}x{record.height}")
    if resize is not None:
        image = tf.image.resize(image, resize)
        if dtype == "uint8":
            image = tf.cast(tf.clip_by_value(image, 0, 255), tf.uint8)
    return (image if image.dtype.name == dtype else tf.cast(image, dtype))[None]


def prepare(records: Sequence[ImageRecord], dtype: str = "uint8",
            resize: tuple[int, int] | None = None, progress: bool = True) -> list[PreparedImage]:
    """Decode a chunk of images (off the timed path)."""
    from tqdm import tqdm

    # disable=None: a bar on a terminal only, never into a log file or CI output
    iterator = tqdm(records, desc="prepare", unit="img", disable=None if progress else True,
                    leave=False,
                    position=1)
    return [PreparedImage(record, decode(record, dtype, resize)) for record in iterator]
