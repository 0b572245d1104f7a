"""The public table's columns (../shared/reference/seed_table.md) and how a run fills them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from runner.evaluate import STAT_NAMES

#: The public table's third column, headed "TF-TRT" there, holds the runtime and precision of
#: a row: "Native FP32" and "TF-TRT FP16" (the public table's labels) beside "LiteRT INT8" and
#: "ONNX Runtime FP32" (issue 15); read_table_csv renames the old header.
PRECISION_COLUMN = "Runtime/precision"
LEGACY_PRECISION_COLUMN = "TF-TRT"
#: Header of the public table, in order (its "ARmidium" spelled correctly; see PRECISION_COLUMN).
COLUMNS: tuple[str, ...] = (
    "Model", "Input", PRECISION_COLUMN,
    "AP", "AP50", "AP75", "APsmall", "APmedium", "APlarge",
    "ARmax=1", "ARmax=10", "ARmax=100", "ARsmall", "ARmedium", "ARlarge",
    "images/sec", "99th_percentile(ms)", "total_time(s)",
    "latency_mean(ms)", "latency_median(ms)", "latency_min(ms)",
)

#: column -> MLflow metric; COCO stats are logged as fractions and shown x100.
METRIC_OF_COLUMN: dict[str, str] = {
    **{col: f"bbox.{stat}" for col, stat in zip(COLUMNS[3:15], STAT_NAMES, strict=True)},
    "images/sec": "images_per_sec",
    "99th_percentile(ms)": "latency_p99_ms",
    "total_time(s)": "total_time_s",
    "latency_mean(ms)": "latency_mean_ms",
    "latency_median(ms)": "latency_median_ms",
    "latency_min(ms)": "latency_min_ms",
}
PERCENT_COLUMNS = frozenset(COLUMNS[3:15])
#: COCOeval's -1 ("no ground truth of this size/kind"): shown as this in table.md, table.csv
#: and left out of the plots, never as a number.
NOT_APPLICABLE = "n/a"
#: Columns an export adds: the environment of each row (mixed environments only), and the 95%
#: interval of images/sec (as text in table.md, as its two bounds in table.csv).
ENV_COLUMN = "Environment"
CI_COLUMN = "images/sec 95% CI"
CI_LOW, CI_HIGH = "images/sec_ci_low", "images/sec_ci_high"


def row(model: str, resolution: str, precision: str,
        metrics: Mapping[str, float]) -> dict[str, str]:
    """One table row, numbers formatted like the public table (AP x100, two decimals)."""
    out = {"Model": model, "Input": resolution, PRECISION_COLUMN: precision}
    for col, metric in METRIC_OF_COLUMN.items():
        value = metrics.get(metric)
        if value is None:
            out[col] = ""
        elif col in PERCENT_COLUMNS:
            out[col] = f"{value * 100:.2f}" if value >= 0 else NOT_APPLICABLE
        else:
            out[col] = f"{value:.2f}"
    return out


TEXT_COLUMNS = frozenset({"Model", "Input", PRECISION_COLUMN, "Variant", "Environment", "Method"})


def markdown(rows: Sequence[Mapping[str, str]], columns: Sequence[str] = COLUMNS,
             left: frozenset[str] = TEXT_COLUMNS) -> str:
    """A GitHub markdown table: text columns (``left``) left-aligned, numbers right-aligned."""
    widths = [max([len(c), *(len(r.get(c, "")) for r in rows)]) for c in columns]

    def fmt(values: Sequence[str]) -> str:
        cells = [v.ljust(w) if c in left else v.rjust(w)
                 for v, w, c in zip(values, widths, columns, strict=True)]
        return "| " + " | ".join(cells) + " |"

    rule = [":" + "-" * (w + 1) if c in left else "-" * (w + 1) + ":"
            for w, c in zip(widths, columns, strict=True)]
    lines = [fmt(list(columns)), "|" + "|".join(rule) + "|"]
    lines += [fmt([r.get(c, "") for c in columns]) for r in rows]
    return "\n".join(lines)
