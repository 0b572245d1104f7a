"""Typed configuration: one dataclass per config group, registered with Hydra's ConfigStore as the
schema of the primary config (outside the swept groups, so ``glob(*)`` sees only real options),
and the semantic checks that run before anything expensive happens."""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from runner import backends
from runner.signatures import (
    ADAPTER_ALIASES,
    ADAPTER_NAMES,
    BOX_FORMATS,
    BOX_FRAMES,
    BOX_ORDERS,
    CLASS_MAPS,
    RESIZE_RULES,
    ROLES,
)
from runner.stats import PERCENTILE_METHODS
from runner.telemetry.probe import DEFAULT_INTERVAL_S


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the value and what is valid."""


@dataclass
class OutputKeys:
    """Only for model.outputs=custom: the output key of each role."""

    boxes: str | None = None
    classes: str | None = None
    scores: str | None = None
    num_detections: str | None = None  # optional: all rows are valid without it
    keypoints: str | None = None  # [1, N, K, 2] in the boxes' units, order and frame
    keypoint_scores: str | None = None  # [1, N, K]
    masks: str | None = None  # [1, N, h, w] box-relative masks (the zoo's Mask R-CNN form)
    image_info: str | None = None  # box_frame=image_info: the [1, 4, 2] scale output


@dataclass
class ModelConfig:
    """A detection SavedModel and how to call it."""

    name: str = MISSING  # config key, e.g. "demo"
    display_name: str = MISSING  # the public table's "Model" column
    source: str = "embedded"  # embedded (shipped) | zoo (downloaded) | path (a SavedModel dir)
    path: str | None = None  # SavedModel directory for source=path
    resolutions: list[str] = field(default_factory=list)  # published resolutions, default first
    signature: str = "serving_default"
    input_name: str = "input_tensor"
    input_dtype: str = "uint8"
    outputs: str = "zoo"  # runner.signatures.ADAPTER_NAMES (old names: ADAPTER_ALIASES)
    output_keys: OutputKeys = field(default_factory=OutputKeys)  # outputs=custom only
    # normalized | pixels (+ box_order) | KerasCV names: yxyx xyxy xywh center_xywh (pixels of
    # box_frame) and rel_yxyx rel_xyxy rel_xywh rel_center_xywh (relative to it)
    box_format: str = "normalized"
    box_order: str = "yx"  # normalized/pixels only: yx [ymin, xmin, ymax, xmax] | xy
    # what pixels are pixels of: input (the tensor fed, after detbench's resize/pad) | original |
    # image_info (Model Garden's scale output) | internal (internal_size, internal_resize)
    box_frame: str = "input"
    internal_size: str | None = None  # HxW the model resizes its input to (box_frame=internal)
    internal_resize: str = "squash"  # how it does: squash | pad (top left) | pad_center
    class_offset: int = 0  # added to output classes to get COCO category ids
    class_map: str = "none"  # none | coco80 (contiguous 0..79 after the offset -> COCO ids)
    score_floor: float = 0.0  # outputs=custom: rows scoring <= this are padding, dropped
    # inputs, prepared off the timed path: pixel values 0..255 scaled to input_range, channels
    # reordered, then (x - input_mean) / input_std per channel (in the model's channel order)
    input_range: list[float] = field(default_factory=lambda: [0.0, 255.0])
    input_mean: list[float] | None = None
    input_std: list[float] | None = None
    channel_order: str = "rgb"  # rgb | bgr
    # how detbench resizes to a fixed input size or resolution=HxW: squash (aspect ratio not
    # kept) | pad (aspect kept, padded bottom/right with zeros) | pad_center (letterbox)
    resize: str = "squash"
    output_checks: str = "fail"  # fail | warn: what a wrong-looking output mapping does


@dataclass
class ResolutionConfig:
    """The nominal input size; ``default`` means the model's own (its first published one)."""

    name: str = "default"


@dataclass
class PrecisionBase:
    """The fields every precision has; each backend adds its own (``runner.backends``)."""

    name: str = "fp32"
    display_name: str = "Native FP32"  # the public table's "TF-TRT" column
    backend: str = "native"  # a registered backend: runner.backends.names()


if TYPE_CHECKING:
    class PrecisionConfig(PrecisionBase):
        def __getattr__(self, name: str) -> Any: ...  # the backends' fields
