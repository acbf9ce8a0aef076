"""The Python SDK's v1.1 roster (docs/protocol.md section 11, "Status" and "MEMBER and JOINED,
extended"): member kinds and status texts (`Member.kind`, `Member.status`, `Status` events,
`Document.set_status`), one roster per user (`Document.users()`, `UserJoined`/`UserLeft`)
and the users who left a little while ago (`Document.recent`).

First against a scripted relay that pins the SDK's side of the wire: v1 frames (13-element
MEMBERs, a 5-element JOINED) and v1.1 frames (15-element MEMBERs, JOINED with `recent`, event
8, the golden vectors), what a resume's snapshot turns into, and the bytes of STATUS. Then,
in the section "End to end", against the real relay (`relay_factory`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import helpers
import msgpack
import pytest
from helpers import MS, DocumentEvents, GatedProvider
from presence_client import (
    Connection,
    Document,
    ErrorEvent,
    Event,
    Joined,
    Kind,
    LeaveReason,
    Left,
    Member,
    RecentUser,
    Resynced,
    Status,
    User,
    UserJoined,
    UserLeft,
    connect,
)
from presence_client import protocol as cp
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from relay.auth import mint_token
from relay.server.app import Relay

TIMEOUT = 10000 * MS  # generous: a loaded 2-core machine; every wait below is bounded by it
ROOT = Path(__file__).resolve().parent.parent
VECTORS = {
    v["name"]: v
    for v in json.loads((ROOT / "tests" / "vectors" / "protocol_v1.json").read_text())["vectors"]
}

USER = {"id": "ann", "name": "Ann", "avatar": None, "color": "hsl(1, 70%, 50%)",
        "workspace": "default"}  # fmt: skip
SETTINGS = {"batch_ms": 20, "cursor_throttle_ms": 50, "typing_debounce_ms": 500,
            "max_frame_bytes": 8192, "max_documents": 16, "max_frames_per_s": 200,
            "max_frames_burst": 400}  # fmt: skip


def _v1(sid: int, user: str) -> list[Any]:
    """A v1 MEMBER: 13 elements, no kind and no status."""
    return [sid, user, user.title(), None, "hsl(10, 70%, 50%)", 1, False, True, None, None,
            None, 1000, 1000]  # fmt: skip


def _v11(sid: int, user: str, kind: int = cp.KIND_PERSON, status: str | None = None) -> list[Any]:
    """A v1.1 MEMBER: the 13 elements, then kind and status."""
    return [*_v1(sid, user), kind, status]


def _recent(user: str, left_at_ms: int, reason: int = cp.LOST) -> list[Any]:
    return [user, user.title(), None, "hsl(20, 70%, 50%)", left_at_ms, reason]


def _pack(value: Any) -> bytes:
    return msgpack.packb(value)  # type: ignore[no-any-return]


def _sessions(doc: Document) -> list[tuple[str, list[int]]]:
    return [(uid, [m.sid for m in u.sessions]) for uid, u in doc.users().items()]


def _brief(events: list[Event]) -> list[tuple[Any, ...]]:
    """Events in short: (name, sid or user id, what it is about)."""
    out: list[tuple[Any, ...]] = []
    for e in events:
        if isinstance(e, Joined):
            out.append(("joined", e.member.sid))
        elif isinstance(e, UserJoined):
            out.append(("userjoined", e.user.user_id, e.member.sid))
        elif isinstance(e, UserLeft):
            out.append(("userleft", e.user.user_id, e.member.sid, e.reason))
        elif isinstance(e, Left):
            out.append(("left", e.sid, e.reason))
        elif isinstance(e, Status):
            out.append(("status", e.sid, e.status))
        elif isinstance(e, Resynced):
            out.append(("resynced", e.resumed))
        else:
            out.append((type(e).__name__, getattr(e, "sid", None)))
    return out


async def _drain(doc: Document, quiet: float = 150 * MS) -> list[Event]:
    """The events that come until none has come for `quiet` seconds."""
    out: list[Event] = []
    with contextlib.suppress(TimeoutError):
        while True:
            out.append(await doc.next_event(quiet))
    return out


async def _eventually(cond: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    try:
        async with asyncio.timeout(timeout):
            while not cond():
                await asyncio.sleep(10 * MS)
    except TimeoutError:
        raise AssertionError(f"timed out: {what}") from None


class ScriptedRelay(helpers.ScriptedRelay):
    """The shared stand-in relay, with this file's WELCOME, JOINED and BATCH frames."""

    async def handshake(self, ws: ServerConnection, n: int, **settings: Any) -> None:
        hello = await self.recv(ws, n)
        assert hello[0] == cp.HELLO
        await ws.send(_pack([cp.WELCOME, 1, f"c{n}", USER, 1000, {**SETTINGS, **settings}]))

    async def joined(
        self, ws: ServerConnection, n: int, sid: int, members: list[Any], *recent: Any
    ) -> list[Any]:
        """Answer the next JOIN; `recent` (v1.1) is sent only when given."""
        join = await self.recv(ws, n)
        assert join[0] == cp.JOIN
        await ws.send(_pack([cp.JOINED, join[1], join[2], sid, members, *recent]))
        return join

    async def serve(self, ws: ServerConnection, n: int) -> None:
        """Until the client goes: keep what it sends, answer PINGs (a PONG after a frame
        shows that everything before it has arrived)."""
        with contextlib.suppress(ConnectionClosed):
            while True:
                frame = await self.recv(ws, n)
                if frame[0] == cp.PING:
                    await ws.send(_pack([cp.PONG, frame[1], 2000]))


