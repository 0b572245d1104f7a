"""A real MLflow tracking server on 127.0.0.1 for tests, started with docker/compose.yaml's own
command (host checks included) and stopped with its whole process group."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import yaml

COMPOSE_FILE = Path(__file__).resolve().parents[1] / "docker" / "compose.yaml"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_command(port: int, store: Path) -> list[str]:
    """docker/compose.yaml's MLflow command, bound to 127.0.0.1:port with its store in ``store``."""
    command = yaml.safe_load(COMPOSE_FILE.read_text())["services"]["mlflow"]["command"]
    assert command[:2] == ["mlflow", "server"]
    local = {"--host": "127.0.0.1", "--port": str(port),
             "--backend-store-uri": f"sqlite:///{store / 'mlflow.db'}",
             "--artifacts-destination": str(store / "artifacts")}
    args = []
    for arg in command[2:]:
        name = arg.split("=", 1)[0]
        args.append(f"{name}={local[name]}" if name in local else arg)
    return [str(Path(sys.executable).with_name("mlflow")), "server", *args, "--workers=1"]


def http_status(url: str, host: str | None = None) -> int:
    request = urllib.request.Request(url, headers={"Host": host} if host else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


@contextlib.contextmanager
def mlflow_server(store: Path, port: int | None = None) -> Iterator[str]:
    """Run a server on ``store`` (reusable: restart one on the same store and port)."""
    port = port or free_port()
    store.mkdir(parents=True, exist_ok=True)
    log = (store / "server.log").open("a")
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no job workers
    server = subprocess.Popen(server_command(port, store), stdout=log, stderr=subprocess.STDOUT,
                              env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            with contextlib.suppress(OSError):
                if http_status(f"{url}/health") == 200:
                    break
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("mlflow server did not come up:\n"
                                   + (store / "server.log").read_text()[-3000:])
            time.sleep(0.25)
        yield url
    finally:
        for sig, wait_s in ((signal.SIGTERM, 15), (signal.SIGKILL, 15)):
            try:
                os.killpg(server.pid, sig)
                server.wait(timeout=wait_s)
                break
            except (ProcessLookupError, subprocess.TimeoutExpired):
                continue
        log.close()
