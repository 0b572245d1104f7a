"""ONNX Runtime: the SavedModel's serving signature converted to ONNX with tf2onnx (the
maintained TensorFlow -> ONNX converter; its version and the opset are recorded), run by an
``onnxruntime.InferenceSession`` on the configured execution providers (CPU here; CUDA or TensorRT
where ``onnxruntime-gpu`` has them: ``precision.onnx.providers``).

The input keeps the model's own shape (ONNX Runtime runs dynamic shapes without re-allocation
in the call), so inputs are prepared exactly as for Native FP32. Graph optimization level and
thread counts are settable and recorded. Converted models are cached (``runner.backends.cache``).
Not built yet: static INT8 quantization (onnxruntime.quantization with the calibration rule).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import metadata, util
from pathlib import Path
from typing import Any

import numpy as np

from runner.backends import BuildContext, Plugin, UnsupportedPrecision
from runner.backends.cache import ConversionCache, ingredients

HOW_TO_GET_IT = "pip install 'detbench[onnx]' (tf2onnx and onnxruntime)"
LEVELS = ("disable", "basic", "extended", "all")
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


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "none"


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
    return {"onnxruntime": ort.__version__, "tf2onnx": _version("tf2onnx"),
            "onnx": _version("onnx"),
            "tensorflow": _version("tensorflow") if _version("tensorflow") != "none"
            else _version("tensorflow-cpu")}


def convert(source: Path, target: Path, signature: str, input_name: str, dtype: str,
            shape: list[int | None], opset: int) -> dict[str, float]:
    import tensorflow as tf
    import tf2onnx

    loaded = tf.saved_model.load(str(source))  # kept: the function needs its variables
    fn = loaded.signatures[signature]
    spec = (tf.TensorSpec(shape, dtype, name=input_name),)
    serve = tf.function(lambda x: fn(**{input_name: x}), input_signature=spec)
    tf2onnx.convert.from_function(serve, input_signature=spec, opset=opset,
                                  output_path=str(target))
    return {"model_bytes": float(target.stat().st_size), "opset": float(opset)}


class OnnxBackend:
    def __init__(self, path: Path, cfg: OnnxConfig, input_shape: list[int | None],
                 input_dtype: str, available: Mapping[str, str], stats: Mapping[str, float],
                 hit: bool, key: str) -> None:
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
        self._input = self._session.get_inputs()[0].name
        self._outputs = [o.name for o in self._session.get_outputs()]
        self.cfg, self.available, self.stats, self.hit, self.key = cfg, available, stats, hit, key
        self.input_shape, self.input_dtype = input_shape, input_dtype
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
        return self.executed

    def metrics(self) -> dict[str, float]:
        return {f"onnx.{k}": v for k, v in self.stats.items()} | {"onnx.cache_hit": float(self.hit)}

    def describe(self) -> dict[str, str]:
        return {"backend": "onnx", "onnxruntime": self.available.get("onnxruntime", ""),
                "converter": f"tf2onnx {self.available.get('tf2onnx', '')}",
                "opset": str(self.cfg.opset), "providers": ",".join(self.cfg.providers),
                "graph_optimization_level": self.cfg.graph_optimization_level,
                "intra_op_threads": str(self.cfg.intra_op_threads),
                "inter_op_threads": str(self.cfg.inter_op_threads),
                "input_shape": str(self.input_shape), "input_dtype": self.input_dtype,
                "model_bytes": str(int(self.stats.get("model_bytes", 0))),
                "cache_key": self.key, "cache_hit": str(self.hit).lower(), **self.executed}


class OnnxPlugin(Plugin):
    name, label, order = "onnx", "ONNX Runtime", 30
    where = "CPU of any machine (CPU provider); CUDA/TensorRT providers with onnxruntime-gpu"
    display_order = ("ONNX Runtime FP32",)

    def fields(self) -> list[tuple[str, Any, Any]]:
        return [("onnx", OnnxConfig, dataclasses.field(default_factory=OnnxConfig))]

    def validate(self, precision: Any) -> None:
        from runner.config import ConfigError

        cfg = precision.onnx
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
        params = {"opset": cfg.opset, "signature": ctx.signature, "input_name": ctx.input_name,
                  "input_dtype": dtype}
        # the ONNX file does not depend on the device it will run on: the key's device is "any"
        key = ingredients(ctx.model_dir, params, shape,
                          {k: available.get(k, "") for k in ("tensorflow", "tf2onnx", "onnx")},
                          "any")
        result = ConversionCache(ctx.cache_dir / "onnx", ARTIFACT).get_or_convert(
            key, lambda out: convert(ctx.model_dir, out, ctx.signature, ctx.input_name, dtype,
                                     shape, cfg.opset))
        return OnnxBackend(result.path, cfg, shape, dtype, available, result.stats, result.hit,
                           result.key)


PLUGIN = OnnxPlugin()
