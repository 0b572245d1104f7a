"""The published figures a measured run is held against, as data: the zoo's catalogue
(``references/zoo.csv``) and the public benchmark table (``references/public_table.csv``), or
any reference CSV of the same form, or another run or sweep of a tracking store.

A reference file is a CSV preceded by ``# key: value`` lines that say where the numbers come from
(``source``, ``hardware``, ``software``, ``tensorflow``, ``precision``, ``input_policy``,
``dataset``, ``images``, ``tolerance``, ...). Its columns: ``model`` (the runner's model key) and
``resolution`` (required), ``display_name``, ``precision`` (empty: any), ``status`` (``ok`` or
``failed``: a row that failed there has no numbers, never zeros) and any of the public table's
columns (COCO stats x100, images/sec, latencies in ms) plus ``AP(keypoints)`` / ``AP(masks)``.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import pandas as pd

from runner.results.runs import METRIC_PREFIX, ExportError
from runner.results.table import COLUMNS, METRIC_OF_COLUMN, PERCENT_COLUMNS

#: The references shipped with the package: ``--compare NAME``.
SHIPPED: dict[str, str] = {"zoo": "zoo.csv", "public": "public_table.csv"}
KEY_COLUMNS = ("model", "resolution")
KP_COLUMN, MASK_COLUMN = "AP(keypoints)", "AP(masks)"
#: Every number a comparison knows: the public table's columns and the extra AP figures.
VALUE_COLUMNS: tuple[str, ...] = (*COLUMNS[3:], KP_COLUMN, MASK_COLUMN)
EXTRA_METRICS = {KP_COLUMN: "keypoints.AP", MASK_COLUMN: "segm.AP"}
#: Column names of the shipped zoo file -> the comparison's names.
ALIASES = {"published_ms": "latency_mean(ms)", "AP_keypoints": KP_COLUMN, "AP_masks": MASK_COLUMN}
#: The measured metric each reference's images/sec is held against, by the reference's own
#: definition (``images_per_sec_metric`` in its header): the public table averaged per-call rates.
DEFAULT_RATE_METRIC = "images_per_sec"
RATE_METRICS = ("images_per_sec", "images_per_sec_mean_of_rates")
RATE_PREFIX = "rate:"  # run_rows' column of each rate metric
#: Default box-AP tolerance (points) by the reference's input policy: the zoo's own (native)
#: within 0.3, the public table (seed) within 0.2 (issue 16).
TOLERANCES: dict[str, float] = {"native": 0.3, "seed": 0.2}
FALLBACK_TOLERANCE = 0.3
_META_LINE = re.compile(r"^#\s*([A-Za-z_][\w]*)\s*:\s*(.*)$")


@dataclass
class Reference:
    """What a comparison holds measured rows against: ``rows`` has ``model``, ``resolution``,
    ``display_name``, ``precision`` ("" = any), ``status``, ``note``, ``run_id`` and the
    :data:`VALUE_COLUMNS` (NaN where the reference has no figure); ``meta`` the header."""

    name: str
    rows: pd.DataFrame
    meta: dict[str, str] = field(default_factory=dict)

    @property
    def title(self) -> str:
        return self.meta.get("title", self.name)

    @property
    def input_policy(self) -> str | None:
        return self.meta.get("input_policy") or None

    @property
    def images(self) -> int | None:
        value = self.meta.get("images", "")
        return int(value) if value.strip().isdigit() else None

    @property
    def rate_metric(self) -> str:
        return self.meta.get("images_per_sec_metric") or DEFAULT_RATE_METRIC

    def tolerance(self, override: Mapping[str, float] | float | None = None) -> float:
        """Box-AP tolerance in points: ``override`` (a number, or one per input policy), else
        the file's ``tolerance``, else :data:`TOLERANCES` of its input policy."""
        policy = self.input_policy or ""
        if isinstance(override, int | float):
            return float(override)
        if override and policy in override:
            return float(override[policy])
        if self.meta.get("tolerance"):
            return float(self.meta["tolerance"])
        return TOLERANCES.get(policy, FALLBACK_TOLERANCE)

    def header(self) -> str:
        """One line: title, source, hardware, software, policy, dataset."""
        parts = [self.title]
        for key in ("source", "hardware", "software", "precision", "input_policy", "dataset"):
            if self.meta.get(key):
                parts.append(f"{key.replace('_', ' ')}: {self.meta[key]}")
        if self.images:
            parts.append(f"images: {self.images}")
        return "; ".join(parts)


