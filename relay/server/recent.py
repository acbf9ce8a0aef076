"""This node's book of recent leaves, one `RecentLog` per document (relay/core/recent.py).

Fed by every leave the node sees: its own members' (hub), the mirrored members of other nodes
(their `left` events, and a resync's LOST), and with them the reaper's NODE_DOWN (published as
`left` to every node). Read without waiting, for JOINED and HTTP. With Redis the store keeps a
copy (`presence:<doc>:recent`), written by whoever records a leave, and merged in when a
document opens on this node, so a node that had nobody in a document when someone left it
still lists them. A log outlives its document (the next joiner of an emptied document is who
`recent` is for) until its entries are older than the window.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from relay.core.model import SessionLike
from relay.core.recent import RecentLog, RecentUser

PRUNE_EVERY = 256  # records between sweeps of expired logs


class RecentBook:
    def __init__(self, window_ms: int) -> None:
        self.window_ms = window_ms
        self.logs: dict[str, RecentLog] = {}
        self._records = 0

    @property
    def enabled(self) -> bool:
        return self.window_ms > 0

    def left(self, doc_id: str, s: SessionLike, reason: int, at_ms: int) -> RecentUser | None:
        """Record a session's leave; returns the entry (for the store), None when off."""
        if not self.enabled:
            return None
        u = s.user
        entry = RecentUser(u.user_id, u.name, u.avatar_url, s.color, at_ms, reason)
        self._log(doc_id).left(entry)
        self._records += 1
        if self._records % PRUNE_EVERY == 0:
            self.prune(at_ms)
        return entry

    def merge(self, doc_id: str, entries: Iterable[RecentUser]) -> None:
        if self.enabled:
            self._log(doc_id).merge(entries)

    def listing(self, doc_id: str, now_ms: int, present: Iterable[str]) -> list[RecentUser]:
        log = self.logs.get(doc_id)
        if log is None:
            return []
        return log.listing(now_ms, set(present))

    def wire(self, doc_id: str, now_ms: int, sessions: Iterable[Any]) -> list[tuple[Any, ...]]:
        """JOINED's `recent` for a document whose members (local and mirrored) are `sessions`."""
        present = {s.user.user_id for s in sessions}
        return [e.wire() for e in self.listing(doc_id, now_ms, present)]

    def prune(self, now_ms: int) -> None:
        for doc_id in [d for d, log in self.logs.items() if log.prune(now_ms)]:
            del self.logs[doc_id]

    def _log(self, doc_id: str) -> RecentLog:
        log = self.logs.get(doc_id)
        if log is None:
            log = self.logs[doc_id] = RecentLog(self.window_ms)
        return log
