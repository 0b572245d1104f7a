"""runner.results.compare: measured runs against the published references.

- the shipped reference files against runner.zoo and (when present beside the checkout) the shared
  reference documents they were transcribed from;
- constructed MLflow stores (real SQLite stores, runs made with the MLflow client) for runs
  within and outside the tolerance, subset runs, failed rows on either side, the public table's
  images/sec definition, ``auto`` (``make table``) and two environments (run / sweep vs sweep);
- a sweep the runner itself made on the demo (full validation split and an 8-image subset) with
  the SweepParentRun callback comparing it with a reference file written here from the demo's
  figures in README.md.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from runner import zoo
from runner.callbacks import PARENT_ENV, SWEEP_TAG
from runner.evaluate import STAT_NAMES
from runner.results import compare, export, references
from runner.results.references import VALUE_COLUMNS
from runner.results.runs import ExportError, load_runs
from runner.results.table import COLUMNS, LEGACY_PRECISION_COLUMN, PRECISION_COLUMN
from tests.conftest import ROOT, check_png

#: The reference documents beside the checkout (../shared/reference), or where
#: $DETBENCH_SHARED_REFERENCE points.
SHARED = Path(os.environ.get("DETBENCH_SHARED_REFERENCE", ROOT.parent / "shared" / "reference"))
CALLBACK = "++hydra.callbacks.sweep_parent._target_=runner.callbacks.SweepParentRun"
RUNNER_TIMEOUT_S = 300
FULL = 5000


# -- the shipped references ---------------------------------------------------------------------


def test_shipped_references_name_their_source_and_follow_the_catalogue() -> None:
    zoo_ref, public = references.load("zoo"), references.load("public")
    for ref in (zoo_ref, public):
        assert ref.meta["source"] and ref.meta["hardware"] and ref.meta["software"]
        assert ref.images == FULL and ref.meta["dataset"] == "COCO 2017 val"
        assert list(zip(ref.rows["model"], ref.rows["resolution"], strict=True)) == \
            zoo.public_table_rows()
    assert "P100" in public.meta["hardware"] and public.meta["tensorflow"] == "2.4.1"
    assert public.input_policy == "seed" and zoo_ref.input_policy == "native"
    assert public.rate_metric == "images_per_sec_mean_of_rates"
    for _, row in zoo_ref.rows.iterrows():
        archive = zoo.get(row["model"]).archive(row["resolution"])
        assert row["latency_mean(ms)"] == archive.published_ms
        assert row["AP"] == float(archive.published_map.split("/")[0])
        second = archive.published_map.split("/")[1:]
        assert [f"{v:.1f}" for v in (row["AP(keypoints)"], row["AP(masks)"]) if pd.notna(v)] == \
            second
    failed = public.rows[public.rows["status"] == "failed"]
    assert list(failed["model"]) == ["centernet_mobilenetv2_fpn", "centernet_mobilenetv2_fpn_kpts"]
    assert failed[list(VALUE_COLUMNS)].isna().all().all()  # failed there: no numbers, no zeros
    assert (failed["note"].str.contains("error inference")).all()
    ok = public.rows[public.rows["status"] == "ok"]
    assert ok[list(COLUMNS[3:])].notna().all().all() and (ok["AP"] > 0).all()


def _md_rows(text: str, after: str) -> list[list[str]]:
    section = text.split(after, 1)[1]
    rows: list[list[str]] = []
    for line in section.splitlines():
        if not line.startswith("|"):
            if rows:
                break
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not set("".join(cells)) <= set(":- "):
            rows.append(cells)
    return rows


@pytest.mark.skipif(not (SHARED / "zoo.md").is_file(),
                    reason=f"the shared reference documents are not beside this checkout "
                           f"({SHARED}); set DETBENCH_SHARED_REFERENCE to check against them")
def test_shipped_references_equal_the_shared_documents() -> None:
    catalogue = _md_rows((SHARED / "zoo.md").read_text(), "## Catalogue")[1:]
    zoo_ref = references.load("zoo").rows
    assert len(catalogue) == len(zoo_ref) == 41
    for (_, archive, resolution, ms, mean_ap, outputs), (_, row) in zip(
            catalogue, zoo_ref.iterrows(), strict=True):
        assert zoo.get(row["model"]).archive(row["resolution"]).archive == archive.split()[0]
        assert row["resolution"] == resolution and row["latency_mean(ms)"] == float(ms)
        figures = [float(v) for v in mean_ap.split("/")]
        assert row["AP"] == figures[0]
        extra = "AP(keypoints)" if "keypoints" in outputs else "AP(masks)"
        assert (row[extra] if len(figures) > 1 else math.nan) == pytest.approx(
            figures[1] if len(figures) > 1 else math.nan, nan_ok=True)

    seed = (SHARED / "seed_table.md").read_text()
    header, *table = _md_rows(seed, "## The table")
    public = references.load("public")
    assert len(table) == len(public.rows) == 41
    # the original spells ARmedium "ARmidium" and heads the runtime column "TF-TRT"
    spelling = {"ARmidium": "ARmedium", LEGACY_PRECISION_COLUMN: PRECISION_COLUMN}
    assert [spelling.get(h, h) for h in header] == list(COLUMNS)
    for cells, (_, row) in zip(table, public.rows.iterrows(), strict=True):
        assert (row["display_name"], row["resolution"], row["precision"]) == tuple(cells[:3])
        numbers = [float(c) for c in cells[3:]]
        if all(v == 0 for v in numbers):
            assert row["status"] == "failed"
        else:
            assert row["status"] == "ok"
            assert [row[c] for c in COLUMNS[3:]] == numbers
    for fact in ("Tesla P100", "TensorFlow 2.4.1", "Intel Xeon 2.30 GHz 4 cores", "25 GB RAM"):
        assert fact in " ".join(seed.split()) and fact in public.header()


# -- constructed stores -------------------------------------------------------------------------


@dataclass
class Store:
    """One experiment of the module's SQLite store (a new store costs about 9 s here)."""

    uri: str
    client: MlflowClient
    experiment: str
    name: str

    def parent(self, name: str) -> str:
        return str(self.client.create_run(self.experiment, run_name=name,
                                          tags={SWEEP_TAG: "true"}).info.run_id)

    def run(self, model: str, resolution: str, ap: float | None, *, parent: str | None = None,
            policy: str = "native", precision: str = "Native FP32", images: int = FULL,
            latency_ms: float = 50.0, env: tuple[str, str, str] = ("k1", "NVIDIA A100", "2.17.0"),
            error: str | None = None, rates: tuple[float, float] | None = None,
            asked: int | None = None) -> str:
        """A benchmark run as the runner logs it: tags, params, metrics (AP as a fraction)."""
        key, gpu, tf = env
        tags = {"detbench.model": model, "detbench.resolution": resolution,
                "detbench.precision": precision.lower().replace(" ", "_"),
                "detbench.dataset": "COCO 2017 val", "detbench.input_policy": policy,
                "env.key": key, "env.gpu_name": gpu, "env.tensorflow": tf, "env.cpu_model": "x"}
        if parent:
            tags["mlflow.parentRunId"] = parent
        if error:
            tags["error"] = error
        run_id = self.client.create_run(self.experiment, run_name=f"{model}@{resolution}",
                                        tags=tags).info.run_id
        display = zoo.get(model).display_name if model in zoo.MODELS else model
        params = {"model.display_name": display, "precision.display_name": precision,
                  "dataset.num_images": str(asked) if asked else "None", "benchmark.repeats": "1"}
        metrics: dict[str, float] = {}
        if ap is not None:
            per_sec, mean_rates = rates or (1000.0 / latency_ms, 1000.0 / latency_ms)
            metrics = {f"bbox.{s}": ap / 100.0 for s in STAT_NAMES}
            metrics |= {"count": float(images), "images_per_sec": per_sec,
                        "images_per_sec_mean_of_rates": mean_rates,
                        "latency_mean_ms": latency_ms, "latency_median_ms": latency_ms,
                        "latency_min_ms": latency_ms * 0.9, "latency_p99_ms": latency_ms * 1.2,
                        "total_time_s": latency_ms * images / 1000.0}
        self.client.log_batch(run_id, metrics=[Metric(k, v, 0, 0) for k, v in metrics.items()],
                              params=[Param(k, v) for k, v in params.items()])
        self.client.set_terminated(run_id, "FAILED" if error else "FINISHED")
        return str(run_id)