def shipped_path(name: str) -> Path:
    """The file of a shipped reference (``zoo`` or ``public``)."""
    return Path(str(resources.files("runner.results") / "references" / SHIPPED[name]))


def read_file(path: str | Path, name: str | None = None) -> Reference:
    """A reference CSV with its ``# key: value`` header; ExportError naming what is wrong."""
    file = Path(path)
    try:
        text = file.read_text()
    except OSError as exc:
        raise ExportError(f"cannot read reference file {file}: {exc}") from None
    meta: dict[str, str] = {}
    body: list[str] = []
    for line in text.splitlines():
        match = _META_LINE.match(line) if line.startswith("#") else None
        if match:
            meta[match.group(1).lower()] = match.group(2).strip()
        elif not line.startswith("#"):
            body.append(line)
    try:
        rows = pd.read_csv(io.StringIO("\n".join(body)), dtype={"model": str, "resolution": str,
                                                                 "precision": str})
    except (ValueError, pd.errors.ParserError) as exc:
        raise ExportError(f"reference file {file} is not a CSV: {exc}") from None
    rows = rows.rename(columns=ALIASES)
    missing = [c for c in KEY_COLUMNS if c not in rows]
    if missing:
        raise ExportError(f"reference file {file} lacks the column(s) {', '.join(missing)}; "
                          f"columns: {', '.join(rows.columns)}")
    known = {*KEY_COLUMNS, "display_name", "precision", "status", "note", *VALUE_COLUMNS}
    numbers = [c for c in rows.columns if c in VALUE_COLUMNS]
    if not numbers:
        raise ExportError(f"reference file {file} has no figure to compare; expected some of: "
                          f"{', '.join(VALUE_COLUMNS)}")
    meta.setdefault("reference", name or file.stem)
    rate = meta.get("images_per_sec_metric", DEFAULT_RATE_METRIC)
    if rate not in RATE_METRICS:
        raise ExportError(f"reference file {file}: images_per_sec_metric {rate!r} is not valid; "
                          f"valid: {', '.join(RATE_METRICS)}")
    return Reference(meta["reference"], _normalize(rows[[c for c in rows if c in known]], meta),
                     meta)


def _normalize(rows: pd.DataFrame, meta: Mapping[str, str]) -> pd.DataFrame:
    out = pd.DataFrame({
        "model": rows["model"].astype(str),
        "resolution": rows["resolution"].astype(str),
        "display_name": rows.get("display_name", rows["model"]).fillna(rows["model"]).astype(str),
        "precision": rows.get("precision", pd.Series("", index=rows.index)).fillna("").astype(str),
        "status": rows.get("status", pd.Series("ok", index=rows.index)).fillna("ok").astype(str),
        "note": rows.get("note", pd.Series("", index=rows.index)).fillna("").astype(str),
        "run_id": "",
    })
    failed = out["status"] == "failed"
    out.loc[failed & (out["note"] == ""), "note"] = meta.get("failed", "")
    for col in VALUE_COLUMNS:
        values = pd.to_numeric(rows[col], errors="coerce") if col in rows else math.nan
        out[col] = values
    out.loc[failed, list(VALUE_COLUMNS)] = math.nan  # failed there: no numbers, never zeros
    return out.reset_index(drop=True)


def load(name_or_path: str) -> Reference:
    """A shipped reference by name (``zoo``, ``public``) or a reference CSV by path."""
    if name_or_path in SHIPPED:
        return read_file(shipped_path(name_or_path), name_or_path)
    return read_file(name_or_path)


# -- runs as rows -------------------------------------------------------------------------------


def images_scored(run: pd.Series) -> float:
    """Images the run scored: its timed calls / ``benchmark.repeats``, else the
    ``dataset.num_images`` it asked for, else NaN."""
    count = run.get(f"{METRIC_PREFIX}count")
    repeats = pd.to_numeric(pd.Series([run.get("repeats")]), errors="coerce").iloc[0]
    if count is not None and pd.notna(count):
        return float(count) / (float(repeats) if pd.notna(repeats) and repeats > 0 else 1.0)
    asked = pd.to_numeric(pd.Series([run.get("num_images")]), errors="coerce").iloc[0]
    return float(asked) if pd.notna(asked) else math.nan


