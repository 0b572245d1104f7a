"""ONNX Runtime: the SavedModel's serving signature converted to ONNX with tf2onnx (the
maintained TensorFlow -> ONNX converter; its version and the opset are recorded), run by an
``onnxruntime.InferenceSession`` on the configured execution providers (CPU here; CUDA or TensorRT
where ``onnxruntime-gpu`` has them: ``precision.onnx.providers``).

The input keeps the model's own shape (ONNX Runtime runs dynamic shapes without re-allocation
in the call), so inputs are prepared exactly as for Native FP32. Graph optimization level and
thread counts are settable and recorded. Converted models are cached (``runner.backends.cache``).

INT8 (``precision.onnx.mode=int8``): ``onnxruntime.quantization.quantize_static`` on the converted
model, calibrated on ``calibration_images`` images chosen by ``runner.calibration`` (disjoint from
the scored ones by default: the TF-TRT and LiteRT INT8 rule), prepared like the scored inputs
off the timed path. Only ``quantize_ops`` are quantized (default Conv/MatMul/Gemm: the backbone
and heads; a detector's box decoding and NMS stay float). QDQ format by default: the CPU
provider fuses QuantizeLinear/DequantizeLinear pairs around a Conv into int8 kernels. The
quantization settings are part of the cache key and recorded. ONNX Runtime's optional
``quant_pre_process`` (shape inference + optimizer) is not run: measured on the demo, the
quantized model ran without it (the quantizer prints a hint to run it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
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

HOW_TO_GET_IT = "pip install 'detbench[onnx]' (tf2onnx and onnxruntime)"
LEVELS = ("disable", "basic", "extended", "all")
MODES = ("fp32", "int8")
QUANT_FORMATS = ("qdq", "qoperator")
CALIBRATE_METHODS = ("minmax", "entropy", "percentile")
QUANT_TYPES = ("int8", "uint8")
ARTIFACT = "model.onnx"


@dataclass
class OnnxConfig:
    """tf2onnx conversion and ONNX Runtime session settings."""

    opset: int = 17
    #: execution providers in order of preference; the first must be active or the job fails
    providers: list[str] = field(default_factory=lambda: ["CPUExecutionProvider"])
    graph_optimization_level: str = "all"  # disable | basic | extended | all
    intra_op_threads: int = 0  # 0: ONNX Runtime's default (one per physical core)
    inter_op_threads: int = 0
    mode: str = "fp32"  # fp32 | int8 (static quantization, calibrated)
    calibration_images: int = 100  # int8 only
    calibration_source: str = "disjoint"  # disjoint (MLPerf's rule) | seed (the scored images)
    quant_format: str = "qdq"  # qdq | qoperator (QLinearConv, ...)
    calibrate_method: str = "minmax"  # minmax | entropy | percentile
    per_channel: bool = False
    activation_type: str = "uint8"  # ONNX Runtime's default for the CPU provider
    weight_type: str = "int8"
    quantize_ops: list[str] = field(default_factory=lambda: ["Conv", "MatMul", "Gemm"])


def check_available(cfg: OnnxConfig) -> dict[str, str]:
    """The converter and runtime packages, and that the first provider exists here (importing
    onnxruntime, not TensorFlow or tf2onnx)."""
    missing = [m for m in ("tf2onnx", "onnxruntime", "tensorflow") if util.find_spec(m) is None]
    if missing:
        raise UnsupportedPrecision(f"ONNX Runtime backend: {', '.join(missing)} not installed; "
                                   f"{HOW_TO_GET_IT}")
    import onnxruntime as ort

    here = ort.get_available_providers()
    if not cfg.providers or cfg.providers[0] not in here:
        raise UnsupportedPrecision(
            f"precision.onnx.providers={list(cfg.providers)}: ONNX Runtime "
            f"{ort.__version__} here offers {here} (CUDA/TensorRT providers need "
            "onnxruntime-gpu and an NVIDIA GPU)")
    return {"onnxruntime": ort.__version__, "tf2onnx": package_version("tf2onnx"),
            "onnx": package_version("onnx"),
            "tensorflow": package_version("tensorflow", "tensorflow-cpu")}


def quant_settings(cfg: OnnxConfig) -> dict[str, Any]:
    """The quantizer's settings (recorded and part of the cache key); empty for FP32."""
    if cfg.mode != "int8":
        return {}
    return {"quant_format": cfg.quant_format, "calibrate_method": cfg.calibrate_method,
            "per_channel": bool(cfg.per_channel), "activation_type": cfg.activation_type,
            "weight_type": cfg.weight_type, "quantize_ops": ",".join(cfg.quantize_ops)}


