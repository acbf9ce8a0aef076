"""Protocol v1.1 status and `recent`, end to end over real WebSockets: STATUS (frame 9) and
BATCH event 8, MEMBER's kind and status, JOINED's `recent`, and HTTP's `recently_left`, on
one relay and on two relays sharing a real Redis."""

from __future__ import annotations

import asyncio
from typing import Any

from helpers import MS, http_get_json

from relay.core import protocol as p

DOC = "doc-status"


def events_of(frame: list[Any], code: int) -> list[list[Any]]:
    return [ev for ev in frame[3] if ev[0] == code] if frame[0] == p.BATCH else []


async def until_event(c: Any, code: int, pred: Any = lambda ev: True) -> list[Any]:
    frame = await c.recv_until(lambda f: any(pred(ev) for ev in events_of(f, code)))
    return next(ev for ev in events_of(frame, code) if pred(ev))


async def test_status_reaches_the_others_coalesced_and_is_in_snapshots(
    relay_factory: Any, client_factory: Any
) -> None:
    r = await relay_factory(batch_ms=20)
    ann, bob = await client_factory(r, "ann"), await client_factory(r, "bob")
    joined = await ann.join(0, DOC)
    assert joined[5] == [] and joined[4][0][13:] == [p.KIND_PERSON, None]
    await bob.join(0, DOC)
    ann_sid = joined[3]
    # Three in one batch interval: bob sees the latest only, once.
    for text in ("drafting", "presenting", "thinking"):
        await ann.send([p.STATUS, 0, text])
    ev = await until_event(bob, p.EV_STATUS)
    assert ev == [p.EV_STATUS, ann_sid, "thinking"]
    later = await bob.quiet(150 * MS)
    assert not [e for f in later for e in events_of(f, p.EV_STATUS)], later
    # A later joiner finds it in the MEMBER; the HTTP view too.
    cy = await client_factory(r, "cy")
    snap = await cy.join(0, DOC)
    ann_member = next(m for m in snap[4] if m[0] == ann_sid)
    assert ann_member[13:] == [p.KIND_PERSON, "thinking"]
    status, body = await http_get_json(r.port, f"/internal/presence/{DOC}")
    assert status == 200
    by_user = {u["user_id"]: u for u in body["active_users"]}
    assert by_user["ann"]["status"] == "thinking" and by_user["ann"]["kind"] == "person"
    assert by_user["bob"]["status"] is None
    # nil and "" both clear.
    await ann.send([p.STATUS, 0, ""])
    assert await until_event(bob, p.EV_STATUS) == [p.EV_STATUS, ann_sid, None]


async def test_status_limits_and_errors(relay_factory: Any, client_factory: Any) -> None:
    r = await relay_factory(batch_ms=20)
    ann, bob = await client_factory(r, "ann"), await client_factory(r, "bob")
    sid = (await ann.join(0, DOC))[3]
    await bob.join(0, DOC)
    await ann.send([p.STATUS, 0, "ë" * 65])  # 65 characters (130 bytes)
    err = await ann.recv_until(lambda f: f[0] == p.ERROR)
    assert err[1:3] == [0, p.INVALID_VALUE] and "64" in err[3]
    await ann.send([p.STATUS, 0, 7])
    err = await ann.recv_until(lambda f: f[0] == p.ERROR)
    assert err[1:3] == [0, p.BAD_FRAME]
    await ann.send([p.STATUS, 5, "x"])  # not joined
    err = await ann.recv_until(lambda f: f[0] == p.ERROR)
    assert err[1:3] == [5, p.NOT_JOINED]
    # None of it reached bob; the edge (64 characters) does.
    await ann.send([p.STATUS, 0, "ë" * 64])
    assert await until_event(bob, p.EV_STATUS) == [p.EV_STATUS, sid, "ë" * 64]


