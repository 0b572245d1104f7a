"""What the benchmark scripts share: the report (figures and checks), interleaved measurement, the
worker's timed loop and a bare one, a tiny zoo-contract SavedModel, synthetic COCO-sized data, and
peak-RSS watching of a child process tree.

Every figure is a ratio of two (or more) variants measured side by side in one run: the variants
run in alternating blocks (AB BA AB ...), so that load from other processes on a shared machine
falls on all of them alike.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parents[1]
DEMO_MODEL = ROOT / "runner" / "demo" / "assets" / "demo_centernet"
#: COCO 2017's 80 category ids (1..90 with its gaps)
COCO_CATEGORY_IDS: tuple[int, ...] = tuple(
    i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83))
T = TypeVar("T")


# -- report ------------------------------------------------------------------------------------


@dataclass
class Report:
    """Figures (``FIGURE <script>.<key> = <value>``) and checks (``CHECK PASS|FAIL <script>.<key>:
    <detail>``) printed as they come; ``finish`` prints ``RESULT`` and gives the exit code."""

    name: str
    quick: bool = False
    figures: dict[str, Any] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)
    passed: list[str] = field(default_factory=list)
    targets: dict[str, bool] = field(default_factory=dict)

    def info(self, text: str) -> None:
        print(f"  {text}", flush=True)

    def figure(self, key: str, value: Any, text: str = "") -> None:
        self.figures[key] = value
        shown = f"{value:.6g}" if isinstance(value, float) else str(value)
        print(f"FIGURE {self.name}.{key} = {shown}{'  ' + text if text else ''}", flush=True)

    def check(self, key: str, ok: bool, detail: str) -> bool:
        (self.passed if ok else self.failed).append(key)
        print(f"CHECK {'PASS' if ok else 'FAIL'} {self.name}.{key}: {detail}", flush=True)
        return ok

    def target(self, key: str, ok: bool, detail: str) -> bool:
        """A performance target (a timing ratio or ceiling). Full mode checks it like any check;
        quick mode, whose few rounds on a loaded CI machine measure speed too roughly to judge,
        reports it as ``TARGET MET|MISSED`` without failing the run: there only the invariants
        are checked, and the figure itself comes from the full run (``make perf``)."""
        if not self.quick:
            return self.check(key, ok, detail)
        self.targets[key] = ok
        print(f"TARGET {'MET' if ok else 'MISSED'} {self.name}.{key}: {detail} "
              "(quick mode: reported, not checked)", flush=True)
        return ok

    def target_within(self, key: str, estimate: tuple[float, float, float], low: float,
                      high: float, what: str) -> bool:
        """A ratio's target range [low, high], judged on the point estimate (95% interval shown)."""
        value, lo, hi = estimate
        bounds = f"<= {high:g}" if low == -math.inf else f"{low:g}..{high:g}"
        return self.target(key, low <= value <= high,
                           f"{what}: {value:.4f} within {bounds} (95% CI {lo:.4f}..{hi:.4f})")

    def finish(self, json_out: str | None = None) -> int:
        status = "FAIL" if self.failed else "PASS"
        if json_out:
            Path(json_out).write_text(json.dumps(
                {"name": self.name, "quick": self.quick, "status": status,
                 "figures": self.figures, "passed": self.passed, "failed": self.failed,
                 "targets": self.targets},
                indent=1, default=str))
        print(f"RESULT {self.name}: {status} ({len(self.passed)} checks passed, "
              f"{len(self.failed)} failed{': ' + ', '.join(self.failed) if self.failed else ''})",
              flush=True)
        return 1 if self.failed else 0


def arguments(description: str, argv: Sequence[str] | None = None,
              extra: Callable[[argparse.ArgumentParser], None] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="a CI-sized run")
    parser.add_argument("--json", metavar="FILE", help="also write the figures to FILE")
    if extra is not None:
        extra(parser)
    return parser.parse_args(argv)


def header(report: Report, what: str) -> None:
    print(f"== {report.name} ({'quick' if report.quick else 'full'}): {what}", flush=True)
    print(f"   python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average "
          f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)


# -- interleaving and statistics ----------------------------------------------------------------