def quantize(fp32: Path, target: Path, input_name: str, calibration: Sequence[np.ndarray],
             cfg: OnnxConfig) -> dict[str, float]:
    """Static INT8 quantization of ``fp32`` into ``target``; refuses a result holding no
    quantized tensor (nothing of ``quantize_ops`` in the graph)."""
    from onnxruntime import quantization as q

    class Reader(q.CalibrationDataReader):
        def __init__(self) -> None:
            self._items = iter([{input_name: x} for x in calibration])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._items, None)

    types = {"int8": q.QuantType.QInt8, "uint8": q.QuantType.QUInt8}
    q.quantize_static(
        str(fp32), str(target), Reader(),
        quant_format={"qdq": q.QuantFormat.QDQ,
                      "qoperator": q.QuantFormat.QOperator}[cfg.quant_format],
        op_types_to_quantize=list(cfg.quantize_ops), per_channel=bool(cfg.per_channel),
        activation_type=types[cfg.activation_type], weight_type=types[cfg.weight_type],
        calibrate_method={"minmax": q.CalibrationMethod.MinMax,
                          "entropy": q.CalibrationMethod.Entropy,
                          "percentile": q.CalibrationMethod.Percentile}[cfg.calibrate_method])
    counts = quantized_nodes(target)
    if not counts:
        raise UnsupportedPrecision(
            f"ONNX Runtime INT8: the quantized model holds no QuantizeLinear/QLinear node: none "
            f"of precision.onnx.quantize_ops={list(cfg.quantize_ops)} was quantized")
    return {"fp32_model_bytes": float(fp32.stat().st_size),
            "quantized_nodes": float(sum(counts.values())),
            "calibration_images": float(len(calibration))}


