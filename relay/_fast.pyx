# cython: language_level=3
"""The compiled twin of the hot path (layouts in _fast.pxd; reference in relay/core/pure.py).

What is here and why:
- `Peer.feed` parses the canonical encodings of CURSOR / TYPING / VIEWPORT / FOCUS straight
  from the frame bytes (no msgpack object tree) and writes into the session's slot. Any
  other encoding goes through the pure twin's general decoder, so both twins give the same
  answer for every input.
- `Document` keeps the coalescing slots and encodes queued events as they happen into one
  C buffer; `flush` appends one cursor event per moved session and returns the BATCH frame,
  equal byte for byte to `msgpack.packb` of the same structure.
- `TokenBucket` is the per-connection rate limit, in doubles.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_GetItem
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from cpython.object cimport PyObject
from cpython.unicode cimport PyUnicode_AsUTF8AndSize
from libc.math cimport isfinite
from libc.stdint cimport int64_t, uint32_t, uint64_t
from libc.string cimport memcpy

from relay.core.colors import assign_color
from relay.core.document import Batch, check_capacity
from relay.exceptions import DocumentFull
from relay.core.model import ActivityType
from relay.core.peer import FALLBACK as _FALLBACK, RATE_LIMITED as _RATE_LIMITED, feed_decoded
from relay.core.ratelimit import BadFrameWindow
from relay.core.wire import NEED_MORE as _NEED_MORE, NOT_OURS as _NOT_OURS

IMPLEMENTATION = "compiled"
NEVER = 2**63 - 1
FALLBACK = _FALLBACK
RATE_LIMITED = _RATE_LIMITED
NEED_MORE = _NEED_MORE
NOT_OURS = _NOT_OURS
cdef int C_FALLBACK = _FALLBACK, C_RATE_LIMITED = _RATE_LIMITED

cdef int64_t C_NEVER = 9223372036854775807
cdef int EDITING = 0, VIEWING = 1, SELECTING = 2, IDLE = 3, AWAY = 4, DISCONNECTED = 5
cdef int EV_CURSOR = 1, EV_JOINED = 2, EV_LEFT = 3, EV_TYPING = 4, EV_VIEWPORT = 5
cdef int EV_ACTIVITY = 6, EV_FOCUS = 7, EV_STATUS = 8
cdef object _ACTIVITY = ActivityType

__all__ = ["FALLBACK", "IMPLEMENTATION", "NEED_MORE", "NEVER", "NOT_OURS", "RATE_LIMITED",
           "BadFrameWindow", "Batch", "Document", "DocumentFull", "HotCounts", "Membership",
           "Peer", "Session", "TokenBucket"]


# ---------------------------------------------------------------- msgpack writer

cdef class Writer:
    """A growable byte buffer with msgpack-python's encoding choices (smallest form)."""

    def __cinit__(self):
        self.capacity = 256
        self.length = 0
        self.buf = <char*>PyMem_Malloc(self.capacity)
        if self.buf == NULL:
            raise MemoryError()

    def __dealloc__(self):
        PyMem_Free(self.buf)

    cdef int _grow(self, Py_ssize_t extra) except -1:
        cdef Py_ssize_t need = self.length + extra
        cdef Py_ssize_t cap = self.capacity
        cdef char* nb
        if need <= cap:
            return 0
        while cap < need:
            cap *= 2
        nb = <char*>PyMem_Realloc(self.buf, cap)
        if nb == NULL:
            raise MemoryError()
        self.buf = nb
        self.capacity = cap
        return 0

    cdef inline int byte(self, unsigned char b) except -1:
        if self.length + 1 > self.capacity:
            self._grow(1)
        self.buf[self.length] = <char>b
        self.length += 1
        return 0

    cdef int uint(self, uint64_t v) except -1:
        cdef char* o
        cdef int i
        self._grow(9)
        o = self.buf + self.length
        if v < 0x80:
            o[0] = <char>v
            self.length += 1
        elif v <= 0xff:
            o[0] = <char>0xcc
            o[1] = <char>v
            self.length += 2
        elif v <= 0xffff:
            o[0] = <char>0xcd
            o[1] = <char>(v >> 8)
            o[2] = <char>v
            self.length += 3
        elif v <= 0xffffffff:
            o[0] = <char>0xce
            o[1] = <char>(v >> 24)
            o[2] = <char>(v >> 16)
            o[3] = <char>(v >> 8)
            o[4] = <char>v
            self.length += 5
        else:
            o[0] = <char>0xcf
            for i in range(8):
                o[1 + i] = <char>(v >> (56 - 8 * i))
            self.length += 9
        return 0

    cdef int sint(self, int64_t v) except -1:
        cdef char* o
        cdef int i
        cdef uint64_t u
        if v >= 0:
            return self.uint(<uint64_t>v)
        self._grow(9)
        o = self.buf + self.length
        if v >= -32:
            o[0] = <char>v
            self.length += 1
        elif v >= -128:
            o[0] = <char>0xd0
            o[1] = <char>v
            self.length += 2
        elif v >= -32768:
            o[0] = <char>0xd1
            o[1] = <char>(v >> 8)
            o[2] = <char>v
            self.length += 3
        elif v >= -2147483648:
            o[0] = <char>0xd2
            o[1] = <char>(v >> 24)
            o[2] = <char>(v >> 16)
            o[3] = <char>(v >> 8)
            o[4] = <char>v
            self.length += 5
        else:
            u = <uint64_t>v
            o[0] = <char>0xd3
            for i in range(8):
                o[1 + i] = <char>(u >> (56 - 8 * i))
            self.length += 9
        return 0

    cdef int integer(self, object v) except -1:
        if v >= 0:
            if v > 0xffffffffffffffff:
                raise OverflowError("integer too large for msgpack")
            return self.uint(<uint64_t>v)
        if v < -9223372036854775808:
            raise OverflowError("integer too small for msgpack")
        return self.sint(<int64_t>v)

    cdef int double(self, double v) except -1:
        cdef uint64_t bits
        cdef char* o
        cdef int i
        memcpy(&bits, &v, 8)
        self._grow(9)
        o = self.buf + self.length
        o[0] = <char>0xcb
        for i in range(8):
            o[1 + i] = <char>(bits >> (56 - 8 * i))
        self.length += 9
        return 0

    cdef int string(self, str s) except -1:
        cdef Py_ssize_t n
        cdef const char* data = PyUnicode_AsUTF8AndSize(s, &n)
        cdef char* o
        self._grow(n + 5)
        o = self.buf + self.length
        if n < 32:
            o[0] = <char>(0xa0 | n)
            self.length += 1
        elif n <= 0xff:
            o[0] = <char>0xd9
            o[1] = <char>n
            self.length += 2
        elif n <= 0xffff:
            o[0] = <char>0xda
            o[1] = <char>(n >> 8)
            o[2] = <char>n
            self.length += 3
        else:
            o[0] = <char>0xdb
            o[1] = <char>(n >> 24)
            o[2] = <char>(n >> 16)
            o[3] = <char>(n >> 8)
            o[4] = <char>n
            self.length += 5
        memcpy(self.buf + self.length, data, n)
        self.length += n
        return 0

    cdef int array_header(self, Py_ssize_t n) except -1:
        cdef char* o
        self._grow(5)
        o = self.buf + self.length
        if n < 16:
            o[0] = <char>(0x90 | n)
            self.length += 1
        elif n <= 0xffff:
            o[0] = <char>0xdc
            o[1] = <char>(n >> 8)
            o[2] = <char>n
            self.length += 3
        else:
            o[0] = <char>0xdd
            o[1] = <char>(n >> 24)
            o[2] = <char>(n >> 16)
            o[3] = <char>(n >> 8)
            o[4] = <char>n
            self.length += 5
        return 0

    cdef int map_header(self, Py_ssize_t n) except -1:
        cdef char* o
        self._grow(5)
        o = self.buf + self.length
        if n < 16:
            o[0] = <char>(0x80 | n)
            self.length += 1
        elif n <= 0xffff:
            o[0] = <char>0xde
            o[1] = <char>(n >> 8)
            o[2] = <char>n
            self.length += 3
        else:
            o[0] = <char>0xdf
            o[1] = <char>(n >> 24)
            o[2] = <char>(n >> 16)
            o[3] = <char>(n >> 8)
            o[4] = <char>n
            self.length += 5
        return 0

    cdef int obj(self, object o) except -1:
        """The cold path: any value the relay sends (None, bool, int, float, str, arrays)."""
        if o is None:
            return self.byte(0xc0)
        if o is True:
            return self.byte(0xc3)
        if o is False:
            return self.byte(0xc2)
        if type(o) is int:
            return self.integer(o)
        if type(o) is float:
            return self.double(o)
        if type(o) is str:
            return self.string(o)
        if type(o) is tuple or type(o) is list:
            self.array_header(len(o))
            for item in o:
                self.obj(item)
            return 0
        if type(o) is dict:
            self.map_header(len(o))
            for k, v in (<dict>o).items():
                self.obj(k)
                self.obj(v)
            return 0
        # Enums and other int/str subclasses: the same bytes msgpack would write.
        if isinstance(o, int):
            return self.integer(int(o))
        if isinstance(o, str):
            return self.string(str(o))
        raise TypeError(f"cannot encode {type(o).__name__}")

    cdef bytes take(self, bytes prefix):
        """prefix + buffer as one new bytes object; the buffer is emptied."""
        cdef Py_ssize_t np = PyBytes_GET_SIZE(prefix)
        cdef bytes out = PyBytes_FromStringAndSize(NULL, np + self.length)
        cdef char* dst = PyBytes_AS_STRING(out)
        memcpy(dst, PyBytes_AS_STRING(prefix), np)
        memcpy(dst + np, self.buf, self.length)
        self.length = 0
        return out


