"""The Python SDK's v1.1 sessions (docs/protocol.md section 11): a dropped connection resumes
its session without a flicker, a resume the relay cannot honour joins afresh, `close()` is a
deliberate leave, `left` carries a reason and DISCONNECTED is an activity.

Against real in-process relays (`relay_factory`), and against a scripted relay that pins the
SDK's side of the wire (what HELLO asks, which JOINs and LEAVEs go out after a resume, what is
sent again) independently of the real server. A reconnect is held back by a token provider
that waits for the test, so "while disconnected" is a state the test controls.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import helpers
import jwt
import msgpack
import pytest
from helpers import MS, DocumentEvents, GatedProvider, RawClient
from presence_client import (
    Activity,
    ActivityState,
    Connection,
    ConnectionClosedError,
    CursorMoved,
    Event,
    Joined,
    LeaveReason,
    Left,
    Member,
    Resynced,
    Status,
    Typing,
    UserJoined,
    UserLeft,
    connect,
)
from presence_client import protocol as cp
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from relay.auth import mint_token
from relay.server.app import Relay

SECRET = "presence-relay-test-secret-0123456789abcdef"
TIMEOUT = 10000 * MS  # generous: a loaded 2-core machine; every wait below is bounded by it


def _doc_id() -> str:
    return f"doc-{uuid.uuid4().hex[:12]}"


def _token(user: str) -> str:
    return mint_token(SECRET, user, user.title(), workspace="acme", docs=["*"], ttl_s=600)


def gated(user: str) -> GatedProvider:
    return GatedProvider(user, _token)


class Recorder(DocumentEvents):
    """A document's events (tests/helpers.py), read the way this module's tests want."""

    events: list[Event]

    def of(self, sid: int | None) -> list[Event]:
        """The events about `sid`."""
        return [e for e in self.events if _sid(e) == sid]

    async def wait(self, pred: Callable[[Event], bool], what: str) -> Event:
        await _eventually(lambda: any(pred(e) for e in self.events), what)
        return next(e for e in self.events if pred(e))


def _sid(event: Event) -> int | None:
    if isinstance(event, Joined):
        return event.member.sid
    return getattr(event, "sid", None)


async def _eventually(cond: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    try:
        async with asyncio.timeout(timeout):
            while not cond():
                await asyncio.sleep(10 * MS)
    except TimeoutError:
        raise AssertionError(f"timed out: {what}") from None


def _drop(conn: Connection) -> None:
    """Cut the TCP connection under the SDK, as a network failure would."""
    session = conn._session
    assert session is not None
    session.ws.transport.abort()


@pytest.fixture
async def jwt_relay(relay_factory: Callable[..., Awaitable[Relay]]) -> Callable[..., Any]:
    async def start(**overrides: Any) -> str:
        relay = await relay_factory(jwt_secret=SECRET, **overrides)
        return f"ws://127.0.0.1:{relay.port}/ws"

    return start


@contextlib.asynccontextmanager
async def _user(url: str, user: str, **kw: Any) -> AsyncIterator[Connection]:
    token = kw.pop("token", None) or _token(user)
    async with connect(url, token=token, proxy=None, backoff_base=0.01, **kw) as conn:
        yield conn


# ---------------------------------------------------------------------------- resumed


async def test_a_drop_is_resumed_without_a_flicker(jwt_relay: Callable[..., Any]) -> None:
    url = await jwt_relay()
    provider = gated("ann")
    doc_id = _doc_id()
    async with (
        _user(url, "ann", token=provider) as ann,
        _user(url, "bob") as bob,
        _user(url, "carl") as carl,
        _user(url, "dave") as dave,
    ):
        da = await ann.join(doc_id)
        db = await bob.join(doc_id)
        ddave = await dave.join(doc_id)
        sid, bob_sid, dave_sid = da.sid, db.sid, ddave.sid
        assert sid is not None and bob_sid is not None
        await _eventually(lambda: set(da.members) == {sid, bob_sid, dave_sid}, "ann sees all")
        da.move_cursor(1, 1, 1)
        await _eventually(lambda: db.members[sid].cursor == (1, 1, 1), "bob sees the cursor")
        color = da.members[sid].color

        async with Recorder(db) as bob_saw, Recorder(da) as ann_saw:
            _drop(ann)
            away = Activity(sid, ActivityState.DISCONNECTED)
            await bob_saw.wait(lambda e: e == away, "bob sees ann DISCONNECTED")
            assert db.members[sid].disconnected
            assert not ann.connected

            # While ann is away: her own moves are lost on the wire (the SDK keeps them), and
            # the document changes under her.
            da.move_cursor(2, 2, 2)
            db.move_cursor(9, 9, 9)
            dc = await carl.join(doc_id)
            await ddave.leave()
            await bob.ping()  # the relay has applied bob's cursor
            assert dc.sid is not None and sid in dc.members  # a held member is in snapshots
            assert dc.members[sid].disconnected

            provider.gate.set()
            ev = await ann_saw.wait(lambda e: isinstance(e, Resynced), "ann resumes")
            assert ev == Resynced(sid, sid, resumed=True)
            assert ann.resumed and ann.reconnects == 1
            assert da.sid == sid and da.joined
            assert set(da.members) == {sid, bob_sid, dc.sid}
            assert da.members[sid].color == color

            # Ann got the gap as events, without a leave and join of bob.
            gap = ann_saw.events[: ann_saw.events.index(ev)]
            assert CursorMoved(bob_sid, (9, 9, 9), None) in gap
            assert any(isinstance(e, Joined) and e.member.user_id == "carl" for e in gap)
            assert Left(dave_sid, None) in gap  # its `left` was sent while ann was away
            assert not [e for e in gap if isinstance(e, Joined | Left) and _sid(e) == bob_sid]

            # Bob sees ann's cursor from the gap (sent again after the resume) and her
            # activity back, and never a leave or a join of hers.
            await _eventually(lambda: db.members[sid].cursor == (2, 2, 2), "cursor re-sent")
            await bob_saw.wait(lambda e: e == CursorMoved(sid, (2, 2, 2), None), "its event")
            await bob_saw.wait(
                lambda e: isinstance(e, Activity) and e.sid == sid and e != away, "ann is back"
            )
            assert not db.members[sid].disconnected
            about_ann = bob_saw.of(sid)
            assert not [e for e in about_ann if isinstance(e, Joined | Left)], about_ann
            activities = [e.activity for e in about_ann if isinstance(e, Activity)]
            assert activities[0] == ActivityState.DISCONNECTED
            assert activities[-1] != ActivityState.DISCONNECTED
            assert set(db.members) == {sid, bob_sid, dc.sid}

        # The resumed connection works both ways, and the relay refused nothing of ann's
        # (a JOIN of a resumed document would be ALREADY_JOINED).
        db.move_cursor(3, 4, 5)
        await _eventually(lambda: da.members[bob_sid].cursor == (3, 4, 5), "ann sees bob")
        assert await ann.ping() >= 0
        assert not ann.errors


async def test_state_set_while_away_is_sent_after_the_resume(
    jwt_relay: Callable[..., Any],
) -> None:
    url = await jwt_relay()
    provider = gated("ann")
    doc_id = _doc_id()
    async with _user(url, "ann", token=provider) as ann, _user(url, "bob") as bob:
        da = await ann.join(doc_id)
        db = await bob.join(doc_id)
        sid = da.sid
        assert sid is not None
        await _eventually(lambda: sid in db.members, "bob sees ann")
        _drop(ann)
        await _eventually(lambda: db.members[sid].disconnected, "bob sees ann DISCONNECTED")
        da.move_cursor(5, 1, 50, selection=(4, 0, 40, True))
        da.set_viewport(10, 50, 25.0)
        da.set_focus(False)
        da.typed()
        provider.gate.set()

        def seen() -> tuple[Any, ...]:
            me = db.members[sid]
            return me.cursor, me.selection, me.viewport, me.focused, me.typing

        await _eventually(
            lambda: seen() == ((5, 1, 50), (4, 0, 40, True), (10, 50, 25.0), False, True),
            "bob sees everything ann did while away",
        )
        assert ann.resumed and da.sid == sid


async def test_a_token_expiry_is_resumed_with_a_fresh_token(
    jwt_relay: Callable[..., Any],
) -> None:
    """The relay ends a connection at its token's `exp` (4401 "token expired"); the SDK
    reconnects at once with a fresh token and resumes: no EVICTED for the others."""
    url = await jwt_relay()
    doc_id = _doc_id()

    def short_lived() -> str:  # PyJWT directly: mint_token has whole-second ttls
        claims = {"sub": "ann", "name": "Ann", "ws": "acme", "docs": ["*"],
                  "exp": time.time() + 1.5}  # fmt: skip
        return jwt.encode(claims, SECRET, algorithm="HS256")

    async with _user(url, "ann", token=short_lived) as ann, _user(url, "bob") as bob:
        da = await ann.join(doc_id)
        db = await bob.join(doc_id)
        sid = da.sid
        assert sid is not None
        da.move_cursor(1, 1, 1)  # once bob has it, the batches of the joins are behind us
        await _eventually(lambda: db.members[sid].cursor == (1, 1, 1), "bob sees the cursor")
        async with Recorder(da) as ann_saw, Recorder(db) as bob_saw:
            ev = await ann_saw.wait(lambda e: isinstance(e, Resynced), "the token expires")
            assert ev == Resynced(sid, sid, resumed=True)
            assert ann.last_close == (4401, "token expired") and ann.resumed
            await asyncio.sleep(100 * MS)
            about_ann = bob_saw.of(sid)
        assert not [e for e in about_ann if isinstance(e, Joined | Left)], about_ann
        assert set(db.members) == {sid, db.sid}


# ---------------------------------------------------------------------------- not resumed


async def test_past_the_grace_the_sdk_joins_afresh(jwt_relay: Callable[..., Any]) -> None:
    url = await jwt_relay(reconnect_grace_ms=300)
    provider = gated("ann")
    doc_id = _doc_id()
    async with _user(url, "ann", token=provider) as ann, _user(url, "bob") as bob:
        da = await ann.join(doc_id)
        db = await bob.join(doc_id)
        old_sid = da.sid
        assert old_sid is not None
        da.move_cursor(7, 7, 77)
        async with Recorder(db) as bob_saw, Recorder(da) as ann_saw:
            _drop(ann)
            left = await bob_saw.wait(lambda e: isinstance(e, Left), "the grace runs out")
            assert left == Left(old_sid, LeaveReason.LOST) and left.reason_name == "LOST"
            assert Activity(old_sid, ActivityState.DISCONNECTED) in bob_saw.of(old_sid)

            provider.gate.set()  # past the grace: the SDK does not even ask to resume
            ev = await ann_saw.wait(lambda e: isinstance(e, Resynced), "ann rejoins")
            assert isinstance(ev, Resynced) and not ev.resumed
            assert ev.old_sid == old_sid and ev.sid == da.sid != old_sid
            assert not ann.resumed and ann.reconnects == 1
            new_sid = da.sid
            await bob_saw.wait(lambda e: isinstance(e, Joined) and _sid(e) == new_sid, "join")
            await _eventually(lambda: db.members[new_sid].cursor == (7, 7, 77), "re-sent")
        assert set(db.members) == {new_sid, db.sid}
        da.move_cursor(8, 8, 88)
        await _eventually(lambda: db.members[new_sid].cursor == (8, 8, 88), "it works")


async def test_a_refused_resume_joins_afresh(jwt_relay: Callable[..., Any]) -> None:
    url = await jwt_relay(reconnect_grace_ms=1000)
    doc_id = _doc_id()
    async with _user(url, "ann", token=lambda: _token("ann")) as ann, _user(url, "bob") as bob:
        da = await ann.join(doc_id)
        db = await bob.join(doc_id)
        old_sid = da.sid
        assert old_sid is not None
        ann._resume_token = "not-a-resume-token"  # the relay cannot honour it
        async with Recorder(da) as ann_saw, Recorder(db) as bob_saw:
            _drop(ann)
            ev = await ann_saw.wait(lambda e: isinstance(e, Resynced), "ann rejoins")
            assert isinstance(ev, Resynced) and not ev.resumed and not ann.resumed
            new_sid = da.sid
            assert new_sid is not None and new_sid != old_sid
            assert ann.settings.get("resumed") is False
            # The old session is held until its grace ends, then it is LOST.
            left = await bob_saw.wait(lambda e: isinstance(e, Left), "the old session ends")
            assert left == Left(old_sid, LeaveReason.LOST)
        assert set(db.members) == {new_sid, db.sid}
        da.move_cursor(1, 2, 3)
        await _eventually(lambda: db.members[new_sid].cursor == (1, 2, 3), "it works")


async def test_a_relay_without_grace_ends_the_session_at_once(
    jwt_relay: Callable[..., Any],
) -> None:
    url = await jwt_relay(reconnect_grace_ms=0)
    doc_id = _doc_id()
    async with _user(url, "ann", token=lambda: _token("ann")) as ann, _user(url, "bob") as bob:
        da = await ann.join(doc_id)
        db = await bob.join(doc_id)
        old_sid = da.sid
        assert ann.settings.get("reconnect_grace_ms") == 0
        async with Recorder(db) as bob_saw, Recorder(da) as ann_saw:
            _drop(ann)
            await ann_saw.wait(lambda e: isinstance(e, Resynced), "ann rejoins")
            await bob_saw.wait(lambda e: isinstance(e, Left), "the old session ends")
            about_old = [e for e in bob_saw.of(old_sid) if isinstance(e, Activity | Left)]
        assert about_old == [Left(old_sid, LeaveReason.LOST)]  # no DISCONNECTED hold
        assert not ann.resumed and da.sid != old_sid


# ---------------------------------------------------------------------------- close


async def test_close_is_a_deliberate_leave(
    relay_factory: Callable[..., Awaitable[Relay]],
    client_factory: Callable[..., Awaitable[RawClient]],
) -> None:
    relay = await relay_factory()  # anonymous: bob is a raw client, to read the wire
    bob = await client_factory(relay, "bob")
    doc_id = _doc_id()
    async with connect(f"ws://127.0.0.1:{relay.port}/ws", user_id="ann", proxy=None) as ann:
        da = await ann.join(doc_id)
        other = await ann.join(_doc_id())
        reply = await bob.join(0, doc_id)
        assert reply[0] == 33
        sid = da.sid
        assert other.joined and sid in {m[0] for m in reply[4]}
    # Everything bob heard of ann until her `left`: nothing but the left, and soon.
    loop = asyncio.get_running_loop()
    closed_at = loop.time()
    about_ann: list[list[Any]] = []
    while not about_ann or about_ann[-1][0] != cp.EV_LEFT:
        frame = await bob.recv_until(lambda f: f[0] == cp.BATCH, timeout=TIMEOUT)
        about_ann += [ev for ev in frame[3] if ev[0] != cp.EV_JOINED and ev[1] == sid]
    assert [ev[:3] for ev in about_ann] == [[cp.EV_LEFT, sid, cp.LEFT]]
    assert loop.time() - closed_at < 1000 * MS


async def test_taken_over_by_a_newer_connection_is_fatal(
    relay_factory: Callable[..., Awaitable[Relay]],
    client_factory: Callable[..., Awaitable[RawClient]],
) -> None:
    """Another connection resumes the SDK's session while it is still open: the relay closes
    the SDK's socket with 4409, and the SDK does not reconnect (that would take it back)."""
    relay = await relay_factory()
    url = f"ws://127.0.0.1:{relay.port}/ws"
    ann = await connect(url, user_id="ann", proxy=None, backoff_base=0.01)
    try:
        doc = await ann.join(_doc_id())
        newer = await client_factory(relay)
        await newer.send([1, 1, None, {"user_id": "ann", "name": "Ann",
                                       "resume": ann.settings["resume_token"]}])  # fmt: skip
        welcome = await newer.recv()
        assert welcome[0] == 32 and welcome[5]["resumed"] is True
        joined = await newer.recv_until(lambda f: f[0] == 33)
        assert joined[1:4] == [doc.handle, doc.doc_id, doc.sid]
        with pytest.raises(ConnectionClosedError) as info:
            async with asyncio.timeout(TIMEOUT):
                await ann.wait_closed()
        assert info.value.code == cp.CLOSE_RESUMED
        await asyncio.sleep(100 * MS)
        assert ann.closed and ann.reconnects == 0
    finally:
        await ann.close()


