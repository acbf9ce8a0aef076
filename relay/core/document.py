"""The per-document state machine: who is here, where they are, and what changed.

No I/O and no clock: every method takes `now_ms`. Changes are recorded, not sent: `flush`
turns everything that happened since the last flush into ONE encoded BATCH frame (queued
events in order, then one cursor event per moved session, latest position wins), which the
shell writes unchanged to every member. Timers (typing debounce, Idle, Away) are evaluated
by `advance`, which is a no-op until the earliest deadline any session has.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from relay.core import protocol as p
from relay.core.colors import assign_color
from relay.core.model import ActivityType, Session, UserInfo
from relay.exceptions import DocumentFull

NEVER = 2**63 - 1


@dataclass(frozen=True, slots=True)
class DocumentRules:
    """The subset of the relay's configuration the core needs (all times in ms)."""

    max_users_per_document: int = 1000
    max_sessions_per_user: int = 10
    typing_debounce_ms: int = 500
    activity_timeout_ms: int = 30_000
    away_after_ms: int = 300_000
    away_after_blur_ms: int = 60_000


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ costs ~1 us per batch
class Batch:
    """One encoded BATCH frame and what the shell needs to deliver and measure it."""

    frame: bytes
    # When every event in the batch came from one session, that session does not get it.
    skip_sid: int | None
    event_count: int
    # Arrival times of the cursor positions this batch carries (for the latency histogram).
    cursor_arrivals: list[int]