else:
    PrecisionConfig = backends.precision_schema(PrecisionBase)


@dataclass
class DatasetConfig:
    name: str = MISSING
    display_name: str = MISSING
    kind: str = "synthetic"  # synthetic (from seed) | coco2017 (downloaded) | coco (files)
    split: str = "val"
    seed: int = 0
    images_dir: str | None = None  # kind=coco: folder of images
    annotations: str | None = None  # kind=coco: instances_<split>.json
    keypoint_annotations: str | None = None  # kind=coco: person_keypoints_<split>.json
    # INT8 calibration images come from this split (None: the split's images not scored)
    calibration_split: str | None = None
    num_images: int | None = None  # None: all; else the first N by sorted image id


@dataclass
class BenchmarkConfig:
    warmup: int = 50  # untimed calls before timing, as in the public table
    chunk_size: int = 256  # images decoded at a time (bounds memory; decoding is never timed)
    percentile_method: str = "linear"
    # telemetry's time series; 0.1 s: the interval whose cost measured <= 1.01 (0.999; 50 ms
    # 1.015), set in runner/telemetry/probe.py with the measurement
    sample_interval_s: float = DEFAULT_INTERVAL_S
    telemetry: bool = True
    # native: the original image (the model resizes, as the zoo intends); seed: squash-resize to
    # the nominal size and truncate boxes to int, as the public table did.
    input_policy: str = "native"
    isolate: bool = True  # measured work in a fresh child process
    timeout_s: float = 7200.0  # the child is killed past this
    repeats: int = 1  # timed passes over each prepared chunk; reported as mean and spread
    cv_threshold: float = 0.10  # latency CV above this raises the stability warning
    rerun: bool = False  # False: skip a job whose identical config already FINISHED


@dataclass
class TrackingConfig:
    uri: str | None = None  # None: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the cwd
    experiment: str = "detbench"
    run_name: str | None = None  # None: <model>@<resolution>/<precision>


@dataclass
class JobConfig:
    model: ModelConfig = MISSING
    resolution: ResolutionConfig = MISSING
    precision: PrecisionConfig = MISSING
    dataset: DatasetConfig = MISSING
    benchmark: BenchmarkConfig = MISSING
    tracking: TrackingConfig = MISSING
    cache_dir: str = "~/.cache/detbench"


def __getattr__(name: str) -> Any:
    """A backend's config section class by name (e.g. ``config.TrtConfig``), for callers that
    imported it from here before the backends owned their schemas."""
    for plugin in backends.plugins():
        for _, kind, _ in plugin.fields():
            if getattr(kind, "__name__", None) == name:
                return kind
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def register() -> None:
    ConfigStore.instance().store(name="detbench_schema", node=JobConfig)


#: config keys that do not change what a job measures: left out of its identity (resume), of
#: run names and of comparisons (one list: runner.job, runner.results.describe, runner.reference)
NOT_MEASURED = ("tracking", "benchmark.rerun", "benchmark.timeout_s", "benchmark.isolate",
                "cache_dir")
MODEL_SOURCES = ("embedded", "zoo", "path")
DATASET_KINDS = ("synthetic", "coco2017", "coco")
INPUT_DTYPES = ("uint8", "float32")
INPUT_POLICIES = ("native", "seed")
CHANNEL_ORDERS = ("rgb", "bgr")
OUTPUT_CHECKS = ("fail", "warn")
#: resolution names besides HxW: the model's own (first published) size
RESOLUTION_NAMES = ("default",)
_HXW = re.compile(r"([1-9][0-9]{0,4})x([1-9][0-9]{0,4})")
SPLITS = ("train", "val")


