"""Webhook events with Redis: from the presence stream, through a consumer group.

Every node writes its sessions' `joined` / `left` entries to the presence stream (the owner
on its write-behind flush, a reaper for a dead node's sessions), each with the session's
`sid` (and a `left`'s `reason`). Webhooks read that stream in the consumer group
`presence-webhooks`, so what was read but not yet delivered stays pending in Redis and a
node restart loses none of it.

One reader at a time. User-level events need the entries of a document in stream order (a
session's `left` applied before its `joined` would leave a ghost), and a consumer group
spreads entries over its consumers in no order. So the nodes elect one reader with a lease
(`<stream>:webhooks-lease`, `SET NX PX`, refreshed four times per `presence_ttl_seconds`):
the holder reads the group with its node id as the consumer name, every other node waits
and takes over when the lease runs out (a crash: within `presence_ttl_seconds`) or is given
back (a stop: at once). A new holder first claims (XAUTOCLAIM) every entry still pending in
the group, in stream order, and handles them before reading new ones.

Transitions, kept in Redis per document (`presence:<doc>:webhooks`, one hash: `s:<sid>` ->
user id for each live session, `u:<user>` -> that user's live sessions, `n` -> the
document's), updated by one Lua script per entry that returns which of user 0->1 / 1->0 and
document 0->1 / 1->0 it caused. The set operations are idempotent: a `joined` whose sid is
already there (announced twice) or a `left` whose sid is gone (written twice, or never
joined as far as the state knows) changes nothing and yields nothing. So that a redelivered
entry (the reader died between the script and the 2xx) yields its events again, with the
same ids, the script records what an entry yielded (`e:<entry id>`) and answers with that
when it sees the entry again; the record goes with the XACK. An entry is acked when every
endpoint got a 2xx for each of its events, or gave them up; one that yields nothing at once.

Event ids are `<entry id>:<type>`: stable across redeliveries and readers.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError, ResponseError

from relay.backends import redis_cluster, redis_pool
from relay.backends.redis_keys import as_text
from relay.backends.redis_pool import UNREACHABLE
from relay.config import PresenceConfig
from relay.server.logbudget import LogBudget
from relay.server.webhooks import (
    ABANDONED,
    DOCUMENT_ACTIVE,
    DOCUMENT_EMPTY,
    USER_JOINED,
    USER_LEFT,
    WebhookEvent,
)

if TYPE_CHECKING:
    from relay.backends.base import PresenceStore
    from relay.server.webhooks import Webhooks

log = logging.getLogger("relay.webhooks")

GROUP = "presence-webhooks"
STATE_TTL_MS = 7 * 86_400_000  # refreshed by every entry of the document
READ_COUNT = 100

# KEYS[1] presence:<doc>:webhooks; ARGV: entry id, type, sid, user id, TTL (ms).
# Returns what the entry caused: "U" (the user's first / last session), "D" (the
# document's first / last), both, or "".
TRANSITION = """
local key = KEYS[1]
local memo = 'e:' .. ARGV[1]
local done = redis.call('HGET', key, memo)
if done then return done end
local out = ''
local s = 's:' .. ARGV[3]
if ARGV[2] == 'joined' then
  if redis.call('HSETNX', key, s, ARGV[4]) == 1 then
    if redis.call('HINCRBY', key, 'u:' .. ARGV[4], 1) == 1 then out = out .. 'U' end
    if redis.call('HINCRBY', key, 'n', 1) == 1 then out = out .. 'D' end
  end
elseif ARGV[2] == 'left' then
  local owner = redis.call('HGET', key, s)
  if owner then
    redis.call('HDEL', key, s)
    local u = 'u:' .. owner
    if redis.call('HINCRBY', key, u, -1) <= 0 then
      redis.call('HDEL', key, u)
      out = out .. 'U'
    end
    if redis.call('HINCRBY', key, 'n', -1) <= 0 then
      redis.call('HDEL', key, 'n')
      out = out .. 'D'
    end
  end
