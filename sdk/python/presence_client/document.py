"""Documents joined on a connection: members, events, and the local presence senders.

One roster per user (v1.1): a user with the document open in two tabs is two members (two
sids) and one user. `Document.users()` groups the members by user id; `UserJoined` comes
(after the `Joined`) when a user's first session appears and `UserLeft` (after the `Left`)
when its last session goes, so a second tab coming and going is a `Joined` and a `Left` but
no user arriving or leaving. Neither is emitted for the document's own user (the user id of
`doc.me`): while this session is here, that user never leaves. `Document.recent` lists the
users who left a little while ago (JOINED's `recent`, then kept current from the batches).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, TypeAlias

from .errors import RelayClientError, RelayError
from .protocol import (
    ALREADY_JOINED,
    CURSOR,
    EV_ACTIVITY,
    EV_CURSOR,
    EV_FOCUS,
    EV_JOINED,
    EV_LEFT,
    EV_STATUS,
    EV_TYPING,
    EV_VIEWPORT,
    FOCUS,
    KIND_AGENT,
    KIND_PERSON,
    MAX_STATUS_CHARS,
    STATUS,
    TYPING,
    VIEWPORT,
    pack,
)
from .throttle import Throttle

if TYPE_CHECKING:
    from .connection import Connection

__all__ = [
    "Activity",
    "ActivityState",
    "CursorMoved",
    "Document",
    "ErrorEvent",
    "Event",
    "Focus",
    "Joined",
    "Kind",
    "LeaveReason",
    "Left",
    "Member",
    "RecentUser",
    "Resynced",
    "Status",
    "Typing",
    "User",
    "UserJoined",
    "UserLeft",
    "Viewport",
]

log = logging.getLogger("presence_client")

Cursor: TypeAlias = tuple[int, int, int]
"""`(line, col, offset)`: the selection's head."""
Selection: TypeAlias = tuple[int, int, int, bool]
"""`(anchor_line, anchor_col, anchor_offset, backward)`."""
ViewportRange: TypeAlias = tuple[int, int, float]
"""`(top_line, bottom_line, scroll_pct)`."""

MAX_RECENT = 20
"""JOINED's `recent` lists at most this many users, and `Document.recent` keeps to it."""


# ---------------------------------------------------------------------------- members


class ActivityState(enum.IntEnum):
    """Server-computed activity of a member."""

    EDITING = 0
    VIEWING = 1
    SELECTING = 2
    IDLE = 3
    AWAY = 4
    DISCONNECTED = 5  # v1.1: its connection ended without a leave; its place is held


class LeaveReason(enum.IntEnum):
    """Why a member left: the `reason` of a v1.1 `left` event (`protocol.LEAVE_REASONS`)."""

    LEFT = 0  # LEAVE, or a deliberate close (an SDK's close())
    LOST = 1  # its connection ended otherwise and was not resumed within the grace
    NODE_DOWN = 2  # the relay node that held it died, and it was not resumed elsewhere
    EVICTED = 3  # the relay closed its connection (4400, 4401, 4408, 4429)
    EXPIRED = 4  # a member set over HTTP reached the end of its ttl_s
    SHUTDOWN = 5  # a relay without shared state shut down gracefully


class Kind(enum.IntEnum):
    """What a member is: MEMBER's `kind` (v1.1; a v1 relay's member is a person)."""

    PERSON = KIND_PERSON
    AGENT = KIND_AGENT  # a member set over HTTP: an agent, a bot, a service


def _activity(v: Any) -> int:
    try:
        return ActivityState(v)
    except ValueError:
        return int(v)


def _leave_reason(v: Any) -> int | None:
    if type(v) is not int:  # absent (a v1 relay sends [3, sid]) or not a number
        return None
    try:
        return LeaveReason(v)
    except ValueError:
        return v  # a newer relay's reason: kept as it came


def _kind(v: Any) -> int:
    if type(v) is not int:  # absent (a v1 relay's 13-element MEMBER) or not a number
        return Kind.PERSON
    try:
        return Kind(v)
    except ValueError:
        return v  # a newer relay's kind: kept as it came


def _status(v: Any) -> str | None:
    """A status from the wire: a non-empty text, else None (an empty status is no status)."""
    return v if isinstance(v, str) and v else None


def _reason_name(reason: int | None) -> str | None:
    if reason is None:
        return None
    try:
        return LeaveReason(reason).name
    except ValueError:
        return "UNKNOWN"


