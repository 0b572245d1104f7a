"""Did this machine reproduce the published numbers? Measured runs held against a reference
(:mod:`runner.results.references`: the zoo's catalogue, the public table, a reference CSV, or
another run or sweep): for each measured row the reference row beside it, the COCO stats'
differences in AP points, latency and images/sec as ratios (measured / reference: across
different hardware a ratio to read, not a pass/fail), and a verdict on box AP with a stated
tolerance.

Verdicts (:class:`Verdict`): ``reproduced`` (box AP within the tolerance, on at least as many
images as the reference and the same dataset), ``outside`` (flagged, with the likely causes that
differ between the two sides: input policy, precision, TensorFlow version, dataset subset),
``subset`` (fewer images than the reference scored: labelled, never reproduced), ``other
dataset``, ``failed`` (the measured run), ``failed there`` (the reference row: the public table's
all-zero rows), ``no reference``.

``python -m runner.results.export --compare zoo|public|auto|FILE.csv|RUN_OR_PARENT_ID`` prints the
comparison and writes comparison.md, comparison.csv and comparison.png (``auto``: each run
against the reference of its input policy, the zoo for ``native``, the public table for
``seed``). A sweep's parent run gets the same files and ``compare.*`` summary metrics, each child
its own differences (:func:`log_to_runs`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from runner.results import references
from runner.results.references import KP_COLUMN, MASK_COLUMN, VALUE_COLUMNS, Reference
from runner.results.runs import ExportError, Filters, environment_labels, load_runs
from runner.results.table import COLUMNS, PERCENT_COLUMNS, PRECISION_COLUMN, markdown

#: ``auto``: the reference of each run's input policy.
AUTO = "auto"
REFERENCE_OF_POLICY: dict[str, str] = {"native": "zoo", "seed": "public"}
AP_COLUMNS: tuple[str, ...] = (*COLUMNS[3:15], KP_COLUMN, MASK_COLUMN)
#: Timing columns compared as measured / reference (total time only on equal image counts).
RATIO_COLUMNS: tuple[str, ...] = tuple(c for c in COLUMNS[15:])
SIDE_COLUMN, VERDICT_COLUMN = "Row", "Verdict"
#: MLflow metric of each difference (a child's ``compare.<name>``).
DIFF_METRIC: dict[str, str] = {
    **{c: f"bbox.{s}_diff" for c, s in zip(COLUMNS[3:15], (
        "AP", "AP50", "AP75", "APsmall", "APmedium", "APlarge", "ARmax1", "ARmax10", "ARmax100",
        "ARsmall", "ARmedium", "ARlarge"), strict=True)},
    KP_COLUMN: "keypoints.AP_diff", MASK_COLUMN: "segm.AP_diff",
    "images/sec": "images_per_sec_ratio", "99th_percentile(ms)": "latency_p99_ratio",
    "total_time(s)": "total_time_ratio", "latency_mean(ms)": "latency_mean_ratio",
    "latency_median(ms)": "latency_median_ratio", "latency_min(ms)": "latency_min_ratio",
}
REPRODUCED, OUTSIDE, SUBSET, OTHER_DATASET = "reproduced", "outside", "subset", "other dataset"
FAILED, FAILED_THERE, NO_REFERENCE = "failed", "failed there", "no reference"
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


@dataclass(frozen=True)
class Verdict:
    """A row's verdict: ``status`` (one of the module's constants), the box-AP difference and
    tolerance it was judged by, and the differences between the two sides that may explain it."""

    status: str
    ap_diff: float
    tolerance: float
    causes: tuple[str, ...] = ()
    detail: str = ""

    @property
    def within(self) -> bool:
        return self.status == REPRODUCED

    def text(self) -> str:
        if self.status in (REPRODUCED, OUTSIDE):
            sign = "<=" if abs(self.ap_diff) <= self.tolerance else ">"
            head = (f"{'reproduced' if self.within else 'OUTSIDE'}: |{_points(self.ap_diff)}| "
                    f"{sign} {self.tolerance:g}")
        elif self.status == SUBSET:
            head = f"subset: {self.detail}, not a reproduction"
        elif self.status in (FAILED, FAILED_THERE, OTHER_DATASET):
            head = f"{self.status}: {self.detail}" if self.detail else self.status
        else:
            head = self.status
        return head + (f" (likely: {'; '.join(self.causes)})" if self.causes else "")


@dataclass
class Comparison:
    """The rows of a comparison: ``frame`` has one row per measured run (its values, the
    reference's as ``ref <column>``, the differences as ``diff <column>``, the verdict) and
    ``references`` the reference(s) used, by name."""

    frame: pd.DataFrame
    references: dict[str, Reference]
    measured_header: str
    verdicts: list[Verdict]
    tolerance_override: Mapping[str, float] | float | None = None

    def counts(self) -> dict[str, int]:
        statuses = [v.status for v in self.verdicts]
        return {s: statuses.count(s) for s in dict.fromkeys(statuses)}

    def summary_metrics(self) -> dict[str, float]:
        """The parent run's ``compare.*``: rows, rows within / outside the tolerance, subset,
        failed and without reference, and the largest box-AP difference (points)."""
        counts = self.counts()
        diffs = [abs(v.ap_diff) for v in self.verdicts if not math.isnan(v.ap_diff)]
        out = {"compare.rows": float(len(self.verdicts)),
               "compare.rows_within_tolerance": float(counts.get(REPRODUCED, 0)),
               "compare.rows_outside_tolerance": float(counts.get(OUTSIDE, 0)),
               "compare.rows_subset": float(counts.get(SUBSET, 0)),
               "compare.rows_other_dataset": float(counts.get(OTHER_DATASET, 0)),
               "compare.rows_failed": float(counts.get(FAILED, 0)),
               "compare.rows_failed_there": float(counts.get(FAILED_THERE, 0)),
               "compare.rows_no_reference": float(counts.get(NO_REFERENCE, 0))}
        if diffs:
            out["compare.max_abs_ap_diff"] = max(diffs)
        ratios = self.frame["diff latency_mean(ms)"].dropna()
        if len(ratios):
            out["compare.latency_mean_ratio_median"] = float(ratios.median())
        return out

    def run_metrics(self) -> dict[str, dict[str, float]]:
        """Run id -> its ``compare.*`` differences (points and ratios), ``within_tolerance`` and
        ``subset`` (0/1), for the rows that have a reference figure."""
        out: dict[str, dict[str, float]] = {}
        for (_, row), verdict in zip(self.frame.iterrows(), self.verdicts, strict=True):
            metrics = {f"compare.{DIFF_METRIC[c]}": float(row[f"diff {c}"])
                       for c in DIFF_METRIC if pd.notna(row[f"diff {c}"])}
            if not metrics or not isinstance(row["run_id"], str) or not row["run_id"]:
                continue
            metrics["compare.within_tolerance"] = float(verdict.within)
            metrics["compare.subset"] = float(verdict.status == SUBSET)
            metrics["compare.tolerance"] = verdict.tolerance
            out[row["run_id"]] = metrics
        return out

    def header(self) -> str:
        lines = [f"Measured: {self.measured_header}"]
        for name, ref in self.references.items():
            lines.append(f"Reference {name}: {ref.header()}")
            lines.append(f"  box AP tolerance {ref.tolerance(self.tolerance_override):g} points "
                         f"({ref.input_policy or 'any'} input policy); measured images/sec is "
                         f"{ref.rate_metric}, the reference's definition")
        lines.append("Differences: COCO stats in AP points (measured - reference); latency and "
                     "images/sec as ratios measured / reference (across different hardware a "
                     "ratio to read, not a pass/fail).")
        counts = ", ".join(f"{n} {s}" for s, n in self.counts().items())
        lines.append(f"Verdicts: {counts}")
        return "\n".join(lines)

    def markdown(self) -> str:
        """Three lines per measured row: measured, reference, difference; verdict at the end."""
        rows: list[dict[str, str]] = []
        for (_, row), verdict in zip(self.frame.iterrows(), self.verdicts, strict=True):
            names = {"Model": str(row["display_name"]), "Input": str(row["resolution"]),
                     PRECISION_COLUMN: str(row["precision"])}
            measured = {**names, SIDE_COLUMN: "measured", **_cells(row, "")}
            if row["status"] != "ok":
                measured["AP"] = _cell_text(f"{row['status']}: {row['note']}"[:60])
            ref_name = row["reference"] or "-"
            ref_side = f"{ref_name}" + (f" {row['ref precision']}" if row["ref precision"] else "")
            reference = {"Model": "", "Input": "", PRECISION_COLUMN: "", SIDE_COLUMN: ref_side,
                         **_cells(row, "ref ")}
            if row["ref status"] == "failed":
                reference["AP"] = "failed there"
            diff = {"Model": "", "Input": "", PRECISION_COLUMN: "", SIDE_COLUMN: "difference",
                    VERDICT_COLUMN: _cell_text(verdict.text())}
            for col in (*AP_COLUMNS, *RATIO_COLUMNS):
                value = row[f"diff {col}"]
                if pd.notna(value):
                    diff[col] = _points(value) if col in AP_COLUMNS else f"x{value:.2f}"
            rows += [measured, reference, diff]
        columns = [*self.columns()]
        return markdown(rows, columns, frozenset({"Model", "Input", PRECISION_COLUMN, SIDE_COLUMN,
                                                  VERDICT_COLUMN}))

    def columns(self) -> list[str]:
        extra = [c for c in (KP_COLUMN, MASK_COLUMN)
                 if self.frame[c].notna().any() or self.frame[f"ref {c}"].notna().any()]
        return ["Model", "Input", PRECISION_COLUMN, SIDE_COLUMN, *COLUMNS[3:], *extra,
                VERDICT_COLUMN]

    def csv_frame(self) -> pd.DataFrame:
        frame = self.frame.copy()
        frame["verdict"] = [v.status for v in self.verdicts]
        frame["verdict_text"] = [v.text() for v in self.verdicts]
        frame["tolerance"] = [v.tolerance for v in self.verdicts]
        frame["likely_causes"] = ["; ".join(v.causes) for v in self.verdicts]
        return frame


def _points(value: float) -> str:
    """A signed difference with two decimals; one that rounds to zero reads +0.00, not -0.00."""
    return f"{round(value, 2) + 0.0:+.2f}"


def _cells(row: pd.Series, prefix: str) -> dict[str, str]:
    out = {}
    for col in VALUE_COLUMNS:
        value = row[f"{prefix}{col}"]
        out[col] = "" if pd.isna(value) else f"{value:.2f}"
    return out


def _cell_text(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


# -- matching and verdicts ----------------------------------------------------------------------


def _match(ref: Reference, model: str, resolution: str, precision: str) -> pd.Series | None:
    """The reference row of (model, resolution): the same precision, else the reference's
    "any" precision, else Native FP32, else its only row."""
    rows = ref.rows[(ref.rows["model"] == model) & (ref.rows["resolution"] == resolution)]
    if rows.empty:
        return None
    for wanted in (precision, "", "Native FP32"):
        same = rows[rows["precision"] == wanted]
        if not same.empty:
            return same.iloc[-1]
    return rows.iloc[-1] if len(rows) == 1 else None


def _tf_minor(version: Any) -> str | None:
    match = re.match(r"(\d+)\.(\d+)", str(version)) if isinstance(version, str) else None
    return f"{match.group(1)}.{match.group(2)}" if match else None


def verdict(row: pd.Series, ref: Reference | None, ref_row: pd.Series | None,
            tolerance: Mapping[str, float] | float | None = None) -> Verdict:
    """The verdict of one measured row against its reference row (see the module's doc)."""
    if ref is None or ref_row is None:
        return Verdict(NO_REFERENCE, math.nan, math.nan)
    tol = ref.tolerance(tolerance)
    if row["status"] != "ok":
        return Verdict(FAILED, math.nan, tol, detail=_first_line(row["note"]))
    if ref_row["status"] == "failed":
        return Verdict(FAILED_THERE, math.nan, tol, detail=_first_line(ref_row["note"]))
    ap, ref_ap = row["AP"], ref_row["AP"]
    if pd.isna(ap) or pd.isna(ref_ap):
        return Verdict(NO_REFERENCE, math.nan, tol, detail="no box AP on one side")
    diff = float(ap - ref_ap)
    causes = []
    ref_policy = ref.input_policy if ref.name in references.SHIPPED else _text(
        ref_row.get("input_policy")) or ref.input_policy
    if ref_policy and row["input_policy"] and row["input_policy"] != ref_policy:
        causes.append(f"input policy {row['input_policy']} vs {ref_policy}")
    ref_precision = ref_row["precision"] or ref.meta.get("precision", "")
    if row["precision"] and ref_precision and row["precision"] != ref_precision:
        causes.append(f"precision {row['precision']} vs {ref_precision}")
    ref_tf = _text(ref_row.get("tensorflow")) or ref.meta.get("tensorflow")
    if _tf_minor(row["tensorflow"]) and _tf_minor(ref_tf) and (
            _tf_minor(row["tensorflow"]) != _tf_minor(ref_tf)):
        causes.append(f"TensorFlow {row['tensorflow']} vs {ref_tf}")
    ref_images = ref_row.get("images") if pd.notna(ref_row.get("images", math.nan)) else None
    ref_images = ref_images if ref_images is not None else ref.images
    ref_dataset = _text(ref_row.get("dataset")) or ref.meta.get("dataset")
    if ref_dataset and isinstance(row["dataset"], str) and row["dataset"] != ref_dataset:
        return Verdict(OTHER_DATASET, diff, tol, tuple(causes),
                       f"{row['dataset']} vs {ref_dataset}")
    if ref_images and pd.notna(row["images"]) and row["images"] < ref_images:
        detail = f"{int(row['images'])} of {int(ref_images)} images (dataset.num_images)"
        return Verdict(SUBSET, diff, tol, tuple(causes), detail)
    if abs(diff) <= tol + 1e-9:
        return Verdict(REPRODUCED, diff, tol, ())
    return Verdict(OUTSIDE, diff, tol,
                   tuple(causes) or ("no difference known here: check the archive, the "
                                     "dataset files and the evaluation",))


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _first_line(text: Any) -> str:
    return text.strip().splitlines()[0][:200] if isinstance(text, str) and text.strip() else ""


def compare(measured: pd.DataFrame, reference: Reference | str,
            tolerance: Mapping[str, float] | float | None = None) -> Comparison:
    """Compare runs (as from ``load_runs``) with a reference, or with ``auto`` (each run with
    the shipped reference of its input policy)."""
    refs: dict[str, Reference] = {}
    if isinstance(reference, Reference):
        refs[reference.name] = reference
    elif reference == AUTO:
        for policy in dict.fromkeys(p for p in measured.get("input_policy", []) if p):
            if policy in REFERENCE_OF_POLICY:
                name = REFERENCE_OF_POLICY[policy]
                refs[name] = references.load(name)
    else:
        loaded = references.load(reference)
        refs[loaded.name] = loaded
    rows = references.run_rows(measured)
    records, verdicts = [], []
    for _, row in rows.iterrows():
        ref = _reference_of(row, refs, reference)
        if ref is not None:
            row = row.copy()
            row["images/sec"] = row[f"{references.RATE_PREFIX}{ref.rate_metric}"]
        ref_row = None if ref is None else _match(ref, row["model"], row["resolution"],
                                                  row["precision"])
        records.append(_record(row, ref if ref_row is not None else None, ref_row))
        verdicts.append(verdict(row, ref, ref_row, tolerance))
    frame = pd.DataFrame(records)
    labels = environment_labels(measured) if "env_key" in measured else {}
    header = "; ".join(labels.values()) or "unknown environment"
    return Comparison(frame, refs, header, verdicts, tolerance)


def _reference_of(row: pd.Series, refs: Mapping[str, Reference],
                  requested: Reference | str) -> Reference | None:
    if requested != AUTO:
        return next(iter(refs.values()))
    name = REFERENCE_OF_POLICY.get(str(row["input_policy"]))
    return refs.get(name) if name else None


def _record(row: pd.Series, ref: Reference | None, ref_row: pd.Series | None) -> dict[str, Any]:
    rec: dict[str, Any] = {k: row[k] for k in (
        "run_id", "model", "resolution", "display_name", "precision", "status", "note",
        "input_policy", "dataset", "images", "tensorflow", "env_key", "gpu_name")}
    rec["reference"] = ref.name if ref is not None else ""
    rec["ref precision"] = "" if ref_row is None else (ref_row["precision"]
                                                      or (ref.meta.get("precision", "")
                                                          if ref is not None else ""))
    rec["ref status"] = "" if ref_row is None else ref_row["status"]
    rec["ref run_id"] = "" if ref_row is None else ref_row["run_id"]
    same_images = (ref_row is not None and pd.notna(row["images"])
                   and row["images"] == (ref_row.get("images")
                                         if pd.notna(ref_row.get("images", math.nan))
                                         else (ref.images if ref is not None else None)))
    for col in VALUE_COLUMNS:
        mine = row[col]
        theirs = math.nan if ref_row is None else ref_row[col]
        rec[col] = mine
        rec[f"ref {col}"] = theirs
        if pd.isna(mine) or pd.isna(theirs):
            rec[f"diff {col}"] = math.nan
        elif col in PERCENT_COLUMNS or col in (KP_COLUMN, MASK_COLUMN):
            rec[f"diff {col}"] = float(mine - theirs)
        elif col == "total_time(s)" and not same_images:
            rec[f"diff {col}"] = math.nan  # sums over different image counts: no ratio
        else:
            rec[f"diff {col}"] = float(mine / theirs) if theirs > 0 else math.nan
    return rec


# -- entry points -------------------------------------------------------------------------------


def resolve(spec: str, uri: str | None) -> Reference | str:
    """``--compare`` value -> a shipped name, ``auto``, a file's Reference or another run or
    sweep of the store; ExportError listing the choices otherwise."""
    if spec in references.SHIPPED or spec == AUTO:
        return spec
    path = Path(spec)
    if path.suffix == ".csv" or path.is_file():
        return references.read_file(path)
    if _RUN_ID.match(spec):
        children = load_runs(uri, Filters(parent=spec))
        if not children.empty:
            return references.from_runs(children, f"sweep {spec[:8]}")
        run = load_runs(uri, Filters(run_ids=(spec,)))
        if not run.empty:
            return references.from_runs(run, f"run {spec[:8]}")
        raise ExportError(f"--compare {spec}: no benchmark run and no sweep with that id in the "
                          "tracking store")
    raise ExportError(f"--compare {spec!r} is not valid; choices: "
                      f"{', '.join([*references.SHIPPED, AUTO])}, a reference .csv file, or a run "
                      "or sweep parent run id (32 hex digits)")


def parse_tolerance(text: str | None) -> dict[str, float] | float | None:
    """``--tolerance 0.5`` (every reference) or ``native=0.3,seed=0.2`` (by input policy)."""
    if not text:
        return None
    try:
        if "=" not in text:
            value = float(text)
            if value < 0:
                raise ValueError
            return value
        out = {}
        for item in text.split(","):
            key, _, number = item.partition("=")
            out[key.strip()] = float(number)
            if out[key.strip()] < 0:
                raise ValueError
        return out
    except ValueError:
        raise ExportError(f"--tolerance {text!r} is not valid; give AP points >= 0, e.g. 0.3, "
                          "or per input policy, e.g. native=0.3,seed=0.2") from None


def write(comparison: Comparison, out_dir: str | Path) -> list[Path]:
    """comparison.md (header and table), comparison.csv and comparison.png into ``out_dir``."""
    from runner.results import compare_plot

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md = out / "comparison.md"
    md.write_text(comparison.header() + "\n\n" + comparison.markdown() + "\n")
    csv = out / "comparison.csv"
    comparison.csv_frame().to_csv(csv, index=False)
    written = [md, csv]
    picture = compare_plot.plot(comparison, out / "comparison.png")
    if picture is not None:
        written.append(picture)
    return written


def write_auto(df: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    """What ``make table`` and a sweep's parent add: the comparison with each run's published
    reference, when at least one run has one (none written otherwise)."""
    comparison = compare(df, AUTO)
    if not comparison.references or all(v.status == NO_REFERENCE for v in comparison.verdicts):
        return []
    return write(comparison, out_dir)


def log_to_runs(uri: str | None, parent_run_id: str, children: pd.DataFrame,
                reference: Reference | str = AUTO, out_dir: str | Path | None = None) -> None:
    """The sweep's parent gets ``compare.*`` summary metrics and comparison.md/.csv/.png, each
    child its own differences as metrics; nothing when no child has a reference row."""
    import tempfile

    from mlflow.entities import Metric

    from runner import tracking

    comparison = compare(children, reference)
    if all(v.status == NO_REFERENCE for v in comparison.verdicts):
        return
    client = tracking.client(uri)
    now = int(pd.Timestamp.now(tz="UTC").timestamp() * 1000)

    def batch(run_id: str, metrics: Mapping[str, float]) -> None:
        items = [Metric(k, v, now, 0) for k, v in metrics.items()]
        for start in range(0, len(items), 100):
            client.log_batch(run_id, metrics=items[start:start + 100])

    for run_id, metrics in comparison.run_metrics().items():
        batch(run_id, metrics)
    batch(parent_run_id, comparison.summary_metrics())
    with tempfile.TemporaryDirectory(prefix="detbench-compare-") as tmp:
        for path in write(comparison, out_dir or tmp):
            client.log_artifact(parent_run_id, str(path))


def main(df: pd.DataFrame, reference: Reference | str, out_dir: str | Path,
         tolerance: Mapping[str, float] | float | None = None) -> list[Path]:
    """``python -m runner.results.export --compare REF`` (``reference`` from :func:`resolve`): the
    measured runs, those of a reference run or sweep left out, against it; prints the header and
    the table, returns the files written."""
    if isinstance(reference, Reference):
        ids = set(reference.rows["run_id"]) - {""}
        df = df[~df["run_id"].isin(ids)]
        if df.empty:
            raise ExportError(f"--compare {reference.name}: every selected run is part of the "
                              "reference; select the measured runs with --parent, --model, "
                              "--env-key, ...")
    comparison = compare(df, reference, tolerance)
    paths = write(comparison, out_dir)
    print(paths[0].read_text(), end="")
    return paths