end
if out ~= '' then redis.call('HSET', key, memo, out) end
if redis.call('EXISTS', key) == 1 then redis.call('PEXPIRE', key, ARGV[5]) end
return out
"""

LEASE_REFRESH = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

LEASE_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def state_key(doc_id: str) -> str:
    """The document's webhook state (a hash; see the module's docstring)."""
    return f"presence:{doc_id}:webhooks"


def lease_key(stream: str) -> str:
    return f"{stream}:webhooks-lease"


class Entry:
    """A stream entry whose events are out at the endpoints."""

    __slots__ = ("abandoned", "doc_id", "entry_id", "source", "waiting")

    def __init__(self, source: StreamSource, entry_id: str, doc_id: str, waiting: int) -> None:
        self.source = source
        self.entry_id = entry_id
        self.doc_id = doc_id
        self.waiting = waiting  # events x endpoints not yet delivered or given up
        self.abandoned = False

    def done(self, outcome: str) -> None:
        if outcome == ABANDONED:
            self.abandoned = True  # left pending: the next reader redelivers it
        self.waiting -= 1
        if self.waiting == 0:
            self.source.finished(self)


class StreamSource:
    """The Redis source: one reader (the lease holder) of the presence stream's group."""

    def __init__(self, config: PresenceConfig, store: PresenceStore, sink: Webhooks) -> None:
        from relay.backends.redis_store import RedisStore

        assert isinstance(store, RedisStore)
        self.shared = store.shared
        self.redis = self.shared.acquire()  # released in close(): the pool outlives the store
        self.node_id = store.node_id
        self.stream = config.presence_stream
        self.lease = lease_key(self.stream)
        self.lease_ms = config.presence_ttl_seconds * 1000
        self.poll_s = min(1.0, self.lease_ms / 5000)
        self.block_ms = max(10, min(1000, self.lease_ms // 4))
        self.sink = sink
        self.fanout = len(sink.endpoints)
        self.tracking: dict[str, Entry] = {}  # entry id -> its events at the endpoints
        self.to_ack: list[tuple[str, str | None]] = []  # (entry id, doc of its record)
        self.acking: set[str] = set()
        self.leader = False
        self.last_id: str | None = None  # the last entry read (where a lost group restarts)
        self.entries = 0  # entries handled (read or claimed)
        self.claimed = 0
        self.skipped = 0  # entries without a sid (older nodes) or not joined/left
        self.leases = 0  # times this node became the reader
        self._transition = redis_cluster.Script(self.redis, TRANSITION)  # (pipelined)
        self._refresh_lease = self.redis.register_script(LEASE_REFRESH)
        self._release_lease = self.redis.register_script(LEASE_RELEASE)
        self._wake_acks = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        self._acker: asyncio.Task[None] | None = None
        self._budget = LogBudget(log, 10, 60.0)

    def describe(self) -> str:
        return f"the presence stream {self.stream!r} (group {GROUP!r}, consumer {self.node_id})"

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        # The group first, before this relay takes a member: on the first start with
        # webhooks it begins at the stream's end (`$`), and no entry written from here on
        # is missed, whoever reads. Redis down: the reader creates it when it can.
        try:
            async with asyncio.timeout(1.0):
                await self._create_group("$")
        except (*UNREACHABLE, RedisError) as exc:
            log.warning("webhooks: cannot create the consumer group yet (%s)", exc)
        loop = asyncio.get_running_loop()
        self._reader = loop.create_task(self._run())
        self._acker = loop.create_task(self._ack_loop())

    async def stop_reading(self) -> None:
        if self._reader is not None:
            await redis_pool.stop_tasks([self._reader])
            self._reader = None

    async def close(self, abandoned: int) -> None:
        """Ack what was delivered, give the lease back (another node takes over at once),
        let go of the pool. Entries not delivered stay pending for the next reader."""
        if self._acker is not None:
            await redis_pool.stop_tasks([self._acker])
            self._acker = None
        try:
            async with asyncio.timeout(1.0):
                while self.to_ack:
                    await self._flush_acks()
                await self._release_lease(keys=[self.lease], args=[self.node_id])
        except (*UNREACHABLE, RedisError) as exc:
            log.warning("webhooks: could not ack / give the lease back at stop (%s)", exc)
        if abandoned:
            log.info(
                "webhooks: %d event(s) not delivered yet stay pending in %r for the next "
                "reader", abandoned, self.stream,
            )  # fmt: skip
        await self.shared.release()

    # ------------------------------------------------------------ the reader

    async def _run(self) -> None:
        delay = 0.1
        while True:
            redis_pool.check_cancelled()
            try:
                if await self._take_lease():
                    self.leases += 1
                    log.info("webhooks: this node (%s) reads the presence stream", self.node_id)
                    await self._lead()
                    delay = 0.1
                else:
                    await asyncio.sleep(self.poll_s)
            except Exception as exc:
                self.leader = False
                if redis_pool.cancelling():
                    raise asyncio.CancelledError from None
                if self._budget.allow():
                    if isinstance(exc, UNREACHABLE):
                        log.warning("webhooks: redis unreachable (%s); retrying", exc)
                    else:
                        log.exception("webhooks: reading the presence stream failed")
                await asyncio.sleep(delay)
                delay = min(2.0, delay * 2)

    async def _take_lease(self) -> bool:
        if await self.redis.set(self.lease, self.node_id, nx=True, px=self.lease_ms):
            return True
        # Ours already (a blip of Redis, or our own stop and start)?
        return bool(
            await self._refresh_lease(keys=[self.lease], args=[self.node_id, self.lease_ms])
        )

    async def _lead(self) -> None:
        loop = asyncio.get_running_loop()
        self.leader = True
        try:
            await self._create_group(self.last_id or "$")
            await self._claim_pending()
            refreshed = loop.time()
            while True:
                if loop.time() - refreshed >= self.lease_ms / 4000:
                    ok = await self._refresh_lease(
                        keys=[self.lease], args=[self.node_id, self.lease_ms]
                    )
                    if not ok:
                        log.warning("webhooks: lost the reader's lease; another node reads")
                        return
                    refreshed = loop.time()
                try:
                    res: Any = await self.redis.xreadgroup(
                        GROUP, self.node_id, {self.stream: ">"}, count=READ_COUNT,
                        block=self.block_ms,
                    )  # fmt: skip
                except ResponseError as exc:
                    if "NOGROUP" not in str(exc):
                        raise
                    # The group (and likely the stream) went with Redis's data: start over
                    # after the last entry read (new entries have later ids).
                    log.warning("webhooks: the consumer group is gone; creating it again")
                    await self._create_group(self.last_id or "0")
                    continue
                for _stream, entries in res or ():
                    if entries:
                        self.last_id = as_text(entries[-1][0])
                        await self._handle(entries)
        finally:
            self.leader = False

    async def _create_group(self, start: str) -> None:
        try:
            await self.redis.xgroup_create(self.stream, GROUP, id=start, mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def _claim_pending(self) -> None:
        """Take every entry still pending in the group (a previous reader's), in order."""
        start: Any = "0-0"
        while True:
            res = await self.redis.xautoclaim(
                self.stream, GROUP, self.node_id, min_idle_time=0, start_id=start,
                count=READ_COUNT,
            )  # fmt: skip
            nxt, entries = res[0], [e for e in res[1] if e[0] is not None]
            if entries:
                self.claimed += len(entries)
                await self._handle(entries)
            if as_text(nxt) == "0-0":
                return
            start = nxt

    async def _handle(self, entries: list[Any]) -> None:
        """Apply each entry's transition (one pipeline, in order) and hand its events on."""
        pipe = self.redis.pipeline(transaction=False)
        calls: list[tuple[str, dict[str, str]]] = []
        for raw_id, raw in entries:
            entry_id = as_text(raw_id)
            self.entries += 1
            if entry_id in self.tracking or entry_id in self.acking:
                continue  # already out (a lease regained: XAUTOCLAIM gives ours back)
            fields = {as_text(k): as_text(v) for k, v in (raw or {}).items()}
            kind, sid, doc = fields.get("type"), fields.get("sid", ""), fields.get("document_id")
            if kind not in ("joined", "left") or not sid.isdigit() or not doc:
                self.skipped += 1
                self._ack(entry_id, None)
                continue
            await self._transition(
                keys=[state_key(doc)],
                args=[entry_id, kind, sid, fields.get("user_id", ""), STATE_TTL_MS],
                client=pipe,
            )
            calls.append((entry_id, fields))
        if not calls:
            return
        results = await pipe.execute(raise_on_error=False)
        for (entry_id, fields), result in zip(calls, results, strict=True):
            if isinstance(result, UNREACHABLE):
                raise result  # nothing acked: the entries stay pending, retried
            if isinstance(result, Exception):
                log.warning("webhooks: entry %s skipped: %s", entry_id, result)
                self._ack(entry_id, None)
                continue
            events = self.events(entry_id, fields, as_text(result))
            if not events:
                self._ack(entry_id, None)
                continue
            entry = Entry(self, entry_id, fields["document_id"], len(events) * self.fanout)
            self.tracking[entry_id] = entry
            for event in events:
                event.on_done = entry.done
            self.sink.emit(events)

    @staticmethod
    def events(entry_id: str, fields: dict[str, str], flags: str) -> list[WebhookEvent]:
        """The events an entry caused, document events around the user's."""
        if not flags:
            return []
        doc, ws = fields["document_id"], fields.get("workspace_id", "")
        user = fields.get("user_id", "")
        ts = fields.get("timestamp", "")
        at = int(ts) if ts.isdigit() else int(entry_id.partition("-")[0] or 0)

        def event(kind: str, user_id: str | None = None, reason: str | None = None) -> WebhookEvent:
            return WebhookEvent(f"{entry_id}:{kind}", kind, doc, ws, at, user_id, reason)

        if fields["type"] == "joined":
            out = [event(DOCUMENT_ACTIVE)] if "D" in flags else []
            if "U" in flags:
                out.append(event(USER_JOINED, user))
        else:
            out = [event(USER_LEFT, user, fields.get("reason", "LEFT"))] if "U" in flags else []
            if "D" in flags:
                out.append(event(DOCUMENT_EMPTY))
        return out

    # ------------------------------------------------------------ acks

    def finished(self, entry: Entry) -> None:
        """Every endpoint is done with the entry's events."""
        self.tracking.pop(entry.entry_id, None)
        if not entry.abandoned:
            self._ack(entry.entry_id, entry.doc_id)

    def _ack(self, entry_id: str, doc_id: str | None) -> None:
        self.to_ack.append((entry_id, doc_id))
        self.acking.add(entry_id)
        self._wake_acks.set()

    async def _ack_loop(self) -> None:
        delay = 0.1
        while True:
            redis_pool.check_cancelled()
            await self._wake_acks.wait()
            self._wake_acks.clear()
            try:
                while self.to_ack:
                    await self._flush_acks()
                delay = 0.1
            except Exception as exc:
                if redis_pool.cancelling():
                    raise asyncio.CancelledError from None
                if self._budget.allow():
                    log.warning("webhooks: acking failed (%s); retrying", exc)
                await asyncio.sleep(delay)
                delay = min(2.0, delay * 2)
                self._wake_acks.set()
            await asyncio.sleep(0.005)  # lets acks gather into one round trip

    async def _flush_acks(self) -> None:
        batch = self.to_ack[:500]
        records: dict[str, list[str]] = defaultdict(list)
        for entry_id, doc_id in batch:
            if doc_id is not None:
                records[doc_id].append("e:" + entry_id)
        pipe = self.redis.pipeline(transaction=False)
        pipe.xack(self.stream, GROUP, *[entry_id for entry_id, _ in batch])
        for doc_id, fields in records.items():
            pipe.hdel(state_key(doc_id), *fields)
        await pipe.execute()
        del self.to_ack[: len(batch)]
        for entry_id, _ in batch:
            self.acking.discard(entry_id)
