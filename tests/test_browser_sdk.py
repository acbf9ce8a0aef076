"""The browser SDK (sdk/browser) in a real headless Chromium against a real relay.

The test serves the repository on a loopback HTTP port, opens sdk/browser/test/e2e.html, runs
one scenario of e2e.js with `Runtime.evaluate` and asserts on what it observed. Any exception
in the page fails the test with the page's message. (The Chromium harness is tests/browser.py.)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import msgpack
import pytest
from browser import ROOT, Page, open_page, wait_ready
from helpers import MS

from relay.server.app import Relay

pytestmark = pytest.mark.timeout(90)


def e2e_url(static_site: str) -> str:
    return f"{static_site}/sdk/browser/test/e2e.html"


@pytest.fixture
async def page(chromium: str, static_site: str) -> AsyncIterator[Page]:
    async with open_page(chromium, e2e_url(static_site)) as p:
        yield p


@pytest.fixture
async def two_pages(chromium: str, static_site: str) -> AsyncIterator[tuple[Page, Page]]:
    """Two tabs, ann's and bob's. Headless Chromium shows only the newest tab (the other is
    `hidden`, and neither has focus); focus emulation makes both visible and focused, as two
    people's windows are, until a test takes it away."""
    url = e2e_url(static_site)
    async with open_page(chromium, url) as a, open_page(chromium, url) as b:
        for p in (a, b):
            await p.call("Emulation.setFocusEmulationEnabled", enabled=True)
        yield a, b


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
    """Without a grace to resume in (reconnect_grace_ms=0), a drop is a new session: the
    client joins afresh, with a new sid (the resume has its own tests below)."""
    r = await relay_factory(batch_ms=20, reconnect_grace_ms=0)
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


# ---------------------------------------------------------------- v1.1 sessions (protocol §11)

ACTIVITY_VIEWING, ACTIVITY_AWAY, ACTIVITY_DISCONNECTED = 1, 4, 5
REASON_LEFT = 0


class _Link:
    def __init__(self, page_side: asyncio.StreamWriter, relay_side: asyncio.StreamWriter) -> None:
        self.page_side = page_side
        self.relay_side = relay_side
        self.cut = False

    def abort(self) -> None:
        self.page_side.transport.abort()
        self.relay_side.transport.abort()


class Cable:
    """A TCP hop between a page and the relay that the test can pull out, as a network that
    goes away does. Unplugged, bytes either way are dropped and nothing is closed (no FIN, no
    close frame), so the relay finds out only through its keepalive (liveness_timeout_ms) and
    the page not at all; new connections are refused. Plugged back in, the connections that
    lived through the outage are reset, as a peer's kernel answers the first packet of a
    connection it has forgotten, and new ones go through. With `reset_on_plug=False` they are
    not: they stay cut (bytes still dropped, nothing closed), as a page that sent nothing
    during the outage is never told; only the page's own keepalive can find them dead.
    `dropped_from_page` counts the bytes from the page that went nowhere.

    (DevTools' offline emulation alone is no such network: in headless Chromium it fails new
    connections, but an open WebSocket goes on working through it, both ways.)"""

    def __init__(self, relay_port: int, *, reset_on_plug: bool = True) -> None:
        self.relay_port = relay_port
        self.reset_on_plug = reset_on_plug
        self.plugged = True
        self.dropped_from_page = 0
        self.links: set[_Link] = set()
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    def unplug(self) -> None:
        self.plugged = False
        for link in self.links:
            link.cut = True

    def plug(self) -> None:
        self.plugged = True
        if not self.reset_on_plug:
            return
        for link in [x for x in self.links if x.cut]:
            link.abort()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for link in list(self.links):
            link.abort()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.plugged:
            writer.transport.abort()
            return
        relay_reader, relay_writer = await asyncio.open_connection("127.0.0.1", self.relay_port)
        link = _Link(writer, relay_writer)
        self.links.add(link)
        try:
            await asyncio.gather(
                self._pump(link, reader, relay_writer), self._pump(link, relay_reader, writer)
            )
        finally:
            self.links.discard(link)

    async def _pump(
        self, link: _Link, src: asyncio.StreamReader, dst: asyncio.StreamWriter
    ) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await src.read(65536):
                if not link.cut:
                    dst.write(data)
                elif dst is link.relay_side:
                    self.dropped_from_page += len(data)
        if link.cut:
            # The relay gave up on it (keepalive): the page is not told before plug().
            link.relay_side.transport.abort()
        else:
            link.abort()


