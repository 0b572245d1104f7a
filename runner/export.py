"""Export benchmark runs from any MLflow tracking store: the public table and its figures.

``python -m runner.export [filters] [--out results/]`` writes ``table.md`` (exactly the public
table's columns, numbers formatted like it; failed runs as rows that say so, never zeros),
``table.csv`` (the same data with raw numbers, one row per run, plus run id / status /
environment columns), ``latency_mean.png`` (the public table's figure), ``ap_vs_latency.png``
(Pareto front marked) and ``throughput.png``; ``--timeline RUN_ID`` plots one run's GPU (or CPU)
utilization and power over time instead. Runs from different environments (tag ``env.key``) are
refused unless ``--mix-environments``, which labels each row with its environment.

The function API: :func:`load_runs` (runs -> DataFrame), :func:`write_report` (DataFrame ->
files), :func:`plot_timeline` (one run -> PNG).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import re
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from runner import table, tracking
from runner.tracking import resolve_uri

log = logging.getLogger(__name__)

METRIC_PREFIX = "metrics."
#: Tag (or run attribute) behind each column of :func:`load_runs` besides the metrics.
TAG_COLUMNS: dict[str, str] = {
    "model": "detbench.model",
    "resolution": "detbench.resolution",
    "precision": "detbench.precision",
    "dataset": "detbench.dataset",
    "env_key": "env.key",
    "gpu_name": "env.gpu_name",
    "tensorflow": "env.tensorflow",
    "cpu_model": "env.cpu_model",
    "error": "error",
    "parent_run_id": "mlflow.parentRunId",
}
RUN_COLUMNS: tuple[str, ...] = (
    "run_id", "run_name", "experiment_id", "experiment", "status", "start_time", "end_time",
    *TAG_COLUMNS, "model_display", "precision_display", "artifact_uri", "tracking_uri",
)
ENV_COLUMN = "Environment"
CI_COLUMN = "images/sec 95% CI"
CI_LOW, CI_HIGH = "images/sec_ci_low", "images/sec_ci_high"
#: Columns of table.csv after the table's own: which run, how it ended, where it ran.
META_COLUMNS: tuple[str, ...] = (
    "status", "error", "run_id", "run_name", "experiment", "start_time", "parent_run_id",
    "model", "resolution", "precision", "dataset", "env_key", "gpu_name", "tensorflow",
    "cpu_model",
)
#: The public table's precision order within one model and input.
PRECISION_ORDER = ("Native FP32", "TF-TRT FP32", "TF-TRT FP16", "TF-TRT INT8")
ERROR_CHARS = 60  # a failed row's AP cell: "failed: " + at most this many characters
DPI = 100
SCATTER_SIZE_IN = (8.0, 6.0)
TIMELINE_SIZE_IN = (12.0, 5.0)
BAR_WIDTH_IN = 10.0
SEARCH_PAGE = 1000
_PROGRESS_VAR = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
# "JobFailed: OSError: ..." -> "OSError: ...": wrappers in front of the real exception's name
_WRAPPERS = re.compile(r"^(?:[A-Za-z_][\w.]*: )+(?=[A-Za-z_][\w.]*(?:Error|Exception): )")


class ExportError(Exception):
    """Bad input for an export (unknown experiment or extra, ...): the message says what to do."""


class MixedEnvironmentsError(ExportError):
    """The selected runs come from more than one environment (distinct ``env.key``)."""


@dataclass(frozen=True)
class Filters:
    """Which runs to export; an empty tuple means any. Tag matches are exact except ``gpus``
    (a case-insensitive substring of ``env.gpu_name``); statuses ignore case."""

    experiments: tuple[str, ...] = ()  # names or ids; none: every active experiment
    parent: str | None = None  # a sweep's parent run: its children (tag mlflow.parentRunId)
    models: tuple[str, ...] = ()  # tag detbench.model
    precisions: tuple[str, ...] = ()  # tag detbench.precision
    resolutions: tuple[str, ...] = ()  # tag detbench.resolution
    env_keys: tuple[str, ...] = ()  # tag env.key
    gpus: tuple[str, ...] = ()  # tag env.gpu_name
    statuses: tuple[str, ...] = ()  # FINISHED, FAILED, KILLED, RUNNING
    run_ids: tuple[str, ...] = ()

    @classmethod
    def of(cls, value: Filters | Mapping[str, Any] | None) -> Filters:
        """A Filters from itself, None, or a mapping of its field names (str or sequences)."""
        if value is None:
            return cls()
        if isinstance(value, Filters):
            return value
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(value) - names)
        if unknown:
            raise ExportError(f"unknown filter(s) {', '.join(unknown)}; valid: "
                              f"{', '.join(sorted(names))}")
        kwargs: dict[str, Any] = {}
        for key, item in value.items():
            if key == "parent":
                kwargs[key] = item
            elif item is not None:
                kwargs[key] = (item,) if isinstance(item, str) else tuple(item)
        return cls(**kwargs)


# -- loading ------------------------------------------------------------------------------------


def load_runs(uri: str | None = None,
              filters: Filters | Mapping[str, Any] | None = None) -> pd.DataFrame:
    """The benchmark runs (those with a ``detbench.model`` tag) of a tracking store, oldest first.

    One row per run: :data:`RUN_COLUMNS` (``start_time``/``end_time`` as UTC timestamps,
    ``model_display``/``precision_display`` from the params ``model.display_name`` /
    ``precision.display_name``) and one ``metrics.<name>`` column per logged metric (latest
    value; the ``sample.*`` time series are left out). ``uri`` None: $MLFLOW_TRACKING_URI, else
    sqlite:///mlflow.db.
    """
    from runner import tracking

    flt = Filters.of(filters)
    resolved = resolve_uri(uri)
    client = tracking.client(resolved)
    experiments = _experiments(client, flt.experiments)
    runs = _search(client, list(experiments), _server_filter(flt))
    records = [_record(run, experiments, resolved) for run in runs]
    metric_names = sorted({k for r in records for k in r if k.startswith(METRIC_PREFIX)})
    df = pd.DataFrame(records, columns=[*RUN_COLUMNS, *metric_names])
    for col in ("start_time", "end_time"):
        df[col] = pd.to_datetime(df[col], unit="ms", utc=True)
    df = _client_filter(df, flt)
    return df.sort_values("start_time", kind="stable").reset_index(drop=True)


def _experiments(client: Any, wanted: Sequence[str]) -> dict[str, str]:
    """Experiment id -> name, for the wanted names or ids, else every active experiment."""
    if not wanted:
        found: dict[str, str] = {}
        token = None
        while True:
            page = client.search_experiments(max_results=SEARCH_PAGE, page_token=token)
            found.update({e.experiment_id: e.name for e in page})
            token = page.token
            if not token:
                return found
    out: dict[str, str] = {}
    for name in wanted:
        exp = client.get_experiment_by_name(name)
        if exp is None and name.isdigit():
            exp = _experiment_by_id(client, name)
        if exp is None:
            known = ", ".join(sorted(_experiments(client, ()).values())) or "none"
            raise ExportError(f"no experiment named {name!r} in {client.tracking_uri}; "
                              f"experiments: {known}")
        out[exp.experiment_id] = exp.name
    return out


def _experiment_by_id(client: Any, experiment_id: str) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_experiment(experiment_id)
    except MlflowException:
        return None


def _quoted(value: str) -> str | None:
    return None if "'" in value or "\\" in value else f"'{value}'"


def _server_filter(flt: Filters) -> str:
    """The single-valued filters as an MLflow search string (the rest is filtered here)."""
    parts = []
    single = {"detbench.model": flt.models, "detbench.precision": flt.precisions,
              "detbench.resolution": flt.resolutions, "env.key": flt.env_keys}
    if flt.parent:
        single["mlflow.parentRunId"] = (flt.parent,)
    for tag, values in single.items():
        if len(values) == 1 and (q := _quoted(values[0])):
            parts.append(f"tags.`{tag}` = {q}")
    if len(flt.statuses) == 1 and (q := _quoted(flt.statuses[0].upper())):
        parts.append(f"attributes.status = {q}")
    return " and ".join(parts)


def search_all_runs(uri: str | None, filter_string: str = "") -> list[Any]:
    """Every active run of every active experiment matching an MLflow search string."""

    client = tracking.client(uri)
    return _search(client, list(_experiments(client, ())), filter_string)


def _search(client: Any, experiment_ids: list[str], filter_string: str) -> list[Any]:
    from mlflow.entities import ViewType

    if not experiment_ids:
        return []
    runs: list[Any] = []
    token = None
    while True:
        page = client.search_runs(experiment_ids, filter_string, ViewType.ACTIVE_ONLY,
                                  max_results=SEARCH_PAGE, order_by=["attributes.start_time ASC"],
                                  page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _record(run: Any, experiments: Mapping[str, str], uri: str) -> dict[str, Any]:
    info, data = run.info, run.data
    tags, params = data.tags, data.params
    record: dict[str, Any] = {
        "run_id": info.run_id,
        "run_name": info.run_name or tags.get("mlflow.runName"),
        "experiment_id": info.experiment_id,
        "experiment": experiments.get(info.experiment_id),
        "status": info.status,
        "start_time": info.start_time,
        "end_time": info.end_time,
        **{col: tags.get(tag) for col, tag in TAG_COLUMNS.items()},
        "model_display": params.get("model.display_name") or tags.get("detbench.model"),
        "precision_display": (params.get("precision.display_name")
                              or tags.get("detbench.precision")),
        "artifact_uri": info.artifact_uri,
        "tracking_uri": uri,
    }
    record.update({f"{METRIC_PREFIX}{k}": float(v) for k, v in data.metrics.items()
                   if not k.startswith("sample.")})
    return record


def _client_filter(df: pd.DataFrame, flt: Filters) -> pd.DataFrame:
    keep = df["model"].notna()
    for col, values in (("model", flt.models), ("precision", flt.precisions),
                        ("resolution", flt.resolutions), ("env_key", flt.env_keys),
                        ("run_id", flt.run_ids)):
        if values:
            keep &= df[col].isin(list(values))
    if flt.parent:
        keep &= df["parent_run_id"] == flt.parent
    if flt.statuses:
        keep &= df["status"].isin([s.upper() for s in flt.statuses])
    if flt.gpus:
        names = df["gpu_name"].fillna("").str.lower()
        keep &= np.logical_or.reduce([names.str.contains(g.lower(), regex=False)
                                      for g in flt.gpus])
    return df[keep]


# -- environments -------------------------------------------------------------------------------


def environment_labels(df: pd.DataFrame) -> dict[str, str]:
    """env.key -> "GPU name, TF version" (the CPU model when there is no GPU); the key is
    appended where two environments would read the same."""
    labels: dict[str, str] = {}
    for key, group in df[df["env_key"].notna()].groupby("env_key", sort=False):
        first = group.iloc[0]
        gpu = first["gpu_name"]
        device = gpu if isinstance(gpu, str) and gpu not in ("", "none") else (
            f"CPU {first['cpu_model'] if isinstance(first['cpu_model'], str) else 'unknown'}")
        labels[str(key)] = f"{device}, TF {first['tensorflow']}"
    counts = pd.Series(list(labels.values())).value_counts()
    return {k: f"{v} [{k}]" if counts[v] > 1 else v for k, v in labels.items()}


def check_environments(df: pd.DataFrame, mix_environments: bool = False) -> dict[str, str] | None:
    """None when the runs share one environment (runs without env.key do not count); else the
    labels of :func:`environment_labels` if ``mix_environments``, else MixedEnvironmentsError."""
    keys = df["env_key"].dropna().unique()
    if len(keys) <= 1:
        return None
    labels = environment_labels(df)
    if mix_environments:
        return labels
    counts = df["env_key"].value_counts()
    lines = [f"  {k}  {labels[k]}  ({counts[k]} run{'s' if counts[k] != 1 else ''})"
             for k in labels]
    raise MixedEnvironmentsError(
        f"the selected runs come from {len(labels)} environments (tag env.key), whose numbers "
        "are not comparable:\n" + "\n".join(lines) + "\nselect one with --env-key KEY (or --gpu "
        "NAME), or pass --mix-environments to label each row with its environment")


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
    prec = [PRECISION_ORDER.index(p) if p in PRECISION_ORDER else len(PRECISION_ORDER)
            for p in df["precision_display"]]
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


def short_error(status: str, error: Any) -> str:
    """A failed row's AP cell: ``failed: <first line of the error, shortened>``."""
    word = {"FAILED": "failed", "KILLED": "killed"}.get(status, status.lower())
    text = error.strip().splitlines()[0].strip() if isinstance(error, str) and error.strip() else ""
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
    runs = order_runs(df)
    used = _extras_in_use(runs, parse_extra(extra))
    ci = _ci_bounds(runs) if "ci" in used else None
    columns = [*table.COLUMNS, *(EXTRAS[n].column for n in used)]
    if labels:
        columns.append(ENV_COLUMN)
    rows, raws = [], []
    for i, run in runs.iterrows():
        bounds = ci[i] if ci is not None else (math.nan, math.nan)
        row, raw = _row(run, used, bounds)
        if labels:
            env = labels.get(str(run["env_key"]), "unknown")
            row[ENV_COLUMN], raw[ENV_COLUMN] = _cell(env), env
        rows.append(row)
        raws.append(raw | _meta(run))
    raw_columns = [name for c in columns
                   for name in ((CI_LOW, CI_HIGH) if c == CI_COLUMN else (c,))]
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
        raw[col] = metrics[metric] * scale if metric in metrics else math.nan
    if not finished:
        row["AP"] = _cell(short_error(str(run["status"]), run["error"]))
    for name in extras:
        spec = EXTRAS[name]
        if spec.metric is None:  # ci
            ok = finished and not math.isnan(ci[0])
            row[spec.column] = f"{ci[0]:.2f}-{ci[1]:.2f}" if ok else ""
            raw[CI_LOW], raw[CI_HIGH] = ci if finished else (math.nan, math.nan)
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