def encode(object value):
    """msgpack-encode a value the way the relay does (exposed for parity tests)."""
    cdef Writer w = Writer()
    w.obj(value)
    return w.take(b"")


cdef Writer _scratch = Writer()


cdef bytes _batch_prefix(str doc_id, int64_t server_ms, Py_ssize_t count):
    cdef Writer w = _scratch  # reused: one writer allocation per process, not per batch
    w.byte(0x94)
    w.byte(0x22)
    w.string(doc_id)
    w.sint(server_ms)
    w.array_header(count)
    return w.take(b"")


# ---------------------------------------------------------------- sessions

cdef class Session:
    """One member of one document (one tab); same fields as relay.core.model.Session."""

    def __init__(self, sid, user, color, connected_at_ms, last_active_ms, activity=VIEWING,
                 typing=False, typing_until_ms=0, focused=True, blurred_at_ms=0, cursor=None,
                 selection=None, viewport=None, cursor_moved=False, cursor_arrived_ms=0,
                 remote=False, disconnected=False, kind=0, status=None, status_moved=False):
        self.sid = sid
        self.user = user
        self.color = color
        self.connected_at_ms = connected_at_ms
        self.last_active_ms = last_active_ms
        self._activity = int(activity)
        self.typing = typing
        self.typing_until_ms = typing_until_ms
        self.focused = focused
        self.blurred_at_ms = blurred_at_ms
        self.cursor = cursor
        self.selection = selection
        self.viewport = viewport
        self.cursor_moved = cursor_moved
        self.cursor_arrived_ms = cursor_arrived_ms
        self.remote = remote
        self.disconnected = disconnected
        self.kind = kind
        self.status = status
        self.status_moved = status_moved

    @property
    def activity(self):
        return _ACTIVITY(self._activity)

    @activity.setter
    def activity(self, value):
        self._activity = int(value)

    @property
    def cursor(self):
        if not self.has_cursor:
            return None
        return (self.line, self.col, self.off)

    @cursor.setter
    def cursor(self, value):
        if value is None:
            self.has_cursor = False
            self.line = self.col = self.off = 0
        else:
            self.has_cursor = True
            self.line, self.col, self.off = value

    @property
    def selection(self):
        if not self.has_selection:
            return None
        return (self.a_line, self.a_col, self.a_off, self.backward)

    @selection.setter
    def selection(self, value):
        if value is None:
            self.has_selection = False
            self.a_line = self.a_col = self.a_off = 0
            self.backward = False
        else:
            self.has_selection = True
            self.a_line, self.a_col, self.a_off, self.backward = value

    def member(self):
        """The MEMBER array of docs/protocol.md (v1.1: with kind and status)."""
        u = self.user
        return (self.sid, u.user_id, u.name, u.avatar_url, self.color, self._activity,
                self.typing, self.focused, self.cursor, self.selection, self.viewport,
                self.connected_at_ms, self.last_active_ms, self.kind, self.status)

    def __repr__(self):
        return f"Session(sid={self.sid}, user={self.user!r}, activity={self.activity!r})"


