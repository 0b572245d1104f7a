"""The container recipes, checked without a Docker engine: the Dockerfile and compose.yaml parsed
for what matters, docker/install.sh run for real in a scratch venv standing in for the image, and
the make targets (commands, ARGS passing, clear failures without Docker)."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
INSTALL = DOCKER / "install.sh"
DEFAULT_BASE = "nvcr.io/nvidia/tensorflow:25.02-tf2-py3"


def dockerfile(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, rest = (pending + line).partition(" ")
        instructions.append((keyword.upper(), " ".join(rest.split())))
        pending = ""
    return instructions


def interpolate(value: str) -> str:
    """Compose's ${VAR:-default} with no variables set."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)


@pytest.fixture(scope="module")
def steps() -> list[tuple[str, str]]:
    return dockerfile(DOCKER / "Dockerfile")


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    doc = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    assert set(doc["services"]) == {"mlflow", "bench"}
    return dict(doc["services"]) | {"_volumes": doc.get("volumes") or {}}


# --- Dockerfile ---------------------------------------------------------------------------------

def test_base_image_is_an_argument_defaulting_to_ngc_25_02(steps: list[tuple[str, str]]) -> None:
    assert steps[0] == ("ARG", f"BASE_IMAGE={DEFAULT_BASE}")
    assert steps[1] == ("FROM", "${BASE_IMAGE}")
    after_from = steps[2:]
    arg = after_from.index(("ARG", "BASE_IMAGE"))  # re-declared, else empty after FROM
    env = [i for i, (k, v) in enumerate(after_from) if k == "ENV" and
           "DETBENCH_IMAGE=${BASE_IMAGE}" in v.split()]
    assert env and env[0] > arg


