"""LiteRT (formerly TensorFlow Lite): the SavedModel's serving signature converted with
``tf.lite.TFLiteConverter`` for one fixed input shape, run by the LiteRT interpreter on the CPU.

Modes (``precision.litert.mode``): ``fp32``; ``fp16`` (float16 weights, float compute);
``dynamic_int8`` (int8 weights, activations quantized on the fly); ``int8`` (full integer
quantization calibrated on ``calibration_images`` images chosen by ``runner.calibration``, the
same rule as TF-TRT INT8; ops without int8 kernels stay float).

Why a fixed input shape: the LiteRT interpreter allocates its tensors for one shape; a new shape
means ``resize_tensor_input`` + ``allocate_tensors``, which would land inside the timed call for
every image of another size. So the model is converted for the job's nominal size (or the
model's own fixed size) and every image is resized to it in the untimed preparation, as a
deployment does.

Ops outside the LiteRT builtins (e.g. ``CombinedNonMaxSuppression``) need Select TF ops, which run
only through the Flex delegate. No pip package ships it (ai-edge-litert 2.3.0, TensorFlow 2.21), so
without ``precision.litert.flex_delegate=/path/libtensorflowlite_flex.so`` the job fails naming
the ops. ``runner.demo.lite`` exports the demo detector with builtin NMS.

The interpreter: ``ai_edge_litert`` (the maintained package, ``pip install 'detbench[litert]'``),
else TensorFlow's ``tf.lite.Interpreter`` (deprecated in 2.21: it warns it is scheduled for
deletion); which one ran is recorded. Converted models are cached (``runner.backends.cache``).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import util
from pathlib import Path
from typing import Any

import numpy as np

from runner.backends import (
    CALIBRATION_SOURCES,
    BuildContext,
    CalibrationNeed,
    Plugin,
    UnsupportedPrecision,
    calibration_id,
    check_calibration_count,
    int8_calibration,
    package_version,
)
from runner.backends.cache import ConversionCache, ingredients

MODES = ("fp32", "fp16", "dynamic_int8", "int8")
INTERPRETERS = ("auto", "ai_edge_litert", "tensorflow")
HOW_TO_GET_IT = "pip install 'detbench[litert]' (the ai-edge-litert package)"
ARTIFACT = "model.tflite"


@dataclass
class LiteRTConfig:
    """LiteRT converter and interpreter settings."""

    mode: str = "fp32"  # fp32 | fp16 | dynamic_int8 | int8
    num_threads: int = 0  # interpreter threads; 0: the CPUs this process may use
    interpreter: str = "auto"  # auto (ai_edge_litert, else tensorflow)|ai_edge_litert|tensorflow
    #: libtensorflowlite_flex.so: converts with Select TF ops and loads it (None: builtins only)
    flex_delegate: str | None = None
    #: "HxW" the model is converted for; None: the model's fixed size, else the job's nominal one
    input_size: str | None = None
    calibration_images: int = 100  # int8 only
    # disjoint: images not scored (MLPerf's rule); seed: the first scored images
    calibration_source: str = "disjoint"


def interpreter_choice(wanted: str) -> str:
    """The interpreter package that will run: ``ai_edge_litert`` or ``tensorflow``."""
    has_litert = util.find_spec("ai_edge_litert") is not None
    has_tf = util.find_spec("tensorflow") is not None
    if wanted in ("auto", "ai_edge_litert") and has_litert:
        return "ai_edge_litert"
    if wanted == "ai_edge_litert":
        raise UnsupportedPrecision(f"precision.litert.interpreter=ai_edge_litert, but the "
                                   f"package is not installed: {HOW_TO_GET_IT}")
    if has_tf:
        return "tensorflow"
    raise UnsupportedPrecision(f"LiteRT needs TensorFlow (the converter) and an interpreter: "
                               f"{HOW_TO_GET_IT}")


def check_available(cfg: LiteRTConfig) -> dict[str, str]:
    """Without importing TensorFlow (the parent checks before any download): the converter's
    package, the interpreter that will run, the flex delegate file if one is configured."""
    tensorflow = package_version("tensorflow", "tensorflow-cpu", "tf-nightly")
    if tensorflow == "none" or util.find_spec("tensorflow") is None:
        raise UnsupportedPrecision(f"LiteRT converts with tf.lite.TFLiteConverter, and "
                                   f"TensorFlow is not installed: {HOW_TO_GET_IT}")
    interpreter = interpreter_choice(cfg.interpreter)
    if cfg.flex_delegate and not Path(cfg.flex_delegate).expanduser().is_file():
        raise UnsupportedPrecision(f"precision.litert.flex_delegate={cfg.flex_delegate!r} is not "
                                   "a file (libtensorflowlite_flex.so, built from TensorFlow's "
                                   "sources: tensorflow/lite/delegates/flex)")
    return {"tensorflow": tensorflow, "interpreter": interpreter,
            "interpreter_version": (package_version("ai-edge-litert")
                                    if interpreter == "ai_edge_litert" else tensorflow)}


def fixed_hw(cfg: LiteRTConfig, source_shape: Sequence[int | None],
             nominal: tuple[int, int] | None) -> tuple[int, int]:
    """The (height, width) the model is converted for."""
    if cfg.input_size:
        h, _, w = cfg.input_size.partition("x")
        return int(h), int(w)
    if source_shape[1] is not None and source_shape[2] is not None:
        return int(source_shape[1]), int(source_shape[2])
    if nominal is None:
        raise UnsupportedPrecision(
            "LiteRT runs a fixed input shape and this model's is dynamic with no nominal size: "
            "choose a resolution (e.g. resolution=320x320) or precision.litert.input_size=HxW")
    return nominal


NEEDS_OPS = re.compile(r"(?:TF Select ops|Flex ops|Custom ops): ([^\n]+)")


def unsupported_ops(message: str) -> list[str]:
    """Op names the converter's error lists as outside the builtins."""
    found: list[str] = []
    for match in NEEDS_OPS.finditer(message):
        found += [op.strip() for op in match.group(1).split(",") if op.strip()]
    return sorted(set(found))