cdef inline int _cursor_event(Writer w, Session s) except -1:
    if not s.has_cursor:
        w.byte(0x92)
        w.byte(EV_CURSOR)
        w.sint(s.sid)
        return 0
    if not s.has_selection:
        w.byte(0x95)
        w.byte(EV_CURSOR)
        w.sint(s.sid)
        w.uint(<uint64_t>s.line)
        w.uint(<uint64_t>s.col)
        w.uint(<uint64_t>s.off)
        return 0
    w.byte(0x99)
    w.byte(EV_CURSOR)
    w.sint(s.sid)
    w.uint(<uint64_t>s.line)
    w.uint(<uint64_t>s.col)
    w.uint(<uint64_t>s.off)
    w.uint(<uint64_t>s.a_line)
    w.uint(<uint64_t>s.a_col)
    w.uint(<uint64_t>s.a_off)
    w.byte(0xc3 if s.backward else 0xc2)
    return 0


# ---------------------------------------------------------------- documents

cdef class Document:
    """Presence of one document on this node (see relay/core/document.py for the rules)."""

    def __init__(self, str doc_id, rules, dirty_set=None):
        self.doc_id = doc_id
        self.rules = rules
        self.sessions = {}
        self._next_sid = 1
        self._events = Writer()
        self._ecount = 0
        self._author = -1
        self._many_authors = False
        self._moved = []
        self._statuses = []
        self.next_deadline_ms = C_NEVER
        self._dirty_set = dirty_set
        self._marked = False
        self.debounce = rules.typing_debounce_ms
        self.activity_timeout = rules.activity_timeout_ms
        self.away_after = rules.away_after_ms
        self.away_after_blur = rules.away_after_blur_ms

    @property
    def dirty(self):
        return self._ecount > 0 or len(self._moved) > 0 or len(self._statuses) > 0

    @property
    def empty(self):
        return not self.sessions

    def allocate_sid(self):
        sid = self._next_sid
        self._next_sid += 1
        return sid

    def join(self, user, now_ms, sid=None, kind=0):
        check_capacity(self.rules, self.sessions, user.user_id)
        if sid is None:
            sid = self.allocate_sid()
        else:
            self._next_sid = max(self._next_sid, sid + 1)
        color = self._color_for(user.user_id)
        s = Session(sid, user, color, now_ms, now_ms, kind=kind)
        self.sessions[sid] = s
        self._events.array_header(2)
        self._events.byte(EV_JOINED)
        self._events.obj(s.member())
        self._ecount += 1
        self._author_is(sid)
        self._mark()
        self._schedule(now_ms + self.activity_timeout)
        return s

    def leave(self, sid, now_ms, reason=0):
        cdef Session s = self.sessions.pop(sid, None)
        if s is None:
            return None
        s.cursor_moved = False
        s.status_moved = False
        self._events.byte(0x93)
        self._events.byte(EV_LEFT)
        self._events.sint(s.sid)
        self._events.integer(reason)
        self._ecount += 1
        self._author_is(s.sid)
        self._mark()
        return s

    def disconnect(self, sid, now_ms):
        cdef Session s = self.sessions[sid]
        if s.disconnected:
            return
        s.disconnected = True
        s._activity = DISCONNECTED
        self._event3(EV_ACTIVITY, s.sid, DISCONNECTED)

    def reconnect(self, sid, now_ms):
        cdef Session s = self.sessions[sid]
        if not s.disconnected:
            return
        s.disconnected = False
        self._schedule(self._refresh(s, now_ms))

    def snapshot(self):
        return [s.member() for s in self.sessions.values()]

    def _color_for(self, user_id):
        for s in self.sessions.values():
            if s.user.user_id == user_id:
                return s.color
        return assign_color(user_id, [s.color for s in self.sessions.values()])

    def workspaces(self):
        return {s.user.workspace_id for s in self.sessions.values()}

    # -- member actions (Python-visible API, same as the pure twin)

    def move_cursor(self, sid, cursor, selection, now_ms):
        cdef Session s = self.sessions[sid]
        if cursor is None:
            self.c_move(s, False, 0, 0, 0, False, 0, 0, 0, False, now_ms)
        elif selection is None:
            self.c_move(s, True, cursor[0], cursor[1], cursor[2], False, 0, 0, 0, False, now_ms)
        else:
            self.c_move(s, True, cursor[0], cursor[1], cursor[2], True, selection[0],
                        selection[1], selection[2], selection[3], now_ms)

    def set_typing(self, sid, typing, now_ms):
        self.c_typing(self.sessions[sid], typing, now_ms)

    def set_viewport(self, sid, top, bottom, scroll_pct, now_ms):
        self.c_viewport(self.sessions[sid], top, bottom, float(scroll_pct), now_ms)

    def set_focus(self, sid, focused, now_ms):
        self.c_focus(self.sessions[sid], focused, now_ms)

    def set_status(self, sid, text, now_ms):
        # Cold (a person sets a status now and then): Python-level, like the pure twin.
        cdef Session s = self.sessions[sid]
        s.status = text or None
        if not s.status_moved:
            s.status_moved = True
            self._statuses.append(s)
            self._mark()
        self._act(s, now_ms)

    def advance(self, now_ms):
        cdef int64_t now = now_ms
        cdef int64_t nxt = C_NEVER, d
        cdef Session s
        if now < self.next_deadline_ms:
            return
        for s in self.sessions.values():
            if s.remote:
                continue
            if s.typing and now >= s.typing_until_ms:
                s.typing = False
                self._event3(EV_TYPING, s.sid, False)
            d = self._refresh(s, now)
            if d < nxt:
                nxt = d
        self.next_deadline_ms = nxt

    def flush(self, now_ms):
        cdef Session s
        cdef list arrivals = []
        cdef Writer w = self._events
        cdef Py_ssize_t count
        self._marked = False
        for s in self._moved:
            if not s.cursor_moved:
                continue
            s.cursor_moved = False
            arrivals.append(s.cursor_arrived_ms)
            self._author_is(s.sid)
            _cursor_event(w, s)
            self._ecount += 1
        self._moved = []
        for s in self._statuses:
            if not s.status_moved:
                continue
            s.status_moved = False
            self._author_is(s.sid)
            w.byte(0x93)
            w.byte(EV_STATUS)
            w.sint(s.sid)
            w.obj(s.status)
            self._ecount += 1
        self._statuses = []
        count = self._ecount
        if count == 0:
            return None
        frame = w.take(_batch_prefix(self.doc_id, now_ms, count))
        self._ecount = 0
        skip = None if self._many_authors else self._author
        self._author = -1
        self._many_authors = False
        return Batch(frame, skip, count, arrivals)

    # -- internals

    cdef void _author_is(self, int64_t sid):
        if self._author == -1:
            self._author = sid
        elif self._author != sid:
            self._many_authors = True

    cdef int _mark(self) except -1:
        if not self._marked:
            self._marked = True
            if self._dirty_set is not None:
                self._dirty_set.add(self)
        return 0

    cdef int _schedule(self, int64_t deadline) except -1:
        if deadline < self.next_deadline_ms:
            self.next_deadline_ms = deadline
        return 0

    cdef int _event3(self, int code, int64_t sid, object value) except -1:
        """[code, sid, value] for typing / activity / focus events."""
        cdef Writer w = self._events
        w.byte(0x93)
        w.byte(code)
        w.sint(sid)
        if value is True:
            w.byte(0xc3)
        elif value is False:
            w.byte(0xc2)
        else:
            w.sint(value)
        self._ecount += 1
        self._author_is(sid)
        self._mark()
        return 0

    cdef int c_move(self, Session s, bint has, int64_t line, int64_t col, int64_t off,
                    bint has_sel, int64_t a_line, int64_t a_col, int64_t a_off, bint backward,
                    int64_t now) except -1:
        s.has_cursor = has
        s.line = line
        s.col = col
        s.off = off
        s.has_selection = has_sel and has
        s.a_line = a_line
        s.a_col = a_col
        s.a_off = a_off
        s.backward = backward
        s.cursor_arrived_ms = now
        if not s.cursor_moved:
            s.cursor_moved = True
            self._moved.append(s)
            self._mark()
        return self._act(s, now)

    cdef int c_typing(self, Session s, bint typing, int64_t now) except -1:
        if typing:
            s.typing_until_ms = now + self.debounce
            self._schedule(s.typing_until_ms)
            if not s.typing:
                s.typing = True
                self._event3(EV_TYPING, s.sid, True)
        elif s.typing:
            s.typing = False
            self._event3(EV_TYPING, s.sid, False)
        return self._act(s, now)

    cdef int c_viewport(self, Session s, int64_t top, int64_t bottom, double pct,
                        int64_t now) except -1:
        cdef Writer w = self._events
        pct = pct + 0.0  # -0.0 -> 0.0, as the pure twin does
        s.viewport = (top, bottom, pct)
        w.byte(0x95)
        w.byte(EV_VIEWPORT)
        w.sint(s.sid)
        w.sint(top)
        w.sint(bottom)
        w.double(pct)
        self._ecount += 1
        self._author_is(s.sid)
        self._mark()
        return self._act(s, now)

    cdef int c_focus(self, Session s, bint focused, int64_t now) except -1:
        if focused == s.focused:
            return 0
        s.focused = focused
        self._event3(EV_FOCUS, s.sid, True if focused else False)
        if focused:
            return self._act(s, now)
        s.blurred_at_ms = now
        self._schedule(self._refresh(s, now))
        return 0

    cdef int _act(self, Session s, int64_t now) except -1:
        s.last_active_ms = now
        if not s.focused:
            s.blurred_at_ms = now
        self._schedule(self._refresh(s, now))
        return 0

    cdef int64_t _refresh(self, Session s, int64_t now) except? -1:
        cdef int64_t idle_for = now - s.last_active_ms
        cdef int64_t blur_deadline = C_NEVER
        cdef int64_t deadline
        cdef int activity
        if s.disconnected:  # held as it was: only a typing that runs out still changes
            return s.typing_until_ms if s.typing else C_NEVER
        if not s.focused:
            blur_deadline = s.blurred_at_ms + self.away_after_blur
        if idle_for >= self.away_after or now >= blur_deadline:
            activity = AWAY
            deadline = C_NEVER
        elif idle_for >= self.activity_timeout:
            activity = IDLE
            deadline = min(s.last_active_ms + self.away_after, blur_deadline)
        else:
            if s.typing:
                activity = EDITING
            elif s.has_selection:
                activity = SELECTING
            else:
                activity = VIEWING
            deadline = min(s.last_active_ms + self.activity_timeout, blur_deadline)
        if s.typing and s.typing_until_ms < deadline:
            deadline = s.typing_until_ms
        if activity != s._activity:
            s._activity = activity
            self._event3(EV_ACTIVITY, s.sid, activity)
        return deadline


