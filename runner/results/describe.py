"""How a run names and describes itself: the swept settings that tell runs of one sweep apart
(run names, table rows, plot labels) and the run's description in the MLflow UI (its table row
and headline numbers). No pandas here: the job itself imports this module."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from runner import config
from runner.results import table

#: Set by the sweep's parent callback for its jobs: the override keys the sweep varies.
SWEPT_ENV = "DETBENCH_SWEPT_KEYS"
VARIANT_TAG = "detbench.variant"
#: Already in every run name (model@resolution/precision) and table row.
NAMED_ELSEWHERE = ("model", "resolution", "precision")
#: Settings that do not change what a job measures (config.NOT_MEASURED) and Hydra's own.
NOT_MEASURED = (*config.NOT_MEASURED, "hydra")


def _key(override: str) -> str:
    return override.partition("=")[0].lstrip("+~")


def _covered(key: str, prefixes: Sequence[str]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def variant(overrides: Sequence[str], swept: Sequence[str] | None = None) -> str:
    """``"benchmark.warmup=5"``: the values of the keys a sweep varies (``swept``) beyond model,
    resolution and precision, as this job's overrides set them. Empty outside a sweep
    (``swept`` None: a single run keeps its plain name) and when the sweep varies nothing else."""
    if swept is None:
        return ""
    kept = []
    for item in overrides:
        key, sep, value = item.partition("=")
        name = key.lstrip("+~")
        if not sep or _covered(name, NAMED_ELSEWHERE) or _covered(name, NOT_MEASURED):
            continue
        if name not in swept:
            continue
        kept.append(f"{name}={value}")
    return " ".join(kept)


def swept_from_env() -> list[str] | None:
    value = os.environ.get(SWEPT_ENV)
    return None if value is None else [k for k in value.split(",") if k]


def swept_keys(task_overrides: Sequence[str],
               sweeper_params: Mapping[str, Any] | None) -> list[str]:
    """The keys a multirun varies: command-line overrides in sweep syntax (``a=1,2``,
    ``range(...)``, ``glob(...)``) and the sweeper's ``params`` (experiment configs)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    keys: list[str] = []
    try:
        parsed = OverridesParser.create().parse_overrides(list(task_overrides))
    except Exception:  # noqa: BLE001 - Hydra already accepted them; fall back to the params
        parsed = []
    for override in parsed:
        if override.is_sweep_override():
            keys.append(override.get_key_element().lstrip("+~"))
    for key in (sweeper_params or {}):
        keys.append(str(key).lstrip("+~"))
    return list(dict.fromkeys(keys))


def run_name(base: str, variant_text: str) -> str:
    """``demo@256x256/fp32 [benchmark.warmup=5]``: the base name, the variant when there is one."""
    return f"{base} [{variant_text}]" if variant_text else base


# -- the run's description in the MLflow UI -----------------------------------------------------


def _fmt(metrics: Mapping[str, float], key: str, scale: float = 1.0, digits: int = 2) -> str:
    value = metrics.get(key)
    if value is None:
        return "n/a"
    if value < 0 and key.startswith("bbox."):
        return table.NOT_APPLICABLE
    return f"{value * scale:.{digits}f}"


def headline(metrics: Mapping[str, float]) -> str:
    """One line of the numbers a reader looks for first (AP x100, as in the public table)."""
    parts = [f"**AP {_fmt(metrics, 'bbox.AP', 100)}**", f"AP50 {_fmt(metrics, 'bbox.AP50', 100)}",
             f"**{_fmt(metrics, 'images_per_sec')} images/sec**"]
    if "images_per_sec_ci_low" in metrics and "images_per_sec_ci_high" in metrics:
        parts[-1] += (f" (95% CI {metrics['images_per_sec_ci_low']:.2f}-"
                      f"{metrics['images_per_sec_ci_high']:.2f})")
    parts.append(f"latency mean {_fmt(metrics, 'latency_mean_ms')} ms, "
                 f"p99 {_fmt(metrics, 'latency_p99_ms')} ms")
    if "count" in metrics:
        parts.append(f"{int(metrics['count'])} calls timed")
    return " · ".join(parts)


def run_note(name: str, status: str, metrics: Mapping[str, float] | None,
             row: Mapping[str, str] | None, error: str | None = None,
             variant_text: str = "", stability: str | None = None) -> str:
    """The run's description (tag ``mlflow.note.content``, rendered as markdown at the top of
    the run page): status, headline numbers, the public table's row, what to read next."""
    lines = []  # paragraphs; the UI shows the first three lines until "Show more"
    if status != "FINISHED":
        lines.append(f"**{status}**: {error or 'no reason recorded'} (tag `error`, "
                     "artifact `error/traceback.txt`)")
    if metrics:
        lines.append(headline(metrics))
    lines.append(f"{name}" + (f" · swept settings: `{variant_text}`" if variant_text else ""))
    if stability:
        lines.append(f"Stability: {stability}")
    if row:
        lines.append(table.markdown([row]))
    lines.append("Artifacts: `table_row.md`, `latencies.csv`, `plots/`, `packages.txt`, "
                  "`environment.json`; all numbers under Model metrics.")
    return "\n\n".join(line for line in lines if line)


def sweep_note(name: str, command: str, table_md: str, counts: str,
               best: Mapping[str, float] | None = None) -> str:
    """The sweep parent's description: children by status and the best numbers first (the UI
    shows three lines until "Show more"), then the rendered table and the command."""
    first = f"**{name}**: children {counts}"
    if best:
        first += " · best: " + ", ".join(f"{k} {v:.2f}" for k, v in best.items())
    return (f"{first}\n\n{table_md}\n\n`{command}`\n\n"
            "Artifacts: `table.md`, `table.csv` and the plots of the children.")
