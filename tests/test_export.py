"""runner.results.export on runs the runner itself produced: once per module, a sweep of two
jobs (with the SweepParentRun callback) and one failing job (a garbage SavedModel), into an
embedded SQLite store and (for the slow lane's HTTP test) again over HTTP into a real
``mlflow server``; plus unit cases on hand-made frames."""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from runner.callbacks import PARENT_ENV, SWEEP_TAG
from runner.config import BenchmarkConfig
from runner.results import export, plots, runs
from runner.results.export import write_report
from runner.results.runs import RUN_COLUMNS, ExportError, MixedEnvironmentsError, load_runs
from runner.results.table import (
    CI_COLUMN,
    CI_HIGH,
    CI_LOW,
    COLUMNS,
    ENV_COLUMN,
    METRIC_OF_COLUMN,
    PERCENT_COLUMNS,
    PRECISION_COLUMN,
)
from tests.conftest import CONF_DIR, check_png

CALLBACK = "++hydra.callbacks.sweep_parent._target_=runner.callbacks.SweepParentRun"
PLOTS = ("latency_mean.png", "ap_vs_latency.png", "throughput.png")
SMALL_BAR_PX = (1000, 400)  # bar_size_in(n) for n <= 9 bars, at 100 dpi
RUNNER_TIMEOUT_S = 240


# -- producing the runs -------------------------------------------------------------------------