def ann(url: str, docs: list[str], **extra: Any) -> dict[str, Any]:
    return {"url": url, "role": "ann", "userId": "ann", "name": "Ann", "docs": docs, **extra}


def bob(url: str, docs: list[str], **extra: Any) -> dict[str, Any]:
    return {"url": url, "role": "bob", "userId": "bob", "name": "Bob", "docs": docs, **extra}


def member(state: dict[str, Any], doc: str, sid: int) -> dict[str, Any] | None:
    return next((m for m in state["docs"][doc]["members"] if m["sid"] == sid), None)


def log_of(state: dict[str, Any], doc: str, sid: int, since: int = 0) -> list[dict[str, Any]]:
    """The role's events about `sid` in `doc`, from the `since`-th entry of its log on."""
    return [e for e in state["log"][since:] if e.get("doc") == doc and e.get("sid") == sid]


async def until_state(
    p: Page, role: str, check: Any, what: str, timeout_ms: float = 5000
) -> dict[str, Any]:
    """Poll the role's sessionState in the page until `check(state)` holds."""
    deadline = time.monotonic() + timeout_ms * MS
    while True:
        state: dict[str, Any] = await run(p, "sessionState", role)
        if check(state):
            return state
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out: {what}; {role} saw {state['log'][-20:]}")
        await asyncio.sleep(20 * MS)


async def move(p: Page, doc: str, n: int) -> None:
    """Ann's cursor to line n, col n, offset n."""
    await run(p, "sessionMove", {"role": "ann", "doc": doc, "line": n, "col": n, "off": n})


async def set_offline(p: Page, offline: bool) -> None:
    await p.call(
        "Network.emulateNetworkConditions",
        offline=offline,
        latency=0,
        downloadThroughput=-1,
        uploadThroughput=-1,
    )


async def test_offline_and_back_within_the_grace_resumes(
    two_pages: tuple[Page, Page], relay_factory: Any
) -> None:
    """Ann's network goes away (offline emulation, and the cable between her page and the
    relay pulled out) and comes back within the grace: bob sees her DISCONNECTED (a grey
    caret), then back, with the same sid and color and never a left or a joined; the cursor
    she moved during the outage reaches him after the resume."""
    a, b = two_pages
    r = await relay_factory(batch_ms=20, reconnect_grace_ms=10000, liveness_timeout_ms=1000)
    cable = Cable(r.port)
    await cable.start()
    try:
        await run(b, "sessionOpen", bob(ws_url(r), ["doc-net"], ui=True))
        options = {"backoffMs": 100, "maxBackoffMs": 400}
        url = f"ws://127.0.0.1:{cable.port}/ws"
        opened = await run(a, "sessionOpen", ann(url, ["doc-net"], options=options))
        sid = opened["docs"]["doc-net"]["sid"]
        await move(a, "doc-net", 1)
        seen = await until_state(
            b, "bob", lambda s: (member(s, "doc-net", sid) or {}).get("cursor"), "bob sees ann"
        )
        color = member(seen, "doc-net", sid)["color"]  # type: ignore[index]
        mark = len(seen["log"])  # what bob sees from here on is the outage

        await a.call("Network.enable")
        await set_offline(a, True)
        cable.unplug()
        cut_at = time.monotonic()
        await move(a, "doc-net", 9)  # lost in the outage: sent again after the resume
        await until_state(
            b,
            "bob",
            lambda s: (member(s, "doc-net", sid) or {}).get("activity") == ACTIVITY_DISCONNECTED,
            "bob sees ann DISCONNECTED",
        )
        disconnected_after_s = time.monotonic() - cut_at
        # The stale socket is reset, but the page is still offline: its reconnects fail.
        cable.plug()
        await until_state(
            a,
            "ann",
            lambda s: sum(e["type"] == "disconnected" for e in s["log"]) >= 2,
            "a reconnect failed while offline",
        )
        await set_offline(a, False)
        back = await until_state(
            b,
            "bob",
            lambda s: (
                (m := member(s, "doc-net", sid)) is not None
                and m["activity"] != ACTIVITY_DISCONNECTED
                and (m["cursor"] or {}).get("line") == 9
            ),
            "bob sees ann back, with the cursor she moved while away",
            timeout_ms=10000,
        )
        ann_state = await run(a, "sessionState", "ann")
    finally:
        await cable.close()

    # liveness_timeout_ms (1 s), then a batch
    assert disconnected_after_s < 3000 * MS, disconnected_after_s
    events = log_of(back, "doc-net", sid, mark)
    assert [e for e in events if e["type"] in ("left", "joined")] == [], events
    activities = [e["activity"] for e in events if e["type"] == "activity"]
    assert ACTIVITY_DISCONNECTED in activities, activities
    assert activities[-1] != ACTIVITY_DISCONNECTED, activities
    grey = next(e for e in events if e["type"] == "activity" and e["activity"] == 5)["caret"]
    assert grey == {"label": "Ann (Disconnected)", "disconnected": True,
                    "color": "rgb(158, 158, 158)"}  # fmt: skip
    assert member(back, "doc-net", sid)["color"] == color  # type: ignore[index]
    assert ann_state["resumed"] is True and ann_state["docs"]["doc-net"]["sid"] == sid
    assert {"type": "reconnected", "resumed": True}.items() <= next(
        e for e in ann_state["log"] if e["type"] == "reconnected"
    ).items()
    assert ann_state["joins"] == ["doc-net"]  # the first JOIN only: the resume re-attached it


