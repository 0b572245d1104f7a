"""The table says which method (benchmark.input_policy) each row was measured with, once a seed
row is among them (issue 12.4)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from runner.results import export
from tests.test_export import _frame


def test_method_column_names_each_rows_policy_when_a_seed_row_is_shown(tmp_path: Path) -> None:
    df = _frame({"metrics.bbox.AP": 0.5, "input_policy": "native"},
                {"metrics.bbox.AP": 0.4, "input_policy": "seed"})
    report = export.build_report(df)
    assert report.columns[-1] == export.METHOD_COLUMN
    assert [r[export.METHOD_COLUMN] for r in report.rows] == ["native", "seed"]
    assert list(report.frame["input_policy"]) == ["native", "seed"]  # table.csv: a meta column
    export.write_report(df, tmp_path)
    assert "| Method" in (tmp_path / "table.md").read_text().splitlines()[0]
    assert list(pd.read_csv(tmp_path / "table.csv")["input_policy"]) == ["native", "seed"]


def test_native_only_tables_keep_the_public_header() -> None:
    report = export.build_report(_frame({"metrics.bbox.AP": 0.5, "input_policy": "native"}))
    assert export.METHOD_COLUMN not in report.columns
    assert list(report.frame["input_policy"]) == ["native"]