def convert(source: Path, target: Path, signature: str, input_name: str, dtype: str,
            hw: tuple[int, int], cfg: LiteRTConfig,
            calibration_inputs: Sequence[np.ndarray]) -> dict[str, float]:
    """SavedModel signature at a fixed [1, H, W, 3] -> a .tflite file at ``target``."""
    import tensorflow as tf

    model = tf.saved_model.load(str(source))
    fn = model.signatures[signature]

    def serve(x: Any) -> Any:
        return fn(**{input_name: x})

    spec = tf.TensorSpec([1, hw[0], hw[1], 3], dtype, name=input_name)
    concrete = tf.function(serve, input_signature=[spec]).get_concrete_function()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], model)
    ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if cfg.mode != "fp32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if cfg.mode == "fp16":
        converter.target_spec.supported_types = [tf.float16]
    if cfg.mode == "int8":
        converter.representative_dataset = lambda: ([x] for x in calibration_inputs)
        ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
    if cfg.flex_delegate:
        ops.append(tf.lite.OpsSet.SELECT_TF_OPS)
    converter.target_spec.supported_ops = ops
    try:
        flatbuffer = converter.convert()
    except Exception as exc:  # ConverterError; the message lists the ops it cannot map
        needed = unsupported_ops(str(exc))
        if not needed:
            raise
        raise UnsupportedPrecision(
            f"LiteRT cannot run this model with its builtin ops: it needs {', '.join(needed)}. "
            "Select TF ops run only through the Flex delegate, which no pip package ships "
            "(build libtensorflowlite_flex.so and set precision.litert.flex_delegate=PATH), or "
            "export the model with LiteRT-compatible post-processing (as the zoo's _od "
            "CenterNet archives; runner.demo.lite for the demo)") from None
    target.write_bytes(flatbuffer)
    return {"model_bytes": float(len(flatbuffer))}