@pytest.fixture(scope="module")
def store_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("constructed")


@pytest.fixture
def store(store_path: Path, request: pytest.FixtureRequest) -> Store:
    """A fresh experiment named after the test, in the module's store."""
    return _experiment(store_path, request.node.name)


def _experiment(path: Path, name: str) -> Store:
    uri = f"sqlite:///{path / 'store.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment(name, artifact_location=str(path / name))
    return Store(uri, client, experiment, name)


def _published(name: str, model: str, resolution: str, column: str = "AP") -> float:
    rows = references.load(name).rows
    row = rows[(rows["model"] == model) & (rows["resolution"] == resolution)].iloc[0]
    return float(row[column])


def _export(store: Store, out: Path, *args: str) -> tuple[int, str]:
    import contextlib
    import io

    buf, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(err):
        rc = export.main(["--uri", store.uri, "--experiment", store.name, "--out", str(out),
                          *args])
    return rc, buf.getvalue() + err.getvalue()


def _verdicts(out: Path) -> dict[str, pd.Series]:
    frame = pd.read_csv(out / "comparison.csv", dtype={"run_id": str})
    return {row["run_id"]: row for _, row in frame.iterrows()}


def test_zoo_within_and_outside_tolerance(store: Store, tmp_path: Path) -> None:
    d0 = _published("zoo", "efficientdet_d0", "512x512")
    ssd = _published("zoo", "ssd_mobilenet_v2", "320x320")
    frcnn = _published("zoo", "faster_rcnn_resnet50_v1", "640x640")
    within = store.run("efficientdet_d0", "512x512", d0 + 0.25, latency_ms=78.0)
    outside = store.run("ssd_mobilenet_v2", "320x320", ssd - 0.5)
    seeded = store.run("faster_rcnn_resnet50_v1", "640x640", frcnn - 1.4, policy="seed",
                       precision="TF-TRT FP16")
    rc, printed = _export(store, tmp_path / "out", "--compare", "zoo")
    assert rc == 0, printed
    assert "Reference zoo: TF2 Detection Model Zoo" in printed and "V100" in printed
    assert "NVIDIA A100, TF 2.17.0" in printed  # the measured side's hardware and software
    assert "box AP tolerance 0.3 points" in printed
    rows = _verdicts(tmp_path / "out")
    assert rows[within]["verdict"] == "reproduced"
    assert rows[within]["diff AP"] == pytest.approx(0.25)
    assert rows[within]["diff latency_mean(ms)"] == pytest.approx(
        78.0 / _published("zoo", "efficientdet_d0", "512x512", "latency_mean(ms)"))
    assert pd.isna(rows[within]["diff AP50"])  # the zoo publishes box mAP only
    assert rows[outside]["verdict"] == "outside"
    assert rows[outside]["diff AP"] == pytest.approx(-0.5)
    assert "no difference known here" in rows[outside]["likely_causes"]
    assert rows[seeded]["verdict"] == "outside"
    causes = rows[seeded]["likely_causes"]
    assert "input policy seed vs native" in causes and "precision TF-TRT FP16" in causes
    table = (tmp_path / "out" / "comparison.md").read_text()
    assert "reproduced: \\|+0.25\\| <= 0.3" in table and "OUTSIDE: \\|-0.50\\| > 0.3" in table
    assert table.count("| measured ") == 3 and table.count("| difference ") == 3
    check_png(tmp_path / "out" / "comparison.png", (1800, 600))

    rc, _ = _export(store, tmp_path / "strict", "--compare", "zoo", "--tolerance", "0.2")
    assert rc == 0 and _verdicts(tmp_path / "strict")[within]["verdict"] == "outside"
    rc, _ = _export(store, tmp_path / "loose", "--compare", "zoo", "--tolerance", "native=0.6")
    loose = _verdicts(tmp_path / "loose")
    assert rc == 0 and loose[outside]["verdict"] == "reproduced"
    assert loose[outside]["tolerance"] == 0.6


