"""runner.results.runs: filters (from mappings, to MLflow search strings) and environment labels."""

from __future__ import annotations

import pytest

from runner.results import runs
from runner.results.runs import ExportError, Filters


def test_filters_from_mappings() -> None:
    assert Filters.of({"models": "a", "parent": "p"}) == Filters(models=("a",), parent="p")
    assert Filters.of(None) == Filters()
    with pytest.raises(ExportError, match="unknown filter.*bogus.*valid: .*models"):
        Filters.of({"bogus": "x"})


def test_single_values_go_to_the_server_and_quotes_stay_here() -> None:
    flt = Filters(models=("a",), precisions=("x", "y"), statuses=("finished",), parent="p1")
    assert runs._server_filter(flt) == ("tags.`detbench.model` = 'a' and "
                                        "tags.`mlflow.parentRunId` = 'p1' and "
                                        "attributes.status = 'FINISHED'")
    assert runs._server_filter(Filters(models=("it's",))) == ""  # filtered client-side instead