@contextlib.asynccontextmanager
async def _scripted(
    script: Callable[[ScriptedRelay, ServerConnection, int], Awaitable[None]],
) -> AsyncIterator[tuple[ScriptedRelay, Connection]]:
    async def run(ws: ServerConnection, n: int) -> None:
        await script(relay, ws, n)

    async with (
        ScriptedRelay(run) as relay,
        connect(relay.url, user_id="ann", proxy=None, backoff_base=0.01) as conn,
    ):
        yield relay, conn


# ---------------------------------------------------------------------------- members


async def test_a_v1_relay_members_are_persons_without_status_and_nobody_is_recent() -> None:
    go = asyncio.Event()

    async def script(relay: ScriptedRelay, ws: ServerConnection, n: int) -> None:
        await relay.handshake(ws, n)
        join = await relay.joined(ws, n, 1, [_v1(1, "ann"), _v1(2, "bob")])  # 5 elements
        await go.wait()
        await ws.send(_pack([cp.BATCH, join[2], 5000, [[2, _v1(3, "cy")], [3, 2]]]))
        await relay.serve(ws, n)

    async with _scripted(script) as (_, conn):
        doc = await conn.join("d1")
        for m in doc.members.values():
            assert (m.kind, m.agent, m.status) == (Kind.PERSON, False, None)
        assert doc.recent == []
        go.set()
        got = [await doc.next_event(TIMEOUT) for _ in range(4)]
        assert _brief(got) == [("joined", 3), ("userjoined", "cy", 3), ("left", 2, None),
                               ("userleft", "bob", 2, None)]  # fmt: skip
        # Kept current from the batches even against a v1 relay (the reason is unknown).
        assert doc.recent == [RecentUser("bob", "Bob", None, "hsl(10, 70%, 50%)", 5000, None)]
        assert doc.recent[0].reason_name is None


async def test_v1_1_members_kind_status_and_the_golden_joined() -> None:
    vector = VECTORS["joined_agent_and_recent"]["value"]  # own sid 2, an agent, two recent

    async def script(relay: ScriptedRelay, ws: ServerConnection, n: int) -> None:
        await relay.handshake(ws, n)
        join = await relay.recv(ws, n)
        await ws.send(_pack([vector[0], join[1], *vector[2:]]))
        await relay.serve(ws, n)

    async with _scripted(script) as (_, conn):
        doc = await conn.join(vector[2])
        assert doc.sid == 2
        bot = doc.members[4]
        assert (bot.kind, bot.agent, bot.status) == (Kind.AGENT, True, "reading section 2")
        assert bot.kind is Kind.AGENT
        me = doc.me
        assert me is not None and (me.kind, me.agent, me.status) == (Kind.PERSON, False, None)
        assert [(r.user_id, r.name, r.avatar, r.left_at_ms, r.reason) for r in doc.recent] == [
            ("u-3", "Bob", None, 1799999910000, LeaveReason.LOST),
            ("u-5", "Cy", "https://example.com/a/5.png", 1799999600000, LeaveReason.LEFT),
        ]
        assert doc.recent[0].reason_name == "LOST"
        users = doc.users()
        assert list(users) == ["u-7", "review-bot"]
        assert users["review-bot"].agent and not users["u-7"].agent


