"""Export benchmark runs from any MLflow tracking store: the public table and its figures.

``python -m runner.results.export [filters] [--out results/]`` writes ``table.md`` (exactly
the public table's columns, numbers formatted like it; failed runs as rows that say so, never
zeros),
``table.csv`` (the same data with raw numbers, one row per run, plus run id / status /
environment columns), ``latency_mean.png`` (the public table's figure), ``ap_vs_latency.png``
(Pareto front marked) and ``throughput.png``; ``--timeline RUN_ID`` plots one run's GPU (or CPU)
utilization and power over time instead. Runs from different environments (tag ``env.key``) are
refused unless ``--mix-environments``, which labels each row with its environment.

Data flow: ``runner.results.runs.load_runs`` (MLflow -> DataFrame) -> :func:`build_report`
(the table's rows) -> :func:`write_report` (table.md, table.csv and the figures of
``runner.results.plots``).
"""

from __future__ import annotations

import argparse
import io
import logging
import math
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from runner import backends, tracking
from runner.results import plots, table
from runner.results.runs import METRIC_PREFIX, ExportError, Filters, check_environments, load_runs
from runner.results.table import CI_COLUMN, CI_HIGH, CI_LOW, ENV_COLUMN
from runner.tracking import resolve_uri

log = logging.getLogger(__name__)

#: Columns of table.csv after the table's own: which run, how it ended, where it ran.
META_COLUMNS: tuple[str, ...] = (
    "status", "error", "run_id", "run_name", "experiment", "start_time", "parent_run_id",
    "model", "resolution", "precision", "dataset", "env_key", "gpu_name", "tensorflow",
    "cpu_model", "input_policy", "variant", "identity", "stability", "n", "run_ids",
)
#: Markdown column naming each row's measuring method (``benchmark.input_policy``: ``native``,
#: or ``seed`` = the public script's timing and box conversion), shown when any row is not native
METHOD_COLUMN = "Method"
#: Columns table.md gains when they say something: the swept settings of a row, and for rows
#: that average repeated runs of one config their count and the range of their images/sec.
VARIANT_COLUMN = "Variant"
N_COLUMN = "n"
RANGE_COLUMN = "images/sec range"
ERROR_CHARS = 60  # a failed row's AP cell: "failed: " + at most this many characters
# "JobFailed: OSError: ..." -> "OSError: ...": wrappers in front of the real exception's name
_WRAPPERS = re.compile(r"^(?:[A-Za-z_][\w.]*: )+(?=[A-Za-z_][\w.]*(?:Error|Exception): )")


# -- the table ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Extra:
    """An optional column: ``metric`` x ``scale`` shown with ``digits`` decimals."""

    column: str
    metric: str | None
    scale: float = 1.0
    digits: int = 2
    only_if_logged: bool = False  # omitted when no selected run has the metric


EXTRAS: dict[str, Extra] = {
    "p90": Extra("90th_percentile(ms)", "latency_p90_ms"),
    "p95": Extra("95th_percentile(ms)", "latency_p95_ms"),
    "keypoints": Extra("AP(keypoints)", "keypoints.AP", 100.0, only_if_logged=True),
    "masks": Extra("AP(masks)", "segm.AP", 100.0, only_if_logged=True),
    "gpu": Extra("gpu_util_mean(%)", "gpu_util_mean"),
    "energy": Extra("energy_per_image(J)", "gpu_energy_per_image_j", digits=3),
    "ci": Extra(CI_COLUMN, None),
}


def parse_extra(values: str | Sequence[str] | None) -> tuple[str, ...]:
    """``"p90,ci"`` or ``["p90", "ci"]`` (``all``: every extra) -> validated names, in order."""
    if not values:
        return ()
    items = [values] if isinstance(values, str) else list(values)
    names = [n.strip() for item in items for n in item.split(",") if n.strip()]
    if "all" in names:
        return tuple(EXTRAS)
    unknown = [n for n in names if n not in EXTRAS]
    if unknown:
        raise ExportError(f"unknown extra column(s) {', '.join(unknown)}; valid: "
                          f"{', '.join(EXTRAS)}, all")
    return tuple(dict.fromkeys(names))