@dataclasses.dataclass
class Server:
    """``mlflow server`` on 127.0.0.1 in its own process group (uvicorn runs as a child)."""

    port: int
    proc: subprocess.Popen[bytes]
    db: Path
    log: Path

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @classmethod
    def start(cls, folder: Path) -> Server:
        folder.mkdir(parents=True)
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        db, log = folder / "server.db", folder / "server.log"
        cmd = [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1",
               "--port", str(port), "--workers", "1", "--backend-store-uri", f"sqlite:///{db}",
               "--artifacts-destination", str(folder / "artifacts"),
               "--allowed-hosts", f"127.0.0.1:{port},localhost:{port}"]
        with log.open("wb") as out:
            proc = subprocess.Popen(cmd, cwd=folder, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        return cls(port, proc, db, log)

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def wait_ready(self, timeout_s: float = 180.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.healthy():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server not up:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.3)

    def stop(self) -> None:
        if self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def _model_options() -> tuple[str, str]:
    """(the default model, the custom SavedModel) as config group options, wherever they live."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        default = str(compose(config_name="config",
                              return_hydra_config=True).hydra.runtime.choices.model)
    found = sorted(CONF_DIR.glob("model/**/custom.yaml"))
    assert found, "no conf/model/**/custom.yaml"
    return default, found[0].relative_to(CONF_DIR / "model").with_suffix("").as_posix()


def _common(uri: str) -> list[str]:
    small = ["dataset.num_images=8", "benchmark.warmup=1", f"tracking.uri={uri}"]
    if "isolate" in {f.name for f in dataclasses.fields(BenchmarkConfig)}:
        small.append("benchmark.isolate=false")  # one TensorFlow start per process, not per job
    return small


def _sweep(uri: str, work: Path, garbage: Path) -> list[str]:
    """One process, 4 jobs: the demo twice (two percentile methods), then the custom model on a
    garbage SavedModel twice (FAILED runs); the SweepParentRun callback on."""
    default, custom = _model_options()
    return ["-m", f"model={default},{custom}", f"model.path={garbage}",
            "benchmark.percentile_method=linear,lower", f"hydra.sweep.dir={work / 'multi'}",
            CALLBACK, *_common(uri)]


def _produce(uri: str, work: Path, garbage: Path, env: dict[str, str]) -> None:
    work.mkdir(parents=True, exist_ok=True)
    log = work / "runner.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "runner", *_sweep(uri, work, garbage)],
                                cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT)
    _wait(proc, log)


def _wait(proc: subprocess.Popen[bytes], log: Path) -> None:
    try:
        rc = proc.wait(timeout=RUNNER_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise
    runs = sum(line.startswith("MLflow run ") for line in log.read_text().splitlines())
    if rc not in (0, 1) or runs != 4:  # 1: the sweep says some jobs failed
        raise RuntimeError(f"runner exited {rc} after {runs} runs:\n{log.read_text()[-4000:]}")


@dataclasses.dataclass
class Produced:
    base: Path
    uri: str  # the embedded SQLite store
    garbage: Path  # the garbage SavedModel the sweep's custom model points at
    env: dict[str, str]

    @property
    def db(self) -> Path:
        return self.base / "embedded" / "mlflow.db"


@pytest.fixture(scope="module")
def produced(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Produced:
    base = tmp_path_factory.mktemp("export")
    garbage = base / "garbage_model"
    garbage.mkdir()
    (garbage / "saved_model.pb").write_bytes(b"\x00garbage, not a SavedModel")
    env = {k: v for k, v in os.environ.items() if k != PARENT_ENV}
    env |= {"DETBENCH_CACHE": str(cache_dir), "TF_CPP_MIN_LOG_LEVEL": "2"}
    uri = f"sqlite:///{base / 'embedded' / 'mlflow.db'}"
    _produce(uri, base / "embedded", garbage, env | {"MLFLOW_TRACKING_URI": uri})
    return Produced(base, uri, garbage, env)


@pytest.fixture(scope="module")
def http_server(produced: Produced) -> Iterator[Server]:
    """The same sweep again, over HTTP into a real ``mlflow server``: a second runner process and a
    server, for the slow lane's HTTP test only."""
    server = Server.start(produced.base / "server")
    try:
        server.wait_ready()
        _produce(server.uri, produced.base / "http", produced.garbage,
                 produced.env | {"MLFLOW_TRACKING_URI": server.uri})
        yield server
    finally:
        server.stop()


# -- helpers ------------------------------------------------------------------------------------


def _runs(uri: str) -> list[Run]:
    """The benchmark runs (not the sweep parent), oldest first."""
    client = MlflowClient(uri)
    ids = [e.experiment_id for e in client.search_experiments()]
    runs = [r for r in client.search_runs(ids) if "detbench.model" in r.data.tags]
    return sorted(runs, key=lambda r: r.info.start_time)


def _parse(path: Path) -> tuple[list[str], list[list[str]]]:
    header, rule, *rows = path.read_text().splitlines()
    assert set(rule) <= set("|:-")

    def cells(line: str) -> list[str]:
        return [c.strip() for c in line.strip()[1:-1].split(" | ")]

    return cells(header), [cells(r) for r in rows]


def _expected_cells(metrics: dict[str, float]) -> dict[str, str]:
    """The public table's formatting: COCO stats x100, two decimals everywhere."""
    return {col: f"{metrics[m] * (100 if col in PERCENT_COLUMNS else 1):.2f}"
            for col, m in METRIC_OF_COLUMN.items()}


def _columns(runs: list[Run]) -> list[str]:
    """The public table's columns, with ``Variant`` after the first three when runs have swept
    settings (this module's sweep varies benchmark.percentile_method)."""
    if any(r.data.tags.get("detbench.variant") for r in runs):
        return [*COLUMNS[:3], export.VARIANT_COLUMN, *COLUMNS[3:]]
    return list(COLUMNS)


def _check_table_against_runs(path: Path, runs: list[Run]) -> None:
    header, rows = _parse(path)
    assert header == _columns(runs)
    assert len(rows) == len(runs)
    for cells, run in zip(rows, runs, strict=True):
        row = dict(zip(header, cells, strict=True))
        if export.VARIANT_COLUMN in row:
            assert row[export.VARIANT_COLUMN] == run.data.tags.get("detbench.variant", "")
        assert row["Model"] == run.data.params["model.display_name"]
        assert row["Input"] == run.data.tags["detbench.resolution"]
        assert row[PRECISION_COLUMN] == run.data.params["precision.display_name"]
        if run.info.status == "FINISHED":
            m = run.data.metrics
            assert row["AP"] == f"{m['bbox.AP'] * 100:.2f}"
            assert row["images/sec"] == f"{m['images_per_sec']:.2f}"
            assert row["latency_mean(ms)"] == f"{m['latency_mean_ms']:.2f}"
            assert {c: row[c] for c in METRIC_OF_COLUMN} == _expected_cells(m)
        else:
            assert run.info.status == "FAILED"
            assert row["AP"].startswith("failed: ") and "OSError" in row["AP"]
            assert len(row["AP"]) <= len("failed: ") + export.ERROR_CHARS
            assert all(row[c] == "" for c in COLUMNS[4:]), row  # empty, never zeros


def _frame(*rows: dict[str, object]) -> pd.DataFrame:
    """A load_runs-like frame from partial rows (FINISHED, one environment by default)."""
    base = {"status": "FINISHED", "precision_display": "Native FP32", "resolution": "640x640",
            "env_key": "k1", "gpu_name": "none", "tensorflow": "2.99", "cpu_model": "cpu",
            "tracking_uri": "sqlite:///unused.db"}
    filled = [{**base, "run_id": f"run{i:029d}", "model": f"m{i}", "model_display": f"M{i}",
               "start_time": pd.Timestamp(1_700_000_000_000 + i, unit="ms", tz="UTC"), **row}
              for i, row in enumerate(rows)]
    metric_cols = sorted({k for r in filled for k in r if k.startswith("metrics.")})
    return pd.DataFrame(filled, columns=[*RUN_COLUMNS, *metric_cols])


# -- on the runner's runs -----------------------------------------------------------------------


def test_cli_table_equals_the_runs_metrics(produced: Produced, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "results"
    assert export.main(["--uri", produced.uri, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| Model" in printed and str(out / "table.md") in printed
    assert {p.name for p in out.iterdir()} == {"table.md", "table.csv", *PLOTS}
    runs = _runs(produced.uri)
    assert [r.info.status for r in runs] == ["FINISHED", "FINISHED", "FAILED", "FAILED"]
    _check_table_against_runs(out / "table.md", runs)


def test_csv_round_trips_with_raw_numbers(produced: Produced, tmp_path: Path) -> None:
    df = load_runs(produced.uri)
    write_report(df, tmp_path)
    path = tmp_path / "table.csv"
    back = pd.read_csv(path)
    pd.testing.assert_frame_equal(pd.read_csv(path), export.read_table_csv(path),
                                  check_dtype=False)
    back.to_csv(tmp_path / "again.csv", index=False)
    assert (tmp_path / "again.csv").read_text() == path.read_text()
    runs = _runs(produced.uri)
    assert list(back.columns[: len(_columns(runs))]) == _columns(runs)
    assert {"run_id", "status", "error", "env_key", "gpu_name", "tensorflow"} <= set(back.columns)
    assert list(back["run_id"]) == [r.info.run_id for r in runs]
    for (_, row), run in zip(back.iterrows(), runs, strict=True):
        m = run.data.metrics
        if run.info.status == "FINISHED":
            assert row["AP"] == m["bbox.AP"] * 100  # raw, not rounded
            assert row["99th_percentile(ms)"] == m["latency_p99_ms"]
            assert row["total_time(s)"] == m["total_time_s"]
        else:
            assert row[list(COLUMNS[3:])].isna().all()
            assert row["error"] == run.data.tags["error"] and row["status"] == "FAILED"
        assert row["env_key"] == run.data.tags["env.key"]


def test_a_broken_savedmodel_fails_its_own_runs_with_their_traceback(produced: Produced) -> None:
    """The sweep's garbage SavedModel: its runs FAILED with the error and ``error/traceback.txt``,
    the demo's runs FINISHED (the single-job form, exit 1: tests/test_job.py, slow lane)."""
    client = MlflowClient(produced.uri)
    runs = _runs(produced.uri)
    failed = [r for r in runs if r.info.status == "FAILED"]
    assert len(failed) == 2 and len(runs) == 4
    for run in failed:
        assert "OSError" in run.data.tags["error"]
        names = {a.path for a in client.list_artifacts(run.info.run_id, "error")}
        assert "error/traceback.txt" in names


def test_plots_are_real_pngs(produced: Produced, tmp_path: Path) -> None:
    paths = write_report(load_runs(produced.uri), tmp_path)
    assert [p.name for p in paths] == ["table.md", "table.csv", *PLOTS]
    check_png(tmp_path / "latency_mean.png", SMALL_BAR_PX)
    check_png(tmp_path / "throughput.png", SMALL_BAR_PX)
    check_png(tmp_path / "ap_vs_latency.png", (800, 600))


def test_timeline_falls_back_to_cpu_with_warmup_phase(produced: Produced, tmp_path: Path) -> None:
    run = _runs(produced.uri)[0]
    samples = plots.load_samples(produced.uri, run.info.run_id)
    assert plots._timeline_quantities(samples) == ("host_cpu_util_pct", ["cpu"], None)
    phases = plots.load_phases(produced.uri, run.info.run_id)
    assert phases is not None
    names = [p for p, _, _ in phases]
    assert names[:4] == ["start", "load", "prepare", "warmup"] and names[-1] == "done"
    (warm,) = [(s, e) for p, s, e in phases if p == "warmup"]
    assert 0 < warm[0] < warm[1]
    assert all(a[2] == b[1] for a, b in zip(phases, phases[1:], strict=False))  # contiguous
    assert {str(p) for p in samples["phase"]} <= set(names)
    assert export.main(["--uri", produced.uri, "--out", str(tmp_path),
                        "--timeline", run.info.run_id]) == 0
    assert [p.name for p in tmp_path.iterdir()] == [f"timeline_{run.info.run_id}.png"]
    check_png(tmp_path / f"timeline_{run.info.run_id}.png", (1200, 500))


def test_filters_select_by_tags_status_and_parent(produced: Produced) -> None:
    runs = _runs(produced.uri)
    finished, failed = runs[0], runs[2]
    demo = finished.data.tags["detbench.model"]

    def ids(**kw: object) -> list[str]:
        return list(load_runs(produced.uri, kw)["run_id"])

    assert ids() == [r.info.run_id for r in runs]
    assert ids(statuses="failed") == [r.info.run_id for r in runs[2:]]
    assert ids(models=[demo]) == [r.info.run_id for r in runs[:2]]
    assert ids(models=[demo, failed.data.tags["detbench.model"]], statuses=["FINISHED"]) == \
        [r.info.run_id for r in runs[:2]]
    assert ids(resolutions="256x256", precisions="fp32") == [r.info.run_id for r in runs[:2]]
    assert len(ids(env_keys=finished.data.tags["env.key"], experiments="detbench")) == 4
    assert ids(env_keys="000000000000") == [] and ids(gpus="nonexistent gpu") == []
    assert ids(parent=failed.data.tags["mlflow.parentRunId"]) == [r.info.run_id for r in runs]
    assert ids(parent="0" * 32) == []
    with pytest.raises(ExportError, match="no experiment named 'nope'.*detbench"):
        load_runs(produced.uri, {"experiments": "nope"})
    with pytest.raises(ExportError, match="unknown filter"):
        load_runs(produced.uri, {"model": "x"})


def test_real_sweep_has_a_parent_run_with_its_report(produced: Produced,
                                                     tmp_path: Path) -> None:
    client = MlflowClient(produced.uri)
    (parent,) = [r for r in client.search_runs(["1"]) if r.data.tags.get(SWEEP_TAG) == "true"]
    assert parent.info.status == "FAILED"  # two of its jobs failed
    assert parent.data.tags["detbench.children"] == "2 FAILED, 2 FINISHED"
    assert parent.info.run_name.startswith("sweep ")
    assert "benchmark.percentile_method=linear,lower" in parent.data.params["overrides"]
    assert parent.data.params["override.benchmark.percentile_method"] == "linear,lower"
    assert CALLBACK in parent.data.params["command"]
    names = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"table.md", "table.csv", *PLOTS} <= names
    children = _runs(produced.uri)
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent.info.run_id}
    table = Path(client.download_artifacts(parent.info.run_id, "table.md", str(tmp_path)))
    _check_table_against_runs(table, children)
    out = tmp_path / "cli"
    assert export.main(["--uri", produced.uri, "--parent", parent.info.run_id,
                        "--out", str(out)]) == 0
    assert (out / "table.md").read_text() == table.read_text()


def test_extra_columns(produced: Produced, tmp_path: Path) -> None:
    runs = _runs(produced.uri)
    write_report(load_runs(produced.uri), tmp_path, extra=["p90,p95", "keypoints", "masks",
                                                            "gpu", "energy", "ci"])
    header, rows = _parse(tmp_path / "table.md")
    extra = ["90th_percentile(ms)", "95th_percentile(ms)", "gpu_util_mean(%)",
             "energy_per_image(J)", CI_COLUMN]
    assert header == [*_columns(runs), *extra]  # no keypoints.AP / segm.AP logged: left out
    csv = pd.read_csv(tmp_path / "table.csv")
    for cells, run, (_, raw) in zip(rows, runs, csv.iterrows(), strict=True):
        row = dict(zip(header, cells, strict=True))
        m = run.data.metrics
        if run.info.status != "FINISHED":
            assert all(row[c] == "" for c in extra) and math.isnan(raw[CI_LOW])
            continue
        assert row["90th_percentile(ms)"] == f"{m['latency_p90_ms']:.2f}"
        assert row["95th_percentile(ms)"] == f"{m['latency_p95_ms']:.2f}"
        gpu = m.get("gpu_util_mean")
        assert row["gpu_util_mean(%)"] == ("" if gpu is None else f"{gpu:.2f}")
        low, high = (float(x) for x in row[CI_COLUMN].split("-"))
        assert low <= round(m["images_per_sec"], 2) <= high
        assert raw[CI_LOW] <= m["images_per_sec"] <= raw[CI_HIGH]


def test_mixed_environments_refused_then_labelled(produced: Produced, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    copy = tmp_path / "copy.db"
    shutil.copy(produced.db, copy)
    uri = f"sqlite:///{copy}"
    runs = _runs(uri)
    moved = runs[1].info.run_id
    client = MlflowClient(uri)
    for key, value in {"env.key": "feedfacecafe", "env.gpu_name": "Tesla P100-PCIE-16GB",
                       "env.tensorflow": "2.4.1"}.items():
        client.set_tag(moved, key, value)
    own_key = runs[0].data.tags["env.key"]

    out = tmp_path / "refused"
    assert export.main(["--uri", uri, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "2 environments" in err and "--mix-environments" in err
    assert "feedfacecafe  Tesla P100-PCIE-16GB, TF 2.4.1  (1 run)" in err
    assert f"{own_key}  " in err and "(3 runs)" in err
    assert not out.exists()

    assert export.main(["--uri", uri, "--out", str(out), "--mix-environments"]) == 0
    header, rows = _parse(out / "table.md")
    assert header == [*_columns(runs), ENV_COLUMN]
    tags = runs[0].data.tags
    mine = f"CPU {tags['env.cpu_model']}, TF {tags['env.tensorflow']}"
    if tags["env.gpu_name"] != "none":
        mine = f"{tags['env.gpu_name']}, TF {tags['env.tensorflow']}"
    assert [r[-1] for r in rows] == [mine, "Tesla P100-PCIE-16GB, TF 2.4.1", mine, mine]
    assert list(pd.read_csv(out / "table.csv")[ENV_COLUMN]) == [r[-1] for r in rows]
    check_png(out / "latency_mean.png", SMALL_BAR_PX)

    one = tmp_path / "one"
    assert export.main(["--uri", uri, "--out", str(one), "--gpu", "p100"]) == 0
    assert len(_parse(one / "table.md")[1]) == 1
    assert export.main(["--uri", uri, "--out", str(one), "--env-key", own_key]) == 0
    assert len(_parse(one / "table.md")[1]) == 3

    client.log_metric(moved, "keypoints.AP", 0.5)
    df = load_runs(uri)
    with pytest.raises(MixedEnvironmentsError):
        write_report(df, tmp_path / "kp")
    write_report(df, tmp_path / "kp", extra="keypoints,masks", mix_environments=True)
    header, rows = _parse(tmp_path / "kp" / "table.md")
    assert header == [*_columns(runs), "AP(keypoints)", ENV_COLUMN]
    assert [r[len(_columns(runs))] for r in rows] == ["", "50.00", "", ""]


@pytest.mark.slow  # a second sweep and a server: the embedded store's tests cover the rest
def test_http_server_reads_back_the_same_table(produced: Produced, http_server: Server,
                                               tmp_path: Path) -> None:
    server = http_server
    via_http = write_report(load_runs(server.uri), tmp_path / "http")
    direct = write_report(load_runs(f"sqlite:///{server.db}"), tmp_path / "direct")
    assert via_http[0].read_text() == direct[0].read_text()  # table.md
    assert via_http[1].read_text() == direct[1].read_text()  # table.csv
    runs = _runs(server.uri)
    assert [r.info.status for r in runs] == ["FINISHED", "FINISHED", "FAILED", "FAILED"]
    _check_table_against_runs(via_http[0], runs)
    embedded = write_report(load_runs(produced.uri), tmp_path / "embedded")
    h_header, h_rows = _parse(via_http[0])
    e_header, e_rows = _parse(embedded[0])

    def labels(rows: list[list[str]]) -> list[tuple[str, ...]]:
        return sorted((r[0], r[1], r[2], r[3] if r[3].startswith("failed") else "") for r in rows)

    assert h_header == e_header and labels(h_rows) == labels(e_rows)
    for path in via_http[2:]:
        check_png(path, (800, 600) if path.name == "ap_vs_latency.png" else SMALL_BAR_PX)

    client = MlflowClient(server.uri)
    (parent,) = [r for r in client.search_runs(["1"]) if r.data.tags.get(SWEEP_TAG) == "true"]
    assert parent.info.status == "FAILED"
    assert {"table.md", *PLOTS} <= {a.path for a in client.list_artifacts(parent.info.run_id)}
    finished = next(r for r in runs if r.info.status == "FINISHED").info.run_id
    check_png(plots.plot_timeline(server.uri, finished, tmp_path), (1200, 500))
    ci = write_report(load_runs(server.uri), tmp_path / "ci", extra=["ci"])
    assert pd.read_csv(ci[1])[CI_LOW].notna().sum() == 2  # latencies.csv through the proxy

    server.stop()
    assert server.proc.poll() is not None and not server.healthy()


# -- on hand-made runs --------------------------------------------------------------------------


def test_zoo_models_follow_the_public_table_order() -> None:
    df = _frame(
        {"model": "demo", "model_display": "Demo", "resolution": "256x256"},
        {"model": "efficientdet_d0", "model_display": "EfficientDet D0",
         "resolution": "512x512", "precision_display": "TF-TRT FP16"},
        {"model": "efficientdet_d0", "model_display": "EfficientDet D0",
         "resolution": "512x512"},
        {"model": "other_name", "model_display": "CenterNet HourGlass104",
         "resolution": "512x512"},
        {"model": "custom", "model_display": "Custom", "resolution": "native"},
    )
    ordered = export.order_runs(df.iloc[::-1])  # newest first in, table order out
    assert list(zip(ordered["model_display"], ordered["precision_display"], strict=True)) == [
        ("CenterNet HourGlass104", "Native FP32"), ("EfficientDet D0", "Native FP32"),
        ("EfficientDet D0", "TF-TRT FP16"), ("Demo", "Native FP32"), ("Custom", "Native FP32")]


def test_failed_rows_and_short_errors() -> None:
    assert export.short_error("FAILED", "JobFailed: OSError: bad file\ntraceback") == \
        "failed: OSError: bad file"
    assert export.short_error("KILLED", None) == "killed"
    long = export.short_error("FAILED", "ValueError: " + "x" * 200)
    assert len(long) == len("failed: ") + export.ERROR_CHARS and long.endswith("...")
    df = _frame({"metrics.bbox.AP": 0.5},
                {"status": "FAILED", "error": "RuntimeError: a | b", "metrics.bbox.AP": 0.0,
                 "metrics.latency_mean_ms": 3.0})
    report = export.build_report(df)
    assert report.rows[0]["AP"] == "50.00" and report.rows[0]["AP50"] == ""
    assert report.rows[1]["AP"] == "failed: RuntimeError: a \\| b"
    assert report.rows[1]["latency_mean(ms)"] == ""  # a failed run's partial metrics: not shown
    assert math.isnan(report.frame.loc[1, "latency_mean(ms)"])


def test_empty_selection_writes_the_header_and_no_plots(tmp_path: Path) -> None:
    paths = write_report(_frame(), tmp_path)
    assert [p.name for p in paths] == ["table.md", "table.csv"]
    header, rows = _parse(tmp_path / "table.md")
    assert header == list(COLUMNS) and rows == []
    assert pd.read_csv(tmp_path / "table.csv").empty


def test_environment_labels_disambiguate_and_unknown_keys_do_not_count() -> None:
    df = _frame({"env_key": "aaa", "gpu_name": "A100"}, {"env_key": "bbb", "gpu_name": "A100"},
                {"env_key": None, "status": "FAILED"})
    assert runs.environment_labels(df) == {"aaa": "A100, TF 2.99 [aaa]",
                                             "bbb": "A100, TF 2.99 [bbb]"}
    assert runs.check_environments(df.iloc[[0, 2]]) is None  # no env.key: not another one
    report = export.build_report(df, mix_environments=True)
    assert [r[ENV_COLUMN] for r in report.rows] == ["A100, TF 2.99 [aaa]",
                                                    "A100, TF 2.99 [bbb]", "unknown"]


def test_extra_names() -> None:
    assert export.parse_extra("p90, ci,p90") == ("p90", "ci")
    assert export.parse_extra(["all"]) == tuple(export.EXTRAS)
    with pytest.raises(ExportError, match="unknown extra column.*bogus.*valid: p90"):
        export.parse_extra("p90,bogus")


def test_cli_exit_codes(produced: Produced, tmp_path: Path,
                        capsys: pytest.CaptureFixture[str]) -> None:
    uri = produced.uri
    assert export.main(["--uri", uri, "--out", str(tmp_path / "o"), "--model", "nope"]) == 1
    assert "no run matches" in capsys.readouterr().err and not (tmp_path / "o").exists()
    assert export.main(["--uri", uri, "--extra", "nope"]) == 2
    assert "unknown extra column" in capsys.readouterr().err
    assert export.main(["--uri", uri, "--experiment", "nope"]) == 2
    assert "no experiment named 'nope'" in capsys.readouterr().err
    for module in ("runner.results.export", "runner.results", "runner.export"):  # old name too
        proc = subprocess.run([sys.executable, "-m", module, "--help"],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0 and "--mix-environments" in proc.stdout, module


def test_ap_difference_to_native_fp32_in_csv_and_as_an_extra(tmp_path: Path) -> None:
    """runner.reference's metric: always in table.csv, signed in table.md with --extra apdiff;
    empty for the reference row itself (it has no difference logged)."""
    df = _frame({"model": "demo", "model_display": "Demo", "metrics.bbox.AP": 0.7164},
                {"model": "demo", "model_display": "Demo", "precision_display": "LiteRT INT8",
                 "metrics.bbox.AP": 0.7029, "metrics.reference.bbox.AP_diff": -1.35},
                {"model": "demo", "model_display": "Demo",
                 "precision_display": "ONNX Runtime FP32", "metrics.bbox.AP": 0.7167,
                 "metrics.reference.bbox.AP_diff": 0.03})
    write_report(df, tmp_path / "plain")
    header, rows = _parse(tmp_path / "plain" / "table.md")
    assert export.AP_DIFF_COLUMN not in header and header[2] == PRECISION_COLUMN
    csv = export.read_table_csv(tmp_path / "plain" / "table.csv")
    by_precision = dict(zip(csv[PRECISION_COLUMN], csv[export.AP_DIFF_COLUMN], strict=True))
    assert math.isnan(by_precision["Native FP32"])
    assert by_precision["LiteRT INT8"] == -1.35 and by_precision["ONNX Runtime FP32"] == 0.03

    write_report(df, tmp_path / "extra", extra="apdiff")
    header, rows = _parse(tmp_path / "extra" / "table.md")
    cells = {r[2]: r[header.index(export.AP_DIFF_COLUMN)] for r in rows}
    assert cells == {"Native FP32": "", "LiteRT INT8": "-1.35", "ONNX Runtime FP32": "+0.03"}

    legacy = tmp_path / "legacy.csv"  # a table.csv written with the public table's header
    legacy.write_text((tmp_path / "plain" / "table.csv").read_text()
                      .replace(PRECISION_COLUMN, "TF-TRT", 1))
    assert list(export.read_table_csv(legacy)[PRECISION_COLUMN]) == list(csv[PRECISION_COLUMN])


def test_runtimes_on_one_machine_are_one_environment() -> None:
    """A backend's package versions are part of env.key (runner.backends); the export's
    environment check compares the machine (``machine_key``), so a runtime sweep is one table."""
    same = _frame({"env_key": "native1", "machine_key": "native1"},
                  {"env_key": "onnx1", "machine_key": "native1",
                   "precision_display": "ONNX Runtime FP32"})
    assert runs.check_environments(same) is None
    other = _frame({"env_key": "native1", "machine_key": "native1"},
                   {"env_key": "onnx2", "machine_key": "native2",
                    "precision_display": "ONNX Runtime FP32"})
    with pytest.raises(MixedEnvironmentsError, match="2 environments"):
        runs.check_environments(other)
