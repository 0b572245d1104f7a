"""The sample library: a COCO-format dataset's image list and the inputs prepared from it.

Inputs are decoded to uint8 tensors in chunks *before* they are timed: decoding competes with the
model for the CPU, so it never overlaps a timed call, and only one chunk is held in memory.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner import config
from runner.config import ConfigError, DatasetConfig
from runner.detections import Frame


@dataclass(frozen=True)
class ImageRecord:
    """One image of a dataset: its COCO id, file and original pixel size."""

    image_id: int
    path: Path
    width: int
    height: int

    def to_json(self) -> dict[str, Any]:
        """The record as ``job.json`` and ``calibration.json`` hold it."""
        return {"image_id": self.image_id, "path": str(self.path), "width": self.width,
                "height": self.height}

    @classmethod
    def from_json(cls, value: Mapping[str, Any] | Sequence[Any]) -> ImageRecord:
        """The inverse of :meth:`to_json`. Also reads the positional ``[id, path, width,
        height]`` rows of job directories written before records had names (``runner.sync``
        may publish such a directory late)."""
        if isinstance(value, Mapping):
            return cls(int(value["image_id"]), Path(value["path"]), int(value["width"]),
                       int(value["height"]))
        image_id, path, width, height = value
        return cls(int(image_id), Path(path), int(width), int(height))


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
    frame: Frame | None = None  # where the tensor's pixels come from (None: the whole image)


@dataclass(frozen=True)
class InputSpec:
    """How images become the model's input, all of it off the timed path (the model-specific
    input hook; ``signatures.py`` is its output counterpart). Pixels 0..255 are resized to
    ``size`` by ``resize`` (squash | pad | pad_center), scaled to ``value_range``, put in
    ``channel_order`` and normalized as (x - mean) / std per channel."""

    dtype: str = "uint8"
    size: tuple[int, int] | None = None
    resize: str = "squash"
    value_range: tuple[float, float] = (0.0, 255.0)
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    channel_order: str = "rgb"

    @property
    def plain(self) -> bool:
        """Pixels as they are (no value transform)."""
        return (self.value_range == (0.0, 255.0) and self.mean is None and self.std is None
                and self.channel_order == "rgb")


def _read_annotations(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"annotations file {str(path)!r} is not valid JSON: {exc}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"annotations file {str(path)!r} cannot be read: {exc}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list):
        raise ConfigError(f"annotations file {str(path)!r} has no 'images' list: not COCO format")
    for key in ("annotations", "categories"):
        if not isinstance(doc.get(key), list):
            raise ConfigError(f"annotations file {str(path)!r} has no {key!r} list: "
                              "not COCO format")
    validate_annotations(doc, path)
    return doc


def _ids(values: Sequence[Any], limit: int = 10) -> str:
    """``3, 7, 9`` (and ``... (N in all)`` past ``limit``) for an error message."""
    shown = ", ".join(repr(v) for v in values[:limit])
    return shown if len(values) <= limit else f"{shown}, ... ({len(values)} in all)"


def _duplicates(values: Sequence[Any]) -> list[Any]:
    seen: set[Any] = set()
    dups: list[Any] = []
    for value in values:
        if value in seen and value not in dups:
            dups.append(value)
        seen.add(value)
    return dups


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_size(value: Any) -> bool:
    return _is_int(value) and value > 0


def validate_annotations(doc: dict[str, Any], path: Path) -> None:
    """Refuse a COCO annotations document that would fail late or change AP silently.

    Checked before any model loads (a duplicate image id used to fail only after every image
    was timed; a duplicate annotation id changed box AP from 72.64 to 72.04 without a word).
    Each message names the file and the offending ids. Costs about 0.2 s for a document of
    COCO val2017's size (5,000 images, 36,781 annotations; measured on a shared 2-core VM)."""
    where = f"annotations file {str(path)!r}"
    images, anns, cats = doc["images"], doc["annotations"], doc["categories"]
    if not images:
        raise ConfigError(f"{where} has an empty 'images' list: there is nothing to measure")
    not_dict = [i for i, info in enumerate(images) if not isinstance(info, dict)]
    if not_dict:
        raise ConfigError(f"{where}: images[{_ids(not_dict)}] are not objects")
    bad_ids = [info.get("id") for info in images if not _is_int(info.get("id"))]
    if bad_ids:
        raise ConfigError(f"{where}: image ids must be integers; found {_ids(bad_ids)}")
    image_ids = [info["id"] for info in images]
    dup = _duplicates(image_ids)
    if dup:
        raise ConfigError(f"{where}: duplicate image ids {_ids(dup)} (each image needs its own "
                          "id: detections are matched to ground truth by it)")
    for key in ("width", "height"):
        bad = [info["id"] for info in images if not _is_size(info.get(key))]
        if bad:
            raise ConfigError(f"{where}: images with a missing or non-positive integer {key!r}: "
                              f"ids {_ids(bad)}")
    bad = [info["id"] for info in images if not isinstance(info.get("file_name"), str)
           or not info["file_name"]]
    if bad:
        raise ConfigError(f"{where}: images without a 'file_name': ids {_ids(bad)}")
    bad_cats = [c.get("id") if isinstance(c, dict) else c for c in cats
                if not (isinstance(c, dict) and _is_int(c.get("id")))]
    if bad_cats:
        raise ConfigError(f"{where}: category ids must be integers; found {_ids(bad_cats)}")
    category_ids = [c["id"] for c in cats]
    dup = _duplicates(category_ids)
    if dup:
        raise ConfigError(f"{where}: duplicate category ids {_ids(dup)}")
    _validate_instances(where, anns, set(image_ids), set(category_ids))