def test_member_from_wire_reads_the_prefix_it_knows() -> None:
    assert Member.from_wire(_v11(1, "a", cp.KIND_AGENT, "x")).agent
    newer = Member.from_wire([*_v11(1, "a", 7, ""), "a newer element"])
    assert (newer.kind, newer.agent, newer.status) == (7, False, None)  # "" is no status
    odd = Member.from_wire([*_v1(1, "a"), "not a kind", 42])
    assert (odd.kind, odd.status) == (Kind.PERSON, None)
    assert Member.from_wire(_v1(1, "a")) == Member.from_wire(_v11(1, "a"))
    assert [k.name for k in Kind] == ["PERSON", "AGENT"]
    assert (int(Kind.PERSON), int(Kind.AGENT)) == (cp.KIND_PERSON, cp.KIND_AGENT)
    assert (cp.STATUS, cp.EV_STATUS, cp.MAX_STATUS_CHARS) == (9, 8, 64)


async def test_event_8_sets_the_status_and_is_emitted_for_the_others() -> None:
    async def script(relay: ScriptedRelay, ws: ServerConnection, n: int) -> None:
        await relay.handshake(ws, n)
        members = [_v11(1, "ann"), _v11(2, "bob"), _v11(3, "bot", cp.KIND_AGENT, "idle")]
        join = await relay.joined(ws, n, 1, members, [])
        events = [
            [8, 2, "presenting"],
            [8, 3, None],
            [8, 1, "mine"],  # own sid: applied, not emitted
            [8, 99, "an unknown sid"],  # ignored
            [8, 2, ""],  # an empty status is none
            [8, 2, "thinking", "a newer element"],
        ]
        await ws.send(_pack([cp.BATCH, join[2], 2000, events]))
        await relay.serve(ws, n)

    async with _scripted(script) as (_, conn):
        doc = await conn.join("d1")
        got = [await doc.next_event(TIMEOUT) for _ in range(4)]
        assert got == [Status(2, "presenting"), Status(3, None), Status(2, None),
                       Status(2, "thinking")]  # fmt: skip
        assert doc.members[2].status == "thinking" and doc.members[3].status is None
        me = doc.me
        assert me is not None and me.status == "mine"
        assert not await _drain(doc)


async def test_set_status_on_the_wire_and_its_checks() -> None:
    raw: list[bytes] = []
    pinged = asyncio.Event()

    async def script(relay: ScriptedRelay, ws: ServerConnection, n: int) -> None:
        await relay.handshake(ws, n)
        await relay.joined(ws, n, 1, [_v11(1, "ann")], [])
        with contextlib.suppress(ConnectionClosed):
            while True:
                data = await ws.recv()
                assert isinstance(data, bytes)
                frame = msgpack.unpackb(data)
                if frame[0] == cp.PING:
                    await ws.send(_pack([cp.PONG, frame[1], 2000]))
                    pinged.set()
                else:
                    raw.append(data)

    async with _scripted(script) as (_, conn):
        doc = await conn.join("d1")
        assert doc.handle == 0  # as in the golden vectors
        doc.set_status("presenting")
        doc.set_status(None)
        doc.set_status("")
        doc.set_status("ë" * 64)  # 64 characters, 128 bytes
        emoji = "\U0001f600" * cp.MAX_STATUS_CHARS  # 64 code points (128 UTF-16 units)
        doc.set_status(emoji)
        refused = [("s" * 65, ValueError), ("ë" * 65, ValueError), (emoji + "!", ValueError),
                   (42, TypeError), (b"bytes", TypeError)]  # fmt: skip
        for bad, error in refused:
            with pytest.raises(error):
                doc.set_status(bad)  # type: ignore[arg-type]
        await conn.ping()
        await asyncio.wait_for(pinged.wait(), TIMEOUT)
        sent = list(raw)  # (then close() sends a LEAVE)
    hexes = [VECTORS[name]["hex"] for name in
             ("status", "status_clear", "status_clear", "status_64_chars_multibyte")]  # fmt: skip
    assert [d.hex() for d in sent[:4]] == hexes
    assert msgpack.unpackb(sent[4]) == [cp.STATUS, 0, emoji]
    assert len(sent) == 5  # a refused status sends nothing
    assert doc._status == emoji  # ... and the last good one is kept