async def test_recent_lists_users_who_left_not_those_still_here(
    relay_factory: Any, client_factory: Any
) -> None:
    r = await relay_factory(batch_ms=20, reconnect_grace_ms=0)
    ann1, ann2 = await client_factory(r, "ann"), await client_factory(r, "ann")
    bob, cy = await client_factory(r, "bob"), await client_factory(r, "cy")
    for c in (ann1, ann2, bob, cy):
        await c.join(0, DOC)
    await ann1.send([p.LEAVE, 0])  # one of ann's two tabs: ann is still here
    await bob.send([p.LEAVE, 0])
    await asyncio.sleep(50 * MS)
    await cy.ws.close()  # a deliberate close (1000): LEFT
    await asyncio.sleep(100 * MS)
    dee = await client_factory(r, "dee")
    joined = await dee.join(0, DOC)
    recent = joined[5]
    assert [e[0] for e in recent] == ["cy", "bob"]  # newest first; ann has a session
    cy_entry = recent[0]
    assert cy_entry[1] == "cy" and cy_entry[2] is None and cy_entry[3].startswith("hsl(")
    assert cy_entry[5] == p.LEFT and cy_entry[4] >= recent[1][4]
    status, body = await http_get_json(r.port, f"/internal/presence/{DOC}")
    assert status == 200
    assert [e["user_id"] for e in body["recently_left"]] == ["cy", "bob"]
    assert body["recently_left"][0]["reason"] == "LEFT"
    assert set(body["recently_left"][0]) == {"user_id", "name", "avatar_url", "left_at", "reason"}
    # ann's last tab goes: now ann is recently left too, first.
    await ann2.send([p.LEAVE, 0])
    await asyncio.sleep(100 * MS)
    eve = await client_factory(r, "eve")
    assert [e[0] for e in (await eve.join(0, DOC))[5]] == ["ann", "cy", "bob"]
    # A user who comes back is not "recently left" any more.
    bob2 = await client_factory(r, "bob")
    assert [e[0] for e in (await bob2.join(0, DOC))[5]] == ["ann", "cy"]


async def test_recent_outlives_an_emptied_document_and_can_be_turned_off(
    relay_factory: Any, client_factory: Any
) -> None:
    r = await relay_factory(batch_ms=20, reconnect_grace_ms=0)
    ann = await client_factory(r, "ann")
    await ann.join(0, "doc-empty")
    await ann.send([p.LEAVE, 0])  # the document has nobody now
    await asyncio.sleep(50 * MS)
    bob = await client_factory(r, "bob")
    assert [e[0] for e in (await bob.join(0, "doc-empty"))[5]] == ["ann"]
    off = await relay_factory(batch_ms=20, reconnect_grace_ms=0, recent_window_s=0)
    ann = await client_factory(off, "ann")
    await ann.join(0, "doc-off")
    await ann.send([p.LEAVE, 0])
    await asyncio.sleep(50 * MS)
    bob = await client_factory(off, "bob")
    assert (await bob.join(0, "doc-off"))[5] == []
    _, body = await http_get_json(off.port, "/internal/presence/doc-off")
    assert body["recently_left"] == []


async def test_two_nodes_agree_on_status_and_recent(
    relay_factory: Any, client_factory: Any, redis_url: str
) -> None:
    a = await relay_factory(batch_ms=20, redis_url=redis_url, reconnect_grace_ms=0)
    b = await relay_factory(batch_ms=20, redis_url=redis_url, reconnect_grace_ms=0)
    ann, bob = await client_factory(a, "ann"), await client_factory(b, "bob")
    ann_sid = (await ann.join(0, DOC))[3]
    await bob.join(0, DOC)
    await ann.send([p.STATUS, 0, "presenting"])
    assert await until_event(bob, p.EV_STATUS) == [p.EV_STATUS, ann_sid, "presenting"]
    # A joiner on the other node sees the status in the snapshot (record or mirror).
    cy = await client_factory(b, "cy")
    snap = await cy.join(0, DOC)
    assert next(m for m in snap[4] if m[0] == ann_sid)[14] == "presenting"
    # ann leaves on node a; a joiner on node b of ANOTHER moment lists her.
    await ann.send([p.LEAVE, 0])
    await until_event(bob, p.EV_LEFT)
    dee = await client_factory(b, "dee")
    assert [e[0] for e in (await dee.join(0, DOC))[5]] == ["ann"]
    # A node that had nobody in the document when she left reads it from Redis.
    c = await relay_factory(batch_ms=20, redis_url=redis_url, reconnect_grace_ms=0)
    eve = await client_factory(c, "eve")
    recent = None
    for _ in range(100):  # bounded: the owner's write-behind flushes within a second
        recent = (await eve.join(0, DOC))[5]
        if recent:
            break
        await eve.send([p.LEAVE, 0])
        await asyncio.sleep(50 * MS)
    assert recent is not None and [e[0] for e in recent] == ["ann"]
    _, body = await http_get_json(c.port, f"/internal/presence/{DOC}")
    assert [e["user_id"] for e in body["recently_left"]] == ["ann"]
