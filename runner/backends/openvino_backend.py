"""OpenVINO: the SavedModel's serving signature read by ``openvino.convert_model``, reshaped to
one fixed input shape (as LiteRT, the job's nominal size or the model's own), compiled for the
CPU with a performance hint (latency | throughput), thread count and inference precision, all
recorded.

Measured here (OpenVINO 2026.4, TensorFlow 2.21): ``convert_model(saved_model_dir)`` fails on
the demo's Keras-3 SavedModel with "VarHandleOp: Cannot find requested variable", so the loaded
signature (a concrete function) is converted instead, which works. ``CombinedNonMaxSuppression``
has no conversion rule: the job fails naming it (``runner.demo.lite`` exports the demo with NMS
that converts). On a CPU with AVX512-BF16/AMX, OpenVINO's default inference precision is
bfloat16, so ``precision.openvino.inference_precision`` is set explicitly (f32 for FP32).

INT8 (``precision.openvino.mode=int8``): NNCF's post-training ``nncf.quantize`` on the converted
model (FakeQuantize nodes; the CPU plugin runs them as u8/i8 kernels), calibrated on
``calibration_images`` images chosen by ``runner.calibration`` (disjoint by default, the TF-TRT
rule), prepared like the scored inputs. ``nncf`` is a separate package (``pip install nncf``,
3.4.0 installed cleanly here: networkx, ninja, pydot, safetensors, tabulate besides openvino);
without it the precision is unavailable. The compiled model's compute layers on int8 kernels are
counted and recorded (``backend.int8_ops_active``; measured on the lite demo: 27 of 27
convolutions, 0 for FP32); none fails the job.
"""

from __future__ import annotations

import dataclasses
import re
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

HOW_TO_GET_IT = "pip install 'detbench[openvino]'"
HINTS = ("latency", "throughput")
PRECISIONS = ("f32", "bf16", "f16")
TYPE_NAMES = {"f32": "float32", "bf16": "bfloat16", "f16": "float16"}
ARTIFACT = "model.xml"
MODES = ("fp32", "int8")
PRESETS = ("performance", "mixed")
COMPUTE_LAYERS = ("Convolution", "GroupConvolution", "Deconvolution", "FullyConnected", "MatMul")


@dataclass
class OpenVinoConfig:
    inference_precision: str = "f32"  # f32 | bf16 | f16 (INFERENCE_PRECISION_HINT)
    performance_hint: str = "latency"  # latency | throughput
    num_threads: int = 0  # INFERENCE_NUM_THREADS; 0: OpenVINO's default
    input_size: str | None = None  # "HxW"; None: the model's fixed size, else the nominal one
    mode: str = "fp32"  # fp32 | int8 (NNCF post-training quantization)
    calibration_images: int = 100  # int8 only
    calibration_source: str = "disjoint"  # disjoint | seed
    preset: str = "performance"  # NNCF QuantizationPreset: performance | mixed


def check_available(cfg: OpenVinoConfig) -> dict[str, str]:
    if util.find_spec("openvino") is None or util.find_spec("tensorflow") is None:
        raise UnsupportedPrecision(f"OpenVINO backend: openvino (and TensorFlow) needed; "
                                   f"{HOW_TO_GET_IT}")
    found = {"openvino": package_version("openvino"),
             "tensorflow": package_version("tensorflow", "tensorflow-cpu", "tf-nightly")}
    if cfg.mode == "int8":
        if util.find_spec("nncf") is None:
            raise UnsupportedPrecision("OpenVINO INT8 quantizes with NNCF, which is not "
                                       "installed: pip install nncf")
        found["nncf"] = package_version("nncf")
    return found


def unconverted_ops(message: str) -> list[str]:
    found = re.findall(r"No conversion rule found for operations: ([^\n]+)", message)
    return sorted({op.strip() for line in found for op in line.split(",") if op.strip()})