# ---------------------------------------------------------------------------- recent


async def test_recent_from_joined_and_kept_current() -> None:
    go = asyncio.Event()

    async def script(relay: ScriptedRelay, ws: ServerConnection, n: int) -> None:
        await relay.handshake(ws, n)
        many = [_recent(f"u{i:02}", 1000 - i) for i in range(25)]
        recent = [_recent("zoe", 4000, cp.LEFT), _recent("bob", 3000), *many]  # bob is here
        members = [_v11(1, "ann"), _v11(2, "bob"), _v11(3, "cy")]
        join = await relay.joined(ws, n, 1, members, recent, "a newer element")
        await go.wait()
        for at, events in [
            (5000, [[3, 3, cp.LOST]]),  # cy's only session: cy left
            (6000, [[2, _v11(4, "zoe")]]),  # zoe is back: no longer recent
            (7000, [[3, 4, cp.EVICTED]]),  # ... and gone again: first, once
            (8000, [[2, _v11(5, "bob")], [3, 2, cp.LEFT]]),  # bob still has a session
            (9000, [[3, 1, cp.LEFT]]),  # this client's own sid (never sent): not recent
        ]:
            await ws.send(_pack([cp.BATCH, join[2], at, events]))
        await relay.serve(ws, n)

    async with _scripted(script) as (_, conn):
        doc = await conn.join("d1")
        first = [(r.user_id, r.left_at_ms) for r in doc.recent]
        assert len(first) == 20
        assert first[:3] == [("zoe", 4000), ("u00", 1000), ("u01", 999)]
        assert "bob" not in {r.user_id for r in doc.recent}
        go.set()
        await conn.ping()  # its PONG comes after every BATCH
        await _drain(doc)
        assert [(r.user_id, r.left_at_ms, r.reason) for r in doc.recent[:3]] == [
            ("zoe", 7000, LeaveReason.EVICTED),
            ("cy", 5000, LeaveReason.LOST),
            ("u00", 1000, LeaveReason.LOST),
        ]
        assert len(doc.recent) == 20
        assert [r.user_id for r in doc.recent].count("zoe") == 1
        assert not {"bob", "ann"} & {r.user_id for r in doc.recent}


# ---------------------------------------------------------------------------- users


async def test_users_and_the_user_events_with_two_sessions_of_one_user() -> None:
    go = [asyncio.Event(), asyncio.Event()]

    async def script(relay: ScriptedRelay, ws: ServerConnection, n: int) -> None:
        await relay.handshake(ws, n)
        members = [_v11(1, "ann"), _v11(2, "bob"), _v11(3, "cy"), _v11(4, "bob")]
        join = await relay.joined(ws, n, 1, members, [])
        await go[0].wait()
        await ws.send(_pack([cp.BATCH, join[2], 100, [
            [2, _v11(5, "dan")],  # a new user
            [2, _v11(6, "dan")],  # ... its second tab: a session, not a user
            [2, _v11(5, "dan", status="replaced")],  # a known sid: replaced, no news
            [3, 2, cp.LEFT],  # bob's first tab: bob is still here
            [2, _v11(7, "ann")],  # this client's own user, in another tab
        ]]))  # fmt: skip
        await go[1].wait()
        await ws.send(_pack([cp.BATCH, join[2], 200, [
            [3, 4, cp.LOST],  # bob's last tab
            [3, 7, cp.LEFT],  # own user's other tab: a session, the user stays
            [3, 5, cp.LEFT],
            [3, 6, cp.EXPIRED],  # dan's last
        ]]))  # fmt: skip
        await relay.serve(ws, n)

    async with _scripted(script) as (_, conn):
        doc = await conn.join("d1")
        assert _sessions(doc) == [("ann", [1]), ("bob", [2, 4]), ("cy", [3])]
        bob = doc.users()["bob"]
        assert (bob.user_id, bob.name, bob.avatar, bob.kind, bob.agent) == (
            "bob", "Bob", None, Kind.PERSON, False
        )  # fmt: skip
        assert bob.sessions[0] is doc.members[2]  # the live entries
        go[0].set()
        got = [await doc.next_event(TIMEOUT) for _ in range(6)]
        assert _brief(got) == [
            ("joined", 5), ("userjoined", "dan", 5), ("joined", 6), ("joined", 5),
            ("left", 2, LeaveReason.LEFT), ("joined", 7),
        ]  # fmt: skip
        arrived = got[1]
        assert isinstance(arrived, UserJoined)
        assert [m.sid for m in arrived.user.sessions] == [5] and arrived.member.sid == 5
        assert arrived.member is not doc.members[5]  # a copy, as Joined's
        assert _sessions(doc) == [("ann", [1, 7]), ("cy", [3]), ("bob", [4]), ("dan", [5, 6])]

        go[1].set()
        got = [await doc.next_event(TIMEOUT) for _ in range(6)]
        assert _brief(got) == [
            ("left", 4, LeaveReason.LOST), ("userleft", "bob", 4, LeaveReason.LOST),
            ("left", 7, LeaveReason.LEFT), ("left", 5, LeaveReason.LEFT),
            ("left", 6, LeaveReason.EXPIRED), ("userleft", "dan", 6, LeaveReason.EXPIRED),
        ]  # fmt: skip
        gone = got[1]
        assert isinstance(gone, UserLeft)
        assert gone.user == User("bob", "Bob", None, "hsl(10, 70%, 50%)", Kind.PERSON, ())
        assert gone.member.sid == 4 and gone.reason_name == "LOST"
        assert _sessions(doc) == [("ann", [1]), ("cy", [3])]
        assert [r.user_id for r in doc.recent] == ["dan", "bob"]
        assert not await _drain(doc)