# ---------------------------------------------------------------- rate limit

cdef class TokenBucket:
    """`rate` frames a second with bursts of `burst` (see relay/core/ratelimit.py)."""

    def __init__(self, rate, burst, close_after_ms, now_ms):
        self._rate = rate / 1000.0
        self._burst = float(burst)
        self._tokens = float(burst)
        self._last = now_ms
        self._close_after = close_after_ms
        self._excess_since = -1.0
        self._last_drop = -1.0
        self.last_error_ms = -1e18

    cdef bint c_take(self, double now):
        cdef double tokens = self._tokens + (now - self._last) * self._rate
        self._last = now
        if tokens > self._burst:
            tokens = self._burst
        if tokens >= 1.0:
            self._tokens = tokens - 1.0
            if self._excess_since >= 0 and now - self._last_drop >= 1000.0:
                self._excess_since = -1.0
            return True
        self._tokens = tokens
        if self._excess_since < 0:
            self._excess_since = now
        self._last_drop = now
        return False

    def take(self, now_ms):
        return self.c_take(now_ms)

    def abusive(self, now_ms):
        return self._excess_since >= 0 and now_ms - self._excess_since >= self._close_after

    def state(self):
        return (self._tokens, self._last, self._excess_since, self._last_drop,
                self.last_error_ms)

    def restore(self, state):
        self._tokens, self._last, self._excess_since, self._last_drop, self.last_error_ms = (
            float(x) for x in state
        )
        if self._tokens > self._burst:
            self._tokens = self._burst