def quantized_nodes(path: Path) -> dict[str, int]:
    """op type -> count of the graph's quantization nodes (QuantizeLinear, QLinearConv, ...)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    counts: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear") \
                or node.op_type.startswith("QLinear") or node.op_type == "ConvInteger":
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def convert(source: Path, target: Path, signature: str, input_name: str, dtype: str,
            shape: list[int | None], opset: int) -> dict[str, float]:
    import onnx
    import tensorflow as tf
    import tf2onnx
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    loaded = tf.saved_model.load(str(source))  # kept: the function needs its variables
    fn = loaded.signatures[signature]
    spec = (tf.TensorSpec(shape, dtype, name=input_name),)
    serve = tf.function(lambda x: fn(**{input_name: x}), input_signature=spec)
    model, _ = tf2onnx.convert.from_function(serve, input_signature=spec, opset=opset,
                                             output_path=str(target))
    if len(model.graph.input) > 1:
        # tf2onnx freezes the variables of the function it is given but turned a captured
        # constant of the called signature (a Keras-built SSD's anchors, [N, 4]) into a second
        # ONNX graph input, and the session failed: "Required inputs (['147305:0']) are missing
        # from input feed (['input_tensor'])" (runner.demo.architectures mobilenetv2_ssd).
        # Frozen first, it converts. Not always: on KerasHub's RetinaNet the frozen graph kept a
        # PartitionedCall tf2onnx cannot convert, where the unfrozen one named the real culprits
        # (Bitcast, BitwiseAnd), so this is the fallback, not the default.
        frozen = convert_variables_to_constants_v2(fn)
        keys = tf.nest.flatten({k: k for k in fn.structured_outputs})  # frozen outputs' order
        serve = tf.function(lambda x: dict(zip(keys, tf.nest.flatten(frozen(x)), strict=True)),
                            input_signature=spec)
        model, _ = tf2onnx.convert.from_function(serve, input_signature=spec, opset=opset,
                                                 output_path=str(target))
    # tf2onnx logs the TensorFlow ops it has no rule for and writes them into the file anyway;
    # ONNX Runtime then refuses the file with a long "invalid model" message naming one node
    # (KerasHub RetinaNet's NMS: Bitcast, BitwiseAnd). Refuse here, naming every such op.
    def in_opset(op_type: str) -> bool:  # BitwiseAnd exists, from opset 18 on
        try:
            onnx.defs.get_schema(op_type, opset)
        except onnx.defs.SchemaError:
            return False
        return True

    unknown = sorted({n.op_type for n in model.graph.node if n.domain in ("", "ai.onnx")
                      and not in_opset(n.op_type)})
    if unknown:
        raise UnsupportedPrecision(f"tf2onnx {tf2onnx.__version__} (opset {opset}) cannot "
                                   f"convert these TensorFlow ops: {', '.join(unknown)}")
    return {"model_bytes": float(target.stat().st_size), "opset": float(opset)}


class OnnxBackend:
    def __init__(self, path: Path, cfg: OnnxConfig, input_shape: list[int | None],
                 input_dtype: str, available: Mapping[str, str], stats: Mapping[str, float],
                 hit: bool, key: str, calibration_images: int = 0) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[cfg.graph_optimization_level]
        options.intra_op_num_threads = cfg.intra_op_threads
        options.inter_op_num_threads = cfg.inter_op_threads
        self._session = ort.InferenceSession(str(path), options, providers=list(cfg.providers))
        self._path = path
        self._input = self._session.get_inputs()[0].name
        self._outputs = [o.name for o in self._session.get_outputs()]
        self.cfg, self.available, self.stats, self.hit, self.key = cfg, available, stats, hit, key
        self.input_shape, self.input_dtype = input_shape, input_dtype
        self.calibration_images = calibration_images
        self.executed: dict[str, str] = {}

    def prepare_input(self, tensor: Any) -> np.ndarray:
        """The session takes NumPy: converted here, untimed."""
        return np.ascontiguousarray(tensor.numpy())

    def predict(self, image: Any) -> Mapping[str, np.ndarray]:
        return dict(zip(self._outputs, self._session.run(self._outputs, {self._input: image}),
                        strict=True))

    def check_executed(self, example: Any) -> dict[str, str]:
        """The providers the session really uses; refuse when the first asked for is not."""
        self.predict(example)
        active = self._session.get_providers()
        if active[0] != self.cfg.providers[0]:
            raise UnsupportedPrecision(f"ONNX Runtime runs on {active}, not on "
                                       f"{self.cfg.providers[0]} as configured")
        self.executed = {"providers_active": ",".join(active)}
        if self.cfg.mode == "int8":  # what the file holds, whatever the cache said
            counts = quantized_nodes(Path(self._path))
            if not counts:
                raise UnsupportedPrecision("ONNX Runtime INT8: the model holds no quantization "
                                           "node")
            self.executed["quantized_nodes"] = ",".join(f"{k}:{v}"
                                                        for k, v in sorted(counts.items()))
        return self.executed

    def metrics(self) -> dict[str, float]:
        return {f"onnx.{k}": v for k, v in self.stats.items()} | {"onnx.cache_hit": float(self.hit)}

    def describe(self) -> dict[str, str]:
        return {"backend": "onnx", "onnxruntime": self.available.get("onnxruntime", ""),
                "converter": f"tf2onnx {self.available.get('tf2onnx', '')}",
                "opset": str(self.cfg.opset), "providers": ",".join(self.cfg.providers),
                "graph_optimization_level": self.cfg.graph_optimization_level,
                "intra_op_threads": str(self.cfg.intra_op_threads),
                "inter_op_threads": str(self.cfg.inter_op_threads), "mode": self.cfg.mode,
                **{k: str(v) for k, v in quant_settings(self.cfg).items()},
                **({"calibration_images": str(self.calibration_images),
                    "calibration_source": self.cfg.calibration_source}
                   if self.cfg.mode == "int8" else {}),
                "input_shape": str(self.input_shape), "input_dtype": self.input_dtype,
                "model_bytes": str(int(self.stats.get("model_bytes", 0))),
                "cache_key": self.key, "cache_hit": str(self.hit).lower(), **self.executed}


class OnnxPlugin(Plugin):
    name, label, order = "onnx", "ONNX Runtime", 30
    where = "CPU of any machine (CPU provider); CUDA/TensorRT providers with onnxruntime-gpu"
    display_order = ("ONNX Runtime FP32", "ONNX Runtime INT8")

    def fields(self) -> list[tuple[str, Any, Any]]:
        return [("onnx", OnnxConfig, dataclasses.field(default_factory=OnnxConfig))]

    def validate(self, precision: Any) -> None:
        from runner.config import ConfigError

        cfg = precision.onnx
        for name, valid in (("mode", MODES), ("quant_format", QUANT_FORMATS),
                            ("calibrate_method", CALIBRATE_METHODS),
                            ("activation_type", QUANT_TYPES), ("weight_type", QUANT_TYPES),
                            ("calibration_source", CALIBRATION_SOURCES)):
            if getattr(cfg, name) not in valid:
                raise ConfigError(f"precision.onnx.{name}={getattr(cfg, name)!r} is not valid; "
                                  f"choose one of: {', '.join(valid)}")
        check_calibration_count(cfg, "onnx")
        if cfg.mode == "int8" and not cfg.quantize_ops:
            raise ConfigError("precision.onnx.quantize_ops=[] is not valid for mode=int8; name "
                              "the op types to quantize (default: Conv, MatMul, Gemm)")
        if cfg.graph_optimization_level not in LEVELS:
            raise ConfigError(f"precision.onnx.graph_optimization_level="
                              f"{cfg.graph_optimization_level!r} is not valid; choose one of: "
                              f"{', '.join(LEVELS)}")
        for name in ("intra_op_threads", "inter_op_threads"):
            if getattr(cfg, name) < 0:
                raise ConfigError(f"precision.onnx.{name}={getattr(cfg, name)!r} is not valid; "
                                  "it must be >= 0 (0: ONNX Runtime's default)")
        if not 7 <= cfg.opset <= 21:
            raise ConfigError(f"precision.onnx.opset={cfg.opset!r} is not valid; tf2onnx "
                              "supports opsets 7 to 21 (default 17)")

    def check_available(self, precision: Any) -> dict[str, str]:
        return check_available(precision.onnx)

    def calibration(self, precision: Any) -> CalibrationNeed | None:
        return int8_calibration(precision.onnx, "onnx")

    def environment(self, available: Mapping[str, str]) -> dict[str, str]:
        return {"env.onnxruntime": available.get("onnxruntime", "none"),
                "env.tf2onnx": available.get("tf2onnx", "none")}

    def create(self, ctx: BuildContext) -> OnnxBackend:
        from runner.backends.native import NativeBackend

        cfg: OnnxConfig = ctx.precision.onnx
        available = ctx.available or check_available(cfg)
        source = NativeBackend(ctx.model_dir, ctx.signature, ctx.input_name, ctx.input_dtype)
        shape, dtype = source.input_shape, source.input_dtype
        del source
        calibration: list[np.ndarray] = []
        if cfg.mode == "int8":
            calibration = ctx.calibration_inputs(dtype, shape)
        params = {"opset": cfg.opset, "signature": ctx.signature, "input_name": ctx.input_name,
                  "input_dtype": dtype, "mode": cfg.mode, **quant_settings(cfg),
                  "calibration": (calibration_id(ctx.calibration_images)
                                  if calibration else "none")}
        # the ONNX file does not depend on the device it will run on: the key's device is "any"
        key = ingredients(ctx.model_dir, params, shape,
                          {k: available.get(k, "") for k in ("tensorflow", "tf2onnx", "onnx",
                                                             "onnxruntime")},
                          "any")

        def build(out: Path) -> dict[str, float]:
            if cfg.mode != "int8":
                return convert(ctx.model_dir, out, ctx.signature, ctx.input_name, dtype, shape,
                               cfg.opset)
            fp32 = out.with_name("model_fp32.onnx")
            stats = convert(ctx.model_dir, fp32, ctx.signature, ctx.input_name, dtype, shape,
                            cfg.opset)
            stats |= quantize(fp32, out, ctx.input_name, calibration, cfg)
            fp32.unlink()
            return stats | {"model_bytes": float(out.stat().st_size)}

        result = ConversionCache(ctx.cache_dir / "onnx", ARTIFACT).get_or_convert(key, build)
        return OnnxBackend(result.path, cfg, shape, dtype, available, result.stats, result.hit,
                           result.key, len(calibration))


PLUGIN = OnnxPlugin()