def _validate_instances(where: str, anns: Sequence[Any], image_ids: set[int],
                        category_ids: set[int]) -> None:
    not_dict = [i for i, ann in enumerate(anns) if not isinstance(ann, dict)]
    if not_dict:
        raise ConfigError(f"{where}: annotations[{_ids(not_dict)}] are not objects")
    bad = [ann.get("id") for ann in anns if not _is_int(ann.get("id"))]
    if bad:
        raise ConfigError(f"{where}: annotation ids must be integers; found {_ids(bad)}")
    dup = _duplicates([ann["id"] for ann in anns])
    if dup:
        raise ConfigError(f"{where}: duplicate annotation ids {_ids(dup)} (COCO evaluation keys "
                          "ground truth by id, so a duplicate silently changes AP)")
    unknown = [ann["id"] for ann in anns if ann.get("image_id") not in image_ids]
    if unknown:
        raise ConfigError(f"{where}: annotations referencing an image id that is not in "
                          f"'images': annotation ids {_ids(unknown)}")
    unknown = [ann["id"] for ann in anns if ann.get("category_id") not in category_ids]
    if unknown:
        raise ConfigError(f"{where}: annotations referencing a category id that is not in "
                          f"'categories': annotation ids {_ids(unknown)}")
    bad = [ann["id"] for ann in anns if not _is_box(ann.get("bbox"))]
    if bad:
        raise ConfigError(f"{where}: annotations whose 'bbox' is not [x, y, width, height] with "
                          f"finite numbers and width, height >= 0: annotation ids {_ids(bad)}")


def _is_box(box: Any) -> bool:
    import math

    return (isinstance(box, list) and len(box) == 4
            and all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
                    for v in box) and box[2] >= 0 and box[3] >= 0)


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
    every = _records(ann_path, images_dir)
    if cfg.num_images is not None and cfg.num_images > len(every):
        raise ConfigError(f"dataset.num_images={cfg.num_images} exceeds the {len(every)} "
                          f"images of {str(ann_path)!r}")
    cut = len(every) if cfg.num_images is None else cfg.num_images
    records, unscored = every[:cut], every[cut:]
    require_files(records, f"image file(s) listed in {str(ann_path)!r}")
    return Dataset(cfg.name, cfg.display_name, ann_path, records, keypoints, unscored)


_LAST: dict[tuple[str, str, int, int], tuple[ImageRecord, ...]] = {}


