"""Sanity checks of a model's outputs: a wrong output mapping must fail, not finish with AP 0.

Two moments, neither of them between timed calls:

- **before timing** the first ``FIRST_CALLS`` images are run (untimed) and their outputs judged
  against the dataset: boxes inside the image in the configured frame, not inverted, not all
  below a pixel; classes among the dataset's category ids after the offset / map; scores in
  [0, 1]; ``num_detections`` not negative; and whether the confident detections overlap the
  ground truth at all. A verdict that makes evaluation meaningless raises
  :class:`OutputCheckError` naming the ``model.*`` settings that would fix it: every other plausible
  reading of the same outputs (box formats, frames, class offsets / maps, scores and classes
  swapped) is tried and the one that fits the ground truth best is proposed.
- **after timing** every call's detections were tallied as they were read (counts only, in the
  deferred output handling after each chunk); the same rules judge the whole run. Marginal
  findings (a few boxes slightly outside the image, a few inverted boxes, a few unknown classes)
  are counted, printed, logged as ``checks.*`` metrics and the tag ``detbench.output_checks``.

Measured cost (benchmarks/output_checks_cost.py; 100 rows per call, 2 cores at load average
~12): reading a call 0.11-0.24 ms, reading + tally 0.73 ms, paid after the chunk's timed calls;
``examine`` of the first 8 images with its 96 alternative readings 1.1-1.8 s, once, before timing.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from runner import jobdir, signatures
from runner.detections import Detections, Frame

FIRST_CALLS = 8  # images run and judged before timing
SLIGHT = 0.01  # a box edge beyond the image by more than 1% of its size counts as outside
FAR = 0.5  # ... by more than half the image: such boxes cannot be in this frame
CONFIDENT = 0.5  # score of the detections compared with the ground truth before timing
FILE = jobdir.OUTPUT_CHECKS


class OutputCheckError(ValueError):
    """The outputs, read as configured, make evaluation meaningless."""


@dataclass
class Tally:
    """Counts over the calls read so far (cheap: a few vectorized comparisons per call)."""

    calls: int = 0
    rows: int = 0
    detections: int = 0
    padding: int = 0
    nonfinite: int = 0
    negative_num: int = 0
    bad_scores: int = 0
    far_outside: int = 0
    outside: int = 0
    inverted: int = 0
    tiny: int = 0
    unknown_class: int = 0

    def add(self, parsed: signatures.Parsed, frame: Frame, categories: frozenset[int]) -> None:
        det, b = parsed.detections, parsed.pixel_boxes
        self.calls += 1
        self.rows += parsed.rows
        self.padding += parsed.padding
        self.detections += len(det)
        if parsed.num_detections is not None and parsed.num_detections < 0:
            self.negative_num += 1
        if not len(det):
            return
        finite = np.isfinite(b).all(axis=1)
        self.nonfinite += int((~finite).sum())
        s = det.scores
        self.bad_scores += int(((s < 0) | (s > 1 + 1e-6) | ~np.isfinite(s)).sum())
        h, w = frame.original
        size = np.array([h, w, h, w], np.float64)
        with np.errstate(invalid="ignore"):
            beyond = np.maximum(-b, b - size) / size  # how far each edge is outside
            worst = np.where(finite, beyond.max(axis=1), np.inf)
            self.far_outside += int((worst > FAR).sum())
            self.outside += int(((worst > SLIGHT) & (worst <= FAR)).sum())
            height, width = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
            self.inverted += int(((height < 0) | (width < 0)).sum())
            self.tiny += int(((np.abs(height) < 1) & (np.abs(width) < 1)).sum())
        if categories:
            self.unknown_class += int((~np.isin(det.classes, list(categories))).sum())


@dataclass(frozen=True)
class Finding:
    name: str
    count: int
    of: int
    fatal: bool
    message: str
    settings: tuple[str, ...] = ()


def judge(t: Tally) -> list[Finding]:
    """Rules over a tally: fatal where evaluation would be meaningless, else marginal."""
    n = t.detections
    out: list[Finding] = []

    def add(name: str, count: int, fatal: bool, message: str, *settings: str) -> None:
        if count:
            out.append(Finding(name, count, n, fatal, message, settings))

    add("negative_num_detections", t.negative_num, True,
        f"num_detections was negative in {t.negative_num} of {t.calls} calls",
        "model.output_keys.num_detections")
    add("nonfinite_boxes", t.nonfinite, True,
        f"{t.nonfinite} of {n} boxes have infinite or NaN coordinates (they would be clipped to "
        "the image's edges and change AP)")
    add("scores_outside_0_1", t.bad_scores, True,
        f"{t.bad_scores} of {n} scores are outside [0, 1] (logits, or scores and classes "
        "swapped)", "model.output_keys.scores", "model.output_keys.classes")
    add("boxes_far_outside_image", t.far_outside, t.far_outside >= 0.5 * n,
        f"{t.far_outside} of {n} boxes extend beyond the image by more than half its size",
        "model.box_format", "model.box_frame")
    add("boxes_outside_image", t.outside, False,
        f"{t.outside} of {n} boxes extend slightly beyond the image (clipped in evaluation)")
    add("boxes_inverted", t.inverted, t.inverted >= 0.25 * n,
        f"{t.inverted} of {n} boxes are inverted (max < min; they count as zero-size boxes)",
        "model.box_format")
    add("boxes_below_one_pixel", t.tiny, n >= 5 and t.tiny >= 0.9 * n,
        f"{t.tiny} of {n} boxes are smaller than one pixel of the image",
        "model.box_format")
    add("unknown_classes", t.unknown_class, t.unknown_class >= 0.9 * n,
        f"{t.unknown_class} of {n} detections have a class that is not a category id of the "
        "dataset", "model.class_offset", "model.class_map")
    return out


@dataclass(frozen=True)
class Truth:
    """Ground truth of one image: category ids and normalized (y0, x0, y1, x1) boxes."""

    classes: np.ndarray
    boxes: np.ndarray


def load_truth(annotations: Path, image_ids: Iterable[int]) -> tuple[frozenset[int],
                                                                     dict[int, Truth]]:
    """The dataset's category ids and the non-crowd boxes of ``image_ids``."""
    doc = json.loads(Path(annotations).read_text())
    wanted = {int(i) for i in image_ids}
    sizes = {int(i["id"]): (float(i["height"]), float(i["width"])) for i in doc["images"]
             if int(i["id"]) in wanted}
    rows: dict[int, list[tuple[int, list[float]]]] = {i: [] for i in wanted}
    for ann in doc["annotations"]:
        image_id = int(ann["image_id"])
        if image_id in wanted and not ann.get("iscrowd", 0) and image_id in sizes:
            h, w = sizes[image_id]
            x, y, bw, bh = (float(v) for v in ann["bbox"])
            rows[image_id].append((int(ann["category_id"]),
                                   [y / h, x / w, (y + bh) / h, (x + bw) / w]))
    truth = {i: Truth(np.array([c for c, _ in r], np.int64),
                      np.array([b for _, b in r], np.float64).reshape(-1, 4))
             for i, r in rows.items()}
    return frozenset(int(c["id"]) for c in doc["categories"]), truth


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of normalized yxyx boxes [N, 4] x [M, 4]."""
    y0 = np.maximum(a[:, None, 0], b[None, :, 0])
    x0 = np.maximum(a[:, None, 1], b[None, :, 1])
    y1 = np.minimum(a[:, None, 2], b[None, :, 2])
    x1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(y1 - y0, 0, None) * np.clip(x1 - x0, 0, None)

    def area(v: np.ndarray) -> np.ndarray:
        return np.clip(v[:, 2] - v[:, 0], 0, None) * np.clip(v[:, 3] - v[:, 1], 0, None)

    union = area(a)[:, None] + area(b)[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / union, 0.0)


@dataclass(frozen=True)
class Agreement:
    """Confident detections of the first images and how many overlap the ground truth (IoU >=
    0.5), of any class and of the same class."""

    confident: int
    any_class: int
    same_class: int
    iou_sum: float = 0.0  # sum over confident detections of the best same-class IoU

    @property
    def mean_iou(self) -> float:
        return self.iou_sum / self.confident if self.confident else 0.0

    @property
    def key(self) -> tuple[int, float, int]:
        return self.same_class, round(self.iou_sum, 6), self.any_class


def agreement(dets: Sequence[Detections], truths: Sequence[Truth | None]) -> Agreement:
    confident = any_class = same_class = 0
    iou_sum = 0.0
    for det, truth in zip(dets, truths, strict=True):
        if truth is None:
            continue
        keep = np.isfinite(det.boxes).all(axis=1) & (det.scores >= CONFIDENT)
        boxes, classes = np.clip(det.boxes[keep], -1, 2), det.classes[keep]
        confident += len(boxes)
        if not len(boxes) or not len(truth.boxes):
            continue
        overlap = _iou(boxes.astype(np.float64), truth.boxes)
        same = classes[:, None] == truth.classes[None, :]
        iou = overlap >= 0.5
        any_class += int(iou.any(axis=1).sum())
        same_class += int((iou & same).any(axis=1).sum())
        iou_sum += float(np.where(same, overlap, 0.0).max(axis=1).sum())
    return Agreement(confident, any_class, same_class, iou_sum)


@dataclass(frozen=True)
class Verdict:
    """What the first calls showed: findings, agreement with the ground truth and, where a
    different reading fits better, the overrides that give it."""

    findings: tuple[Finding, ...]
    agreement: Agreement
    suggestion: tuple[str, ...] = ()
    suggestion_agreement: Agreement | None = None

    @property
    def nothing_matches(self) -> bool:
        """Enough confident detections, and almost none overlaps a ground-truth box of its
        class: the AP this run would report is meaningless."""
        a = self.agreement
        return a.confident >= 5 and a.same_class <= 0.05 * a.confident

    @property
    def fatal(self) -> bool:
        """A rule that makes evaluation meaningless, or a reading of the outputs other than the
        configured one that fits the ground truth where the configured one does not. Nothing
        matching alone is only a warning: a weak or untrained model is not a wrong mapping."""
        return any(f.fatal for f in self.findings) or bool(self.suggestion)

    def message(self) -> str:
        lines = [f.message for f in self.findings if f.fatal]
        a = self.agreement
        if self.nothing_matches:
            lines.append(f"{a.same_class} of {a.confident} confident detections (score >= "
                         f"{CONFIDENT}) of the first images overlap a ground-truth box of their "
                         f"class (IoU >= 0.5; {a.any_class} of any class)")
        if self.suggestion and self.suggestion_agreement is not None:
            b = self.suggestion_agreement
            lines.append(f"{a.same_class} of {a.confident} confident detections of the first "
                         f"images overlap their ground truth (mean IoU {a.mean_iou:.2f}); read "
                         f"as {' '.join(self.suggestion)} the same outputs give "
                         f"{b.same_class} of {b.confident} (mean IoU {b.mean_iou:.2f}): set "
                         "those")
        else:
            named = sorted({s for f in self.findings if f.fatal for s in f.settings})
            hint = ", ".join(named) if named else (
                "model.input_range, model.input_mean/input_std, model.channel_order, "
                "model.resize, model.box_format, model.box_frame, model.class_offset")
            lines.append(f"no other reading of the outputs fits the ground truth; check {hint}"
                         " (python -m runner.inspect MODEL_DIR shows the outputs)")
        return "model outputs fail the sanity check: " + "; ".join(lines) + (
            " (model.output_checks=warn runs anyway)")


def _score(findings: Sequence[Finding], agree: Agreement) -> tuple[int, int, float, int]:
    return (-sum(f.fatal for f in findings), *agree.key)


#: a reading of the outputs other than the configured one is proposed (and the job failed) when
#: its confident detections overlap their ground truth by this much more IoU on average
BETTER_IOU = 0.15


def examine(reader: signatures.OutputReader, outputs: Sequence[Mapping[str, np.ndarray]],
            frames: Sequence[Frame], truths: Sequence[Truth | None],
            categories: frozenset[int]) -> Verdict:
    """Judge the first calls' outputs as configured and, when that fails, every other plausible
    reading of them (the fix to propose)."""

    def evaluate(read: Callable[[Mapping[str, np.ndarray], Frame], signatures.Parsed]
                 ) -> tuple[list[Finding], Agreement]:
        tally, dets = Tally(), []
        for out, frame in zip(outputs, frames, strict=True):
            parsed = read(out, frame)
            tally.add(parsed, frame, categories)
            dets.append(parsed.detections)
        return judge(tally), agreement(dets, truths)

    findings, agree = evaluate(reader.parse)
    verdict = Verdict(tuple(findings), agree)
    if not outputs or not (verdict.fatal or agree.confident):
        return verdict
    current = reader.spec_for(outputs[0])
    best: tuple[tuple[int, int, float, int], signatures.OutputSpec, Agreement] | None = None
    for spec in signatures.variants(current, outputs[0]):
        try:
            alt_findings, alt = evaluate(signatures.OutputReader("custom", spec).parse)
        except (signatures.OutputError, ValueError, IndexError):
            continue
        score = _score(alt_findings, alt)
        if best is None or score > best[0]:
            best = (score, spec, alt)
    if best is not None and best[0] > _score(findings, agree) and best[0][0] == 0 and (
            best[2].same_class >= 0.5 * max(1, best[2].confident)) and (
            verdict.fatal or verdict.nothing_matches
            or best[2].mean_iou >= agree.mean_iou + BETTER_IOU):
        suggestion = signatures.overrides(best[1], reader.name, reader.spec)
        return Verdict(tuple(findings), agree, tuple(suggestion), best[2])
    return verdict


@dataclass
class OutputGuard:
    """The worker's hook: wraps the output adapter, judges the first calls before timing, tallies
    every call and judges the run after timing."""

    reader: signatures.OutputReader
    categories: frozenset[int]
    truth: Mapping[int, Truth]
    mode: str = "fail"  # fail | warn (model.output_checks)
    tally: Tally = field(default_factory=Tally)
    first: Verdict | None = None

    @classmethod
    def for_job(cls, reader: signatures.OutputReader, annotations: Path,
                first_ids: Iterable[int], mode: str) -> OutputGuard:
        categories, truth = load_truth(annotations, first_ids)
        return cls(reader, categories, truth, mode)

    def __call__(self, outputs: Mapping[str, np.ndarray], frame: Frame | tuple[int, int]
                 ) -> Detections:
        frame = frame if isinstance(frame, Frame) else Frame.identity(*frame)
        parsed = self.reader.parse(outputs, frame)
        self.tally.add(parsed, frame, self.categories)
        return parsed.detections

    def before_timing(self, predict: Callable[[Any], Mapping[str, np.ndarray]],
                      prepared: Sequence[Any],
                      reprepare: Callable[[Any], Sequence[Any]] | None = None,
                      input_spec: Any = None) -> Verdict:
        """Run and judge the first images (``data.PreparedImage``s); raises on a fatal verdict.
        With ``reprepare`` (InputSpec -> prepared images) and the job's ``input_spec``, a float
        model whose outputs match nothing is also tried with other input conventions."""
        outputs = [predict(p.tensor) for p in prepared]
        frames = [p.frame or Frame.identity(*p.tensor.shape[1:3]) for p in prepared]
        truths = [self.truth.get(p.record.image_id) for p in prepared]
        for out, frame in zip(outputs, frames, strict=True):
            self.reader.parse(out, frame)  # a broken contract raises its own error first
        self.first = examine(self.reader, outputs, frames, truths, self.categories)
        if (self.first.nothing_matches and not self.first.suggestion and reprepare is not None
                and input_spec is not None and input_spec.dtype != "uint8"):
            fix = _input_fix(self.reader, predict, reprepare, input_spec, truths,
                             self.first.agreement)
            if fix is not None:
                self.first = Verdict(self.first.findings, self.first.agreement, *fix)
        if self.first.fatal:
            self._fail_or_warn(self.first.message())
        elif self.first.nothing_matches:
            print(f"WARNING: {self.first.message()}", file=sys.stderr)
        return self.first

    def findings(self) -> list[Finding]:
        found = judge(self.tally)
        if self.first is not None and self.first.nothing_matches:
            a = self.first.agreement
            found.append(Finding(
                "first_images_match_no_ground_truth", a.confident - a.same_class, a.confident,
                False, f"{a.same_class} of {a.confident} confident detections of the first "
                "images overlap a ground-truth box of their class (a weak model, or a wrong "
                "input or output mapping)"))
        return found

    def after_timing(self, job_dir: Path | None = None) -> list[Finding]:
        """Judge every call; write ``output_checks.json``; raise if the run is meaningless."""
        findings = self.findings()
        if job_dir is not None:
            jobdir.write_json(job_dir / FILE, {
                "tally": asdict(self.tally), "findings": [asdict(f) for f in findings],
                "first_calls": asdict(self.first) if self.first else None,
                "summary": summary(findings)})
        for f in findings:
            if not f.fatal:
                print(f"WARNING: output check: {f.message}", file=sys.stderr)
        fatal = [f for f in findings if f.fatal]
        if fatal:
            named = sorted({s for f in fatal for s in f.settings})
            self._fail_or_warn("model outputs fail the sanity check over the timed calls: "
                               + "; ".join(f.message for f in fatal)
                               + (f"; check {', '.join(named)}" if named else ""))
        return findings

    def metrics(self) -> dict[str, float]:
        t = self.tally
        return {f"checks.{name}": float(getattr(t, name)) for name in (
            "detections", "padding", "outside", "far_outside", "inverted", "unknown_class",
            "nonfinite", "bad_scores", "negative_num")}

    def _fail_or_warn(self, message: str) -> None:
        if self.mode == "warn":
            print(f"WARNING: {message}", file=sys.stderr)
            return
        raise OutputCheckError(message)


#: input conventions tried for a float model whose outputs match nothing: value ranges, and the
#: ImageNet mean / std of torchvision and Keras (in [0, 1] units; scaled to the range tried)
INPUT_RANGES = ((0.0, 255.0), (0.0, 1.0), (-1.0, 1.0))
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
INPUT_SEARCH_IMAGES = 4


def _input_fix(reader: signatures.OutputReader, predict: Callable[[Any], Mapping[str, Any]],
               reprepare: Callable[[Any], Sequence[Any]], spec: Any, truths: Sequence[Any],
               current: Agreement) -> tuple[tuple[str, ...], Agreement] | None:
    """The input convention (value range, channel order, the configured normalization, none, or
    ImageNet's) under which the model's outputs fit the ground truth, as overrides. Runs at most
    18 x INPUT_SEARCH_IMAGES untimed calls, only when the configured inputs match nothing."""
    from dataclasses import replace

    from runner.config import CHANNEL_ORDERS

    truths = truths[:INPUT_SEARCH_IMAGES]
    best: tuple[tuple[int, float, int], tuple[str, ...], Agreement] | None = None
    for low, high in INPUT_RANGES:
        unit = 1.0 if high <= 1 else 255.0
        imagenet = None if low < 0 else (tuple(round(v * unit, 4) for v in IMAGENET[0]),
                                         tuple(round(v * unit, 4) for v in IMAGENET[1]))
        for order in CHANNEL_ORDERS:
            for mean, std in {(spec.mean, spec.std), (None, None), imagenet or (None, None)}:
                candidate = replace(spec, value_range=(low, high), channel_order=order,
                                    mean=mean, std=std)
                if candidate == spec:
                    continue
                prepared = list(reprepare(candidate))[:INPUT_SEARCH_IMAGES]
                dets = [reader.parse(predict(p.tensor), p.frame).detections for p in prepared]
                agree = agreement(dets, truths)
                if best is None or agree.key > best[0]:
                    sets = [f"model.input_range=[{low:g},{high:g}]",
                            f"model.channel_order={order}"]
                    for name, value in (("input_mean", mean), ("input_std", std)):
                        if value != getattr(spec, name[6:]):
                            listed = "null" if value is None else (
                                f"[{','.join(f'{v:g}' for v in value)}]")
                            sets.append(f"model.{name}={listed}")
                    best = (agree.key, tuple(sets), agree)
    if best is None or best[2].confident < 3 or (
            best[2].same_class < 0.5 * best[2].confident) or best[0] <= current.key:
        return None
    return best[1], best[2]


def summary(findings: Sequence[Finding]) -> str:
    """One line for the tag ``detbench.output_checks``: ok, or what was counted."""
    if not findings:
        return "ok"
    return "; ".join(f"{'FAIL' if f.fatal else 'marginal'}: {f.message}" for f in findings)