def _interpreter_class(kind: str) -> Any:
    if kind == "ai_edge_litert":
        from ai_edge_litert.interpreter import Interpreter, load_delegate
    else:
        import tensorflow as tf

        Interpreter, load_delegate = tf.lite.Interpreter, tf.lite.experimental.load_delegate
    return Interpreter, load_delegate


class LiteRTBackend:
    """The converted model in a LiteRT interpreter; inputs are NumPy arrays (``prepare_input``),
    and ``predict`` is one signature-runner call (set input, invoke, copy outputs)."""

    def __init__(self, path: Path, input_name: str, input_dtype: str, hw: tuple[int, int],
                 cfg: LiteRTConfig, available: Mapping[str, str], stats: Mapping[str, float],
                 cache_hit: bool, cache_key: str, calibration_images: int = 0) -> None:
        Interpreter, load_delegate = _interpreter_class(available["interpreter"])
        threads = cfg.num_threads or len(os.sched_getaffinity(0))
        delegates = [load_delegate(str(Path(cfg.flex_delegate).expanduser()))] \
            if cfg.flex_delegate else None
        self._interpreter = Interpreter(model_path=str(path), num_threads=threads,
                                        experimental_delegates=delegates)
        self._interpreter.allocate_tensors()
        self._runner = self._interpreter.get_signature_runner()
        self.cfg, self.available, self.threads, self.path = cfg, available, threads, path
        self.input_name, self.input_dtype = input_name, input_dtype
        self.input_shape: list[int | None] = [1, hw[0], hw[1], 3]
        self.stats, self.cache_hit, self.cache_key = dict(stats), cache_hit, cache_key
        self.calibration_images = calibration_images
        self.executed: dict[str, str] = {}

    def prepare_input(self, tensor: Any) -> np.ndarray:
        """The interpreter takes NumPy: converted here, untimed."""
        return np.ascontiguousarray(tensor.numpy())

    def predict(self, image: Any) -> Mapping[str, np.ndarray]:
        return self._runner(**{self.input_name: image})

    def check_executed(self, example: Any) -> dict[str, str]:
        """Tensor dtypes and op counts of the interpreter's graph; refuse a quantized mode whose
        model holds no tensor of that type (the converter left it float)."""
        self.predict(example)
        dtypes = Counter(np.dtype(d["dtype"]).name for d in self._interpreter.get_tensor_details())
        ops = Counter(o["op_name"] for o in self._interpreter._get_ops_details())
        self.executed = {"tensors_int8": str(dtypes.get("int8", 0)),
                         "tensors_float16": str(dtypes.get("float16", 0)),
                         "tensors_float32": str(dtypes.get("float32", 0)),
                         "ops": str(sum(ops.values())),
                         "ops_delegated": str(ops.get("DELEGATE", 0))}
        wanted = {"fp16": "float16", "dynamic_int8": "int8", "int8": "int8"}.get(self.cfg.mode)
        if wanted and dtypes.get(wanted, 0) == 0:
            raise UnsupportedPrecision(f"LiteRT {self.cfg.mode}: the converted model has no "
                                       f"{wanted} tensor; not reporting a float model as "
                                       f"{self.cfg.mode}")
        return self.executed

    def metrics(self) -> dict[str, float]:
        return {f"litert.{k}": v for k, v in self.stats.items()} | {
            "litert.cache_hit": float(self.cache_hit), "litert.num_threads": float(self.threads)}

    def describe(self) -> dict[str, str]:
        return {"backend": "litert", "mode": self.cfg.mode,
                "interpreter": self.available.get("interpreter", ""),
                "interpreter_version": self.available.get("interpreter_version", ""),
                "num_threads": str(self.threads), "input_name": self.input_name,
                "input_dtype": self.input_dtype, "input_shape": str(self.input_shape),
                "flex_delegate": self.cfg.flex_delegate or "none",
                "calibration_images": str(self.calibration_images),
                "model_bytes": str(int(self.stats.get("model_bytes", 0))),
                "cache_key": self.cache_key, "cache_hit": str(self.cache_hit).lower(),
                **self.executed}