class Document:
    """Presence of one document on this node."""

    __slots__ = (
        "_authors",
        "_dirty_set",
        "_ebuf",
        "_ecount",
        "_marked",
        "_moved",
        "_next_sid",
        "_statuses",
        "doc_id",
        "next_deadline_ms",
        "rules",
        "sessions",
    )

    def __init__(
        self, doc_id: str, rules: DocumentRules, dirty_set: set[Any] | None = None
    ) -> None:
        self.doc_id = doc_id
        self.rules = rules
        self.sessions: dict[int, Session] = {}
        self._next_sid = 1
        # Queued events are encoded when they happen, so a flush only concatenates.
        self._ebuf = bytearray()
        self._ecount = 0
        self._authors: set[int] = set()
        self._moved: list[Session] = []
        self._statuses: list[Session] = []  # sessions whose status changed since the flush
        self.next_deadline_ms = NEVER
        # The owner's set of dirty documents: the document adds itself on its first change
        # after a flush, so the ticker only ever visits documents that changed.
        self._dirty_set = dirty_set
        self._marked = False

    # ------------------------------------------------------------ membership

    @property
    def dirty(self) -> bool:
        return bool(self._ecount or self._moved or self._statuses)

    @property
    def empty(self) -> bool:
        return not self.sessions

    def allocate_sid(self) -> int:
        # Monotonic: a sid is never reused while the document has members, so a late event
        # for a departed sid can never be mistaken for a newcomer.
        sid = self._next_sid
        self._next_sid += 1
        return sid

    def join(
        self, user: UserInfo, now_ms: int, sid: int | None = None, kind: int = p.KIND_PERSON
    ) -> Session:
        """Add a session; queue its `joined` event. Raises DocumentFull at capacity."""
        check_capacity(self.rules, self.sessions, user.user_id)
        if sid is None:
            sid = self.allocate_sid()
        else:
            self._next_sid = max(self._next_sid, sid + 1)
        color = self._color_for(user.user_id)
        s = Session(
            sid=sid,
            user=user,
            color=color,
            connected_at_ms=now_ms,
            last_active_ms=now_ms,
            kind=kind,
        )
        self.sessions[sid] = s
        self._queue(sid, (p.EV_JOINED, s.member()))
        self._schedule(now_ms + self.rules.activity_timeout_ms)
        return s

    def leave(self, sid: int, now_ms: int, reason: int = p.LEFT) -> Session | None:
        """Remove a session; queue its `left` event (with the reason). Unknown sids are
        ignored."""
        s = self.sessions.pop(sid, None)
        if s is None:
            return None
        s.cursor_moved = False  # its pending cursor (or status) must not follow its `left`
        s.status_moved = False
        self._queue(sid, (p.EV_LEFT, sid, reason))
        return s

    def disconnect(self, sid: int, now_ms: int) -> None:
        """The session's connection ended without a deliberate leave: it stays, shown
        DISCONNECTED (activity 5), and its Idle/Away timers stop until `reconnect`."""
        s = self.sessions[sid]
        if s.disconnected:
            return
        s.disconnected = True
        s.activity = ActivityType.DISCONNECTED
        self._queue(sid, (p.EV_ACTIVITY, sid, int(ActivityType.DISCONNECTED)))

    def reconnect(self, sid: int, now_ms: int) -> None:
        """The session was resumed: its activity is computed again (and announced)."""
        s = self.sessions[sid]
        if not s.disconnected:
            return
        s.disconnected = False
        self._schedule(self._refresh(s, now_ms))

    def snapshot(self) -> list[tuple[Any, ...]]:
        """Every member as a MEMBER array: the JOINED snapshot."""
        return [s.member() for s in self.sessions.values()]

    def _color_for(self, user_id: str) -> str:
        for s in self.sessions.values():
            if s.user.user_id == user_id:
                return s.color  # a second tab keeps the user's color
        return assign_color(user_id, (s.color for s in self.sessions.values()))

    # ------------------------------------------------------------ member actions

    def move_cursor(
        self,
        sid: int,
        cursor: tuple[int, int, int] | None,
        selection: tuple[int, int, int, bool] | None,
        now_ms: int,
    ) -> None:
        """Record the latest cursor (None clears cursor and selection). Coalesced."""
        s = self.sessions[sid]
        s.cursor = cursor
        s.selection = selection if cursor is not None else None
        s.cursor_arrived_ms = now_ms
        if not s.cursor_moved:
            s.cursor_moved = True
            self._moved.append(s)
            self._mark()
        self._act(s, now_ms)

    def set_typing(self, sid: int, typing: bool, now_ms: int) -> None:
        """A keystroke (`typing=True`, debounced) or an explicit stop."""
        s = self.sessions[sid]
        if typing:
            s.typing_until_ms = now_ms + self.rules.typing_debounce_ms
            self._schedule(s.typing_until_ms)
            if not s.typing:
                s.typing = True
                self._queue(sid, (p.EV_TYPING, sid, True))
        elif s.typing:
            s.typing = False
            self._queue(sid, (p.EV_TYPING, sid, False))
        self._act(s, now_ms)

    def set_viewport(self, sid: int, top: int, bottom: int, scroll_pct: float, now_ms: int) -> None:
        s = self.sessions[sid]
        pct = float(scroll_pct) + 0.0  # + 0.0 turns -0.0 into 0.0: one encoding per value
        s.viewport = (top, bottom, pct)
        self._queue(sid, (p.EV_VIEWPORT, sid, top, bottom, pct))
        self._act(s, now_ms)

    def set_status(self, sid: int, text: str | None, now_ms: int) -> None:
        """The member's status text (None clears it; "" is None). Coalesced like the
        cursor: one event per member per batch, the latest text."""
        s = self.sessions[sid]
        s.status = text or None
        if not s.status_moved:
            s.status_moved = True
            self._statuses.append(s)
            self._mark()
        self._act(s, now_ms)

    def set_focus(self, sid: int, focused: bool, now_ms: int) -> None:
        s = self.sessions[sid]
        if focused == s.focused:
            return
        s.focused = focused
        self._queue(sid, (p.EV_FOCUS, sid, focused))
        if focused:
            self._act(s, now_ms)  # coming back to the tab is an action
        else:
            s.blurred_at_ms = now_ms
            self._schedule(self._refresh(s, now_ms))

    # ------------------------------------------------------------ time

    def advance(self, now_ms: int) -> None:
        """Run the timers due by `now_ms`: typing stops, Idle and Away transitions."""
        if now_ms < self.next_deadline_ms:
            return
        nxt = NEVER
        for s in self.sessions.values():
            if s.remote:
                continue  # its own node drives its timers
            if s.typing and now_ms >= s.typing_until_ms:
                s.typing = False
                self._queue(s.sid, (p.EV_TYPING, s.sid, False))
            d = self._refresh(s, now_ms)
            if d < nxt:
                nxt = d
        self.next_deadline_ms = nxt

    # ------------------------------------------------------------ output

    def flush(self, now_ms: int) -> Batch | None:
        """Encode everything since the last flush as one BATCH frame, or None if nothing."""
        self._marked = False
        authors = self._authors
        arrivals: list[int] = []
        for s in self._moved:
            if not s.cursor_moved:
                continue
            s.cursor_moved = False
            arrivals.append(s.cursor_arrived_ms)
            authors.add(s.sid)
            self._ebuf += p.pack(cursor_event(s))
            self._ecount += 1
        self._moved = []
        for s in self._statuses:
            if not s.status_moved:
                continue
            s.status_moved = False
            authors.add(s.sid)
            self._ebuf += p.pack((p.EV_STATUS, s.sid, s.status))
            self._ecount += 1
        self._statuses = []
        count = self._ecount
        if not count:
            return None
        frame = p.batch_prefix(self.doc_id, now_ms, count) + self._ebuf
        self._ebuf = bytearray()
        self._ecount = 0
        self._authors = set()
        skip = next(iter(authors)) if len(authors) == 1 else None
        return Batch(frame, skip, count, arrivals)

    # ------------------------------------------------------------ reads

    def workspaces(self) -> Iterable[str]:
        return {s.user.workspace_id for s in self.sessions.values()}

    # ------------------------------------------------------------ internals

    def _queue(self, sid: int, event: tuple[Any, ...]) -> None:
        self._ebuf += p.pack(event)
        self._ecount += 1
        self._authors.add(sid)
        self._mark()

    def _mark(self) -> None:
        if not self._marked:
            self._marked = True
            if self._dirty_set is not None:
                self._dirty_set.add(self)

    def _schedule(self, deadline_ms: int) -> None:
        if deadline_ms < self.next_deadline_ms:
            self.next_deadline_ms = deadline_ms

    def _act(self, s: Session, now_ms: int) -> None:
        """The member did something: it is active again, and its activity may change."""
        s.last_active_ms = now_ms
        if not s.focused:
            s.blurred_at_ms = now_ms  # acting in a blurred tab restarts the blur clock
        self._schedule(self._refresh(s, now_ms))

    def _refresh(self, s: Session, now_ms: int) -> int:
        """Recompute the session's activity (queueing a change); return its next deadline."""
        if s.disconnected:  # held as it was: only a typing that runs out still changes
            return s.typing_until_ms if s.typing else NEVER
        r = self.rules
        idle_for = now_ms - s.last_active_ms
        blur_deadline = s.blurred_at_ms + r.away_after_blur_ms if not s.focused else NEVER
        if idle_for >= r.away_after_ms or now_ms >= blur_deadline:
            activity = ActivityType.AWAY
            deadline = NEVER
        elif idle_for >= r.activity_timeout_ms:
            activity = ActivityType.IDLE
            deadline = min(s.last_active_ms + r.away_after_ms, blur_deadline)
        else:
            if s.typing:
                activity = ActivityType.EDITING
            elif s.selection is not None:
                activity = ActivityType.SELECTING
            else:
                activity = ActivityType.VIEWING
            deadline = min(s.last_active_ms + r.activity_timeout_ms, blur_deadline)
        if s.typing and s.typing_until_ms < deadline:
            deadline = s.typing_until_ms
        if activity is not s.activity:
            s.activity = activity
            self._queue(s.sid, (p.EV_ACTIVITY, s.sid, int(activity)))
        return deadline


def check_capacity(rules: DocumentRules, sessions: dict[int, Any], user_id: str) -> None:
    """Raise DocumentFull when the document, or this user's share of it, is full.

    Mirrored sessions of other nodes count too, so the limits hold across the cluster (as
    far as this node's view of it is current). Both twins call this on join (cold path).
    """
    if len(sessions) >= rules.max_users_per_document:
        raise DocumentFull("document is at capacity")
    limit = rules.max_sessions_per_user
    if limit < rules.max_users_per_document:
        n = 0
        for s in sessions.values():
            if s.user.user_id == user_id:
                n += 1
        if n >= limit:  # one user (or one leaked token) must not fill a document
            raise DocumentFull(f"at most {limit} sessions of one user in a document")


def cursor_event(s: Session) -> tuple[Any, ...]:
    c = s.cursor
    if c is None:
        return (p.EV_CURSOR, s.sid)
    sel = s.selection
    if sel is None:
        return (p.EV_CURSOR, s.sid, c[0], c[1], c[2])
    return (p.EV_CURSOR, s.sid, c[0], c[1], c[2], sel[0], sel[1], sel[2], sel[3])
