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
    CURSOR,
    EV_ACTIVITY,
    EV_CURSOR,
    EV_FOCUS,
    EV_JOINED,
    EV_LEFT,
    EV_TYPING,
    EV_VIEWPORT,
    FOCUS,
    LEAVE,
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


def _activity(v: Any) -> int:
    try:
        return ActivityState(v)
    except ValueError:
        return int(v)


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

    @classmethod
    def from_wire(cls, m: list[Any]) -> Member:
        """Build a Member from the protocol's 13-element MEMBER array."""
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
    """A member left; it is no longer in `doc.members`."""

    sid: int


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
    """The connection came back and the document was joined again: `doc.members` now holds
    a fresh snapshot (re-read it; no Joined/Left events are synthesized for the gap) and
    `sid` is this client's session id in it (it may differ from `old_sid`)."""

    sid: int
    old_sid: int | None


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


# ---------------------------------------------------------------------------- document


class Document:
    """A document joined on a `Connection`; get one from `await conn.join(doc_id)`.

    `members` maps sid -> Member and always reflects the latest snapshot plus every event
    received since (own events included). The presence methods (`move_cursor`, `typed`, ...)
    are synchronous and never block: frames are queued on the connection's writer. While the
    connection is reconnecting they only update the local state, which is sent again once the
    document has been rejoined.
    """

    def __init__(
        self, conn: Connection, handle: int, doc_id: str, max_events: int = 10_000
    ) -> None:
        self._conn = conn
        self.handle: int = handle
        """The client-chosen handle this document uses on the wire."""
        self.doc_id: str = doc_id
        self.sid: int | None = None
        """This client's session id in the document (None until joined; may change after a
        reconnect)."""
        self.members: dict[int, Member] = {}
        self.closed: bool = False
        self.close_error: BaseException | None = None
        self._ever_joined = False
        self._joined = False
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
        if self.joined:
            self._conn._send(pack([TYPING, self.handle]))

    def stop_typing(self) -> None:
        """Stop the typing indicator at once (blur, submit)."""
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
        """Leave the document; `events()` ends and the handle is released."""
        if self.closed:
            return
        if self._joined:
            self._conn._send(pack([LEAVE, self.handle]))
        self._conn._forget(self)
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
        members = self.members
        own = self.sid
        for ev in events:
            try:
                code = ev[0]
                if code == EV_JOINED:
                    m = Member.from_wire(ev[1])
                    members[m.sid] = m
                    if m.sid != own:
                        self._emit(Joined(replace(m)))  # a snapshot: `m` changes later
                    continue
                sid = ev[1]
                m0 = members.get(sid)
                if m0 is None:
                    continue  # unknown sid (e.g. already gone in our snapshot): ignore
                out: Event | None = None
                if code == EV_CURSOR:
                    if len(ev) >= 5:
                        m0.cursor = (ev[2], ev[3], ev[4])
                        m0.selection = (ev[5], ev[6], ev[7], bool(ev[8])) if len(ev) >= 9 else None
                    else:
                        m0.cursor = None
                        m0.selection = None
                    out = CursorMoved(sid, m0.cursor, m0.selection)
                elif code == EV_LEFT:
                    del members[sid]
                    out = Left(sid)
                elif code == EV_TYPING:
                    m0.typing = bool(ev[2])
                    out = Typing(sid, m0.typing)
                elif code == EV_VIEWPORT:
                    m0.viewport = (ev[2], ev[3], ev[4])
                    out = Viewport(sid, m0.viewport)
                elif code == EV_ACTIVITY:
                    m0.activity = _activity(ev[2])
                    out = Activity(sid, m0.activity)
                elif code == EV_FOCUS:
                    m0.focused = bool(ev[2])
                    out = Focus(sid, m0.focused)
                if out is not None and sid != own:
                    self._emit(out)
            except (IndexError, TypeError, KeyError, ValueError) as exc:
                log.warning("ignoring malformed event %r in %s: %s", ev, self.doc_id, exc)

    def _on_joined(self, sid: int, members: list[Any]) -> None:
        old_sid = self.sid
        rejoin = self._ever_joined
        self.sid = sid
        self.members = {}
        for raw in members:
            try:
                m = Member.from_wire(raw)
            except (IndexError, TypeError, ValueError) as exc:
                log.warning("ignoring malformed member %r in %s: %s", raw, self.doc_id, exc)
                continue
            self.members[m.sid] = m
        self._joined = True
        self._ever_joined = True
        if self._join_waiter is not None and not self._join_waiter.done():
            self._join_waiter.set_result(None)
        if rejoin:
            self._resend_state()
            self._emit(Resynced(sid, old_sid))
        else:
            # State set before the JOINED arrived (e.g. move_cursor right after join()).
            self._resend_state()

    def _on_error(self, code: int, message: str) -> bool:
        """Route an ERROR for this handle. Returns True when a pending `join()` consumed it
        (that call raises); otherwise it is emitted as an `ErrorEvent` (and a failed rejoin
        after a reconnect also closes the document)."""
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