async def test_a_reload_resumes_without_a_flicker(
    two_pages: tuple[Page, Page], relay_factory: Any
) -> None:
    """Ann reloads her page. The new page resumes the old one's session (its token kept in
    sessionStorage, its unload time noted on pagehide) and takes over the document it asks
    for, without a JOIN: bob sees the same sid, no left, no joined and no focus lost (he may
    see DISCONNECTED for the moment of the reload). The document the new page never asks
    for is left (reason LEFT) once the claim window is over."""
    a, b = two_pages
    r = await relay_factory(batch_ms=20, reconnect_grace_ms=10000)
    url = ws_url(r)
    await run(b, "sessionOpen", bob(url, ["doc-r", "doc-x"]))
    before = await run(a, "sessionOpen", ann(url, ["doc-r", "doc-x"]))
    sid_r, sid_x = before["docs"]["doc-r"]["sid"], before["docs"]["doc-x"]["sid"]
    await move(a, "doc-r", 2)
    seen = await until_state(
        b,
        "bob",
        lambda s: (member(s, "doc-r", sid_r) or {}).get("cursor") and member(s, "doc-x", sid_x),
        "bob sees ann in both documents",
    )
    color = member(seen, "doc-r", sid_r)["color"]  # type: ignore[index]
    mark = len(seen["log"])  # what bob sees from here on is the reload

    await a.evaluate("window.reloading = true")  # wait_ready waits for the new document
    await a.call("Page.reload")
    await wait_ready(a)
    after = await run(a, "sessionOpen", ann(url, ["doc-r"]))
    left = await until_state(
        b,
        "bob",
        lambda s: member(s, "doc-x", sid_x) is None,
        "the document the new page did not ask for is left",
        timeout_ms=8000,
    )
    ann_state = await run(a, "sessionState", "ann")

    assert after["resumed"] is True
    assert after["docs"]["doc-r"]["sid"] == sid_r
    assert after["docs"]["doc-r"]["handle"] == before["docs"]["doc-r"]["handle"]
    assert ann_state["joins"] == []  # taken over, never joined again (no ERROR 8)
    events = log_of(left, "doc-r", sid_r, mark)
    assert [e for e in events if e["type"] in ("left", "joined")] == [], events
    # The old page blurs just before it unloads: that is no reason to look away.
    assert [e for e in events if e["type"] == "focus" and e["focused"] is False] == [], events
    kept = member(left, "doc-r", sid_r)
    assert kept is not None and kept["color"] == color
    assert kept["cursor"] == {"line": 2, "col": 2, "off": 2}
    gone = [e for e in log_of(left, "doc-x", sid_x, mark) if e["type"] in ("left", "joined")]
    assert [(e["type"], e["reason"]) for e in gone] == [("left", REASON_LEFT)], gone


