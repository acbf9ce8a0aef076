"""The mirror heals after a pub/sub gap: fields of members both sides know converge to Redis.

Two in-process relays share a real redis-server. Node 2 talks to Redis as its own ACL user,
so the test can cut node 2's pub/sub alone: revoking the user's channel permissions makes
Redis drop node 2's subscription and refuse its resubscriptions until they are granted
again. Node 1 keeps publishing meanwhile, and Redis delivers those frames to nobody on
node 2: they are lost, as in a real network blip. Node 2's store (HSET, ...) is unaffected.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import msgpack
import pytest
import redis.asyncio as aioredis
from helpers import (
    BATCH,
    EV_CURSOR,
    EV_JOINED,
    MS,
    RawClient,
    RedisServer,
    eventually,
    joined,
    wait_event,
)
from redis.exceptions import ResponseError

from relay.backends.redis_keys import member_record, members_key, parse_member_record
from relay.core.model import Session, UserInfo
from relay.server.app import Relay

pytestmark = pytest.mark.timeout(90)

EV_TYPING, EV_VIEWPORT, EV_ACTIVITY, EV_FOCUS = 4, 5, 6, 7
DOC = "doc-heal"
# A TTL this long keeps the periodic anti-entropy (every TTL) out of the way: what heals
# here must be the resyncs that follow the pub/sub reconnect. Typing stays on (debounce at
# its maximum), so "typing" differs before and after the gap.
CFG: dict[str, Any] = {"presence_ttl_seconds": 30, "typing_debounce_ms": 60_000}
HEAL_TIMEOUT = 12.0  # the design heals within ~2 s; generous for a loaded 2-core machine


def view_of(m: list[Any]) -> dict[str, Any]:
    """The fields of a MEMBER array a peer displays."""
    return {
        "cursor": m[8],
        "selection": m[9],
        "viewport": m[10],
        "typing": m[6],
        "focused": m[7],
        "activity": m[5],
    }


def apply(view: dict[str, Any], ev: list[Any]) -> None:
    """Apply one field event (as an SDK does). `joined` is deliberately not applied: the
    heal must arrive as field events."""
    code = ev[0]
    if code == EV_CURSOR:
        view["cursor"] = ev[2:5] if len(ev) > 2 else None
        view["selection"] = ev[5:9] if len(ev) == 9 else None
    elif code == EV_TYPING:
        view["typing"] = ev[2]
    elif code == EV_VIEWPORT:
        view["viewport"] = ev[2:5]
    elif code == EV_ACTIVITY:
        view["activity"] = ev[2]
    elif code == EV_FOCUS:
        view["focused"] = ev[2]


def about(ev: list[Any], sid: int) -> bool:
    return (ev[1][0] if ev[0] == EV_JOINED else ev[1]) == sid


async def follow(
    c: RawClient, sid: int, view: dict[str, Any], want: dict[str, Any], timeout: float
) -> float:
    """Apply `c`'s BATCH events about `sid` to `view` until it equals `want`; return the
    monotonic time it did. Bounded by `timeout`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while view != want:
        left = deadline - loop.time()
        if left <= 0:
            raise AssertionError(f"after {timeout} s the view is {view}, want {want}")
        try:
            frame = await c.recv(left)
        except TimeoutError:
            continue
        if frame[0] == BATCH:
            for ev in frame[3]:
                if about(ev, sid):
                    apply(view, ev)
    return time.monotonic()


async def _resyncs_at_least(r: Relay, n: int) -> bool:
    assert r.hub.cluster is not None
    return r.hub.cluster.resyncs >= n


async def outbox_drained(r: Relay) -> bool:
    b = r.hub.broker
    return not b._outbox and not b._in_flight  # type: ignore[attr-defined]


