"""The Python SDK against a real relay subprocess (anonymous mode on loopback)."""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import helpers
import msgpack
import pytest
from helpers import MS
from presence_client import (
    FATAL_CLOSE_CODES,
    Activity,
    ActivityState,
    Connection,
    ConnectionClosedError,
    CursorMoved,
    Document,
    ErrorEvent,
    Event,
    Focus,
    Joined,
    LeaveReason,
    Left,
    Member,
    RelayError,
    Resynced,
    Typing,
    UserJoined,
    UserLeft,
    Viewport,
    connect,
)
from presence_client.document import _CLOSED
from websockets.asyncio.server import ServerConnection

from relay.core.protocol import (
    ALREADY_JOINED,
    BAD_FRAME,
    BATCH,
    ERROR,
    INVALID_VALUE,
    JOINED,
    PING,
    WELCOME,
    pack,
)

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 5.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1000 * MS) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


@pytest.fixture(scope="module")
def relay_url() -> Iterator[str]:
    """A relay subprocess on a free port; yields its WebSocket URL."""
    port = _free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        env.pop(var, None)
    log = tempfile.TemporaryFile()  # noqa: SIM115 (closed in the finally below)
    cmd = [sys.executable, "-m", "relay", "serve", "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(
        [*cmd, "--batch-ms", "20"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 20
        while not _healthy(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                output = log.read().decode(errors="replace")
                pytest.fail(f"relay did not become healthy (exit {proc.poll()}):\n{output}")
            time.sleep(0.05)
        yield f"ws://127.0.0.1:{port}/ws"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _doc_id() -> str:
    return f"doc-{uuid.uuid4().hex[:12]}"


def _connect(url: str, user: str, **kw: object) -> Connection:
    # No proxy for loopback, whatever the environment says.
    return connect(url, user_id=user, name=user.title(), proxy=None, **kw)


@pytest.fixture
async def pair(relay_url: str) -> AsyncIterator[tuple[Connection, Connection]]:
    async with _connect(relay_url, "ann") as a, _connect(relay_url, "bob") as b:
        yield a, b


async def _joined_pair(
    pair: tuple[Connection, Connection],
) -> tuple[Document, Document]:
    a, b = pair
    doc_id = _doc_id()
    da = await a.join(doc_id)
    db = await b.join(doc_id)
    # A sees B join.
    await _wait_event(da, lambda e: isinstance(e, Joined) and e.member.sid == db.sid)
    return da, db


async def _wait_event(
    doc: Document, pred: Callable[[Event], bool], timeout: float = TIMEOUT
) -> Event:
    """Consume events until one matches (others are skipped)."""
    async with asyncio.timeout(timeout):
        async for event in doc.events():
            if pred(event):
                return event
    raise AssertionError("events() ended")


async def _eventually(cond: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(10 * MS)


# ---------------------------------------------------------------------------- handshake


async def test_welcome_and_ping(relay_url: str) -> None:
    async with _connect(relay_url, "ann") as conn:
        assert conn.connected
        assert conn.connection_id
        assert conn.user["id"] == "ann"
        assert conn.user["name"] == "Ann"
        for key in (
            "batch_ms",
            "cursor_throttle_ms",
            "typing_debounce_ms",
            "max_frame_bytes",
            "max_documents",
            "max_frames_per_s",
            "max_frames_burst",
        ):
            assert key in conn.settings, key
        rtt = await conn.ping()
        assert 0 <= rtt < 2  # uvloop's clock ticks in whole ms: loopback can read 0
    assert conn.closed
    assert not conn.connected


async def test_await_connect_form(relay_url: str) -> None:
    conn = await _connect(relay_url, "cy")
    try:
        assert conn.connected
    finally:
        await conn.close()
    await conn.wait_closed()  # closed by us: no error


# ---------------------------------------------------------------------------- members


async def test_two_clients_see_each_other(pair: tuple[Connection, Connection]) -> None:
    a, b = pair
    da, db = await _joined_pair(pair)
    assert da.doc_id == db.doc_id
    assert da.sid is not None and db.sid is not None and da.sid != db.sid
    # B's snapshot has both; A learned about B from the batch.
    assert set(db.members) == {da.sid, db.sid}
    assert set(da.members) == {da.sid, db.sid}
    assert db.members[da.sid].user_id == "ann"
    assert db.members[da.sid].name == "Ann"
    assert da.members[db.sid].user_id == "bob"
    assert da.members[db.sid].color.startswith("hsl(")
    assert da.members[db.sid].color != da.members[da.sid].color
    assert set(da.others) == {db.sid}
    assert da.me is not None and da.me.user_id == "ann"
    assert a.documents[da.handle] is da
    assert b.documents[db.handle] is db


async def test_move_cursor_reaches_the_other_side(pair: tuple[Connection, Connection]) -> None:
    da, db = await _joined_pair(pair)
    da.move_cursor(3, 14, 120)
    ev = await _wait_event(db, lambda e: isinstance(e, CursorMoved) and e.sid == da.sid)
    assert isinstance(ev, CursorMoved)
    assert ev.cursor == (3, 14, 120)
    assert ev.selection is None
    assert db.members[da.sid].cursor == (3, 14, 120)
    assert db.members[da.sid].selection is None


async def test_selection_and_clear(pair: tuple[Connection, Connection]) -> None:
    da, db = await _joined_pair(pair)
    da.move_cursor(5, 2, 80, selection=(4, 0, 60, True))
    ev = await _wait_event(db, lambda e: isinstance(e, CursorMoved) and e.sid == da.sid)
    assert isinstance(ev, CursorMoved)
    assert ev.cursor == (5, 2, 80)
    assert ev.selection == (4, 0, 60, True)
    assert db.members[da.sid].selection == (4, 0, 60, True)
    da.clear_cursor()
    ev = await _wait_event(db, lambda e: isinstance(e, CursorMoved) and e.sid == da.sid)
    assert isinstance(ev, CursorMoved)
    assert ev.cursor is None and ev.selection is None
    assert db.members[da.sid].cursor is None


async def test_rapid_moves_end_with_the_last_position(
    pair: tuple[Connection, Connection],
) -> None:
    da, db = await _joined_pair(pair)
    for i in range(20):
        da.move_cursor(i, i + 1, 100 + i)
    await _eventually(lambda: db.members[da.sid].cursor == (19, 20, 119))
    # Throttled: far fewer than 20 frames went out, and the last one is the final state.
    seen = [e.cursor for e in _drain(db) if isinstance(e, CursorMoved) and e.sid == da.sid]
    assert len(seen) <= 3
    await asyncio.sleep(200 * MS)
    assert db.members[da.sid].cursor == (19, 20, 119)


def _drain(doc: Document) -> list[Event]:
    """The events already queued (without waiting)."""
    out: list[Event] = []
    while not doc._events.empty():
        item = doc._events.get_nowait()
        if item is _CLOSED:
            doc._events.put_nowait(item)
            break
        out.append(item)
    return out


async def test_own_events_are_not_emitted_but_applied(
    pair: tuple[Connection, Connection],
) -> None:
    da, db = await _joined_pair(pair)
    da.move_cursor(1, 1, 1)
    db.move_cursor(2, 2, 2)
    ev = await _wait_event(da, lambda e: isinstance(e, CursorMoved))
    assert isinstance(ev, CursorMoved)
    assert ev.sid == db.sid  # never A's own sid
    await _wait_event(db, lambda e: isinstance(e, CursorMoved) and e.sid == da.sid)
    for e in _drain(da):
        assert getattr(e, "sid", None) != da.sid


async def test_typing_and_stop(pair: tuple[Connection, Connection]) -> None:
    da, db = await _joined_pair(pair)
    da.typed()
    ev = await _wait_event(db, lambda e: isinstance(e, Typing) and e.sid == da.sid)
    assert isinstance(ev, Typing) and ev.is_typing
    assert db.members[da.sid].typing is True
    da.stop_typing()
    ev = await _wait_event(db, lambda e: isinstance(e, Typing) and e.sid == da.sid)
    assert isinstance(ev, Typing) and not ev.is_typing
    assert db.members[da.sid].typing is False


async def test_typing_activity_events(pair: tuple[Connection, Connection]) -> None:
    da, db = await _joined_pair(pair)
    da.typed()
    ev = await _wait_event(db, lambda e: isinstance(e, Activity) and e.sid == da.sid)
    assert isinstance(ev, Activity)
    assert ev.activity == 0  # Editing while typing
    assert db.members[da.sid].activity == 0


async def test_viewport(pair: tuple[Connection, Connection]) -> None:
    da, db = await _joined_pair(pair)
    da.set_viewport(10, 60, 12.5)
    ev = await _wait_event(db, lambda e: isinstance(e, Viewport) and e.sid == da.sid)
    assert isinstance(ev, Viewport)
    assert ev.viewport == (10, 60, 12.5)
    assert db.members[da.sid].viewport == (10, 60, 12.5)


async def test_focus(pair: tuple[Connection, Connection]) -> None:
    da, db = await _joined_pair(pair)
    da.set_focus(False)
    ev = await _wait_event(db, lambda e: isinstance(e, Focus) and e.sid == da.sid)
    assert isinstance(ev, Focus) and ev.focused is False
    assert db.members[da.sid].focused is False
    da.set_focus(True)
    ev = await _wait_event(db, lambda e: isinstance(e, Focus) and e.sid == da.sid)
    assert isinstance(ev, Focus) and ev.focused is True
    assert db.members[da.sid].focused is True


async def test_leave(pair: tuple[Connection, Connection]) -> None:
    a, _ = pair
    da, db = await _joined_pair(pair)
    sid = da.sid
    assert sid is not None
    await da.leave()
    assert da.closed
    assert da.handle not in a.documents
    ev = await _wait_event(db, lambda e: isinstance(e, Left))
    assert ev == Left(sid, LeaveReason.LEFT)
    assert sid not in db.members
    # events() of the left document ends (after what was already queued).
    async with asyncio.timeout(TIMEOUT):
        rest = [e async for e in da.events()]
    assert all(not isinstance(e, Left) for e in rest)
    # The same document can be joined again on the same connection.
    again = await a.join(da.doc_id)
    assert again.handle != da.handle
    await _wait_event(db, lambda e: isinstance(e, Joined) and e.member.sid == again.sid)


# ---------------------------------------------------------------------------- errors


async def test_join_bad_doc_id_raises(relay_url: str) -> None:
    async with _connect(relay_url, "ann") as conn:
        with pytest.raises(RelayError) as info:
            await conn.join("bad doc id!")
        assert info.value.code == INVALID_VALUE
        assert not conn.documents
        # The connection is still fine.
        doc = await conn.join(_doc_id())
        assert doc.joined


async def test_join_twice_raises_already_joined(relay_url: str) -> None:
    async with _connect(relay_url, "ann") as conn:
        doc = await conn.join(_doc_id())
        with pytest.raises(RelayError) as info:
            await conn.join(doc.doc_id)
        assert info.value.code == ALREADY_JOINED


async def test_errors_are_routed(relay_url: str) -> None:
    async with _connect(relay_url, "ann") as conn:
        doc = await conn.join(_doc_id())
        doc.set_viewport(50, 10, 10.0)  # top > bottom: ERROR 7 for this handle
        ev = await _wait_event(doc, lambda e: isinstance(e, ErrorEvent))
        assert isinstance(ev, ErrorEvent)
        assert ev.code == INVALID_VALUE and ev.handle == doc.handle
        await _eventually(lambda: any(e.handle == doc.handle for e in conn.errors))
        # A PING of the wrong shape has no handle: it only goes to conn.errors.
        conn._send(pack([PING, "not a number"]))
        await _eventually(lambda: any(e.handle is None for e in conn.errors))
        err = next(e for e in conn.errors if e.handle is None)
        assert err.code == BAD_FRAME
        assert doc.joined


async def test_protocol_violation_is_fatal(relay_url: str) -> None:
    # docs/protocol.md: more than max_bad_frames (20) bad frames in 10 s closes with 4400, which
    # is fatal for the SDK (no reconnect).
    async with _connect(relay_url, "ann") as conn:
        doc = await conn.join(_doc_id())
        for _ in range(40):
            conn._send(b"\xc1")  # never valid msgpack
        await _eventually(lambda: conn.closed or conn.reconnects > 0)
        assert conn.last_close is not None
        assert conn.last_close[0] == 4400, f"relay closed with {conn.last_close}, not 4400"
        with pytest.raises(ConnectionClosedError) as info:
            await doc.next_event(TIMEOUT)
        assert info.value.code == 4400
        with pytest.raises(ConnectionClosedError):
            await conn.wait_closed()
        assert conn.closed and conn.reconnects == 0
        with pytest.raises(ConnectionClosedError):
            await conn.join(_doc_id())


# ---------------------------------------------------------------------------- reconnect


async def test_reconnect_resumes_and_resyncs(pair: tuple[Connection, Connection]) -> None:
    """This relay speaks v1.1 and holds a dropped session for reconnect_grace_ms: the
    reconnect resumes it (tests/test_client_resume.py has the details, and the rejoin of a
    relay that does not resume)."""
    a, _ = pair
    da, db = await _joined_pair(pair)
    old_sid = da.sid
    da.move_cursor(7, 7, 77)
    await _eventually(lambda: old_sid in db.members and db.members[old_sid].cursor == (7, 7, 77))

    session = a._session
    assert session is not None
    session.ws.transport.abort()  # drop the TCP connection under the SDK

    ev = await _wait_event(da, lambda e: isinstance(e, Resynced))
    assert old_sid is not None and ev == Resynced(old_sid, old_sid, resumed=True)
    assert da.sid == old_sid
    assert a.reconnects == 1 and a.resumed
    assert a.connected and da.joined
    assert set(da.members) == {da.sid, db.sid}
    assert a.documents[da.handle] is da

    # The other side keeps the same session, with its cursor.
    await _eventually(lambda: not db.members[old_sid].disconnected)
    assert set(db.members) == {old_sid, db.sid}
    assert db.members[old_sid].cursor == (7, 7, 77)

    # Moves flow both ways after the reconnect.
    db.move_cursor(1, 2, 3)
    await _wait_event(da, lambda e: e == CursorMoved(db.sid, (1, 2, 3), None))
    assert da.members[db.sid].cursor == (1, 2, 3)
    da.move_cursor(4, 5, 6)
    await _wait_event(db, lambda e: e == CursorMoved(da.sid, (4, 5, 6), None))
    assert db.members[da.sid].cursor == (4, 5, 6)
    assert await a.ping() >= 0  # the connection works again (uvloop clock: whole ms)


# ---------------------------------------------------------------------------- scripted relay
# A tiny in-process relay that follows a script, to pin the SDK's side of the protocol
# (HELLO shape, idempotent BATCH rules, fatal close codes, reconnect) independently of the
# real server.

SETTINGS = {
    "batch_ms": 20,
    "cursor_throttle_ms": 50,
    "typing_debounce_ms": 500,
    "max_frame_bytes": 8192,
    "max_documents": 16,
    "max_frames_per_s": 200,
    "max_frames_burst": 400,
}


def _member(sid: int, user: str, cursor: list[int] | None = None) -> list[object]:
    return [sid, user, user.title(), None, "hsl(10, 70%, 50%)", 1, False, True, cursor, None,
            None, 1000, 1000]  # fmt: skip


class ScriptedRelay(helpers.ScriptedRelay):
    """The shared stand-in relay, with this file's WELCOME."""

    async def handshake(self, ws: ServerConnection, n: int) -> list[object]:
        hello = await self.recv(ws, n)
        user = {"id": "u1", "name": "Ann", "avatar": None, "color": "hsl(1, 70%, 50%)",
                "workspace": "default"}  # fmt: skip
        await ws.send(pack([WELCOME, 1, f"c{n}", user, 1000, SETTINGS]))
        return hello

    async def joined(self, ws: ServerConnection, n: int, sid: int, others: list[list]) -> list:
        join = await self.recv(ws, n)
        assert join[0] == 2
        members = [_member(sid, "u1"), *others]
        await ws.send(pack([JOINED, join[1], join[2], sid, members]))
        return join


async def test_hello_frames() -> None:
    async def script(ws: ServerConnection, n: int) -> None:
        await relay.handshake(ws, n)
        await ws.wait_closed()

    async with ScriptedRelay(script) as relay:
        async with connect(relay.url, user_id="u1", name="Ann", proxy=None):
            pass
        async with connect(relay.url, token="t0k", proxy=None):
            pass
    assert relay.received[0][0] == [1, 1, None, {"sdk": "py/0.1.0", "user_id": "u1", "name": "Ann"}]
    assert relay.received[1][0] == [1, 1, "t0k", {"sdk": "py/0.1.0"}]


async def test_batches_are_applied_idempotently() -> None:
    batch_sent = asyncio.Event()

    async def script(ws: ServerConnection, n: int) -> None:
        await relay.handshake(ws, n)
        join = await relay.joined(ws, n, 1, [_member(2, "bob")])
        doc_id = join[2]
        events = [
            [2, _member(2, "bob", [9, 9, 9])],  # joined for a known sid: replaces it
            [3, 77],  # left for an unknown sid: ignored
            [1, 78, 1, 1, 1],  # cursor for an unknown sid: ignored
            [1, 1, 5, 5, 5],  # own sid: applied, not emitted
            [4, 2, True],
            [2, _member(3, "cy")],
            [1, 3, 1, 2, 3, 0, 0, 0, False],
            [6, 2, 0],
            [7, 3, False],
            [5, 3, 1, 20, 50.0],
            [3, 3],
            [4, 3, True],  # after its left: unknown sid, ignored
        ]
        await ws.send(pack([BATCH, doc_id, 2000, events]))
        await ws.send(pack([ERROR, None, 6, "slow down"]))
        await ws.send(pack([ERROR, join[1], 7, "bad value"]))
        batch_sent.set()
        await ws.wait_closed()

    async with ScriptedRelay(script) as relay, connect(relay.url, user_id="u1", proxy=None) as c:
        doc = await c.join("d1")
        assert doc.sid == 1 and set(doc.members) == {1, 2}
        await asyncio.wait_for(batch_sent.wait(), TIMEOUT)
        got = [await doc.next_event(TIMEOUT) for _ in range(11)]
        assert [type(e) for e in got] == [
            Joined, Typing, Joined, UserJoined, CursorMoved, Activity, Focus, Viewport, Left,
            UserLeft, ErrorEvent,
        ]  # fmt: skip
        assert got[0] == Joined(Member.from_wire(_member(2, "bob", [9, 9, 9])))
        assert got[4] == CursorMoved(3, (1, 2, 3), (0, 0, 0, False))
        assert got[7] == Viewport(3, (1, 20, 50.0))
        assert got[10] == ErrorEvent(7, "bad value", doc.handle)
        assert set(doc.members) == {1, 2}
        assert doc.members[1].cursor == (5, 5, 5)
        assert doc.members[2].cursor == (9, 9, 9) and doc.members[2].typing
        assert doc.members[2].activity == ActivityState.EDITING
        await _eventually(lambda: len(c.errors) == 2)
        assert c.errors[0] == ErrorEvent(6, "slow down", None)
        assert c.errors[1] == ErrorEvent(7, "bad value", doc.handle)


@pytest.mark.parametrize("code", [1002, 1007, 1009, 4400, 4401, 4409, 4429])
async def test_fatal_close_codes_do_not_reconnect(code: int) -> None:
    async def script(ws: ServerConnection, n: int) -> None:
        await relay.handshake(ws, n)
        await relay.joined(ws, n, 1, [])
        await asyncio.sleep(50 * MS)
        await ws.close(code, "bye")

    async with ScriptedRelay(script) as relay:
        conn = await connect(relay.url, user_id="u1", proxy=None, backoff_base=0.01)
        doc = await conn.join("d1")
        with pytest.raises(ConnectionClosedError) as info:
            await doc.next_event(TIMEOUT)
        assert info.value.code == code
        with pytest.raises(ConnectionClosedError):
            await conn.wait_closed()
        await asyncio.sleep(100 * MS)
        assert relay.connections == 1
        assert conn.closed and not doc.joined
        await conn.close()


def test_fatal_close_codes_match_the_browser_sdk() -> None:
    source = (ROOT / "sdk/browser/presence.js").read_text()
    found = re.search(r"const FATAL_CLOSES = new Set\(\[([0-9, ]+)\]\)", source)
    assert found is not None, "FATAL_CLOSES not found in presence.js"
    browser = {int(code) for code in found.group(1).split(",")}
    assert browser == set(FATAL_CLOSE_CODES) == {1002, 1007, 1009, 4400, 4401, 4409, 4429}


async def test_a_token_provider_signs_every_hello() -> None:
    """With a provider, 4401 "token expired" after WELCOME reconnects (with the next token)
    and rejoins; the relay's real expiry is tested in test_client_tokens.py."""

    async def script(ws: ServerConnection, n: int) -> None:
        await relay.handshake(ws, n)
        await relay.joined(ws, n, n + 1, [])
        if n == 0:
            await ws.close(4401, "token expired")
            return
        await ws.wait_closed()

    tokens = iter(["t-0", "t-1", "t-2"])
    async with (
        ScriptedRelay(script) as relay,
        connect(relay.url, token=lambda: next(tokens), proxy=None) as conn,
    ):
        doc = await conn.join("d1")
        assert await doc.next_event(TIMEOUT) == Resynced(2, 1)
        assert conn.reconnects == 1 and conn.last_close == (4401, "token expired")
    assert [frames[0] for frames in relay.received] == [
        [1, 1, "t-0", {"sdk": "py/0.1.0"}], [1, 1, "t-1", {"sdk": "py/0.1.0"}]
    ]  # fmt: skip


@pytest.mark.parametrize("reason", ["invalid token: InvalidSignatureError", "bye", ""])
async def test_other_4401_closes_are_fatal_even_with_a_provider(reason: str) -> None:
    async def script(ws: ServerConnection, n: int) -> None:
        await relay.handshake(ws, n)
        await relay.joined(ws, n, 1, [])
        await ws.close(4401, reason)

    calls: list[int] = []

    async def provider() -> str:
        calls.append(1)
        return "t"

    async with ScriptedRelay(script) as relay:
        conn = await connect(relay.url, token=provider, proxy=None, backoff_base=0.01)
        doc = await conn.join("d1")
        with pytest.raises(ConnectionClosedError) as info:
            await doc.next_event(TIMEOUT)
        assert (info.value.code, info.value.reason) == (4401, reason)
        await asyncio.sleep(100 * MS)
        assert relay.connections == 1 and len(calls) == 1
        await conn.close()


async def test_unauthenticated_hello_raises() -> None:
    async def script(ws: ServerConnection, n: int) -> None:
        await relay.recv(ws, n)
        await ws.close(4401, "a token is required")

    async with ScriptedRelay(script) as relay:
        with pytest.raises(ConnectionClosedError) as info:
            await connect(relay.url, user_id="u1", proxy=None)
        assert info.value.code == 4401
        assert info.value.reason == "a token is required"


async def test_reconnect_after_going_away_keeps_handles() -> None:
    async def script(ws: ServerConnection, n: int) -> None:
        await relay.handshake(ws, n)
        if n == 0:
            await relay.joined(ws, n, 1, [])
            await relay.joined(ws, n, 2, [])
            await asyncio.sleep(50 * MS)
            await ws.close(1001, "server shutting down")
            return
        # Rejoin: both documents, same handles, fresh sids.
        await relay.joined(ws, n, 10, [_member(11, "bob")])
        await relay.joined(ws, n, 20, [])
        await relay.recv(ws, n)  # the cursor the SDK sends again after the rejoin
        await ws.wait_closed()

    async with (
        ScriptedRelay(script) as relay,
        connect(relay.url, user_id="u1", proxy=None, backoff_base=0.01) as conn,
    ):
        d1 = await conn.join("d1")
        d2 = await conn.join("d2")
        d1.move_cursor(4, 4, 4)
        ev = await d1.next_event(TIMEOUT)
        assert ev == Resynced(10, 1)
        assert await d2.next_event(TIMEOUT) == Resynced(20, 2)
        assert d1.sid == 10 and set(d1.members) == {10, 11}
        assert conn.reconnects == 1 and conn.connection_id == "c1"
        await _eventually(lambda: len(relay.received[1]) == 4)
    first, second = relay.received
    assert [f for f in first if f[0] == 2] == [f for f in second if f[0] == 2]
    assert [f[:3] for f in second[1:3]] == [[2, d1.handle, "d1"], [2, d2.handle, "d2"]]
    assert second[3] == [4, d1.handle, 4, 4, 4]


async def test_cursor_throttle_on_the_wire() -> None:
    """At most one CURSOR per cursor_throttle_ms (50) leaves the SDK; the last is sent."""
    arrivals: list[tuple[float, list[object]]] = []

    async def script(ws: ServerConnection, n: int) -> None:
        await relay.handshake(ws, n)
        await relay.joined(ws, n, 1, [])
        loop = asyncio.get_running_loop()
        async for data in ws:
            arrivals.append((loop.time(), msgpack.unpackb(data)))

    async with ScriptedRelay(script) as relay, connect(relay.url, user_id="u1", proxy=None) as c:
        doc = await c.join("d1")
        for i in range(100):  # 100 moves over ~0.5 s
            doc.move_cursor(i, 0, i)
            await asyncio.sleep(5 * MS)
        doc.clear_cursor()
        doc.move_cursor(1000, 1, 1000, selection=(999, 0, 900, True))
        await _eventually(lambda: bool(arrivals) and arrivals[-1][1][2] == 1000)
        await asyncio.sleep(150 * MS)  # nothing else trails
    cursors = [(t, f) for t, f in arrivals if f[0] == 4]
    assert cursors[0][1] == [4, doc.handle, 0, 0, 0]  # leading edge: the first move at once
    assert cursors[-1][1] == [4, doc.handle, 1000, 1, 1000, 999, 0, 900, True]
    assert 8 <= len(cursors) <= 16
    gaps = [b - a for (a, _), (b, _) in itertools.pairwise(cursors)]
    assert min(gaps) >= 0.045, gaps
    positions = [f[2] for _, f in cursors if len(f) > 2]
    assert positions == sorted(positions)  # never an older position after a newer one
