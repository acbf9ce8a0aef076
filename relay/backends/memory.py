"""The embedded backends: everything in this process, nothing to install.

`MemoryStore` keeps references to live sessions, so "writing" is a dict update and reads
see the current state. `MemoryBus` connects `MemoryBroker`s in one process (what the
contract tests and multi-node tests without Redis use); a single relay has a bus to itself.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict

from relay.backends.base import Broker, BrokerCallback, PresenceStore
from relay.core.model import SessionLike, UserPresenceSummary, summarize


class MemoryStore(PresenceStore):
    def __init__(self) -> None:
        # doc_id -> {(node-local identity of the session object): session}
        self._docs: dict[str, dict[int, SessionLike]] = defaultdict(dict)

    def session_changed(self, doc_id: str, session: SessionLike) -> None:
        self._docs[doc_id][id(session)] = session

    def session_left(self, doc_id: str, session: SessionLike, reason: int = 0) -> None:
        sessions = self._docs.get(doc_id)
        if sessions is None:
            return
        sessions.pop(id(session), None)
        if not sessions:
            del self._docs[doc_id]

    async def document_users(self, doc_id: str) -> list[UserPresenceSummary]:
        return summarize(list(self._docs.get(doc_id, {}).values()))

    async def workspace_documents(self, workspace_id: str) -> dict[str, int]:
        out = {}
        for doc_id, sessions in self._docs.items():
            # Only this workspace's users: a document may hold members of several
            # workspaces (tokens grant documents, not workspaces), and another workspace's
            # people are none of this one's business.
            users = {
                s.user.user_id for s in sessions.values() if s.user.workspace_id == workspace_id
            }
            if users:
                out[doc_id] = len(users)
        return out


class MemoryBus:
    """An in-process stand-in for pub/sub: delivers to every other subscribed broker."""

    def __init__(self) -> None:
        self.subscribers: dict[str, set[MemoryBroker]] = defaultdict(set)


class MemoryBroker(Broker):
    def __init__(self, bus: MemoryBus | None = None, node_id: str | None = None) -> None:
        self.bus = bus or MemoryBus()
        self.node_id = node_id or uuid.uuid4().hex[:12]
        self._callback: BrokerCallback | None = None

    def set_callback(self, callback: BrokerCallback) -> None:
        self._callback = callback

    def subscribe(self, doc_id: str) -> None:
        self.bus.subscribers[doc_id].add(self)

    def unsubscribe(self, doc_id: str) -> None:
        subs = self.bus.subscribers.get(doc_id)
        if subs is not None:
            subs.discard(self)
            if not subs:
                del self.bus.subscribers[doc_id]

    def publish(self, doc_id: str, frame: bytes) -> None:
        subs = self.bus.subscribers.get(doc_id)
        if not subs:
            return
        loop = asyncio.get_running_loop()
        for broker in subs:
            # Delivered on a later loop iteration, like a network hop: never re-entrant.
            if broker is not self and broker._callback is not None:
                loop.call_soon(broker._callback, doc_id, frame, self.node_id)

    async def close(self) -> None:
        for doc_id in list(self.bus.subscribers):
            self.unsubscribe(doc_id)
