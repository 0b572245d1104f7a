"""A headless Chromium driven over the DevTools protocol (CDP), for tests that read what the MLflow
UI really renders. Debian's ``chromium`` package is enough (``.ci/run`` installs it); the
protocol client is aiohttp's websocket (an MLflow dependency): no driver binary, no download.

``find_chromium()`` is None where no browser is installed: tests skip and say so."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
#: The MLflow UI opens its assistant panel on a browser's first visit; a returning user's
#: browser remembers it closed (localStorage), which the screenshots show.
CLOSED_PANELS = {"mlflow.assistant.panelOpen_v1": "false",
                 "mlflow.assistant.fab.autoOpenedOnFirstLoad_v1": "true"}


def find_chromium() -> str | None:
    for name in (os.environ.get("DETBENCH_CHROMIUM"), *CANDIDATES):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


class Page:
    """One tab: navigate, wait for text, read the DOM's text, take screenshots."""

    def __init__(self, ws: Any, loop: asyncio.AbstractEventLoop) -> None:
        self._ws, self._loop, self._id = ws, loop, 0

    async def _call(self, method: str, **params: Any) -> dict[str, Any]:
        self._id += 1
        my_id = self._id
        await self._ws.send_str(json.dumps({"id": my_id, "method": method, "params": params}))
        while True:
            msg = json.loads((await self._ws.receive()).data)
            if msg.get("id") == my_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return dict(msg.get("result", {}))

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        return self._loop.run_until_complete(self._call(method, **params))

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True,
                           awaitPromise=True)
        return result.get("result", {}).get("value")

    def goto(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def text(self) -> str:
        return str(self.evaluate("document.body ? document.body.innerText : ''") or "")

    def wait_for_text(self, *needles: str, timeout_s: float = 60.0) -> str:
        """The page's text once it contains every needle; TimeoutError with what it showed."""
        deadline = time.monotonic() + timeout_s
        text = ""
        while time.monotonic() < deadline:
            text = self.text()
            if all(n in text for n in needles):
                return text
            time.sleep(0.5)
        raise TimeoutError(f"page never showed {needles}; it showed:\n{text[:3000]}")

    def screenshot(self, path: Path, width: int = 1400, height: int = 900) -> Path:
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height,
                  deviceScaleFactor=1, mobile=False)
        time.sleep(1.0)  # one layout after the resize
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))
        return path


@contextlib.contextmanager
def chromium_page(origin: str, local_storage: dict[str, str] | None = None) -> Iterator[Page]:
    """A fresh headless Chromium profile with one page; ``local_storage`` is set for ``origin``
    before the first real navigation."""
    import aiohttp

    binary = find_chromium()
    if binary is None:
        raise RuntimeError("no Chromium installed (apt-get install chromium)")
    profile = tempfile.mkdtemp(prefix="detbench-chromium-")
    proc = subprocess.Popen(
        [binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--no-first-run", "--hide-scrollbars", f"--user-data-dir={profile}",
         "--remote-debugging-port=0", "--window-size=1400,900", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    loop = asyncio.new_event_loop()
    try:
        port_file = Path(profile) / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not port_file.is_file() or not port_file.read_text().strip():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"chromium did not start (exit {proc.poll()})")
            time.sleep(0.2)
        port = int(port_file.read_text().split()[0])

        async def connect() -> tuple[Any, Any]:
            session = aiohttp.ClientSession()
            async with session.get(f"http://127.0.0.1:{port}/json") as reply:
                targets = await reply.json(content_type=None)
            url = next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
            return session, await session.ws_connect(url, max_msg_size=0)

        session, ws = loop.run_until_complete(connect())
        page = Page(ws, loop)
        page.call("Page.enable")
        if local_storage:
            page.goto(origin)
            time.sleep(1.0)
            for key, value in local_storage.items():
                page.evaluate(f"localStorage.setItem({json.dumps(key)}, {json.dumps(value)})")
        try:
            yield page
        finally:
            loop.run_until_complete(ws.close())
            loop.run_until_complete(session.close())
    finally:
        loop.close()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        shutil.rmtree(profile, ignore_errors=True)
