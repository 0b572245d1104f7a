"""Backends: the system under test, behind one registry.

A backend is a module in this package (or one named in ``$DETBENCH_BACKENDS``, comma-separated
import paths, or a ``detbench.backends`` entry point) that defines ``PLUGIN``, an instance of
:class:`Plugin`. The plugin owns everything backend-specific: its config section (a dataclass
added to ``precision``), validation, the availability check (run once per job, in the parent,
before any download; its result travels to the child), calibration needs, conversion (with the
shared conversion cache, ``runner.backends.cache``), the input format hook (``prepare_input``,
called in the untimed preparation), environment fields (into ``env.key``) and its table label and
order. The orchestrator (config, job, worker, environment, export) asks this registry and never
names a backend.

A loaded backend object (:class:`Backend`) exposes ``predict``: one prepared input -> the model's
outputs materialized as numpy arrays.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import os
import pkgutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol

import numpy as np

#: comma-separated import paths of extra backend modules (each defines ``PLUGIN``)
ENV_VAR = "DETBENCH_BACKENDS"
ENTRY_POINT_GROUP = "detbench.backends"


class UnsupportedPrecision(RuntimeError):
    """This machine, package set or model cannot run the requested backend or precision."""


class Backend(Protocol):
    input_dtype: str
    input_shape: list[int | None]

    def prepare_input(self, tensor: Any) -> Any:
        """The input format the model call takes, made from a decoded [1, H, W, 3] tf.Tensor;
        called during the untimed preparation so that nothing is converted on the timed path."""
        ...

    def predict(self, image: Any) -> Mapping[str, np.ndarray]: ...

    def check_executed(self, example: Any) -> dict[str, str]:
        """Record what actually ran for one untimed call; raise if it is not what was asked."""
        ...

    def metrics(self) -> dict[str, float]:
        """Backend-specific metrics (e.g. conversion time, model size)."""
        ...

    def describe(self) -> dict[str, str]: ...


#: how a backend's ``calibration_source`` may choose its images (``runner.calibration.select``);
#: every backend that calibrates validates its setting against this one list
CALIBRATION_SOURCES = ("disjoint", "seed")


@dataclass(frozen=True)
class CalibrationNeed:
    """How many images a backend calibrates on, chosen how (``runner.calibration``)."""

    count: int
    source: str  # one of CALIBRATION_SOURCES
    config_path: str  # e.g. "precision.trt": named in error messages


def int8_calibration(cfg: Any, section: str) -> CalibrationNeed | None:
    """The calibration a converted runtime's ``mode=int8`` needs (its config section ``cfg``
    has ``mode``, ``calibration_images`` and ``calibration_source``); None for any other mode."""
    if cfg.mode != "int8":
        return None
    return CalibrationNeed(cfg.calibration_images, cfg.calibration_source, f"precision.{section}")


def check_calibration_count(cfg: Any, section: str) -> None:
    """ConfigError unless ``precision.<section>.calibration_images`` is > 0."""
    if cfg.calibration_images <= 0:
        from runner.config import ConfigError

        raise ConfigError(f"precision.{section}.calibration_images={cfg.calibration_images!r} "
                          "is not valid; it must be > 0")


def calibration_id(records: Sequence[Any]) -> str:
    """``count:digest`` of the calibration images' ids: part of a conversion's cache key, so a
    different calibration set converts again."""
    digest = hashlib.sha256(",".join(str(r.image_id) for r in records).encode()).hexdigest()
    return f"{len(records)}:{digest[:16]}"


def package_version(*names: str) -> str:
    """The installed version of the first of ``names`` (distribution names) found, else
    "none"."""
    for name in names:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return "none"


@dataclass
class BuildContext:
    """Everything a plugin may use to load or convert the model (in the measuring process)."""

    model_dir: Path
    signature: str
    input_name: str
    input_dtype: str
    precision: Any  # the job's PrecisionConfig
    cache_dir: Path  # the job's cache root; a plugin keeps its conversions in a subfolder
    gpu_name: str  # first GPU's name, "none" without one
    nominal_hw: tuple[int, int] | None  # the job's nominal input size, None for "native"
    available: Mapping[str, str]  # what check_available returned in the parent
    build_images: Sequence[Any]  # ImageRecords to build engines / fix shapes with
    calibration_images: Sequence[Any]  # ImageRecords chosen by runner.calibration
    #: (records, dtype, model input shape) -> decoded tf.Tensors, resized by the job's policy
    prepare: Callable[[Sequence[Any], str, Sequence[int | None]], list[Any]]

    def calibration_inputs(self, dtype: str, shape: Sequence[int | None]) -> list[np.ndarray]:
        """The calibration images prepared like the scored inputs (before anything is timed),
        as contiguous numpy arrays for a converter."""
        return [np.ascontiguousarray(t.numpy())
                for t in self.prepare(self.calibration_images, dtype, shape)]


class Plugin:
    """One backend's knowledge. Subclasses override what differs from these defaults."""

    name: str = ""  # the value of precision.backend
    label: str = ""  # the runtime's name in tables ("Native", "TF-TRT", "LiteRT")
    order: int = 100  # position of the runtime in tables
    where: str = ""  # where it runs (README's precision table)
    #: display names of this backend's precisions, in table order
    display_order: tuple[str, ...] = ()

    def fields(self) -> list[tuple[str, Any, Any]]:
        """``(name, type, dataclasses.field(...))`` added to the precision config schema."""
        return []

    def validate(self, precision: Any) -> None:
        """Raise ConfigError for bad values of this plugin's own fields (whatever the backend)."""

    def check_available(self, precision: Any) -> dict[str, str]:
        """Raise UnsupportedPrecision saying what to install or where to run; else return the
        versions the job depends on (passed to ``create`` and recorded)."""
        return {}

    def environment(self, available: Mapping[str, str]) -> dict[str, str]:
        """``env.*`` tags from the availability record; they become part of ``env.key``."""
        return {}

    def calibration(self, precision: Any) -> CalibrationNeed | None:
        return None

    def before_import(self, precision: Any) -> None:
        """Process settings that must precede importing TensorFlow (e.g. XLA flags)."""

    def create(self, ctx: BuildContext) -> Backend:
        raise NotImplementedError(f"backend {self.name!r} defines no create()")