def _check_status(text: object) -> str | None:
    """The status `set_status` sends: None (clear) for None or ""; a str of at most
    MAX_STATUS_CHARS characters (code points, as the relay counts them)."""
    if text is None or text == "":
        return None
    if not isinstance(text, str):
        raise TypeError(f"a status is a str or None, not {type(text).__name__}")
    if len(text) > MAX_STATUS_CHARS:
        raise ValueError(f"a status is at most {MAX_STATUS_CHARS} characters, not {len(text)}")
    return text


def _cursor(v: Any) -> Cursor | None:
    return None if v is None else (v[0], v[1], v[2])


def _selection(v: Any) -> Selection | None:
    return None if v is None else (v[0], v[1], v[2], bool(v[3]))


def _viewport(v: Any) -> ViewportRange | None:
    return None if v is None else (v[0], v[1], v[2])


@dataclass(slots=True)
class Member:
    """One session in a document (a user with two tabs open is two members)."""

    sid: int
    user_id: str
    name: str
    avatar: str | None
    color: str
    activity: int
    typing: bool
    focused: bool
    cursor: Cursor | None
    selection: Selection | None
    viewport: ViewportRange | None
    connected_at_ms: int
    last_active_ms: int
    kind: int = Kind.PERSON
    """A `Kind` (a plain int for a kind newer than this SDK); PERSON from a v1 relay."""
    status: str | None = None
    """A short text shown next to the member ("presenting"), or None (v1.1)."""

    @property
    def disconnected(self) -> bool:
        """True while the member's connection is gone and the relay holds its place for a
        resume (activity DISCONNECTED): draw it greyed out rather than remove it."""
        return self.activity == ActivityState.DISCONNECTED

    @property
    def agent(self) -> bool:
        """True for a member set over HTTP (an agent, a bot, a service): kind AGENT."""
        return self.kind == Kind.AGENT

    @classmethod
    def from_wire(cls, m: list[Any]) -> Member:
        """Build a Member from a MEMBER array: 13 elements from a v1 relay (a person, no
        status), 15 from a v1.1 relay (`kind`, `status`); elements a newer relay appends
        are ignored."""
        if len(m) < 13:
            m = [*m, *([None] * (13 - len(m)))]
        return cls(
            sid=m[0],
            user_id=m[1],
            name=m[2],
            avatar=m[3],
            color=m[4],
            activity=_activity(m[5]),
            typing=bool(m[6]),
            focused=bool(m[7]),
            cursor=_cursor(m[8]),
            selection=_selection(m[9]),
            viewport=_viewport(m[10]),
            connected_at_ms=m[11],
            last_active_ms=m[12],
            kind=_kind(m[13]) if len(m) > 13 else Kind.PERSON,
            status=_status(m[14]) if len(m) > 14 else None,
        )


@dataclass(frozen=True, slots=True)
class User:
    """One user of a document, however many sessions (tabs, devices) it has: an entry of
    `Document.users()`. Name, avatar and color are its first session's; `kind` is AGENT
    when any session is an agent, else the first session's."""

    user_id: str
    name: str
    avatar: str | None
    color: str
    kind: int
    sessions: tuple[Member, ...]
    """Its sessions in the document, in order of appearance (none in a `UserLeft`)."""

    @property
    def agent(self) -> bool:
        return self.kind == Kind.AGENT


def _user(sessions: Sequence[Member]) -> User:
    first = sessions[0]
    kind = Kind.AGENT if any(m.agent for m in sessions) else first.kind
    return User(first.user_id, first.name, first.avatar, first.color, kind, tuple(sessions))


def _users_of(members: Iterable[Member]) -> dict[str, User]:
    """The members grouped by user id, in order of first appearance."""
    groups: dict[str, list[Member]] = {}
    for m in members:
        groups.setdefault(m.user_id, []).append(m)
    return {user_id: _user(sessions) for user_id, sessions in groups.items()}


def _user_copy(user: User) -> User:
    """`user` with copies of its sessions, for an event (the live members change later)."""
    return replace(user, sessions=tuple(replace(m) for m in user.sessions))


def _gone_user(last: Member) -> User:
    """The user of its last session `last`, as it was: no sessions any more."""
    return replace(_user([last]), sessions=())