class LiteRTPlugin(Plugin):
    name, label, order = "litert", "LiteRT", 20
    where = "CPU of any machine (ai-edge-litert; XNNPACK)"
    display_order = ("LiteRT FP32", "LiteRT FP16", "LiteRT INT8 dynamic", "LiteRT INT8")

    def fields(self) -> list[tuple[str, Any, Any]]:
        return [("litert", LiteRTConfig, dataclasses.field(default_factory=LiteRTConfig))]

    def validate(self, precision: Any) -> None:
        from runner.config import ConfigError

        cfg = precision.litert
        for name, value, valid in (("mode", cfg.mode, MODES),
                                   ("interpreter", cfg.interpreter, INTERPRETERS),
                                   ("calibration_source", cfg.calibration_source,
                                    CALIBRATION_SOURCES)):
            if value not in valid:
                raise ConfigError(f"precision.litert.{name}={value!r} is not valid; choose one "
                                  f"of: {', '.join(valid)}")
        if cfg.num_threads < 0:
            raise ConfigError(f"precision.litert.num_threads={cfg.num_threads!r} is not valid; "
                              "it must be >= 0 (0: the CPUs this process may use)")
        check_calibration_count(cfg, "litert")
        if cfg.input_size is not None and not re.fullmatch(r"[1-9]\d*x[1-9]\d*",
                                                            str(cfg.input_size)):
            raise ConfigError(f"precision.litert.input_size={cfg.input_size!r} is not valid; "
                              "give HxW (e.g. 320x320) or null")

    def check_available(self, precision: Any) -> dict[str, str]:
        return check_available(precision.litert)

    def environment(self, available: Mapping[str, str]) -> dict[str, str]:
        return {"env.litert_interpreter": available.get("interpreter", "none"),
                "env.litert_interpreter_version": available.get("interpreter_version", "none")}

    def calibration(self, precision: Any) -> CalibrationNeed | None:
        return int8_calibration(precision.litert, "litert")

    def create(self, ctx: BuildContext) -> LiteRTBackend:
        from runner.backends.native import NativeBackend

        cfg: LiteRTConfig = ctx.precision.litert
        available = ctx.available or check_available(cfg)
        source = NativeBackend(ctx.model_dir, ctx.signature, ctx.input_name, ctx.input_dtype)
        hw = fixed_hw(cfg, source.input_shape, ctx.nominal_hw)
        del source
        shape = [1, hw[0], hw[1], 3]
        calibration: list[np.ndarray] = []
        if cfg.mode == "int8":
            calibration = ctx.calibration_inputs(ctx.input_dtype, shape)
        params = {"mode": cfg.mode, "flex": bool(cfg.flex_delegate), "signature": ctx.signature,
                  "input_name": ctx.input_name, "input_dtype": ctx.input_dtype,
                  "calibration": (calibration_id(ctx.calibration_images)
                                  if calibration else "none")}
        # the flatbuffer does not depend on the device it will run on: the key's device is "any"
        key = ingredients(ctx.model_dir, params, shape,
                          {"tensorflow": available.get("tensorflow", "")}, "any")
        result = ConversionCache(ctx.cache_dir / "litert", ARTIFACT).get_or_convert(
            key, lambda out: convert(ctx.model_dir, out, ctx.signature, ctx.input_name,
                                     ctx.input_dtype, hw, cfg, calibration))
        return LiteRTBackend(result.path, ctx.input_name, ctx.input_dtype, hw, cfg, available,
                             result.stats, result.hit, result.key, len(calibration))


PLUGIN = LiteRTPlugin()