def run_rows(df: pd.DataFrame, rate_metric: str = DEFAULT_RATE_METRIC) -> pd.DataFrame:
    """Runs (as from ``runner.results.runs.load_runs``) as comparison rows: the key columns, status,
    the :data:`VALUE_COLUMNS` in the table's units (COCO x100), and what verdicts need
    (input policy, dataset, images scored, TensorFlow, environment); ``images/sec`` is
    ``rate_metric``, and each of :data:`RATE_METRICS` is kept as ``rate:<metric>``."""
    records: list[dict[str, Any]] = []
    for _, run in df.iterrows():
        finished = run["status"] == "FINISHED"
        rec: dict[str, Any] = {
            "model": run["model"], "resolution": run["resolution"],
            "display_name": run["model_display"], "precision": run["precision_display"] or "",
            "status": "ok" if finished else str(run["status"]).lower(),
            "note": run["error"] if isinstance(run["error"], str) else "",
            "run_id": run["run_id"], "input_policy": run.get("input_policy"),
            "dataset": run.get("dataset"), "images": images_scored(run),
            "tensorflow": run.get("tensorflow"), "env_key": run.get("env_key"),
            "gpu_name": run.get("gpu_name"), "cpu_model": run.get("cpu_model"),
            "start_time": run.get("start_time"),
        }
        for metric in RATE_METRICS:
            value = run.get(f"{METRIC_PREFIX}{metric}") if finished else None
            rec[f"{RATE_PREFIX}{metric}"] = math.nan if value is None else float(value)
        for col in VALUE_COLUMNS:
            metric = EXTRA_METRICS.get(col) or METRIC_OF_COLUMN[col]
            if col == "images/sec":
                metric = rate_metric
            value = run.get(f"{METRIC_PREFIX}{metric}") if finished else None
            if value is None or pd.isna(value):
                rec[col] = math.nan
            else:
                scale = 100.0 if col in PERCENT_COLUMNS or col in EXTRA_METRICS else 1.0
                rec[col] = float(value) * scale if float(value) >= 0 else math.nan
        records.append(rec)
    return pd.DataFrame(records)


def from_runs(df: pd.DataFrame, name: str) -> Reference:
    """Another run or sweep as the reference: its environment in the header, one row per
    (model, resolution, precision), the latest FINISHED run where there are several."""
    rows = run_rows(df)
    if rows.empty:
        raise ExportError(f"reference {name} has no benchmark runs")
    rows["_ok"] = rows["status"] == "ok"
    rows = (rows.sort_values(["_ok", "start_time"], kind="stable")
            .drop_duplicates(["model", "resolution", "precision"], keep="last")
            .drop(columns="_ok").reset_index(drop=True))
    meta = {"reference": name, "title": f"run(s) {name}",
            "source": f"{df['tracking_uri'].iloc[0]}"}
    meta["hardware"] = _joined(_device(r) for _, r in rows.iterrows())
    meta["software"] = _joined(f"TensorFlow {v}" for v in rows["tensorflow"] if isinstance(v, str))
    meta["tensorflow"] = _joined(v for v in rows["tensorflow"] if isinstance(v, str))
    meta["precision"] = _joined(v for v in rows["precision"] if v)
    meta["input_policy"] = _joined(v for v in rows["input_policy"] if isinstance(v, str))
    meta["dataset"] = _joined(v for v in rows["dataset"] if isinstance(v, str))
    images = rows.loc[rows["status"] == "ok", "images"].dropna()
    if len(images) and images.nunique() == 1:
        meta["images"] = str(int(images.iloc[0]))
    return Reference(name, rows, meta)


def _device(run: pd.Series) -> str:
    gpu = run.get("gpu_name")
    if isinstance(gpu, str) and gpu not in ("", "none"):
        return gpu
    cpu = run.get("cpu_model")
    return f"CPU {cpu}" if isinstance(cpu, str) and cpu else "unknown device"


def _joined(values: Any) -> str:
    return ", ".join(dict.fromkeys(str(v) for v in values))