async def test_close_sends_leave_for_every_document_then_1000() -> None:
    async def script(ws: ServerConnection, n: int) -> None:
        await relay.handshake(ws, n, resume_token="rt")
        await relay.answer_joins(ws, n, 2)
        with contextlib.suppress(ConnectionClosed):
            while True:
                await relay.recv(ws, n)

    async with ScriptedRelay(script) as relay:
        async with connect(relay.url, user_id="u1", proxy=None) as conn:
            d1 = await conn.join("d1")
            d2 = await conn.join("d2")
        await _eventually(lambda: relay.close_codes == [1000], "closed with 1000")
    assert relay.received[0][-2:] == [[3, d1.handle], [3, d2.handle]]


# ---------------------------------------------------------------------------- scripted relay
# The SDK's side of the wire, with a relay that follows a script.

USER = {"id": "u1", "name": "U1", "avatar": None, "color": "hsl(1, 70%, 50%)",
        "workspace": "default"}  # fmt: skip
SETTINGS = {"batch_ms": 20, "cursor_throttle_ms": 50, "typing_debounce_ms": 500,
            "max_frame_bytes": 8192, "max_documents": 16, "max_frames_per_s": 200,
            "max_frames_burst": 400}  # fmt: skip


def _member(sid: int, user: str, cursor: list[int] | None = None, activity: int = 1) -> list[Any]:
    return [sid, user, user.title(), None, "hsl(10, 70%, 50%)", activity, False, True, cursor,
            None, None, 1000, 1000]  # fmt: skip


