"""Shared presence across nodes (active when the store is `clustered`, i.e. Redis).

It asks the registry for documents and answers with values; it never acts on the hub.

- `prepare(doc_id)` is the async part of a join (the session holds the client's later
  frames meanwhile, so frame order holds): on this node's first join of a document it
  subscribes to the document's channel, THEN loads the members other nodes own from the
  store, so no event falls between the snapshot and the subscription; the sid comes from the
  store (`INCR presence:<doc>:sid`, unique across nodes). The hub admits the session.
- The mirror: BATCH frames from other nodes are forwarded unchanged (the hub does that) and
  also applied here to `remote=True` sessions in the local Document, by writing their
  fields directly, so nothing is re-queued as an event and re-broadcast. That makes a
  joiner's JOINED snapshot include members on other nodes.
- Who listens (the broker's node set): a node opening a document says HELLO after its
  subscription; every node there answers with a ROSTER, its own members in full, which
  the opener applies as the truth about that node's members (new ones, changed ones, and
  mirrored ones of that node it no longer has). Each mirrored session knows its owner.
- Gaps: a message missing or repeated in another node's sequence for a document (the
  broker checks), and a joined member this node did not know, make it re-read the
  document soon (the record holds what a BATCH does not carry: the member's workspace).
- Resync: after the pub/sub connection comes back (frames were lost meanwhile) and every
  `presence_ttl_seconds` as anti-entropy, each document's remote members are re-read from
  the store; differences (joins, leaves, and the fields of members both sides know) go to
  this node's members as a local-only BATCH (through the `deliver` callback the hub gives).
  A field is taken from the store only when the record is at least as new as the last BATCH
  the mirror applied to it (both times are the owner's clock): the write-behind store may be
  older than the mirror, never the reverse.

Redis down at a join: no remote snapshot and a fallback sid (see docs/redis.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Callable
from typing import Any

import msgpack

from relay.backends.base import FALLBACK_SID_BASE, Broker, PresenceStore, fallback_sid
from relay.core import protocol as p
from relay.core.model import ActivityType, UserInfo
from relay.server.recent import RecentBook
from relay.server.registry import Registry
from relay.twin import Document
from relay.twin import Session as TwinSession

log = logging.getLogger("relay.cluster")

RESYNC_GRACE_MS = 3000  # a mirrored session this young is not removed by a resync
TOMBSTONE_MS = 60_000  # how long a `left` keeps a sid out of snapshot / resync merges
SETTLE_RESYNCS = (0.15, 1.0)  # re-reads after a node opens a document (seconds apart)
# Re-reads after the pub/sub connection comes back (seconds after it). A member that acted
# during the gap and then stopped is in its record about a second later (the owner's
# write-behind sweep): the 2 s read sees it, 4 s is the margin for a slow owner; later than
# that, the periodic anti-entropy (every presence_ttl_seconds) repairs.
RECONNECT_RESYNCS = (0.5, 2.0, 4.0)
GAP_RESYNC_DELAY_S = 0.02  # a gap's re-read waits this long: one read for a burst of them

# A mirrored session's field groups: index into its stamps (Cluster.stamps), each the
# owner's server_ms of the last BATCH (or record) that set the group.
F_CURSOR, F_TYPING, F_VIEWPORT, F_FOCUS, F_ACTIVITY, F_STATUS = range(6)
N_FIELDS = 6


# Local members' difference after a resync: (doc_id, events) -> sent to its local members.
Deliver = Callable[[str, list[tuple[Any, ...]]], None]


class Cluster:
    def __init__(
        self,
        registry: Registry,
        store: PresenceStore,
        broker: Broker,
        clock: Callable[[], int],
        presence_ttl_seconds: int,
        deliver: Deliver,
        recent: RecentBook | None = None,
    ) -> None:
        self.registry = registry
        # Leaves of mirrored members go in the node's book of recent leaves, and a document
        # opening here brings the store's copy of it.
        self.recent = recent
        self.store = store
        self.broker = broker
        self.clock = clock
        self.presence_ttl_seconds = presence_ttl_seconds
        self.deliver = deliver
        self.opening: dict[str, asyncio.Task[Document]] = {}
        self.joining: dict[str, int] = {}
        self.seen: dict[str, dict[int, int]] = {}  # doc -> remote sid -> mirrored at (ms)
        self.tombstones: dict[str, dict[int, int]] = {}  # doc -> sid -> left at (ms)
        # doc -> remote sid -> per field group, when its owner set it (see F_CURSOR, ...)
        self.stamps: dict[str, dict[int, list[int]]] = {}
        self.owners: dict[str, dict[int, str]] = {}  # doc -> remote sid -> its node's id
        # doc -> the highest store-issued sid this node has seen in it since it opened here
        # (its own and mirrored, left or not): what the sid counter must stay above should
        # Redis come back empty (the protocol: no sid is reused while the document has
        # members; see sid_floors).
        self.sid_high: dict[str, int] = {}
        self._resync_soon: set[str] = set()  # documents with a gap's re-read scheduled
        # Mirrored sessions first heard of in a BATCH or a ROSTER, whose record is to be
        # read for what those do not carry (the workspace): doc -> sids.
        self._unfilled: dict[str, set[int]] = {}
        # Re-reads by cause: `gap`, `duplicate` (in another node's sequence), `reconnect`.
        self.resyncs_by_cause: dict[str, int] = {}
        self._fallback = itertools.count()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.resyncs = 0
        broker.set_reconnect_callback(self.on_reconnect)
        broker.listener = self
        store.watch_sid_floors(self.sid_floors)
        registry.on_drop.append(lambda doc: self.forget(doc.doc_id))

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._spawn(self._anti_entropy())

    async def stop(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        for t in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def busy(self, doc_id: str) -> bool:
        """A join of the document is in progress: the hub must not drop it."""
        return doc_id in self.opening or doc_id in self.joining

    def unused(self, doc: Document) -> bool:
        """No local member (only mirrored ones, or none: an agent of this node counts) and no
        join under way."""
        doc_id = doc.doc_id
        registry = self.registry
        return (
            not registry.local.get(doc_id)
            and not registry.agents.get(doc_id)
            and not (self.busy(doc_id))
        )

    def forget(self, doc_id: str) -> None:
        self.owners.pop(doc_id, None)
        self.seen.pop(doc_id, None)
        self.tombstones.pop(doc_id, None)
        self.stamps.pop(doc_id, None)
        self.sid_high.pop(doc_id, None)

    # ------------------------------------------------------------ joins

    def begin(self, doc_id: str) -> None:
        """A join of `doc_id` starts: the document must not be dropped until `end`."""
        self.joining[doc_id] = self.joining.get(doc_id, 0) + 1

    def end(self, doc_id: str) -> None:
        """The join is over: drop the document if nothing holds it any more."""
        n = self.joining.get(doc_id, 1) - 1
        if n:
            self.joining[doc_id] = n
        else:
            self.joining.pop(doc_id, None)
        doc = self.registry.get(doc_id)
        if doc is not None and self.unused(doc):
            self.registry.drop(doc)

    async def open_document(self, doc_id: str) -> Document:
        """The document, opened here with its remote members mirrored (hold it with
        `begin` / `end` while using it)."""
        return await self._open(doc_id)

    def adopted(self, doc_id: str, sid: int) -> None:
        """A session this node mirrored is now its own (resumed here): no longer mirrored."""
        for table in (self.seen, self.stamps, self.tombstones, self.owners):
            table.get(doc_id, {}).pop(sid, None)
        self._saw(doc_id, sid)

    def released(self, doc_id: str, sid: int, now_ms: int) -> None:
        """A session this node owned is now another node's (resumed there): mirrored."""
        self.seen.setdefault(doc_id, {})[sid] = now_ms
        self.stamps.setdefault(doc_id, {})[sid] = [now_ms] * N_FIELDS

    async def prepare(self, doc_id: str) -> tuple[Document, int]:
        """The document (opened, its remote members mirrored) and a sid for a new session."""
        doc = await self._open(doc_id)
        sid = await self.store.allocate_sid(doc_id, self._floor(doc))
        if sid is None or sid in doc.sessions:
            sid = self._fallback_sid(doc)
        self._saw(doc_id, sid)
        return doc, sid

    async def _open(self, doc_id: str) -> Document:
        task = self.opening.get(doc_id)
        if task is None:
            doc = self.registry.get(doc_id)
            if doc is not None:
                return doc
            task = asyncio.get_running_loop().create_task(self._load(doc_id))
            self.opening[doc_id] = task

            def done(t: asyncio.Task[Document]) -> None:
                if self.opening.get(doc_id) is t:
                    del self.opening[doc_id]

            task.add_done_callback(done)
        return await asyncio.shield(task)

    async def _load(self, doc_id: str) -> Document:
        doc = self.registry.open(doc_id)
        self.seen[doc_id] = {}
        self.stamps[doc_id] = {}
        self.tombstones.setdefault(doc_id, {})
        # Subscribe first, then read: an event that races the read is either in the
        # snapshot or arrives on the channel (and a `left` leaves a tombstone), since its
        # owner publishes it only after writing it (the write-behind's barrier). Then into
        # the node set, so the others publish the document's batches (and answer HELLO).
        await self.broker.ensure_subscribed(doc_id)
        self.owners[doc_id] = {}
        await self.broker.join_nodes(doc_id)
        try:
            stored = await self.store.load_members(doc_id)
        except Exception as exc:
            log.info("no remote snapshot for %s: %s", doc_id, exc)
            stored = []
        if self.recent is not None and self.recent.enabled:
            try:
                self.recent.merge(doc_id, await self.store.load_recent(doc_id))
            except Exception as exc:  # a join never fails for want of `recent`
                log.info("no recent leaves for %s: %s", doc_id, exc)
        if self.registry.get(doc_id) is doc:
            self._merge(doc, stored, self.clock())
            self.broker.hello(doc_id, self.clock(), self._own_members(doc))
            # A join on another node published before our SUBSCRIBE took effect but written
            # to Redis after our read is in neither: look again once writes have landed.
            self._spawn(self._settle(doc_id))
        return doc

    async def _settle(self, doc_id: str) -> None:
        for delay in SETTLE_RESYNCS:
            await asyncio.sleep(delay)
            if self.registry.get(doc_id) is None:
                return
            with contextlib.suppress(Exception):
                await self.resync(doc_id)

    def _saw(self, doc_id: str, sid: int) -> None:
        if self.sid_high.get(doc_id, 0) < sid < FALLBACK_SID_BASE:
            self.sid_high[doc_id] = sid

    def _floor(self, doc: Document) -> int:
        sids = itertools.chain(doc.sessions, self.tombstones.get(doc.doc_id, ()))
        high = max((s for s in sids if s < FALLBACK_SID_BASE), default=0)
        return max(high, self.sid_high.get(doc.doc_id, 0))

    def sid_floors(self) -> dict[str, int]:
        """Per open document, the sid its counter must stay at or above (the store's
        reconcile raises the counters to these after Redis came back empty)."""
        return {doc_id: self._floor(doc) for doc_id, doc in self.registry.documents.items()}

    def _fallback_sid(self, doc: Document) -> int:
        # Redis unreachable: a sid in this node's stripe, far above INCR's range.
        stripe = self.store.fallback_stripe()
        while True:
            sid = fallback_sid(stripe, next(self._fallback))
            if sid not in doc.sessions:
                return sid

    # ------------------------------------------------------------ the mirror

    def _tables(
        self, doc_id: str
    ) -> tuple[dict[int, int], dict[int, list[int]], dict[int, int], dict[int, str]]:
        """The document's mirror bookkeeping: when each remote sid was mirrored, its field
        stamps, the tombstones of sids that left, and each remote sid's owner."""
        return (
            self.seen.setdefault(doc_id, {}),
            self.stamps.setdefault(doc_id, {}),
            self.tombstones.setdefault(doc_id, {}),
            self.owners.setdefault(doc_id, {}),
        )

    def _merge(self, doc: Document, sessions: list[Any], now: int) -> list[tuple[Any, ...]]:
        """Add remote sessions (store records) not known yet; return their `joined` events."""
        local = self.registry.local.get(doc.doc_id, {})
        seen, stamps, tomb, owners = self._tables(doc.doc_id)
        events = []
        for s in sessions:
            sid = s.sid
            if sid in local:
                continue
            known = doc.sessions.get(sid)
            if known is not None:
                if known.remote and known.user != s.user:
                    known.user = s.user  # (a BATCH's `joined` does not carry the workspace)
                continue
            left_at = tomb.get(sid)
            if left_at is not None and now - left_at < TOMBSTONE_MS:
                continue
            m = twin_session(s.member(), s.user.workspace_id, s.cursor_arrived_ms)
            doc.sessions[sid] = m
            seen[sid] = now
            self._saw(doc.doc_id, sid)
            node_id = getattr(s, "node_id", "")
            if node_id:
                owners[sid] = node_id
            # Every field is as of the record (0 for an old-format record: any later one wins).
            stamps[sid] = [getattr(s, "written_at_ms", 0)] * N_FIELDS
            events.append((p.EV_JOINED, m.member()))
        return events

    def apply(self, doc_id: str, frame: bytes, origin: str = "") -> None:
        """Apply another node's BATCH to the mirrored sessions (no events are queued);
        `origin` is the node that sent it ("" for this node's reaper)."""
        doc = self.registry.get(doc_id)
        if doc is None:
            return
        try:
            msg = msgpack.unpackb(frame, raw=False, strict_map_key=False)
            ts, events = int(msg[2]), msg[3]
            if msg[0] != p.BATCH:
                return
        except Exception:
            log.warning("ignoring a malformed frame from another node for %s", doc_id)
            return
        local = self.registry.local.get(doc_id, {})
        sessions = doc.sessions
        seen, stamps, tomb, owners = self._tables(doc_id)
        for ev in events:
            try:
                code = ev[0]
                if code == p.EV_JOINED:
                    m = ev[1]
                    sid = m[0]
                    if sid in local:
                        continue  # never let a remote record shadow a local session
                    old = sessions.get(sid)
                    if old is not None:
                        ws = old.user.workspace_id
                    else:
                        # The BATCH does not say; the record (written before this was
                        # published) does: read it soon, until then the likeliest one.
                        ws = self._workspace(doc)
                        self.fill_soon(doc_id, sid)
                    sessions[sid] = twin_session(m, ws, ts)
                    seen[sid] = ts
                    self._saw(doc_id, sid)
                    stamps[sid] = [ts] * N_FIELDS
                    tomb.pop(sid, None)
                    if origin:
                        owners[sid] = origin
                    continue
                sid = ev[1]
                if code == p.EV_LEFT:
                    s = sessions.get(sid)
                    if s is not None and s.remote:
                        del sessions[sid]
                        if self.recent is not None:
                            reason = ev[2] if len(ev) > 2 else p.LEFT
                            self.recent.left(doc_id, s, reason, ts)
                    seen.pop(sid, None)
                    stamps.pop(sid, None)
                    owners.pop(sid, None)
                    if sid not in local:
                        tomb[sid] = ts
                    continue
                s = sessions.get(sid)
                if s is None or not s.remote:
                    continue
                st = stamps.get(sid)
                if st is None:
                    st = stamps[sid] = [0] * N_FIELDS
                if code == p.EV_CURSOR:
                    if len(ev) == 2:
                        s.cursor = None
                        s.selection = None
                    else:
                        s.cursor = (ev[2], ev[3], ev[4])
                        s.selection = (ev[5], ev[6], ev[7], ev[8]) if len(ev) == 9 else None
                    s.cursor_arrived_ms = ts
                    s.last_active_ms = ts
                    st[F_CURSOR] = ts
                elif code == p.EV_TYPING:
                    s.typing = bool(ev[2])
                    if s.typing:
                        s.last_active_ms = ts
                    st[F_TYPING] = ts
                elif code == p.EV_VIEWPORT:
                    s.viewport = (ev[2], ev[3], float(ev[4]))
                    s.last_active_ms = ts
                    st[F_VIEWPORT] = ts
                elif code == p.EV_ACTIVITY:
                    s.activity = ActivityType(ev[2])
                    st[F_ACTIVITY] = ts
                elif code == p.EV_FOCUS:
                    s.focused = bool(ev[2])
                    st[F_FOCUS] = ts
                elif code == p.EV_STATUS:
                    s.status = ev[2] if isinstance(ev[2], str) else None
                    s.last_active_ms = ts
                    st[F_STATUS] = ts
            except Exception:
                continue  # one odd event must not stop the rest
        if len(tomb) > 1024:
            cutoff = ts - TOMBSTONE_MS
            for sid in [s for s, t in tomb.items() if t < cutoff]:
                del tomb[sid]

    def _workspace(self, doc: Document) -> str:
        for s in doc.sessions.values():
            if not s.remote:
                return s.user.workspace_id
        return "default"

    # ------------------------------------------------------------ the node set

    def node_hello(self, doc_id: str, origin: str) -> None:
        """Another node opened the document: tell it every member this node owns there
        (what it may have missed before it was known to be listening)."""
        doc = self.registry.get(doc_id)
        if doc is None:
            return
        self.broker.send_roster(doc_id, self.clock(), self._own_members(doc))

    @staticmethod
    def _own_members(doc: Document) -> list[Any]:
        return [s.member() for s in doc.sessions.values() if not s.remote]

    def node_roster(self, doc_id: str, origin: str, server_ms: int, members: list[Any]) -> None:
        """`origin`'s members in the document, in full: mirror them, drop the mirrored
        ones of `origin` it no longer has, and tell local members the difference."""
        doc = self.registry.get(doc_id)
        if doc is None or not origin:
            return
        local = self.registry.local.get(doc_id, {})
        sessions = doc.sessions
        seen, stamps, tomb, owners = self._tables(doc_id)
        events: list[tuple[Any, ...]] = []
        listed = set()
        for m in members:
            sid = m[0]
            listed.add(sid)
            old = sessions.get(sid)
            if sid in local or (old is not None and not old.remote):
                continue
            left_at = tomb.get(sid)
            if left_at is not None and left_at >= server_ms:
                continue  # its `left` came after this roster was made
            owners[sid] = origin
            if old is not None:  # known: the fields it changed, as the resync tells them
                self._heal(old, twin_session(m, old.user.workspace_id), server_ms, stamps, events)
                continue
            self.fill_soon(doc_id, sid)
            sessions[sid] = twin_session(m, self._workspace(doc), server_ms)
            seen[sid] = self.clock()
            self._saw(doc_id, sid)
            stamps[sid] = [server_ms] * N_FIELDS
            tomb.pop(sid, None)
            events.append((p.EV_JOINED, sessions[sid].member()))
        for sid in [sid for sid, node in owners.items() if node == origin and sid not in listed]:
            s = sessions.get(sid)
            del owners[sid]
            if s is None or not s.remote:
                continue
            del sessions[sid]
            seen.pop(sid, None)
            stamps.pop(sid, None)
            tomb[sid] = server_ms
            events.append((p.EV_LEFT, sid, p.LOST))  # why is not known here
            if self.recent is not None:
                self.recent.left(doc_id, s, p.LOST, server_ms)
        if events and local:
            self.deliver(doc_id, events)

    def node_gap(self, doc_id: str, cause: str) -> None:
        self.resync_soon(doc_id, cause)

    def resync_soon(self, doc_id: str, cause: str) -> None:
        """Re-read the document shortly (one read for a burst of reasons)."""
        self.resyncs_by_cause[cause] = self.resyncs_by_cause.get(cause, 0) + 1
        if doc_id in self._resync_soon:
            return
        self._resync_soon.add(doc_id)
        self._spawn(self._resync_after_gap(doc_id))

    def fill_soon(self, doc_id: str, sid: int) -> None:
        """Read the record of a member first heard of without one, shortly (one read for
        a burst of joins): a BATCH's `joined` does not say its workspace."""
        pending = self._unfilled.get(doc_id)
        if pending is None:
            pending = self._unfilled[doc_id] = set()
            self._spawn(self._fill(doc_id))
        pending.add(sid)

    async def _fill(self, doc_id: str) -> None:
        try:
            await asyncio.sleep(GAP_RESYNC_DELAY_S)
        finally:
            sids = self._unfilled.pop(doc_id, set())
        try:
            records = await self.store.load_members(doc_id)
        except Exception:
            return  # the next resync reads it
        doc = self.registry.get(doc_id)
        if doc is None:
            return
        for record in records:
            m = doc.sessions.get(record.sid)
            if record.sid in sids and m is not None and m.remote:
                m.user = record.user  # (no event: a workspace is not on the wire)

    async def _resync_after_gap(self, doc_id: str) -> None:
        try:
            await asyncio.sleep(GAP_RESYNC_DELAY_S)
        finally:
            self._resync_soon.discard(doc_id)
        with contextlib.suppress(Exception):
            await self.resync(doc_id)

    # ------------------------------------------------------------ resync

    def on_reconnect(self) -> None:
        """The pub/sub connection is (re)established: frames may have been lost."""
        # Redis may have restarted empty: the sid counters go back above the sids in use
        # first thing (see RedisStore.allocate_sid), and the records are rewritten.
        self.store.reconcile_soon()
        if self.registry.documents:
            self.resyncs_by_cause["reconnect"] = self.resyncs_by_cause.get("reconnect", 0) + 1
            self._spawn(self._refresh_nodes(hello=True))
            # (Those before the store settles remove nobody: one more right after it does.)
            settled = self.store.settle_s + 0.5
            later = (settled,) if settled > RECONNECT_RESYNCS[-1] else ()
            for delay in (*RECONNECT_RESYNCS, *later):
                self._spawn(self._resync_later(delay))

    async def _refresh_nodes(self, hello: bool = False) -> None:
        """Back in every open document's node set; after a reconnect also a HELLO in each
        (with this node's members: a node that dropped them while the channel was down,
        e.g. because Redis came back empty, takes them back, and answers with its own)."""
        with contextlib.suppress(Exception):
            await self.broker.refresh_nodes(list(self.registry.documents))
        if hello:
            now = self.clock()
            for doc_id, doc in list(self.registry.documents.items()):
                self.broker.hello(doc_id, now, self._own_members(doc))

    async def _resync_later(self, delay: float) -> None:
        await asyncio.sleep(delay)
        await self.resync_all()

    async def _anti_entropy(self) -> None:
        interval = max(1.0, float(self.presence_ttl_seconds))
        while True:
            await asyncio.sleep(interval)
            await self._refresh_nodes()
            await self.resync_all()

    async def resync_all(self) -> None:
        for doc_id in list(self.registry.documents):
            try:
                await self.resync(doc_id)
            except Exception as exc:
                log.info("resync of %s skipped: %s", doc_id, exc)
                return  # store unreachable: the next reconnect or period retries

    async def resync(self, doc_id: str) -> None:
        """Make the mirror of `doc_id` match the store; tell local members the difference."""
        events = await self.difference(doc_id)
        if events and self.registry.local.get(doc_id):
            self.deliver(doc_id, events)

    async def difference(self, doc_id: str) -> list[tuple[Any, ...]]:
        """Bring the mirror of `doc_id` to the store's view; the events that say what
        changed (for this node's members)."""
        registry = self.registry
        if registry.get(doc_id) is None or self.busy(doc_id):
            return []
        records = await self.store.load_members(doc_id)
        # (Asked after the read: a restart in between makes the answer "not settled".)
        prune = await self.store.settled(doc_id)
        doc = registry.get(doc_id)
        if doc is None:
            return []
        self.resyncs += 1
        now = self.clock()
        stored = {s.sid: s for s in records}
        seen, stamps, tomb, owners = self._tables(doc_id)
        events: list[tuple[Any, ...]] = []
        for sid, s in list(doc.sessions.items()):
            if not s.remote:
                continue
            record = stored.get(sid)
            if record is not None:
                self._heal(s, record, getattr(record, "written_at_ms", 0), stamps, events)
                owner = getattr(record, "node_id", "")
                if owner:
                    owners[sid] = owner
            elif prune and now - seen.get(sid, 0) > RESYNC_GRACE_MS:
                del doc.sessions[sid]
                owners.pop(sid, None)
                seen.pop(sid, None)
                stamps.pop(sid, None)
                tomb[sid] = now
                events.append((p.EV_LEFT, sid, p.LOST))  # why is not known here
                if self.recent is not None:
                    self.recent.left(doc_id, s, p.LOST, now)
        events.extend(self._merge(doc, list(stored.values()), now))
        return events

    @staticmethod
    def _heal(
        m: Any,
        record: Any,
        written: int,
        stamps: dict[int, list[int]],
        events: list[tuple[Any, ...]],
    ) -> None:
        """Take from a store record (or a ROSTER's member) the fields the mirror `m` has not
        seen a newer BATCH for.

        `written` (the record's `written_at_ms`, a ROSTER's `server_ms`) and the stamps are
        both the owner's clock: a record written at or after the last BATCH that set a field
        reflects that BATCH (or a later change, whose BATCH was lost or is still to come). A
        field the mirror heard about after the record was built stays: the owner's next
        write carries it and the next resync compares again.
        """
        sid = m.sid
        if record.user.workspace_id != m.user.workspace_id:  # (not in a BATCH's `joined`)
            m.user = record.user
        st = stamps.get(sid)
        if st is None:
            st = stamps[sid] = [0] * N_FIELDS
        healed = False
        cursor = record.cursor
        selection = record.selection if cursor is not None else None
        if written >= st[F_CURSOR] and (cursor, selection) != (m.cursor, m.selection):
            m.cursor = cursor
            m.selection = selection
            m.cursor_arrived_ms = record.cursor_arrived_ms or written
            st[F_CURSOR] = written
            if cursor is None:
                events.append((p.EV_CURSOR, sid))
            elif selection is None:
                events.append((p.EV_CURSOR, sid, *cursor))
            else:
                events.append((p.EV_CURSOR, sid, *cursor, *selection))
            healed = True
        if written >= st[F_TYPING] and bool(record.typing) != m.typing:
            m.typing = bool(record.typing)
            st[F_TYPING] = written
            events.append((p.EV_TYPING, sid, m.typing))
            healed = True
        # No event clears a viewport (a client cannot either): a record without one is older.
        vp = record.viewport
        if vp is not None and written >= st[F_VIEWPORT] and vp != m.viewport:
            m.viewport = (vp[0], vp[1], float(vp[2]))
            st[F_VIEWPORT] = written
            events.append((p.EV_VIEWPORT, sid, vp[0], vp[1], float(vp[2])))
            healed = True
        if written >= st[F_FOCUS] and bool(record.focused) != m.focused:
            m.focused = bool(record.focused)
            st[F_FOCUS] = written
            events.append((p.EV_FOCUS, sid, m.focused))
            healed = True
        status = getattr(record, "status", None)
        if written >= st[F_STATUS] and status != m.status:
            m.status = status
            st[F_STATUS] = written
            events.append((p.EV_STATUS, sid, status))
            healed = True
        if written >= st[F_ACTIVITY] and int(record.activity) != int(m.activity):
            m.activity = ActivityType(record.activity)
            st[F_ACTIVITY] = written
            events.append((p.EV_ACTIVITY, sid, int(m.activity)))
            healed = True
        if healed and record.last_active_ms > m.last_active_ms:
            m.last_active_ms = record.last_active_ms


def twin_session(m: Any, workspace_id: str, cursor_ms: int = 0) -> Any:
    """A mirrored (remote) session, of the hot path's Session class, from a MEMBER array."""
    return TwinSession(
        m[0],
        UserInfo(user_id=m[1], name=m[2], workspace_id=workspace_id, avatar_url=m[3]),
        m[4],
        m[11],
        m[12],
        activity=ActivityType(m[5]),
        typing=bool(m[6]),
        focused=bool(m[7]),
        cursor=tuple(m[8]) if m[8] is not None else None,
        selection=tuple(m[9]) if m[9] is not None else None,
        viewport=tuple(m[10]) if m[10] is not None else None,
        cursor_arrived_ms=cursor_ms,
        remote=True,
        kind=m[13] if len(m) > 13 else 0,  # a v1 node's MEMBER has 13 elements
        status=m[14] if len(m) > 14 else None,
    )