def orders(names: Sequence[str], rounds: int) -> Iterator[tuple[str, ...]]:
    """``rounds`` orders of ``names`` cycling through all permutations (AB, BA, AB, ... for two),
    so that each variant runs in each position equally often."""
    perms = list(itertools.permutations(names))
    for r in range(rounds):
        yield perms[r % len(perms)]


def interleave(variants: Mapping[str, Callable[[int], T]], rounds: int) -> dict[str, list[T]]:
    """Run each variant once per round (``variant(round)``), in alternating orders."""
    out: dict[str, list[T]] = {name: [] for name in variants}
    for r, order in enumerate(orders(list(variants), rounds)):
        for name in order:
            out[name].append(variants[name](r))
    return out


def ratio_ci(a: Sequence[float], b: Sequence[float], seed: int = 0,
             resamples: int = 2000) -> tuple[float, float, float]:
    """sum(a)/sum(b) of paired block totals and a 95% bootstrap interval over the blocks."""
    x, y = np.asarray(a, np.float64), np.asarray(b, np.float64)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(x), (resamples, len(x)))
    boot = x[idx].sum(axis=1) / y[idx].sum(axis=1)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return float(x.sum() / y.sum()), float(lo), float(hi)


def paired_ratio(a: Sequence[np.ndarray], b: Sequence[np.ndarray], seed: int = 0,
                 resamples: int = 2000) -> tuple[float, float, float]:
    """Median over rounds of mean(a's block) / mean(b's block) of the same round, and a 95%
    bootstrap interval of that median. Blocks of one round ran back to back, so each ratio
    compares the two under the same outside load; the median keeps a round in which another
    process took the CPUs from swaying the result."""
    ratios = np.array([x.mean() / y.mean() for x, y in zip(a, b, strict=True)])
    rng = np.random.default_rng(seed)
    boot = np.median(ratios[rng.integers(0, len(ratios), (resamples, len(ratios)))], axis=1)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return float(np.median(ratios)), float(lo), float(hi)


def trimmed_mean(values: np.ndarray, cut: float = 0.01) -> float:
    """Mean without the slowest ``cut`` fraction (preemptions by other processes)."""
    v = np.sort(np.asarray(values, np.float64))
    keep = max(1, int(math.ceil(len(v) * (1 - cut))))
    return float(v[:keep].mean())


# -- models and inputs -------------------------------------------------------------------------