def test_subset_runs_are_labelled_and_never_reproduced(store: Store, tmp_path: Path) -> None:
    d0 = _published("public", "efficientdet_d0", "512x512")
    subset = store.run("efficientdet_d0", "512x512", d0, policy="seed", images=500, asked=500)
    rc, printed = _export(store, tmp_path / "out", "--compare", "public")
    assert rc == 0, printed
    row = _verdicts(tmp_path / "out")[subset]
    assert row["diff AP"] == pytest.approx(0.0) and row["verdict"] == "subset"
    assert "500 of 5000 images" in row["verdict_text"] and "not a reproduction" in printed
    assert pd.isna(row["diff total_time(s)"])  # sums over different image counts: no ratio
    assert row["diff AP50"] == pytest.approx(d0 - _published("public", "efficientdet_d0",
                                                                 "512x512", "AP50"))


def test_failed_rows_on_either_side(store: Store, tmp_path: Path) -> None:
    failed = store.run("efficientdet_d1", "640x640", None, policy="seed",
                       error="JobFailed: ResourceExhaustedError: OOM when allocating")
    there = store.run("centernet_mobilenetv2_fpn", "512x512", 22.0, policy="seed")
    rc, printed = _export(store, tmp_path / "out", "--compare", "public")
    assert rc == 0, printed
    rows = _verdicts(tmp_path / "out")
    assert rows[failed]["verdict"] == "failed" and "OOM" in rows[failed]["verdict_text"]
    assert rows[there]["verdict"] == "failed there"
    assert "error inference" in rows[there]["verdict_text"]
    assert rows[there]["AP"] == pytest.approx(22.0) and pd.isna(rows[there]["ref AP"])
    assert rows[there][[f"diff {c}" for c in VALUE_COLUMNS]].isna().all()
    table = (tmp_path / "out" / "comparison.md").read_text()
    assert "| failed there |" in table.replace("  ", " ") or "failed there" in table
    assert "0.00 |" not in table.split("CenterNet MobileNetV2 FPN", 1)[1].splitlines()[1]