@dataclass(frozen=True, slots=True)
class RecentUser:
    """A user who left the document a little while ago and is not in it now (an entry of
    `Document.recent`): JOINED's `[user_id, name, avatar_or_nil, color, left_at_ms,
    reason]`, or the last session of a user leaving since."""

    user_id: str
    name: str
    avatar: str | None
    color: str
    left_at_ms: int
    """When its last session left: Unix ms, the relay's clock."""
    reason: int | None
    """A `LeaveReason` (a plain int for a newer one), or None when unknown (a v1 relay)."""

    @property
    def reason_name(self) -> str | None:
        """As `Left.reason_name`."""
        return _reason_name(self.reason)

    @classmethod
    def from_wire(cls, r: list[Any]) -> RecentUser:
        if type(r) is not list or not isinstance(r[0], str) or type(r[4]) is not int:
            raise TypeError("a RECENT entry is [user_id, name, avatar, color, left_at_ms, reason]")
        return cls(r[0], r[1], r[2], r[3], r[4], _leave_reason(r[5]) if len(r) > 5 else None)


# ---------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class Joined:
    """Someone joined (or, for a sid already known, their state was replaced). `member` is
    a copy taken at that moment; `doc.members[sid]` is the live entry."""

    member: Member


@dataclass(frozen=True, slots=True)
class Left:
    """A member left; it is no longer in `doc.members`. `reason` is a `LeaveReason` (a plain
    int for a reason newer than this SDK), or None when there is none: a v1 relay, or a
    member found gone when a resume brought the document back (the `left` was sent while
    this client was disconnected)."""

    sid: int
    reason: int | None = None

    @property
    def reason_name(self) -> str | None:
        """The reason's name ("LEFT", "LOST", ...), "UNKNOWN" for a reason this SDK does not
        know, None when there is no reason."""
        return _reason_name(self.reason)


@dataclass(frozen=True, slots=True)
class CursorMoved:
    """A member's cursor (and selection) changed; `cursor` None means cleared."""

    sid: int
    cursor: Cursor | None
    selection: Selection | None


@dataclass(frozen=True, slots=True)
class Typing:
    """A member started or stopped typing."""

    sid: int
    is_typing: bool


@dataclass(frozen=True, slots=True)
class Viewport:
    """A member's visible range changed."""

    sid: int
    viewport: ViewportRange


@dataclass(frozen=True, slots=True)
class Activity:
    """The server-computed activity of a member changed (see `ActivityState`)."""

    sid: int
    activity: int


@dataclass(frozen=True, slots=True)
class Focus:
    """A member's editor gained or lost focus."""

    sid: int
    focused: bool


@dataclass(frozen=True, slots=True)
class Status:
    """A member's status text changed; None means cleared (v1.1)."""

    sid: int
    status: str | None


@dataclass(frozen=True, slots=True)
class UserJoined:
    """A user's first session appeared (emitted after that session's `Joined`; a second tab
    of a user already here is a `Joined` only). `user` has its sessions at that moment and
    `member` is the session that made it arrive; both are copies."""

    user: User
    member: Member


@dataclass(frozen=True, slots=True)
class UserLeft:
    """A user's last session went (emitted after that session's `Left`). `user` is the user
    as it was, with no sessions left; `member` its last session; `reason` as in `Left`."""

    user: User
    member: Member
    reason: int | None = None

    @property
    def reason_name(self) -> str | None:
        """As `Left.reason_name`."""
        return _reason_name(self.reason)


@dataclass(frozen=True, slots=True)
class Resynced:
    """The connection came back and the document is joined again; `doc.members` holds a
    fresh snapshot and `sid` is this client's session id in it.

    `resumed` True: the relay resumed the session (protocol v1.1). `sid` equals `old_sid`,
    the others never saw this client leave, and the differences found in the snapshot were
    emitted before this event as Joined/Left/CursorMoved/... events. `resumed` False: the
    document was joined afresh; `sid` may differ from `old_sid`, and no events are
    synthesized for the gap (re-read `doc.members`)."""

    sid: int
    old_sid: int | None
    resumed: bool = False


@dataclass(frozen=True, slots=True)
class ErrorEvent:
    """An ERROR frame from the relay that did not fail a call (e.g. RATE_LIMITED)."""

    code: int
    message: str
    handle: int | None


Event: TypeAlias = (
    Joined
    | Left
    | CursorMoved
    | Typing
    | Viewport
    | Activity
    | Focus
    | Status
    | UserJoined
    | UserLeft
    | Resynced
    | ErrorEvent
)

_CLOSED = object()  # end-of-events sentinel