async def test_a_user_with_an_agent_session_is_an_agent() -> None:
    async def script(relay: ScriptedRelay, ws: ServerConnection, n: int) -> None:
        await relay.handshake(ws, n)
        members = [_v11(1, "ann"), _v11(2, "svc"), _v11(3, "svc", cp.KIND_AGENT)]
        join = await relay.joined(ws, n, 1, members, [])
        bot = _v11(4, "review-bot", cp.KIND_AGENT, "reviewing")
        await ws.send(_pack([cp.BATCH, join[2], 100, [[2, bot]]]))
        await relay.serve(ws, n)

    async with _scripted(script) as (_, conn):
        doc = await conn.join("d1")
        svc = doc.users()["svc"]
        assert (svc.kind, svc.agent) == (Kind.AGENT, True)
        assert not doc.users()["ann"].agent
        got = [await doc.next_event(TIMEOUT) for _ in range(2)]
        arrived = got[1]
        assert isinstance(arrived, UserJoined) and arrived.user.agent
        assert arrived.member.status == "reviewing"


# ---------------------------------------------------------------------------- resume


async def test_a_resumed_snapshot_is_diffed_by_user_and_the_status_sent_when_missing() -> None:
    """A resume's JOINED: users that came or went in the gap are events (a user who only
    changed tabs is not), `recent` is the snapshot's, and the status this client set is sent
    again only when the relay's snapshot of its session lacks it; a rejoin (a new session)
    gets it again."""
    drops = [asyncio.Event() for _ in range(3)]
    before = [_v11(7, "ann"), _v11(8, "bob"), _v11(9, "cy"), _v11(10, "bob"), _v11(11, "dan"),
              _v11(12, "dan")]  # fmt: skip
    # The gap: bob closed a tab, opened another and set a status; cy left; both of dan's
    # tabs went; eve came with two tabs. The relay never got ann's status.
    gap = [_v11(7, "ann"), _v11(8, "bob", status="thinking"), _v11(13, "eve"), _v11(14, "bob"),
           _v11(15, "eve")]  # fmt: skip

    async def script(relay: ScriptedRelay, ws: ServerConnection, n: int) -> None:
        await relay.handshake(ws, n, resume_token=f"rt-{n}", reconnect_grace_ms=30000,
                              resumed=n in (1, 2))  # fmt: skip
        if n == 0:
            await relay.joined(ws, n, 7, before, [_recent("old", 10)])
        elif n == 1:
            recent = [_recent("dan", 90), _recent("cy", 80)]
            await ws.send(_pack([cp.JOINED, 0, "d1", 7, gap, recent]))
        elif n == 2:  # the status arrived this time; a v1-shaped JOINED: no recent
            mine = [_v11(7, "ann", status="presenting"), *gap[1:]]
            await ws.send(_pack([cp.JOINED, 0, "d1", 7, mine]))
        else:  # the resume token was refused: a JOIN, a new session, no status
            await relay.joined(ws, n, 20, [_v11(20, "ann"), *gap[1:]], [])
        if n < 3:
            serving = asyncio.create_task(relay.serve(ws, n))
            await drops[n].wait()
            ws.transport.abort()
            serving.cancel()
            return
        await relay.serve(ws, n)

    async with _scripted(script) as (relay, conn):
        doc = await conn.join("d1")
        doc.set_status("presenting")
        await conn.ping()
        await _drain(doc)
        drops[0].set()
        got = [await doc.next_event(TIMEOUT) for _ in range(12)]
        assert _brief(got) == [
            ("left", 9, None), ("left", 10, None), ("left", 11, None), ("left", 12, None),
            ("userleft", "cy", 9, None), ("userleft", "dan", 12, None),
            ("status", 8, "thinking"), ("joined", 13), ("userjoined", "eve", 13),
            ("joined", 14), ("joined", 15), ("resynced", True),
        ]  # fmt: skip
        eve = got[8]
        assert isinstance(eve, UserJoined) and [m.sid for m in eve.user.sessions] == [13, 15]
        dan = got[5]
        assert isinstance(dan, UserLeft) and dan.user.sessions == ()
        assert [r.user_id for r in doc.recent] == ["dan", "cy"]  # the snapshot's
        await conn.ping()  # its PONG: what the SDK sent after the JOINED has arrived
        assert [f[0] for f in relay.received[1][1:]] == [cp.STATUS, cp.PING]
        assert relay.received[1][1] == [cp.STATUS, 0, "presenting"]

        drops[1].set()
        assert _brief([await doc.next_event(TIMEOUT)]) == [("resynced", True)]
        await conn.ping()
        assert [f[0] for f in relay.received[2][1:]] == [cp.PING]  # nothing sent again
        assert doc.recent == []

        drops[2].set()  # the next resume is refused: joined afresh
        assert _brief([await doc.next_event(TIMEOUT)]) == [("resynced", False)]
        await conn.ping()
        assert [f[0] for f in relay.received[3][1:]] == [cp.JOIN, cp.STATUS, cp.PING]
        assert relay.received[3][2] == [cp.STATUS, 0, "presenting"]
        assert doc.sid == 20


