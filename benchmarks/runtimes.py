"""Runtimes side by side on the demo detector: conversion time, model size, mean latency as a
ratio to Native FP32 measured interleaved in one run, and the AP difference to Native FP32.

The model is the demo detector exported with builtin NMS (``runner.demo.lite``: the shipped
weights; the shipped SavedModel's CombinedNonMaxSuppression has no LiteRT builtin). Every
precision config of a non-TensorFlow runtime (``conf/precision/litert_*.yaml``, and any other
runtime's configs listed in ``RUNTIME_PREFIXES``) is built through its backend plugin, exactly as
a job builds it (``runner.backends``: availability check, conversion into a fresh cache,
calibration on images disjoint from the scored ones); an unavailable runtime is reported as
skipped with its reason. All runtimes get the same inputs: the synthetic val images
squash-resized to 256x256 uint8 (the fixed shape LiteRT is converted for; the demo squashes to
256x256 inside its graph anyway), so the AP difference is the conversion's alone.

Figures per runtime: ``<precision>.conversion_s``, ``.model_mb``, ``.latency_ratio`` (median over
rounds of its block mean latency / Native FP32's block mean latency of the same round, blocks in
rotating order, 95% bootstrap interval), ``.ap_diff`` (AP points x100, runtime - Native FP32).
Checks (invariants): every available runtime converted and ran, LiteRT FP32 keeps Native FP32's
AP (within 0.1 point: the same arithmetic), reduced-precision files are smaller (fp16 < 0.6 x
fp32, int8 < 0.35 x fp32). Target: full INT8 is faster than Native FP32 (quick mode reports it).

``--model ARCH`` (``runner.demo.architectures``: ``mobilenetv2_ssd``, ``keras_hub_retinanet``)
does the same on a real detector architecture with random weights, built offline, fed at its own
input size: whether each runtime converts a real graph, and at what cost. Its AP on the synthetic
ground truth is ~0 whatever the runtime, so ``.ap_diff`` there is the agreement AP instead: each
runtime's detections scored against Native FP32's top ``AGREEMENT_TOP`` detections per image as
the ground truth (Native FP32 scores 100). A runtime that fails to convert or to run is reported
as ``<precision>.failed`` with the reason (the exception's first lines) and the run goes on;
the checks then are: the failures carry a reason, and each FP32 conversion that ran agrees with
Native FP32 within ``FP32_AGREEMENT_TOLERANCE`` points.

    python benchmarks/runtimes.py [--quick] [--model ARCH [--size N]]
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from benchmarks import common  # noqa: E402

RUNTIME_PREFIXES = ("litert_", "onnx_", "openvino_")
SIZE = (256, 256)
FP32_AP_TOLERANCE = 0.1  # AP points x100
QUICK = ("fp32", "litert_fp32", "litert_int8")
AGREEMENT_TOP = 20  # x images: Native FP32's highest-scored detections taken as ground truth
FP32_AGREEMENT_TOLERANCE = 1.0  # AP points: float32 conversions agree with Native FP32
REASON_LINES = 3


def reason(exc: BaseException) -> str:
    """The failure's type and first lines (a converter's message names the op it refused)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {' | '.join(lines[:REASON_LINES])}"[:600]


def _precision(name: str) -> Any:
    from hydra import compose, initialize_config_dir

    from runner import config

    config.register()
    with initialize_config_dir(config_dir=str(common.ROOT / "conf"), version_base="1.3"):
        cfg = config.to_object(compose(config_name="config", overrides=[f"precision={name}"]))
    config.validate(cfg)
    return cfg.precision


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def build(name: str, model: Path, cache: Path, calibration: Sequence[Any],
          report: common.Report, size: tuple[int, int] = SIZE,
          failures: dict[str, str] | None = None) -> tuple[Any, float, int] | None:
    """(backend, conversion seconds, model bytes), or None when the runtime is unavailable or
    (with ``failures``: the reason is put there) its conversion failed."""
    from runner import backends, data

    precision = _precision(name)
    plugin = backends.get(precision.backend)
    try:
        available = plugin.check_available(precision)
    except backends.UnsupportedPrecision as exc:
        report.info(f"{name}: skipped: {exc}")
        return None

    def prepare(records: Sequence[Any], dtype: str, shape: Sequence[int | None]) -> list[Any]:
        spec = data.InputSpec(dtype=dtype, size=size)
        return [p.tensor for p in data.prepare(records, spec=spec, progress=False)]

    ctx = backends.BuildContext(
        model_dir=model, signature="serving_default", input_name="input_tensor",
        input_dtype="uint8", precision=precision, cache_dir=cache, gpu_name="none",
        nominal_hw=size, available=available, build_images=calibration[:1],
        calibration_images=calibration, prepare=prepare)
    start = time.perf_counter()
    try:
        backend = plugin.create(ctx)
    except Exception as exc:  # a conversion refused is a finding: record why, go on
        if failures is None or name == "fp32":
            raise
        failures[name] = reason(exc)
        report.info(f"{name}: FAILED after {time.perf_counter() - start:.1f} s: {failures[name]}")
        return None
    load_s = time.perf_counter() - start
    metrics = backend.metrics()
    conversion = next((v for k, v in metrics.items() if k.endswith("conversion_s")), 0.0)
    nbytes = next((int(v) for k, v in metrics.items() if k.endswith("model_bytes")),
                  _dir_bytes(model))
    report.info(f"{name}: built in {load_s:.1f} s (conversion {conversion:.1f} s), "
                f"{nbytes / 1e6:.2f} MB; {backend.describe()}")
    return backend, float(conversion), nbytes