@contextmanager
def tiny_model() -> Iterator[Path]:
    """``build_tiny_model`` in a temporary directory, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="detbench-tiny-") as tmp:
        yield build_tiny_model(Path(tmp) / "tiny")


def build_tiny_model(directory: Path, detections: int = 100) -> Path:
    """A SavedModel with the zoo's serving contract whose call is short: one 3x3 conv with 8
    filters, a global pool and ``detections`` boxes derived from it (outputs depend on the input,
    so two loops that saw the same inputs produce the same outputs)."""
    import tensorflow as tf

    class Tiny(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            rng = np.random.default_rng(0)
            self.kernel = tf.constant(rng.normal(0, 0.1, (3, 3, 3, 8)).astype(np.float32))
            self.proj = tf.constant(rng.normal(0, 1, (8, detections * 6)).astype(np.float32))

        @tf.function(input_signature=[tf.TensorSpec([1, None, None, 3], tf.uint8,
                                                    name="input_tensor")])
        def serve(self, input_tensor: tf.Tensor) -> dict[str, tf.Tensor]:
            x = tf.cast(input_tensor, tf.float32) / 255.0
            feat = tf.reduce_mean(tf.nn.relu(tf.nn.conv2d(x, self.kernel, 1, "SAME")), [1, 2])
            raw = tf.sigmoid(tf.reshape(tf.matmul(feat, self.proj), [1, detections, 6]))
            y0, x0 = raw[..., 0] * 0.5, raw[..., 1] * 0.5
            boxes = tf.stack([y0, x0, y0 + raw[..., 2] * 0.5, x0 + raw[..., 3] * 0.5], -1)
            scores = tf.sort(raw[..., 4], direction="DESCENDING")
            classes = tf.math.floor(raw[..., 5] * 79.999) + 1.0
            return {"detection_boxes": boxes, "detection_classes": classes,
                    "detection_scores": scores,
                    "num_detections": tf.constant([float(detections)])}

    module = Tiny()
    tf.saved_model.save(module, str(directory), signatures={"serving_default": module.serve})
    return directory


def photo_like(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A uint8 HxWx3 image with smooth structure and noise (compresses like a photo)."""
    small = rng.uniform(0, 255, (max(2, height // 32), max(2, width // 32), 3))
    rows = np.linspace(0, small.shape[0] - 1, height)
    cols = np.linspace(0, small.shape[1] - 1, width)
    r0, c0 = rows.astype(int), cols.astype(int)
    r1, c1 = np.minimum(r0 + 1, small.shape[0] - 1), np.minimum(c0 + 1, small.shape[1] - 1)
    fr, fc = (rows - r0)[:, None, None], (cols - c0)[None, :, None]
    img = (small[r0][:, c0] * (1 - fr) * (1 - fc) + small[r1][:, c0] * fr * (1 - fc)
           + small[r0][:, c1] * (1 - fr) * fc + small[r1][:, c1] * fr * fc)
    img += rng.normal(0, 12, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def input_tensors(count: int, height: int, width: int, seed: int = 0) -> list[Any]:
    """``count`` distinct uint8 [1, H, W, 3] tensors, as ``data.prepare`` hands the timer."""
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    return [tf.constant(photo_like(rng, height, width)[None]) for _ in range(count)]


def fingerprint(outputs: Mapping[str, np.ndarray]) -> float:
    """A number that changes with the input: the sum of the boxes and scores."""
    return float(np.sum(outputs["detection_boxes"], dtype=np.float64)
                 + np.sum(outputs["detection_scores"], dtype=np.float64))


# -- the two timed loops ------------------------------------------------------------------------


def worker_defers_outputs() -> bool:
    """Whether ``runner.worker`` times its chunks with ``time_calls(..., defer_outputs=True)``
    (the change proposed in benchmarks/README.md), read from its source."""
    import inspect

    from runner import worker

    return "defer_outputs=True" in inspect.getsource(worker)


class WorkerLoop:
    """The worker's timed loop over one block of prepared inputs: ``runner.measure.time_calls``
    with the worker's ``on_output`` (zoo adapter -> ``Results.add``, as ``runner.worker.time_model``
    does it) and its tqdm progress bar (written to /dev/null). Returns the latencies and one
    fingerprint per call (taken after the loop).

    ``deferred``: ``time_calls(..., defer_outputs=True)``, the adapter and ``Results.add`` run
    after the last timed call instead of after each; ``None``: as the worker does it."""

    def __init__(self, predict: Callable[[Any], Mapping[str, np.ndarray]],
                 inputs: Sequence[Any], deferred: bool | None = None) -> None:
        from runner import data, signatures

        self.predict, self.inputs = predict, list(inputs)
        self.deferred = worker_defers_outputs() if deferred is None else deferred
        self.adapt = signatures.adapter("zoo")
        self.records = [data.ImageRecord(i + 1, Path(f"{i + 1:012d}.jpg"), int(t.shape[2]),
                                         int(t.shape[1])) for i, t in enumerate(self.inputs)]
        self._devnull = open(os.devnull, "w")  # noqa: SIM115 - closed in close()
        self.detections = 0

    def __call__(self) -> tuple[np.ndarray, list[float]]:
        from tqdm import tqdm

        from runner.measure import time_calls
        from runner.worker import Results

        results = Results(truncate_boxes=False)
        chunk, tensors = self.records, self.inputs
        kept: list[Mapping[str, np.ndarray]] = []  # for the fingerprints, taken after the loop
        bar = tqdm(total=len(tensors), desc="timed", unit="img", file=self._devnull)

        def on_output(i: int, outputs: Mapping[str, np.ndarray]) -> None:
            hw = (int(tensors[i].shape[1]), int(tensors[i].shape[2]))
            results.add(chunk[i], self.adapt(outputs, hw))
            kept.append(outputs)

        latencies = time_calls(self.predict, tensors, on_output, progress=bar.update,
                               defer_outputs=self.deferred)
        bar.close()
        self.detections = len(results.boxes)
        return latencies, [fingerprint(out) for out in kept]

    def close(self) -> None:
        self._devnull.close()


def bare_loop(fn: Callable[..., Mapping[str, Any]], inputs: Sequence[Any],
              input_name: str = "input_tensor") -> tuple[np.ndarray, list[float]]:
    """The serving signature called directly, outputs materialized, nothing else timed."""
    latencies = np.empty(len(inputs), dtype=np.float64)
    kept: list[Mapping[str, np.ndarray]] = []
    for i, x in enumerate(inputs):
        start = time.perf_counter()
        outputs = {k: v.numpy() for k, v in fn(**{input_name: x}).items()}
        latencies[i] = time.perf_counter() - start
        kept.append(outputs)
    return latencies, [fingerprint(out) for out in kept]


def same_fingerprints(a: Sequence[Sequence[float]], b: Sequence[Sequence[float]]) -> bool:
    """Every block of both loops produced the same per-call outputs (same inputs, same order),
    and the inputs were not all alike."""
    ref = np.asarray(a[0])
    blocks = [np.asarray(x) for x in (*a, *b)]
    return (all(x.shape == ref.shape and np.allclose(x, ref, rtol=1e-5, atol=1e-6)
                for x in blocks) and len(np.unique(np.round(ref, 4))) > 1)


# -- synthetic COCO data ------------------------------------------------------------------------


def coco_categories() -> list[dict[str, Any]]:
    return [{"id": c, "name": f"category_{c}", "supercategory": "thing"}
            for c in COCO_CATEGORY_IDS]


def _image_size(rng: np.random.Generator) -> tuple[int, int]:
    """(width, height) drawn like COCO's: mostly 640 on the long side."""
    u = rng.uniform()
    if u < 0.5:
        return 640, 480
    if u < 0.65:
        return 480, 640
    if u < 0.8:
        return 640, 427
    return int(rng.integers(200, 641)), int(rng.integers(200, 641))


def _gt_boxes(rng: np.random.Generator, n: int, w: int, h: int) -> np.ndarray:
    """n pixel boxes [x, y, w, h]: sides log-uniform (about 40% small, 30% medium, 30% large by
    COCO's area ranges), aspect ratio log-normal, inside the image."""
    side = np.exp(rng.uniform(np.log(4.0), np.log(0.95 * min(w, h)), n))
    aspect = np.exp(rng.normal(0.0, 0.5, n))
    bw = np.clip(side * np.sqrt(aspect), 1.0, w - 1.0)
    bh = np.clip(side / np.sqrt(aspect), 1.0, h - 1.0)
    x = rng.uniform(0, 1, n) * (w - bw)
    y = rng.uniform(0, 1, n) * (h - bh)
    return np.stack([x, y, bw, bh], 1)


@dataclass
class CocoCase:
    """Ground truth (COCO instances document) and per-image detections of a synthetic case."""

    gt: dict[str, Any]
    sizes: list[tuple[int, int, int]]  # (image_id, width, height)
    detections: list[Any]  # runner.detections.Detections per image, normalized yx boxes

    @property
    def num_detections(self) -> int:
        return sum(len(d) for d in self.detections)


def synthetic_coco(num_images: int, seed: int = 0, per_image: int = 100,
                   mean_objects: float = 7.36) -> CocoCase:
    """A COCO-val-like case: image sizes like COCO's, about ``mean_objects`` boxes per image
    (over-dispersed, some images empty, 1% crowd), 80 categories with COCO's ids and a skewed
    frequency, and ``per_image`` detections per image: jittered copies of most objects (mostly the
    right category, scored higher) and false positives, sorted by score."""
    from runner.detections import Detections

    rng = np.random.default_rng(seed)
    cats = np.asarray(COCO_CATEGORY_IDS)
    weights = 1.0 / np.arange(1, len(cats) + 1) ** 0.9
    weights /= weights.sum()
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    sizes: list[tuple[int, int, int]] = []
    detections: list[Any] = []
    for index in range(num_images):
        image_id = 100_000 + index * 7  # sparse ids, as COCO's
        w, h = _image_size(rng)
        images.append({"id": image_id, "file_name": f"{image_id:012d}.jpg", "width": w,
                       "height": h})
        sizes.append((image_id, w, h))
        n = min(int(rng.poisson(rng.gamma(1.5, mean_objects / 1.5))), 60)
        boxes = _gt_boxes(rng, n, w, h)
        classes = rng.choice(cats, n, p=weights)
        crowd = rng.uniform(0, 1, n) < 0.01
        for b, c, iscrowd in zip(boxes.tolist(), classes.tolist(), crowd.tolist(), strict=True):
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": c, "bbox": [round(v, 2) for v in b],
                                "area": round(b[2] * b[3] * float(rng.uniform(0.4, 0.9)), 2),
                                "iscrowd": int(iscrowd)})
        # detections: up to 3 jittered copies of 80% of the objects, then false positives
        keep = rng.uniform(0, 1, n) < 0.8
        reps = rng.integers(1, 4, int(keep.sum()))
        copies = np.repeat(boxes[keep], reps, axis=0)[:per_image]
        tp_classes = np.repeat(classes[keep], reps)[:per_image].astype(np.int64)
        jitter = rng.normal(0, 0.08, copies.shape) * np.tile(copies[:, 2:], 2)
        tp = copies + jitter
        wrong = rng.uniform(0, 1, len(tp)) < 0.1
        tp_classes[wrong] = rng.choice(cats, int(wrong.sum()))
        fp = _gt_boxes(rng, per_image - len(tp), w, h)
        px = np.concatenate([tp, fp]) if len(tp) else fp
        scores = np.concatenate([rng.beta(5, 2, len(tp)), rng.beta(1, 4, len(fp))])
        cls = np.concatenate([tp_classes, rng.choice(cats, len(fp), p=weights)])
        x0 = np.clip(px[:, 0], 0, w) / w
        y0 = np.clip(px[:, 1], 0, h) / h
        x1 = np.clip(px[:, 0] + np.abs(px[:, 2]), 0, w) / w
        y1 = np.clip(px[:, 1] + np.abs(px[:, 3]), 0, h) / h
        order = np.argsort(-scores, kind="stable")
        norm = np.stack([y0, x0, np.maximum(y1, y0), np.maximum(x1, x0)], 1)[order]
        detections.append(Detections(boxes=norm.astype(np.float32),
                                     classes=cls[order].astype(np.int64),
                                     scores=scores[order].astype(np.float32)))
    gt = {"info": {"description": f"detbench synthetic COCO-sized case, seed {seed}"},
          "licenses": [], "images": images, "annotations": annotations,
          "categories": coco_categories()}
    return CocoCase(gt, sizes, detections)


def write_jpeg_dataset(root: Path, num_images: int, width: int = 640, height: int = 480,
                       distinct: int = 64, seed: int = 0, quality: int = 90) -> tuple[Path, Path]:
    """A COCO-format dataset of ``num_images`` WxH JPEGs (``distinct`` different pictures, the
    rest hard links to them) with a few ground-truth boxes each; returns (images_dir,
    annotations). Already written files are kept."""
    from PIL import Image

    images_dir, ann = root / "images", root / "annotations" / "instances.json"
    marker = root / f".complete-{num_images}-{width}x{height}-{distinct}-{seed}-{quality}"
    if marker.is_file():
        return images_dir, ann
    images_dir.mkdir(parents=True, exist_ok=True)
    ann.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    sources: list[Path] = []
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for index in range(num_images):
        image_id = index + 1
        path = images_dir / f"{image_id:012d}.jpg"
        if index < distinct:
            Image.fromarray(photo_like(rng, height, width)).save(path, quality=quality)
            sources.append(path)
        else:
            path.unlink(missing_ok=True)
            try:
                os.link(sources[index % distinct], path)
            except OSError:
                path.write_bytes(sources[index % distinct].read_bytes())
        images.append({"id": image_id, "file_name": path.name, "width": width, "height": height})
        for b in _gt_boxes(rng, int(rng.integers(1, 8)), width, height).tolist():
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": int(rng.choice(COCO_CATEGORY_IDS)),
                                "bbox": [round(v, 2) for v in b], "area": round(b[2] * b[3], 2),
                                "iscrowd": 0})
    ann.write_text(json.dumps({"images": images, "annotations": annotations,
                               "categories": coco_categories()}))
    marker.write_text("")
    return images_dir, ann