# ---------------------------------------------------------------------------- end to end
# Against the real relay (`relay_factory`): `pytest -k e2e tests/test_client_roster.py`.


def _doc_id() -> str:
    return f"doc-{uuid.uuid4().hex[:12]}"


@contextlib.asynccontextmanager
async def _user(relay: Relay, user: str, **kw: Any) -> AsyncIterator[Connection]:
    url = f"ws://127.0.0.1:{relay.port}/ws"
    async with connect(url, user_id=user, name=user.title(), proxy=None, **kw) as conn:
        yield conn


class Recorder(DocumentEvents):
    """A document's events (tests/helpers.py), read the way this module's tests want."""

    events: list[Event]

    async def wait(self, pred: Callable[[Event], bool], what: str) -> Event:
        await _eventually(lambda: any(pred(e) for e in self.events), what)
        return next(e for e in self.events if pred(e))

    def users(self) -> list[tuple[Any, ...]]:
        """The user events, in short."""
        return [b for b in _brief(self.events) if b[0] in ("userjoined", "userleft")]


async def test_e2e_a_status_is_seen_by_the_others_and_in_a_later_snapshot(
    relay_factory: Callable[..., Awaitable[Relay]],
) -> None:
    relay = await relay_factory()
    doc_id = _doc_id()
    async with _user(relay, "ann") as ann, _user(relay, "bob") as bob:
        da = await ann.join(doc_id)
        db = await bob.join(doc_id)
        sid = da.sid
        assert sid is not None
        await _eventually(lambda: sid in db.members, "bob sees ann")
        assert db.members[sid].status is None and db.members[sid].kind == Kind.PERSON
        async with Recorder(db) as bob_saw:
            da.set_status("presenting")
            await bob_saw.wait(lambda e: e == Status(sid, "presenting"), "bob sees the status")
            assert db.members[sid].status == "presenting"
            async with _user(relay, "carl") as carl:
                dc = await carl.join(doc_id)
                assert dc.members[sid].status == "presenting"  # in carl's JOINED
                da.set_status("ë" * 64)  # 64 characters in 128 bytes: allowed
                await bob_saw.wait(lambda e: e == Status(sid, "ë" * 64), "a longer status")
                da.set_status(None)
                await bob_saw.wait(lambda e: e == Status(sid, None), "bob sees it cleared")
                await _eventually(lambda: dc.members[sid].status is None, "carl sees it cleared")
        assert not ann.errors