def detect(backend: Any, inputs: Sequence[Any], records: Sequence[Any],
           size: tuple[int, int] = SIZE) -> Any:
    """The runtime's detections on ``inputs`` as a ``ResultsAccumulator``."""
    from runner import signatures
    from runner.evaluate import ResultsAccumulator

    results = ResultsAccumulator()
    for record, x in zip(records, inputs, strict=True):
        det = signatures.zoo_outputs(backend.predict(x), size)
        results.add(record.image_id, record.width, record.height, det)
    return results


def evaluate(backend: Any, inputs: Sequence[Any], records: Sequence[Any],
             annotations: Path | dict[str, Any], size: tuple[int, int] = SIZE) -> float:
    from runner.evaluate import evaluate_bbox

    results = detect(backend, inputs, records, size)
    return evaluate_bbox(annotations, results, [r.image_id for r in records])["AP"]


def _options(parser: Any) -> None:
    from runner.demo.architectures import ARCHITECTURES

    parser.add_argument("--model", default="demo", choices=["demo", *ARCHITECTURES],
                        help="the demo detector (default) or a real architecture with random "
                             "weights (runner.demo.architectures)")
    parser.add_argument("--size", type=int, default=None,
                        help="the architecture's input side (default: its own)")
    parser.add_argument("--precisions", default=None,
                        help="comma-separated precision configs (default: every runtime's; "
                             "--quick: " + ",".join(QUICK) + ")")