def _ci_bounds(runs: pd.DataFrame) -> dict[Any, tuple[float, float]]:
    """Index -> 95 % bootstrap interval of images/sec: the logged metrics
    images_per_sec_ci_low/high if any, else from the run's latencies.csv."""
    out: dict[Any, tuple[float, float]] = {}
    for i, run in runs.iterrows():
        metrics = _metrics(run)
        if run["status"] != "FINISHED":
            out[i] = (math.nan, math.nan)
        elif "images_per_sec_ci_low" in metrics and "images_per_sec_ci_high" in metrics:
            out[i] = (metrics["images_per_sec_ci_low"], metrics["images_per_sec_ci_high"])
        else:
            out[i] = _bootstrap_from_artifact(str(run["tracking_uri"]), str(run["run_id"]))
    return out


def _bootstrap_from_artifact(uri: str, run_id: str) -> tuple[float, float]:
    from runner.stats import bootstrap_ci

    try:
        with tempfile.TemporaryDirectory(prefix="detbench-export-") as tmp:
            path = _download(uri, run_id, "latencies.csv", Path(tmp))
            latencies_ms = pd.read_csv(path)["latency_ms"].to_numpy(dtype=np.float64)
        return bootstrap_ci(latencies_ms / 1000.0, "throughput")
    except Exception as exc:  # noqa: BLE001 - one run's missing file must not stop the export
        log.warning("run %s: no throughput CI (%s: %s)", run_id, type(exc).__name__, exc)
        return math.nan, math.nan


