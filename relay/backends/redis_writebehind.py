"""The write-behind: this node's sessions reach Redis off the hot path.

`session_changed` / `session_left` (called by the hub, synchronously) only touch an
in-memory queue keyed by (doc, sid): coalescing, since an entry refers to the live Session
and a flush writes its latest state. One background task, the flusher, is the only writer of
this node's sessions: it drains the queue into `pipeline(transaction=False)` round trips of
up to `batch_size` sessions over any number of documents (a bigger round trip is packed and
parsed on the event loop and stalls it: docs/redis.md). A sweep re-queues live sessions whose
presence changed since their last write (once a second at most), so the hub never tells the
store about cursor moves.

Membership before its announcement: a session's first record (and its removal) is in Redis
before any frame that announces it reaches the channel. The broker asks `membership_mark()`
when a frame is published and waits for `membership_written(mark)` before sending it. So a
node that subscribes to a document and then reads its members misses nobody: a `joined` it
did not hear was published after a write it reads, and a `left` likewise (the race a
subscribe-then-read alone leaves open: the write-behind may trail the ticker by a round trip).

The queue is bounded: past the bound only a "reconcile" flag is kept, and the reconcile
rewrites every live session, removes what Redis still lists for this node but it lost,
raises the sid counters, and (after an outage) re-announces the sessions to other nodes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from relay.backends import redis_cluster, redis_pool
from relay.backends import redis_keys as k
from relay.backends.base import FALLBACK_SID_BASE
from relay.backends.redis_pool import UNREACHABLE, Client, Reachability
from relay.backends.redis_writes import LiveSessions, Writer, now_ms, raise_unreachable
from relay.core import protocol as p
from relay.core.model import SessionLike

log = logging.getLogger("relay.redis.store")

SID_COUNTER_TTL_MS = 86_400_000  # refreshed by every allocation (RedisStore.allocate_sid)

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


class Entry:
    """One queued write for (doc, sid): the latest state wins."""

    __slots__ = (
        "announce",
        "attempted",
        "from_node",
        "handover",
        "left_at_ms",
        "mark",
        "publish_left",
        "reason",
        "remove",
        "session",
    )

    def __init__(
        self,
        session: SessionLike,
        remove: bool = False,
        announce: bool = False,
        publish_left: bool = False,
        reason: int = 0,
    ) -> None:
        self.session = session
        self.reason = reason  # the leave reason its `left` carries
        self.handover = False  # removed because another node took it over: no `left`
        self.from_node: str | None = None  # taken over from this node: unlist it there
        self.remove = remove
        self.announce = announce  # the `joined` stream event is still to be written
        self.attempted = False  # a failed flush may have written part of it
        self.publish_left = publish_left  # left while Redis was down: others never heard
        self.left_at_ms = 0  # when it left (its `recent` entry), set with `remove`
        self.mark = 0  # its place among membership changes not yet written (0: none)


def signature(s: SessionLike) -> tuple[Any, ...]:
    """What a write of the session records (a sweep skips sessions whose signature held)."""
    return (
        s.activity,
        s.typing,
        s.focused,
        s.cursor,
        s.selection,
        s.viewport,
        s.last_active_ms,
        s.color,
        s.status,
    )


class WriteBehind:
    def __init__(
        self,
        redis: Client,
        writer: Writer,
        reach: Reachability,
        heartbeat: Any,
        max_queue: int,
        refresh_s: float,
        batch_size: int,
        reconcile_every_s: float,
    ) -> None:
        self.redis = redis
        self.writer = writer
        self.live: LiveSessions = writer.live
        self.node_id = writer.node_id
        self.reach = reach
        self.heartbeat = heartbeat  # (key value, TTL in ms) of this node's heartbeat key
        self.max_queue = max_queue
        self.refresh_s = refresh_s
        self.batch_size = batch_size
        self.reconcile_every_s = reconcile_every_s
        self.queue: dict[tuple[str, int], Entry] = {}
        self.inflight: set[tuple[str, int]] = set()
        self._written: dict[tuple[str, int], tuple[Any, ...]] = {}
        self.wake = asyncio.Event()
        # Membership changes (announces, removals) queued and not yet written, by mark: the
        # oldest one bounds what the broker may send (see the module's docstring).
        self._marks = 0
        self._unwritten: dict[str, dict[int, int]] = {}  # doc -> mark -> sid
        self._progress = asyncio.Event()
        self.reconcile = True
        self.announce = False
        self._bump = redis_cluster.Script(redis, BUMP_SID)  # (EVAL in a cluster pipeline)
        # Per open document, the sids seen there (the cluster's mirror knows other nodes'):
        # set by RedisStore.watch_sid_floors.
        self.sid_floors: Callable[[], dict[str, int]] = dict
        self.flushes = 0
        self.overflows = 0

    def request_reconcile(self, announce: bool) -> None:
        """Rewrite everything at the flusher's next turn (and re-announce, `announce`)."""
        self.reconcile = True
        self.announce = self.announce or announce
        self.wake.set()

    # ------------------------------------------------------------ hot path (no awaits)

    def session_changed(self, doc_id: str, session: SessionLike) -> None:
        new = self.live.add(doc_id, session)
        key = (doc_id, session.sid)
        e = self.queue.get(key)
        if e is not None:
            e.session = session
            if new:
                e.announce = True
                self._mark(e, key)
        elif len(self.queue) >= self.max_queue:
            self._overflowed()
        else:
            e = self.queue[key] = Entry(session, announce=new)
            if new:
                self._mark(e, key)
        self.wake.set()

    def session_left(self, doc_id: str, session: SessionLike, reason: int = 0) -> None:
        if not self.live.remove(doc_id, session):
            return
        key = (doc_id, session.sid)
        self._written.pop(key, None)
        e = self.queue.get(key)
        if e is not None and e.announce and not e.attempted and key not in self.inflight:
            del self.queue[key]  # Redis never saw it: nothing to undo, nothing to announce
            self._unmark(doc_id, e)
            return
        up = self.reach.up
        if e is not None:
            e.remove = True
            e.reason = reason
            e.publish_left = e.publish_left or not up
        elif len(self.queue) >= self.max_queue:
            self._overflowed()  # (the reconcile removes it; its `recent` entry is lost)
        else:
            e = self.queue[key] = Entry(session, remove=True, publish_left=not up, reason=reason)
        if e is not None:
            e.left_at_ms = int(time.time() * 1000)
            if not e.mark:  # (an announce not written yet keeps its older mark)
                self._mark(e, key)
        self.wake.set()

    def session_released(self, doc_id: str, session: SessionLike) -> None:
        """Another node resumed the session: this node stops owning it, and nothing is
        said (the new owner rewrites its record; nobody sees it leave)."""
        if not self.live.remove(doc_id, session):
            return
        key = (doc_id, session.sid)
        self._written.pop(key, None)
        e = Entry(session, remove=True)
        e.handover = True
        self._replace(key, e)  # replaces a queued write of the old owner's view
        self.wake.set()

    def session_adopted(self, doc_id: str, session: SessionLike, from_node: str) -> None:
        """This node resumed a session another node owned: write it as ours, unlisted
        there, without a `joined` (it never left)."""
        self.live.add(doc_id, session)
        e = Entry(session)
        e.attempted = True  # a full write: the node's session list and the workspace
        e.from_node = from_node
        self._replace((doc_id, session.sid), e)
        self.wake.set()

    def depth(self) -> int:
        return len(self.queue) + len(self.inflight)

    # ------------------------------------------------------------ the broker's barrier

    def _replace(self, key: tuple[str, int], e: Entry) -> None:
        old = self.queue.get(key)
        if old is not None:
            self._unmark(key[0], old)  # what it was to announce never will be: nothing to wait for
        self.queue[key] = e

    def _mark(self, e: Entry, key: tuple[str, int]) -> None:
        self._marks += 1
        e.mark = self._marks
        self._unwritten.setdefault(key[0], {})[e.mark] = key[1]

    def _unmark(self, doc_id: str, e: Entry) -> None:
        if e.mark:
            marks = self._unwritten.get(doc_id)
            if marks is not None and marks.pop(e.mark, None) is not None:
                if not marks:
                    del self._unwritten[doc_id]
                self._progress.set()
        e.mark = 0

    def membership_mark(self) -> int:
        """The latest membership change queued so far (a frame published now may announce
        any of them)."""
        return self._marks

    def membership_pending(self, doc_id: str, mark: int) -> bool:
        """Is a membership change in `doc_id` at or before `mark` still to be written?"""
        marks = self._unwritten.get(doc_id)
        # (Marks enter in increasing order; a dict keeps that order: the first is the oldest.)
        return marks is not None and next(iter(marks)) <= mark and self.reach.up

    async def membership_written(self, doc_id: str, mark: int, timeout: float) -> None:
        """Wait until every membership change up to `mark` is in Redis (at most `timeout`:
        an unreachable Redis must not hold the channel, where the resyncs repair)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.membership_pending(doc_id, mark):
            self._progress.clear()
            left = deadline - loop.time()
            if left <= 0:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._progress.wait(), left)

    def _overflowed(self) -> None:
        # The queue is full: keep only a flag. The reconcile that follows rewrites every
        # live session and removes every session Redis lists for this node but it lost.
        if not self.reconcile:
            log.warning("redis: write queue full (%d); will reconcile", self.max_queue)
        self.overflows += 1
        self.reconcile = True

    # ------------------------------------------------------------ background tasks

    async def sweeper(self) -> None:
        """Re-queue live sessions whose presence changed; periodically reconcile in full."""
        last_reconcile = time.monotonic()
        while True:
            redis_pool.check_cancelled()
            await asyncio.sleep(self.refresh_s)
            queue, written = self.queue, self._written
            for doc_id, sessions in self.live.by_doc.items():
                for sid, s in sessions.items():
                    key = (doc_id, sid)
                    if key in queue or written.get(key) == signature(s):
                        continue
                    if len(queue) >= self.max_queue:
                        self._overflowed()
                        break
                    queue[key] = Entry(s)
            if time.monotonic() - last_reconcile >= self.reconcile_every_s:
                last_reconcile = time.monotonic()
                self.reconcile = True  # heals derived keys after races between nodes
            if queue or self.reconcile:
                self.wake.set()

    async def flusher(self) -> None:
        while True:
            redis_pool.check_cancelled()
            await self.wake.wait()
            self.wake.clear()
            if not self.reach.up:
                continue  # Reachability.back wakes us
            try:
                if self.reconcile:
                    await self._reconcile_now()
                while self.queue and self.reach.up:
                    await self.flush_some()
            except Exception as exc:
                if redis_pool.cancelling():
                    raise asyncio.CancelledError from None
                if isinstance(exc, UNREACHABLE):
                    self.reach.down(exc)
                else:  # a bad reply or a bug: log, keep going
                    log.exception("redis flush failed: %s", exc)
                    await asyncio.sleep(0.5)
                    self.wake.set()
            await asyncio.sleep(0.005)  # lets writes accumulate into the next round trip

    # ------------------------------------------------------------ writing

    def _write_upsert(
        self, pipe: Any, doc_id: str, s: SessionLike, full: bool, announce: bool
    ) -> None:
        nid = self.node_id
        uid = s.user.user_id
        # Stamped when read from the live session (not when Redis stores it): the record
        # holds every change this node batched up to then (see Cluster.resync).
        pipe.hset(k.members_key(doc_id), str(s.sid), k.member_record(nid, s, now_ms()))
        best = self.live.best(doc_id, uid) or s
        pipe.hset(k.users_key(doc_id), uid, k.user_presence_json(doc_id, best))
        pipe.hset(k.user_key(uid), doc_id, str(best.last_active_ms))
        if full:
            pipe.sadd(k.workspace_key(s.user.workspace_id), doc_id)
            pipe.sadd(k.node_sessions_key(nid), k.owned(s.sid, doc_id))
        if announce:
            self.writer.stream_event(pipe, "joined", doc_id, uid, s.user.workspace_id, s.sid)

    async def flush_some(self) -> None:
        queue = self.queue
        keys = []
        for key in queue:
            keys.append(key)
            if len(keys) >= self.batch_size:
                break
        entries = [(key, queue.pop(key)) for key in keys]
        self.inflight.update(keys)
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
                    if e.mark:  # the older change bounds the broker until this one lands
                        self._unwritten.get(key[0], {}).pop(cur.mark, None)
                        cur.mark = e.mark
                    cur.announce = cur.announce or (e.announce and not cur.remove)
                    cur.publish_left = cur.publish_left or e.publish_left
            raise
        finally:
            self.inflight.difference_update(keys)
        self.flushes += 1

    async def _write(self, entries: list[tuple[tuple[str, int], Entry]]) -> None:
        writer = self.writer
        pipe = self.redis.pipeline(transaction=False)
        sigs: list[tuple[tuple[str, int], tuple[Any, ...]]] = []
        removed: dict[str, list[SessionLike]] = defaultdict(list)
        left_events: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
        for key, e in entries:
            doc_id, sid = key
            s = e.session
            if e.handover:
                pipe.srem(k.node_sessions_key(self.node_id), k.owned(sid, doc_id))
            elif e.remove:
                pipe.hdel(k.members_key(doc_id), str(sid))
                pipe.srem(k.node_sessions_key(self.node_id), k.owned(sid, doc_id))
                writer.stream_event(
                    pipe, "left", doc_id, s.user.user_id, s.user.workspace_id, sid, e.reason
                )
                writer.recent_left(pipe, doc_id, s.user, s.color, e.reason, e.left_at_ms)
                removed[doc_id].append(s)
                if e.publish_left:
                    left_events[doc_id].append((p.EV_LEFT, sid, e.reason))
            else:
                self._write_upsert(
                    pipe, doc_id, s, full=e.announce or e.attempted, announce=e.announce
                )
                if e.from_node is not None:
                    pipe.srem(k.node_sessions_key(e.from_node), k.owned(sid, doc_id))
                sigs.append((key, signature(s)))
        writer.publish_batches(pipe, left_events)
        docs = list(removed)
        for doc_id in docs:
            pipe.hvals(k.members_key(doc_id))
        results = await pipe.execute(raise_on_error=False)
        raise_unreachable(results)
        for key, e in entries:
            self._unmark(key[0], e)
        for key, sig in sigs:
            if key[1] in self.live.by_doc.get(key[0], {}):  # (still live: a sid of the doc)
                self._written[key] = sig
        if docs:
            remaining = results[len(results) - len(docs) :]
            pipe = self.redis.pipeline(transaction=False)
            for doc_id, values in zip(docs, remaining, strict=True):
                writer.fix_derived(pipe, doc_id, removed[doc_id], values)
            raise_unreachable(await pipe.execute(raise_on_error=False))

    # ------------------------------------------------------------ reconcile

    async def _reconcile_now(self) -> None:
        """Make Redis hold exactly this node's live sessions (and tell the others)."""
        self.reconcile = False
        announce, self.announce = self.announce, False
        value, ttl_ms = self.heartbeat
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(k.node_key(self.node_id), value, px=ttl_ms)
        pipe.sadd(k.NODE_REGISTRY, self.node_id)
        pipe.smembers(k.node_sessions_key(self.node_id))
        try:
            results = await pipe.execute()
        except BaseException:
            self.reconcile = True
            self.announce = self.announce or announce
            raise
        owned = {x for x in map(k.parse_owned, results[2]) if x is not None}
        busy = set(self.queue) | self.inflight
        by_doc = self.live.by_doc
        live = [(doc_id, s) for doc_id, sessions in by_doc.items() for s in list(sessions.values())]
        try:
            for i in range(0, len(live), self.batch_size):
                pipe = self.redis.pipeline(transaction=False)
                for doc_id, s in live[i : i + self.batch_size]:
                    if (doc_id, s.sid) in busy:
                        continue  # its queued entry writes it (and its stream event)
                    self._write_upsert(pipe, doc_id, s, full=True, announce=False)
                raise_unreachable(await pipe.execute(raise_on_error=False))
            # Sid counters at least as high as the sids in use (Redis may have come back empty).
            pipe = self.redis.pipeline(transaction=False)
            for doc_id, floor in self._sid_floors().items():
                await self._bump(
                    keys=[k.sid_key(doc_id)], args=[floor, SID_COUNTER_TTL_MS], client=pipe
                )
            if announce:
                self.writer.publish_batches(
                    pipe,
                    {
                        doc_id: [(p.EV_JOINED, s.member()) for s in sessions.values()]
                        for doc_id, sessions in by_doc.items()
                    },
                )
            raise_unreachable(await pipe.execute(raise_on_error=False))
            # What Redis lists for this node that is no longer live (lost queue entries).
            live_keys = {(doc_id, s.sid) for doc_id, s in live}
            extras: dict[str, list[int]] = defaultdict(list)
            for sid, doc_id in owned:
                key = (doc_id, sid)
                if key not in live_keys and key not in busy:
                    extras[doc_id].append(sid)
            for doc_id, sids in extras.items():
                await self.writer.remove_sessions(
                    doc_id, sids, self.node_id, publish=True, reason=p.LOST
                )
        except BaseException:
            self.reconcile = True
            self.announce = self.announce or announce
            raise

    def _sid_floors(self) -> dict[str, int]:
        """What each document's sid counter must be raised to: past the sids of this
        node's live sessions and past every sid the node has seen in a document open here,
        left or not (`sid_floors`: a member here may still show a sid whose leave is on
        its way). Fallback sids are not the counter's."""
        floors = dict(self.sid_floors())
        for doc_id, sessions in self.live.by_doc.items():
            for sid in sessions:
                if floors.get(doc_id, 0) < sid < FALLBACK_SID_BASE:
                    floors[doc_id] = sid
        return {doc_id: floor for doc_id, floor in floors.items() if floor > 0}


def heartbeat_value(node_id: str, started_at_ms: int) -> str:
    """The value of `presence:node:<id>` (what reapers and operators read)."""
    return json.dumps({"node_id": node_id, "started_at": started_at_ms})
