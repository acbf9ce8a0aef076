"""The browser SDK (sdk/browser) in a real headless Chromium against a real relay.

Chromium is driven over the DevTools protocol with this project's own `websockets` client
(no Node, no Playwright): the test serves the repository on a loopback HTTP port, opens
sdk/browser/test/e2e.html, runs one scenario of e2e.js with `Runtime.evaluate` and asserts
on what it observed. Any exception in the page fails the test with the page's message.
Chromium comes from Debian (`make browser-deps` installs it; `CHROMIUM` names another).
"""

from __future__ import annotations

import asyncio
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

import msgpack
import pytest
from helpers import MS
from websockets.asyncio.client import connect as ws_connect

from relay.server.app import Relay

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.timeout(90)
# Loopback only: never through an http_proxy from the environment.
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def chromium_binary() -> str:
    for name in (os.environ.get("CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and (path := shutil.which(name)):
            return path
    pytest.fail("no Chromium: run `make browser-deps` (Debian package chromium) or set CHROMIUM")


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def static_site() -> Iterator[str]:
    """The repository over HTTP on loopback (the page, the SDK modules, the vectors)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=ROOT))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def chromium() -> Iterator[str]:
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
        self.reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
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


@pytest.fixture
async def page(chromium: str, static_site: str) -> AsyncIterator[Page]:
    new_tab = urllib.request.Request(f"{chromium}/json/new?about:blank", method="PUT")
    with _HTTP.open(new_tab, timeout=10000 * MS) as r:
        target = json.loads(r.read())
    async with ws_connect(target["webSocketDebuggerUrl"], max_size=None) as ws:
        p = Page(ws)
        await p.call("Runtime.enable")
        await p.call("Page.enable")
        await p.call("Page.navigate", url=f"{static_site}/sdk/browser/test/e2e.html")
        for _ in range(500):  # bounded: the module graph loads in well under 5 s
            if await p.evaluate("window.ready === true"):
                break
            await asyncio.sleep(10 * MS)
        else:
            raise AssertionError(f"e2e.js did not load; console: {p.console}")
        yield p
        p.reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await p.reader
    with contextlib.suppress(OSError):
        _HTTP.open(f"{chromium}/json/close/{target['id']}", timeout=5000 * MS).close()


def ws_url(relay: Relay) -> str:
    return f"ws://127.0.0.1:{relay.port}/ws"


async def run(page: Page, scenario: str, arg: Any) -> Any:
    return await page.evaluate(f"window.scenarios.{scenario}({json.dumps(arg)})")


async def test_two_members_cursors_selection_typing_leave(page: Page, relay_factory: Any) -> None:
    r = await relay_factory(batch_ms=20, typing_debounce_ms=300)
    seen = await run(page, "twoMembers", ws_url(r))
    assert seen["welcomeSettings"]["typing_debounce_ms"] == 300
    assert seen["bobSeesAnn"] == ["Ann"] and seen["annSeesBob"] == ["Bob"]
    caret = seen["caret"]
    assert caret["count"] == 1 and caret["label"] == "Ann"
    assert (caret["left"], caret["top"]) == ("40px", "48px")  # column 5 x 8 px, line 3 x 16 px
    assert caret["color"].startswith("rgb(") and seen["caret"]["memberColor"].startswith("hsl(")
    sel = seen["selection"]
    assert sel["member"] == {"line": 3, "col": 2, "off": 37, "backward": False}
    assert (sel["left"], sel["width"], sel["top"]) == ("16px", "56px", "48px")
    # 50 moves in one throttle interval: the first and the last go out, nothing between.
    assert seen["burstFrames"] == [0, 49]
    assert seen["typingShown"] == {"text": "Ann is typing...", "hidden": False}
    assert seen["typingAfter"]["events"] == [True, False]
    assert seen["typingAfter"]["text"] == "" and seen["typingAfter"]["hidden"] is True
    assert 0 < seen["rttMs"] < 5000
    assert seen["caretsAfterLeave"] == 0
    assert seen["closed"] == [True, True]


async def test_reconnects_and_rejoins_after_a_drop(page: Page, relay_factory: Any) -> None:
    r = await relay_factory(batch_ms=20)
    seen = await run(page, "reconnects", ws_url(r))
    assert seen["events"][0].startswith("disconnected 4000")
    assert seen["events"][1:] == ["reconnected", "resynced"]
    old_sid, new_sid = seen["sids"]
    assert new_sid != old_sid
    assert ["left", old_sid] in seen["bobSaw"] and ["joined", new_sid] in seen["bobSaw"]
    assert seen["cursorAfter"] == {"line": 7, "col": 7, "off": 7}


async def test_refusals_reach_the_caller(page: Page, relay_factory: Any) -> None:
    r = await relay_factory(max_documents=1)
    seen = await run(page, "refusals", ws_url(r))
    assert seen["second"] == {"name": "RelayError", "code": 9, "isRelayError": True}
    assert seen["badHello"] == {"name": "ConnectionClosedError", "code": 4401}


async def test_token_provider_renews_at_expiry(page: Page, relay_factory: Any) -> None:
    """The relay closes a connection at its token's exp; with a token provider (here minting
    2-second HS256 tokens in the page) the client reconnects at once with a fresh token and
    rejoins; a refused fresh token is fatal; a provider that throws fails connect()."""
    secret = "browser-test-secret-0123456789abcdef"  # the relay wants 32+ bytes
    r = await relay_factory(batch_ms=20, jwt_secret=secret)
    seen = await run(page, "tokenRenewal", {"url": ws_url(r), "secret": secret, "ttlMs": 2000})
    assert seen["events"] == ["disconnected 4401 token expired", "reconnected", "resynced"]
    assert seen["annCalls"] >= 2 and seen["newConnection"] and seen["user"] == "ann"
    assert seen["renewedAfterMs"] < 1500, seen  # at once, not after the 30 s backoff
    assert seen["bobSeesCursor"] == {"line": 7, "col": 8, "off": 9}
    assert seen["cyClosed"]["code"] == 4401
    assert seen["cyClosed"]["reason"].startswith("invalid token"), seen["cyClosed"]
    assert seen["cyCalls"] == 2 and seen["cyClosedFlag"] is True
    assert seen["brokenProvider"] == {
        "name": "TokenProviderError",
        "cause": "token service down",
        "message": "token provider failed: Error",
    }


def has_integral_float(value: Any) -> bool:
    if isinstance(value, float):
        return value.is_integer()
    if isinstance(value, list):
        return any(has_integral_float(v) for v in value)
    if isinstance(value, dict):
        return any(has_integral_float(v) for v in value.values())
    return False


async def test_golden_vectors_in_the_browser(page: Page, static_site: str) -> None:
    """Every vector decodes in Chromium; every one re-encodes byte for byte, except those
    whose bytes are not msgpack-python's smallest form and those with an integral float
    (50.0 is the number 50 in JS)."""
    vectors = json.loads((ROOT / "tests/vectors/protocol_v1.json").read_text())["vectors"]
    valued = [v for v in vectors if "value" in v]
    expected_not_reencoded = [
        v["name"]
        for v in valued
        if msgpack.packb(v["value"]).hex() != v["hex"] or has_integral_float(v["value"])
    ]
    seen = await run(page, "vectors", static_site)
    assert seen["decoded"] == [v["name"] for v in valued]
    assert seen["mismatches"] == []
    assert seen["notReencoded"] == expected_not_reencoded
