"""TF-TRT: convert a SavedModel with ``tf.experimental.tensorrt.Converter``, build its engines for
the job's input shape, save, reload and time the converted serving signature (NativeBackend).

Only TensorFlow builds with TensorRT can run this (NVIDIA's container; pip TensorFlow has none
since 2.18): elsewhere ``check_available`` raises at once with how to get one. The conversion
sequence follows ../shared/reference/zoo.md; converted models are cached (``cache``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.backends import (
    CALIBRATION_SOURCES,
    BuildContext,
    CalibrationNeed,
    Plugin,
    package_version,
)
from runner.backends.cache import CacheResult, ConversionCache, source_hash
from runner.backends.native import NativeBackend, UnsupportedPrecision

TRT_MODES = ("FP32", "FP16", "INT8")


@dataclass
class TrtConfig:
    """TF-TRT converter settings (tf.experimental.tensorrt.Converter); documented defaults."""

    precision_mode: str = "FP32"  # FP32 | FP16 | INT8
    max_workspace_size_bytes: int = 1 << 30
    minimum_segment_size: int = 3  # the API default
    maximum_cached_engines: int = 1
    allow_build_at_runtime: bool = True
    use_dynamic_shape: bool = False
    dynamic_shape_profile_strategy: str = "Optimal"
    calibration_images: int = 100  # INT8 only
    # disjoint: images not scored (MLPerf's rule); seed: the first scored images (public table)
    calibration_source: str = "disjoint"


HOW_TO_GET_IT = ("run TF-TRT precisions in NVIDIA's TensorFlow container, e.g. "
                 "make docker-bench ARGS=\"precision=trt_fp16\" (docker/README.md)")


def versions() -> dict[str, str]:
    """TensorFlow and TensorRT (linked, loaded) versions; 'none' where TensorRT is absent."""
    import tensorflow as tf

    from runner.environment import tensorrt_versions

    linked, loaded = tensorrt_versions()
    return {"tensorflow": tf.__version__, "tensorrt_linked": linked, "tensorrt_loaded": loaded}


def tensorrt_build() -> bool | None:
    """Whether the installed TensorFlow was built with TensorRT, read from its generated
    ``tensorflow/python/platform/build_info.py`` without importing TensorFlow (the import costs
    seconds and writes its C++ log lines to stderr, in a parent that may only need to refuse);
    None when that file cannot be read (then ``tf.sysconfig`` decides)."""
    import ast
    from importlib import util

    spec = util.find_spec("tensorflow")
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        path = Path(root) / "python" / "platform" / "build_info.py"
        try:
            tree = ast.parse(path.read_text())
        except (OSError, SyntaxError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and node.args:
                try:
                    value = dict(ast.literal_eval(node.args[0]))
                except (ValueError, TypeError):
                    continue
                if "is_tensorrt_build" in value:
                    return bool(value["is_tensorrt_build"])
    return None


def check_available() -> dict[str, str]:
    """Raise UnsupportedPrecision unless this TensorFlow has TensorRT and sees an NVIDIA GPU."""
    if tensorrt_build() is False:
        version = package_version("tensorflow", "tensorflow-cpu", "tensorflow-gpu", "tf-nightly")
        raise UnsupportedPrecision(
            f"TF-TRT is not available: TensorFlow {version} here is not built with "
            f"TensorRT (pip TensorFlow dropped TF-TRT after 2.17); {HOW_TO_GET_IT}")
    import tensorflow as tf

    info = versions()
    built = bool(tf.sysconfig.get_build_info().get("is_tensorrt_build", False))
    if not built or info["tensorrt_linked"] == "none":
        raise UnsupportedPrecision(
            f"TF-TRT is not available: TensorFlow {tf.__version__} here is not built with "
            f"TensorRT (pip TensorFlow dropped TF-TRT after 2.17); {HOW_TO_GET_IT}")
    if info["tensorrt_loaded"] == "none":
        raise UnsupportedPrecision(
            f"TF-TRT is not available: TensorFlow links TensorRT {info['tensorrt_linked']} but "
            f"the TensorRT library could not be loaded; {HOW_TO_GET_IT}")
    if not tf.config.list_physical_devices("GPU"):
        raise UnsupportedPrecision(f"TF-TRT needs an NVIDIA GPU and TensorFlow sees none; "
                                   f"{HOW_TO_GET_IT}")
    return info


def converter_kwargs(trt: TrtConfig) -> dict[str, Any]:
    return {
        "precision_mode": trt.precision_mode,
        "max_workspace_size_bytes": int(trt.max_workspace_size_bytes),
        "minimum_segment_size": int(trt.minimum_segment_size),
        "maximum_cached_engines": int(trt.maximum_cached_engines),
        "use_calibration": trt.precision_mode == "INT8",
        "allow_build_at_runtime": bool(trt.allow_build_at_runtime),
        "use_dynamic_shape": bool(trt.use_dynamic_shape),
        "dynamic_shape_profile_strategy": trt.dynamic_shape_profile_strategy,
    }


def count_segments(graph_def: Any) -> dict[str, float]:
    """TRTEngineOp nodes (engine segments) and the nodes left to TensorFlow, functions included."""
    nodes = list(graph_def.node)
    for function in graph_def.library.function:
        nodes += list(function.node_def)
    engines = sum(1 for n in nodes if n.op == "TRTEngineOp")
    return {"segments": float(engines), "tf_nodes": float(len(nodes) - engines)}


def convert(source: Path, target: Path, signature: str, trt: TrtConfig,
            build_inputs: Sequence[Any], calibration_inputs: Sequence[Any]) -> dict[str, float]:
    """convert(calibration for INT8) -> build(the job's input shape) -> save(target)."""
    import tensorflow as tf

    converter = tf.experimental.tensorrt.Converter(
        input_saved_model_dir=str(source), input_saved_model_signature_key=signature,
        **converter_kwargs(trt))
    if trt.precision_mode == "INT8":
        converter.convert(calibration_input_fn=lambda: ((x,) for x in calibration_inputs))
    else:
        converter.convert()
    converter.build(input_fn=lambda: ((x,) for x in build_inputs))
    converter.save(str(target))
    graph_def = converter._converted_graph_def  # the converted GraphDef (no public accessor)
    return count_segments(graph_def)


class TrtBackend:
    """The converted model, timed like any SavedModel; ``describe`` says how it was made."""

    def __init__(self, source: Path, cache_root: Path, signature: str, input_name: str,
                 input_dtype: str, trt: TrtConfig, gpu_name: str,
                 build_inputs: Sequence[Any], calibration_inputs: Sequence[Any],
                 info: Mapping[str, str] | None = None) -> None:
        info = info or check_available()  # the job passes what its availability check found
        shape = [int(d) for d in build_inputs[0].shape]
        ingredients = {"source_sha256": source_hash(source), **converter_kwargs(trt),
                       "calibration_images": len(calibration_inputs) if trt.precision_mode ==
                       "INT8" else 0, "input_shape": shape, "signature": signature,
                       "tensorflow": info["tensorflow"], "tensorrt": info["tensorrt_loaded"],
                       "gpu": gpu_name}
        self.result: CacheResult = ConversionCache(cache_root).get_or_convert(
            ingredients, lambda out: convert(source, out, signature, trt, build_inputs,
                                             calibration_inputs))
        self.native = NativeBackend(self.result.path, signature, input_name, input_dtype)
        self.input_dtype, self.input_shape = self.native.input_dtype, self.native.input_shape

    def prepare_input(self, tensor: Any) -> Any:
        return tensor

    def predict(self, image: Any) -> Mapping[str, Any]:
        return self.native.predict(image)

    def check_executed(self, example: Any) -> dict[str, str]:
        return self.native.check_executed(example)

    def metrics(self) -> dict[str, float]:
        return {f"trt.{k}": v for k, v in self.result.stats.items()} | {
            "trt.cache_hit": float(self.result.hit)}

    def describe(self) -> dict[str, str]:
        return {**self.native.describe(), "backend": "tftrt", "trt_cache_key": self.result.key,
                "trt_cache_hit": str(self.result.hit).lower()}


class TrtPlugin(Plugin):
    name, label, order = "tftrt", "TF-TRT", 10
    where = "NVIDIA GPU, TensorFlow built with TensorRT (NVIDIA's container: make docker-bench)"
    display_order = ("TF-TRT FP32", "TF-TRT FP16", "TF-TRT INT8")

    def fields(self) -> list[tuple[str, Any, Any]]:
        return [("trt", TrtConfig, dataclasses.field(default_factory=TrtConfig))]

    def validate(self, precision: Any) -> None:
        from runner.config import ConfigError

        trt = precision.trt
        for name, value, valid in (("precision_mode", trt.precision_mode, TRT_MODES),
                                   ("calibration_source", trt.calibration_source,
                                    CALIBRATION_SOURCES)):
            if value not in valid:
                raise ConfigError(f"precision.trt.{name}={value!r} is not valid; choose one "
                                  f"of: {', '.join(valid)}")
        for name in ("calibration_images", "minimum_segment_size", "max_workspace_size_bytes"):
            if getattr(trt, name) <= 0:
                raise ConfigError(f"precision.trt.{name}={getattr(trt, name)!r} is not valid; "
                                  "it must be a finite number > 0")

    def check_available(self, precision: Any) -> dict[str, str]:
        return check_available()

    def calibration(self, precision: Any) -> CalibrationNeed | None:
        trt = precision.trt
        if trt.precision_mode != "INT8":
            return None
        return CalibrationNeed(trt.calibration_images, trt.calibration_source, "precision.trt")

    def create(self, ctx: BuildContext) -> TrtBackend:
        """Learn the source's input spec, prepare the build (and INT8 calibration) inputs off
        the timed path, then convert or take the cached model."""
        source = NativeBackend(ctx.model_dir, ctx.signature, ctx.input_name, ctx.input_dtype)
        shape, dtype = source.input_shape, source.input_dtype
        del source
        build = ctx.prepare(ctx.build_images, dtype, shape)
        calibration = ctx.prepare(ctx.calibration_images, dtype, shape)
        return TrtBackend(ctx.model_dir, ctx.cache_dir / "trt", ctx.signature, ctx.input_name,
                          dtype, ctx.precision.trt, ctx.gpu_name, build, calibration,
                          info=ctx.available)


PLUGIN = TrtPlugin()
