"""The presence data model (the seed's structs, as slotted dataclasses).

`Session` is one open document in one tab: the unit that has a sid and a cursor. A user
with the document open twice has two sessions. `UserPresence` is the seed's record as other
services read it (HTTP, Redis); it is derived from a session, never stored twice.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import IntEnum
from typing import Any, Protocol


class ActivityType(IntEnum):
    """Wire codes from docs/protocol.md (MEMBER.activity, BATCH event 6)."""

    EDITING = 0
    VIEWING = 1
    SELECTING = 2
    IDLE = 3
    AWAY = 4
    DISCONNECTED = 5  # v1.1: the connection ended; the place is held for the grace

    @property
    def label(self) -> str:
        """The seed's enum name (`Editing`, ...), as HTTP and Redis readers expect it."""
        return self.name.capitalize()


# Positions travel as tuples so they can be packed as msgpack arrays without conversion.
Cursor = tuple[int, int, int]  # (line, column, offset)
Selection = tuple[int, int, int, bool]  # (anchor line, anchor column, anchor offset, backward)
Viewport = tuple[int, int, float]  # (top_line, bottom_line, scroll_percentage)


@dataclass(frozen=True, slots=True)
class UserInfo:
    """Who a connection is: from the token, or from HELLO in anonymous mode."""

    user_id: str
    name: str
    workspace_id: str = "default"
    avatar_url: str | None = None


@dataclass(slots=True, eq=False)
class Session:
    """One member of one document (one tab). Mutable: the document updates it in place."""

    sid: int
    user: UserInfo
    color: str
    connected_at_ms: int
    last_active_ms: int
    activity: ActivityType = ActivityType.VIEWING
    typing: bool = False
    typing_until_ms: int = 0
    focused: bool = True
    blurred_at_ms: int = 0
    cursor: Cursor | None = None
    selection: Selection | None = None
    viewport: Viewport | None = None
    # Hot-path slot: the latest unflushed cursor (coalescing) and when it arrived.
    cursor_moved: bool = False
    cursor_arrived_ms: int = 0
    # Sessions owned by another relay node are mirrored here but not driven by our timers.
    remote: bool = False
    # Its connection ended without a deliberate leave: shown DISCONNECTED, no timers.
    disconnected: bool = False
    # v1.1: 0 a person, 1 an agent (set over HTTP); a short free text ("presenting").
    kind: int = 0
    status: str | None = None
    # Hot-path slot: the status changed since the last flush (coalesced like the cursor).
    status_moved: bool = False

    def member(self) -> tuple[Any, ...]:
        """The MEMBER array of docs/protocol.md (v1.1: with kind and status)."""
        u = self.user
        return (
            self.sid,
            u.user_id,
            u.name,
            u.avatar_url,
            self.color,
            int(self.activity),
            self.typing,
            self.focused,
            self.cursor,
            self.selection,
            self.viewport,
            self.connected_at_ms,
            self.last_active_ms,
            self.kind,
            self.status,
        )


class SessionLike(Protocol):
    """What the backends and readers see of a session, whichever twin made it (the pure
    `Session` above, the compiled `relay._fast.Session`, a `StoredSession` read back)."""

    sid: int
    user: UserInfo
    color: str
    connected_at_ms: int
    last_active_ms: int
    activity: ActivityType
    typing: bool
    focused: bool
    cursor: Cursor | None
    selection: Selection | None
    viewport: Viewport | None
    cursor_arrived_ms: int
    remote: bool
    kind: int
    status: str | None

    def member(self) -> tuple[Any, ...]: ...


@dataclass(frozen=True, slots=True)
class UserPresenceSummary:
    """The seed's `UserPresenceSummary` (HTTP `/internal/presence/{doc}`)."""

    user_id: str
    name: str
    avatar_url: str | None
    activity: str
    last_active_at: int
    kind: str = "person"  # v1.1: "person" or "agent" (a member set over HTTP)
    status: str | None = None  # v1.1: the status text of one of the user's sessions

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def summarize(sessions: list[SessionLike]) -> list[UserPresenceSummary]:
    """Distinct users, each with their most recently active session's presence (and the
    status of the latest session that has one: a status set in one tab is the user's)."""
    by_user: dict[str, SessionLike] = {}
    status: dict[str, tuple[int, str]] = {}
    for s in sessions:
        uid = s.user.user_id
        seen = by_user.get(uid)
        if seen is None or s.last_active_ms > seen.last_active_ms:
            by_user[uid] = s
        text = getattr(s, "status", None)
        if text is not None and (uid not in status or s.last_active_ms > status[uid][0]):
            status[uid] = (s.last_active_ms, text)
    return [
        UserPresenceSummary(
            user_id=uid,
            name=s.user.name,
            avatar_url=s.user.avatar_url,
            activity=s.activity.label,
            last_active_at=s.last_active_ms,
            kind="agent" if getattr(s, "kind", 0) == 1 else "person",
            status=status[uid][1] if uid in status else None,
        )
        for uid, s in by_user.items()
    ]