class _Link(enum.Enum):
    """Where the relay stands on a document's handle, as far as this client knows. It
    survives a drop: a resume brings the suspended connection's documents back."""

    JOINING = enum.auto()  # JOIN sent, no answer yet
    RESUMING = enum.auto()  # joined before the drop; the resume sends its JOINED unasked
    JOINED = enum.auto()  # JOINED received


# ---------------------------------------------------------------------------- document


class Document:
    """A document joined on a `Connection`; get one from `await conn.join(doc_id)`.

    `members` maps sid -> Member and always reflects the latest snapshot plus every event
    received since (own events included). The presence methods (`move_cursor`, `typed`, ...)
    are synchronous and never block: frames are queued on the connection's writer. While the
    connection is reconnecting they only update the local state, which is sent again once the
    document has been rejoined or resumed.
    """

    def __init__(
        self, conn: Connection, handle: int, doc_id: str, max_events: int = 10_000
    ) -> None:
        self._conn = conn
        self.handle: int = handle
        """The client-chosen handle this document uses on the wire."""
        self.doc_id: str = doc_id
        self.sid: int | None = None
        """This client's session id in the document (None until joined; kept when the relay
        resumes the session after a reconnect, a new one when it is joined afresh)."""
        self.members: dict[int, Member] = {}
        self.recent: list[RecentUser] = []
        """The users who left within the relay's `recent_window_s` and are not here now,
        newest first, at most MAX_RECENT: from every JOINED (none from a v1 relay), then kept
        current (a user whose last session leaves comes first; one who comes back goes)."""
        self.closed: bool = False
        self.close_error: BaseException | None = None
        self._ever_joined = False
        self._joined = False
        self._link: _Link | None = None
        # A JOIN sent again after a resume that the relay may already have had before the
        # drop: its ALREADY_JOINED is expected (the resumed JOINED answers it instead),
        # before or after that JOINED. Reset by the next JOIN.
        self._dup_join = False
        self._join_waiter: asyncio.Future[None] | None = None
        self._events: asyncio.Queue[Any] = asyncio.Queue(maxsize=max_events)
        interval = conn._cursor_interval()
        self._cursor_throttle: Throttle[bytes] = Throttle(interval)
        self._viewport_throttle: Throttle[bytes] = Throttle(interval)
        self._cursor_timer: asyncio.TimerHandle | None = None
        self._viewport_timer: asyncio.TimerHandle | None = None
        # Latest local state, sent again after a rejoin.
        self._cursor_frame: bytes | None = None
        self._viewport_frame: bytes | None = None
        self._focus_frame: bytes | None = None
        self._typing: tuple[bool, float] | None = None  # (typing, loop time) of the last call
        self._status_frame: bytes | None = None  # None: set_status was never called
        self._status: str | None = None

    def __repr__(self) -> str:
        return (
            f"<Document {self.doc_id!r} h={self.handle} sid={self.sid} "
            f"members={len(self.members)}{' closed' if self.closed else ''}>"
        )

    @property
    def joined(self) -> bool:
        """True while the document is joined on a live connection."""
        return self._joined and not self.closed

    def users(self) -> dict[str, User]:
        """The members grouped by user: user id -> `User`, in order of first appearance, this
        client's own sessions included (as in `members`). Made afresh from `members` on each
        call; its `sessions` are the live entries."""
        return _users_of(self.members.values())

    @property
    def me(self) -> Member | None:
        """This client's own member entry, if known."""
        return None if self.sid is None else self.members.get(self.sid)

    @property
    def others(self) -> dict[int, Member]:
        """Every member except this client's own session."""
        return {sid: m for sid, m in self.members.items() if sid != self.sid}

    # ------------------------------------------------------------------ outgoing

    def move_cursor(
        self,
        line: int,
        col: int,
        offset: int,
        selection: tuple[int, int, int, bool] | None = None,
    ) -> None:
        """Move this client's cursor (the selection's head); `selection` is
        `(anchor_line, anchor_col, anchor_offset, backward)` or None. Throttled to one frame
        per `settings["cursor_throttle_ms"]`; the last position is always sent."""
        if selection is None:
            frame = pack([CURSOR, self.handle, int(line), int(col), int(offset)])
        else:
            a_line, a_col, a_off, backward = selection
            frame = pack(
                [
                    CURSOR,
                    self.handle,
                    int(line),
                    int(col),
                    int(offset),
                    int(a_line),
                    int(a_col),
                    int(a_off),
                    bool(backward),
                ]
            )
        self._cursor_frame = frame
        self._throttled(frame, self._cursor_throttle, "_cursor_timer")

    def clear_cursor(self) -> None:
        """Remove this client's cursor and selection (e.g. the editor lost its caret)."""
        frame = pack([CURSOR, self.handle])
        self._cursor_frame = frame
        self._throttled(frame, self._cursor_throttle, "_cursor_timer")

    def typed(self) -> None:
        """Report a keystroke; the relay shows "typing" until `typing_debounce_ms` after the
        last one."""
        self._typing = (True, self._conn._loop.time())
        if self.joined:
            self._conn._send(pack([TYPING, self.handle]))

    def stop_typing(self) -> None:
        """Stop the typing indicator at once (blur, submit)."""
        self._typing = (False, self._conn._loop.time())
        if self.joined:
            self._conn._send(pack([TYPING, self.handle, False]))

    def set_viewport(self, top_line: int, bottom_line: int, scroll_pct: float) -> None:
        """Report the visible line range and scroll position (0..100). Throttled like the
        cursor; the last viewport is always sent."""
        frame = pack([VIEWPORT, self.handle, int(top_line), int(bottom_line), float(scroll_pct)])
        self._viewport_frame = frame
        self._throttled(frame, self._viewport_throttle, "_viewport_timer")

    def set_status(self, text: str | None) -> None:
        """Show a short text next to this member ("presenting", "thinking"); None or ""
        clears it. At most `MAX_STATUS_CHARS` (64) characters, counted as code points
        (ValueError past it; TypeError for anything but a str or None). Kept, and sent again
        after a reconnect when the relay's snapshot of this session lacks it."""
        status = _check_status(text)
        self._status = status
        self._status_frame = pack([STATUS, self.handle, status])
        if self.joined:
            self._conn._send(self._status_frame)

    def set_focus(self, focused: bool) -> None:
        """Report whether the editor (tab) has focus."""
        frame = pack([FOCUS, self.handle, bool(focused)])
        self._focus_frame = frame
        if self.joined:
            self._conn._send(frame)

    async def leave(self) -> None:
        """Leave the document; `events()` ends and the handle is released. While the
        connection is reconnecting, the LEAVE goes out if the relay resumes the session."""
        if self.closed:
            return
        self._conn._release(self)
        self._close(None)

    # ------------------------------------------------------------------ incoming

    async def events(self) -> AsyncIterator[Event]:
        """Yield events as they arrive (already applied to `members`); events of this
        client's own sid are not yielded. Ends after `leave()` or `conn.close()`; raises
        `ConnectionClosedError` (or the `RelayError` that ended a rejoin) when the
        document was lost. Meant for one consumer at a time."""
        while True:
            item = await self._next()
            if item is None:
                return
            yield item

    async def next_event(self, timeout: float | None = None) -> Event:
        """Return the next event (see `events()`), waiting up to `timeout` seconds
        (`TimeoutError` after that); raises `RelayClientError` once the document is closed."""
        async with asyncio.timeout(timeout):
            item = await self._next()
        if item is None:
            raise RelayClientError("document closed")
        return item

    async def _next(self) -> Event | None:
        item = await self._events.get()
        if item is _CLOSED:
            self._events.put_nowait(_CLOSED)  # later calls end, too
            if self.close_error is not None:
                raise self.close_error
            return None
        return item  # type: ignore[no-any-return]

    def _emit(self, event: Event) -> None:
        if self.closed:
            return
        q = self._events
        if q.full():  # nobody is reading: drop the oldest rather than grow without bound
            q.get_nowait()
        q.put_nowait(event)

    def _apply_batch(self, events: list[Any], server_ms: Any = None) -> None:
        """Apply one BATCH's events idempotently and emit those of other sessions (and of
        other users). `server_ms` is the BATCH's time: when a user who left, left."""
        if not self._joined:
            return
        at = server_ms if type(server_ms) is int else time.time_ns() // 1_000_000
        for ev in events:
            try:
                applied = self._apply_event(ev, at)
            except (IndexError, TypeError, KeyError, ValueError) as exc:
                log.warning("ignoring malformed event %r in %s: %s", ev, self.doc_id, exc)
                continue
            for event in applied:
                self._emit(event)

    def _apply_event(self, ev: list[Any], server_ms: int) -> list[Event]:
        """Apply one event to `members` (and to `recent`); return the events to emit: none
        of this client's own sid, and a user's arrival or leaving after its session's.
        Elements past the ones this SDK knows are ignored, and so are event codes it does
        not know (a newer relay's)."""
        code = ev[0]
        if code == EV_JOINED:
            return self._apply_joined(Member.from_wire(ev[1]), server_ms)
        apply = _EVENT_APPLIERS.get(code)
        if apply is None:
            return []
        sid = ev[1]
        m0 = self.members.get(sid)
        if m0 is None:
            return []  # unknown sid (e.g. already gone in our snapshot): ignore
        if code == EV_LEFT:
            del self.members[sid]
        event = apply(m0, ev)
        out = [] if sid == self.sid else [event]
        if isinstance(event, Left) and not self._has_user(m0.user_id):
            out += self._user_left(m0, event.reason, server_ms)
        return out

    def _apply_joined(self, m: Member, server_ms: int) -> list[Event]:
        replaced = self.members.get(m.sid)
        arrives = not self._has_user(m.user_id)
        self.members[m.sid] = m  # a known sid is replaced (idempotent apply)
        out: list[Event] = [] if m.sid == self.sid else [Joined(replace(m))]  # a copy
        if arrives:
            out += self._user_joined(m)
        # A sid known under another user (never from this relay): that user may be gone.
        if (
            replaced is not None
            and replaced.user_id != m.user_id
            and not self._has_user(replaced.user_id)
        ):
            out += self._user_left(replaced, None, server_ms)
        return out

    def _user_joined(self, m: Member) -> list[Event]:
        """`m` is the first session of its user: the user is no longer recent, it arrived."""
        self.recent = [r for r in self.recent if r.user_id != m.user_id]
        if self._is_own_user(m.user_id):
            return []
        return [UserJoined(_user_copy(self.users()[m.user_id]), replace(m))]

    def _user_left(self, m: Member, reason: int | None, server_ms: int) -> list[Event]:
        """`m` was the last session of its user: the user left, and is the most recent."""
        if m.sid == self.sid or self._is_own_user(m.user_id):
            return []
        user = _gone_user(m)
        entry = RecentUser(m.user_id, user.name, user.avatar, user.color, server_ms, reason)
        others = [r for r in self.recent if r.user_id != m.user_id]
        self.recent = [entry, *others][:MAX_RECENT]
        return [UserLeft(user, replace(m), reason)]

    def _has_user(self, user_id: str) -> bool:
        return any(m.user_id == user_id for m in self.members.values())

    def _is_own_user(self, user_id: str) -> bool:
        me = self.me
        return me is not None and me.user_id == user_id

    def _on_joined(
        self, sid: int, members: list[Any], recent: Any = None, *, resumed: bool = False
    ) -> None:
        """A JOINED: the document's snapshot, and (v1.1) its `recent` (None from a v1
        relay). `resumed`: it came from a resumed session, which keeps this client's sid;
        the differences from the members known before the drop are then emitted as events
        (others see no leave and join, and neither should this client's user)."""
        old_sid, old_members = self.sid, self.members
        rejoin = self._ever_joined
        if resumed and sid != old_sid:
            if rejoin and self._link is _Link.RESUMING:  # the contract keeps the sid
                log.warning("resumed %s with sid %s, not %s", self.doc_id, sid, old_sid)
            resumed = False
        resumed = resumed and rejoin
        self.sid = sid
        self.members = self._parse_members(members)
        self.recent = self._parse_recent(recent)
        self._joined = True
        self._ever_joined = True
        self._link = _Link.JOINED
        if self._join_waiter is not None and not self._join_waiter.done():
            self._join_waiter.set_result(None)
        if resumed:
            for ev_sid, event in _snapshot_diff(old_members, self.members):
                if ev_sid != sid and not self._about_own_user(event):
                    self._emit(event)
        # Frames sent while disconnected were lost, and state may have been set before the
        # first JOINED arrived (e.g. move_cursor right after join()): send the latest.
        self._resend_state()
        if rejoin:
            self._emit(Resynced(sid, old_sid, resumed))

    def _parse_members(self, members: list[Any]) -> dict[int, Member]:
        out: dict[int, Member] = {}
        for raw in members:
            try:
                m = Member.from_wire(raw)
            except (IndexError, TypeError, ValueError) as exc:
                log.warning("ignoring malformed member %r in %s: %s", raw, self.doc_id, exc)
                continue
            out[m.sid] = m
        return out

    def _parse_recent(self, recent: Any) -> list[RecentUser]:
        """JOINED's `recent` (absent from a v1 relay: none), without anyone here now."""
        if type(recent) is not list:
            return []
        present = {m.user_id for m in self.members.values()}
        out: list[RecentUser] = []
        for raw in recent:
            try:
                entry = RecentUser.from_wire(raw)
            except (IndexError, TypeError, ValueError) as exc:
                log.warning("ignoring malformed recent user %r in %s: %s", raw, self.doc_id, exc)
                continue
            if entry.user_id not in present:
                out.append(entry)
        return out[:MAX_RECENT]

    def _about_own_user(self, event: Event) -> bool:
        return isinstance(event, UserJoined | UserLeft) and self._is_own_user(event.user.user_id)

    def _on_error(self, code: int, message: str) -> bool:
        """Route an ERROR for this handle. Returns True when it is consumed: a pending
        `join()` raises it, or it is the expected answer to a JOIN repeated after a resume;
        otherwise it is emitted as an `ErrorEvent` (and a failed rejoin after a reconnect
        also closes the document)."""
        if code == ALREADY_JOINED and self._dup_join:
            # The first JOIN had reached the relay before the drop: the resumed connection
            # has the document, and its JOINED answers this join.
            self._dup_join = False
            return True
        if not self._joined and self._join_waiter is not None and not self._join_waiter.done():
            self._join_waiter.set_exception(RelayError(code, message, self.handle))
            return True
        self._emit(ErrorEvent(code, message, self.handle))
        if not self._joined and self._ever_joined:
            self._close(RelayError(code, message, self.handle))
        return False

    # ------------------------------------------------------------------ connection hooks

    def _suspend(self) -> None:
        """The connection dropped: stop sending until rejoined."""
        self._joined = False
        self._cancel_timers()
        self._cursor_throttle.reset()
        self._viewport_throttle.reset()

    def _set_interval(self, interval: float) -> None:
        self._cursor_throttle.interval = interval
        self._viewport_throttle.interval = interval

    def _resend_state(self) -> None:
        if self._cursor_frame is not None:
            self._throttled(self._cursor_frame, self._cursor_throttle, "_cursor_timer")
        if self._viewport_frame is not None:
            self._throttled(self._viewport_frame, self._viewport_throttle, "_viewport_timer")
        if self._focus_frame is not None:
            self._conn._send(self._focus_frame)
        typing = self._typing_frame()
        if typing is not None:
            self._conn._send(typing)
        # Unlike the others, only when the snapshot lacks it: a resumed session keeps its
        # status at the relay (frames of the gap aside), a fresh session has none.
        me = self.me
        if self._status_frame is not None and (me is None or me.status != self._status):
            self._conn._send(self._status_frame)

    def _typing_frame(self) -> bytes | None:
        """The last typing call's frame, if it still matters: a keystroke (or a stop) older
        than `typing_debounce_ms` has run out at the relay anyway, and sending it again
        would show a typing that ended."""
        if self._typing is None:
            return None
        typing, at = self._typing
        if self._conn._loop.time() - at >= self._conn._typing_debounce():
            return None
        return pack([TYPING, self.handle] if typing else [TYPING, self.handle, False])

    def _close(self, error: BaseException | None) -> None:
        if self.closed:
            return
        self._joined = False
        self._cancel_timers()
        if self._join_waiter is not None and not self._join_waiter.done():
            self._join_waiter.set_exception(error or RelayClientError("document closed"))
        self.close_error = error
        q = self._events
        if q.full():
            q.get_nowait()
        q.put_nowait(_CLOSED)
        self.closed = True

    def _cancel_timers(self) -> None:
        for attr in ("_cursor_timer", "_viewport_timer"):
            timer: asyncio.TimerHandle | None = getattr(self, attr)
            if timer is not None:
                timer.cancel()
                setattr(self, attr, None)

    # ------------------------------------------------------------------ throttling

    def _throttled(self, frame: bytes, throttle: Throttle[bytes], timer_attr: str) -> None:
        if not self.joined:
            return  # remembered in *_frame; sent after (re)join
        loop = self._conn._loop
        if throttle.offer(frame, loop.time()):
            self._conn._send(frame)
        elif getattr(self, timer_attr) is None:
            self._arm(throttle, timer_attr)

    def _arm(self, throttle: Throttle[bytes], timer_attr: str) -> None:
        due = throttle.deadline()
        if due is None:
            return
        loop = self._conn._loop
        cb: Callable[[], None] = lambda: self._fire(throttle, timer_attr)  # noqa: E731
        setattr(self, timer_attr, loop.call_at(due, cb))

    def _fire(self, throttle: Throttle[bytes], timer_attr: str) -> None:
        setattr(self, timer_attr, None)
        if not self.joined:
            return
        ok, frame = throttle.poll(self._conn._loop.time())
        if ok and frame is not None:
            self._conn._send(frame)
        elif throttle.pending:
            self._arm(throttle, timer_attr)


