"""Native TensorFlow: a SavedModel called through its serving signature, in float32 or with
Grappler's auto mixed precision (fp16 on NVIDIA GPUs, bf16 on oneDNN CPUs), optionally with XLA."""

from __future__ import annotations

import dataclasses
import os
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from runner.backends import BuildContext, Plugin, UnsupportedPrecision

#: Grappler option per amp mode (tf.config.optimizer.set_experimental_options).
AMP_OPTIONS = {"fp16": "auto_mixed_precision", "bf16": "auto_mixed_precision_onednn_bfloat16"}
AMP_DTYPES = {"fp16": "float16", "bf16": "bfloat16"}


class SignatureError(ValueError):
    """The SavedModel does not offer the configured signature or input."""


__all__ = ["NativeBackend", "SignatureError", "UnsupportedPrecision"]
AMP_MODES = ("none", "fp16", "bf16")


def enable_xla_before_tf_import() -> None:
    """XLA auto-clustering for every device (CPU clustering needs a flag read at TF start)."""
    flags = os.environ.get("TF_XLA_FLAGS", "")
    os.environ["TF_XLA_FLAGS"] = f"{flags} --tf_xla_auto_jit=2 --tf_xla_cpu_global_jit".strip()


def configure(amp: str, xla: bool) -> None:
    """Global TensorFlow settings for this process; call before loading the model."""
    import tensorflow as tf

    if amp == "fp16" and not tf.config.list_physical_devices("GPU"):
        raise UnsupportedPrecision(
            "precision amp_fp16 needs an NVIDIA GPU visible to TensorFlow, and none is "
            f"(TensorFlow {tf.__version__}, built with CUDA: {tf.test.is_built_with_cuda()}); "
            "on a CPU use precision=amp_bf16")
    if amp in AMP_OPTIONS:
        tf.config.optimizer.set_experimental_options({AMP_OPTIONS[amp]: True})
    if xla:
        tf.config.optimizer.set_jit("autoclustering")


def graph_dtypes(fn: Any, example: Any) -> Counter[str]:
    """Node dtypes of the function graphs TensorFlow actually ran for one call (after Grappler)."""
    import tensorflow as tf
    from tensorflow.python.eager import context

    context.enable_run_metadata()
    try:
        fn(example)
        metadata = context.export_run_metadata()
    finally:
        context.disable_run_metadata()
    counts: Counter[str] = Counter()
    for graph in metadata.function_graphs:
        for node in graph.post_optimization_graph.node:
            for key in ("T", "DstT", "dtype"):
                if key in node.attr and node.attr[key].type:
                    counts[tf.dtypes.as_dtype(node.attr[key].type).name] += 1
    return counts


class NativeBackend:
    def __init__(self, model_dir: Path, signature: str = "serving_default",
                 input_name: str = "input_tensor", input_dtype: str = "uint8",
                 amp: str = "none", xla: bool = False) -> None:
        import tensorflow as tf

        configure(amp, xla)
        self.model_dir, self.amp, self.xla = model_dir, amp, xla
        self._model = tf.saved_model.load(str(model_dir))
        signatures = dict(self._model.signatures)
        if signature not in signatures:
            raise SignatureError(f"SavedModel {str(model_dir)!r} has no signature {signature!r}; "
                                 f"it has {sorted(signatures)}")
        self._fn = signatures[signature]
        specs = self._fn.structured_input_signature[1]
        if input_name not in specs:
            raise SignatureError(f"signature {signature!r} has no input {input_name!r}; "
                                 f"its inputs are {sorted(specs)}")
        dtype = specs[input_name].dtype.name
        if dtype != input_dtype:
            raise SignatureError(f"input {input_name!r} of {signature!r} is {dtype}, "
                                 f"but model.input_dtype is {input_dtype!r}")
        self.signature, self.input_name, self.input_dtype = signature, input_name, dtype
        self.input_shape = [d if d is None else int(d) for d in specs[input_name].shape]
        self.executed: dict[str, str] = {}

    def prepare_input(self, tensor: Any) -> Any:
        """The decoded tf.Tensor is what the signature takes."""
        return tensor

    def predict(self, image: Any) -> Mapping[str, np.ndarray]:
        """One call; ``.numpy()`` forces the outputs so device work is finished on return."""
        outputs = self._fn(**{self.input_name: image})
        return {key: value.numpy() for key, value in outputs.items()}

    def check_executed(self, example: Any) -> dict[str, str]:
        """Record what ran (reduced-precision node counts); refuse a rewrite that did not fire."""
        counts = graph_dtypes(lambda x: self._fn(**{self.input_name: x}), example)
        self.executed = {"graph_nodes": str(sum(counts.values())),
                         "bfloat16_nodes": str(counts.get("bfloat16", 0)),
                         "float16_nodes": str(counts.get("float16", 0))}
        if self.amp in AMP_DTYPES:
            wanted = AMP_DTYPES[self.amp]
            if counts.get(wanted, 0) == 0:
                raise UnsupportedPrecision(
                    f"auto mixed precision to {wanted} did not convert any op of this model on "
                    "this machine (the rewrite needs oneDNN for bf16 or a GPU of compute "
                    "capability >= 7.0 for fp16); not reporting an FP32 run as mixed precision")
        return self.executed

    def metrics(self) -> dict[str, float]:
        return {}

    def describe(self) -> dict[str, str]:
        return {"backend": "native", "signature": self.signature, "input_name": self.input_name,
                "input_dtype": self.input_dtype, "input_shape": str(self.input_shape),
                "amp": self.amp, "xla": str(self.xla).lower(), **self.executed}


class NativePlugin(Plugin):
    name, label, order = "native", "Native", 0
    where = "any machine with TensorFlow (AMP FP16: NVIDIA GPU; AMP BF16: oneDNN CPU)"
    display_order = ("Native FP32",)  # AMP rows are not in the public table: after its rows

    def fields(self) -> list[tuple[str, Any, Any]]:
        return [("amp", str, dataclasses.field(default="none")),  # Grappler auto mixed precision
                ("xla", bool, dataclasses.field(default=False))]  # XLA JIT auto-clustering

    def validate(self, precision: Any) -> None:
        from runner.config import ConfigError

        if precision.amp not in AMP_MODES:
            raise ConfigError(f"precision.amp={precision.amp!r} is not valid; choose one of: "
                              f"{', '.join(AMP_MODES)}")

    def before_import(self, precision: Any) -> None:
        if precision.xla:
            enable_xla_before_tf_import()

    def create(self, ctx: BuildContext) -> NativeBackend:
        return NativeBackend(ctx.model_dir, ctx.signature, ctx.input_name, ctx.input_dtype,
                             amp=ctx.precision.amp, xla=ctx.precision.xla)


PLUGIN = NativePlugin()