# ---------------------------------------------------------------- ingest

cdef class Membership:
    """A connection's open document: which document, and its sid there."""

    def __init__(self, Document doc, sid):
        self.doc = doc
        self.sid = sid


cdef inline int64_t _uint(const unsigned char* b, Py_ssize_t n, Py_ssize_t* pos):
    """A msgpack unsigned int up to 2^32-1 in its smallest encoding, or -1."""
    cdef Py_ssize_t i = pos[0]
    cdef unsigned char c
    if i >= n:
        return -1
    c = b[i]
    if c < 0x80:
        pos[0] = i + 1
        return c
    if c == 0xcc and i + 1 < n:
        pos[0] = i + 2
        return b[i + 1]
    if c == 0xcd and i + 2 < n:
        pos[0] = i + 3
        return (<int64_t>b[i + 1] << 8) | b[i + 2]
    if c == 0xce and i + 4 < n:
        pos[0] = i + 5
        return ((<int64_t>b[i + 1] << 24) | (<int64_t>b[i + 2] << 16)
                | (<int64_t>b[i + 3] << 8) | b[i + 4])
    return -1


cdef inline int _bool(const unsigned char* b, Py_ssize_t n, Py_ssize_t* pos):
    cdef Py_ssize_t i = pos[0]
    if i >= n:
        return -1
    if b[i] == 0xc3:
        pos[0] = i + 1
        return 1
    if b[i] == 0xc2:
        pos[0] = i + 1
        return 0
    return -1


