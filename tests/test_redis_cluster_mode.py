"""Redis Cluster (docs/redis.md, "Cluster"): a `redis_url` naming any node of a real
three-master cluster (tests/redis_cluster_server.py) is found out and used through
RedisCluster; what tests/test_redis_cluster.py (every two-node probe, on both topologies)
does not cover: detection, sharded pub/sub, webhooks through the stream's consumer group,
agents, resume, the reaper of a killed relay, a master restarted empty, the Lua scripts
in cluster pipelines, and many commands at once on a small pool."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import re
import signal
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import pytest
import redis.asyncio as aioredis
from helpers import (
    EV_CURSOR,
    EV_JOINED,
    EV_LEFT,
    MS,
    RawClient,
    RelayProcess,
    eventually,
    free_port,
    ids_sharing_a_stripe,
    joined,
    users_hash,
    wait_event,
)
from redis.asyncio.cluster import RedisCluster
from websockets.asyncio.client import connect

from relay.backends import redis_keys
from relay.backends.redis_cluster import ProbeFailed, probe
from relay.backends.redis_pool import RedisShared
from relay.backends.redis_store import ALLOCATE_SID
from relay.backends.redis_stripes import CLAIM_STRIPE
from relay.backends.redis_writebehind import BUMP_SID
from relay.config import PresenceConfig
from relay.core import protocol as p
from relay.exceptions import ConfigError
from relay.server.app import Relay, make_backends
from relay.server.webhook_stream import GROUP, LEASE_REFRESH, LEASE_RELEASE, TRANSITION, state_key

if TYPE_CHECKING:
    from redis_cluster_server import RedisClusterServer

pytestmark = pytest.mark.timeout(90)

STREAM = "materi:events:presence"
SECRET = "webhook-test-secret-0123456789"


@pytest.fixture
async def rc(redis_cluster_url: str) -> AsyncIterator[RedisCluster]:
    r = RedisCluster.from_url(redis_cluster_url)
    yield r
    await r.aclose()


async def two_nodes(relay_factory: Callable[..., Any], url: str, **kw: Any) -> tuple[Relay, Relay]:
    kw.setdefault("presence_ttl_seconds", 5)
    r1 = await relay_factory(redis_url=url, **kw)
    r2 = await relay_factory(redis_url=url, **kw)
    for r in (r1, r2):
        assert await eventually(r.hub.store.ready, 5000 * MS)
        assert await eventually(r.hub.broker.ready, 5000 * MS)
    return r1, r2


async def on_each_master(cluster: RedisClusterServer, *command: str) -> dict[int, Any]:
    """`command` on every master by itself (not through the cluster's routing)."""
    out = {}
    for port in cluster.ports:
        node = aioredis.Redis(host="127.0.0.1", port=port)
        try:
            out[port] = await node.execute_command(*command)
        finally:
            await node.aclose()
    return out


# ---------------------------------------------------------------- detection


@pytest.mark.timeout(30)
async def test_any_node_of_a_cluster_is_found_out_and_a_plain_server_is_not(
    redis_cluster: RedisClusterServer, redis_cluster_url: str, redis_url: str
) -> None:
    for i in range(len(redis_cluster.nodes)):
        shared = RedisShared(redis_cluster.url_of(i))
        assert shared.cluster and isinstance(shared.redis, RedisCluster)
        assert await shared.redis.set("probe", "1")  # reaches whichever node holds it
        await shared.redis.aclose()
    plain = RedisShared(redis_url)
    assert not plain.cluster and isinstance(plain.redis, aioredis.Redis)
    # The same settings on every connection, to one Redis or to a node of the cluster.
    shared = RedisShared(redis_cluster_url)
    assert isinstance(shared.redis, RedisCluster)
    await shared.redis.initialize()
    settings = ("socket_timeout", "socket_connect_timeout", "socket_keepalive",
                "health_check_interval", "client_name")  # fmt: skip
    single = plain.redis.connection_pool.connection_kwargs
    for node in shared.redis.get_nodes():
        assert {s: node.connection_kwargs[s] for s in settings} == {s: single[s] for s in settings}
    await shared.redis.aclose()
    await plain.redis.aclose()
    # Nobody listening: one Redis (said in the log), as before; the probe says why.
    closed = f"redis://127.0.0.1:{free_port()}/0"
    with pytest.raises(ProbeFailed, match="ConnectionError"):
        probe(closed)
    down = RedisShared(closed)
    assert not down.cluster and isinstance(down.redis, aioredis.Redis)
    await down.redis.aclose()
    # A cluster has one database: another one is a configuration error, named.
    with pytest.raises(ConfigError, match="redis_url"):
        make_backends(PresenceConfig(redis_url=redis_cluster.url.replace("/0", "/2")))


async def test_a_cluster_unreachable_at_start_is_reported_when_it_answers(
    redis_cluster: RedisClusterServer, redis_cluster_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The probe cannot tell: one Redis, as the relay always did with Redis down at start;
    once that server answers and is a Cluster node, an error says the relay must restart."""
    node = redis_cluster.nodes[1]
    node.kill()
    try:
        shared = RedisShared(redis_cluster.url_of(1))
        assert not shared.cluster
        assert "could not ask" in caplog.text and "password" not in caplog.text
    finally:
        redis_cluster.ensure_running()
    await shared.check_mode()
    await shared.check_mode()  # (said once)
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "restart the relay" in errors[0].getMessage()
    await shared.redis.aclose()


@pytest.mark.timeout(10)
def test_every_lua_script_touches_one_key() -> None:
    """A script's keys must share a slot; these touch KEYS[1] only (redis-py refuses, in a
    cluster, an EVAL whose keys do not share one)."""
    for script in (ALLOCATE_SID, BUMP_SID, CLAIM_STRIPE, TRANSITION, LEASE_REFRESH, LEASE_RELEASE):
        assert set(re.findall(r"KEYS\[(\d+)\]", script)) == {"1"}, script


async def test_nodes_claim_distinct_fallback_sid_stripes_on_a_cluster(
    relay_factory: Callable[..., Any],
    redis_cluster_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The stripe claim (one key, a script with TIME) works through the cluster client:
    two nodes whose ids hash to one stripe hold different ones."""
    ids = iter(ids_sharing_a_stripe(2))
    monkeypatch.setattr(redis_keys, "new_node_id", lambda: next(ids))
    r1, r2 = await two_nodes(relay_factory, redis_cluster_url)
    s1, s2 = r1.hub.store.stripes, r2.hub.store.stripes  # type: ignore[attr-defined]
    assert s1.held is not None and s2.held is not None and s1.held != s2.held
    assert s1.preferred == s2.preferred


# ---------------------------------------------------------------- sharded pub/sub


async def test_documents_use_sharded_channels_on_the_owning_shard(
    relay_factory: Callable[..., Any],
    client_factory: Callable[..., Any],
    redis_cluster: RedisClusterServer,
    redis_cluster_url: str,
) -> None:
    r1, r2 = await two_nodes(relay_factory, redis_cluster_url)
    assert r1.hub.store.shared.cluster  # type: ignore[attr-defined]
    a = await client_factory(r1, "ann")
    b = await client_factory(r2, "bob")
    sid_a, _ = await joined(a, 1, "doc-sh")
    await joined(b, 1, "doc-sh")
    await a.send([p.CURSOR, 1, 3, 4, 5])
    await wait_event(b, lambda e: e == [EV_CURSOR, sid_a, 3, 4, 5])
    channel = b"presence:channel:doc-sh"
    owner = redis_cluster.owner_of(channel.decode()).port
    sharded = await on_each_master(redis_cluster, "PUBSUB", "SHARDCHANNELS")
    classic = await on_each_master(redis_cluster, "PUBSUB", "CHANNELS")
    assert [port for port, chans in sharded.items() if channel in chans] == [owner]
    assert not any(classic.values()), classic  # nothing on classic channels, anywhere
    # Both nodes listen there (and each on its own control channel, sharded too).
    numsub = await on_each_master(redis_cluster, "PUBSUB", "SHARDNUMSUB", channel.decode())
    assert numsub[owner] == [channel, 2]
    controls = {c for chans in sharded.values() for c in chans if b":channel:node:" in c}
    assert controls == {f"presence:channel:node:{r.hub.broker.node_id}".encode() for r in (r1, r2)}


async def test_a_master_restarted_empty_heals_fan_out_and_keys(
    relay_factory: Callable[..., Any],
    client_factory: Callable[..., Any],
    redis_cluster: RedisClusterServer,
    redis_cluster_url: str,
    rc: RedisCluster,
) -> None:
    """The master of the document's channel is killed (its data gone) and started again: the
    sharded subscriptions come back (the broker rebuilds them, with a fresh slot map), the
    cursors cross again, and the keys that shard held are written again (reconcile)."""
    doc = "doc-restart"
    r1, r2 = await two_nodes(relay_factory, redis_cluster_url, presence_ttl_seconds=2)
    a = await client_factory(r1, "ann")
    b = await client_factory(r2, "bob")
    sid_a, _ = await joined(a, 1, doc)
    await joined(b, 1, doc)
    await a.send([p.CURSOR, 1, 1, 1, 1])
    await wait_event(b, lambda e: e == [EV_CURSOR, sid_a, 1, 1, 1])
    owner = redis_cluster.owner_of(f"presence:channel:{doc}")
    owner.kill()
    await asyncio.sleep(500 * MS)
    redis_cluster.ensure_running()  # same port, same slots, nothing in it

    async def crosses(n: int) -> bool:
        await a.send([p.CURSOR, 1, n, n, n])
        with contextlib.suppress(TimeoutError):
            await wait_event(b, lambda e: e == [EV_CURSOR, sid_a, n, n, n], timeout=300 * MS)
            return True
        return False

    for n in range(2, 200):  # bounded: about a minute at most
        if await crosses(n):
            break
    else:
        pytest.fail("cursors never crossed nodes again after the restart")
    sharded = await on_each_master(redis_cluster, "PUBSUB", "SHARDCHANNELS")
    assert f"presence:channel:{doc}".encode() in sharded[owner.port]

    async def rebuilt() -> bool:
        users = await users_hash(rc, doc)
        members = await rc.hlen(f"presence:{doc}:members")
        return {"ann", "bob"} <= set(users) and members == 2

    assert await eventually(rebuilt, 10000 * MS)


async def test_a_channel_whose_slot_moves_is_followed(
    relay_factory: Callable[..., Any],
    client_factory: Callable[..., Any],
    redis_cluster: RedisClusterServer,
    redis_cluster_url: str,
) -> None:
    """The slot of a document's channel moves to another master (the end of a reshard): the
    old owner ends the sharded subscriptions (a `sunsubscribe` nobody asked for), the
    brokers re-read the slot map and subscribe on the new owner, publishers follow MOVED."""

    def movable(d: str) -> bool:  # its channel's slot holds no key, now or once it is used
        slot = redis_cluster.keyslot(f"presence:channel:{d}")
        kinds = ("users", "members", "sid", "nodes", "recent", "webhooks")
        mine = {redis_cluster.keyslot(f"presence:{d}:{kind}") for kind in kinds}
        return slot not in mine and not redis_cluster.keys_in_slot(slot)

    doc = next(d for d in (f"doc-mv{i}" for i in range(200)) if movable(d))
    channel = f"presence:channel:{doc}"
    slot = redis_cluster.keyslot(channel)
    before = redis_cluster.owner_of_slot(slot)
    after = next(n for n in redis_cluster.nodes if n is not before)
    r1, r2 = await two_nodes(relay_factory, redis_cluster_url)
    a = await client_factory(r1, "ann")
    b = await client_factory(r2, "bob")
    sid_a, _ = await joined(a, 1, doc)
    await joined(b, 1, doc)
    await a.send([p.CURSOR, 1, 1, 1, 1])
    await wait_event(b, lambda e: e == [EV_CURSOR, sid_a, 1, 1, 1])
    try:
        redis_cluster.move_slot(slot, after)
        for n in range(2, 100):  # bounded: about 30 s at most
            await a.send([p.CURSOR, 1, n, n, n])
            with contextlib.suppress(TimeoutError):
                await wait_event(b, lambda e, n=n: e == [EV_CURSOR, sid_a, n, n, n], 300 * MS)
                sharded = await on_each_master(redis_cluster, "PUBSUB", "SHARDNUMSUB", channel)
                if sharded[after.port] == [channel.encode(), 2]:
                    break
        else:
            pytest.fail("the subscriptions did not follow the slot")
        assert sharded[before.port] == [channel.encode(), 0]
    finally:
        redis_cluster.move_slot(slot, before)


async def test_redis_emptied_is_rebuilt_through_cluster_pipelines(
    relay_factory: Callable[..., Any],
    client_factory: Callable[..., Any],
    redis_cluster: RedisClusterServer,
    redis_cluster_url: str,
    rc: RedisCluster,
) -> None:
    """FLUSHALL on every master: the reconcile rewrites every key on every shard, and its
    Lua script (the sid counters' floor) runs in a cluster pipeline, as EVAL."""
    r1, r2 = await two_nodes(relay_factory, redis_cluster_url, presence_ttl_seconds=2)
    docs = [f"doc-e{i}" for i in range(6)]  # several slots, so several shards
    sids = {}
    for i, doc in enumerate(docs):
        c = await client_factory((r1, r2)[i % 2], f"u{i}")
        sids[doc], _ = await joined(c, 1, doc)
    redis_cluster.flushall()

    async def back() -> bool:
        for doc in docs:
            counter = await rc.get(f"presence:{doc}:sid")
            if counter is None or int(counter) < sids[doc]:
                return False
            if not await users_hash(rc, doc):
                return False
        return True

    assert await eventually(back, 10000 * MS)
    registry = await rc.smembers("presence:node:registry")
    assert registry == {r.hub.broker.node_id.encode() for r in (r1, r2)}


async def test_many_commands_at_once_wait_for_a_turn(redis_cluster_url: str) -> None:
    """A node's pool refuses connections past its size (redis-py); the gate makes commands
    wait their turn instead, as the single client's blocking pool does."""
    shared = RedisShared(redis_cluster_url, max_connections=4)
    r = shared.redis
    try:
        await asyncio.gather(*(r.set(f"k{i}", i) for i in range(300)))

        async def piped(i: int) -> list[Any]:
            pipe = r.pipeline(transaction=False)
            pipe.get(f"k{i}")
            pipe.incr(f"n{i}")
            return await pipe.execute()

        got = await asyncio.gather(*(piped(i) for i in range(300)))
        assert [int(v) for v, _ in got] == list(range(300))
        assert isinstance(r, RedisCluster)
        assert all(len(n._connections) <= 4 for n in r.get_nodes())
    finally:
        await r.aclose()


# ---------------------------------------------------------------- the stream and webhooks


class Hooks:
    """A loopback HTTP endpoint recording every POSTed event (answers 200)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.events: list[dict[str, Any]] = []
        self.server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode()
                length = re.search(r"(?im)^content-length:\s*(\d+)", head)
                body = await reader.readexactly(int(length.group(1)) if length else 0)
                self.events.append(json.loads(body))
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def hooks() -> AsyncIterator[Hooks]:
    h = Hooks()
    await h.start()
    yield h
    await h.stop()


async def test_webhooks_from_the_stream_once_with_two_nodes(
    relay_factory: Callable[..., Any],
    client_factory: Callable[..., Any],
    redis_cluster_url: str,
    rc: RedisCluster,
    hooks: Hooks,
) -> None:
    kw = {"webhook_urls": hooks.url, "webhook_secret": SECRET, "reconnect_grace_ms": 0}
    r1, r2 = await two_nodes(relay_factory, redis_cluster_url, **kw)
    ann = await client_factory(r1, "ann")
    bob = await client_factory(r2, "bob")
    cy = await client_factory(r2, "cy")
    await joined(ann, 1, "doc-w1")
    await joined(bob, 1, "doc-w1")
    await joined(cy, 1, "doc-w2")  # another document, likely on another shard
    # (A leave that comes before its join was written cancels it out: no stream entry, no
    # webhook. Leave once all three joins are in the stream.)
    assert await eventually(
        lambda: sum(e["type"] == "user.joined" for e in hooks.events) == 3, 10000 * MS
    ), hooks.events
    for c in (ann, bob, cy):
        await c.send([p.LEAVE, 1])
    assert await eventually(
        lambda: sum(e["type"] == "document.empty" for e in hooks.events) == 2, 10000 * MS
    ), hooks.events
    await asyncio.sleep(300 * MS)  # a duplicate would show up by now
    seen = Counter((e["type"], e["document_id"], e.get("user_id")) for e in hooks.events)
    assert seen == Counter({
        ("document.active", "doc-w1", None): 1, ("user.joined", "doc-w1", "ann"): 1,
        ("user.joined", "doc-w1", "bob"): 1, ("user.left", "doc-w1", "ann"): 1,
        ("user.left", "doc-w1", "bob"): 1, ("document.empty", "doc-w1", None): 1,
        ("document.active", "doc-w2", None): 1, ("user.joined", "doc-w2", "cy"): 1,
        ("user.left", "doc-w2", "cy"): 1, ("document.empty", "doc-w2", None): 1,
    })  # fmt: skip
    assert len({e["id"] for e in hooks.events}) == len(hooks.events)

    async def all_acked() -> bool:
        info = await rc.xpending(STREAM, GROUP)
        return int(info["pending"]) == 0

    assert await eventually(all_acked, 5000 * MS)
    assert not await rc.exists(state_key("doc-w1")) and not await rc.exists(state_key("doc-w2"))
    assert sum(1 for r in (r1, r2) if r.webhooks.source.leader) == 1  # type: ignore[union-attr]


# ---------------------------------------------------------------- agents and resume


def _request(port: int, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=None if body is None else json.dumps(body).encode())
        resp = conn.getresponse()
        raw = resp.read()
        return resp.status, json.loads(raw) if raw else None
    finally:
        conn.close()


async def test_an_agent_put_on_either_node_is_one_member_seen_on_both(
    relay_factory: Callable[..., Any], client_factory: Callable[..., Any], redis_cluster_url: str
) -> None:
    path = "/internal/presence/doc-ag/members/review-bot"
    a, b = await two_nodes(relay_factory, redis_cluster_url)
    wa = await client_factory(a, "wa")
    wb = await client_factory(b, "wb")
    await joined(wa, 1, "doc-ag")
    await joined(wb, 1, "doc-ag")
    status, body = await asyncio.to_thread(
        _request, a.port, "PUT", path, {"name": "Reviewer", "cursor": [3, 0, 42], "ttl_s": 60}
    )
    assert status == 201, body
    sid = body["sid"]
    for w in (wa, wb):
        await wait_event(w, lambda e: e[0] == EV_JOINED and e[1][0] == sid)
    # Through the other node: forwarded to the holder on its (sharded) control channel.
    status, again = await asyncio.to_thread(
        _request, b.port, "PUT", path, {"name": "Reviewer", "cursor": [7, 1, 70]}
    )
    assert (status, again["sid"]) == (200, sid)
    for w in (wa, wb):
        await wait_event(w, lambda e: e == [EV_CURSOR, sid, 7, 1, 70])
    assert b.hub.agents.of("doc-ag", "review-bot") is None  # one member, held by a
    assert await asyncio.to_thread(_request, b.port, "DELETE", path) == (204, None)
    await wait_event(wb, lambda e: e == [EV_LEFT, sid, p.LEFT])


async def test_a_session_resumes_through_the_other_node(
    relay_factory: Callable[..., Any], client_factory: Callable[..., Any], redis_cluster_url: str
) -> None:
    r1, r2 = await two_nodes(relay_factory, redis_cluster_url, reconnect_grace_ms=5000)
    watcher = await client_factory(r2, "w")
    await joined(watcher, 1, "doc-rs")
    bob = await client_factory(r1)
    welcome = await bob.hello("bob")
    token = welcome[5]["resume_token"]
    sid, _ = await joined(bob, 5, "doc-rs")
    await bob.send([p.CURSOR, 5, 7, 7, 7])
    await wait_event(watcher, lambda e: e == [EV_CURSOR, sid, 7, 7, 7])
    bob.ws.transport.abort()  # the connection is lost
    await wait_event(watcher, lambda e: e == [p.EV_ACTIVITY, sid, 5])  # DISCONNECTED
    again = await client_factory(r2)
    welcome = await again.hello("bob", resume=token)
    assert welcome[5]["resumed"] is True
    back = await again.recv()
    assert back[:4] == [p.JOINED, 5, "doc-rs", sid]
    assert next(m for m in back[4] if m[0] == sid)[8] == [7, 7, 7]
    assert sid in r2.hub.local["doc-rs"] and sid not in r1.hub.local.get("doc-rs", {})


# ---------------------------------------------------------------- the reaper


async def test_a_killed_relay_is_reaped_through_the_cluster(
    relay_factory: Callable[..., Any],
    client_factory: Callable[..., Any],
    redis_cluster_url: str,
    rc: RedisCluster,
) -> None:
    """`kill -9` of a relay process on the cluster: the other node's reaper finds its
    heartbeat gone (another shard than the registry, likely), announces NODE_DOWN and
    cleans every shard."""
    doomed = RelayProcess("--redis-url", redis_cluster_url, "--presence-ttl-seconds", "2",
                          "--reconnect-grace-ms", "0", "--batch-ms", "20")  # fmt: skip
    ws = None
    try:
        await doomed.ready()
        survivor = await relay_factory(
            redis_url=redis_cluster_url, presence_ttl_seconds=2, reconnect_grace_ms=0
        )
        watcher = await client_factory(survivor, "watcher")
        await joined(watcher, 1, "doc-k")
        ws = await connect(f"ws://127.0.0.1:{doomed.port}/ws", subprotocols=[p.SUBPROTOCOL],  # type: ignore[list-item]
                           compression=None)  # fmt: skip
        ann = RawClient(ws)
        await ann.hello("ann")
        sid, _ = await joined(ann, 1, "doc-k")
        await wait_event(watcher, lambda e: e[0] == EV_JOINED and e[1][0] == sid)
        assert "ann" in await users_hash(rc, "doc-k")
        nodes = {n.decode() for n in await rc.smembers("presence:node:registry")}
        (dead,) = nodes - {survivor.hub.broker.node_id}
        doomed.proc.send_signal(signal.SIGKILL)
        await wait_event(watcher, lambda e: e == [EV_LEFT, sid, p.NODE_DOWN], timeout=8000 * MS)

        async def clean() -> bool:
            return (
                "ann" not in await users_hash(rc, "doc-k")
                and not await rc.hexists("presence:doc-k:members", str(sid))
                and not await rc.exists(f"presence:node:{dead}:sessions")
                and dead.encode() not in await rc.smembers("presence:node:registry")
            )

        assert await eventually(clean, 5000 * MS)
        left = [f for _, f in await rc.xrange(STREAM) if f[b"type"] == b"left"]
        assert [(f[b"user_id"], f[b"reason"]) for f in left] == [(b"ann", b"NODE_DOWN")]
    finally:
        if ws is not None:
            with contextlib.suppress(Exception):
                await ws.close()
        doomed.kill()


async def test_a_heartbeat_lost_with_its_shard_is_not_a_dead_node(
    relay_factory: Callable[..., Any],
    client_factory: Callable[..., Any],
    redis_cluster: RedisClusterServer,
    redis_cluster_url: str,
) -> None:
    """A node's heartbeat key and the node registry may sit on different shards: when the
    heartbeat's shard restarts empty, the registry still lists the node and its key is gone,
    as after a crash. The reapers wait (that server is younger than a heartbeat's TTL) and
    the node, finding its key gone, rewrites it: nobody is held or removed. (A TTL longer
    than the restart: heartbeats on the other shards must not run out meanwhile, which would
    be an outage longer than the TTL, another story.)"""
    ttl_s = 10
    registry_shard = redis_cluster.owner_of("presence:node:registry")
    relays: list[Relay] = []
    target = None
    for _ in range(8):  # bounded: a node whose heartbeat is on another shard than the registry
        r = await relay_factory(redis_url=redis_cluster_url, presence_ttl_seconds=ttl_s)
        relays.append(r)
        shard = redis_cluster.owner_of(f"presence:node:{r.hub.broker.node_id}")
        if shard is not registry_shard:
            target = r
            break
    assert target is not None
    other = next((r for r in relays if r is not target), None) or await relay_factory(
        redis_url=redis_cluster_url, presence_ttl_seconds=ttl_s
    )
    for r in (target, other):
        assert await eventually(r.hub.store.ready, 5000 * MS)
    ann = await client_factory(target, "ann")
    bob = await client_factory(other, "bob")
    sid, _ = await joined(ann, 1, "doc-hb")
    await joined(bob, 1, "doc-hb")
    shard = redis_cluster.owner_of(f"presence:node:{target.hub.broker.node_id}")
    ghost = next(  # a node id whose heartbeat key would be on a shard that keeps running
        g for g in (f"ghost{i}" for i in range(100))
        if redis_cluster.owner_of(f"presence:node:{g}") is not shard
    )  # fmt: skip
    shard.kill()
    redis_cluster.ensure_running()  # empty: the heartbeat key is gone, the registry is not
    # What a reaper decides: the key lost with its shard is no death; one that ran out is.
    liveness = other.hub.store.liveness  # type: ignore[attr-defined]
    assert await liveness._surely_dead([target.hub.broker.node_id, ghost]) == [ghost]
    frames = await bob.quiet(4000 * MS)  # the reapers looked four times
    gone = [e for f in frames if f[0] == p.BATCH for e in f[3]
            if e[:2] == [EV_LEFT, sid] or e == [p.EV_ACTIVITY, sid, 5]]  # fmt: skip
    assert not gone, gone
    assert all(r.hub.store.liveness.held == 0 for r in relays)  # type: ignore[attr-defined]
    assert all(r.hub.store.reaped == 0 for r in relays)  # type: ignore[attr-defined]


async def test_a_join_right_after_a_shard_restarted_empty_gets_no_sid_in_use(
    relay_factory: Callable[..., Any],
    client_factory: Callable[..., Any],
    redis_cluster: RedisClusterServer,
    redis_cluster_url: str,
) -> None:
    """The shard holding a document's sid counter restarts empty. A node that has never
    allocated a sid there still knows that shard's run_id (it asks every primary at
    start), so its join waits until the nodes with members have raised the counter again,
    instead of handing out sid 1 a second time."""
    doc = "doc-sids"
    r1, r2 = await two_nodes(relay_factory, redis_cluster_url, redis_settle_ms=3000)
    r3 = await relay_factory(redis_url=redis_cluster_url, redis_settle_ms=3000)
    assert await eventually(r3.hub.store.ready, 5000 * MS)
    assert len(r3.hub.store._run_ids) == 3  # type: ignore[attr-defined]
    a, b = await client_factory(r1, "ann"), await client_factory(r2, "bob")
    sid_a, _ = await joined(a, 1, doc)
    sid_b, _ = await joined(b, 1, doc)
    owner = redis_cluster.owner_of(f"presence:{doc}:sid")
    owner.kill()
    await asyncio.sleep(500 * MS)
    redis_cluster.ensure_running()  # same port, same slots, nothing in it
    c = await client_factory(r3, "cy")
    await c.send([p.JOIN, 1, doc])
    reply = await c.recv_until(lambda f: f[0] in (33, 35), timeout=8000 * MS)
    assert reply[0] == 33, reply
    assert reply[3] not in (sid_a, sid_b), f"cy got sid {reply[3]}: ann {sid_a}, bob {sid_b}"