def order_runs(df: pd.DataFrame) -> pd.DataFrame:
    """Zoo models in the public table's order (then its precision order), then the other
    runs by start time."""
    rank = _zoo_rank()
    zoo = [rank.get((m, r), rank.get((str(d).lower(), r), math.inf))
           for m, d, r in zip(df["model"], df["model_display"], df["resolution"], strict=True)]
    prec = [backends.table_rank(p) for p in df["precision_display"]]  # runtime, then precision
    keys = pd.DataFrame({"zoo": zoo, "prec": prec, "start": df["start_time"].to_numpy()},
                        index=df.index)
    keys.loc[keys["zoo"] == math.inf, "prec"] = 0
    order = keys.sort_values(["zoo", "prec", "start"], kind="stable").index
    return df.loc[order].reset_index(drop=True)


def _zoo_rank() -> dict[tuple[str, str], float]:
    """(model key or lower-case display name, resolution) -> row of the public table."""
    try:
        from runner import zoo
    except ImportError:
        return {}
    rank: dict[tuple[str, str], float] = {}
    for i, (key, resolution) in enumerate(zoo.public_table_rows()):
        rank.setdefault((key, resolution), float(i))
        rank.setdefault((zoo.get(key).display_name.lower(), resolution), float(i))
    return rank


def _metrics(run: pd.Series) -> dict[str, float]:
    return {k[len(METRIC_PREFIX):]: float(v) for k, v in run.items()
            if isinstance(k, str) and k.startswith(METRIC_PREFIX) and pd.notna(v)}


def short_error(status: str, error: Any, error_type: Any = None, message: Any = None) -> str:
    """A failed row's AP cell: ``failed: <first line of the error, shortened>``; from the run's
    error type and message (tags error.type / error.message) when it has them, else from the
    ``Type: message`` text of older runs."""
    word = {"FAILED": "failed", "KILLED": "killed"}.get(status, status.lower())
    if isinstance(message, str) and message.strip():
        first = message.strip().splitlines()[0].strip()
        text = f"{error_type}: {first}" if isinstance(error_type, str) and error_type else first
    else:
        text = (error.strip().splitlines()[0].strip() if isinstance(error, str) and error.strip()
                else "")
        text = _WRAPPERS.sub("", text)
    if len(text) > ERROR_CHARS:
        text = text[: ERROR_CHARS - 3].rstrip() + "..."
    return f"{word}: {text}" if text else word


def _cell(text: Any) -> str:
    """Text for a markdown cell: no pipes or line breaks that would split the row."""
    return "" if not isinstance(text, str) else " ".join(text.split()).replace("|", "\\|")


def _extras_in_use(df: pd.DataFrame, extra: Sequence[str]) -> list[str]:
    used = []
    for name in extra:
        spec = EXTRAS[name]
        column = f"{METRIC_PREFIX}{spec.metric}"
        if spec.only_if_logged and (column not in df or df[column].isna().all()):
            log.warning("--extra %s: no selected run has the metric %s; column left out",
                        name, spec.metric)
            continue
        used.append(name)
    return used