def _choice(name: str, value: Any, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ConfigError(f"{name}={value!r} is not valid; choose one of: {', '.join(valid)}")


def _choice_or_alias(name: str, value: Any, valid: tuple[str, ...],
                     aliases: dict[str, str]) -> None:
    """A choice that may also be given by an old name (``aliases``: old -> current)."""
    if value not in valid and value not in aliases:
        old = ", ".join(f"{a} (now {b})" for a, b in aliases.items())
        raise ConfigError(f"{name}={value!r} is not valid; choose one of: {', '.join(valid)}"
                          + (f"; old names still accepted: {old}" if old else ""))


def _positive(name: str, value: float | None, allow_zero: bool = False) -> None:
    if value is None:
        return
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        bound = "a finite number >= 0" if allow_zero else "a finite number > 0"
        raise ConfigError(f"{name}={value!r} is not valid; it must be {bound}")


def _existing(name: str, value: str | None, want_dir: bool) -> None:
    if value is None:
        raise ConfigError(f"{name} is not set; give the path of an existing "
                          f"{'directory' if want_dir else 'file'}")
    path = Path(os.path.expanduser(value))
    ok = path.is_dir() if want_dir else path.is_file()
    if not ok:
        kind = "directory" if want_dir else "file"
        raise ConfigError(f"{name}={value!r} does not exist or is not a {kind}")


def validate(cfg: JobConfig | DictConfig) -> None:
    """Check values that types cannot: choices, ranges and paths. Raises ConfigError."""
    model, data, bench = cfg.model, cfg.dataset, cfg.benchmark
    _choice("model.source", model.source, MODEL_SOURCES)
    _choice_or_alias("model.outputs", model.outputs, ADAPTER_NAMES, ADAPTER_ALIASES)
    _choice("model.input_dtype", model.input_dtype, INPUT_DTYPES)
    _choice("model.box_format", model.box_format, BOX_FORMATS)
    _choice("model.box_order", model.box_order, BOX_ORDERS)
    validate_model_io(model)
    validate_resolution(cfg.resolution.name, model.resolutions)
    _choice("benchmark.input_policy", bench.input_policy, INPUT_POLICIES)
    _positive("benchmark.timeout_s", bench.timeout_s)
    _positive("benchmark.repeats", bench.repeats)
    _positive("benchmark.cv_threshold", bench.cv_threshold, allow_zero=True)
    if model.outputs == "custom":
        for role in ROLES[:3]:
            if not getattr(model.output_keys, role):
                raise ConfigError(f"model.output_keys.{role} is not set: outputs=custom needs "
                                  f"model.output_keys.{{{', '.join(ROLES[:3])}}} "
                                  "(num_detections optional)")
    backends.validate(cfg.precision)  # each backend checks its own fields
    _choice("dataset.kind", data.kind, DATASET_KINDS)
    _choice("dataset.split", data.split, SPLITS)
    _choice("benchmark.percentile_method", bench.percentile_method, PERCENTILE_METHODS)
    _positive("dataset.num_images", data.num_images)
    _positive("benchmark.warmup", bench.warmup, allow_zero=True)
    _positive("benchmark.chunk_size", bench.chunk_size)
    _positive("benchmark.sample_interval_s", bench.sample_interval_s)
    if model.source == "path" and model.path:
        _existing("model.path", model.path, want_dir=True)
        _existing("model.path (saved_model.pb)", os.path.join(os.path.expanduser(model.path or ""),
                                                              "saved_model.pb"), want_dir=False)
    if data.kind == "coco":
        _existing("dataset.images_dir", data.images_dir, want_dir=True)
        _existing("dataset.annotations", data.annotations, want_dir=False)
    if bench.input_policy == "seed" and nominal_resolution(cfg) == "native":
        raise ConfigError("benchmark.input_policy='seed' needs a nominal size: choose a "
                          "resolution (e.g. resolution=640x640) or a model with resolutions")


def validate_model_io(model: ModelConfig | DictConfig) -> None:
    """The input and output conventions of ``model.*`` (choices, shapes, combinations)."""
    _choice("model.box_frame", model.box_frame, BOX_FRAMES)
    _choice("model.internal_resize", model.internal_resize, RESIZE_RULES)
    _choice("model.resize", model.resize, RESIZE_RULES)
    _choice("model.class_map", model.class_map, CLASS_MAPS)
    _choice("model.channel_order", model.channel_order, CHANNEL_ORDERS)
    _choice("model.output_checks", model.output_checks, OUTPUT_CHECKS)
    if model.box_format not in ("normalized", "pixels") and model.box_order != "yx":
        raise ConfigError(f"model.box_order={model.box_order!r} applies to box_format normalized "
                          f"or pixels only; box_format={model.box_format!r} names its own order")
    if model.box_frame == "internal" and not model.internal_size:
        raise ConfigError("model.box_frame='internal' needs model.internal_size=HxW (the size "
                          "the model resizes its input to, e.g. 384x384)")
    if model.internal_size and not _HXW.fullmatch(str(model.internal_size)):
        raise ConfigError(f"model.internal_size={model.internal_size!r} is not valid; give HxW, "
                          "e.g. 384x384")
    if model.box_frame == "image_info" and model.outputs != "custom":
        raise ConfigError("model.box_frame='image_info' needs model.outputs=custom (and "
                          "model.output_keys.image_info, default image_info)")
    if not math.isfinite(model.score_floor):
        raise ConfigError(f"model.score_floor={model.score_floor!r} must be a finite number")
    rng = list(model.input_range)
    if len(rng) != 2 or not all(math.isfinite(v) for v in rng) or rng[0] >= rng[1]:
        raise ConfigError(f"model.input_range={rng!r} is not valid; give [low, high] with low < "
                          "high, e.g. [0, 255], [0, 1] or [-1, 1]")
    for name in ("input_mean", "input_std"):
        value = getattr(model, name)
        if value is not None and (len(value) not in (1, 3)
                                  or not all(math.isfinite(v) for v in value)):
            raise ConfigError(f"model.{name}={list(value)!r} is not valid; give 1 or 3 finite "
                              "numbers (per channel, in the model's channel order)")
    if model.input_std is not None and any(v == 0 for v in model.input_std):
        raise ConfigError(f"model.input_std={list(model.input_std)!r} has a zero")
    if model.input_dtype == "uint8" and (rng != [0, 255] or model.input_mean is not None
                                         or model.input_std is not None):
        raise ConfigError("model.input_range / input_mean / input_std need a float input: "
                          f"model.input_dtype={model.input_dtype!r} takes pixels 0..255 as they "
                          "are (set model.input_dtype=float32)")


def validate_resolution(name: str, published: list[str] | Any) -> None:
    """``resolution.name``: ``default`` or HxW (any size for a model without published ones)."""
    if name in RESOLUTION_NAMES or _HXW.fullmatch(str(name)):
        return
    extra = f"; published for this model: {', '.join(published)}" if published else ""
    raise ConfigError(f"resolution.name={name!r} is not valid; choose one of: "
                      f"{', '.join(RESOLUTION_NAMES)}, or HxW such as 384x384{extra}")


def rewrite_resolution_args(argv: list[str], conf_dir: str | Path) -> list[str]:
    """``resolution=384x384`` (a size without a file in conf/resolution/) becomes
    ``resolution.name=384x384``: every resolution option only sets its name, so any HxW is
    expressible on the command line, sweeps (``resolution=384x384,512x512``) included."""
    out = []
    for arg in argv:
        key, eq, value = arg.partition("=")
        values = value.split(",") if eq else []
        if (key == "resolution" and values and all(_HXW.fullmatch(v) for v in values)
                and not all((Path(conf_dir) / "resolution" / f"{v}.yaml").is_file()
                            for v in values)):
            arg = f"resolution.name={value}"
        out.append(arg)
    return out


def skip_reason(cfg: JobConfig | DictConfig) -> str | None:
    """Why this job should not run at all (a combination that does not exist), else None."""
    res, model = cfg.resolution.name, cfg.model
    if model.source == "path" and not model.path:
        return (f"model={model.name} needs model.path=<SavedModel directory> "
                "(e.g. python -m runner model=custom model.path=/models/x/saved_model)")
    if res != "default" and model.resolutions and res not in model.resolutions:
        return (f"resolution={res!r} was not published for model={model.name!r}; "
                f"published: {', '.join(model.resolutions)}")
    return None


def resolution_hw(name: str) -> tuple[int, int]:
    """"640x640" -> (640, 640); "800x1333" -> (800, 1333) as (height, width)."""
    h, _, w = name.partition("x")
    return int(h), int(w)


def to_object(cfg: DictConfig) -> JobConfig:
    """The typed config object for a composed DictConfig (interpolations resolved)."""
    obj = OmegaConf.to_object(cfg)
    assert isinstance(obj, JobConfig)
    return obj


def nominal_resolution(cfg: JobConfig | DictConfig) -> str:
    """The resolution a run is labelled with (the table's "Input" column)."""
    if cfg.resolution.name != "default":
        return cfg.resolution.name
    return cfg.model.resolutions[0] if cfg.model.resolutions else "native"
