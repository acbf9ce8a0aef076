"""The hub: what joins a connection's session to this node's shared state.

Each connection has a sans-I/O `Session` (relay/core/session.py) that holds the protocol
rules. The hub feeds it what arrives (from the inbound fast path and the connection
handler; synchronous: nothing on the way in awaits) and carries out its actions: replies and
closes through the outlet, joins and leaves through the registry (and, on shared Redis, the
cluster's async join), the session's timer (no HELLO in time, the token's `exp`). Batches go
out on the ticker's turns; batches from other nodes arrive in `on_remote_frame`.

    connection / fastpath -> Hub -> Session (rules) -> actions -> Outlet (socket)
                                                               -> Registry (documents)
    Ticker (flush groups, timers) -> Outlet, Broker            Cluster (mirror) -> Registry
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import time
from collections.abc import Callable, Coroutine
from typing import Any

from relay.auth import Grant, anonymous_grant, verify_token
from relay.backends.base import Broker, PresenceStore
from relay.config import PresenceConfig
from relay.core import protocol as p
from relay.core.recent import RecentUser
from relay.core.session import (
    CLOSED,
    OPEN,
    SUSPENDED,
    Close,
    Join,
    Leave,
    Opened,
    Resume,
    Send,
    Session,
    Suspend,
    new_peer,
)
from relay.exceptions import AuthError, DocumentFull, ProtocolError
from relay.server.agents import Agents
from relay.server.client import Client
from relay.server.cluster import Cluster
from relay.server.handover import CONTROL, Handover, token_hash
from relay.server.logbudget import LogBudget
from relay.server.outlet import Outlet
from relay.server.recent import RecentBook
from relay.server.registry import Registry
from relay.server.stats import Stats
from relay.server.ticker import Ticker
from relay.twin import NEVER, Document, Membership, Peer, TokenBucket

log = logging.getLogger("relay.hub")
conn_log = logging.getLogger("relay.connection")


def wall_ms() -> int:
    return int(time.time() * 1000)


class Hub:
    def __init__(
        self,
        config: PresenceConfig,
        store: PresenceStore,
        broker: Broker,
        clock: Callable[[], int] = wall_ms,
    ) -> None:
        self.config = config
        self.store = store
        self.broker = broker
        self.clock = clock
        self.stats = Stats()
        self.session_rules = config.session_rules()
        self.welcome_settings = config.welcome_settings()
        self.registry = Registry(config.document_rules(), config.flush_groups)
        self.registry.on_open.append(broker.subscribe)
        self.registry.on_drop.append(lambda doc: broker.unsubscribe(doc.doc_id))
        self._tasks: set[asyncio.Task[Any]] = set()
        self.outlet = Outlet(config, self.stats, self._spawn)
        # Who left lately, per document (JOINED's `recent`, HTTP's `recently_left`).
        self.recent = RecentBook(config.recent_window_s * 1000)
        # Observers of this node's own members coming and going (a session admitted to a
        # document; a session that left it, with the reason): called after the document
        # changed, on the event loop, and must not block (webhooks without Redis use them).
        self.on_member_joined: list[Callable[[Document, Any], None]] = []
        self.on_member_left: list[Callable[[Document, Any, int], None]] = []
        # Members set over HTTP (PUT /internal/presence/{doc}/members/{id}).
        self.agents = Agents(self)
        # Shared presence (Redis): async joins and the mirror of other nodes' members.
        self.cluster = (
            Cluster(self.registry, store, broker, clock, config.presence_ttl_seconds,
                    self._deliver_local, self.recent)
            if store.clustered
            else None
        )  # fmt: skip
        # Resumes through other nodes and rolling deploys (shared Redis only).
        self.handover = Handover(self) if self.cluster is not None else None
        self.ticker = Ticker(
            self.registry, self.outlet, broker, self.stats, config.batch_ms, self._close_slow,
            self.cluster.unused if self.cluster is not None else None,
        )  # fmt: skip
        self.clients: set[Client] = set()  # past HELLO, with a live connection
        # Sessions a HELLO may resume, by the hash of their WELCOME's resume_token (the key
        # of their Redis record too): open ones and held (suspended) ones, until they end.
        # A token is used once: a resume removes it.
        self.resumable: dict[str, Client] = {}
        self.grace_ms = config.reconnect_grace_ms
        # Every accepted TCP connection until it is closed, HELLO or not (added and removed
        # by RelayConnection): what max_connections counts and what a shutdown must end.
        self.sockets: set[Any] = set()
        self._ids = itertools.count(1)
        # Refused HELLOs, at most 20 lines per 10 s (a client retrying in a loop).
        self.refusals = LogBudget(conn_log, 20, 10.0)
        broker.set_callback(self.on_remote_frame)

    # ------------------------------------------------------------ the registry's state

    @property
    def documents(self) -> dict[str, Document]:
        return self.registry.documents

    @property
    def local(self) -> dict[str, dict[int, Client]]:
        return self.registry.local

    @property
    def groups(self) -> list[set[Document]]:
        return self.registry.groups

    def tick(self, now: int) -> None:
        self.ticker.tick(now)

    def flush_all(self, now: int) -> None:
        self.ticker.flush_all(now)

    async def run_ticker(self) -> None:
        await self.ticker.run(self.clock)

    # ------------------------------------------------------------ connections

    def open_session(self, ws: Any) -> Client:
        """A new connection (before HELLO): its session, and its timer for the HELLO."""
        now = self.clock()
        rules = self.session_rules
        token = secrets.token_urlsafe(18)  # 144 random bits: unguessable, offered in WELCOME
        session = Session(
            rules,
            self.welcome_settings,
            self._authenticate,
            f"{self.broker.node_id}-{next(self._ids)}",
            now,
            new_peer(rules, now, Peer, TokenBucket, self.stats.hot),  # the twin's (compiled)
            self.stats.sessions,
            token,
        )
        client = Client(ws, session, token_hash(token))
        self._arm(client)
        return client

    def _authenticate(self, token: str | None, info: dict[Any, Any]) -> Grant:
        secret = self.config.jwt_secret
        if secret is None:
            if token is not None:
                raise AuthError("this relay runs without a JWT secret: send a nil token")
            return anonymous_grant(info)
        if token is None:
            raise AuthError("a token is required")
        return verify_token(token, secret)

    def receive(self, client: Client, data: bytes) -> None:
        """One binary message (from websockets, or held by the fast path). Never raises for
        bad input."""
        client.session.receive(data, self.clock())
        self._run(client)

    def on_unapplied(self, client: Client, data: bytes, handled: int, now: int) -> None:
        """A frame the fast path's hot path did not apply."""
        client.session.unapplied(data, handled, now)
        self._run(client)

    def receive_text(self, client: Client) -> None:
        client.session.receive_text(self.clock())
        self._run(client)

    def close_client(self, client: Client, code: int, reason: str) -> None:
        """Leave every document at once, then close the socket in the background: the
        closing handshake, cut short by an abort after `close_timeout_s`."""
        client.session.close(code, reason)
        self._run(client)

    def disconnect(self, client: Client) -> None:
        """The connection is gone (or going). A deliberate close (1000 from the client)
        leaves every document now; any other end suspends the session: its members are
        shown DISCONNECTED and held for `reconnect_grace_ms`, for a resume to take over."""
        session = client.session
        why = ended_by(client.ws)
        if session.state == OPEN and why is None:
            session.suspend(self.clock(), self.grace_ms)
        else:
            session.detach(p.LEFT if why is None else why)
        self._run(client)
        self.clients.discard(client)
        if session.state == SUSPENDED:
            client.detach()  # the dead socket is let go; the record stays in its documents

    def end_suspended(self, reason: int) -> None:
        """End every held session now (a shutdown without shared state)."""
        for client in list(self.resumable.values()):
            if client.session.state == SUSPENDED:
                client.session.detach(reason)
                self._run(client)

    # ------------------------------------------------------------ the session's actions

    def _run(self, client: Client) -> None:
        """Carry out what the session asked for, until it asks for nothing more."""
        session = client.session
        actions = session.actions()
        suspended = left = False
        while actions:
            for action in actions:
                if type(action) is Send:
                    if not self.outlet.send(client, action.frame):
                        log.info(
                            "closing %s: send backlog over %d bytes",
                            client.connection_id,
                            self.config.max_send_backlog,
                        )
                        session.close(p.CLOSE_TOO_SLOW, "send backlog exceeded")
                elif type(action) is Join:
                    self._join(client, action.handle, action.doc_id)
                elif type(action) is Leave:
                    self._leave(action.member, action.reason)
                    left = True
                elif type(action) is Suspend:
                    self._suspend(action.member)
                    suspended = True
                elif type(action) is Close:
                    self._close(client, action)
                elif type(action) is Resume:
                    self._resume(client, action.token)
                elif type(action) is Opened:
                    self.clients.add(client)
                    self.resumable[client.resume_key] = client
                    if self.handover is not None:
                        self.handover.opened(client)
                    self.stats.connections_total += 1
                    enable = getattr(client.ws, "enable_fast_path", None)
                    if enable is not None:
                        # From here on, whole binary frames may go straight to the session.
                        enable(client)
            actions = session.actions()
        if session.state is CLOSED:
            if self.resumable.get(client.resume_key) is client:
                del self.resumable[client.resume_key]
                if self.handover is not None:
                    self.handover.ended(client)
        elif self.handover is not None:
            if suspended:
                self.handover.suspended(client, self.grace_ms)
            elif left and session.state is OPEN:
                self.handover.changed(client)
        self._arm(client)

    def _close(self, client: Client, action: Close) -> None:
        if action.code == p.CLOSE_UNAUTHENTICATED and client not in self.clients:
            if self.refusals.allow():  # the reason never includes the token itself
                conn_log.info("refused HELLO from %s: %s", client.ws.remote_address,
                              action.reason)  # fmt: skip
        elif action.reason == "token expired":
            log.info("closing %s: token expired", client.connection_id)
        self.outlet.close(client, action.code, action.reason)

    def _arm(self, client: Client) -> None:
        """Wake the session at its deadline (the timer is re-armed only when it moved)."""
        session = client.session
        at = session.deadline() if not client.closing else NEVER
        if at == client.timer_at:
            return
        if client.timer is not None:
            client.timer.cancel()
            client.timer = None
        client.timer_at = at
        if at != NEVER:
            delay = max(0.0, (at - self.clock()) / 1000.0)
            client.timer = asyncio.get_running_loop().call_later(delay, self._wake, client)

    def _wake(self, client: Client) -> None:
        client.timer = None
        client.timer_at = -1
        client.session.advance(self.clock(), self.grace_ms)
        self._run(client)

    # ------------------------------------------------------------ suspend / resume

    def _suspend(self, member: Membership) -> None:
        doc = member.doc
        now = self.clock()
        doc.disconnect(member.sid, now)
        self.store.session_changed(doc.doc_id, doc.sessions[member.sid])

    def _resume(self, client: Client, token: str) -> None:
        """HELLO asked to resume `token`: take the old session over when it is this user's
        and still held (or open); otherwise WELCOME says `resumed: false`."""
        session = client.session
        now = self.clock()
        key = token_hash(token)
        old = self.resumable.get(key)
        if old is None and self.handover is not None:
            self._spawn(self.handover.resume(client, token))  # held by another node?
            return
        if old is None or old is client or not old.session.resumable_by(session.grant):
            session.resume_refused(now)
            return
        del self.resumable[key]  # valid once
        peer, bad_frames = old.session.take_over()
        self._run(old)  # an old socket still open is closed with 4409
        members = []
        for h, m in peer.handles.items():
            doc = m.doc
            local = self.registry.local.get(doc.doc_id)
            if local is not None:
                local[m.sid] = client
            doc.reconnect(m.sid, now)
            self.store.session_changed(doc.doc_id, doc.sessions[m.sid])
            members.append((h, m, doc.snapshot(), self.recent_of(doc, now)))
        session.resumed(peer, bad_frames, members, now)
        self.stats.updates["resumed"] += 1

    # ------------------------------------------------------------ join / leave (cold path)

    def _join(self, client: Client, h: int, doc_id: str) -> None:
        session = client.session
        if self.cluster is not None:  # needs Redis round trips: finish it in a task
            self._spawn(self._cluster_join(client, h, doc_id))
            return
        doc = self.registry.open(doc_id)
        try:
            member = self.registry.join(client, doc, client.user, self.clock())
        except DocumentFull as exc:  # (a new document is never full: both limits are >= 1)
            if doc.empty:
                self.registry.drop(doc)
            session.join_refused(h, p.DOCUMENT_AT_CAPACITY, str(exc), self.clock())
            return
        self._admitted(client, h, member)

    async def _cluster_join(self, client: Client, h: int, doc_id: str) -> None:
        cluster = self.cluster
        assert cluster is not None
        session = client.session
        cluster.begin(doc_id)
        try:
            doc, sid = await cluster.prepare(doc_id)
            if client.closing:
                return
            if self.registry.get(doc_id) is not doc:  # cannot happen while joining; be safe
                raise ProtocolError(p.UNAVAILABLE, "document reloaded; join again", h)
            try:
                member = self.registry.join(client, doc, client.user, self.clock(), sid=sid)
            except DocumentFull as exc:
                raise ProtocolError(p.DOCUMENT_AT_CAPACITY, str(exc), h) from None
            self._admitted(client, h, member)
        except ProtocolError as exc:
            session.join_refused(h, exc.code, exc.message, self.clock())
        except Exception:
            log.exception("join of %s failed", doc_id)
            session.join_refused(h, p.UNAVAILABLE, "join failed; try again", self.clock())
        finally:
            cluster.end(doc_id)
            self._run(client)

    async def recently_left(self, doc_id: str, present: set[str]) -> list[RecentUser]:
        """HTTP's `recently_left`: this node's book, with the store's copy merged in first
        (with Redis, the leaves of documents this node has nobody in are only there)."""
        if self.store.clustered and self.recent.enabled:
            self.recent.merge(doc_id, await self.store.load_recent(doc_id))
        return self.recent.listing(doc_id, self.clock(), present)

    def recent_of(self, doc: Document, now: int) -> list[tuple[Any, ...]]:
        """JOINED's `recent`: who left lately and is not among the members now."""
        return self.recent.wire(doc.doc_id, now, doc.sessions.values())

    def _admitted(self, client: Client, h: int, member: Membership) -> None:
        doc = member.doc
        now = self.clock()
        client.session.joined(h, member, doc.snapshot(), now, self.recent_of(doc, now))
        self.store.session_changed(doc.doc_id, doc.sessions[member.sid])
        for joined in self.on_member_joined:
            joined(doc, doc.sessions[member.sid])
        if self.handover is not None:
            self.handover.changed(client)
        self.stats.updates["joined"] += 1

    def _leave(self, member: Membership, reason: int) -> None:
        now = self.clock()
        session = self.registry.leave(member, now, reason)
        if session is not None:
            self.store.session_left(member.doc.doc_id, session, reason)
            self.recent.left(member.doc.doc_id, session, reason, now)
            self.stats.updates["left"] += 1
            for left in self.on_member_left:
                left(member.doc, session, reason)

    # ------------------------------------------------------------ outbound

    def _close_slow(self, slow: list[Client]) -> None:
        for client in slow:
            log.info(
                "closing %s: send backlog over %d bytes",
                client.connection_id,
                self.config.max_send_backlog,
            )
            self.close_client(client, p.CLOSE_TOO_SLOW, "send backlog exceeded")

    def on_remote_frame(self, doc_id: str, frame: bytes, origin: str = "") -> None:
        """A BATCH from another node (`origin`; "" from this node's reaper): forward the
        bytes unchanged to local members."""
        if doc_id.startswith(CONTROL):  # not a document: this node's control channel
            if self.handover is not None:
                self.handover.on_control(frame)
            return
        if self.cluster is not None:
            self.cluster.apply(doc_id, frame, origin)  # mirror other nodes' members
        members = self.registry.members(doc_id)
        if members:
            slow: list[Client] = []
            self.outlet.batch(members, None, frame, slow)
            self._close_slow(slow)

    def _deliver_local(self, doc_id: str, events: list[tuple[Any, ...]]) -> None:
        """A resync's difference, to this node's members only (same rules as any batch)."""
        members = self.registry.members(doc_id)
        if members:
            slow: list[Client] = []
            self.outlet.batch(members, None, p.encode_batch(doc_id, self.clock(), events), slow)
            self._close_slow(slow)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """A background task the hub keeps a reference to until it ends."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task


def ended_by(ws: Any) -> int | None:
    """Why a connection the session did not close ended, when that ends the session too:
    LEFT when the client closed it on purpose (1000: an SDK's close(), after LEAVE; a tab
    going away sends 1001, which is held for a resume), EVICTED when websockets failed it
    (a protocol error, a frame too big: the server's close frame went first). None: it was
    lost, and is held for a resume."""
    protocol = getattr(ws, "protocol", None)
    rcvd = getattr(protocol, "close_rcvd", None)
    sent = getattr(protocol, "close_sent", None)
    if sent is not None and getattr(protocol, "close_rcvd_then_sent", None) is not True:
        return p.EVICTED
    if rcvd is not None and rcvd.code == 1000:
        return p.LEFT
    return None