def convert(source: Path, target: Path, signature: str, hw: tuple[int, int],
            cfg: OpenVinoConfig | None = None,
            calibration: Sequence[np.ndarray] = ()) -> dict[str, float]:
    import openvino as ov
    import tensorflow as tf

    loaded = tf.saved_model.load(str(source))  # kept: the function needs its variables
    fn = loaded.signatures[signature]
    try:
        model = ov.convert_model(fn)
    except Exception as exc:  # OpConversionFailure: the message lists the ops without a rule
        ops = unconverted_ops(str(exc))
        if not ops:
            raise
        raise UnsupportedPrecision(f"OpenVINO cannot convert this model: no conversion rule "
                                   f"for {', '.join(ops)}") from None
    model.reshape([1, hw[0], hw[1], 3])
    stats: dict[str, float] = {}
    if cfg is not None and cfg.mode == "int8":
        import nncf

        model = nncf.quantize(model, nncf.Dataset(list(calibration)),
                              subset_size=len(calibration),
                              preset={"performance": nncf.QuantizationPreset.PERFORMANCE,
                                      "mixed": nncf.QuantizationPreset.MIXED}[cfg.preset])
        fq = sum(op.get_type_name() == "FakeQuantize" for op in model.get_ops())
        if not fq:
            raise UnsupportedPrecision("OpenVINO INT8: NNCF inserted no FakeQuantize node")
        stats |= {"fake_quantize_nodes": float(fq), "calibration_images": float(len(calibration))}
    # compress_to_fp16 defaults to True: the "FP32" IR held float16 weights (half the file:
    # 6.57 vs 12.5 MB on runner.demo.architectures' SSD) and agreed with Native FP32 exactly as
    # LiteRT's float16-weight model did (-1.10 points); FP32 keeps float32 weights
    ov.save_model(model, str(target), compress_to_fp16=False)
    size = sum(p.stat().st_size for p in target.parent.glob("model.*"))
    return stats | {"model_bytes": float(size)}


class OpenVinoBackend:
    def __init__(self, path: Path, cfg: OpenVinoConfig, hw: tuple[int, int], input_dtype: str,
                 available: Mapping[str, str], stats: Mapping[str, float], hit: bool,
                 key: str, calibration_images: int = 0) -> None:
        import openvino as ov

        props: dict[str, Any] = {"PERFORMANCE_HINT": cfg.performance_hint.upper(),
                                 "INFERENCE_PRECISION_HINT": cfg.inference_precision}
        if cfg.num_threads:
            props["INFERENCE_NUM_THREADS"] = cfg.num_threads
        core = ov.Core()
        self._compiled = core.compile_model(core.read_model(str(path)), "CPU", props)
        self._request = self._compiled.create_infer_request()
        self._names = [o.get_any_name() for o in self._compiled.outputs]
        self.cfg, self.available, self.stats, self.hit, self.key = cfg, available, stats, hit, key
        self.input_shape: list[int | None] = [1, hw[0], hw[1], 3]
        self.input_dtype = input_dtype
        self.calibration_images = calibration_images
        self.executed: dict[str, str] = {}

    def prepare_input(self, tensor: Any) -> np.ndarray:
        return np.ascontiguousarray(tensor.numpy())

    def predict(self, image: Any) -> Mapping[str, np.ndarray]:
        result = self._request.infer(image)  # outputs copied out of the request's buffers
        return {name: np.array(result[i]) for i, name in enumerate(self._names)}

    def check_executed(self, example: Any) -> dict[str, str]:
        """The compiled model's actual precision, hint and threads."""
        self.predict(example)
        got = str(self._compiled.get_property("INFERENCE_PRECISION_HINT"))
        self.executed = {"inference_precision_active": got,
                         "performance_hint_active": str(
                             self._compiled.get_property("PERFORMANCE_HINT")),
                         "num_threads_active": str(
                             self._compiled.get_property("INFERENCE_NUM_THREADS"))}
        # compute layers running on int8 kernels (a uint8 model input alone puts its Input,
        # Eltwise and Subgraph layers in u8: measured 8 such layers on the FP32 demo)
        int8 = 0
        for op in self._compiled.get_runtime_model().get_ops():
            info = op.get_rt_info()
            if (info["layerType"].astype(str) in COMPUTE_LAYERS
                    and info["runtimePrecision"].astype(str) in ("i8", "u8")):
                int8 += 1
        self.executed["int8_ops_active"] = str(int8)
        if self.cfg.mode == "int8" and not int8:
            raise UnsupportedPrecision("OpenVINO INT8: the compiled model runs no int8 op")
        wanted = TYPE_NAMES[self.cfg.inference_precision]
        if wanted not in got:  # the property prints as <Type: 'float32'>
            raise UnsupportedPrecision(f"OpenVINO compiled for {got}, not {wanted} as "
                                       "configured")
        return self.executed

    def metrics(self) -> dict[str, float]:
        return {f"openvino.{k}": v for k, v in self.stats.items()} | {
            "openvino.cache_hit": float(self.hit)}

    def describe(self) -> dict[str, str]:
        return {"backend": "openvino", "openvino": self.available.get("openvino", ""),
                "inference_precision": self.cfg.inference_precision,
                "performance_hint": self.cfg.performance_hint,
                "num_threads": str(self.cfg.num_threads), "input_shape": str(self.input_shape),
                "mode": self.cfg.mode,
                **({"nncf": self.available.get("nncf", ""), "preset": self.cfg.preset,
                    "calibration_images": str(self.calibration_images),
                    "calibration_source": self.cfg.calibration_source}
                   if self.cfg.mode == "int8" else {}),
                "model_bytes": str(int(self.stats.get("model_bytes", 0))),
                "cache_key": self.key, "cache_hit": str(self.hit).lower(), **self.executed}


