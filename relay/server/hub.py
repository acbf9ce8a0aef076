"""The hub: this node's documents, their local members, and the ticker that flushes them.

Frames come in through the fast path (`Peer.feed_wire`) or `on_frame` (synchronous: nothing
on the way in awaits), change a document, and mark it dirty. Every `batch_ms` one ticker
flushes each dirty document (in `flush_groups` staggered groups) into one BATCH frame, framed
once and written unchanged to every local member (`fanout.fan_out`: no per-member encoding,
no awaits) and published once to the broker for other nodes.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any

from websockets.asyncio.connection import broadcast
from websockets.asyncio.server import ServerConnection

from relay.auth import Grant
from relay.backends.base import Broker, PresenceStore
from relay.config import PresenceConfig
from relay.core import protocol as p
from relay.core.model import UserInfo
from relay.exceptions import ProtocolError
from relay.server.cluster import Cluster
from relay.server.fanout import fan_out
from relay.server.logbudget import LogBudget
from relay.server.metrics import Stats
from relay.server.outlet import close_within, unsent_bytes
from relay.twin import (
    FALLBACK,
    NEVER,
    RATE_LIMITED,
    BadFrameWindow,
    Batch,
    Document,
    DocumentFull,
    HotCounts,
    Membership,
    Peer,
    TokenBucket,
)

log = logging.getLogger("relay.hub")


def wall_ms() -> int:
    return int(time.time() * 1000)


class Client:
    """One authenticated WebSocket connection."""

    __slots__ = (
        "bad_frames",
        "close_task",
        "closing",
        "connection_id",
        "expiry",
        "fd",
        "grant",
        "handles",
        "held",
        "peer",
        "ws",
    )

    def __init__(
        self,
        ws: ServerConnection,
        connection_id: str,
        grant: Grant,
        cfg: PresenceConfig,
        now_ms: int,
        counts: HotCounts,
    ) -> None:
        self.ws = ws
        self.fd: int = getattr(ws, "fd", -1)  # the socket, for its kernel send queue
        self.connection_id = connection_id
        self.grant = grant
        self.peer = Peer(
            TokenBucket(
                cfg.max_frames_per_s,
                cfg.max_frames_burst,
                cfg.rate_limit_close_after_s * 1000,
                now_ms,
            ),
            counts,
        )
        self.handles: dict[int, Membership] = self.peer.handles
        self.bad_frames = BadFrameWindow(cfg.max_bad_frames, cfg.bad_frames_window_s * 1000)
        self.closing = False
        # The close the hub started (4400/4408/4429/1001); the handler awaits it so that
        # websockets does not close with its default 1000 first.
        self.close_task: asyncio.Task[None] | None = None
        # While a clustered JOIN waits for Redis, this client's later frames wait here
        # (in order) and are handled when it completes.
        self.held: deque[bytes] | None = None
        # Closes the connection (4401) when the token expires.
        self.expiry: asyncio.TimerHandle | None = None

    @property
    def user(self) -> UserInfo:
        return self.grant.user

    def send(self, frame: bytes) -> None:
        """Queue a frame to this client without awaiting (skipped if not open)."""
        broadcast((self.ws,), frame)


# Errors that count toward max_bad_frames: the client sent something it should not have.
# (RATE_LIMITED has its own escalation; FORBIDDEN / capacity answers are the server's call.)
BAD_FRAME_CODES = frozenset(
    {p.BAD_FRAME, p.UNKNOWN_TYPE, p.NOT_JOINED, p.INVALID_VALUE, p.ALREADY_JOINED}
)


class Hub:
    def __init__(
        self,
        config: PresenceConfig,
        store: PresenceStore,
        broker: Broker,
        clock: Callable[[], int] = wall_ms,
    ) -> None:
        self.config = config
        self.rules = config.document_rules()
        self.store = store
        self.broker = broker
        self.clock = clock
        self.stats = Stats()
        self.documents: dict[str, Document] = {}
        self.local: dict[str, dict[int, Client]] = {}  # doc_id -> sid -> client on this node
        self.clients: set[Client] = set()  # past HELLO
        # Every accepted TCP connection until it is closed, HELLO or not (added and removed
        # by RelayConnection): what max_connections counts and what a shutdown must end.
        self.sockets: set[Any] = set()
        # Documents are spread over `flush_groups` groups that flush one after another, each
        # every `batch_ms` (so every document still gets one BATCH per interval): the writes
        # of one tick are a group's, not every member's at once, so a member's batch does
        # not wait behind the whole node's and reads are not starved for a whole burst.
        # Each document registers itself as dirty in its group's set.
        self.groups: list[set[Document]] = [set() for _ in range(config.flush_groups)]
        self._group_of: dict[Document, int] = {}
        self._group_sizes = [0] * config.flush_groups
        self._next_group = 0
        self._timers: list[tuple[int, int, Document]] = []
        self._armed: dict[Document, int] = {}
        self._seq = itertools.count()
        self._ids = itertools.count(1)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._failure_log = LogBudget(log, 10, 60.0)
        # Refused HELLOs (logged by the connection handler), at most 20 lines per 10 s.
        self.refusals = LogBudget(logging.getLogger("relay.connection"), 20, 10.0)
        broker.set_callback(self.on_remote_frame)
        # Shared presence (Redis): async joins and the mirror of other nodes' members.
        self.cluster = Cluster(self) if store.clustered else None

    # ------------------------------------------------------------ connections

    def connect(self, ws: ServerConnection, grant: Grant) -> Client:
        now = self.clock()
        client = Client(
            ws, f"{self.broker.node_id}-{next(self._ids)}", grant, self.config, now, self.stats.hot
        )
        self.clients.add(client)
        self.stats.connections_total += 1
        exp = grant.expires_at_ms
        if exp is not None:  # the token's `exp` holds for the whole connection
            client.expiry = asyncio.get_running_loop().call_later(
                max(0.0, (exp - now) / 1000.0), self._expired, client
            )
        return client

    def disconnect(self, client: Client) -> None:
        """The connection is gone (or going): leave every document now, not after close."""
        if client not in self.clients:
            return
        self.clients.discard(client)
        if client.expiry is not None:
            client.expiry.cancel()
            client.expiry = None
        now = self.clock()
        for h in list(client.handles):
            self._leave(client, h, now)

    def close_client(self, client: Client, code: int, reason: str) -> None:
        """Leave every document at once, then close the socket in the background: the
        closing handshake, cut short by an abort after `close_timeout_s`."""
        if client.closing:
            return
        client.closing = True
        self.stats.close(code)
        self.disconnect(client)
        client.close_task = self._spawn(
            close_within(client.ws, code, reason, self.config.close_timeout_s)
        )

    def _expired(self, client: Client) -> None:
        client.expiry = None
        if client in self.clients:
            log.info("closing %s: token expired", client.connection_id)
            self.close_client(client, p.CLOSE_UNAUTHENTICATED, "token expired")

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """A background task the hub keeps a reference to until it ends."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _backlogged(self, client: Client) -> bool:
        """True when the client's unsent bytes (ours and the kernel's) pass max_send_backlog
        (it gets 4408)."""
        return unsent_bytes(client.ws.transport, client.fd) > self.config.max_send_backlog

    def send(self, client: Client, frame: bytes) -> None:
        """A direct reply (JOINED, ERROR, PONG): same backlog rule as batches."""
        if self._backlogged(client):
            self.close_client(client, p.CLOSE_TOO_SLOW, "send backlog exceeded")
            return
        client.send(frame)
        self.stats.frames_out += 1
        self.stats.bytes_out += len(frame)

    # ------------------------------------------------------------ inbound

    def on_frame(self, client: Client, data: bytes) -> None:
        """Handle one binary frame from a client. Never raises for bad input.

        (Most frames never come here: the inbound fast path applies runs of hot frames with
        `Peer.feed_wire` and calls `on_unapplied` for the rest.)
        """
        if client.closing:
            return  # the rest of a read that arrived after we decided to close
        if client.held is not None:
            self._hold(client, data)  # a clustered JOIN is completing: keep frame order
            return
        now = self.clock()
        handled = client.peer.feed(data, now)  # applied hot frames are counted by the peer
        if handled <= 0:
            self.on_unapplied(client, data, handled, now)

    def on_unapplied(self, client: Client, data: bytes, handled: int, now: int) -> None:
        """A frame the hot path did not apply: dropped by the rate limit, or for `_general`."""
        self.stats.frames_other += 1
        if handled == RATE_LIMITED:
            if client.peer.bucket.abusive(now):
                self.close_client(client, p.CLOSE_RATE_LIMIT, "rate limit exceeded")
            else:
                self._dropped(client, now)
        else:
            assert handled == FALLBACK
            self._general(client, data, now)

    def _general(self, client: Client, data: bytes, now: int) -> None:
        """Everything the hot path did not take: cold frames, unusual encodings, errors."""
        try:
            frame = p.decode_client_frame(data)
            t = frame[0]
            if t == p.JOIN:
                self._join(client, frame, now)
            elif t == p.LEAVE:
                self._membership(client, frame)
                self._leave(client, frame[1], now)
            elif t == p.PING:
                self.send(client, p.encode_pong(frame[1], now))
            elif t == p.HELLO:
                raise ProtocolError(p.BAD_FRAME, "HELLO was already received")
            else:
                # A hot type the fast path declined: the checks below answer the exact error.
                self._membership(client, frame)
                p.check_ranges(frame)
                raise AssertionError(f"hot frame not taken by Peer.feed: {frame!r}")
        except ProtocolError as exc:
            self._error(client, exc.handle, exc.code, exc.message, now)

    def on_text(self, client: Client) -> None:
        self.stats.frames_other += 1
        self._error(
            client, None, p.BAD_FRAME, "text frames are not part of the protocol", self.clock()
        )

    def _membership(self, client: Client, frame: list[Any]) -> Membership:
        m = client.handles.get(frame[1])
        if m is None:
            raise ProtocolError(p.NOT_JOINED, f"handle {frame[1]} is not joined", frame[1])
        return m

    def _error(self, client: Client, h: int | None, code: int, message: str, now: int) -> None:
        self.stats.error(code)
        self.send(client, p.encode_error(h, code, message))
        if code in BAD_FRAME_CODES and client.bad_frames.add(now):
            self.close_client(client, p.CLOSE_PROTOCOL, "too many bad frames")

    # ------------------------------------------------------------ join / leave (cold path)

    def _join(self, client: Client, frame: list[Any], now: int) -> None:
        h, doc_id = frame[1], frame[2]
        if client.grant.expired(now):  # checked against the token as it stands now
            self.close_client(client, p.CLOSE_UNAUTHENTICATED, "token expired")
            return
        p.check_ranges(frame)
        if h in client.handles:
            raise ProtocolError(p.ALREADY_JOINED, f"handle {h} is already in use", h)
        if any(m.doc.doc_id == doc_id for m in client.handles.values()):
            raise ProtocolError(p.ALREADY_JOINED, "document already joined on this connection", h)
        if not client.grant.allows(doc_id):
            raise ProtocolError(p.FORBIDDEN, "the token does not grant this document", h)
        if len(client.handles) >= self.config.max_documents:
            raise ProtocolError(
                p.TOO_MANY_DOCUMENTS, f"at most {self.config.max_documents} documents", h
            )
        if self.cluster is not None:  # needs Redis round trips: finish it in a task
            client.held = deque()
            self._spawn(self._cluster_join(client, h, doc_id))
            return
        doc = self.documents.get(doc_id)
        if doc is None:
            doc = self.new_document(doc_id)
            self.documents[doc_id] = doc
            self.local[doc_id] = {}
            self.broker.subscribe(doc_id)
        try:
            session = doc.join(client.user, now)
        except DocumentFull as exc:  # (a new document is never full: both limits are >= 1)
            raise ProtocolError(p.DOCUMENT_AT_CAPACITY, str(exc), h) from None
        self._admit(client, h, doc, session)

    def new_document(self, doc_id: str) -> Document:
        """A document in the flush group with the fewest documents."""
        sizes = self._group_sizes
        g = sizes.index(min(sizes))
        sizes[g] += 1
        doc = Document(doc_id, self.rules, self.groups[g])
        self._group_of[doc] = g
        return doc

    async def _cluster_join(self, client: Client, h: int, doc_id: str) -> None:
        assert self.cluster is not None
        try:
            await self.cluster.join(client, h, doc_id)
        finally:
            held, client.held = client.held, None
            while held and not client.closing:
                self.on_frame(client, held.popleft())
                if client.held is not None:  # another clustered JOIN began: it holds the rest
                    held.extend(client.held)
                    client.held = held
                    break

    def _hold(self, client: Client, data: bytes) -> None:
        held = client.held
        assert held is not None
        if len(held) < self.config.max_frames_burst:
            held.append(data)
        else:  # past what the rate limit would let through anyway: dropped, and said so
            self.stats.frames_other += 1
            self._dropped(client, self.clock())

    def _dropped(self, client: Client, now: int) -> None:
        """A frame dropped for rate: ERROR 6, at most once a second per connection."""
        bucket = client.peer.bucket
        if now - bucket.last_error_ms >= 1000:
            bucket.last_error_ms = now
            self._error(client, None, p.RATE_LIMITED, "rate limit exceeded; frame dropped", now)

    def _admit(self, client: Client, h: int, doc: Document, session: Any) -> None:
        """The session is in the document: register it locally, answer JOINED, announce it."""
        doc_id = doc.doc_id
        self.local[doc_id][session.sid] = client
        client.handles[h] = Membership(doc, session.sid)
        self.send(client, p.encode_joined(h, doc_id, session.sid, doc.snapshot()))
        self.groups[self._group_of[doc]].add(doc)
        self.store.session_changed(doc_id, session)
        self.stats.updates["joined"] += 1

    def _leave(self, client: Client, h: int, now: int) -> None:
        m = client.handles.pop(h)
        doc = m.doc
        session = doc.leave(m.sid, now)
        self.local[doc.doc_id].pop(m.sid, None)
        if session is not None:
            self.store.session_left(doc.doc_id, session)
            self.stats.updates["left"] += 1

    # ------------------------------------------------------------ outbound

    def tick(self, now: int) -> None:
        """One group's turn: run due timers, flush the group's dirty documents, deliver.

        The ticker calls this `flush_groups` times per `batch_ms`, so each group (and each
        document) flushes once per interval.
        """
        g = self._next_group
        self._next_group = (g + 1) % len(self.groups)
        group = self.groups[g]
        dirty = set(group)  # documents hold a reference to their group's set: clear, don't swap
        group.clear()
        for doc in dirty:
            self._arm(doc)
        timers = self._timers
        while timers and timers[0][0] <= now:
            deadline, _, doc = heapq.heappop(timers)
            if self._armed.get(doc) != deadline:
                continue  # stale entry: the document re-armed or went away
            del self._armed[doc]
            before = doc.dirty
            try:
                doc.advance(now)
                self._arm(doc)
            except Exception:
                self._flush_failed(doc)
            if doc.dirty and not before and self._group_of.get(doc) == g:
                dirty.add(doc)  # (a document of another group flushes on its group's turn)
        for doc in dirty:
            # One document's failure (a bug, a backend that raises) stays in that document:
            # the others of this turn still flush, and it flushes again once it changes.
            try:
                batch = doc.flush(now)
                if batch is not None:
                    self._deliver(doc, batch, now)
            except Exception:
                self._flush_failed(doc)
            if doc.empty or (self.cluster is not None and self.cluster.unused(doc)):
                self._drop_document(doc)

    def _flush_failed(self, doc: Document) -> None:
        self.stats.flush_failures += 1
        if self._failure_log.allow():
            log.exception("flushing %s failed; its members may miss this batch", doc.doc_id)
        g = self._group_of.get(doc)
        if g is not None and doc.dirty:
            self.groups[g].add(doc)  # what it still holds goes out on its next turn

    def flush_all(self, now: int) -> None:
        """Every group's turn at once (shutdown: every document's pending events go out now,
        not on their group's turn)."""
        for _ in self.groups:
            self.tick(now)

    def _arm(self, doc: Document) -> None:
        d = doc.next_deadline_ms
        if d == NEVER or doc.empty:
            return
        current = self._armed.get(doc)
        if current is None or d < current:
            self._armed[doc] = d
            heapq.heappush(self._timers, (d, next(self._seq), doc))

    def _deliver(self, doc: Document, batch: Batch, now: int) -> None:
        st = self.stats
        frame = batch.frame
        slow: list[Client] = []
        sent = fan_out(
            self.local[doc.doc_id], batch.skip_sid, frame, self.config.max_send_backlog, slow
        )
        self.broker.publish(doc.doc_id, frame)
        st.frames_out += sent
        st.bytes_out += len(frame) * sent
        st.batch_sizes.observe(batch.event_count)
        for arrived in batch.cursor_arrivals:
            st.cursor_latency.observe((now - arrived) / 1000.0)
        self._close_slow(slow)

    def _close_slow(self, slow: list[Client]) -> None:
        for client in slow:
            log.info(
                "closing %s: send backlog over %d bytes",
                client.connection_id,
                self.config.max_send_backlog,
            )
            self.close_client(client, p.CLOSE_TOO_SLOW, "send backlog exceeded")

    def _drop_document(self, doc: Document) -> None:
        if self.documents.get(doc.doc_id) is doc:
            del self.documents[doc.doc_id]
            del self.local[doc.doc_id]
            self._armed.pop(doc, None)
            g = self._group_of.pop(doc, None)
            if g is not None:
                self._group_sizes[g] -= 1
                self.groups[g].discard(doc)
            self.broker.unsubscribe(doc.doc_id)
            if self.cluster is not None:
                self.cluster.forget(doc.doc_id)

    def on_remote_frame(self, doc_id: str, frame: bytes) -> None:
        """A BATCH from another node: forward the bytes unchanged to local members."""
        if self.cluster is not None:
            self.cluster.apply(doc_id, frame)  # mirror other nodes' members
        members = self.local.get(doc_id)
        if members:
            slow: list[Client] = []
            sent = fan_out(members, None, frame, self.config.max_send_backlog, slow)
            self.stats.frames_out += sent
            self.stats.bytes_out += len(frame) * sent
            self._close_slow(slow)

    async def run_ticker(self) -> None:
        """A group's turn every `batch_ms / flush_groups`, on a fixed schedule.

        A late turn does not shift the schedule: the next one comes sooner, so every group
        keeps one flush per `batch_ms` on average (a drifting schedule stretches every
        document's interval, and cursor moves further apart than one interval would then be
        coalesced away). Only when a whole interval behind (a stall) does it start afresh
        rather than run every missed turn back to back.
        """
        loop = asyncio.get_running_loop()
        interval = self.config.batch_ms / 1000.0 / len(self.groups)
        whole = self.config.batch_ms / 1000.0
        next_at = loop.time()
        while True:
            next_at += interval
            delay = next_at - loop.time()
            if delay < -whole:
                next_at = loop.time()
            # sleep(0) when late still lets the loop read sockets between two turns
            await asyncio.sleep(max(delay, 0.0))
            started = time.perf_counter()
            try:
                self.tick(self.clock())
            except Exception:  # a bug in one tick must not stop presence for everyone
                log.exception("tick failed")
            self.stats.tick_duration.observe(time.perf_counter() - started)