def _records(ann_path: Path, images_dir: Path) -> tuple[ImageRecord, ...]:
    """The annotation file's images sorted by id, read and validated once per process while the
    file is unchanged (the parent loads the dataset for its resume check, then for the job)."""
    try:
        st = ann_path.stat()
    except OSError as exc:
        raise ConfigError(f"annotations file {str(ann_path)!r} cannot be read: "
                          f"{exc.strerror or exc}") from exc
    key = (str(ann_path.resolve()), str(images_dir), st.st_size, st.st_mtime_ns)
    if key not in _LAST:
        infos = sorted(_read_annotations(ann_path)["images"], key=lambda info: int(info["id"]))
        _LAST.clear()  # one entry: COCO val2017's list is small, its parsed document is not
        _LAST[key] = tuple(ImageRecord(int(i["id"]), images_dir / i["file_name"], int(i["width"]),
                                       int(i["height"])) for i in infos)
    return _LAST[key]


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
            resize: tuple[int, int] | None = None, progress: bool = True,
            spec: InputSpec | None = None) -> list[PreparedImage]:
    """Decode a chunk of images (off the timed path); with ``spec``, as it says (``dtype`` and
    ``resize`` are then ignored), each with its :class:`Frame`."""
    from tqdm import tqdm

    # disable=None: a bar on a terminal only, never into a log file or CI output
    iterator = tqdm(records, desc="prepare", unit="img", disable=None if progress else True,
                    leave=False,
                    position=1)
    if spec is None:
        spec = InputSpec(dtype=dtype, size=resize)
    return [prepare_one(record, spec) for record in iterator]


def prepare_one(record: ImageRecord, spec: InputSpec) -> PreparedImage:
    """One image as ``spec`` says, with the frame that maps the model's boxes back."""
    import tensorflow as tf

    from runner.signatures import resize_geometry

    original = (record.height, record.width)
    if spec.size is None or spec.resize == "squash":
        tensor = decode(record, spec.dtype if spec.plain else "float32", spec.size)
        fed = spec.size or original
        frame = Frame(original, fed, (fed[0] / original[0], fed[1] / original[1]))
    else:
        image = decode(record, "float32")
        scale, offset, content = resize_geometry(original, spec.size, spec.resize)
        image = tf.image.resize(image, content)
        top, left = int(offset[0]), int(offset[1])
        image = tf.image.pad_to_bounding_box(image, top, left, *spec.size)
        if spec.plain and spec.dtype == "uint8":
            image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
        # the frame's scale is the realized one (content size / original), so boxes map back
        # exactly to what the model saw
        frame = Frame(original, spec.size, (content[0] / original[0], content[1] / original[1]),
                      (float(top), float(left)))
        tensor = image
    if not spec.plain:
        tensor = _convert_values(tensor, spec)
    if tensor.dtype.name != spec.dtype:
        tensor = tf.cast(tensor, spec.dtype)
    return PreparedImage(record, tensor, frame)


def _convert_values(image: Any, spec: InputSpec) -> Any:
    """float pixels 0..255 -> value_range, channel order, (x - mean) / std. Padding (black
    pixels) is transformed with the image."""
    import tensorflow as tf

    low, high = spec.value_range
    x = tf.cast(image, tf.float32) * ((high - low) / 255.0) + low
    if spec.channel_order == "bgr":
        x = x[..., ::-1]
    if spec.mean is not None:
        x = x - tf.constant(spec.mean, tf.float32)
    if spec.std is not None:
        x = x / tf.constant(spec.std, tf.float32)
    return x


def input_spec(cfg: config.JobConfig, input_shape: Sequence[int | None], dtype: str) -> InputSpec:
    """How this job prepares inputs. The ``seed`` policy squash-resizes to the nominal size (the
    public table's method). ``native`` feeds the original image to a model that takes any size;
    a model with a fixed input size, or a model without published resolutions run at
    ``resolution=HxW``, gets its images resized to that size by ``model.resize`` (squash by
    default, ``pad`` / ``pad_center`` keep the aspect ratio)."""
    m = cfg.model
    if cfg.benchmark.input_policy == "seed":
        size: tuple[int, int] | None = config.resolution_hw(config.nominal_resolution(cfg))
        resize = "squash"
    else:
        h, w = (input_shape[1], input_shape[2]) if len(input_shape) == 4 else (None, None)
        fixed = (int(h), int(w)) if h is not None and w is not None else None
        name = cfg.resolution.name
        explicit = (config.resolution_hw(name)
                    if name != "default" and not m.resolutions else None)
        if fixed and explicit and fixed != explicit:
            raise ConfigError(f"resolution={name!r} but the model's input is fixed at "
                              f"{fixed[0]}x{fixed[1]}; use resolution={fixed[0]}x{fixed[1]} or "
                              "resolution=default")
        size, resize = fixed or explicit, m.resize
    return InputSpec(dtype=dtype, size=size, resize=resize,
                     value_range=(float(m.input_range[0]), float(m.input_range[1])),
                     mean=tuple(float(v) for v in m.input_mean) if m.input_mean else None,
                     std=tuple(float(v) for v in m.input_std) if m.input_std else None,
                     channel_order=m.channel_order)