def test_environment_names_the_image_cache_and_tracking_server(
        steps: list[tuple[str, str]], services: dict[str, Any]) -> None:
    env = dict(item.split("=", 1) for k, v in steps if k == "ENV" for item in v.split())
    assert env["DETBENCH_CACHE"] == "/cache"
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert services["bench"]["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    from runner import environment

    assert "DETBENCH_IMAGE" in environment.CONTAINER_VARS  # what the run's record reads


def test_volumes_workdir_and_entrypoint(steps: list[tuple[str, str]]) -> None:
    volumes = [json.loads(v) for k, v in steps if k == "VOLUME"]
    assert ["/cache", "/data"] in volumes
    assert [v for k, v in steps if k == "WORKDIR"][-1] == "/workspace"
    entry = [v for k, v in steps if k == "ENTRYPOINT"]
    assert [json.loads(e) for e in entry] == [["python", "-m", "runner"]]


def test_install_step_is_install_sh_without_tensorflow(steps: list[tuple[str, str]]) -> None:
    runs = [v for k, v in steps if k == "RUN"]
    assert not [r for r in runs if re.search(r"tensorflow|\btf(-cpu)?\b", r, re.IGNORECASE)]
    assert not [r for r in runs if "pip install" in r]  # pip only through install.sh
    installs = [r for r in runs if "install.sh" in r]
    assert len(installs) == 1
    assert re.search(r"\bbash docker/install\.sh\s*$", installs[0])  # no extras at all
    copies = [v.split() for k, v in steps if k == "COPY"]
    assert ["docker/install.sh", "docker/install.sh"] in copies  # this very file, same path
    sources = [src for c in copies for src in c[:-1] if not src.startswith("--")]
    for src in sources:
        assert (ROOT / src).exists(), src
    ignore = (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()
    for src in sources:
        assert f"!{src.rstrip('/')}" in ignore, f"{src} is not let into the build context"


def test_install_sh_constrains_pip_to_the_image(steps: list[tuple[str, str]]) -> None:
    script = INSTALL.read_text()
    assert 'constraints="${DETBENCH_CONSTRAINTS:-/tmp/constraints.txt}"' in script
    assert "pip list --format=freeze" in script
    pip_installs = [line for line in script.splitlines() if re.match(r"\s*pip install", line)]
    assert len(pip_installs) == 1
    assert '-c "$constraints" -e "$target"' in pip_installs[0]
    assert os.access(INSTALL, os.X_OK)


def test_mlflow_image_has_the_clients_major_version() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    requirement = next(d for d in pyproject["project"]["dependencies"] if d.startswith("mlflow"))
    major = re.search(r">=\s*(\d+)", requirement)
    assert major
    text = (DOCKER / "mlflow.Dockerfile").read_text()
    spec = re.search(r'ARG MLFLOW_VERSION="([^"]+)"', text)
    assert spec and spec.group(1) == f">={major.group(1)}.1,<{int(major.group(1)) + 1}"
    assert '"mlflow${MLFLOW_VERSION}"' in text
    assert metadata.version("mlflow").split(".")[0] == major.group(1)


# --- compose.yaml -------------------------------------------------------------------------------

def test_mlflow_service(services: dict[str, Any]) -> None:
    mlflow = services["mlflow"]
    command = mlflow["command"]
    assert command[:2] == ["mlflow", "server"]
    flags = dict(arg.split("=", 1) if "=" in arg else (arg, "") for arg in command[2:])
    assert flags["--host"] == "0.0.0.0"
    assert flags["--port"] == "5000"
    assert flags["--backend-store-uri"] == "sqlite:////mlflow/mlflow.db"
    assert flags["--artifacts-destination"] == "/mlflow/artifacts"
    assert "--serve-artifacts" in flags
    hosts = flags["--allowed-hosts"].split(",")
    assert {"mlflow:5000", "localhost:*", "127.0.0.1:*"} <= set(hosts)
    assert [interpolate(p) for p in mlflow["ports"]] == ["127.0.0.1:5000:5000"]
    assert "/health" in " ".join(mlflow["healthcheck"]["test"])
    assert mlflow["healthcheck"]["test"][0] == "CMD"
    volume = mlflow["volumes"][0].split(":")
    assert volume[1] == "/mlflow" and volume[0] in services["_volumes"]  # a named volume
    assert mlflow["build"] == {"context": ".", "dockerfile": "mlflow.Dockerfile"}


def test_mlflow_cli_knows_every_flag(services: dict[str, Any]) -> None:
    from click.testing import CliRunner
    from mlflow.cli import server

    help_text = CliRunner().invoke(server, ["--help"]).output
    for arg in services["mlflow"]["command"][2:]:
        assert arg.split("=", 1)[0] in help_text


def test_bench_service(services: dict[str, Any], steps: list[tuple[str, str]]) -> None:
    bench = services["bench"]
    build = bench["build"]
    assert (DOCKER / build["context"] / build["dockerfile"]).resolve() == DOCKER / "Dockerfile"
    assert interpolate(build["args"]["BASE_IMAGE"]) == DEFAULT_BASE
    devices = bench["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
    assert bench["depends_on"] == {"mlflow": {"condition": "service_healthy"}}
    assert bench["environment"]["DETBENCH_CACHE"] == "/cache"
    mounts = {v.split(":")[1]: v.split(":") for v in (interpolate(v) for v in bench["volumes"])}
    assert {"/cache", "/data", "/workspace"} <= set(mounts)
    for target in ("/cache", "/data"):
        assert mounts[target][0] in services["_volumes"]  # named by default, a host path by env
    assert bench["shm_size"] == "1gb"
    assert bench["ulimits"] == {"memlock": -1, "stack": 67108864}
    assert "entrypoint" not in bench and "command" not in bench  # run args reach the runner


@pytest.mark.skipif(not (shutil.which("docker-compose") or shutil.which("docker")),
                    reason="no compose CLI")
def test_compose_cli_accepts_the_file() -> None:
    """Where a compose v2 CLI exists (it needs no engine for this), it must accept the file."""
    for command in (["docker", "compose"], ["docker-compose"]):
        if not shutil.which(command[0]):
            continue
        version = subprocess.run([*command, "version", "--short"], capture_output=True, text=True)
        if version.returncode == 0 and version.stdout.strip().lstrip("v").startswith("2"):
            proc = subprocess.run([*command, "-f", str(DOCKER / "compose.yaml"), "config", "-q"],
                                  capture_output=True, text=True, timeout=60)
            assert proc.returncode == 0, proc.stderr
            return
    pytest.skip("no Docker Compose v2 CLI")


# --- install.sh, run for real -------------------------------------------------------------------

@pytest.mark.slow  # pip installs detbench into a venv
def test_install_sh_keeps_the_images_packages(tmp_path: Path) -> None:
    """A scratch venv whose "image" packages are this venv's (a .pth file), numpy and protobuf
    among them: install.sh must pin them, install detbench into the scratch venv, change nothing."""
    venv = tmp_path / "image"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()"
                           "['purelib'])"], capture_output=True, text=True, check=True)
    image_site = sysconfig.get_paths()["purelib"]
    (Path(site.stdout.strip()) / "_image.pth").write_text(image_site + "\n")
    constraints = tmp_path / "constraints.txt"
    env = {**os.environ, "PYTHON": str(python), "DETBENCH_CONSTRAINTS": str(constraints)}
    env.pop("PIP_CONSTRAINT", None)
    proc = subprocess.run(["bash", str(INSTALL), "dev"], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    pins = dict(line.split("==") for line in constraints.read_text().split())
    pinned = {name.lower().replace("_", "-"): v for name, v in pins.items()}
    assert pinned["numpy"] == metadata.version("numpy")
    assert pinned["protobuf"] == metadata.version("protobuf")
    tf_pins = {n: v for n, v in pinned.items() if n.startswith("tensorflow")}
    assert all(metadata.version(n) == v for n, v in tf_pins.items())  # the "image" has TF
    for name in ("mlflow", "nvidia-ml-py", "pandas", "filelock"):
        assert name not in pinned  # detbench's own needs stay free

    probe = ("import json, numpy, google.protobuf as pb; from importlib import metadata as m; "
             "print(json.dumps([numpy.__version__, numpy.__file__, pb.__version__, "
             "str(m.distribution('detbench').locate_file(''))]))")
    numpy_version, numpy_file, protobuf_version, detbench_at = json.loads(subprocess.run(
        [str(python), "-c", probe], capture_output=True, text=True, check=True,
        cwd=tmp_path).stdout)
    assert numpy_version == pins.get("numpy")
    assert numpy_file.startswith(image_site)  # still the image's own numpy
    assert protobuf_version == pins.get("protobuf")
    assert Path(detbench_at).resolve() == Path(site.stdout.strip()).resolve()  # installed there
    assert metadata.distribution("detbench").locate_file("")  # this venv's install untouched
    assert "pinned packages unchanged" in proc.stderr


def test_install_sh_refuses_the_tensorflow_extras(tmp_path: Path) -> None:
    for extra in ("tf", "tf-cpu"):
        proc = subprocess.run(["bash", str(INSTALL), "dev", extra], capture_output=True, text=True,
                              env={**os.environ, "PYTHON": "/nonexistent/python"}, timeout=30)
        assert proc.returncode == 2
        assert f"refusing the '{extra}' extra" in proc.stderr


# --- make targets -------------------------------------------------------------------------------

needs_make = pytest.mark.skipif(shutil.which("make") is None, reason="no make")


def _make(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["make", "--no-print-directory", "-f", "Makefile", "-f",
                           "docker/docker.mk", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=60)


@needs_make
def test_docker_bench_passes_args_through() -> None:
    args = "-m 'model=glob(*)' precision=trt_fp16"
    proc = _make("-n", "docker-bench", f"ARGS={args}")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    build = [line for line in lines if " compose -f docker/compose.yaml build" in line]
    run = [line for line in lines if " compose -f docker/compose.yaml run --rm bench" in line]
    assert build and run and lines.index(build[0]) < lines.index(run[0])
    words = shlex.split(run[0])
    assert words[words.index("bench") + 1:] == ["-m", "model=glob(*)", "precision=trt_fp16"]
    assert f"BASE_IMAGE={DEFAULT_BASE}" in words


@needs_make
def test_mlflow_and_down_targets() -> None:
    assert "compose -f docker/compose.yaml up -d --wait mlflow" in _make(
        "-n", "docker-mlflow").stdout
    assert "compose -f docker/compose.yaml down" in _make("-n", "docker-down").stdout


def test_every_docker_target_has_help() -> None:
    text = (DOCKER / "docker.mk").read_text()
    documented = re.findall(r"^([a-zA-Z_-]+):.*?## ", text, re.MULTILINE)
    assert set(documented) == {"docker-build", "docker-bench", "docker-mlflow", "docker-down"}


def _fake_docker(tmp_path: Path, info_ok: bool, compose_ok: bool) -> str:
    """A docker CLI stand-in: `info` and `compose version` answer as told; every call is logged."""
    fake = tmp_path / "docker"
    info, compose = int(not info_ok), int(not compose_ok)
    fake.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "calls"}\n'
                    f'case "$1" in info) exit {info};; '
                    f'compose) [ "$2" = version ] && exit {compose}; exit 0;; esac\n')
    fake.chmod(0o755)
    return str(fake)


@needs_make
@pytest.mark.parametrize(("docker", "message"), [
    ("missing", "'{docker}' not found"),
    ("no-engine", "no Docker engine reachable"),
    ("no-compose", "'{docker} compose' is not available"),
])
def test_without_docker_the_targets_fail_clearly(tmp_path: Path, docker: str,
                                                 message: str) -> None:
    if docker == "missing":
        path = str(tmp_path / "nowhere" / "docker")
    else:
        path = _fake_docker(tmp_path, info_ok=docker != "no-engine",
                            compose_ok=docker != "no-compose")
    for target in ("docker-build", "docker-bench", "docker-mlflow", "docker-down"):
        proc = _make(target, f"DOCKER={path}", "ARGS=-m x=1,2")
        assert proc.returncode != 0
        assert message.format(docker=path) in proc.stderr
    calls = (tmp_path / "calls").read_text() if (tmp_path / "calls").exists() else ""
    assert "build" not in calls and "run" not in calls  # nothing ran past the check