def _pack(value: Any) -> bytes:
    return msgpack.packb(value)  # type: ignore[no-any-return]


class ScriptedRelay(helpers.ScriptedRelay):
    """The shared stand-in relay, with this file's WELCOME and JOINED answers."""

    async def hello(self, ws: ServerConnection, n: int) -> Any:
        hello = await self.recv(ws, n)
        assert hello[0] == 1
        return hello

    async def welcome(self, ws: ServerConnection, n: int, **settings: Any) -> None:
        await ws.send(_pack([32, 1, f"c{n}", USER, 1000, {**SETTINGS, **settings}]))

    async def handshake(self, ws: ServerConnection, n: int, **settings: Any) -> Any:
        hello = await self.hello(ws, n)
        await self.welcome(ws, n, resumed=False, reconnect_grace_ms=5000, **settings)
        return hello

    async def answer_joins(self, ws: ServerConnection, n: int, count: int) -> None:
        """Answer the next `count` JOINs (other frames are skipped): sid = 10 * (handle + 1),
        bob and dave as the others."""
        for _ in range(count):
            join = await self.recv(ws, n)
            while join[0] != 2:
                join = await self.recv(ws, n)
            sid = 10 * (join[1] + 1)
            members = [_member(sid, "u1"), _member(sid + 1, "bob"), _member(sid + 2, "dave")]
            await ws.send(_pack([33, join[1], join[2], sid, members]))


