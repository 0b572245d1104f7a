"""Benchmark runs from any MLflow tracking store as a pandas DataFrame: which runs (filters),
their tags, params and latest metrics, and whether they come from one environment.

``load_runs(uri, filters)`` is what ``runner.results.export`` (the table, CSV and plots) and the
sweep's parent run (``runner.callbacks``) read.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import pandas as pd

from runner import tracking
from runner.tracking import resolve_uri

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
    "error_type": "error.type",
    "error_message": "error.message",
    "parent_run_id": "mlflow.parentRunId",
    "input_policy": "detbench.input_policy",
    "variant": "detbench.variant",  # the swept settings beyond model/resolution/precision
    "identity": "detbench.identity",  # hash of everything measured: repeats share it
    "stability": "detbench.stability",
}
#: Param behind each column of :func:`load_runs` (the comparison with references needs them).
PARAM_COLUMNS: dict[str, str] = {"num_images": "dataset.num_images", "repeats": "benchmark.repeats"}
RUN_COLUMNS: tuple[str, ...] = (
    "run_id", "run_name", "experiment_id", "experiment", "status", "start_time", "end_time",
    *TAG_COLUMNS, *PARAM_COLUMNS, "model_display", "precision_display", "artifact_uri",
    "tracking_uri", "machine_key",
)
SEARCH_PAGE = 1000


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
        **{col: params.get(name) for col, name in PARAM_COLUMNS.items()},
        "model_display": params.get("model.display_name") or tags.get("detbench.model"),
        "precision_display": (params.get("precision.display_name")
                              or tags.get("detbench.precision")),
        "artifact_uri": info.artifact_uri,
        "tracking_uri": uri,
        "machine_key": _machine_key(tags),
    }
    record.update({f"{METRIC_PREFIX}{k}": float(v) for k, v in data.metrics.items()
                   if not k.startswith(("sample.", "system/", "table/"))})
    return record


def _machine_key(tags: Mapping[str, str]) -> str | None:
    """env.key without a backend's environment fields (runtime package versions, which
    ``runner.backends`` adds to env.key): one machine and TensorFlow build, whatever runtime
    ran. Equal to env.key for a Native FP32 run."""
    if not tags.get("env.key"):
        return None
    from runner.environment import environment_key

    return environment_key(dict(tags))


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
    """None when the runs share one environment (runs without env.key do not count; runs of
    different runtimes on one machine share it: ``machine_key``); else the
    labels of :func:`environment_labels` if ``mix_environments``, else MixedEnvironmentsError."""
    keys = df["env_key"].dropna().unique()
    if len(keys) <= 1:
        return None
    machines = df["machine_key"].dropna().unique() if "machine_key" in df else []
    if len(machines) == 1 and df.loc[df["env_key"].notna(), "machine_key"].notna().all():
        return None  # one machine; rows differ in their runtime's packages only (issue 15)
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
