"""`RedisStore`: shared presence in Redis, written behind the hot path.

The hub calls `session_changed` / `session_left` synchronously; they only touch an in-memory
queue keyed by (doc, sid) (coalescing: the entry refers to the live Session, so a flush
always writes its latest state). One background task, the flusher, is the only writer of
this node's sessions: it drains the queue into `pipeline(transaction=False)` round trips
that cover many documents each. A sweep re-queues live sessions whose presence changed
since their last write (once a second at most), so the hub never has to tell the store
about cursor moves.

Liveness (see docs/redis.md): the node refreshes `presence:node:<id>` (a key with a TTL of
0.8 x presence_ttl) every quarter of that TTL and lists what it owns in
`presence:node:<id>:sessions`. Every node runs a reaper: a registered node whose heartbeat
key is gone has crashed; its sessions are removed from Redis and a BATCH of `left` events
is published on each affected document's channel (and delivered to this node's members).
Removal is claimed per session with HDEL, so two reapers never both announce one session.

Redis down: writes stay queued (bounded; past the bound only a "reconcile" flag is kept),
reads raise BackendUnavailable, joins fall back (no remote snapshot, a fallback sid). When
Redis answers again the node reconciles: it rewrites every live local session, removes what
Redis still lists for it but it no longer has, bumps the sid counters, and re-announces its
sessions to the other nodes (a BATCH of `joined` per document).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from relay.backends import redis_common as k
from relay.backends.base import FALLBACK_SID_BASE, PresenceStore
from relay.backends.redis_common import MemberRecord, RedisShared
from relay.config import PresenceConfig
from relay.core import protocol as p
from relay.core.model import Session, UserPresenceSummary, summarize
from relay.exceptions import BackendUnavailable

log = logging.getLogger("relay.redis.store")

# Errors that mean "Redis is unreachable right now" (as opposed to a bad command).
UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError, TimeoutError)

SID_COUNTER_TTL_MS = 86_400_000  # refreshed by every allocation; see allocate_sid

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

# Raise the counter to at least ARGV[1] (after Redis came back empty).
BUMP_SID = """
local c = tonumber(redis.call('GET', KEYS[1]) or '0')
if c < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
else
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return c
"""


def now_ms() -> int:
    return int(time.time() * 1000)


class _Entry:
    """One queued write for (doc, sid): the latest state wins."""

    __slots__ = ("announce", "attempted", "publish_left", "remove", "session")

    def __init__(
        self,
        session: Session,
        remove: bool = False,
        announce: bool = False,
        publish_left: bool = False,
    ) -> None:
        self.session = session
        self.remove = remove
        self.announce = announce  # the `joined` stream event is still to be written
        self.attempted = False  # a failed flush may have written part of it
        self.publish_left = publish_left  # left while Redis was down: others never heard


def _sig(s: Session) -> tuple[Any, ...]:
    return (
        s.activity,
        s.typing,
        s.focused,
        s.cursor,
        s.selection,
        s.viewport,
        s.last_active_ms,
        s.color,
    )


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
        self._nid = node_id.encode()
        self.deliver_local = deliver_local
        self.max_queue = max_queue
        self.refresh_s = refresh_ms / 1000
        self.batch_size = batch_size
        ttl_ms = config.presence_ttl_seconds * 1000
        # Heartbeat key lives 0.8 x TTL and is refreshed 4 times in that; reapers look
        # every TTL/10 (at most 1 s): a crashed node is swept within ~0.9 x TTL.
        self.node_ttl_ms = max(800, int(ttl_ms * 0.8))
        self.heartbeat_s = self.node_ttl_ms / 4000
        self.reap_interval_s = min(1.0, ttl_ms / 10_000)
        self.reconcile_every_s = float(config.presence_ttl_seconds)
        self.stream = config.presence_stream
        self.stream_maxlen = config.presence_stream_maxlen
        # This node's live sessions (references: a flush writes their current state).
        self._live: dict[str, dict[int, Session]] = {}
        self._by_user: dict[tuple[str, str], dict[int, Session]] = {}
        self._queue: dict[tuple[str, int], _Entry] = {}
        self._inflight: set[tuple[str, int]] = set()
        self._written: dict[tuple[str, int], tuple[Any, ...]] = {}
        self._wake = asyncio.Event()
        self._up = False
        self._reconcile = True
        self._announce = False
        self._tasks: list[asyncio.Task[None]] = []
        self._alloc = self.redis.register_script(ALLOCATE_SID)
        self._bump = self.redis.register_script(BUMP_SID)
        self._started_at = now_ms()
        # Counters for tests and logs.
        self.flushes = 0
        self.failures = 0
        self.overflows = 0
        self.reaped = 0

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for coro in (self._flusher(), self._liveness(), self._reaper(), self._sweeper()):
            self._tasks.append(loop.create_task(coro))

    async def close(self) -> None:
        """Flush, then remove whatever Redis still lists for this node, and deregister."""
        await k.stop_tasks(self._tasks)
        self._tasks.clear()
        if not self._up:
            log.warning(
                "redis unreachable at shutdown: other nodes' reapers will remove this "
                "node's sessions within presence_ttl_seconds"
            )
            await self.shared.release()
            return
        for e in self._queue.values():
            # Say it on the channel too, in case the broker's last publish did not make it
            # (other nodes apply `left` idempotently).
            e.publish_left = e.publish_left or e.remove
        try:
            async with asyncio.timeout(3.0):
                for _ in range(20):
                    if not self._queue:
                        break
                    await self._flush_some()
                await self._reap_node(self.node_id, publish=True)
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

    def session_changed(self, doc_id: str, session: Session) -> None:
        sid = session.sid
        live = self._live.get(doc_id)
        if live is None:
            live = self._live[doc_id] = {}
        new = sid not in live
        if new:
            live[sid] = session
            ukey = (doc_id, session.user.user_id)
            by_user = self._by_user.get(ukey)
            if by_user is None:
                by_user = self._by_user[ukey] = {}
            by_user[sid] = session
        key = (doc_id, sid)
        e = self._queue.get(key)
        if e is not None:
            e.session = session
            if new:
                e.announce = True
        elif len(self._queue) >= self.max_queue:
            self._overflowed()
        else:
            self._queue[key] = _Entry(session, announce=new)
        self._wake.set()

    def session_left(self, doc_id: str, session: Session) -> None:
        sid = session.sid
        live = self._live.get(doc_id)
        if live is None or live.pop(sid, None) is None:
            return
        if not live:
            del self._live[doc_id]
        ukey = (doc_id, session.user.user_id)
        by_user = self._by_user.get(ukey)
        if by_user is not None:
            by_user.pop(sid, None)
            if not by_user:
                del self._by_user[ukey]
        key = (doc_id, sid)
        self._written.pop(key, None)
        e = self._queue.get(key)
        if e is not None and e.announce and not e.attempted and key not in self._inflight:
            del self._queue[key]  # Redis never saw it: nothing to undo, nothing to announce
            return
        if e is not None:
            e.remove = True
            e.publish_left = e.publish_left or not self._up
        elif len(self._queue) >= self.max_queue:
            self._overflowed()
        else:
            self._queue[key] = _Entry(session, remove=True, publish_left=not self._up)
        self._wake.set()

    def queue_depth(self) -> int:
        return len(self._queue) + len(self._inflight)

    def _overflowed(self) -> None:
        # The queue is full: keep only a flag. The reconcile that follows rewrites every
        # live session and removes every session Redis lists for this node but it lost.
        if not self._reconcile:
            log.warning("redis: write queue full (%d); will reconcile", self.max_queue)
        self.overflows += 1
        self._reconcile = True

    # ------------------------------------------------------------ reads (cold path)

    async def ready(self) -> bool:
        return self._up

    def _check_up(self) -> None:
        if not self._up:
            raise BackendUnavailable("redis unreachable")

    async def _records(self, doc_ids: list[str]) -> list[list[MemberRecord]]:
        self._check_up()
        try:
            pipe = self.redis.pipeline(transaction=False)
            for d in doc_ids:
                pipe.hvals(k.members_key(d))
            raw = await pipe.execute()
        except UNREACHABLE as exc:
            self._mark_down(exc)
            raise BackendUnavailable("redis unreachable") from None
        out = []
        for values in raw:
            out.append([r for r in map(k.parse_member_record, values) if r is not None])
        return out

    def _merge_local(self, doc_id: str, records: list[MemberRecord]) -> list[Session]:
        """Redis' view of the document, with this node's own sessions taken live."""
        by_sid: dict[int, Session] = {}
        for r in records:
            if r.node_id != self.node_id:
                by_sid[r.sid] = r.session()
        for sid, s in self._live.get(doc_id, {}).items():
            by_sid[sid] = s
        return list(by_sid.values())

    async def document_users(self, doc_id: str) -> list[UserPresenceSummary]:
        (records,) = await self._records([doc_id])
        return summarize(self._merge_local(doc_id, records))

    async def workspace_documents(self, workspace_id: str) -> dict[str, int]:
        self._check_up()
        try:
            docs = {m.decode() for m in await self.redis.smembers(k.workspace_key(workspace_id))}
        except UNREACHABLE as exc:
            self._mark_down(exc)
            raise BackendUnavailable("redis unreachable") from None
        for doc_id, sessions in self._live.items():
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

    async def load_members(self, doc_id: str) -> list[Session]:
        """Other nodes' sessions in the document; BackendUnavailable when unreachable."""
        self._check_up()
        try:
            raw = await asyncio.wait_for(self.redis.hvals(k.members_key(doc_id)), 1.0)
        except (*UNREACHABLE, RedisError) as exc:
            raise BackendUnavailable(f"redis: {exc}") from None
        out = []
        for value in raw:
            r = k.parse_member_record(value)
            if r is not None and r.node_id != self.node_id:
                out.append(r.session())
        return out

    async def allocate_sid(self, doc_id: str, floor: int) -> int | None:
        if not self._up:
            return None
        try:
            sid = await asyncio.wait_for(
                self._alloc(keys=[k.sid_key(doc_id)], args=[floor, SID_COUNTER_TTL_MS]), 1.0
            )
        except (*UNREACHABLE, RedisError) as exc:
            log.info("redis: no sid for %s (%s); using a fallback sid", doc_id, exc)
            return None
        return int(sid)

    # ------------------------------------------------------------ state transitions

    def _mark_down(self, exc: BaseException) -> None:
        if self._up:
            log.warning(
                "redis unreachable (%s: %s); presence keeps working locally, writes queue up",
                type(exc).__name__,
                exc,
            )
        self._up = False
        self.failures += 1

    def _mark_up(self) -> None:
        if not self._up:
            log.info("redis reachable: reconciling this node's sessions")
        self._up = True
        self._reconcile = True
        self._announce = True
        self._wake.set()

    # ------------------------------------------------------------ background tasks

    async def _liveness(self) -> None:
        """Heartbeat while up; while down, probe with backoff (0.1 s doubling to 2 s)."""
        backoff = 0.1
        value = json.dumps({"node_id": self.node_id, "started_at": self._started_at})
        while True:
            k.check_cancelled()
            if not self._up:
                try:
                    await self.redis.ping()
                except (*UNREACHABLE, RedisError):
                    if k.cancelling():
                        raise asyncio.CancelledError from None
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 2.0)
                    continue
                backoff = 0.1
                self._mark_up()
            else:
                try:
                    ok = await self.redis.set(
                        k.node_key(self.node_id), value, px=self.node_ttl_ms, xx=True
                    )
                    if not ok:  # expired (we were away too long) or Redis lost it
                        log.warning("redis: this node's heartbeat key was gone; reconciling")
                        self._reconcile = self._announce = True
                        self._wake.set()
                except (*UNREACHABLE, RedisError) as exc:
                    if k.cancelling():
                        raise asyncio.CancelledError from None
                    if isinstance(exc, UNREACHABLE):
                        self._mark_down(exc)
                        continue
                    log.warning("redis heartbeat failed: %s", exc)
            await asyncio.sleep(self.heartbeat_s)

    async def _sweeper(self) -> None:
        """Re-queue live sessions whose presence changed; periodically reconcile in full."""
        last_reconcile = time.monotonic()
        while True:
            k.check_cancelled()
            await asyncio.sleep(self.refresh_s)
            queue, written = self._queue, self._written
            for doc_id, sessions in self._live.items():
                for sid, s in sessions.items():
                    key = (doc_id, sid)
                    if key in queue or written.get(key) == _sig(s):
                        continue
                    if len(queue) >= self.max_queue:
                        self._overflowed()
                        break
                    queue[key] = _Entry(s)
            if time.monotonic() - last_reconcile >= self.reconcile_every_s:
                last_reconcile = time.monotonic()
                self._reconcile = True  # heals derived keys after races between nodes
            if queue or self._reconcile:
                self._wake.set()

    async def _flusher(self) -> None:
        while True:
            k.check_cancelled()
            await self._wake.wait()
            self._wake.clear()
            if not self._up:
                continue  # _mark_up wakes us
            try:
                if self._reconcile:
                    await self._reconcile_now()
                while self._queue and self._up:
                    await self._flush_some()
            except Exception as exc:
                if k.cancelling():
                    raise asyncio.CancelledError from None
                if isinstance(exc, UNREACHABLE):
                    self._mark_down(exc)
                else:  # a bad reply or a bug: log, keep going
                    log.exception("redis flush failed: %s", exc)
                    await asyncio.sleep(0.5)
                    self._wake.set()
            await asyncio.sleep(0.005)  # lets writes accumulate into the next round trip

    async def _reaper(self) -> None:
        while True:
            k.check_cancelled()
            await asyncio.sleep(self.reap_interval_s)
            if not self._up:
                continue
            try:
                await self.reap_dead_nodes()
            except Exception as exc:
                if k.cancelling():
                    raise asyncio.CancelledError from None
                if isinstance(exc, UNREACHABLE):
                    self._mark_down(exc)
                else:
                    log.exception("reaper failed")

    # ------------------------------------------------------------ writing

    def _stream_event(
        self, pipe: Any, kind: str, doc_id: str, user_id: str, workspace_id: str
    ) -> None:
        pipe.xadd(
            self.stream,
            {
                "type": kind,
                "user_id": user_id,
                "document_id": doc_id,
                "workspace_id": workspace_id,
                "timestamp": str(now_ms()),
            },
            maxlen=self.stream_maxlen,
            approximate=True,
        )

    def _best_local(self, doc_id: str, user_id: str) -> Session | None:
        sessions = self._by_user.get((doc_id, user_id))
        if not sessions:
            return None
        return max(sessions.values(), key=lambda s: s.last_active_ms)

    def _write_upsert(self, pipe: Any, doc_id: str, s: Session, full: bool, announce: bool) -> None:
        nid = self.node_id
        uid = s.user.user_id
        # Stamped when read from the live session (not when Redis stores it): the record
        # holds every change this node batched up to then (see Cluster.resync).
        pipe.hset(k.members_key(doc_id), str(s.sid), k.member_record(nid, s, now_ms()))
        best = self._best_local(doc_id, uid) or s
        pipe.hset(k.users_key(doc_id), uid, k.user_presence_json(doc_id, best))
        pipe.hset(k.user_key(uid), doc_id, str(best.last_active_ms))
        if full:
            pipe.sadd(k.workspace_key(s.user.workspace_id), doc_id)
            pipe.sadd(k.node_sessions_key(nid), k.owned(s.sid, doc_id))
        if announce:
            self._stream_event(pipe, "joined", doc_id, uid, s.user.workspace_id)

    async def _flush_some(self) -> None:
        queue = self._queue
        keys = []
        for key in queue:
            keys.append(key)
            if len(keys) >= self.batch_size:
                break
        entries = [(key, queue.pop(key)) for key in keys]
        self._inflight.update(keys)
        try:
            await self._write(entries)
        except BaseException:
            for key, e in entries:
                e.attempted = True
                cur = queue.get(key)
                if cur is None:
                    queue[key] = e
                else:
                    cur.attempted = True
                    cur.announce = cur.announce or (e.announce and not cur.remove)
                    cur.publish_left = cur.publish_left or e.publish_left
            raise
        finally:
            self._inflight.difference_update(keys)
        self.flushes += 1

    async def _write(self, entries: list[tuple[tuple[str, int], _Entry]]) -> None:
        pipe = self.redis.pipeline(transaction=False)
        sigs: list[tuple[tuple[str, int], tuple[Any, ...]]] = []
        removed: dict[str, list[Session]] = defaultdict(list)
        left_events: dict[str, list[tuple[int, int]]] = defaultdict(list)
        for key, e in entries:
            doc_id, sid = key
            s = e.session
            if e.remove:
                pipe.hdel(k.members_key(doc_id), str(sid))
                pipe.srem(k.node_sessions_key(self.node_id), k.owned(sid, doc_id))
                self._stream_event(pipe, "left", doc_id, s.user.user_id, s.user.workspace_id)
                removed[doc_id].append(s)
                if e.publish_left:
                    left_events[doc_id].append((p.EV_LEFT, sid))
            else:
                self._write_upsert(
                    pipe, doc_id, s, full=e.announce or e.attempted, announce=e.announce
                )
                sigs.append((key, _sig(s)))
        self._publish_batches(pipe, left_events)
        docs = list(removed)
        for doc_id in docs:
            pipe.hvals(k.members_key(doc_id))
        results = await pipe.execute(raise_on_error=False)
        self._raise_unreachable(results)
        for key, sig in sigs:
            if key in self._live.get(key[0], ()):
                self._written[key] = sig
        if docs:
            remaining = results[len(results) - len(docs) :]
            pipe = self.redis.pipeline(transaction=False)
            for doc_id, values in zip(docs, remaining, strict=True):
                self._fix_derived(pipe, doc_id, removed[doc_id], values)
            self._raise_unreachable(await pipe.execute(raise_on_error=False))

    @staticmethod
    def _raise_unreachable(results: list[Any]) -> None:
        for r in results:
            if isinstance(r, UNREACHABLE):
                raise r
            if isinstance(r, Exception):
                log.warning("redis command failed: %s", r)

    def _publish_batches(
        self, pipe: Any, events: dict[str, list[tuple[Any, ...]]], deliver: bool = False
    ) -> None:
        ts = now_ms()
        for doc_id, evs in events.items():
            if not evs:
                continue
            frame = p.encode_batch(doc_id, ts, evs)
            pipe.publish(k.channel(doc_id), k.envelope(self._nid, frame))
            if deliver and self.deliver_local is not None:
                self.deliver_local(doc_id, frame)

    def _fix_derived(
        self,
        pipe: Any,
        doc_id: str,
        removed: Iterable[Session | MemberRecord],
        remaining_raw: list[bytes],
    ) -> None:
        """After sessions left: the seed's per-user and per-workspace keys follow suit.

        Not atomic with the HDELs (different keys, maybe different shards): a concurrent
        join elsewhere can be undone here, which the owner's periodic reconcile repairs.
        """
        remaining = [r for r in map(k.parse_member_record, remaining_raw) if r is not None]
        users: dict[str, str] = {}
        for x in removed:
            if isinstance(x, MemberRecord):
                users[x.user_id] = x.workspace_id
            else:
                users[x.user.user_id] = x.user.workspace_id
        for uid in users:
            best: Session | None = self._best_local(doc_id, uid)
            if best is None:
                others = [r for r in remaining if r.user_id == uid]
                if others:
                    best = max(others, key=lambda r: r.last_active).session()
            if best is None:
                pipe.hdel(k.users_key(doc_id), uid)
                pipe.hdel(k.user_key(uid), doc_id)
            else:
                pipe.hset(k.users_key(doc_id), uid, k.user_presence_json(doc_id, best))
                pipe.hset(k.user_key(uid), doc_id, str(best.last_active_ms))
        local = self._live.get(doc_id, {})
        for ws in set(users.values()):
            if any(r.workspace_id == ws for r in remaining):
                continue
            if any(s.user.workspace_id == ws for s in local.values()):
                continue
            pipe.srem(k.workspace_key(ws), doc_id)

    # ------------------------------------------------------------ reconcile

    async def _reconcile_now(self) -> None:
        """Make Redis hold exactly this node's live sessions (and tell the others)."""
        self._reconcile = False
        announce, self._announce = self._announce, False
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(
            k.node_key(self.node_id),
            json.dumps({"node_id": self.node_id, "started_at": self._started_at}),
            px=self.node_ttl_ms,
        )
        pipe.sadd(k.NODE_REGISTRY, self.node_id)
        pipe.smembers(k.node_sessions_key(self.node_id))
        try:
            results = await pipe.execute()
        except BaseException:
            self._reconcile = True
            self._announce = self._announce or announce
            raise
        owned = {x for x in map(k.parse_owned, results[2]) if x is not None}
        busy = set(self._queue) | self._inflight
        live = [
            (doc_id, s) for doc_id, sessions in self._live.items() for s in list(sessions.values())
        ]
        try:
            for i in range(0, len(live), self.batch_size):
                pipe = self.redis.pipeline(transaction=False)
                for doc_id, s in live[i : i + self.batch_size]:
                    if (doc_id, s.sid) in busy:
                        continue  # its queued entry writes it (and its stream event)
                    self._write_upsert(pipe, doc_id, s, full=True, announce=False)
                self._raise_unreachable(await pipe.execute(raise_on_error=False))
            # Sid counters at least as high as the sids in use (Redis may have come back empty).
            pipe = self.redis.pipeline(transaction=False)
            for doc_id, sessions in self._live.items():
                small = [sid for sid in sessions if sid < FALLBACK_SID_BASE]
                if small:
                    await self._bump(
                        keys=[k.sid_key(doc_id)], args=[max(small), SID_COUNTER_TTL_MS], client=pipe
                    )
            if announce:
                self._publish_batches(
                    pipe,
                    {
                        doc_id: [(p.EV_JOINED, s.member()) for s in sessions.values()]
                        for doc_id, sessions in self._live.items()
                    },
                )
            self._raise_unreachable(await pipe.execute(raise_on_error=False))
            # What Redis lists for this node that is no longer live (lost queue entries).
            live_keys = {(doc_id, s.sid) for doc_id, s in live}
            extras: dict[str, list[int]] = defaultdict(list)
            for sid, doc_id in owned:
                key = (doc_id, sid)
                if key not in live_keys and key not in busy:
                    extras[doc_id].append(sid)
            for doc_id, sids in extras.items():
                await self._remove_sessions(doc_id, sids, self.node_id, publish=True)
        except BaseException:
            self._reconcile = True
            self._announce = self._announce or announce
            raise

    # ------------------------------------------------------------ reaping

    async def reap_dead_nodes(self) -> list[str]:
        """Find registered nodes whose heartbeat expired; remove their sessions."""
        nodes = [n.decode() for n in await self.redis.smembers(k.NODE_REGISTRY)]
        others = [n for n in nodes if n != self.node_id]
        if not others:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for n in others:
            pipe.exists(k.node_key(n))
        alive = await pipe.execute()
        dead = [n for n, a in zip(others, alive, strict=True) if not a]
        for n in dead:
            log.warning("redis: node %s stopped heartbeating; removing its sessions", n)
            await self._reap_node(n, publish=True)
        return dead

    async def _reap_node(self, node_id: str, publish: bool) -> None:
        owned = await self.redis.smembers(k.node_sessions_key(node_id))
        by_doc: dict[str, list[int]] = defaultdict(list)
        for x in map(k.parse_owned, owned):
            if x is not None:
                by_doc[x[1]].append(x[0])
        for doc_id, sids in by_doc.items():
            await self._remove_sessions(doc_id, sids, node_id, publish)
        if node_id != self.node_id:
            pipe = self.redis.pipeline(transaction=False)
            pipe.delete(k.node_sessions_key(node_id))
            pipe.srem(k.NODE_REGISTRY, node_id)
            await pipe.execute()

    async def _remove_sessions(
        self, doc_id: str, sids: list[int], node_id: str, publish: bool
    ) -> None:
        """Remove a node's sessions from a document; announce the ones this call removed.

        Each HDEL is the claim: only the reaper whose HDEL removed the field publishes its
        `left` and writes its stream event, so concurrent reapers never double-announce.
        """
        mk = k.members_key(doc_id)
        fields = [str(s) for s in sids]
        pipe = self.redis.pipeline(transaction=False)
        pipe.hmget(mk, fields)
        for f in fields:
            pipe.hdel(mk, f)
        pipe.hvals(mk)
        res = await pipe.execute()
        raw_records, claims, remaining = res[0], res[1:-1], res[-1]
        gone: list[MemberRecord] = []
        for raw, claimed in zip(raw_records, claims, strict=True):
            if claimed and raw is not None:
                r = k.parse_member_record(raw)
                if r is not None and r.node_id == node_id:
                    gone.append(r)
        pipe = self.redis.pipeline(transaction=False)
        pipe.srem(k.node_sessions_key(node_id), *[k.owned(s, doc_id) for s in sids])
        for r in gone:
            self._stream_event(pipe, "left", doc_id, r.user_id, r.workspace_id)
        if publish and gone:
            self._publish_batches(pipe, {doc_id: [(p.EV_LEFT, r.sid) for r in gone]}, deliver=True)
        self._fix_derived(pipe, doc_id, gone, remaining)
        self._raise_unreachable(await pipe.execute(raise_on_error=False))
        self.reaped += len(gone)
