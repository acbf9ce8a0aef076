"""Who was here lately: the users who left a document, for JOINED's `recent` and HTTP's
`recently_left` (protocol v1.1, "MEMBER and JOINED, extended").

Every session's leave is recorded, per user (the latest leave wins); whether a user is
"recently left" is decided when the list is read, against who is present then. So a user
whose one tab closes while another stays is not listed, and two nodes that each see one of a
user's two sessions leave need not agree on which was the last: the reader's view of the
document decides. No I/O, no clock: times are arguments.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Any

from relay.core import protocol as p

MAX_LISTED = 20  # the protocol's bound on `recent`
# Kept per document: more than are listed, so users present again (filtered out when the list
# is read) do not push out those who really left.
MAX_KEPT = 64


@dataclass(frozen=True, slots=True)
class RecentUser:
    user_id: str
    name: str
    avatar_url: str | None
    color: str
    left_at_ms: int
    reason: int

    def wire(self) -> tuple[Any, ...]:
        """The RECENT array: [user_id, name, avatar_or_nil, color, left_at_ms, reason]."""
        return (self.user_id, self.name, self.avatar_url, self.color, self.left_at_ms, self.reason)

    def to_json(self) -> dict[str, Any]:
        """An entry of HTTP's `recently_left` (the reason by name, e.g. "LOST")."""
        reason = p.LEAVE_REASONS[self.reason] if 0 <= self.reason < len(p.LEAVE_REASONS) else "LEFT"
        return {
            "user_id": self.user_id,
            "name": self.name,
            "avatar_url": self.avatar_url,
            "left_at": self.left_at_ms,
            "reason": reason,
        }


class RecentLog:
    """The recent leaves of one document, newest last (insertion order is recency)."""

    __slots__ = ("_by_user", "window_ms")

    def __init__(self, window_ms: int) -> None:
        self.window_ms = window_ms
        self._by_user: dict[str, RecentUser] = {}

    def left(self, entry: RecentUser) -> None:
        """Record a leave; an older one than what is known of that user changes nothing (a
        store's copy merged after the live event)."""
        known = self._by_user.get(entry.user_id)
        if known is not None:
            if known.left_at_ms >= entry.left_at_ms:
                return
            del self._by_user[entry.user_id]  # re-inserted: newest last
        if self._by_user and entry.left_at_ms < next(reversed(self._by_user.values())).left_at_ms:
            # Out of order (merged from a store): place it by time.
            items = [*self._by_user.values(), entry]
            items.sort(key=lambda e: e.left_at_ms)
            self._by_user = {e.user_id: e for e in items}
        else:
            self._by_user[entry.user_id] = entry
        while len(self._by_user) > MAX_KEPT:
            del self._by_user[next(iter(self._by_user))]

    def merge(self, entries: Iterable[RecentUser]) -> None:
        for e in entries:
            self.left(e)

    def listing(
        self, now_ms: int, present: Collection[str], limit: int = MAX_LISTED
    ) -> list[RecentUser]:
        """Newest first: who left within the window and is not present now."""
        cutoff = now_ms - self.window_ms
        out: list[RecentUser] = []
        for e in reversed(self._by_user.values()):
            if e.left_at_ms < cutoff or len(out) >= limit:
                break
            if e.user_id not in present:
                out.append(e)
        return out

    def prune(self, now_ms: int) -> bool:
        """Forget leaves older than the window; True when nothing is left."""
        cutoff = now_ms - self.window_ms
        for user_id in [u for u, e in self._by_user.items() if e.left_at_ms < cutoff]:
            del self._by_user[user_id]
        return not self._by_user

    def __len__(self) -> int:
        return len(self._by_user)