def main(argv: Sequence[str] | None = None) -> int:
    from runner import data
    from runner.config import DatasetConfig
    from runner.demo import architectures, lite
    from runner.measure import time_calls

    args = common.arguments(__doc__.splitlines()[0], argv, _options)
    arch = args.model != "demo"
    report = common.Report("runtimes" if not arch else f"runtimes_{args.model}", args.quick)
    common.header(report, f"runtimes on {args.model}, interleaved against Native FP32")
    scored_n, calib_n, timed_n, rounds = (30, 10, 6, 3) if args.quick else (100, 100, 20, 15)
    names = ["fp32"] + sorted(p.stem for p in (common.ROOT / "conf" / "precision").glob("*.yaml")
                              if p.stem.startswith(RUNTIME_PREFIXES))
    if args.precisions:
        asked = [n.strip() for n in args.precisions.split(",") if n.strip()]
        unknown = sorted(set(asked) - set(names))
        if unknown:
            raise SystemExit(f"--precisions: {', '.join(unknown)} not valid; choose from "
                             f"{', '.join(names)}")
        names = ["fp32"] + [n for n in names if n in asked and n != "fp32"]
    elif args.quick:  # a conversion takes ~20 s on 2 loaded cores: one float, one calibrated
        names = [n for n in names if n in QUICK]
    failures: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="detbench-runtimes-") as tmp:
        root = Path(tmp)
        if arch:
            start = time.perf_counter()
            made = architectures.build(args.model, root / args.model, args.size)
            size = (made.size, made.size)
            report.info(f"{args.model}: built {made.size}x{made.size}, {made.classes} classes, "
                        f"{made.params / 1e6:.2f} M parameters, random weights, in "
                        f"{time.perf_counter() - start:.1f} s")
            model = made.path
        else:
            model, size = lite.export(root / "demo_lite"), SIZE
        every = data.load_dataset(DatasetConfig(name="synthetic", display_name="synthetic"),
                                  str(root / "cache"))
        records, calibration = every.images[:scored_n], every.images[scored_n:][:calib_n]
        raw = [p.tensor for p in data.prepare(records, spec=data.InputSpec(size=size),
                                              progress=False)]
        built: dict[str, tuple[Any, float, int]] = {}
        for name in names:
            got = build(name, model, root / "conversions", calibration, report, size,
                        failures if arch else None)
            if got is not None:
                built[name] = got
        if "fp32" not in built:
            report.check("all_converted", False, "Native FP32 could not be built")
            return report.finish(args.json)
        inputs = {name: [b[0].prepare_input(x) for x in raw] for name, b in built.items()}
        truth: Path | dict[str, Any] = every.annotations
        if arch:  # random weights: score against Native FP32's own detections
            native = detect(built["fp32"][0], inputs["fp32"], records, size)
            truth = architectures.agreement_ground_truth(
                native.to_json_list(),
                [{"id": r.image_id, "width": r.width, "height": r.height} for r in records],
                AGREEMENT_TOP, made.classes)
        ap: dict[str, float] = {}
        for name, (backend, *_) in list(built.items()):
            try:
                ap[name] = evaluate(backend, inputs[name], records, truth, size)
                # printed now: the timing below can take long on a big model or a loaded machine
                report.info(f"{name}: AP {100 * ap[name]:.2f}"
                            + (" (agreement with Native FP32)" if arch else ""))
                for x in raw[:3]:  # warm up every runtime before timing
                    backend.predict(backend.prepare_input(x))
            except Exception as exc:  # it converted but does not run: a finding too
                if not arch or name == "fp32":
                    raise
                failures[name] = f"converted, then failed to run: {reason(exc)}"
                report.info(f"{name}: FAILED: {failures[name]}")
                del built[name]

        def variant(name: str) -> Callable[[int], np.ndarray]:
            predict, timed = built[name][0].predict, inputs[name][:timed_n]
            return lambda _: time_calls(predict, timed)

        lat = common.interleave({name: variant(name) for name in built}, rounds)
    what = "agreement AP (vs Native FP32's detections)" if arch else "AP"
    report.info(f"{len(built)} runtimes, {what} on {scored_n} images, latency {rounds} rounds x "
                f"{timed_n} calls each; Native FP32 mean "
                f"{np.concatenate(lat['fp32']).mean() * 1e3:.2f} ms, {what} "
                f"{100 * ap['fp32']:.2f}")
    rows = []
    for name in names:
        if name in failures:
            report.figure(f"{name}.failed", 1, failures[name])
            rows.append(f"| {name} | failed: {failures[name].replace('|', '/')} | | | | |")
        if name not in built:
            continue
        _, conversion, nbytes = built[name]
        ratio, lo, hi = common.paired_ratio(lat[name], lat["fp32"])
        diff = 100 * (ap[name] - ap["fp32"])
        if name != "fp32":
            report.figure(f"{name}.conversion_s", conversion, "(fresh cache)")
            report.figure(f"{name}.latency_ratio", ratio,
                          f"(vs Native FP32, 95% CI {lo:.3f}..{hi:.3f})")
            report.figure(f"{name}.ap_diff", diff, f"({what} {100 * ap[name]:.2f})")
        report.figure(f"{name}.model_mb", nbytes / 1e6)
        rows.append(f"| {name} | {conversion:.1f} | {nbytes / 1e6:.2f} | {ratio:.2f} "
                    f"({lo:.2f}..{hi:.2f}) | {100 * ap[name]:.2f} | {diff:+.2f} |")
    print(f"\n| precision | conversion s | size MB | latency / Native FP32 (95% CI) | "
          f"{what} | diff |\n|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n", flush=True)
    if arch:
        report.check("failures_have_reasons", all(len(r) > 20 for r in failures.values()),
                     f"{len(failures)} failed: {', '.join(failures) or 'none'}")
        float32 = [n for n in built if n.endswith("_fp32")]
        worst = max((100 * abs(ap[n] - ap["fp32"]) for n in float32), default=0.0)
        report.check("fp32_agree", worst <= FP32_AGREEMENT_TOLERANCE,
                     f"FP32 conversions {', '.join(float32) or 'none'}: largest |agreement AP "
                     f"diff| {worst:.3f} points (<= {FP32_AGREEMENT_TOLERANCE})")
        return report.finish(args.json)
    wanted = [n for n in names if n.startswith("litert_")]  # the others may be absent here
    report.check("all_converted", all(n in built for n in wanted),
                 f"built and ran: {', '.join(built)}")
    if "litert_fp32" in built:
        diff = 100 * abs(ap["litert_fp32"] - ap["fp32"])
        report.check("fp32_keeps_ap", diff <= FP32_AP_TOLERANCE,
                     f"|AP LiteRT FP32 - Native FP32| = {diff:.3f} points")
    sizes: Mapping[str, int] = {n: b[2] for n, b in built.items()}
    if {"litert_fp32", "litert_int8"} <= set(sizes):
        fp32 = sizes["litert_fp32"]
        report.check("smaller_files", sizes["litert_int8"] < 0.35 * fp32
                     and sizes.get("litert_fp16", 0) < 0.6 * fp32,
                     f"bytes fp32 {fp32}, fp16 {sizes.get('litert_fp16', 'not built')}, int8 "
                     f"{sizes['litert_int8']}")
    if "litert_int8" in built:
        ratio, lo, hi = common.paired_ratio(lat["litert_int8"], lat["fp32"])
        report.target_within("int8_faster", (ratio, lo, hi), 0.0, 1.0,
                             "LiteRT INT8 / Native FP32 mean latency")
    return report.finish(args.json)


if __name__ == "__main__":
    sys.exit(main())
