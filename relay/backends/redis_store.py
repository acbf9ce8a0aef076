"""`RedisStore`: shared presence in Redis, written behind the hot path.

The facade of three parts, each in its own module:
- the write-behind (`redis_writebehind`): the hub's synchronous `session_changed` /
  `session_left` go to a coalescing queue that one flusher task writes in pipelines;
- liveness (`redis_liveness`): this node's heartbeat, and the reaper of dead nodes;
- the shared writes (`redis_writes`): live sessions, derived keys, stream, channel BATCHes.

This module holds what is left: the lifecycle, the reads (cold path: HTTP, joins), and sid
allocation. Redis down: writes stay queued (bounded), reads raise BackendUnavailable, joins
fall back (no remote snapshot, a fallback sid). When Redis answers again the node
reconciles and re-announces its sessions (docs/redis.md, "Redis faults").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from redis.exceptions import RedisError, ResponseError

from relay.backends import redis_keys as k
from relay.backends import redis_pool
from relay.backends.base import PresenceStore
from relay.backends.redis_keys import MemberRecord
from relay.backends.redis_liveness import Liveness
from relay.backends.redis_pool import UNREACHABLE, Reachability, RedisShared
from relay.backends.redis_resume import ResumeRecords
from relay.backends.redis_stripes import Stripes
from relay.backends.redis_writebehind import SID_COUNTER_TTL_MS, WriteBehind, heartbeat_value
from relay.backends.redis_writes import LiveSessions, Writer, now_ms
from relay.config import PresenceConfig
from relay.core import protocol as p
from relay.core.model import SessionLike, UserPresenceSummary, summarize
from relay.core.recent import RecentUser
from relay.exceptions import BackendUnavailable

log = logging.getLogger("relay.redis.store")

# INCR with a floor: never hand out a sid at or below one this node already knows in the
# document (protects against a counter that was lost while the document had members).
ALLOCATE_SID = """
local n = redis.call('INCR', KEYS[1])
local floor = tonumber(ARGV[1])
if n <= floor then
  n = floor + 1
  redis.call('SET', KEYS[1], n)
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return n
"""


class RedisStore(PresenceStore):
    clustered = True

    def __init__(
        self,
        shared: RedisShared,
        config: PresenceConfig,
        node_id: str,
        deliver_local: Callable[[str, bytes], None] | None = None,
        max_queue: int = 100_000,
        refresh_ms: int = 1000,
        batch_size: int = 100,
    ) -> None:
        self.shared = shared
        self.redis = shared.acquire()
        self.config = config
        self.node_id = node_id
        self.live = LiveSessions()
        self.writer = Writer(
            self.redis, node_id, self.live, config.presence_stream,
            config.presence_stream_maxlen, deliver_local, config.recent_window_s * 1000,
        )  # fmt: skip
        self.reach = Reachability(on_up=self._reachable)
        ttl_ms = config.presence_ttl_seconds * 1000
        node_ttl_ms = Liveness.node_ttl_ms_for(ttl_ms)
        self._heartbeat = heartbeat_value(node_id, now_ms())
        self.writebehind = WriteBehind(
            self.redis, self.writer, self.reach, (self._heartbeat, node_ttl_ms), max_queue,
            refresh_ms / 1000, batch_size, float(config.presence_ttl_seconds),
        )  # fmt: skip
        self.liveness = Liveness(
            self.redis, self.writer, self.writebehind, self.reach, ttl_ms,
            config.reconnect_grace_ms,
        )  # fmt: skip
        self.reach.on_down = self.liveness.probe_now
        # The stripe of fallback sids this node holds alone while it lives.
        self.stripes = Stripes(self.redis, self.reach, node_id, node_ttl_ms)
        self._tasks: list[asyncio.Task[None]] = []
        self._alloc = self.redis.register_script(ALLOCATE_SID)
        # A Redis that started (or restarted empty) less than this long ago hands out no
        # sids yet: by then every live node has noticed (its pub/sub connection broke: it
        # reconnects within the broker's 2 s backoff cap, then probes and reconciles at
        # once) and re-raised its documents' counters above its sids (the reconcile's
        # BUMP_SID), so a counter that came back from zero never re-issues a sid in use.
        self.settle_s = config.redis_settle_ms / 1000
        self._run_ids: dict[str, str] = {}  # server ("" unless Cluster) -> its run_id
        self.sid_waits = 0  # sids discarded: handed out by a Redis started too recently
        # Until then (settle_s after this node last reconnected) a resync asks whether the
        # Redis it read may still be missing other nodes' records (see `settled`).
        self._suspect_until = 0.0
        self.resumes = ResumeRecords(self.redis, node_id)
        # Set by a shutdown that holds its sessions for other nodes to resume (a deploy):
        # for this long after it, the heartbeat key says `stopping` and nothing is reaped.
        self.handover_ms = 0

    def _reachable(self) -> None:
        # Redis answers again: rewrite every live session and re-announce them.
        self._suspect()
        self.stripes.renew_now()
        self.writebehind.request_reconcile(announce=True)

    def _suspect(self) -> None:
        # Any empty restart breaks this node's connections (pub/sub included, and the
        # control channel is always subscribed), so it is followed by a reconnect: a Redis
        # younger than settle_s was started less than settle_s before the latest one.
        self._suspect_until = time.monotonic() + self.settle_s

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        # Which servers these are (a restart changes a run_id): on a Cluster every primary,
        # not only those this node has allocated a sid from before one restarts empty.
        with contextlib.suppress(*UNREACHABLE, RedisError, TimeoutError):
            async with asyncio.timeout(1.0):
                for server, info in await self._servers_info():
                    self._restart_wait(server, info)
        with contextlib.suppress(*UNREACHABLE, RedisError, TimeoutError):
            async with asyncio.timeout(1.0):  # (else `keep` claims once Redis answers)
                await self.stripes.claim()
        loop = asyncio.get_running_loop()
        wb, lv = self.writebehind, self.liveness
        tasks = (wb.flusher(), lv.heartbeat(self._heartbeat), lv.reaper(), wb.sweeper(),
                 self.stripes.keep())  # fmt: skip
        for coro in tasks:
            self._tasks.append(loop.create_task(coro))

    async def close(self) -> None:
        """Flush, then remove whatever Redis still lists for this node, and deregister.

        With `handover_ms` set (a graceful shutdown that suspended its sessions), nothing
        is removed: the heartbeat key says `stopping` for that long, so other nodes resume
        the sessions from their records meanwhile, and reap what is left after it."""
        await redis_pool.stop_tasks(self._tasks)
        self._tasks.clear()
        await self.resumes.close()
        if not self.reach.up:
            log.warning(
                "redis unreachable at shutdown: other nodes' reapers will remove this "
                "node's sessions within presence_ttl_seconds"
            )
            await self.shared.release()
            return
        wb = self.writebehind
        for e in wb.queue.values():
            # Say it on the channel too, in case the broker's last publish did not make it
            # (other nodes apply `left` idempotently).
            e.publish_left = e.publish_left or e.remove
        try:
            async with asyncio.timeout(3.0):
                for _ in range(20):
                    if not wb.queue:
                        break
                    await wb.flush_some()
                if self.handover_ms > 0:
                    pipe = self.redis.pipeline(transaction=False)
                    pipe.set(k.node_key(self.node_id), k.stopping_value(self.node_id),
                             px=self.handover_ms)  # fmt: skip
                    pipe.set(k.node_held_key(self.node_id), "1", px=self.handover_ms + 60_000)
                    await pipe.execute()
                else:
                    await self.liveness.reap_node(self.node_id, publish=True, reason=p.SHUTDOWN)
                    pipe = self.redis.pipeline(transaction=False)
                    pipe.delete(k.node_key(self.node_id))
                    pipe.srem(k.NODE_REGISTRY, self.node_id)
                    await pipe.execute()
        except (*UNREACHABLE, RedisError) as exc:
            log.warning(
                "redis: could not clean up on shutdown (%s); other nodes' reapers "
                "will remove this node's sessions within the TTL",
                exc,
            )
        await self.shared.release()

    # ------------------------------------------------------------ hot path (no awaits)

    def session_changed(self, doc_id: str, session: SessionLike) -> None:
        self.writebehind.session_changed(doc_id, session)

    def reconcile_soon(self) -> None:
        self._suspect()
        self.stripes.renew_now()
        self.writebehind.request_reconcile(announce=False)
        self.liveness.probe_now()  # (down: probe at once; up: the heartbeat finds out)

    def session_left(self, doc_id: str, session: SessionLike, reason: int = 0) -> None:
        self.writebehind.session_left(doc_id, session, reason)

    def session_released(self, doc_id: str, session: SessionLike) -> None:
        self.writebehind.session_released(doc_id, session)

    def session_adopted(self, doc_id: str, session: SessionLike, from_node: str) -> None:
        self.writebehind.session_adopted(doc_id, session, from_node)

    def watch_sid_floors(self, floors: Callable[[], dict[str, int]]) -> None:
        self.writebehind.sid_floors = floors

    def fallback_stripe(self) -> int:
        return self.stripes.stripe

    def queue_depth(self) -> int:
        return self.writebehind.depth()

    # ------------------------------------------------------------ counters (tests, logs)

    @property
    def flushes(self) -> int:
        return self.writebehind.flushes

    @property
    def overflows(self) -> int:
        return self.writebehind.overflows

    @property
    def failures(self) -> int:
        return self.reach.failures

    @property
    def reaped(self) -> int:
        return self.writer.reaped

    async def reap_dead_nodes(self) -> list[str]:
        return await self.liveness.reap_dead_nodes()

    # ------------------------------------------------------------ reads (cold path)

    async def ready(self) -> bool:
        return self.reach.up

    def _check_up(self) -> None:
        if not self.reach.up:
            raise BackendUnavailable("redis unreachable")

    async def _records(self, doc_ids: list[str]) -> list[list[MemberRecord]]:
        self._check_up()
        try:
            pipe = self.redis.pipeline(transaction=False)
            for d in doc_ids:
                pipe.hvals(k.members_key(d))
            raw = await pipe.execute()
        except UNREACHABLE as exc:
            self.reach.down(exc)
            raise BackendUnavailable("redis unreachable") from None
        out = []
        for values in raw:
            out.append([r for r in map(k.parse_member_record, values) if r is not None])
        return out

    def _merge_local(self, doc_id: str, records: list[MemberRecord]) -> list[SessionLike]:
        """Redis' view of the document, with this node's own sessions taken live."""
        by_sid: dict[int, SessionLike] = {}
        for r in records:
            if r.node_id != self.node_id:
                by_sid[r.sid] = r.session()
        for sid, s in self.live.by_doc.get(doc_id, {}).items():
            by_sid[sid] = s
        return list(by_sid.values())

    async def load_recent(self, doc_id: str) -> list[RecentUser]:
        """The document's `recent` hash (every node writes its leaves there)."""
        if self.config.recent_window_s <= 0:
            return []
        self._check_up()
        try:
            raw = await self.redis.hgetall(k.recent_key(doc_id))
        except UNREACHABLE as exc:
            self.reach.down(exc)
            raise BackendUnavailable("redis unreachable") from None
        entries = (k.parse_recent(user, value) for user, value in raw.items())
        return [e for e in entries if e is not None]

    async def document_users(self, doc_id: str) -> list[UserPresenceSummary]:
        (records,) = await self._records([doc_id])
        return summarize(self._merge_local(doc_id, records))

    async def workspace_documents(self, workspace_id: str) -> dict[str, int]:
        self._check_up()
        try:
            docs = {k.as_text(m) for m in await self.redis.smembers(k.workspace_key(workspace_id))}
        except UNREACHABLE as exc:
            self.reach.down(exc)
            raise BackendUnavailable("redis unreachable") from None
        for doc_id, sessions in self.live.by_doc.items():
            if any(s.user.workspace_id == workspace_id for s in sessions.values()):
                docs.add(doc_id)
        ordered = sorted(docs)
        out = {}
        for doc_id, records in zip(ordered, await self._records(ordered), strict=True):
            users = {
                s.user.user_id
                for s in self._merge_local(doc_id, records)
                if s.user.workspace_id == workspace_id
            }
            if users:
                out[doc_id] = len(users)
        return out

    async def load_members(self, doc_id: str) -> list[SessionLike]:
        """Other nodes' sessions in the document; BackendUnavailable when unreachable."""
        self._check_up()
        try:
            raw = await asyncio.wait_for(self.redis.hvals(k.members_key(doc_id)), 1.0)
        except (*UNREACHABLE, RedisError) as exc:
            raise BackendUnavailable(f"redis: {exc}") from None
        out: list[SessionLike] = []
        for value in raw:
            r = k.parse_member_record(value)
            if r is not None and r.node_id != self.node_id:
                out.append(r.session())
        return out

    async def settled(self, doc_id: str) -> bool:
        """False while the Redis holding the document's records is younger than `settle_s`
        (or does not answer): it may have restarted empty, and a record missing there may
        be one its owner has not rewritten yet. Asks only within settle_s of a reconnect."""
        if time.monotonic() >= self._suspect_until:
            return True
        try:
            _, info = await asyncio.wait_for(self._server_info(k.members_key(doc_id)), 1.0)
        except (*UNREACHABLE, RedisError, TimeoutError):
            return False
        if not isinstance(info, dict) or "uptime_in_seconds" not in info:
            return True  # (INFO disabled: taken as settled, as for sids)
        return float(info["uptime_in_seconds"]) >= self.settle_s

    async def _servers_info(self) -> list[tuple[str, Any]]:
        """(server, INFO `server`) of every server holding keys: "" unless Cluster."""
        redis: Any = self.redis
        if not self.shared.cluster:
            return [("", await redis.info("server"))]
        await redis.initialize()  # (the slot map: nothing to do once initialized)
        return [
            (node.name, await redis.info("server", target_nodes=node))
            for node in redis.get_primaries()
        ]

    async def _server_info(self, key: str) -> tuple[str, Any]:
        """(The server holding `key`: "" unless Cluster, its INFO `server` section.)"""
        redis: Any = self.redis
        if not self.shared.cluster:
            return "", await redis.info("server")
        node = redis.get_node_from_key(key)
        try:
            return node.name, await redis.info("server", target_nodes=node)
        except ResponseError:
            return node.name, {}

    async def allocate_sid(self, doc_id: str, floor: int) -> int | None:
        """A sid from the document's counter (a join right after this node saw Redis restart
        waits for the counters to be raised: `settle_s`); None if Redis does not answer."""
        if not self.reach.up:
            return None
        key = k.sid_key(doc_id)
        settle = self.settle_s
        try:
            async with asyncio.timeout(settle + 2.0):
                while True:
                    sid, wait = await self._allocate(key, floor)
                    if wait <= 0:
                        return sid
                    # (The counter may be one past a sid in use: discard this one.)
                    self.sid_waits += 1
                    await asyncio.sleep(wait)
        except (*UNREACHABLE, RedisError, TimeoutError) as exc:
            log.info("redis: no sid for %s (%s); using a fallback sid", doc_id, exc)
            return None

    async def _allocate(self, key: str, floor: int) -> tuple[int, float]:
        """(The counter's next sid, how long to wait before a sid of this Redis is safe.)

        The wait is above 0 only for a Redis this node saw restart (a new `run_id`) less than
        `settle_s` ago: a first start has no sessions to forget (a node started within that
        time of an empty restart is not covered: docs/redis.md, "Sids"). One round trip
        where INFO is asked after the INCR, on the same connection (one per shard on Cluster).
        """
        args = [floor, SID_COUNTER_TTL_MS]
        if self.settle_s <= 0:
            return int(await self._alloc(keys=[key], args=args)), 0.0
        server = ""
        if self.shared.cluster:  # the shard that holds the key answers both
            sid = await self._alloc(keys=[key], args=args)
            server, info = await self._server_info(key)
        else:
            pipe: Any = self.redis.pipeline(transaction=False)
            await self._alloc(keys=[key], args=args, client=pipe)
            pipe.info("server")
            sid, info = await pipe.execute(raise_on_error=False)
            if isinstance(sid, Exception):
                raise sid
        return int(sid), self._restart_wait(server, info)

    def _restart_wait(self, server: str, info: Any) -> float:
        # (A Redis that will not say, INFO being disabled, is taken as settled.)
        if not isinstance(info, dict) or "run_id" not in info:
            return 0.0
        run_id, uptime = info["run_id"], float(info.get("uptime_in_seconds", 0))
        seen = self._run_ids.setdefault(server, run_id)
        if seen == run_id:
            return 0.0
        if uptime >= self.settle_s:
            self._run_ids[server] = run_id
            return 0.0
        return self.settle_s - uptime