class OpenVinoPlugin(Plugin):
    name, label, order = "openvino", "OpenVINO", 40
    where = "CPU (Intel/AMD x86, ARM), openvino package"
    display_order = ("OpenVINO FP32", "OpenVINO INT8")

    def fields(self) -> list[tuple[str, Any, Any]]:
        return [("openvino", OpenVinoConfig, dataclasses.field(default_factory=OpenVinoConfig))]

    def validate(self, precision: Any) -> None:
        from runner.config import ConfigError

        cfg = precision.openvino
        check_calibration_count(cfg, "openvino")
        for name, value, valid in (("inference_precision", cfg.inference_precision, PRECISIONS),
                                   ("performance_hint", cfg.performance_hint, HINTS),
                                   ("mode", cfg.mode, MODES), ("preset", cfg.preset, PRESETS),
                                   ("calibration_source", cfg.calibration_source,
                                    CALIBRATION_SOURCES)):
            if value not in valid:
                raise ConfigError(f"precision.openvino.{name}={value!r} is not valid; choose "
                                  f"one of: {', '.join(valid)}")
        if cfg.num_threads < 0:
            raise ConfigError(f"precision.openvino.num_threads={cfg.num_threads!r} is not "
                              "valid; it must be >= 0 (0: OpenVINO's default)")

    def check_available(self, precision: Any) -> dict[str, str]:
        return check_available(precision.openvino)

    def environment(self, available: Mapping[str, str]) -> dict[str, str]:
        return {"env.openvino": available.get("openvino", "none")}

    def calibration(self, precision: Any) -> CalibrationNeed | None:
        return int8_calibration(precision.openvino, "openvino")

    def create(self, ctx: BuildContext) -> OpenVinoBackend:
        from runner.backends.litert import LiteRTConfig, fixed_hw
        from runner.backends.native import NativeBackend

        cfg: OpenVinoConfig = ctx.precision.openvino
        available = ctx.available or check_available(cfg)
        source = NativeBackend(ctx.model_dir, ctx.signature, ctx.input_name, ctx.input_dtype)
        hw = fixed_hw(LiteRTConfig(input_size=cfg.input_size), source.input_shape,
                      ctx.nominal_hw)
        dtype = source.input_dtype
        del source
        shape = [1, hw[0], hw[1], 3]
        calibration: list[np.ndarray] = []
        if cfg.mode == "int8":
            calibration = ctx.calibration_inputs(dtype, shape)
        params: dict[str, Any] = {"signature": ctx.signature, "weights": "f32"}
        if cfg.mode == "int8":
            params |= {"mode": "int8", "preset": cfg.preset,
                       "calibration": calibration_id(ctx.calibration_images)}
        key = ingredients(ctx.model_dir, params, shape,
                          available, "any")  # the IR is device-independent; compiled per run
        result = ConversionCache(ctx.cache_dir / "openvino", ARTIFACT).get_or_convert(
            key, lambda out: convert(ctx.model_dir, out, ctx.signature, hw, cfg, calibration))
        return OpenVinoBackend(result.path, cfg, hw, dtype, available, result.stats,
                               result.hit, result.key, len(calibration))


PLUGIN = OpenVinoPlugin()