def _download(uri: str, run_id: str, artifact: str, dst: Path) -> Path:
    """One artifact of a run, without MLflow's progress bar."""
    import mlflow.artifacts

    previous = os.environ.get(_PROGRESS_VAR)
    os.environ[_PROGRESS_VAR] = "false"
    try:
        local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact,
                                                    dst_path=str(dst), tracking_uri=uri)
    finally:
        if previous is None:
            os.environ.pop(_PROGRESS_VAR, None)
        else:
            os.environ[_PROGRESS_VAR] = previous
    return Path(local)


def read_table_csv(path: str | Path) -> pd.DataFrame:
    """table.csv back as written: ids and keys stay text even when they look like numbers."""
    text = ("Model", "Input", "TF-TRT", ENV_COLUMN, *META_COLUMNS)
    return pd.read_csv(path, dtype=dict.fromkeys(text, "str"))


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
    for plot in (plot_latency_mean, plot_ap_vs_latency, plot_throughput):
        path = plot(report.frame, out)
        if path is not None:
            written.append(path)
    return written


# -- plots --------------------------------------------------------------------------------------


def _figure(size_in: tuple[float, float]) -> Any:
    import matplotlib
    from matplotlib.figure import Figure

    matplotlib.rcParams["axes.formatter.useoffset"] = False  # plain tick labels, no "+7.12e1"
    return Figure(figsize=size_in, dpi=DPI, layout="constrained")