# -- child processes ----------------------------------------------------------------------------


def _status_kb(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0


@dataclass
class Watched:
    """A child process tree run to its end: exit code, wall seconds, and peak memory."""

    returncode: int
    wall_s: float
    peak_tree_rss_mb: float  # highest sum of the RSS of the tree's processes at one poll
    peak_hwm_mb: dict[str, float]  # per process (its ``label``): VmHWM at its last poll
    rusage_maxrss_mb: float  # kernel's peak RSS of the largest waited-for descendant
    stdout: str
    stderr: str
    series: list[tuple[float, str, float]]  # (time.time(), process label, RSS MB) per poll
    started: dict[str, float]  # process label -> its first start (time.time() scale, +-10 ms)
    launched: float  # time.time() just before the command was started
    processes: list[tuple[str, float, float]]  # (label, start, last seen alive) per process


def process_label(cmdline: Sequence[str]) -> str:
    """``worker`` for ``python -m runner.worker``, ``runner`` for ``python -m runner``, else the
    last word of the command."""
    if "runner.worker" in cmdline:
        return "worker"
    if "runner" in cmdline:
        return "runner"
    return cmdline[-1] if cmdline else "?"


def run_watched(cmd: Sequence[str], env: Mapping[str, str] | None = None,
                interval_s: float = 0.02, cwd: Path = ROOT) -> Watched:
    """Run ``cmd`` under a small wrapper process that reports
    ``getrusage(RUSAGE_CHILDREN).ru_maxrss`` (the kernel's exact peak RSS of the command or any
    of its descendants), while this process polls the tree's ``/proc/<pid>/status``."""
    import psutil

    wrapper = ("import resource, subprocess, sys; rc = subprocess.call(sys.argv[1:]); "
               "print('MAXRSS_KB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, "
               "file=sys.stderr); sys.exit(rc)")
    start, launched = time.perf_counter(), time.time()
    proc = subprocess.Popen([sys.executable, "-c", wrapper, *cmd], cwd=cwd,
                            env=dict(env) if env is not None else None, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    out: dict[str, str] = {}

    def drain(name: str, stream: Any) -> None:
        out[name] = stream.read()

    readers = [threading.Thread(target=drain, args=(n, s), daemon=True)
               for n, s in (("stdout", proc.stdout), ("stderr", proc.stderr))]
    for t in readers:
        t.start()
    peak_tree, hwm = 0.0, dict[str, float]()
    series: list[tuple[float, str, float]] = []
    started: dict[str, float] = {}
    seen: dict[int, list[Any]] = {}  # pid -> [label, start, last seen]
    root = psutil.Process(proc.pid)
    # psutil's start times count from the boot time in whole seconds: put them on time.time()'s
    # scale with the wrapper, started just after ``launched`` (left: the fork, and 10 ms ticks)
    offset = root.create_time() - launched
    while proc.poll() is None:
        try:
            tree = root.children(recursive=True)
        except psutil.NoSuchProcess:
            tree = []
        total, now = 0.0, time.time()
        for p in tree:
            try:  # the label is read each time: a fresh fork still shows its parent's command
                key = process_label(p.cmdline())
                begun = p.create_time() - offset
                rss = p.memory_info().rss / 2**20
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            started.setdefault(key, begun)
            seen[p.pid] = [key, begun, now]
            total += rss
            series.append((now, key, rss))
            hwm[key] = max(hwm.get(key, 0.0), _status_kb(p.pid, "VmHWM") / 1024)
        peak_tree = max(peak_tree, total)
        time.sleep(interval_s)
    wall = time.perf_counter() - start
    for t in readers:
        t.join()
    maxrss = 0.0
    for line in out.get("stderr", "").splitlines():
        if line.startswith("MAXRSS_KB"):
            maxrss = int(line.split()[1]) / 1024
    return Watched(proc.returncode, wall, peak_tree, hwm, maxrss, out.get("stdout", ""),
                   out.get("stderr", ""), series, started, launched,
                   sorted((tuple(v) for v in seen.values()), key=lambda v: v[1]))


def child_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1", **extra}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


@contextmanager
def quiet_stdout() -> Iterator[None]:
    """pycocotools prints; keep the figures readable."""
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        yield


def rusage_children_maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