def test_public_images_per_sec_is_held_against_the_mean_of_rates(store: Store,
                                                                 tmp_path: Path) -> None:
    ref_rate = _published("public", "ssd_mobilenet_v2", "320x320", "images/sec")
    run = store.run("ssd_mobilenet_v2", "320x320", 20.0, policy="seed",
                    rates=(ref_rate * 3.0, ref_rate * 2.0))
    assert _export(store, tmp_path / "p", "--compare", "public")[0] == 0
    assert _verdicts(tmp_path / "p")[run]["diff images/sec"] == pytest.approx(2.0)
    assert "images_per_sec_mean_of_rates" in (tmp_path / "p" / "comparison.md").read_text()


def test_make_table_compares_each_run_with_the_reference_of_its_policy(store: Store,
                                                                       tmp_path: Path) -> None:
    native = store.run("efficientdet_d0", "512x512", _published("zoo", "efficientdet_d0",
                                                                "512x512"))
    seed = store.run("efficientdet_d0", "512x512", _published("public", "efficientdet_d0",
                                                              "512x512") + 0.1, policy="seed")
    paths = export.write_report(load_runs(store.uri, {"experiments": store.name}),
                                tmp_path / "t")
    assert {"comparison.md", "comparison.csv", "comparison.png"} <= {p.name for p in paths}
    rows = _verdicts(tmp_path / "t")
    assert rows[native]["reference"] == "zoo" and rows[seed]["reference"] == "public"
    assert rows[native]["verdict"] == rows[seed]["verdict"] == "reproduced"
    check_png(tmp_path / "t" / "comparison.png", (1800, 600))
    # runs no reference knows: the table alone, no comparison files
    other = _experiment(Path(store.uri.removeprefix("sqlite:///")).parent, f"{store.name}-o")
    other.run("demo", "256x256", 70.0)
    names = {p.name for p in export.write_report(load_runs(other.uri, {"experiments": other.name}),
                                                 tmp_path / "o")}
    assert names.isdisjoint({"comparison.md", "comparison.png"})