async def test_a_resume_on_the_wire(caplog: pytest.LogCaptureFixture) -> None:
    """After a drop the HELLO asks to resume; the resumed documents are not joined again, a
    document left meanwhile is left, one joined meanwhile is joined, and the state set while
    away is sent; the snapshot's differences come out as events."""
    proceed = asyncio.Event()
    drop = asyncio.Event()

    async def script(ws: ServerConnection, n: int) -> None:
        if n == 0:
            await relay.handshake(ws, n, resume_token="rt-0", unknown_setting={"x": 1})
            await relay.answer_joins(ws, n, 3)
            await drop.wait()
            ws.transport.abort()
            return
        await relay.hello(ws, n)
        await proceed.wait()  # the test acts "while disconnected" before the WELCOME
        await relay.welcome(ws, n, resume_token=f"rt-{n}", reconnect_grace_ms=5000, resumed=True)
        # Handle 0 ("d1", sid 10): bob moved, dave left, carl (activity 5) came. Handle 1
        # was left meanwhile; handle 2 is as it was.
        d1 = [_member(10, "u1", [1, 1, 1]), _member(11, "bob", [9, 9, 9]),
              [*_member(13, "carl", activity=5), 0, None]]  # fmt: skip
        await ws.send(_pack([33, 0, "d1", 10, d1, []]))
        await ws.send(_pack([33, 1, "d2", 20, [_member(20, "u1")]]))
        await ws.send(_pack([33, 2, "d3", 30, [_member(30, "u1"), _member(31, "bob"),
                                               _member(32, "dave")]]))  # fmt: skip
        await relay.answer_joins(ws, n, 1)  # the document joined while away
        with contextlib.suppress(ConnectionClosed):
            while True:
                await relay.recv(ws, n)

    async with ScriptedRelay(script) as relay:
        conn = await connect(relay.url, user_id="u1", proxy=None, backoff_base=0.01)
        try:
            d1, d2, d3 = [await conn.join(d) for d in ("d1", "d2", "d3")]
            d1.move_cursor(1, 1, 1)
            drop.set()
            await _eventually(lambda: relay.connections == 2, "the SDK reconnects")
            assert not conn.connected
            await d2.leave()
            join_d4 = asyncio.create_task(conn.join("d4"))
            d1.move_cursor(5, 5, 5)
            d1.set_viewport(0, 30, 10.0)
            d1.set_focus(False)
            d1.typed()
            await asyncio.sleep(20 * MS)
            proceed.set()
            d4 = await asyncio.wait_for(join_d4, TIMEOUT)
            assert await d1.next_event(TIMEOUT) == Left(12, None)
            dave = await d1.next_event(TIMEOUT)  # dave's only session: the user left
            assert isinstance(dave, UserLeft) and dave.user.user_id == "dave"
            assert await d1.next_event(TIMEOUT) == CursorMoved(11, (9, 9, 9), None)
            carl = await d1.next_event(TIMEOUT)
            assert isinstance(carl, Joined) and carl.member.disconnected
            carl_came = await d1.next_event(TIMEOUT)
            assert isinstance(carl_came, UserJoined) and carl_came.user.user_id == "carl"
            assert await d1.next_event(TIMEOUT) == Resynced(10, 10, resumed=True)
            assert await d3.next_event(TIMEOUT) == Resynced(30, 30, resumed=True)
            assert conn.resumed and conn.reconnects == 1
            assert set(d1.members) == {10, 11, 13} and d1.sid == 10
            await _eventually(lambda: len(relay.received[1]) >= 7, "the SDK sends its state")
            hellos = [frames[0] for frames in relay.received]
            assert "resume" not in hellos[0][3]
            assert hellos[1][3]["resume"] == "rt-0"
            sent = relay.received[1][1:]
            assert sent[:2] == [[3, d2.handle], [2, d4.handle, "d4"]]  # no JOIN of d1, d3
            assert sorted(sent[2:], key=repr) == sorted(
                [[4, 0, 5, 5, 5], [6, 0, 0, 30, 10.0], [7, 0, False], [5, 0]], key=repr
            )
            assert not conn.errors
            assert "malformed" not in caplog.text
        finally:
            await conn.close()


