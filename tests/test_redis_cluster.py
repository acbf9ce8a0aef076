"""Two in-process relays sharing a real Redis: shared presence, fan-out, liveness. Every test
runs on each topology: "single" (one redis-server) and "cluster" (a three-master Redis
Cluster, tests/redis_cluster_server.py: the relays are given one node's URL and find out)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from helpers import (
    EV_CURSOR,
    EV_JOINED,
    EV_LEFT,
    MS,
    SEED_FIELDS,
    eventually,
    http_get_json,
    joined,
    pk,
    users_hash,
    wait_event,
    ws_frame,
)
from redis.asyncio.cluster import RedisCluster

from relay.config import PresenceConfig
from relay.server.app import Relay

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(params=["single", "cluster"])
def topology(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def shared_url(topology: str, request: pytest.FixtureRequest) -> str:
    """The Redis both relays share, emptied: one redis-server, or one node of the cluster."""
    fixture = "redis_url" if topology == "single" else "redis_cluster_url"
    return str(request.getfixturevalue(fixture))


@pytest.fixture
async def rds(shared_url: str, topology: str) -> Any:
    """A client of the same Redis (a RedisCluster client on the cluster)."""
    cluster = topology == "cluster"
    r: Any = RedisCluster.from_url(shared_url) if cluster else aioredis.from_url(shared_url)
    yield r
    await r.aclose()


async def two_nodes(relay_factory: Callable[..., Any], url: str, **kw: Any) -> tuple[Relay, Relay]:
    kw.setdefault("presence_ttl_seconds", 5)
    r1 = await relay_factory(redis_url=url, **kw)
    r2 = await relay_factory(redis_url=url, **kw)
    for r in (r1, r2):
        await eventually(r.hub.store.ready, 5000 * MS)
    return r1, r2


async def test_members_on_two_nodes_share_one_document(
    relay_factory: Callable[..., Any],
    client_factory: Callable[..., Any],
    shared_url: str,
    rds: aioredis.Redis,
) -> None:
    r1, r2 = await two_nodes(relay_factory, shared_url)
    a = await client_factory(r1, "ann")
    b = await client_factory(r2, "bob")
    sid_a, _ = await joined(a, 1, "doc-x")
    sid_b, members = await joined(b, 1, "doc-x")
    assert sid_a != sid_b
    assert {m[0] for m in members} == {sid_a, sid_b}, "snapshot spans nodes"
    await wait_event(a, lambda e: e[0] == EV_JOINED and e[1][0] == sid_b)

    # A cursor crosses nodes within about one batch interval.
    t0 = time.monotonic()
    await a.send([4, 1, 7, 8, 9])
    t1, _ = await wait_event(b, lambda e: e == [EV_CURSOR, sid_a, 7, 8, 9])
    assert t1 - t0 < 0.5
    await b.send([4, 1, 1, 2, 3, 1, 0, 1, True])
    await wait_event(a, lambda e: e[:2] == [EV_CURSOR, sid_b] and e[2:5] == [1, 2, 3])

    # The mirror: a later joiner on node 2 sees ann's latest cursor in its snapshot.
    c = await client_factory(r2, "cy")
    _, members = await joined(c, 1, "doc-x")
    by_sid = {m[0]: m for m in members}
    assert by_sid[sid_a][8] == [7, 8, 9] and by_sid[sid_a][1] == "ann"

    # The seed's keys, as other services read them.
    async def both_written() -> Any:
        users = await users_hash(rds, "doc-x")
        return users if {"ann", "bob", "cy"} <= set(users) else None

    users = await eventually(both_written)
    assert users, [key async for key in rds.scan_iter()]  # (every primary, on the cluster)
    ann = users["ann"]
    assert set(ann) == SEED_FIELDS
    assert ann["document_id"] == "doc-x" and ann["workspace_id"] == "default"
    assert set(ann["state"]) == {"online", "typing", "focused", "activity", "viewport"}
    assert ann["state"]["activity"] in ("Editing", "Viewing", "Selecting", "Idle", "Away")
    assert await rds.smembers("presence:workspace:default:documents") == {b"doc-x"}
    assert b"doc-x" in await rds.hgetall("presence:user:ann")
    # Cursor state reaches the users hash through the write-behind sweep (about 1 s).
    users = await eventually(
        lambda: _cursor_of(rds, "ann", {"line": 7, "column": 8, "offset": 9}), 4
    )
    assert users
    bob_sel = await eventually(lambda: _selection_of(rds, "bob"), 4000 * MS)
    assert bob_sel == {
        "anchor": {"line": 1, "column": 0, "offset": 1},
        "head": {"line": 1, "column": 2, "offset": 3},
        "is_backward": True,
    }

    # HTTP reads answer for the whole cluster, from either node.
    for r in (r1, r2):
        status, body = await http_get_json(r.port, "/internal/presence/doc-x")
        assert status == 200, body
        assert {u["user_id"] for u in body["active_users"]} == {"ann", "bob", "cy"}
        status, body = await http_get_json(r.port, "/internal/workspaces/default/documents")
        assert body["documents"] == [{"document_id": "doc-x", "active_users": 3}]

    # Leaves cross nodes, and Redis and the stream follow.
    await b.send([3, 1])
    await wait_event(a, lambda e: e[:2] == [EV_LEFT, sid_b])

    async def bob_gone() -> bool:
        return "bob" not in await users_hash(rds, "doc-x") and not await rds.hgetall(
            "presence:user:bob"
        )

    assert await eventually(bob_gone)
    entries = await rds.xrange("materi:events:presence")
    events = [(f[b"type"], f[b"user_id"]) for _, f in entries]
    assert events.count((b"joined", b"ann")) == 1 and (b"left", b"bob") in events
    fields = entries[0][1]
    # The seed's fields, plus the session's sid (and a `left`'s reason) for webhooks.
    seed = {b"type", b"user_id", b"document_id", b"workspace_id", b"timestamp"}
    assert set(fields) == seed | {b"sid"}
    assert fields[b"document_id"] == b"doc-x" and fields[b"workspace_id"] == b"default"
    left = next(f for _, f in entries if f[b"type"] == b"left")
    assert set(left) == seed | {b"sid", b"reason"} and left[b"sid"] == str(sid_b).encode()


async def _cursor_of(r: aioredis.Redis, user: str, want: dict[str, int]) -> bool:
    return (await users_hash(r, "doc-x")).get(user, {}).get("cursor") == want


async def _selection_of(r: aioredis.Redis, user: str) -> Any:
    return (await users_hash(r, "doc-x")).get(user, {}).get("selection")


async def test_without_a_grace_a_graceful_stop_removes_a_nodes_sessions_at_once(
    relay_factory: Callable[..., Any],
    client_factory: Callable[..., Any],
    shared_url: str,
    rds: aioredis.Redis,
) -> None:
    # (With a grace the stop holds them for a resume: tests/test_resume_cluster.py.)
    r2 = await relay_factory(redis_url=shared_url, presence_ttl_seconds=30, reconnect_grace_ms=0)
    r1 = Relay(
        PresenceConfig(
            port=0, batch_ms=20, redis_url=shared_url, presence_ttl_seconds=30,
            reconnect_grace_ms=0,
        )
    )  # fmt: skip
    await r1.start()
    try:
        await eventually(r1.hub.store.ready)
        a = await client_factory(r1, "ann")
        b = await client_factory(r2, "bob")
        sid_a, _ = await joined(a, 1, "doc-g")
        await joined(b, 1, "doc-g")
        assert await eventually(lambda: _has(rds, "doc-g", "ann"))
    finally:
        t0 = time.monotonic()
        await r1.stop()
    await wait_event(b, lambda e: e[:2] == [EV_LEFT, sid_a], timeout=2000 * MS)
    assert time.monotonic() - t0 < 2, "not after the TTL (30 s here)"
    assert "ann" not in await users_hash(rds, "doc-g")
    assert r1.hub.broker.node_id.encode() not in await rds.smembers("presence:node:registry")
    assert not await rds.exists(f"presence:node:{r1.hub.broker.node_id}")


async def _has(r: aioredis.Redis, doc: str, user: str) -> bool:
    return user in await users_hash(r, doc)


async def test_idle_member_never_expires_and_a_frozen_node_is_reaped(
    relay_factory: Callable[..., Any],
    client_factory: Callable[..., Any],
    shared_url: str,
    rds: aioredis.Redis,
) -> None:
    # No grace: the reaper removes a dead node's members at once (held for the grace
    # otherwise: tests/test_resume_cluster.py).
    r1, r2 = await two_nodes(
        relay_factory, shared_url, presence_ttl_seconds=2, reconnect_grace_ms=0
    )
    a = await client_factory(r1, "ann")
    b = await client_factory(r2, "bob")
    sid_a, _ = await joined(a, 1, "doc-i")
    await joined(b, 1, "doc-i")
    # Idle (no frames at all) for twice the TTL: heartbeats, not actions, keep members alive.
    got = await b.quiet(4000 * MS)
    assert not [e for f in got if f[0] == 34 for e in f[3] if e[0] == EV_LEFT]
    assert await _has(rds, "doc-i", "ann")

    # Freeze node 1's Redis side (no heartbeats, no cleanup): a crash, as far as Redis sees.
    # Node 2's reaper must remove ann and tell bob within the TTL.
    t0 = time.monotonic()
    for t in r1.hub.store._tasks:
        t.cancel()
    await wait_event(b, lambda e: e[:2] == [EV_LEFT, sid_a], timeout=4000 * MS)
    assert time.monotonic() - t0 <= 2.5
    assert not await _has(rds, "doc-i", "ann")
    # The snapshot on node 2 no longer lists ann either.
    c = await client_factory(r2, "cy")
    _, members = await joined(c, 1, "doc-i")
    assert sid_a not in {m[0] for m in members}


async def test_sids_stay_unique_under_concurrent_joins(
    relay_factory: Callable[..., Any],
    client_factory: Callable[..., Any],
    shared_url: str,
) -> None:
    r1, r2 = await two_nodes(relay_factory, shared_url)
    clients = [await client_factory(r, f"u{i}") for i, r in enumerate([r1, r2] * 5)]
    results = await asyncio.gather(*(joined(c, 1, "doc-c") for c in clients))
    sids = [sid for sid, _ in results]
    assert len(set(sids)) == len(sids) and max(sids) < 1 << 24  # Redis-allocated
    # A late joiner's view (snapshot, then events) holds everyone; remote joins that raced
    # the document's first subscription on a node arrive as `joined` events shortly after.
    late = await client_factory(r1, "late")
    _, members = await joined(late, 1, "doc-c")
    view = {m[0] for m in members}
    for f in await late.quiet(1500 * MS):
        view |= {e[1][0] for e in f[3] if e[0] == EV_JOINED} if f[0] == 34 else set()
    assert view >= set(sids)


async def test_slow_member_of_remote_batches_is_closed_4408(
    relay_factory: Callable[..., Any],
    client_factory: Callable[..., Any],
    shared_url: str,
) -> None:
    """Batches forwarded from another node obey the same send-backlog rule as local ones."""
    r1, r2 = await two_nodes(
        relay_factory,
        shared_url,
        max_send_backlog=32 * 1024,
        max_frames_per_s=2000,
        max_frames_burst=2000,
    )
    watcher = await client_factory(r2, "watcher")
    await joined(watcher, 1, "big")
    drain = asyncio.create_task(watcher.quiet(30000 * MS))  # keeps reading: never slow
    # max_queue=1: the client library stops reading the socket once one message is unread.
    slow = await client_factory(r2, None, max_queue=1)
    await slow.hello("slow")
    # Small kernel buffers on both ends of this one connection (the relay's side too), so
    # the relay's own send backlog fills after kilobytes instead of megabytes.
    slow.ws.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    served = next(c for c in r2.hub.clients if c.user.user_id == "slow")
    served.ws.transport.get_extra_info("socket").setsockopt(
        socket.SOL_SOCKET, socket.SO_SNDBUF, 4096
    )
    await slow.send([2, 1, "big"])
    # Node 1 churns members with long names: every BATCH it publishes carries JOINED/LEFT
    # events of ~600 bytes each, which node 2 forwards to its members.
    churners = []
    for i in range(4):
        c = await client_factory(r1, None)
        await c.hello(f"churn-{i}-" + "x" * 240, "N" * 250)
        churners.append(c)
    for _ in range(1500):  # bounded: ~6000 joins at most
        for c in churners:
            await c.send([2, 1, "big"])
            await c.send([3, 1])
        if r2.hub.stats.closes.get(4408):
            break
        await asyncio.sleep(2 * MS)
    assert r2.hub.stats.closes.get(4408) == 1
    assert not r1.hub.stats.closes.get(4408)
    # It left at once (no ghost), on node 2 and, through its BATCH, in node 1's mirror.
    assert all(s.user.user_id != "slow" for s in r2.hub.documents["big"].sessions.values())
    # The watcher on node 2 is still served, and sees node 1's churn.
    drain.cancel()
    await watcher.send([8, 1])
    assert (await watcher.recv_until(lambda f: f[0] == 36, timeout=5000 * MS))[1] == 1


async def test_frames_past_the_held_cap_get_error_6(
    relay_factory: Callable[..., Any],
    client_factory: Callable[..., Any],
    shared_url: str,
) -> None:
    """While a clustered JOIN waits for Redis, at most max_frames_burst later frames wait with
    it; the rest are dropped and the client is told (ERROR 6), before its JOINED."""

    r1, _ = await two_nodes(
        relay_factory, shared_url, max_frames_burst=5, max_frames_per_s=1_000_000
    )  # refilled every millisecond
    c = await client_factory(r1, "ann")
    # One write: the JOIN and 12 CURSORs reach the relay in one read, so all 12 arrive
    # while the JOIN is still waiting for Redis.
    c.ws.transport.write(
        ws_frame(pk([2, 1, "doc-held"]))
        + b"".join(ws_frame(pk([4, 1, 1, i, i])) for i in range(12))
    )
    first = await c.recv_until(lambda f: f[0] in (33, 35))
    assert first[0] == 35 and first[2] == 6, first  # ERROR 6 (RATE_LIMITED), before JOINED
    joined_ = await c.recv_until(lambda f: f[0] == 33)
    assert joined_[2] == "doc-held"
    # The held CURSORs (cols 0-4) were applied in order and none of the dropped ones (5-11).
    # The replay passes the rate limit like any frame: when it runs within the JOIN's
    # millisecond, the JOIN's token is not back yet and the fifth is dropped too.
    sid = joined_[3]
    watcher = await client_factory(r1, "watch")
    _, members = await joined(watcher, 1, "doc-held")
    assert next(m for m in members if m[0] == sid)[8] in ([1, 4, 4], [1, 3, 3])