cdef inline double _pct(const unsigned char* b, Py_ssize_t n, Py_ssize_t* pos):
    """scroll_pct as an int or a float32/float64; -1.0 when absent or out of [0, 100]."""
    cdef Py_ssize_t i = pos[0]
    cdef uint64_t bits = 0
    cdef uint32_t bits32 = 0
    cdef double d
    cdef float f
    cdef int k
    if i >= n:
        return -1.0
    if b[i] == 0xcb and i + 8 < n:
        for k in range(8):
            bits = (bits << 8) | b[i + 1 + k]
        memcpy(&d, &bits, 8)
        pos[0] = i + 9
    elif b[i] == 0xca and i + 4 < n:
        for k in range(4):
            bits32 = (bits32 << 8) | b[i + 1 + k]
        memcpy(&f, &bits32, 4)
        d = f
        pos[0] = i + 5
    else:
        d = <double>_uint(b, n, pos)
    if not isfinite(d) or d < 0.0 or d > 100.0:
        return -1.0
    return d


cdef class HotCounts:
    """Hot frames applied, by message type; one instance shared by a hub's peers."""

    def __getitem__(self, int message_type):
        if message_type < 0 or message_type >= 8:
            raise IndexError(message_type)
        return self.n[message_type]

    @property
    def total(self):
        cdef int64_t t = 0
        for k in range(8):
            t += self.n[k]
        return t

    def add(self, int message_type):
        if message_type < 0 or message_type >= 8:
            raise IndexError(message_type)
        self.n[message_type] += 1