def _save(fig: Any, path: Path) -> Path:
    fig.savefig(path, dpi=DPI)
    return path


def bar_size_in(n_bars: int) -> tuple[float, float]:
    """Figure size (inches) of a horizontal bar chart with ``n_bars`` bars."""
    return BAR_WIDTH_IN, float(min(40.0, max(4.0, 1.2 + 0.3 * n_bars)))


def _finished(frame: pd.DataFrame, *columns: str) -> pd.DataFrame:
    keep = frame["status"] == "FINISHED"
    for col in columns:
        keep &= frame[col].notna()
    return frame[keep]


def run_labels(frame: pd.DataFrame, with_precision: bool | None = None) -> list[str]:
    """"Model Input" (+ precision when the runs have several, + environment when mixed), with
    the run id's start where two runs would read the same."""
    if with_precision is None:
        with_precision = frame["TF-TRT"].nunique() > 1
    labels = [f"{label} {p}" if with_precision else label
              for label, p in zip(_model_labels(frame), frame["TF-TRT"], strict=True)]
    counts = pd.Series(labels).value_counts()
    return [f"{lab} ({rid[:6]})" if counts[lab] > 1 else lab
            for lab, rid in zip(labels, frame["run_id"], strict=True)]


def _model_labels(frame: pd.DataFrame) -> list[str]:
    """"Model Input" (+ environment when mixed): the runs of one model share it."""
    env = frame[ENV_COLUMN] if ENV_COLUMN in frame else pd.Series(None, index=frame.index)
    return [f"{m} {i}" + (f" [{e}]" if isinstance(e, str) else "")
            for m, i, e in zip(frame["Model"], frame["Input"], env, strict=True)]