def test_sweep_against_sweep_in_two_environments(store: Store, tmp_path: Path) -> None:
    old_env, new_env = ("k1", "Tesla P100", "2.4.1"), ("k2", "NVIDIA H100", "2.17.0")
    before, after = store.parent("sweep before"), store.parent("sweep after")
    store.run("efficientdet_d0", "512x512", 33.0, parent=before, env=old_env, latency_ms=100.0)
    store.run("ssd_mobilenet_v2", "320x320", 20.0, parent=before, env=old_env, latency_ms=40.0)
    same = store.run("efficientdet_d0", "512x512", 33.1, parent=after, env=new_env,
                     latency_ms=25.0)
    trt = store.run("ssd_mobilenet_v2", "320x320", 18.0, parent=after, env=new_env,
                    latency_ms=8.0, precision="TF-TRT INT8")
    rc, printed = _export(store, tmp_path / "out", "--compare", before, "--parent", after)
    assert rc == 0, printed
    assert f"Reference sweep {before[:8]}" in printed and "Tesla P100" in printed
    assert "NVIDIA H100, TF 2.17.0" in printed
    rows = _verdicts(tmp_path / "out")
    assert set(rows) == {same, trt}
    assert rows[same]["verdict"] == "reproduced"
    assert rows[same]["diff latency_mean(ms)"] == pytest.approx(0.25)
    assert rows[trt]["verdict"] == "outside" and rows[trt]["diff AP"] == pytest.approx(-2.0)
    assert rows[trt]["ref precision"] == "Native FP32"
    assert "precision TF-TRT INT8 vs Native FP32" in rows[trt]["likely_causes"]
    assert "TensorFlow 2.17.0 vs 2.4.1" in rows[trt]["likely_causes"]
    # without filters: every run but the reference's own (the other sweep's children)
    rc, _ = _export(store, tmp_path / "all", "--compare", before)
    assert rc == 0 and set(_verdicts(tmp_path / "all")) == {same, trt}
    # one run against another
    rc, _ = _export(store, tmp_path / "one", "--compare", same, "--parent", before)
    one = _verdicts(tmp_path / "one")
    assert rc == 0 and [r["verdict"] for r in one.values()] == ["reproduced", "no reference"]
    # every selected run is the reference: refused, not an empty comparison
    rc, printed = _export(store, tmp_path / "self", "--compare", before, "--parent", before)
    assert rc == 2 and "every selected run is part of the reference" in printed


def test_sweep_parent_gets_summary_metrics_and_children_their_differences(store: Store,
                                                                          tmp_path: Path) -> None:
    parent = store.parent("sweep")
    d0 = _published("zoo", "efficientdet_d0", "512x512")
    ok = store.run("efficientdet_d0", "512x512", d0 - 0.2, parent=parent)
    far = store.run("efficientdet_d1", "640x640", _published("zoo", "efficientdet_d1", "640x640")
                    + 0.9, parent=parent)
    sub = store.run("efficientdet_d2", "768x768", 40.0, parent=parent, images=100, asked=100)
    store.run("efficientdet_d3", "896x896", None, parent=parent, error="OSError: gone")
    children = load_runs(store.uri, {"parent": parent})
    compare.log_to_runs(store.uri, parent, children)
    metrics = store.client.get_run(parent).data.metrics
    assert metrics["compare.rows"] == 4 and metrics["compare.rows_within_tolerance"] == 1
    assert metrics["compare.rows_outside_tolerance"] == 1 and metrics["compare.rows_subset"] == 1
    assert metrics["compare.rows_failed"] == 1
    assert metrics["compare.max_abs_ap_diff"] == pytest.approx(
        abs(40.0 - _published("zoo", "efficientdet_d2", "768x768")))
    mine = store.client.get_run(ok).data.metrics
    assert mine["compare.bbox.AP_diff"] == pytest.approx(-0.2)
    assert mine["compare.within_tolerance"] == 1 and mine["compare.subset"] == 0
    assert store.client.get_run(far).data.metrics["compare.within_tolerance"] == 0
    assert store.client.get_run(sub).data.metrics["compare.subset"] == 1
    artifacts = {f.path for f in store.client.list_artifacts(parent)}
    assert {"comparison.md", "comparison.csv", "comparison.png"} <= artifacts


