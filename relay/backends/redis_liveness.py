"""Node liveness: this node's heartbeat, and the reaper of nodes that stopped beating.

The seed puts one EXPIRE on a whole document hash, so a crashed node's users live as long as
anyone else keeps the document busy. Instead each node refreshes `presence:node:<id>` (a key
with a TTL of 0.8 x presence_ttl_seconds) four times per TTL and lists what it owns in
`presence:node:<id>:sessions`; every node runs a reaper (every min(1 s, TTL/10)): a
registered node whose heartbeat key is gone has crashed. With a `reconnect_grace_ms`, its
sessions are first held for the grace, like any lost connection: the first reaper to see it
(SET NX on the heartbeat key, which then says `stopping`) marks them DISCONNECTED in their
records and on their channels, and its clients may resume through any node meanwhile; once
that key runs out, what is left is removed from Redis and announced as `left` with
NODE_DOWN on their documents' channels (and to this node's members). A node stopped for a
deploy sets the same two keys itself. Removal is claimed per session with HDEL
(`Writer.remove_sessions`), so two reapers never both announce one session.

While Redis is down the heartbeat task probes it instead (0.1 s doubling to 2 s) and marks
it reachable again when it answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict

from redis.exceptions import RedisError

from relay.backends import redis_cluster, redis_pool
from relay.backends import redis_keys as k
from relay.backends.redis_pool import UNREACHABLE, Client, Reachability
from relay.backends.redis_writebehind import WriteBehind
from relay.backends.redis_writes import Writer
from relay.core import protocol as p

log = logging.getLogger("relay.redis.store")

RESTART_SLACK_MS = 5000  # see Liveness._surely_dead


class Liveness:
    def __init__(
        self,
        redis: Client,
        writer: Writer,
        writebehind: WriteBehind,
        reach: Reachability,
        presence_ttl_ms: int,
        grace_ms: int = 0,
    ) -> None:
        self.redis = redis
        self.writer = writer
        self.writebehind = writebehind
        self.reach = reach
        self.node_id = writer.node_id
        self.node_ttl_ms = self.node_ttl_ms_for(presence_ttl_ms)
        self.heartbeat_s = self.node_ttl_ms / 4000
        self.reap_interval_s = min(1.0, presence_ttl_ms / 10_000)
        self.grace_ms = grace_ms
        self.held = 0  # dead nodes whose sessions this reaper held
        # Set to heartbeat (or probe) now rather than at the next period: Redis went away,
        # or may have come back as a new server (the broker's pub/sub reconnected).
        self.wake = asyncio.Event()

    def probe_now(self) -> None:
        self.wake.set()

    @staticmethod
    def node_ttl_ms_for(presence_ttl_ms: int) -> int:
        """The heartbeat key lives 0.8 x TTL and is refreshed 4 times in that; reapers look
        every TTL/10 (at most 1 s): a crashed node is swept within ~0.9 x TTL."""
        return max(800, int(presence_ttl_ms * 0.8))

    async def heartbeat(self, value: str) -> None:
        """Heartbeat while up; while down, probe with backoff (0.1 s doubling to 2 s)."""
        backoff = 0.1
        while True:
            redis_pool.check_cancelled()
            if not self.reach.up:
                try:
                    await self.redis.ping()
                except (*UNREACHABLE, RedisError):
                    if redis_pool.cancelling():
                        raise asyncio.CancelledError from None
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 2.0)
                    continue
                backoff = 0.1
                self.reach.back()
            else:
                try:
                    ok = await self.redis.set(
                        k.node_key(self.node_id), value, px=self.node_ttl_ms, xx=True
                    )
                    if not ok:  # expired (we were away too long) or Redis lost it
                        log.warning("redis: this node's heartbeat key was gone; reconciling")
                        self.writebehind.request_reconcile(announce=True)
                except (*UNREACHABLE, RedisError) as exc:
                    if redis_pool.cancelling():
                        raise asyncio.CancelledError from None
                    if isinstance(exc, UNREACHABLE):
                        self.reach.down(exc)
                        continue
                    log.warning("redis heartbeat failed: %s", exc)
            self.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), self.heartbeat_s)

    async def reaper(self) -> None:
        while True:
            redis_pool.check_cancelled()
            await asyncio.sleep(self.reap_interval_s)
            if not self.reach.up:
                continue
            try:
                await self.reap_dead_nodes()
            except Exception as exc:
                if redis_pool.cancelling():
                    raise asyncio.CancelledError from None
                if isinstance(exc, UNREACHABLE):
                    self.reach.down(exc)
                else:
                    log.exception("reaper failed")

    async def reap_dead_nodes(self) -> list[str]:
        """Find registered nodes whose heartbeat expired; remove their sessions."""
        nodes = [k.as_text(n) for n in await self.redis.smembers(k.NODE_REGISTRY)]
        others = [n for n in nodes if n != self.node_id]
        if not others:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for n in others:
            pipe.exists(k.node_key(n))
        alive = await pipe.execute()
        dead = [n for n, a in zip(others, alive, strict=True) if not a]
        if dead:
            dead = await self._surely_dead(dead)
        reaped = []
        for n in dead:
            if self.grace_ms > 0 and not await self.redis.exists(k.node_held_key(n)):
                await self.hold_node(n)
                continue
            log.warning("redis: node %s stopped heartbeating; removing its sessions", n)
            await self.reap_node(n, publish=True, reason=p.NODE_DOWN)
            await self.redis.delete(k.node_held_key(n))
            reaped.append(n)
        return reaped

    async def _surely_dead(self, nodes: list[str]) -> list[str]:
        """On a Cluster a heartbeat key also goes when its shard restarts empty, while the
        registry, on another shard, still lists the node: not dead (its next heartbeat
        finds the key gone and it rewrites everything it owns; after an outage its probe
        backs off up to 2 s). See redis_cluster.lost_with_restart."""
        within_s = (self.node_ttl_ms + RESTART_SLACK_MS) / 1000
        registry = k.NODE_REGISTRY
        out = []
        for n in nodes:
            if not await redis_cluster.lost_with_restart(
                self.redis, k.node_key(n), registry, within_s
            ):
                out.append(n)
        return out

    async def mark_held(self, node_id: str, grace_ms: int) -> bool:
        """Claim the hold of a node's sessions (one claimant); False if already claimed."""
        claimed = await self.redis.set(
            k.node_key(node_id), k.stopping_value(node_id), nx=True, px=grace_ms
        )
        if claimed:
            await self.redis.set(k.node_held_key(node_id), "1", px=grace_ms + 60_000)
        return bool(claimed)

    async def hold_node(self, node_id: str) -> None:
        """A node died: its sessions are DISCONNECTED (records and channels) for the grace."""
        if not await self.mark_held(node_id, self.grace_ms):
            return  # another reaper got there first
        self.held += 1
        log.warning(
            "redis: node %s stopped heartbeating; holding its sessions for %d ms",
            node_id,
            self.grace_ms,
        )
        for doc_id, sids in (await self._owned(node_id)).items():
            mk = k.members_key(doc_id)
            raws = await self.redis.hmget(mk, [str(s) for s in sids])
            pipe = self.redis.pipeline(transaction=False)
            events = []
            for raw in raws:
                r = k.parse_member_record(raw) if raw is not None else None
                if r is None or r.node_id != node_id:
                    continue
                r.member[5] = 5  # ActivityType.DISCONNECTED: what snapshots show meanwhile
                pipe.hset(mk, str(r.sid), k.repack_member_record(r))
                events.append((p.EV_ACTIVITY, r.sid, 5))
            self.writer.publish_batches(pipe, {doc_id: events}, deliver=True)
            await pipe.execute()

    async def _owned(self, node_id: str) -> dict[str, list[int]]:
        """The sessions Redis lists for a node: doc_id -> sids."""
        owned = await self.redis.smembers(k.node_sessions_key(node_id))
        by_doc: dict[str, list[int]] = defaultdict(list)
        for x in map(k.parse_owned, owned):
            if x is not None:
                by_doc[x[1]].append(x[0])
        return by_doc

    async def reap_node(self, node_id: str, publish: bool, reason: int) -> None:
        """Remove every session Redis lists for `node_id` (this node's too, at shutdown)."""
        owned = await self._owned(node_id)
        for doc_id, sids in owned.items():
            await self.writer.remove_sessions(doc_id, sids, node_id, publish, reason)
        if node_id != self.node_id:
            pipe = self.redis.pipeline(transaction=False)
            # Out of the node sets of its documents. (One it had open without a session of
            # its own stays listed: the others publish to it for nothing until they refresh
            # their view of the set, every presence_ttl_seconds, and see no heartbeat.)
            for doc_id in owned:
                pipe.srem(k.nodes_key(doc_id), node_id)
            pipe.delete(k.node_sessions_key(node_id))
            pipe.srem(k.NODE_REGISTRY, node_id)
            await pipe.execute()
