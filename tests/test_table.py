from __future__ import annotations

from pathlib import Path

from runner.evaluate import STAT_NAMES
from runner.results import table

SEED_TABLE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "seed_table.md"


def test_columns_match_public_table_header() -> None:
    expected = ("Model | Input | Runtime/precision | AP | AP50 | AP75 | APsmall | APmedium | "
                "APlarge | ARmax=1 | ARmax=10 | ARmax=100 | ARsmall | ARmedium | ARlarge | "
                "images/sec | 99th_percentile(ms) | total_time(s) | latency_mean(ms) | "
                "latency_median(ms) | latency_min(ms)")
    assert " | ".join(table.COLUMNS) == expected
    if SEED_TABLE.is_file():  # the reference beside the checkout, when present
        header = next(line for line in SEED_TABLE.read_text().splitlines()
                      if line.startswith("| Model"))
        cells = [c.strip() for c in header.strip("|").split("|")]
        cells = [table.PRECISION_COLUMN if c == table.LEGACY_PRECISION_COLUMN else c
                 for c in cells]  # the public table's "TF-TRT" column holds every runtime
        assert [c.replace("ARmidium", "ARmedium") for c in cells] == list(table.COLUMNS)


def test_row_formats_like_the_public_table() -> None:
    metrics = {f"bbox.{s}": 0.38471 for s in STAT_NAMES}
    metrics |= {"images_per_sec": 9.954, "latency_p99_ms": 103.956, "total_time_s": 497.4,
                "latency_mean_ms": 100.49, "latency_median_ms": 100.39, "latency_min_ms": 96.66}
    metrics["bbox.APsmall"] = -1.0
    row = table.row("CenterNet HourGlass104", "512x512", "Native FP32", metrics)
    assert row["AP"] == "38.47" and row["APsmall"] == "n/a"
    assert row["images/sec"] == "9.95" and row["99th_percentile(ms)"] == "103.96"
    md = table.markdown([row]).splitlines()
    assert md[0].startswith("| Model") and md[1].startswith("|:") and md[1].endswith(":|")
    assert len(md) == 3 and "38.47" in md[2]


def test_missing_metric_leaves_cell_empty() -> None:
    row = table.row("m", "r", "p", {})
    assert row["AP"] == "" and set(row) == set(table.COLUMNS)
