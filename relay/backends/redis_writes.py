"""Writes that the write-behind and the reaper share: this node's live sessions, the seed's
derived keys after sessions leave, the presence stream, `left`/`joined` BATCHes on the
channels, and the claim-based removal of a node's sessions.

Every write is a single-key command in a `pipeline(transaction=False)`; nothing needs two
keys to change atomically (docs/redis.md, "Redis Cluster").
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from relay.backends import redis_cluster
from relay.backends import redis_keys as k
from relay.backends.redis_keys import MemberRecord
from relay.backends.redis_pool import UNREACHABLE, Client
from relay.core import protocol as p
from relay.core.model import SessionLike
from relay.core.recent import RecentUser

log = logging.getLogger("relay.redis.store")


def now_ms() -> int:
    return int(time.time() * 1000)


def raise_unreachable(results: list[Any]) -> None:
    """A pipeline's results (raise_on_error=False): raise the first "unreachable" error,
    log the others (a bad reply must not stop the rest of a round trip)."""
    for r in results:
        if isinstance(r, UNREACHABLE):
            raise r
        if isinstance(r, Exception):
            log.warning("redis command failed: %s", r)


class LiveSessions:
    """This node's live sessions (references: a write always writes their current state)."""

    def __init__(self) -> None:
        self.by_doc: dict[str, dict[int, SessionLike]] = {}
        self._by_user: dict[tuple[str, str], dict[int, SessionLike]] = {}

    def add(self, doc_id: str, session: SessionLike) -> bool:
        """Record a session; True when it is new."""
        sid = session.sid
        live = self.by_doc.get(doc_id)
        if live is None:
            live = self.by_doc[doc_id] = {}
        if sid in live:
            live[sid] = session
            return False
        live[sid] = session
        ukey = (doc_id, session.user.user_id)
        by_user = self._by_user.get(ukey)
        if by_user is None:
            by_user = self._by_user[ukey] = {}
        by_user[sid] = session
        return True

    def remove(self, doc_id: str, session: SessionLike) -> bool:
        """Forget a session; False when it was not live."""
        sid = session.sid
        live = self.by_doc.get(doc_id)
        if live is None or live.pop(sid, None) is None:
            return False
        if not live:
            del self.by_doc[doc_id]
        ukey = (doc_id, session.user.user_id)
        by_user = self._by_user.get(ukey)
        if by_user is not None:
            by_user.pop(sid, None)
            if not by_user:
                del self._by_user[ukey]
        return True

    def best(self, doc_id: str, user_id: str) -> SessionLike | None:
        """The user's most recently active session here (the seed keeps one per user)."""
        sessions = self._by_user.get((doc_id, user_id))
        if not sessions:
            return None
        return max(sessions.values(), key=lambda s: s.last_active_ms)


class Writer:
    """The shared writes, bound to this node (its id, stream settings, live sessions)."""

    def __init__(
        self,
        redis: Client,
        node_id: str,
        live: LiveSessions,
        stream: str,
        stream_maxlen: int,
        deliver_local: Callable[[str, bytes], None] | None,
        recent_window_ms: int = 0,
    ) -> None:
        self.redis = redis
        self.node_id = node_id
        self._nid = node_id.encode()
        self.live = live
        self.stream = stream
        self.stream_maxlen = stream_maxlen
        self.deliver_local = deliver_local
        self.recent_window_ms = recent_window_ms
        self.reaped = 0

    def recent_left(
        self, pipe: Any, doc_id: str, user: Any, color: str, reason: int, at_ms: int
    ) -> None:
        """A session left: its user goes into the document's `recent` hash (the latest leave
        per user; who is still present is filtered out when the list is read). The key lives
        for the window after the last leave: an idle document's list goes by itself."""
        if self.recent_window_ms <= 0:
            return
        entry = RecentUser(user.user_id, user.name, user.avatar_url, color, at_ms, reason)
        key = k.recent_key(doc_id)
        pipe.hset(key, user.user_id, k.recent_value(entry))
        pipe.pexpire(key, self.recent_window_ms)

    def stream_event(
        self,
        pipe: Any,
        kind: str,
        doc_id: str,
        user_id: str,
        workspace_id: str,
        sid: int,
        reason: int | None = None,
    ) -> None:
        """One `joined` / `left` entry of the presence stream: the seed's fields, then the
        session's `sid` and, for `left`, its `reason` by name (what webhooks need to tell a
        user's first and last session apart: relay/server/webhook_stream.py)."""
        fields = {
            "type": kind,
            "user_id": user_id,
            "document_id": doc_id,
            "workspace_id": workspace_id,
            "timestamp": str(now_ms()),
            "sid": str(sid),
        }
        if reason is not None:
            names = p.LEAVE_REASONS
            fields["reason"] = names[reason] if 0 <= reason < len(names) else str(reason)
        pipe.xadd(self.stream, fields, maxlen=self.stream_maxlen, approximate=True)

    def publish_batches(
        self, pipe: Any, events: dict[str, list[tuple[Any, ...]]], deliver: bool = False
    ) -> None:
        """A BATCH per document on its channel (and to this node's members, `deliver`)."""
        ts = now_ms()
        for doc_id, evs in events.items():
            if not evs:
                continue
            frame = p.encode_batch(doc_id, ts, evs)
            redis_cluster.publish(pipe, k.channel(doc_id), k.envelope(self._nid, frame))
            if deliver and self.deliver_local is not None:
                self.deliver_local(doc_id, frame)

    def fix_derived(
        self,
        pipe: Any,
        doc_id: str,
        removed: Iterable[SessionLike | MemberRecord],
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
            best: SessionLike | None = self.live.best(doc_id, uid)
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
        local = self.live.by_doc.get(doc_id, {})
        for ws in set(users.values()):
            if any(r.workspace_id == ws for r in remaining):
                continue
            if any(s.user.workspace_id == ws for s in local.values()):
                continue
            pipe.srem(k.workspace_key(ws), doc_id)

    async def remove_sessions(
        self, doc_id: str, sids: list[int], node_id: str, publish: bool, reason: int
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
        at = now_ms()
        for r in gone:
            self.stream_event(pipe, "left", doc_id, r.user_id, r.workspace_id, r.sid, reason)
            self.recent_left(pipe, doc_id, k.user_from_record(r), r.member[4], reason, at)
        if publish and gone:
            self.publish_batches(
                pipe, {doc_id: [(p.EV_LEFT, r.sid, reason) for r in gone]}, deliver=True
            )
        self.fix_derived(pipe, doc_id, gone, remaining)
        raise_unreachable(await pipe.execute(raise_on_error=False))
        self.reaped += len(gone)