async def test_fields_lost_in_a_pubsub_gap_reach_the_other_node(
    redis_factory: Callable[[], RedisServer],
    relay_factory: Callable[..., Any],
    client_factory: Callable[..., Any],
) -> None:
    server = redis_factory()  # our own: the test changes its ACLs
    admin = aioredis.from_url(server.url)
    try:
        try:
            await admin.execute_command("ACL", "SETUSER", "node2", "on", ">pw", "~*", "&*", "+@all")
        except ResponseError as exc:  # channel permissions need Redis 6.2
            pytest.skip(f"redis-server without channel ACLs: {exc}")
        r1 = await relay_factory(redis_url=server.url, **CFG)
        r2 = await relay_factory(redis_url=f"redis://node2:pw@127.0.0.1:{server.port}/0", **CFG)
        for r in (r1, r2):
            assert await eventually(r.hub.store.ready, 5000 * MS)
            assert await eventually(r.hub.broker.ready, 5000 * MS)
        a = await client_factory(r1, "ann")
        obs = await client_factory(r1, "obs")  # sees what node 1 batches (and publishes)
        b = await client_factory(r2, "bob")
        sid_a, _ = await joined(a, 1, DOC)
        _, members = await joined(obs, 1, DOC)
        obs_view = view_of(next(m for m in members if m[0] == sid_a))
        _, members = await joined(b, 1, DOC)
        bob_view = view_of(next(m for m in members if m[0] == sid_a))

        # Before the gap: bob sees ann's cursor and viewport through pub/sub.
        await a.send([4, 1, 1, 1, 1])
        await a.send([6, 1, 0, 40, 0.0])
        before = {
            "cursor": [1, 1, 1],
            "selection": None,
            "viewport": [0, 40, 0.0],
            "typing": False,
            "focused": True,
            "activity": 1,
        }
        await follow(b, sid_a, bob_view, before, 5)
        await follow(obs, sid_a, obs_view, before, 5)
        # Node 2's re-reads after it opened the document (0.15 s and 1.15 s later) are done:
        # what heals below must be the resyncs that follow the pub/sub reconnect.
        assert await eventually(lambda: _resyncs_at_least(r2, 2), 5000 * MS)

        # Every frame node 2 receives from other nodes, from here on.
        via_pubsub: list[list[Any]] = []
        forward = r2.hub.broker._callback
        assert forward is not None

        def spy(doc_id: str, frame: bytes, origin: str) -> None:
            msg = msgpack.unpackb(frame, strict_map_key=False)
            via_pubsub.extend(ev for ev in msg[3] if about(ev, sid_a))
            forward(doc_id, frame, origin)

        r2.hub.broker.set_callback(spy)

        # The gap: node 2's subscription is dropped (Redis closes it) and cannot come back.
        await admin.execute_command("ACL", "SETUSER", "node2", "resetchannels")
        # Ann moves, selects, scrolls, types and blurs the tab; then she stops.
        await a.send([4, 1, 20, 5, 300, 18, 0, 250, True])
        await a.send([6, 1, 10, 50, 25.0])
        await a.send([5, 1, True])
        await a.send([7, 1, False])
        final = {
            "cursor": [20, 5, 300],
            "selection": [18, 0, 250, True],
            "viewport": [10, 50, 25.0],
            "typing": True,
            "focused": False,
            "activity": 0,
        }  # Editing (typing)
        # Node 1 batched all of it (its local observer saw it) and published it...
        await follow(obs, sid_a, obs_view, final, 5)
        assert await eventually(lambda: outbox_drained(r1), 5000 * MS)
        # ... to a channel node 2 was not subscribed to. The gap ends at once, most likely
        # before ann's new state is in Redis (her owner's sweep writes it within a second):
        # the resyncs after the reconnect have to catch the write that follows.
        await admin.execute_command("ACL", "SETUSER", "node2", "allchannels")
        t0 = time.monotonic()

        t1 = await follow(b, sid_a, bob_view, final, HEAL_TIMEOUT)
        # Nothing of ann's came through pub/sub after the gap began: the frames were lost,
        # and what bob received came from node 2's resync.
        assert via_pubsub == [], via_pubsub
        print(f"healed {t1 - t0:.2f} s after the gap ended")

        # The mirror caught up as well: a new joiner on node 2 gets ann's final state.
        cy = await client_factory(r2, "cy")
        _, members = await joined(cy, 1, DOC)
        assert view_of(next(m for m in members if m[0] == sid_a)) == final

        # The spy is not blind: once node 2 is subscribed again, ann's next move arrives
        # through pub/sub, and the spy sees it.
        async def both_subscribed() -> bool:
            _, n = await admin.execute_command("PUBSUB", "NUMSUB", f"presence:channel:{DOC}")
            return bool(n == 2)

        assert await eventually(both_subscribed, 5000 * MS)
        await a.send([4, 1, 30, 0, 400])
        await wait_event(b, lambda e: e == [EV_CURSOR, sid_a, 30, 0, 400], timeout=5000 * MS)
        assert [EV_CURSOR, sid_a, 30, 0, 400] in via_pubsub
    finally:
        await admin.execute_command("ACL", "SETUSER", "node2", "allchannels")
        await admin.aclose()


async def _record(rds: aioredis.Redis, sid: int) -> tuple[bytes, Any] | None:
    raw = await rds.hget(members_key(DOC), str(sid))
    rec = parse_member_record(raw) if raw is not None else None
    return None if rec is None else (raw, rec)