async def test_a_hidden_page_turns_away_not_gone(
    two_pages: tuple[Page, Page], relay_factory: Any
) -> None:
    """Ann's tab goes to the background (focus emulation off: hidden and blurred, with real
    visibilitychange and blur events): one FOCUS false, and bob sees her Away after
    away_after_blur_ms, never gone; back in front, one FOCUS true and she is Viewing."""
    a, b = two_pages
    r = await relay_factory(batch_ms=20, away_after_blur_ms=300)
    url = ws_url(r)
    await run(b, "sessionOpen", bob(url, ["doc-h"]))
    sid = (await run(a, "sessionOpen", ann(url, ["doc-h"])))["docs"]["doc-h"]["sid"]
    seen = await until_state(
        b,
        "bob",
        lambda s: (
            (m := member(s, "doc-h", sid)) is not None
            and m["focused"] is True
            and m["activity"] == ACTIVITY_VIEWING
        ),
        "bob sees ann focused",
    )
    mark = len(seen["log"])

    await a.call("Emulation.setFocusEmulationEnabled", enabled=False)
    away = await until_state(
        b,
        "bob",
        lambda s: (member(s, "doc-h", sid) or {}).get("activity") == ACTIVITY_AWAY,
        "bob sees ann Away",
    )
    hidden = await run(a, "sessionState", "ann")
    await a.call("Emulation.setFocusEmulationEnabled", enabled=True)
    back = await until_state(
        b,
        "bob",
        lambda s: (
            (m := member(s, "doc-h", sid)) is not None
            and m["focused"] is True
            and m["activity"] == ACTIVITY_VIEWING
        ),
        "bob sees ann back",
    )
    shown = await run(a, "sessionState", "ann")

    assert hidden["visibility"] == "hidden" and shown["visibility"] == "visible"
    # visibilitychange and blur both fired each way: one frame per change of the two together.
    assert hidden["focusFrames"] == [False] and shown["focusFrames"] == [False, True]
    events = log_of(back, "doc-h", sid, mark)
    what = [(e["type"], e["focused"] if e["type"] == "focus" else e["activity"]) for e in events]
    assert what.index(("focus", False)) < what.index(("activity", ACTIVITY_AWAY)), what
    assert not any(t in ("left", "joined") for t, _ in what), what
    assert member(away, "doc-h", sid) is not None


async def test_close_leaves_at_once(two_pages: tuple[Page, Page], relay_factory: Any) -> None:
    """close() LEAVEs every document, then closes with 1000: bob sees ann leave with reason
    LEFT within a batch or two, not DISCONNECTED for the (default 30 s) grace; nothing is
    left in sessionStorage to resume."""
    a, b = two_pages
    r = await relay_factory(batch_ms=20)
    url = ws_url(r)
    await run(b, "sessionOpen", bob(url, ["doc-c"]))
    sid = (await run(a, "sessionOpen", ann(url, ["doc-c"])))["docs"]["doc-c"]["sid"]
    await until_state(b, "bob", lambda s: member(s, "doc-c", sid), "bob sees ann")
    started = time.monotonic()
    closed = await run(a, "sessionClose", "ann")
    gone = await until_state(
        b, "bob", lambda s: member(s, "doc-c", sid) is None, "ann left", timeout_ms=2000
    )
    elapsed_s = time.monotonic() - started

    assert elapsed_s < 1000 * MS, elapsed_s
    events = log_of(gone, "doc-c", sid)
    assert [(e["type"], e["reason"]) for e in events if e["type"] == "left"] == [("left", 0)]
    assert not any(e["type"] == "activity" and e["activity"] == 5 for e in events), events
    assert closed["state"]["closed"] is True
    assert not [k for k in closed["stored"] if k.startswith("presence-relay:resume:")]