async def test_e2e_the_relay_refuses_a_status_past_64_characters(
    relay_factory: Callable[..., Awaitable[Relay]],
) -> None:
    relay = await relay_factory()
    doc_id = _doc_id()
    async with _user(relay, "ann") as ann, _user(relay, "bob") as bob:
        da = await ann.join(doc_id)
        db = await bob.join(doc_id)
        sid = da.sid
        assert sid is not None
        da.set_status("before")
        await _eventually(lambda: sid in db.members and db.members[sid].status == "before", "ok")
        with pytest.raises(ValueError):
            da.set_status("s" * 65)  # the SDK's check ...
        async with Recorder(da) as ann_saw:
            ann._send(_pack([cp.STATUS, da.handle, "ë" * 65]))  # ... bypassed: the raw frame
            error = await ann_saw.wait(lambda e: isinstance(e, ErrorEvent), "the relay's ERROR")
        assert isinstance(error, ErrorEvent) and error.code == cp.INVALID_VALUE
        assert error.handle == da.handle
        assert [e.code for e in ann.errors] == [cp.INVALID_VALUE]
        await ann.ping()
        await bob.ping()
        assert db.members[sid].status == "before"  # refused: nothing changed
        assert da.joined  # an ERROR, not the end of the connection


async def test_e2e_recent_in_a_late_joiners_snapshot(
    relay_factory: Callable[..., Awaitable[Relay]],
) -> None:
    """Cy leaves: a late joiner's JOINED lists cy as recent; bob closes one of two tabs:
    bob is still here, not recent; ann, who stayed, keeps her `recent` current."""
    relay = await relay_factory()
    doc_id = _doc_id()
    async with _user(relay, "ann") as ann, _user(relay, "bob") as bob1:
        da = await ann.join(doc_id)
        await bob1.join(doc_id)
        assert da.recent == []
        async with _user(relay, "bob") as bob2, _user(relay, "cy") as cy:
            await bob2.join(doc_id)
            dcy = await cy.join(doc_id)
            await _eventually(lambda: len(da.members) == 4, "ann sees everyone")
            cy_sid = dcy.sid
            assert cy_sid is not None
            left_at = time.time() * 1000
        # (cy and bob's second tab closed: a deliberate leave, LEFT)
        await _eventually(lambda: len(da.members) == 2, "ann sees cy and bob's tab go")
        cy_left = [("cy", "Cy", LeaveReason.LEFT)]
        assert [(r.user_id, r.name, r.reason) for r in da.recent] == cy_left
        async with _user(relay, "dave") as dave:
            dd = await dave.join(doc_id)
            assert [(r.user_id, r.name, r.reason) for r in dd.recent] == cy_left
            entry = dd.recent[0]
            assert entry.color.startswith("hsl(") and entry.avatar is None
            assert abs(entry.left_at_ms - left_at) < 5000  # the relay's clock is this one's
            assert {m.user_id for m in dd.members.values()} == {"ann", "bob", "dave"}


async def test_e2e_user_events_with_two_sessions_of_one_user(
    relay_factory: Callable[..., Awaitable[Relay]],
) -> None:
    relay = await relay_factory()
    doc_id = _doc_id()
    async with _user(relay, "ann") as ann:
        da = await ann.join(doc_id)
        async with Recorder(da) as ann_saw:
            bob1 = await connect(f"ws://127.0.0.1:{relay.port}/ws", user_id="bob", proxy=None)
            try:
                s1 = (await bob1.join(doc_id)).sid
                assert s1 is not None
                await ann_saw.wait(lambda e: isinstance(e, UserJoined), "bob arrives")
                async with _user(relay, "bob") as bob2:
                    s2 = (await bob2.join(doc_id)).sid
                    assert s2 is not None
                    await _eventually(lambda: s2 in da.members, "bob's second tab")
                    assert _sessions(da) == [("ann", [da.sid]), ("bob", [s1, s2])]
                    assert ann_saw.users() == [("userjoined", "bob", s1)]
                await ann_saw.wait(lambda e: e == Left(s2, LeaveReason.LEFT), "a tab closes")
                await ann.ping()
                assert ann_saw.users() == [("userjoined", "bob", s1)]  # bob is still here
                assert "bob" in da.users() and da.recent == []
            finally:
                await bob1.close()
            gone = await ann_saw.wait(lambda e: isinstance(e, UserLeft), "bob leaves")
            assert isinstance(gone, UserLeft) and gone.reason == LeaveReason.LEFT
            assert gone.member.sid == s1 and gone.user.sessions == ()
            before = ann_saw.events[ann_saw.events.index(gone) - 1]
            assert before == Left(s1, LeaveReason.LEFT)  # the user after its last session
            assert ann_saw.users() == [("userjoined", "bob", s1),
                                       ("userleft", "bob", s1, LeaveReason.LEFT)]  # fmt: skip
        assert list(da.users()) == ["ann"]
        assert [r.user_id for r in da.recent] == ["bob"]