def aggregate_repeats(df: pd.DataFrame) -> pd.DataFrame:
    """One row per config: FINISHED runs with the same ``detbench.identity`` (everything that
    changes a measurement) in the same environment become one row whose metrics are their
    means; ``n`` counts them, ``run_ids`` lists them, ``images/sec`` keeps its spread
    (``metrics.images_per_sec_min/_max/_std``) and its 95 % interval becomes the t-interval of
    the mean over the runs. Runs that differ in anything measured are never merged; failed
    runs stay rows of their own."""
    from scipy import stats as sps

    out = df.assign(n=1, run_ids=df["run_id"])
    done = out[(out["status"] == "FINISHED") & out["identity"].notna()]
    keys = done["identity"].astype(str) + "|" + done["env_key"].fillna("").astype(str)
    merged, drop = [], []
    for _, group in done.groupby(keys, sort=False):
        if len(group) < 2:
            continue
        row = group.iloc[0].copy()
        metric_cols = [c for c in group.columns if str(c).startswith(METRIC_PREFIX)]
        row[metric_cols] = group[metric_cols].mean(numeric_only=True)
        ips = group[f"{METRIC_PREFIX}images_per_sec"].astype(float)
        mean, sd, n = float(ips.mean()), float(ips.std(ddof=1)), len(ips)
        half = float(sps.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
        row[f"{METRIC_PREFIX}images_per_sec_ci_low"] = mean - half
        row[f"{METRIC_PREFIX}images_per_sec_ci_high"] = mean + half
        row[f"{METRIC_PREFIX}images_per_sec_min"] = float(ips.min())
        row[f"{METRIC_PREFIX}images_per_sec_max"] = float(ips.max())
        row[f"{METRIC_PREFIX}images_per_sec_std"] = sd
        row["n"], row["run_ids"] = n, ";".join(group["run_id"])
        if (group["stability"] == "unstable").any():
            row["stability"] = "unstable"
        merged.append(row)
        drop.extend(group.index)
    if not merged:
        return out
    return pd.concat([out.drop(index=drop), pd.DataFrame(merged)], ignore_index=True)


@dataclass
class Report:
    """What :func:`build_report` computed: the markdown rows and the raw CSV frame."""

    columns: list[str]
    rows: list[dict[str, str]]
    frame: pd.DataFrame  # table.csv: table columns (raw numbers), extra raw columns, META

    def markdown(self) -> str:
        if self.rows:
            return table.markdown(self.rows, self.columns)
        return table.markdown([{}], self.columns).rsplit("\n", 1)[0]  # the header alone


def build_report(df: pd.DataFrame, extra: str | Sequence[str] = (),
                 mix_environments: bool = False) -> Report:
    """Table rows (formatted) and the CSV frame (raw numbers) of the runs, in table order."""
    labels = check_environments(df, mix_environments)
    runs = order_runs(aggregate_repeats(df))
    used = _extras_in_use(runs, parse_extra(extra))
    ci = _ci_bounds(runs, from_artifacts="ci" in used)
    variants = runs["variant"].fillna("").astype(str)
    repeated = bool((runs["n"] > 1).any())
    columns = [*table.COLUMNS[:3], *([VARIANT_COLUMN] if variants.ne("").any() else []),
               *table.COLUMNS[3:], *(EXTRAS[n].column for n in used),
               *([N_COLUMN, RANGE_COLUMN] if repeated else [])]
    if labels:
        columns.append(ENV_COLUMN)
    policies = {str(p) for p in runs.get("input_policy", pd.Series(dtype=object)).dropna()}
    if policies - {"native"}:
        columns.append(METHOD_COLUMN)
    rows, raws = [], []
    for i, run in runs.iterrows():
        row, raw = _row(run, used, ci[i])
        row[VARIANT_COLUMN], raw[VARIANT_COLUMN] = _cell(variants[i]), variants[i]
        metrics = _metrics(run)
        row[N_COLUMN] = str(int(run["n"]))
        if int(run["n"]) > 1:
            row[RANGE_COLUMN] = (f"{metrics['images_per_sec_min']:.2f}-"
                                 f"{metrics['images_per_sec_max']:.2f}")
        if labels:
            env = labels.get(str(run["env_key"]), "unknown")
            row[ENV_COLUMN], raw[ENV_COLUMN] = _cell(env), env
        if METHOD_COLUMN in columns:
            policy = run.get("input_policy")
            row[METHOD_COLUMN] = _cell(policy if isinstance(policy, str) else "")
        rows.append(row)
        raws.append(raw | _meta(run))
    raw_columns = [name for c in columns  # input_policy, n: META columns
                   if c not in (N_COLUMN, RANGE_COLUMN, METHOD_COLUMN)
                   for name in ((CI_LOW, CI_HIGH) if c == CI_COLUMN else (c,))]
    for name in (VARIANT_COLUMN, CI_LOW, CI_HIGH, "images/sec_min", "images/sec_max",
                 "images/sec_std"):
        if name not in raw_columns:
            raw_columns.append(name)
    frame = pd.DataFrame(raws, columns=[*raw_columns, *META_COLUMNS])
    return Report(columns, rows, frame)


def _row(run: pd.Series, extras: Sequence[str],
         ci: tuple[float, float]) -> tuple[dict[str, str], dict[str, Any]]:
    finished = run["status"] == "FINISHED"
    metrics = _metrics(run) if finished else {}
    names = (_cell(run["model_display"]), _cell(run["resolution"]),
             _cell(run["precision_display"]))
    row = table.row(*names, metrics)
    raw: dict[str, Any] = {"Model": run["model_display"], "Input": run["resolution"],
                           "TF-TRT": run["precision_display"]}
    for col, metric in table.METRIC_OF_COLUMN.items():
        scale = 100.0 if col in table.PERCENT_COLUMNS else 1.0
        value = metrics.get(metric)
        if value is None:
            raw[col] = math.nan
        elif col in table.PERCENT_COLUMNS and value < 0:  # COCOeval's -1
            raw[col] = table.NOT_APPLICABLE
        else:
            raw[col] = value * scale
    if not finished:
        row["AP"] = _cell(short_error(str(run["status"]), run["error"], run.get("error_type"),
                                      run.get("error_message")))
    raw[CI_LOW], raw[CI_HIGH] = ci if finished else (math.nan, math.nan)
    for stat in ("min", "max", "std"):
        raw[f"images/sec_{stat}"] = metrics.get(f"images_per_sec_{stat}", math.nan)
    for name in extras:
        spec = EXTRAS[name]
        if spec.metric is None:  # ci
            ok = finished and not math.isnan(ci[0])
            row[spec.column] = f"{ci[0]:.2f}-{ci[1]:.2f}" if ok else ""
            continue
        value = metrics.get(spec.metric)
        row[spec.column] = "" if value is None else f"{value * spec.scale:.{spec.digits}f}"
        raw[spec.column] = math.nan if value is None else value * spec.scale
    return row, raw


def _meta(run: pd.Series) -> dict[str, Any]:
    meta = {c: run[c] for c in META_COLUMNS}
    start = run["start_time"]
    meta["start_time"] = start.isoformat() if pd.notna(start) else None
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in meta.items()}