# ---------------------------------------------------------------------------- applying events
# One function per event code but `joined`: it updates the member `m` and returns the event.


def _apply_cursor(m: Member, ev: list[Any]) -> Event:
    if len(ev) >= 5:
        m.cursor = (ev[2], ev[3], ev[4])
        m.selection = (ev[5], ev[6], ev[7], bool(ev[8])) if len(ev) >= 9 else None
    else:
        m.cursor = None
        m.selection = None
    return CursorMoved(m.sid, m.cursor, m.selection)


def _apply_left(m: Member, ev: list[Any]) -> Event:
    return Left(m.sid, _leave_reason(ev[2]) if len(ev) >= 3 else None)


def _apply_typing(m: Member, ev: list[Any]) -> Event:
    m.typing = bool(ev[2])
    return Typing(m.sid, m.typing)


def _apply_viewport(m: Member, ev: list[Any]) -> Event:
    m.viewport = (ev[2], ev[3], ev[4])
    return Viewport(m.sid, m.viewport)


def _apply_activity(m: Member, ev: list[Any]) -> Event:
    m.activity = _activity(ev[2])
    return Activity(m.sid, m.activity)


def _apply_focus(m: Member, ev: list[Any]) -> Event:
    m.focused = bool(ev[2])
    return Focus(m.sid, m.focused)