async def test_an_older_record_never_regresses_the_mirror(
    redis_url: str,
    relay_factory: Callable[..., Any],
    client_factory: Callable[..., Any],
) -> None:
    rds = aioredis.from_url(redis_url)
    try:
        r1 = await relay_factory(redis_url=redis_url, **CFG)
        r2 = await relay_factory(redis_url=redis_url, **CFG)
        for r in (r1, r2):
            assert await eventually(r.hub.store.ready, 5000 * MS)
        a = await client_factory(r1, "ann")
        b = await client_factory(r2, "bob")
        sid_a, _ = await joined(a, 1, DOC)
        await joined(b, 1, DOC)

        def mirror() -> Any:  # looked up each time: a `joined` replaces the object
            return r2.hub.documents[DOC].sessions[sid_a]

        # r2 may have read Redis before r1's write-behind wrote ann (and subscribed after her
        # `joined` went out): its settle resync brings her in moments later.
        assert await eventually(lambda: sid_a in r2.hub.documents[DOC].sessions)
        assert mirror().remote

        async def record_with(cursor: list[int]) -> tuple[bytes, Any] | None:
            got = await _record(rds, sid_a)
            return got if got is not None and got[1].member[8] == cursor else None

        await a.send([4, 1, 1, 1, 1])
        await wait_event(b, lambda e: e == [EV_CURSOR, sid_a, 1, 1, 1])
        got = await eventually(lambda: record_with([1, 1, 1]))
        assert got, "the owner writes the record within about a second"
        old_raw, old = got
        assert old.written_at > 0

        # The mirror applies a newer cursor; the owner writes it too.
        await a.send([4, 1, 2, 2, 2])
        await wait_event(b, lambda e: e == [EV_CURSOR, sid_a, 2, 2, 2])
        assert await eventually(lambda: record_with([2, 2, 2]))
        # The write-behind lag, made to last: Redis holds the record the owner built before
        # that cursor (its owner will not rewrite it: nothing changed since its last write).
        await rds.hset(members_key(DOC), str(sid_a), old_raw)
        n = r2.hub.cluster.resyncs
        await r2.hub.cluster.resync(DOC)
        assert r2.hub.cluster.resyncs == n + 1, "the resync ran"
        assert mirror().cursor == (2, 2, 2), "the older record did not win"
        got_frames = await b.quiet(500 * MS)
        regress = [e for f in got_frames if f[0] == BATCH for e in f[3] if about(e, sid_a)]
        assert regress == [], regress
        cy = await client_factory(r2, "cy")
        _, members = await joined(cy, 1, DOC)
        assert next(m for m in members if m[0] == sid_a)[8] == [2, 2, 2]

        # A record written after the mirror's last cursor does win (here one that says the
        # cursor is somewhere else, to see the resync adopt it and tell bob).
        member = list(old.member)
        member[8] = [3, 3, 3]
        newer = msgpack.packb(
            [old.node_id, old.workspace_id, member, old.last_cursor, int(time.time() * 1000)],
            use_bin_type=True,
        )
        await rds.hset(members_key(DOC), str(sid_a), newer)
        await r2.hub.cluster.resync(DOC)
        assert mirror().cursor == (3, 3, 3)
        await wait_event(b, lambda e: e == [EV_CURSOR, sid_a, 3, 3, 3])
    finally:
        await rds.aclose()


def test_member_records_carry_when_they_were_written() -> None:
    s = Session(
        sid=7,
        user=UserInfo("ann", "Ann", "acme"),
        color="c",
        connected_at_ms=10,
        last_active_ms=20,
        cursor=(1, 2, 3),
        cursor_arrived_ms=15,
    )
    rec = parse_member_record(member_record("n1", s, 1234))
    assert rec is not None
    assert (rec.node_id, rec.workspace_id, rec.sid, rec.last_cursor, rec.written_at) == (
        "n1",
        "acme",
        7,
        15,
        1234,
    )
    assert rec.session().written_at_ms == 1234
    assert rec.session().cursor == (1, 2, 3)
    # A record of the previous format (four elements) still parses: written at "never".
    legacy = msgpack.packb(["n1", "acme", list(s.member()), 15], use_bin_type=True)
    rec = parse_member_record(legacy)
    assert rec is not None and rec.written_at == 0 and rec.sid == 7
    # One from a later format (more elements) too: what this version knows of it.
    later = msgpack.packb(["n1", "acme", list(s.member()), 15, 1234, "x"], use_bin_type=True)
    rec = parse_member_record(later)
    assert rec is not None and rec.written_at == 1234
    assert parse_member_record(b"\x93\x01\x02\x03") is None