def test_bad_compare_input_is_refused_with_the_choices(store: Store, tmp_path: Path) -> None:
    store.run("efficientdet_d0", "512x512", 30.0)
    rc, printed = _export(store, tmp_path / "a", "--compare", "zoo2")
    assert rc == 2 and "--compare 'zoo2' is not valid; choices: zoo, public, auto" in printed
    rc, printed = _export(store, tmp_path / "b", "--compare", "0" * 32)
    assert rc == 2 and "no benchmark run and no sweep with that id" in printed
    rc, printed = _export(store, tmp_path / "c", "--compare", "zoo", "--tolerance", "-1")
    assert rc == 2 and "--tolerance '-1' is not valid" in printed
    bad = tmp_path / "bad.csv"
    bad.write_text("# source: here\nname,AP\nx,1\n")
    rc, printed = _export(store, tmp_path / "d", "--compare", str(bad))
    assert rc == 2 and "lacks the column(s) model, resolution" in printed
    rc, printed = _export(store, tmp_path / "e", "--compare", str(tmp_path / "missing.csv"))
    assert rc == 2 and "cannot read reference file" in printed
    assert not any((tmp_path / d).exists() for d in "abcde")  # refused before writing anything
    with pytest.raises(ExportError, match="images_per_sec_metric 'fps' is not valid"):
        bad.write_text("# images_per_sec_metric: fps\nmodel,resolution,AP\nx,1,2\n")
        references.read_file(bad)


# -- on the runner's own runs -------------------------------------------------------------------


def _demo_reference(path: Path) -> dict[str, float]:
    """The demo's figures in README.md's quick start (the columns it shows) as a reference file;
    returns them."""
    lines = (ROOT / "README.md").read_text().splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| Model"))
    names = [c.strip() for c in lines[header].strip().strip("|").split("|")]
    demo = next(line for line in lines[header:] if line.startswith("| Demo CenterNet"))
    cells = [c.strip() for c in demo.strip().strip("|").split("|")]
    figures = {n: float(c) for n, c in zip(names, cells, strict=True)
               if n in VALUE_COLUMNS and re.fullmatch(r"[\d.]+", c)}
    assert {"AP", "AP50", "latency_mean(ms)"} <= set(figures)
    images = re.search(r"synthetic\s+validation split \((\d+) images", " ".join(lines))
    assert images, "README no longer says how many images the demo's split has"
    path.write_text(
        "# reference: demo\n# title: the demo's figures in README.md\n"
        "# source: README.md, Quick start (make bench)\n# hardware: the project's 2-core CPU\n"
        "# software: TensorFlow (see the run)\n# precision: Native FP32\n# input_policy: native\n"
        f"# dataset: Synthetic shapes val\n# images: {images.group(1)}\n"
        f"model,resolution,display_name,precision,{','.join(figures)}\n"
        f"demo,256x256,Demo CenterNet (synthetic),Native FP32,"
        f"{','.join(str(v) for v in figures.values())}\n")
    return figures


@dataclass
class DemoSweep:
    uri: str
    reference: Path
    figures: dict[str, float]
    parent: str
    children: list[str]  # full split, then the 8-image subset


