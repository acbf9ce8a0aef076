"""Documents joined on a connection: members, events, and the local presence senders."""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import AsyncIterator, Callable
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
    EV_TYPING,
    EV_VIEWPORT,
    FOCUS,
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
    "LeaveReason",
    "Left",
    "Member",
    "Resynced",
    "Typing",
    "Viewport",
]

log = logging.getLogger("presence_client")

Cursor: TypeAlias = tuple[int, int, int]
"""`(line, col, offset)`: the selection's head."""
Selection: TypeAlias = tuple[int, int, int, bool]
"""`(anchor_line, anchor_col, anchor_offset, backward)`."""
ViewportRange: TypeAlias = tuple[int, int, float]
"""`(top_line, bottom_line, scroll_pct)`."""


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

    @property
    def disconnected(self) -> bool:
        """True while the member's connection is gone and the relay holds its place for a
        resume (activity DISCONNECTED): draw it greyed out rather than remove it."""
        return self.activity == ActivityState.DISCONNECTED

    @classmethod
    def from_wire(cls, m: list[Any]) -> Member:
        """Build a Member from the protocol's 13-element MEMBER array (elements a newer
        relay appends are ignored)."""
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
        )


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
        if self.reason is None:
            return None
        try:
            return LeaveReason(self.reason).name
        except ValueError:
            return "UNKNOWN"


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
    Joined | Left | CursorMoved | Typing | Viewport | Activity | Focus | Resynced | ErrorEvent
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

    def __repr__(self) -> str:
        return (
            f"<Document {self.doc_id!r} h={self.handle} sid={self.sid} "
            f"members={len(self.members)}{' closed' if self.closed else ''}>"
        )

    @property
    def joined(self) -> bool:
        """True while the document is joined on a live connection."""
        return self._joined and not self.closed

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

    def _apply_batch(self, events: list[Any]) -> None:
        """Apply one BATCH's events idempotently and emit those of other sessions."""
        if not self._joined:
            return
        for ev in events:
            try:
                applied = self._apply_event(ev)
            except (IndexError, TypeError, KeyError, ValueError) as exc:
                log.warning("ignoring malformed event %r in %s: %s", ev, self.doc_id, exc)
                continue
            if applied is not None and applied[0] != self.sid:
                self._emit(applied[1])

    def _apply_event(self, ev: list[Any]) -> tuple[int, Event] | None:
        """Apply one event to `members`; return (its sid, the event to emit) or None when
        it changes nothing. Elements past the ones this SDK knows are ignored, and so are
        event codes it does not know (a newer relay's)."""
        code = ev[0]
        if code == EV_JOINED:
            m = Member.from_wire(ev[1])
            self.members[m.sid] = m
            return m.sid, Joined(replace(m))  # a copy: `m` changes later
        apply = _EVENT_APPLIERS.get(code)
        if apply is None:
            return None
        sid = ev[1]
        m0 = self.members.get(sid)
        if m0 is None:
            return None  # unknown sid (e.g. already gone in our snapshot): ignore
        if code == EV_LEFT:
            del self.members[sid]
        return sid, apply(m0, ev)

    def _on_joined(self, sid: int, members: list[Any], *, resumed: bool = False) -> None:
        """A JOINED: the document's snapshot. `resumed`: it came from a resumed session,
        which keeps this client's sid; the differences from the members known before the
        drop are then emitted as events (others see no leave and join, and neither should
        this client's user)."""
        old_sid, old_members = self.sid, self.members
        rejoin = self._ever_joined
        if resumed and sid != old_sid:
            if rejoin and self._link is _Link.RESUMING:  # the contract keeps the sid
                log.warning("resumed %s with sid %s, not %s", self.doc_id, sid, old_sid)
            resumed = False
        resumed = resumed and rejoin
        self.sid = sid
        self.members = self._parse_members(members)
        self._joined = True
        self._ever_joined = True
        self._link = _Link.JOINED
        if self._join_waiter is not None and not self._join_waiter.done():
            self._join_waiter.set_result(None)
        if resumed:
            for ev_sid, event in _snapshot_diff(old_members, self.members):
                if ev_sid != sid:
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


_EVENT_APPLIERS: dict[int, Callable[[Member, list[Any]], Event]] = {
    EV_CURSOR: _apply_cursor,
    EV_LEFT: _apply_left,
    EV_TYPING: _apply_typing,
    EV_VIEWPORT: _apply_viewport,
    EV_ACTIVITY: _apply_activity,
    EV_FOCUS: _apply_focus,
}


def _snapshot_diff(old: dict[int, Member], new: dict[int, Member]) -> list[tuple[int, Event]]:
    """The events that turn the members `old` into `new`, as (sid, event): what a client
    that had stayed connected would have seen, minus the intermediate steps. A member in
    both with the same identity gets only the changes of its state."""
    out: list[tuple[int, Event]] = [(sid, Left(sid)) for sid in old if sid not in new]
    for sid, m in new.items():
        before = old.get(sid)
        if before is None or _identity(before) != _identity(m):
            out.append((sid, Joined(replace(m))))
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
    return out