SECRET = "presence-relay-roster-test-secret-0123456789"


def _token(user: str) -> str:
    return mint_token(SECRET, user, user.title(), workspace="acme", docs=["*"], ttl_s=600)


def gated(user: str) -> GatedProvider:
    return GatedProvider(user, _token)


async def test_e2e_a_status_set_while_away_is_sent_after_the_resume(
    relay_factory: Callable[..., Awaitable[Relay]],
) -> None:
    relay = await relay_factory(jwt_secret=SECRET)
    url = f"ws://127.0.0.1:{relay.port}/ws"
    provider = gated("ann")
    doc_id = _doc_id()
    async with (
        connect(url, token=provider, proxy=None, backoff_base=0.01) as ann,
        connect(url, token=_token("bob"), proxy=None) as bob,
    ):
        da = await ann.join(doc_id)
        db = await bob.join(doc_id)
        sid = da.sid
        assert sid is not None
        da.set_status("presenting")
        await _eventually(lambda: sid in db.members and db.members[sid].status == "presenting",
                          "bob sees the status")  # fmt: skip
        session = ann._session
        assert session is not None
        session.ws.transport.abort()  # the network goes
        await _eventually(lambda: db.members[sid].disconnected, "bob sees ann DISCONNECTED")
        assert db.members[sid].status == "presenting"  # kept while her place is held
        da.set_status("back in a minute")  # lost on the wire: there is no connection
        provider.gate.set()
        await _eventually(lambda: ann.resumed and da.joined, "ann resumes")
        await _eventually(lambda: db.members[sid].status == "back in a minute", "re-sent")
        assert da.sid == sid and not ann.errors


async def test_e2e_the_roster_with_two_tabs_and_an_agent(
    relay_factory: Callable[..., Awaitable[Relay]],
) -> None:
    """Issue 13's roster: one user per user id, a user with two tabs is one user with two
    sessions, and a member set over HTTP (AgentPresence) is a user marked agent."""
    from presence_client import AgentPresence

    relay = await relay_factory()
    doc_id = _doc_id()
    async with _user(relay, "ann") as ann, _user(relay, "bob") as bob1, _user(relay, "bob") as bob2:
        da = await ann.join(doc_id)
        async with Recorder(da) as ann_saw:
            s1 = (await bob1.join(doc_id)).sid
            s2 = (await bob2.join(doc_id)).sid
            url = f"http://127.0.0.1:{relay.port}"
            async with AgentPresence(url, doc_id, "review-bot", name="Reviewer") as agent:
                await agent.set_status("reading")
                await _eventually(
                    lambda: (
                        "review-bot" in da.users()
                        and da.users()["review-bot"].sessions[0].status == "reading"
                    ),
                    "the agent and its status",
                )
                users = da.users()
                assert list(users) == ["ann", "bob", "review-bot"]
                assert [m.sid for m in users["bob"].sessions] == [s1, s2]
                assert users["review-bot"].agent and not users["bob"].agent
                assert users["review-bot"].sessions[0].sid == agent.sid
            gone = await ann_saw.wait(
                lambda e: isinstance(e, UserLeft) and e.user.user_id == "review-bot",
                "the agent leaves",
            )
            assert isinstance(gone, UserLeft) and gone.reason == LeaveReason.LEFT
            joins = [b for b in ann_saw.users() if b[0] == "userjoined"]
            assert [b[1] for b in joins] == ["bob", "review-bot"]  # bob once, two tabs