@pytest.mark.parametrize("settings", [{}, {"resume_token": "rt", "reconnect_grace_ms": 0}])
async def test_no_resume_without_a_token_or_a_grace(settings: dict[str, Any]) -> None:
    """A v1 relay's WELCOME (no resume_token) or a grace of 0: the SDK never asks, and it
    joins afresh."""

    async def script(ws: ServerConnection, n: int) -> None:
        await relay.hello(ws, n)
        await relay.welcome(ws, n, **settings)
        await relay.answer_joins(ws, n, 1)
        if n == 0:
            await relay.recv(ws, n)  # the cursor: the JOINED has arrived
            ws.transport.abort()
            return
        with contextlib.suppress(ConnectionClosed):
            while True:
                await relay.recv(ws, n)

    async with (
        ScriptedRelay(script) as relay,
        connect(relay.url, user_id="u1", proxy=None, backoff_base=0.01) as conn,
    ):
        doc = await conn.join("d1")
        doc.move_cursor(1, 2, 3)
        assert await doc.next_event(TIMEOUT) == Resynced(10, 10, resumed=False)
    assert [frames[0][3].get("resume") for frames in relay.received] == [None, None]
    assert relay.received[1][1] == [2, doc.handle, "d1"]


async def test_a_join_in_flight_at_the_drop_is_sent_again() -> None:
    """A JOIN the relay may or may not have had when the connection dropped goes out again
    after the resume; an ALREADY_JOINED for it (the relay had it, and its resumed JOINED
    answers) is expected, not an error."""

    async def script(ws: ServerConnection, n: int) -> None:
        if n == 0:
            await relay.handshake(ws, n, resume_token="rt-0")
            await relay.recv(ws, n)  # the JOIN, never answered
            ws.transport.abort()
            return
        await relay.hello(ws, n)
        await relay.welcome(ws, n, resume_token="rt-1", reconnect_grace_ms=5000, resumed=True)
        await ws.send(_pack([33, 0, "d1", 10, [_member(10, "u1")]]))  # it had it
        join = await relay.recv(ws, n)
        assert join == [2, 0, "d1"]
        await ws.send(_pack([35, 0, cp.ALREADY_JOINED, "already joined"]))
        with contextlib.suppress(ConnectionClosed):
            while True:
                await relay.recv(ws, n)

    async with (
        ScriptedRelay(script) as relay,
        connect(relay.url, user_id="u1", proxy=None, backoff_base=0.01) as conn,
    ):
        doc = await conn.join("d1", timeout=TIMEOUT)
        assert doc.sid == 10 and doc.joined
        await asyncio.sleep(100 * MS)  # the ALREADY_JOINED has come
        assert not conn.errors and doc._events.empty()


