"""A headless Chromium for the browser tests, driven over the DevTools protocol with this
project's own `websockets` client (no Node, no Playwright). The fixtures that start it and
serve the repository over HTTP are in conftest.py (`chromium`, `static_site`); tests open tabs
with `open_page` and talk to them through `Page`. Chromium comes from Debian (`make
browser-deps` installs it; `CHROMIUM` names another)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from helpers import MS
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

ROOT = Path(__file__).resolve().parent.parent
# Loopback only: never through an http_proxy from the environment.
HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def chromium_binary() -> str:
    for name in (os.environ.get("CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and (path := shutil.which(name)):
            return path
    pytest.fail("no Chromium: run `make browser-deps` (Debian package chromium) or set CHROMIUM")


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def serve_directory(root: Path) -> Iterator[str]:
    """`root` over HTTP on loopback; yields its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=root))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def run_chromium() -> Iterator[str]:
    """A headless Chromium; yields the DevTools HTTP endpoint."""
    profile = tempfile.mkdtemp(prefix="relay-chromium-")
    proc = subprocess.Popen(
        [
            chromium_binary(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            f"--user-data-dir={profile}",
            "--remote-debugging-port=0",
            "--remote-debugging-address=127.0.0.1",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    port_file = Path(profile) / "DevToolsActivePort"
    deadline = time.monotonic() + 30
    try:
        while not (port_file.exists() and port_file.read_text().strip()):
            if proc.poll() is not None or time.monotonic() > deadline:
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                pytest.fail(f"Chromium did not start: {err[-2000:]}")
            time.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10000 * MS)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(profile, ignore_errors=True)


class Page:
    """One tab, spoken to over the DevTools protocol."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.ids = iter(range(1, 1 << 30))
        self.replies: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.console: list[str] = []
        self.target_id = ""
        self.reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        with contextlib.suppress(ConnectionClosed):  # the tab closed: nothing more to read
            await self._read_all()

    async def _read_all(self) -> None:
        async for raw in self.ws:
            msg = json.loads(raw)
            if "id" in msg and msg["id"] in self.replies:
                self.replies.pop(msg["id"]).set_result(msg)
            elif msg.get("method") == "Runtime.consoleAPICalled":
                args = msg["params"].get("args", [])
                self.console.append(
                    " ".join(str(a.get("value", a.get("description"))) for a in args)
                )
            elif msg.get("method") == "Runtime.exceptionThrown":
                self.console.append(json.dumps(msg["params"]["exceptionDetails"])[:2000])

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        i = next(self.ids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.replies[i] = fut
        await self.ws.send(json.dumps({"id": i, "method": method, "params": params}))
        reply = await asyncio.wait_for(fut, 60000 * MS)
        if "error" in reply:
            raise AssertionError(f"{method}: {reply['error']}")
        return reply["result"]  # type: ignore[no-any-return]

    async def evaluate(self, expression: str) -> Any:
        result = await self.call(
            "Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True
        )
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise AssertionError(f"the page threw: {text}\nconsole: {self.console[-20:]}")
        return result["result"].get("value")

    async def until(self, expression: str, timeout_ms: int = 10000) -> Any:
        """The first truthy value of `expression`, polled (bounded by `timeout_ms`)."""
        deadline = time.monotonic() + timeout_ms * MS
        value = None
        while time.monotonic() < deadline:
            with contextlib.suppress(AssertionError):  # a navigation in progress: not yet
                value = await self.evaluate(expression)
                if value:
                    return value
            await asyncio.sleep(20 * MS)
        raise AssertionError(
            f"never true: {expression}\nlast value: {value!r}\nconsole: {self.console[-20:]}"
        )

    async def screenshot(self) -> bytes:
        """A PNG of what the tab shows."""
        shot = await self.call("Page.captureScreenshot", format="png")
        return base64.b64decode(shot["data"])


@contextlib.asynccontextmanager
async def open_page(
    chromium: str,
    url: str,
    ready: str = "window.ready === true && window.reloading !== true",
    init_script: str | None = None,
) -> AsyncIterator[Page]:
    """A new tab with `url` loaded, once `ready` is true in it; closed on exit.
    `init_script` runs in every document of the tab before the page's own scripts."""
    new_tab = urllib.request.Request(f"{chromium}/json/new?about:blank", method="PUT")
    with HTTP.open(new_tab, timeout=10000 * MS) as r:
        target = json.loads(r.read())
    # No keepalive on the DevTools socket: a busy page may answer pings late, and a missed
    # pong would close it (1011) under a running test.
    async with ws_connect(target["webSocketDebuggerUrl"], max_size=None, ping_interval=None) as ws:
        p = Page(ws)
        p.target_id = target["id"]
        await p.call("Runtime.enable")
        await p.call("Page.enable")
        if init_script is not None:
            await p.call("Page.addScriptToEvaluateOnNewDocument", source=init_script)
        await p.call("Page.navigate", url=url)
        await wait_ready(p, ready)
        yield p
        p.reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await p.reader
    with contextlib.suppress(OSError):
        HTTP.open(f"{chromium}/json/close/{target['id']}", timeout=5000 * MS).close()


async def wait_ready(
    p: Page, ready: str = "window.ready === true && window.reloading !== true"
) -> None:
    """Until `ready` is true in the page's current document. (During a navigation the old
    document may still answer, or no context may answer at all: both only mean not yet.)"""
    for _ in range(500):  # bounded: the module graph loads in well under 5 s
        with contextlib.suppress(AssertionError):
            if await p.evaluate(ready):
                return
        await asyncio.sleep(10 * MS)
    raise AssertionError(f"the page did not get ready ({ready}); console: {p.console}")