@pytest.fixture(scope="module")
def demo_sweep(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Iterator[DemoSweep]:
    base = tmp_path_factory.mktemp("compare")
    reference = base / "demo_reference.csv"
    figures = _demo_reference(reference)
    uri = f"sqlite:///{base / 'mlflow.db'}"
    env = {k: v for k, v in os.environ.items() if k != PARENT_ENV}
    env |= {"DETBENCH_CACHE": str(cache_dir), "TF_CPP_MIN_LOG_LEVEL": "2",
            "MLFLOW_TRACKING_URI": uri}
    cmd = [sys.executable, "-m", "runner", "-m", "dataset.num_images=null,8",
           "benchmark.warmup=2", "benchmark.isolate=false", f"tracking.uri={uri}",
           f"hydra.sweep.dir={base / 'multi'}",
           CALLBACK, f"++hydra.callbacks.sweep_parent.compare={reference}"]
    done = subprocess.run(cmd, cwd=base, env=env, capture_output=True, text=True,
                          timeout=RUNNER_TIMEOUT_S, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    client = MlflowClient(uri)
    ids = [e.experiment_id for e in client.search_experiments()]
    (parent,) = client.search_runs(ids, f"tags.`{SWEEP_TAG}` = 'true'")
    children = sorted(client.search_runs(ids, f"tags.`mlflow.parentRunId` = "
                                              f"'{parent.info.run_id}'"),
                      key=lambda r: r.info.start_time)
    yield DemoSweep(uri, reference, figures, parent.info.run_id,
                    [r.info.run_id for r in children])


@pytest.mark.slow
def test_demo_sweep_parent_and_children_carry_the_comparison(demo_sweep: DemoSweep) -> None:
    client = MlflowClient(demo_sweep.uri)
    parent = client.get_run(demo_sweep.parent)
    assert "detbench.compare_error" not in parent.data.tags
    metrics = parent.data.metrics
    assert metrics["compare.rows"] == 2 and metrics["compare.rows_within_tolerance"] == 1
    assert metrics["compare.rows_subset"] == 1
    full, subset = (client.get_run(r) for r in demo_sweep.children)
    ap = demo_sweep.figures["AP"]
    for run in (full, subset):
        assert run.data.metrics["compare.bbox.AP_diff"] == pytest.approx(
            run.data.metrics["bbox.AP"] * 100 - ap)
        assert run.data.metrics["compare.latency_mean_ratio"] == pytest.approx(
            run.data.metrics["latency_mean_ms"] / demo_sweep.figures["latency_mean(ms)"])
    assert full.data.metrics["compare.within_tolerance"] == 1  # README's AP reproduced here
    assert subset.data.metrics["compare.subset"] == 1
    assert subset.data.metrics["compare.within_tolerance"] == 0
    assert metrics["compare.max_abs_ap_diff"] == pytest.approx(max(
        abs(r.data.metrics["compare.bbox.AP_diff"]) for r in (full, subset)))
    artifacts = {f.path for f in client.list_artifacts(demo_sweep.parent)}
    assert {"comparison.md", "comparison.csv", "comparison.png", "table.md"} <= artifacts


@pytest.mark.slow
def test_demo_cli_comparison_with_its_reference_file(demo_sweep: DemoSweep, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cmp"
    assert export.main(["--uri", demo_sweep.uri, "--out", str(out),
                        "--compare", str(demo_sweep.reference)]) == 0
    printed = capsys.readouterr().out
    assert "Reference demo: the demo's figures in README.md" in printed
    assert "Verdicts: 1 reproduced, 1 subset" in printed
    assert "subset: 8 of 200 images (dataset.num_images), not a reproduction" in printed
    rows = _verdicts(out)
    full = rows[demo_sweep.children[0]]
    assert full["verdict"] == "reproduced" and full["images"] == 200
    assert full["ref AP"] == demo_sweep.figures["AP"]
    check_png(out / "comparison.png", (1800, 600))