async def test_a_newer_connection_takes_the_session_over(page: Page, relay_factory: Any) -> None:
    """A second client resumes a session whose connection is still open: the relay closes the
    old one with 4409, which is fatal (no reconnect to take it back); the newcomer has the
    document with the same handle and sid, without a JOIN."""
    r = await relay_factory(batch_ms=20, reconnect_grace_ms=10000)
    seen = await run(page, "takeover", ws_url(r))
    assert seen["firstClosed"]["code"] == 4409
    assert seen["firstReconnected"] is False
    assert seen["resumed"] is True
    assert seen["sids"][0] == seen["sids"][1] and seen["handles"][0] == seen["handles"][1]
    assert seen["joinsSent"] == 0


async def test_keepalive_finds_a_dead_socket_the_page_was_never_told_of(
    two_pages: tuple[Page, Page], relay_factory: Any
) -> None:
    """Ann's page is idle (it sends nothing) when her network goes away and comes back. No
    byte ever tells her page that its socket is dead: the cable drops them and, plugged back,
    does not reset the stale connection (reset_on_plug=False). The relay finds her gone
    (liveness_timeout_ms) and bob sees her DISCONNECTED; then the SDK's own keepalive (a PING
    after keepaliveMs of silence, unanswered for keepaliveMs more) lets the socket go and
    resumes within the grace: bob sees her back with the same sid, never a left or a joined.
    Without the keepalive the page would sit on the dead socket until its TCP gave up."""
    a, b = two_pages
    r = await relay_factory(batch_ms=20, reconnect_grace_ms=10000, liveness_timeout_ms=1000)
    cable = Cable(r.port, reset_on_plug=False)
    await cable.start()
    keepalive_ms = 1000
    try:
        await run(b, "sessionOpen", bob(ws_url(r), ["doc-ka"]))
        options = {"backoffMs": 100, "maxBackoffMs": 400, "keepaliveMs": keepalive_ms}
        url = f"ws://127.0.0.1:{cable.port}/ws"
        opened = await run(a, "sessionOpen", ann(url, ["doc-ka"], options=options))
        sid = opened["docs"]["doc-ka"]["sid"]
        seen = await until_state(b, "bob", lambda s: member(s, "doc-ka", sid), "bob sees ann")
        color = member(seen, "doc-ka", sid)["color"]  # type: ignore[index]
        mark = len(seen["log"])

        cable.unplug()
        cut_at = time.monotonic()
        await until_state(
            b,
            "bob",
            lambda s: (member(s, "doc-ka", sid) or {}).get("activity") == ACTIVITY_DISCONNECTED,
            "bob sees ann DISCONNECTED",
        )
        cable.plug()  # the stale connection is left as it is: cut, not reset
        lost = await until_state(
            a,
            "ann",
            lambda s: any(e["type"] == "disconnected" for e in s["log"]),
            "ann's keepalive finds the dead socket",
            timeout_ms=8000,
        )
        found_after_s = time.monotonic() - cut_at
        back = await until_state(
            b,
            "bob",
            lambda s: (
                (m := member(s, "doc-ka", sid)) is not None
                and m["activity"] != ACTIVITY_DISCONNECTED
            ),
            "bob sees ann back",
            timeout_ms=8000,
        )
        ann_state = await run(a, "sessionState", "ann")
        dropped = cable.dropped_from_page
    finally:
        await cable.close()

    # Silence since before the cut: a PING at most keepaliveMs after it, lost keepaliveMs
    # later (timers and polling add a little).
    assert found_after_s < 4 * keepalive_ms * MS, found_after_s
    assert [e["code"] for e in lost["log"] if e["type"] == "disconnected"][:1] == [1006]
    assert dropped > 0  # the page's PING went into the dead cable, unanswered
    events = log_of(back, "doc-ka", sid, mark)
    assert [e for e in events if e["type"] in ("left", "joined")] == [], events
    activities = [e["activity"] for e in events if e["type"] == "activity"]
    assert ACTIVITY_DISCONNECTED in activities, activities
    assert activities[-1] != ACTIVITY_DISCONNECTED, activities
    assert member(back, "doc-ka", sid)["color"] == color  # type: ignore[index]
    assert ann_state["resumed"] is True and ann_state["docs"]["doc-ka"]["sid"] == sid
    assert ann_state["connected"] is True
    assert ann_state["joins"] == ["doc-ka"]  # the first JOIN only: the resume re-attached it