def _precision_colors(precisions: Sequence[str]) -> dict[str, Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {p: cmap(i % 10) for i, p in enumerate(dict.fromkeys(precisions))}


def plot_latency_mean(frame: pd.DataFrame, out_dir: Path) -> Path | None:
    """latency_mean.png: latency mean per model, the public table's figure (table order)."""
    data = _finished(frame, "latency_mean(ms)")
    if data.empty:
        log.info("latency_mean.png: no finished run with a latency; not drawn")
        return None
    labels = run_labels(data)
    colors = _precision_colors(list(data["TF-TRT"]))
    fig = _figure(bar_size_in(len(data)))
    ax = fig.add_subplot()
    values = data["latency_mean(ms)"].to_numpy()
    bars = ax.barh(range(len(data)), values, color=[colors[p] for p in data["TF-TRT"]])
    ax.bar_label(bars, labels=[f"{v:.2f}" for v in values], padding=3, fontsize=8)
    ax.set_yticks(range(len(data)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("latency mean (ms), batch 1")
    ax.set_title("Latency mean per model")
    ax.margins(x=0.12)
    ax.grid(axis="x", alpha=0.3)
    if len(colors) > 1:
        _legend(ax, colors)
    return _save(fig, out_dir / "latency_mean.png")


def _legend(ax: Any, colors: Mapping[str, Any], title: str = "precision") -> None:
    from matplotlib.patches import Patch

    ax.legend(handles=[Patch(color=c, label=p) for p, c in colors.items()], title=title,
              fontsize=8, loc="best")


def pareto_front(latency: Sequence[float], ap: Sequence[float]) -> list[int]:
    """Indices of the points no other point beats (lower or equal latency and higher or equal
    AP, one strictly), by increasing latency."""
    order = sorted(range(len(latency)), key=lambda i: (latency[i], -ap[i]))
    front: list[int] = []
    best = -math.inf
    for i in order:
        if ap[i] > best:
            front.append(i)
            best = ap[i]
    return front


def plot_ap_vs_latency(frame: pd.DataFrame, out_dir: Path) -> Path | None:
    """ap_vs_latency.png: AP against latency mean, one series per precision, Pareto front."""
    data = _finished(frame, "latency_mean(ms)", "AP")
    if data.empty:
        log.info("ap_vs_latency.png: no finished run with AP and latency; not drawn")
        return None
    fig = _figure(SCATTER_SIZE_IN)
    ax = fig.add_subplot()
    colors = _precision_colors(list(data["TF-TRT"]))
    for precision, group in data.groupby("TF-TRT", sort=False):
        ax.scatter(group["latency_mean(ms)"], group["AP"], s=36, color=colors[str(precision)],
                   label=str(precision), zorder=3)
    lat, ap = list(data["latency_mean(ms)"]), list(data["AP"])
    front = pareto_front(lat, ap)
    ax.step([lat[i] for i in front], [ap[i] for i in front], where="post", color="black",
            linestyle="--", linewidth=1, zorder=2)
    ax.scatter([lat[i] for i in front], [ap[i] for i in front], s=130, facecolors="none",
               edgecolors="black", linewidths=1.2, label="Pareto front", zorder=4)
    middle = (min(lat) + max(lat)) / 2
    for x, y, label in zip(lat, ap, run_labels(data, with_precision=False), strict=True):
        right = x > middle
        text = ax.annotate(label, (x, y), textcoords="offset points",
                           xytext=(-4 if right else 4, 4), ha="right" if right else "left",
                           fontsize=7)
        text.set_in_layout(False)
    ax.set_xlabel("latency mean (ms), batch 1")
    ax.set_ylabel("COCO AP (box, x100)")
    ax.set_title("Accuracy against latency")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return _save(fig, out_dir / "ap_vs_latency.png")


def plot_throughput(frame: pd.DataFrame, out_dir: Path) -> Path | None:
    """throughput.png: images/sec per model, one bar per precision; error bars: the 95 % CI of
    a single run (when computed), the min-max range of several runs."""
    data = _finished(frame, "images/sec")
    if data.empty:
        log.info("throughput.png: no finished run with images/sec; not drawn")
        return None
    data = data.assign(_group=_model_labels(data))
    groups = list(dict.fromkeys(data["_group"]))
    precisions = list(dict.fromkeys(data["TF-TRT"]))
    colors = _precision_colors(precisions)
    fig = _figure(bar_size_in(len(groups) * len(precisions)))
    ax = fig.add_subplot()
    height = 0.8 / len(precisions)
    for j, precision in enumerate(precisions):
        ys, values, errors = [], [], []
        for g, group in enumerate(groups):
            cell = data[(data["_group"] == group) & (data["TF-TRT"] == precision)]
            if cell.empty:
                continue
            value, low, high = _bar_value(cell)
            ys.append(g - 0.4 + height * (j + 0.5))
            values.append(value)
            errors.append((value - low, high - value))
        err = np.array(errors, dtype=np.float64).T if errors else None
        bars = ax.barh(ys, values, height=height, color=colors[precision], label=precision,
                       xerr=err, error_kw={"elinewidth": 1, "capsize": 2})
        ax.bar_label(bars, labels=[f"{v:.2f}" for v in values], padding=3, fontsize=7)
    ax.set_yticks(range(len(groups)), groups, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("images/sec (images / total timed seconds), batch 1")
    ax.set_title("Throughput per model and precision")
    ax.margins(x=0.15)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(title="precision", fontsize=8, loc="best")
    return _save(fig, out_dir / "throughput.png")


def _bar_value(cell: pd.DataFrame) -> tuple[float, float, float]:
    """(value, low, high) of one bar: mean of the runs, their range, or one run's CI."""
    values = cell["images/sec"].to_numpy(dtype=np.float64)
    value = float(values.mean())
    if len(values) > 1:
        return value, float(values.min()), float(values.max())
    if CI_LOW in cell and pd.notna(cell[CI_LOW].iloc[0]) and pd.notna(cell[CI_HIGH].iloc[0]):
        low, high = float(cell[CI_LOW].iloc[0]), float(cell[CI_HIGH].iloc[0])
        return value, min(low, value), max(high, value)
    return value, value, value


# -- timeline -----------------------------------------------------------------------------------


def load_samples(uri: str | None, run_id: str) -> pd.DataFrame:
    """A run's telemetry samples as in samples.csv (t_s, phase, device, quantities); without
    that artifact, rebuilt from the ``sample.<device>.<quantity>`` metric histories (no
    phases)."""
    resolved = resolve_uri(uri)
    try:
        with tempfile.TemporaryDirectory(prefix="detbench-export-") as tmp:
            return pd.read_csv(_download(resolved, run_id, "samples.csv", Path(tmp)))
    except Exception as exc:  # noqa: BLE001 - fall back to the metric histories
        log.info("run %s: no samples.csv (%s); using the sample.* metrics", run_id, exc)
    return _samples_from_metrics(resolved, run_id)


def _samples_from_metrics(uri: str, run_id: str) -> pd.DataFrame:

    client = tracking.client(uri)
    run = client.get_run(run_id)
    points = []
    for name in run.data.metrics:
        _, _, rest = name.partition("sample.")
        device, _, quantity = rest.partition(".")
        if not name.startswith("sample.") or not quantity:
            continue
        for m in client.get_metric_history(run_id, name):
            points.append({"device": device, "step": m.step, "ts": m.timestamp,
                           "quantity": quantity, "value": m.value})
    if not points:
        return pd.DataFrame(columns=["t_s", "phase", "device"])
    long = pd.DataFrame(points)
    wide = long.pivot_table(index=["device", "step"], columns="quantity", values="value")
    stamps = long.groupby(["device", "step"])["ts"].min()
    wide.insert(0, "t_s", (stamps - long["ts"].min()) / 1000.0)
    wide.insert(1, "phase", None)
    return wide.reset_index().drop(columns="step").sort_values("t_s")


def phase_spans(samples: pd.DataFrame) -> list[tuple[str, float, float]]:
    """(phase, start, end) of each stretch of consecutive samples in one phase; a stretch ends
    where the next one starts (its last sample for the final stretch)."""
    rows = samples[samples["phase"].notna()].sort_values("t_s", kind="stable")
    if rows.empty:
        return []
    ts, phases = rows["t_s"].to_numpy(dtype=np.float64), rows["phase"].astype(str).to_numpy()
    starts = [0, *(i for i in range(1, len(ts)) if phases[i] != phases[i - 1])]
    ends = [*(ts[i] for i in starts[1:]), ts[-1]]
    return [(str(phases[s]), float(ts[s]), float(e)) for s, e in zip(starts, ends, strict=True)]


def _timeline_quantities(samples: pd.DataFrame) -> tuple[str, list[str], str | None]:
    """(utilization column, devices, power column or None): the GPUs when sampled, else CPU."""
    if "device" not in samples:
        return "", [], None
    devices = [str(d) for d in dict.fromkeys(samples["device"].dropna())]
    gpus = [d for d in devices if d.startswith("gpu")]
    if gpus and "gpu_util_pct" in samples and samples["gpu_util_pct"].notna().any():
        power = "power_w" if "power_w" in samples and samples["power_w"].notna().any() else None
        return "gpu_util_pct", gpus, power
    if "cpu_util_pct" in samples and samples["cpu_util_pct"].notna().any():
        return "cpu_util_pct", [d for d in devices if not d.startswith("gpu")], None
    return "", [], None


def plot_timeline(uri: str | None, run_id: str, out_dir: str | Path) -> Path:
    """timeline_<run_id>.png: GPU utilization (solid) and power (dashed) per GPU over time, the
    warm-up shaded and the phases marked; CPU utilization when the run has no GPU samples."""
    from matplotlib import colormaps


    samples = load_samples(uri, run_id)
    util, devices, power = _timeline_quantities(samples)
    if not util:
        raise ExportError(f"run {run_id} has no utilization samples to plot")
    name = tracking.client(uri).get_run(run_id).info.run_name or run_id
    kind = "GPU" if util == "gpu_util_pct" else "CPU"
    fig = _figure(TIMELINE_SIZE_IN)
    ax = fig.add_subplot()
    twin = ax.twinx() if power else None
    palette = colormaps["tab10"]
    for i, device in enumerate(devices):
        rows = samples[samples["device"] == device].sort_values("t_s")
        color = palette((2 * i) % 10)  # blue, green, red, ...: clear of the warm-up's yellow
        ax.plot(rows["t_s"], rows[util], linewidth=1.2, color=color,
                label=f"{device} utilization")
        if twin is not None and power:
            twin.plot(rows["t_s"], rows[power], linewidth=1.0, linestyle="--", color=color,
                      label=f"{device} power")
    ax.set(ylabel=f"{kind} utilization (%)", ylim=(0, 105),
           xlabel="time since sampling started (s)")
    if twin is not None:
        twin.set(ylabel="power (W)", ylim=(0, None))
    _mark_phases(ax, phase_spans(samples))
    handles, labels = ax.get_legend_handles_labels()
    if twin is not None:
        more = twin.get_legend_handles_labels()
        handles, labels = handles + more[0], labels + more[1]
    fig.legend(handles, labels, fontsize=8, loc="outside lower center", ncols=len(labels))
    title = "GPU utilization and power" if kind == "GPU" else "CPU utilization (no GPU samples)"
    ax.set_title(f"{title}: {name}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return _save(fig, out / f"timeline_{run_id}.png")


def _mark_phases(ax: Any, spans: Sequence[tuple[str, float, float]]) -> None:
    """Shade the warm-up; a dotted line and the name at each phase's start (inside the top of
    the axes, staggered where phases start close together)."""
    from matplotlib.transforms import blended_transform_factory

    top = blended_transform_factory(ax.transData, ax.transAxes)
    low, high = ax.get_xlim()
    close = 0.05 * (high - low)
    warm, level, last = False, 0, -math.inf
    for phase, start, end in spans:
        if phase == "warmup":
            ax.axvspan(start, end, color="gold", alpha=0.3, label=None if warm else "warm-up")
            warm = True
        ax.axvline(start, color="grey", linewidth=0.6, linestyle=":")
        level = (level + 1) % 3 if start - last < close else 0
        last = start
        ax.text(start, 0.98 - 0.05 * level, f" {phase}", transform=top, fontsize=7, va="top",
                color="dimgrey")


# -- command line -------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m runner.export",
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
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Exit codes: 0 written, 1 no run matched, 2 bad input or mixed environments refused."""
    args = _parser().parse_args(argv)
    try:
        if args.timeline:
            for run_id in args.timeline:
                print(plot_timeline(args.uri, run_id, args.out))
            return 0
        extra = parse_extra(args.extra)
        flt = Filters(experiments=tuple(args.experiment), parent=args.parent,
                      models=tuple(args.model), precisions=tuple(args.precision),
                      resolutions=tuple(args.resolution), env_keys=tuple(args.env_key),
                      gpus=tuple(args.gpu), statuses=tuple(args.status))
        df = load_runs(args.uri, flt)
        if df.empty:
            print(f"detbench export: no run matches in {resolve_uri(args.uri)}", file=sys.stderr)
            return 1
        paths = write_report(df, args.out, extra, args.mix_environments)
    except ExportError as exc:
        print(f"detbench export: {exc}", file=sys.stderr)
        return 2
    print(paths[0].read_text(), end="")
    print(f"\n{len(df)} runs from {resolve_uri(args.uri)}; wrote:")
    for path in paths:
        print(f"  {path}")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(main())