def _apply_status(m: Member, ev: list[Any]) -> Event:
    m.status = _status(ev[2])
    return Status(m.sid, m.status)


_EVENT_APPLIERS: dict[int, Callable[[Member, list[Any]], Event]] = {
    EV_CURSOR: _apply_cursor,
    EV_LEFT: _apply_left,
    EV_TYPING: _apply_typing,
    EV_VIEWPORT: _apply_viewport,
    EV_ACTIVITY: _apply_activity,
    EV_FOCUS: _apply_focus,
    EV_STATUS: _apply_status,
}


def _snapshot_diff(old: dict[int, Member], new: dict[int, Member]) -> list[tuple[int, Event]]:
    """The events that turn the members `old` into `new`, as (sid, event): what a client
    that had stayed connected would have seen, minus the intermediate steps. A member in
    both with the same identity gets only the changes of its state. Users: one gone from
    `new` left (after the sessions' `Left`s), one not in `old` arrived (after its first
    session's `Joined`); a user in both did neither, whichever of its sessions changed."""
    out: list[tuple[int, Event]] = [(sid, Left(sid)) for sid in old if sid not in new]
    users_before, users_now = _users_of(old.values()), _users_of(new.values())
    for user_id, user in users_before.items():
        if user_id not in users_now:
            last = user.sessions[-1]
            out.append((last.sid, UserLeft(_gone_user(last), replace(last), None)))
    arrived: set[str] = set()
    for sid, m in new.items():
        before = old.get(sid)
        if before is None or _identity(before) != _identity(m):
            out.append((sid, Joined(replace(m))))
            if m.user_id not in users_before and m.user_id not in arrived:
                arrived.add(m.user_id)
                out.append((sid, UserJoined(_user_copy(users_now[m.user_id]), replace(m))))
        else:
            out.extend((sid, event) for event in _state_changes(before, m))
    return out


def _identity(m: Member) -> tuple[str, str, str | None, str]:
    return m.user_id, m.name, m.avatar, m.color


def _state_changes(a: Member, b: Member) -> list[Event]:
    out: list[Event] = []
    if (a.cursor, a.selection) != (b.cursor, b.selection):
        out.append(CursorMoved(b.sid, b.cursor, b.selection))
    if a.typing != b.typing:
        out.append(Typing(b.sid, b.typing))
    if a.viewport != b.viewport and b.viewport is not None:  # no event clears a viewport
        out.append(Viewport(b.sid, b.viewport))
    if a.activity != b.activity:
        out.append(Activity(b.sid, b.activity))
    if a.focused != b.focused:
        out.append(Focus(b.sid, b.focused))
    if a.status != b.status:
        out.append(Status(b.sid, b.status))
    return out