def _ci_bounds(runs: pd.DataFrame,
               from_artifacts: bool = True) -> dict[Any, tuple[float, float]]:
    """Index -> 95 % interval of images/sec: the logged metrics images_per_sec_ci_low/high
    (one run: batch means over its timed calls; a row of repeats: t-interval over the runs)
    if any, else (``from_artifacts``) computed from the run's latencies.csv, else NaN."""
    out: dict[Any, tuple[float, float]] = {}
    for i, run in runs.iterrows():
        metrics = _metrics(run)
        if run["status"] != "FINISHED":
            out[i] = (math.nan, math.nan)
        elif "images_per_sec_ci_low" in metrics and "images_per_sec_ci_high" in metrics:
            out[i] = (metrics["images_per_sec_ci_low"], metrics["images_per_sec_ci_high"])
        elif from_artifacts:
            out[i] = _bootstrap_from_artifact(str(run["tracking_uri"]), str(run["run_id"]))
        else:
            out[i] = (math.nan, math.nan)
    return out


def _bootstrap_from_artifact(uri: str, run_id: str) -> tuple[float, float]:
    from runner.stats import throughput_interval

    try:
        latencies = io.BytesIO(tracking.read_artifact(uri, run_id, "latencies.csv"))
        latencies_ms = pd.read_csv(latencies)["latency_ms"].to_numpy(dtype=np.float64)
        return throughput_interval(latencies_ms / 1000.0)
    except Exception as exc:  # noqa: BLE001 - one run's missing file must not stop the export
        log.warning("run %s: no throughput CI (%s: %s)", run_id, type(exc).__name__, exc)
        return math.nan, math.nan


def read_table_csv(path: str | Path) -> pd.DataFrame:
    """table.csv back as written: ids and keys stay text even when they look like numbers."""
    text = ("Model", "Input", "TF-TRT", VARIANT_COLUMN, ENV_COLUMN, *META_COLUMNS)
    dtypes: dict[str, Any] = dict.fromkeys(text, "str") | {"n": "Int64"}
    return pd.read_csv(path, dtype=dtypes, na_values=[table.NOT_APPLICABLE])


