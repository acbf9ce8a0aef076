"""The demo page the relay serves at `/` (relay/server/demo.py, relay/demo/): its HTTP, and the
page itself in a real headless Chromium against a real relay.

The browser test has three tabs on one document: Ann's two (one browser: the same origin, so
the same localStorage identity) and Bob's (another origin, `localhost` instead of `127.0.0.1`,
so another localStorage: another user). Every check is made from the DOM and, for the caret
and the selection, from the pixels of a screenshot as well.
"""

from __future__ import annotations

import asyncio
import http.client
import io
import json
import os
import re
import time
from pathlib import Path
from typing import Any

import pytest
from browser import ROOT, Page, open_page
from PIL import Image

from relay.server import demo
from relay.server.app import Relay

pytestmark = pytest.mark.timeout(120)
SECRET = "demo-test-secret-0123456789abcdef0123"
# Where the side-by-side screenshot goes (CI keeps it as an artifact).
ARTIFACTS = Path(os.environ.get("RELAY_TEST_ARTIFACTS", ROOT / "tests" / "artifacts"))


def get(relay: Relay, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    """A request with `path` sent exactly as written (http.client normalizes nothing)."""
    conn = http.client.HTTPConnection("127.0.0.1", relay.port, timeout=10)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


# ------------------------------------------------------------------------------------ HTTP


async def test_the_demo_files_are_served_with_their_types_and_a_strict_csp(
    relay_factory: Any,
) -> None:
    r = await relay_factory()
    expected = {
        "/": "text/html; charset=utf-8",
        "/demo.js": "text/javascript; charset=utf-8",
        "/demo.css": "text/css; charset=utf-8",
        "/favicon.svg": "image/svg+xml",
        "/sdk/presence.js": "text/javascript; charset=utf-8",
        "/sdk/msgpack.js": "text/javascript; charset=utf-8",
        "/sdk/ui.js": "text/javascript; charset=utf-8",
        "/sdk/adapters/textarea.js": "text/javascript; charset=utf-8",
    }
    assert set(expected) == set(demo.PAGE_FILES) | set(demo.SDK_FILES)
    for path, content_type in expected.items():
        status, headers, body = await asyncio.to_thread(get, r, path)
        assert status == 200, path
        assert headers["content-type"] == content_type, path
        assert headers["x-content-type-options"] == "nosniff"
        csp = headers["content-security-policy"]
        assert "default-src 'none'" in csp and "script-src 'self'" in csp, csp
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
        assert "frame-ancestors 'none'" in csp
        assert int(headers["content-length"]) == len(body) > 0
    # The SDK the page imports is the browser SDK's own file, not a copy that can drift.
    _, _, body = await asyncio.to_thread(get, r, "/sdk/presence.js")
    assert body == (ROOT / "sdk" / "browser" / "presence.js").read_bytes()
    # The page has no inline script or style for the CSP to block.
    _, _, page = await asyncio.to_thread(get, r, "/")
    html = page.decode()
    assert not re.search(r"<script(?![^>]*\bsrc=)", html) and "<style" not in html
    assert " style=" not in html and "onclick" not in html
    # A query string does not change what the path names.
    status, _, again = await asyncio.to_thread(get, r, "/?x=1")
    assert status == 200 and again == page


@pytest.mark.parametrize(
    "path",
    [
        "/..%2fsetup.py",
        "/%2e%2e/setup.py",
        "/%2E%2E%2Fsetup.py",
        "/sdk/..%2f..%2fsetup.py",
        "/sdk/%2e%2e%2fpresence.js",
        "/sdk/../setup.py",
        "/sdk/adapters/..%5c..%5cpresence.js",
        "/demo.js%00",
        "/demo.js/",
        "//demo.js",
        "/%2fdemo.js",
        "/sdk/",
        "/sdk",
        "/sdk/adapters/",
        "/index.html",
        "/relay/demo/demo.js",
        "/sdk/browser/presence.js",
        "/../../../../etc/passwd",
        "/%252e%252e/setup.py",
    ],
)
async def test_nothing_else_is_served(relay_factory: Any, path: str) -> None:
    r = await relay_factory()
    status, _, body = await asyncio.to_thread(get, r, path)
    assert status == 404, (path, body)
    assert body == b"not found\n"


async def test_only_get(relay_factory: Any) -> None:
    r = await relay_factory()
    for method in ("POST", "PUT", "DELETE"):
        status, _, _ = await asyncio.to_thread(get, r, "/", method)
        assert status == 405, method


async def test_the_demo_is_off_with_a_secret_unless_asked_for(relay_factory: Any) -> None:
    off = await relay_factory(jwt_secret=SECRET)
    for path in ("/", "/demo.js", "/sdk/presence.js"):
        status, _, _ = await asyncio.to_thread(get, off, path)
        assert status == 404, path
    on = await relay_factory(jwt_secret=SECRET, demo=True)
    status, _, _ = await asyncio.to_thread(get, on, "/sdk/presence.js")
    assert status == 200
    dev_off = await relay_factory(demo=False)
    status, _, _ = await asyncio.to_thread(get, dev_off, "/")
    assert status == 404
    # The relay's own routes are unchanged by the demo.
    assert (await asyncio.to_thread(get, on, "/healthz"))[0] == 200


# ------------------------------------------------------------------------------- Chromium

IDENTITY_KEY = "presence-relay-demo:identity"


def identity_script(user_id: str, name: str) -> str:
    identity = json.dumps({"userId": user_id, "name": name})
    return f"localStorage.setItem({json.dumps(IDENTITY_KEY)}, {json.dumps(identity)});"


async def select(p: Page, start: int, end: int, backward: bool = False) -> None:
    """Focus the text and select start..end, as a user's drag does."""
    direction = "backward" if backward else "forward"
    await p.evaluate(
        f"""(() => {{
            const t = document.getElementById('text');
            t.focus(); t.scrollTop = 0;
            t.setSelectionRange({start}, {end}, '{direction}');
            t.dispatchEvent(new Event('select'));
            return true;
        }})()"""
    )


async def scroll(p: Page, top: int) -> None:
    """Scroll the text, and wait for the page to have handled it (scroll events are async)."""
    await p.evaluate(
        f"""new Promise((resolve) => {{
            const t = document.getElementById('text');
            if (t.scrollTop === {top}) {{ resolve(true); return; }}
            t.addEventListener('scroll', () => requestAnimationFrame(() => resolve(true)),
                               {{ once: true }});
            t.scrollTop = {top};
        }})"""
    )


def sid_of(p: Page) -> Any:
    return p.evaluate("window.demo.doc.sid")


# The geometry the test expects, worked out without the adapter's mirror: the demo's text is
# monospaced with 20 px lines, so a position's box follows from the textarea's padding, the
# width of one character and the line number (lines short enough not to wrap).
EXPECTED_BOX = """((line, col) => {
    const t = document.getElementById('text');
    const cs = getComputedStyle(t);
    const ctx = document.createElement('canvas').getContext('2d');
    ctx.font = cs.font;
    const w = ctx.measureText('x'.repeat(100)).width / 100;
    const r = t.getBoundingClientRect();
    return {
        x: r.left + parseFloat(cs.borderLeftWidth) + parseFloat(cs.paddingLeft) + col * w
           - t.scrollLeft,
        y: r.top + parseFloat(cs.borderTopWidth) + parseFloat(cs.paddingTop)
           + line * parseFloat(cs.lineHeight) - t.scrollTop,
        charWidth: w,
        lineHeight: parseFloat(cs.lineHeight),
    };
})"""


def caret_of(sid: int) -> str:
    return f"""(() => {{
        const c = document.querySelector('.pr-caret[data-sid="{sid}"]');
        if (!c) return null;
        const r = c.getBoundingClientRect();
        const label = c.querySelector('.pr-caret-label');
        return {{ x: r.left, y: r.top, w: r.width, h: r.height,
                  color: getComputedStyle(c).backgroundColor,
                  label: label.textContent, faded: label.classList.contains('pr-label-faded') }};
    }})()"""


def selection_of(sid: int) -> str:
    return f"""(() => Array.from(
        document.querySelectorAll('.pr-selection[data-sid="{sid}"]'), (el) => {{
            const r = el.getBoundingClientRect();
            return {{ x: r.left, y: r.top, w: r.width, h: r.height }};
        }}))()"""


AVATARS = """Array.from(document.querySelectorAll('#avatars .pr-avatar'), (a) => ({
    user: a.dataset.user,
    name: a.querySelector('.pr-avatar-name').textContent,
    activity: a.querySelector('.pr-avatar-activity').textContent,
    badge: a.querySelector('.pr-avatar-badge')?.textContent ?? null,
}))"""


def rgb(css: str) -> tuple[int, int, int]:
    r, g, b = (int(x) for x in re.findall(r"\d+", css)[:3])
    return r, g, b


def pixel(png: bytes, x: float, y: float) -> tuple[int, int, int]:
    with Image.open(io.BytesIO(png)) as im:
        r, g, b = im.convert("RGB").getpixel((round(x), round(y)))
    return r, g, b


def near(a: tuple[int, ...], b: tuple[int, ...], tolerance: int) -> bool:
    return all(abs(x - y) <= tolerance for x, y in zip(a, b, strict=True))


async def prepare(p: Page) -> None:
    await p.call("Emulation.setFocusEmulationEnabled", enabled=True)
    await p.call(
        "Emulation.setDeviceMetricsOverride",
        width=1100,
        height=640,
        deviceScaleFactor=1,
        mobile=False,
    )


async def test_two_users_and_a_second_tab_see_each_other(chromium: str, relay_factory: Any) -> None:
    r = await relay_factory(batch_ms=20, typing_debounce_ms=1500, reconnect_grace_ms=1500)
    doc = "demo-test"
    ann_url = f"http://127.0.0.1:{r.port}/#{doc}"
    bob_url = f"http://localhost:{r.port}/#{doc}"
    ann_id, bob_id = identity_script("ann", "Ann"), identity_script("bob", "Bob")
    async with (
        open_page(chromium, ann_url, "window.ready === true", ann_id) as ann,
        open_page(chromium, bob_url, "window.ready === true", bob_id) as bob,
    ):
        for p in (ann, bob):
            await prepare(p)
        ann_sid, bob_sid = await sid_of(ann), await sid_of(bob)

        # Ann selects "quick brown" on the line "01  The quick brown fox ...", forward: her
        # caret (the head) is at its end.
        text = await ann.evaluate("document.getElementById('text').value")
        lines = text.split("\n")
        line = next(i for i, x in enumerate(lines) if x.startswith("01  The quick brown fox"))
        line_start = sum(len(x) + 1 for x in lines[:line])
        col_a, col_b = 8, 19  # "quick brown"
        await select(bob, 0, 0)  # Bob at the top, looking at the same lines
        await select(ann, line_start + col_a, line_start + col_b)
        seen = await bob.until(caret_of(ann_sid))
        await bob.until(f"{selection_of(ann_sid)}.length > 0")
        await scroll(bob, 360)  # Bob scrolls Ann's line into the middle of his view
        seen = await bob.evaluate(caret_of(ann_sid))
        box = await bob.evaluate(f"{EXPECTED_BOX}({line}, {col_b})")
        assert seen["label"] == "Ann"
        assert abs(seen["x"] + 1 - box["x"]) <= 1.5, (seen, box)  # the 2 px bar centred on it
        assert abs(seen["y"] - box["y"]) <= 1.5, (seen, box)
        assert abs(seen["h"] - box["lineHeight"]) <= 1  # as tall as the line
        member = await bob.evaluate(f"window.demo.doc.members.get({ann_sid})")
        assert member["cursor"] == {"line": line, "col": col_b, "off": line_start + col_b}
        assert member["selection"] == {
            "line": line,
            "col": col_a,
            "off": line_start + col_a,
            "backward": False,
        }
        rects = await bob.evaluate(selection_of(ann_sid))
        assert len(rects) == 1
        start_box = await bob.evaluate(f"{EXPECTED_BOX}({line}, {col_a})")
        assert abs(rects[0]["x"] - start_box["x"]) <= 1.5
        assert abs(rects[0]["w"] - (col_b - col_a) * box["charWidth"]) <= 2

        # The same from the pixels: Ann's color on the caret, her color at 25 % over white
        # in the selection (sampled in the line's top rows, above the glyphs).
        shot = await bob.screenshot()
        ann_color = rgb(seen["color"])
        assert near(pixel(shot, seen["x"] + 0.5, seen["y"] + seen["h"] / 2), ann_color, 40)
        tint = tuple(round(0.25 * c + 0.75 * 255) for c in ann_color)
        sample_x = rects[0]["x"] + rects[0]["w"] / 2
        assert near(pixel(shot, sample_x, rects[0]["y"] + 1), tint, 24), (tint, ann_color)
        assert not near(tint, (255, 255, 255), 10)  # a real tint, not white

        # Avatars: one per user; Ann's second tab makes a badge "2", not a third avatar.
        async with open_page(chromium, ann_url, "window.ready === true") as ann2:
            await prepare(ann2)
            ann2_sid = await sid_of(ann2)
            assert ann2_sid not in (ann_sid, bob_sid)
            users = await bob.until(
                f"(() => {{ const a = {AVATARS}; return a.length === 2 "
                "&& a.some((x) => x.badge === '2') ? a : null; })()"
            )
            by_user = {u["user"]: u for u in users}
            assert by_user["ann"]["name"] == "Ann" and by_user["ann"]["badge"] == "2"
            assert by_user["bob"]["name"] == "Bob (you)" and by_user["bob"]["badge"] is None
            assert by_user["ann"]["activity"] in ("Selecting", "Editing", "Viewing")
            users = await ann2.until(
                f"(() => {{ const a = {AVATARS}; return a.length === 2 ? a : null; }})()"
            )
            assert {u["name"] for u in users} == {"Ann (you)", "Bob"}

            # A status (STATUS, v1.1) typed in Ann's header shows on her avatar at Bob's.
            await ann.evaluate(
                "(() => { const s = document.getElementById('my-status'); "
                "s.value = 'presenting'; s.dispatchEvent(new Event('change')); return 1; })()"
            )
            shown = await bob.until(
                "document.querySelector('.pr-avatar[data-user=\"ann\"] .pr-avatar-status')"
                "?.textContent"
            )
            assert shown == "presenting"

            # The typing line: Bob types, Ann's tabs say so, then it goes.
            await bob.evaluate("document.getElementById('text').focus()")
            await bob.call("Input.insertText", text="hi")
            for p in (ann, ann2):
                shown = await p.until(
                    "(() => { const t = document.getElementById('typing'); "
                    "return !t.classList.contains('hidden') && t.textContent; })()"
                )
                assert shown == "Bob is typing..."
            bob_typing = await ann.until(
                f"document.querySelector('.pr-caret[data-sid=\"{bob_sid}\"].pr-typing') !== null"
            )
            assert bob_typing
            await ann.until("document.getElementById('typing').classList.contains('hidden')")
            assert await ann.evaluate("document.getElementById('typing').textContent") == ""
            # Bob does not see himself typing.
            assert await bob.evaluate("document.getElementById('typing').textContent") == ""

            # Viewport markers beside the text: one per other member, in their color.
            marks = await bob.until(
                """(() => { const m = Array.from(document.querySelectorAll(
                    '#rail .viewport-marker:not(.mine)'), (el) => ({
                        sid: Number(el.dataset.sid), color: el.style.backgroundColor,
                        h: el.getBoundingClientRect().height }));
                    return m.length === 2 ? m : null; })()"""
            )
            assert {m["sid"] for m in marks} == {ann_sid, ann2_sid}
            assert all(m["h"] > 0 for m in marks)
            assert {rgb(m["color"]) for m in marks} == {ann_color}

            # The label fades after a few seconds without a move.
            await bob.until(f"{caret_of(ann_sid)}.faded", timeout_ms=8000)

            # Side by side, for the README and as an artifact of the run: Ann selects, her
            # second tab and Bob have carets a few lines below, Bob types, both look at the
            # same lines.
            below = line_start + len(lines[line]) + 1 + len(lines[line + 1]) + 1
            await select(ann2, below + 4, below + 4)
            await select(bob, below + 30, below + 30)
            await select(ann, line_start + col_a, line_start + col_b + 4)  # "quick brown fox"
            for p in (ann, bob):
                await scroll(p, 360)
            await bob.until(f"{caret_of(ann_sid)}?.faded === false")
            await bob.until(f"{caret_of(ann2_sid)}?.faded === false")
            await bob.call("Input.insertText", text="ok ")
            await ann.until(f"{caret_of(bob_sid)}?.faded === false")
            await ann.until("document.getElementById('typing').textContent !== ''")
            await save_side_by_side(ann, bob)

        # Ann's second tab closed: held for the grace (Disconnected), then gone.
        await bob.until(
            f"(() => {{ const a = {AVATARS}; const ann = a.find((x) => x.user === 'ann'); "
            "return ann && ann.badge === null; })()",
            timeout_ms=8000,
        )
        assert await bob.evaluate(caret_of(ann2_sid)) is None

        # Ann leaves on purpose: gone at once, and "recently here".
        await ann.evaluate("window.demo.close()")
        users = await bob.until(
            f"(() => {{ const a = {AVATARS}; return a.length === 1 ? a : null; }})()",
            timeout_ms=3000,
        )
        assert users[0]["user"] == "bob"
        assert await bob.evaluate(caret_of(ann_sid)) is None
        assert await bob.evaluate(f"{selection_of(ann_sid)}.length") == 0
        recent = await bob.until("document.querySelector('#recent li:not(.none)')?.textContent")
        assert recent.startswith("Ann")
        assert bob.console == [] and ann.console == []


async def save_side_by_side(a: Page, b: Page) -> None:
    shots = []
    for p in (a, b):
        # A tab in the background renders late: the labels' fade-in transition would be
        # caught half way. In front, and after the transition, it is what a user sees.
        await p.call("Page.bringToFront")
        await asyncio.sleep(0.5)
        shots.append(Image.open(io.BytesIO(await p.screenshot())).convert("RGB"))
    gap = 12
    width = sum(s.width for s in shots) + gap
    out = Image.new("RGB", (width, max(s.height for s in shots)), (203, 213, 225))
    out.paste(shots[0], (0, 0))
    out.paste(shots[1], (shots[0].width + gap, 0))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    out.save(ARTIFACTS / "demo-side-by-side.png", optimize=True)


async def test_with_a_secret_the_page_takes_its_token_from_the_fragment(
    chromium: str, relay_factory: Any
) -> None:
    import jwt

    r = await relay_factory(jwt_secret=SECRET, demo=True)
    claims = {"sub": "carol", "name": "Carol", "docs": ["signed-*"], "exp": int(time.time()) + 600}
    token = jwt.encode(claims, SECRET, algorithm="HS256")
    url = f"http://127.0.0.1:{r.port}/#signed-doc&token={token}"
    async with open_page(chromium, url, "window.ready === true") as p:
        me = await p.evaluate("window.demo.doc.me")
        assert (me["userId"], me["name"]) == ("carol", "Carol")
        assert await p.evaluate("window.demo.doc.docId") == "signed-doc"
        assert await p.evaluate("document.getElementById('name').disabled") is True
    # Without one, the page says what it needs instead of failing silently.
    async with open_page(
        chromium, f"http://127.0.0.1:{r.port}/#signed-doc", "window.failed !== undefined"
    ) as p:
        problem = await p.evaluate("document.getElementById('problem').textContent")
        assert "requires a token" in problem and "#signed-doc&token=" in problem


async def test_a_page_without_a_fragment_opens_this_browsers_document(
    chromium: str, relay_factory: Any
) -> None:
    """`/` alone: a random document the first time, then the one this browser last opened,
    so two windows on `/` are in one document and see each other (as one user: one browser
    has one identity)."""
    r = await relay_factory()
    url = f"http://127.0.0.1:{r.port}/"
    # (A relay on a new port is a new origin: this browser has no document there yet.)
    async with open_page(chromium, url, "window.ready === true") as one:
        doc_id = await one.evaluate("window.demo.doc.docId")
        assert re.fullmatch(r"doc-[0-9a-f]{8}", doc_id)
        assert await one.evaluate("location.hash") == f"#{doc_id}"
        # A name is picked once per browser and kept.
        name = await one.evaluate("JSON.parse(localStorage.getItem('" + IDENTITY_KEY + "')).name")
        assert await one.evaluate("window.demo.doc.me.name") == name
        async with open_page(chromium, url, "window.ready === true") as two:
            assert await two.evaluate("window.demo.doc.docId") == doc_id
            one_sid = await sid_of(one)
            await select(one, 5, 5)
            seen = await two.until(caret_of(one_sid))
            assert seen["label"] == name
            users = await two.until(
                f"(() => {{ const a = {AVATARS}; return a[0]?.badge === '2' ? a : null; }})()"
            )
            assert len(users) == 1 and users[0]["name"] == f"{name} (you)"


FIRST_CARET_WATCH = """
new MutationObserver((_, observer) => {
    if (document.querySelector('.pr-caret')) {
        window.firstCaretMs = performance.now();
        observer.disconnect();
    }
}).observe(document, { childList: true, subtree: true });
"""


async def test_time_to_first_caret_and_page_weight_are_recorded(
    chromium: str, relay_factory: Any
) -> None:
    """Not a timed assertion (a shared machine's timings are noise): what a newcomer waits
    for, measured from the navigation to the first remote caret on screen, and what the page
    weighs, written to tests/artifacts/demo-timing.json (the README quotes a run of it)."""
    r = await relay_factory()
    url = f"http://127.0.0.1:{r.port}/#timing"
    async with open_page(chromium, url, "window.ready === true", identity_script("a", "A")) as a:
        await select(a, 10, 10)
        runs = []
        for i in range(5):
            async with open_page(
                chromium,
                f"http://localhost:{r.port}/#timing",
                "window.firstCaretMs !== undefined",
                identity_script(f"b{i}", "B") + FIRST_CARET_WATCH,
            ) as b:
                runs.append(
                    await b.evaluate(
                        """(() => {
                            const nav = performance.getEntriesByType('navigation')[0];
                            const res = performance.getEntriesByType('resource');
                            return {
                                firstCaretMs: window.firstCaretMs,
                                domContentLoadedMs: nav.domContentLoadedEventEnd,
                                fetched: res.map((e) => new URL(e.name).pathname),
                            };
                        })()"""
                    )
                )
    assets = demo.load_assets()
    assert all(run["firstCaretMs"] > 0 for run in runs)
    for run in runs:  # the page's own files, every one of them, and nothing from elsewhere
        assert set(run.pop("fetched")) | {"/"} == set(assets), run
    record = {
        "runs": runs,
        "median_first_caret_ms": sorted(x["firstCaretMs"] for x in runs)[len(runs) // 2],
        "page_bytes": sum(len(x.body) for x in assets.values()),
        "files": len(assets),
    }
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "demo-timing.json").write_text(json.dumps(record, indent=2) + "\n")


def test_a_wheel_carries_the_page_and_the_sdk_it_imports(tmp_path: Path) -> None:
    """A wheel has no sdk/browser/ beside it: setup.py copies the SDK modules the page
    imports into relay/demo/sdk/, and they must be the SDK's own bytes."""
    import subprocess
    import sys
    import zipfile

    env = {**os.environ, "RELAY_NO_EXTENSIONS": "1"}  # the page, not the compiled twin
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
    built = subprocess.run(
        [*pip_wheel, "-q", "-w", str(tmp_path), str(ROOT)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    [wheel] = tmp_path.glob("presence_relay-*.whl")
    with zipfile.ZipFile(wheel) as z:
        for name in demo.PAGE_FILES.values():
            assert z.read(f"relay/demo/{name}") == (demo.PAGE_DIR / name).read_bytes()
        for name in demo.SDK_FILES.values():
            shipped = z.read(f"relay/demo/sdk/{name}")
            assert shipped == (ROOT / "sdk" / "browser" / name).read_bytes(), name