_REGISTRY: dict[str, Plugin] = {}
_DISCOVERED = False


def register(plugin: Plugin) -> Plugin:
    """Add a plugin (the schema of configs built afterwards includes its fields)."""
    if not plugin.name:
        raise ValueError(f"backend plugin {plugin!r} has no name")
    if plugin.name in _REGISTRY and _REGISTRY[plugin.name] is not plugin:
        raise ValueError(f"two backend plugins are named {plugin.name!r}")
    _REGISTRY[plugin.name] = plugin
    return plugin


def _discover() -> None:
    global _DISCOVERED
    if _DISCOVERED:
        return
    _DISCOVERED = True
    modules = [f"{__name__}.{m.name}" for m in pkgutil.iter_modules(__path__)]
    modules += [m.strip() for m in os.environ.get(ENV_VAR, "").split(",") if m.strip()]
    for name in modules:
        plugin = getattr(importlib.import_module(name), "PLUGIN", None)
        if isinstance(plugin, Plugin):
            register(plugin)
    for entry in metadata.entry_points(group=ENTRY_POINT_GROUP):
        plugin = entry.load()
        register(plugin() if isinstance(plugin, type) else plugin)


def plugins() -> list[Plugin]:
    """Every registered backend, in table order."""
    _discover()
    return sorted(_REGISTRY.values(), key=lambda p: (p.order, p.name))


def names() -> tuple[str, ...]:
    return tuple(p.name for p in plugins())


def get(name: str) -> Plugin:
    _discover()
    if name not in _REGISTRY:
        from runner.config import ConfigError

        raise ConfigError(f"precision.backend={name!r} is not valid; choose one of: "
                          f"{', '.join(names())}")
    return _REGISTRY[name]


def precision_schema(base: type) -> type:
    """The precision config dataclass: ``base``'s fields plus every plugin's."""
    extra: list[tuple[str, Any, Any]] = []
    owners: dict[str, str] = {f.name: "precision" for f in dataclasses.fields(base)}
    for plugin in plugins():
        for item in plugin.fields():
            if item[0] in owners:
                raise ValueError(f"precision.{item[0]} is defined by both {owners[item[0]]} "
                                 f"and backend {plugin.name!r}")
            owners[item[0]] = plugin.name
            extra.append(item)
    schema = dataclasses.make_dataclass("PrecisionConfig", extra, bases=(base,))
    schema.__module__ = base.__module__
    return schema


def validate(precision: Any) -> None:
    """The backend is registered; every plugin's fields are valid; scalar fields owned by
    another backend keep their defaults (they would be ignored, silently)."""
    from runner.config import ConfigError

    chosen = get(precision.backend)
    for plugin in plugins():
        plugin.validate(precision)
        if plugin is chosen:
            continue
        for name, _, spec in plugin.fields():
            if spec.default is dataclasses.MISSING:
                continue  # a section (default_factory): may hold values for a sweep
            if getattr(precision, name) != spec.default:
                raise ConfigError(
                    f"precision.{name}={getattr(precision, name)!r} applies to the "
                    f"{plugin.name} backend only, but precision.backend={chosen.name!r}")


def is_reference(precision: Any, schema: type) -> bool:
    """Whether ``precision`` is the schema's default precision (Native FP32, the reference AP
    differences are taken to): the default backend, with its own and the common fields at their
    defaults (other backends' sections may hold sweep-wide values)."""
    default = schema()
    if precision.backend != default.backend:
        return False
    names = [f.name for f in dataclasses.fields(schema) if f.name in ("name", "display_name",
                                                                        "backend")]
    names += [name for name, _, _ in get(default.backend).fields()]
    return all(getattr(precision, n) == getattr(default, n) for n in names)


def check_available(precision: Any) -> dict[str, str]:
    """The chosen backend's availability check (raises UnsupportedPrecision)."""
    return get(precision.backend).check_available(precision)


def table_rank(display_name: str) -> tuple[int, int]:
    """Sort key of a precision's display name: its runtime's order, then its place there;
    unknown names last."""
    for plugin in plugins():
        if display_name in plugin.display_order:
            return plugin.order, plugin.display_order.index(display_name)
    return 1 << 30, 0