# ---------------------------------------------------------------------------- reasons, activity


async def test_leave_reasons_disconnected_and_forward_compatibility(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """v1 and v1.1 `left` events, activity 5, and what a newer relay may add (settings keys,
    event codes, frame types, trailing elements) is ignored without a warning."""
    done = asyncio.Event()

    async def script(ws: ServerConnection, n: int) -> None:
        await relay.hello(ws, n)
        user = {**USER, "kind": 0}
        extra = {**SETTINGS, "future_setting": [1, 2], "resumed": False}
        await ws.send(_pack([32, 1, "c0", user, 1000, extra, "trailing"]))
        join = await relay.recv(ws, n)
        members = [_member(1, "u1"), [*_member(2, "bob", activity=5), 0, "away"]]
        others = [_member(sid, f"u{sid}") for sid in range(3, 9)]
        recent = [["x", "X", None, "hsl(1, 70%, 50%)", 500, 1, "trailing"]]
        await ws.send(_pack([33, join[1], join[2], 1, members + others, recent, 7]))
        events = [
            [3, 3],  # v1
            [3, 4, 0],
            [3, 5, 1, "trailing"],
            [3, 6, 3],
            [3, 7, 42],  # a reason newer than the SDK
            [3, 8, "LOST"],  # not an int: no reason
            [6, 2, 1, "trailing"],
            [6, 2, 5],
            [8, 2, "status text"],  # v1.1 status
            [99, {"a": 1}],
            [4, 2, True, "trailing"],
        ]
        await ws.send(_pack([34, join[2], 2000, events, "trailing"]))
        await ws.send(_pack([40, "a frame type from the future"]))
        await ws.send(_pack([36, 0, 0, "trailing"]))
        done.set()
        with contextlib.suppress(ConnectionClosed):
            while True:
                await relay.recv(ws, n)

    caplog.set_level(logging.WARNING, logger="presence_client")
    async with ScriptedRelay(script) as relay, connect(relay.url, user_id="u1", proxy=None) as c:
        doc = await c.join("d1")
        assert c.settings["future_setting"] == [1, 2] and not c.resumed
        bob = doc.members[2]
        assert bob.disconnected and bob.activity == ActivityState.DISCONNECTED
        await asyncio.wait_for(done.wait(), TIMEOUT)
        got = [await doc.next_event(TIMEOUT) for _ in range(16)]
        users_left = [e for e in got if isinstance(e, UserLeft)]  # each its user's last session
        assert [(e.user.user_id, e.reason) for e in users_left] == [
            ("u3", None), ("u4", LeaveReason.LEFT), ("u5", LeaveReason.LOST),
            ("u6", LeaveReason.EVICTED), ("u7", 42), ("u8", None),
        ]  # fmt: skip
        got = [e for e in got if not isinstance(e, UserLeft)]
        assert got == [
            Left(3, None), Left(4, LeaveReason.LEFT), Left(5, LeaveReason.LOST),
            Left(6, LeaveReason.EVICTED), Left(7, 42), Left(8, None),
            Activity(2, ActivityState.VIEWING), Activity(2, ActivityState.DISCONNECTED),
            Status(2, "status text"), Typing(2, True),
        ]  # fmt: skip
        assert [r.user_id for r in doc.recent] == ["u8", "u7", "u6", "u5", "u4", "u3", "x"]
        assert [e.reason_name for e in got if isinstance(e, Left)] == [
            None, "LEFT", "LOST", "EVICTED", "UNKNOWN", None
        ]  # fmt: skip
        assert doc.members[2].disconnected and set(doc.members) == {1, 2}
        assert doc._events.empty() and not c.errors
    warnings = [r for r in caplog.records if r.name.startswith("presence_client")]
    assert not [r for r in warnings if r.levelno >= logging.WARNING], caplog.text


def test_the_v1_1_names() -> None:
    assert [r.name for r in LeaveReason] == list(cp.LEAVE_REASONS)
    assert [int(r) for r in LeaveReason] == [cp.LEFT, cp.LOST, cp.NODE_DOWN, cp.EVICTED,
                                             cp.EXPIRED, cp.SHUTDOWN]  # fmt: skip
    assert ActivityState.DISCONNECTED == 5 and ActivityState(5).name == "DISCONNECTED"
    assert cp.CLOSE_RESUMED == 4409
    assert Left(1).reason is None and Left(1).reason_name is None
    assert Left(1, 2).reason_name == "NODE_DOWN" and Left(1, 99).reason_name == "UNKNOWN"
    member = Member.from_wire([*_member(1, "ann", activity=5), 1, "extra"])
    assert member.disconnected and member.activity is ActivityState.DISCONNECTED
    assert not Member.from_wire(_member(1, "ann", activity=4)).disconnected