cdef class Peer:
    """One connection's handles and rate limit (see relay/core/peer.py)."""

    def __init__(self, TokenBucket bucket, HotCounts counts=None):
        self.bucket = bucket
        self.handles = {}
        self.counts = counts if counts is not None else HotCounts()

    def feed(self, bytes data, now_ms):
        """Take one frame: its message type when applied, else FALLBACK or RATE_LIMITED."""
        return self._feed(<const unsigned char*>PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data),
                          data, now_ms)

    def feed_wire(self, bytes buf, Py_ssize_t start, Py_ssize_t max_payload, now_ms):
        """Take the WebSocket frames of `buf` from `start` (see relay/core/peer.py).

        The header parse, the unmask (into a stack buffer for small frames) and the hot
        decode all happen here: a run of hot frames costs no Python object per frame.
        """
        cdef const unsigned char* b = <const unsigned char*>PyBytes_AS_STRING(buf)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(buf)
        cdef Py_ssize_t i = start, head, end, k
        cdef uint64_t length
        cdef unsigned char b1
        cdef const unsigned char* mask
        cdef const unsigned char* src
        cdef unsigned char local[128]
        cdef unsigned char* dst
        cdef object payload
        cdef int t
        cdef int64_t now = now_ms
        if start < 0 or start > n:
            raise IndexError(start)
        while True:
            if n - i < 2:
                return (i, NEED_MORE, None)
            b1 = b[i + 1]
            length = b1 & 0x7F
            head = 2
            if length == 126:
                if n - i < 4:
                    return (i, NEED_MORE, None)
                length = (<uint64_t>b[i + 2] << 8) | b[i + 3]
                head = 4
            elif length == 127:
                if n - i < 10:
                    return (i, NEED_MORE, None)
                length = 0
                for k in range(8):
                    length = (length << 8) | b[i + 2 + k]
                head = 10
            if b[i] != 0x82 or not (b1 & 0x80) or max_payload < 0 or length > <uint64_t>max_payload:
                return (i, NOT_OURS, None)
            end = i + head + 4 + <Py_ssize_t>length
            if end > n:
                return (i, NEED_MORE, None)
            mask = b + i + head
            src = mask + 4
            if length <= sizeof(local):
                payload = None
                dst = local
            else:
                payload = PyBytes_FromStringAndSize(NULL, <Py_ssize_t>length)
                dst = <unsigned char*>PyBytes_AS_STRING(payload)
            for k in range(<Py_ssize_t>length):
                dst[k] = src[k] ^ mask[k & 3]
            t = self._feed(dst, <Py_ssize_t>length, payload, now)
            if t <= 0:
                if payload is None:
                    payload = PyBytes_FromStringAndSize(<char*>dst, <Py_ssize_t>length)
                return (end, t, payload)
            i = end

    cdef int _feed(self, const unsigned char* b, Py_ssize_t n, object data, int64_t now) except -100:
        """The hot decode of one payload; `data` is its bytes object, or None until needed."""
        cdef int t
        if not self.bucket.c_take(<double>now):
            return C_RATE_LIMITED
        t = self._apply(b, n, data, now)
        if t > 0:
            self.counts.n[t] += 1
        return t

    cdef int _apply(self, const unsigned char* b, Py_ssize_t n, object data, int64_t now) except -100:
        cdef Py_ssize_t pos = 2
        cdef int arity, t, flag
        cdef int64_t h, v0, v1, v2, v3, v4, v5
        cdef double pct
        cdef PyObject* found
        cdef Membership m
        cdef Session s
        if n < 3 or (b[0] & 0xf0) != 0x90:
            return self._general(b, n, data, now)
        arity = b[0] & 0x0f
        t = b[1]
        h = _uint(b, n, &pos)
        if h < 0:
            return self._general(b, n, data, now)
        found = PyDict_GetItem(self.handles, h)
        if found == NULL:
            return C_FALLBACK  # not joined: the general path answers ERROR 3 (or 1 first)
        m = <Membership>found
        s = m.doc.sessions.get(m.sid)
        if s is None:
            return self._general(b, n, data, now)
        if t == 4:  # CURSOR
            if arity == 2 and pos == n:
                m.doc.c_move(s, False, 0, 0, 0, False, 0, 0, 0, False, now)
                return 4
            if arity == 5 or arity == 9:
                v0 = _uint(b, n, &pos)
                v1 = _uint(b, n, &pos)
                v2 = _uint(b, n, &pos)
                if v0 >= 0 and v1 >= 0 and v2 >= 0:
                    if arity == 5:
                        if pos == n:
                            m.doc.c_move(s, True, v0, v1, v2, False, 0, 0, 0, False, now)
                            return 4
                    else:
                        v3 = _uint(b, n, &pos)
                        v4 = _uint(b, n, &pos)
                        v5 = _uint(b, n, &pos)
                        flag = _bool(b, n, &pos)
                        if v3 >= 0 and v4 >= 0 and v5 >= 0 and flag >= 0 and pos == n:
                            m.doc.c_move(s, True, v0, v1, v2, True, v3, v4, v5, flag, now)
                            return 4
        elif t == 5:  # TYPING
            if arity == 2 and pos == n:
                m.doc.c_typing(s, True, now)
                return 5
            if arity == 3:
                flag = _bool(b, n, &pos)
                if flag >= 0 and pos == n:
                    m.doc.c_typing(s, flag, now)
                    return 5
        elif t == 6:  # VIEWPORT
            if arity == 5:
                v0 = _uint(b, n, &pos)
                v1 = _uint(b, n, &pos)
                pct = _pct(b, n, &pos)
                if v0 >= 0 and v1 >= 0 and v0 <= v1 and pct >= 0.0 and pos == n:
                    m.doc.c_viewport(s, v0, v1, pct, now)
                    return 6
        elif t == 7:  # FOCUS
            if arity == 3:
                flag = _bool(b, n, &pos)
                if flag >= 0 and pos == n:
                    m.doc.c_focus(s, flag, now)
                    return 7
        # Anything else (cold types, unusual encodings, errors): the general decoder.
        return self._general(b, n, data, now)

    cdef int _general(self, const unsigned char* b, Py_ssize_t n, object data,
                      int64_t now) except -100:
        if data is None:
            data = PyBytes_FromStringAndSize(<const char*>b, n)
        return feed_decoded(self.handles, data, now)