def write_report(df: pd.DataFrame, out_dir: str | Path, extra: str | Sequence[str] = (),
                 mix_environments: bool = False) -> list[Path]:
    """Write table.md, table.csv and the plots (those with data) of the runs in ``df`` (as from
    :func:`load_runs`) to ``out_dir``; returns the paths written. Raises MixedEnvironmentsError
    for runs of several environments unless ``mix_environments``."""
    report = build_report(df, extra, mix_environments)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md = out / "table.md"
    md.write_text(report.markdown() + "\n")
    csv = out / "table.csv"
    report.frame.to_csv(csv, index=False)
    written = [md, csv]
    for plot in (plots.plot_latency_mean, plots.plot_ap_vs_latency, plots.plot_throughput):
        path = plot(report.frame, out)
        if path is not None:
            written.append(path)
    from runner.results import compare  # against the published references (issue 16)

    return written + compare.write_auto(df, out)


# -- command line -------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m runner.results.export",
        description="Export detbench runs from MLflow: table.md, table.csv and plots.")
    p.add_argument("--uri", help="tracking URI (default: $MLFLOW_TRACKING_URI, else "
                                 "sqlite:///mlflow.db)")
    p.add_argument("--experiment", action="append", default=[],
                   help="experiment name or id (repeatable; default: all)")
    p.add_argument("--parent", metavar="RUN_ID", help="a sweep's parent run: its children")
    for flag, what in (("model", "detbench.model"), ("precision", "detbench.precision"),
                       ("resolution", "detbench.resolution"), ("env-key", "env.key")):
        p.add_argument(f"--{flag}", action="append", default=[], help=f"tag {what} (repeatable)")
    p.add_argument("--gpu", action="append", default=[],
                   help="part of tag env.gpu_name, any case (repeatable)")
    p.add_argument("--status", action="append", default=[],
                   help="FINISHED, FAILED, KILLED or RUNNING (repeatable)")
    p.add_argument("--out", default="results", help="output directory (default: results/)")
    p.add_argument("--extra", action="append", default=[],
                   help=f"extra columns, comma-separated: {','.join(EXTRAS)} or all")
    p.add_argument("--mix-environments", action="store_true",
                   help="allow runs of several environments, with an Environment column")
    p.add_argument("--timeline", action="append", default=[], metavar="RUN_ID",
                   help="only plot this run's timeline_<RUN_ID>.png (repeatable)")
    p.add_argument("--compare", metavar="REF", help="compare with zoo, public, auto, a reference "
                   ".csv or a run / sweep parent id: comparison.md, .csv, .png")
    p.add_argument("--tolerance", help="box AP tolerance in points for --compare: 0.3, or "
                   "native=0.3,seed=0.2 (the default)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Exit codes: 0 written, 1 no run matched, 2 bad input or mixed environments refused."""
    args = _parser().parse_args(argv)
    try:
        if args.timeline:
            for run_id in args.timeline:
                print(plots.plot_timeline(args.uri, run_id, args.out))
            return 0
        extra = parse_extra(args.extra)
        if args.compare:  # bad --compare / --tolerance refused before any run is read
            from runner.results import compare

            reference = compare.resolve(args.compare, args.uri)
            tolerance = compare.parse_tolerance(args.tolerance)
        flt = Filters(experiments=tuple(args.experiment), parent=args.parent,
                      models=tuple(args.model), precisions=tuple(args.precision),
                      resolutions=tuple(args.resolution), env_keys=tuple(args.env_key),
                      gpus=tuple(args.gpu), statuses=tuple(args.status))
        df = load_runs(args.uri, flt)
        if df.empty:
            print(f"detbench export: no run matches in {resolve_uri(args.uri)}", file=sys.stderr)
            return 1
        if args.compare:
            paths = compare.main(df, reference, args.out, tolerance)
        else:
            paths = write_report(df, args.out, extra, args.mix_environments)
    except (ExportError, plots.NoSamplesError) as exc:
        print(f"detbench export: {exc}", file=sys.stderr)
        return 2
    if not args.compare:
        print(paths[0].read_text(), end="")
    print(f"\n{len(df)} runs from {resolve_uri(args.uri)}; wrote:")
    for path in paths:
        print(f"  {path}")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(main())
