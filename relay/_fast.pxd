# Class layouts of the compiled hot path (bodies in _fast.pyx). Field names follow the
# pure twin (relay/core/document.py, peer.py, ratelimit.py, model.Session).
from libc.stdint cimport int64_t, uint64_t


cdef class Writer:
    cdef char* buf
    cdef Py_ssize_t length
    cdef Py_ssize_t capacity

    cdef int _grow(self, Py_ssize_t extra) except -1
    cdef int byte(self, unsigned char b) except -1
    cdef int uint(self, uint64_t v) except -1
    cdef int sint(self, int64_t v) except -1
    cdef int integer(self, object v) except -1
    cdef int double(self, double v) except -1
    cdef int string(self, str s) except -1
    cdef int array_header(self, Py_ssize_t n) except -1
    cdef int map_header(self, Py_ssize_t n) except -1
    cdef int obj(self, object o) except -1
    cdef bytes take(self, bytes prefix)


cdef class Session:
    cdef public int64_t sid
    cdef public object user
    cdef public str color
    cdef public int64_t connected_at_ms
    cdef public int64_t last_active_ms
    cdef int _activity
    cdef public bint typing
    cdef public int64_t typing_until_ms
    cdef public bint focused
    cdef public int64_t blurred_at_ms
    cdef bint has_cursor
    cdef int64_t line, col, off
    cdef bint has_selection
    cdef int64_t a_line, a_col, a_off
    cdef bint backward
    cdef public object viewport
    cdef public bint cursor_moved
    cdef public int64_t cursor_arrived_ms
    cdef public bint remote
    cdef public bint disconnected
    cdef public int kind
    cdef public object status
    cdef public bint status_moved


cdef class Document:
    cdef readonly str doc_id
    cdef readonly object rules
    cdef public dict sessions
    cdef int64_t _next_sid
    cdef Writer _events
    cdef Py_ssize_t _ecount
    cdef int64_t _author
    cdef bint _many_authors
    cdef list _moved
    cdef list _statuses
    cdef public int64_t next_deadline_ms
    cdef object _dirty_set
    cdef bint _marked
    cdef int64_t debounce, activity_timeout, away_after, away_after_blur

    cdef void _author_is(self, int64_t sid)
    cdef int _mark(self) except -1
    cdef int _schedule(self, int64_t deadline) except -1
    cdef int _event3(self, int code, int64_t sid, object value) except -1
    cdef int c_move(self, Session s, bint has, int64_t line, int64_t col, int64_t off,
                    bint has_sel, int64_t a_line, int64_t a_col, int64_t a_off, bint backward,
                    int64_t now) except -1
    cdef int c_typing(self, Session s, bint typing, int64_t now) except -1
    cdef int c_viewport(self, Session s, int64_t top, int64_t bottom, double pct,
                        int64_t now) except -1
    cdef int c_focus(self, Session s, bint focused, int64_t now) except -1
    cdef int _act(self, Session s, int64_t now) except -1
    cdef int64_t _refresh(self, Session s, int64_t now) except? -1


cdef class TokenBucket:
    cdef double _rate, _burst, _tokens, _last, _close_after, _excess_since, _last_drop
    cdef public double last_error_ms
    cdef bint c_take(self, double now)


cdef class Membership:
    cdef public Document doc
    cdef public int64_t sid


cdef class HotCounts:
    cdef int64_t n[8]


cdef class Peer:
    cdef public TokenBucket bucket
    cdef public dict handles
    cdef public HotCounts counts

    cdef int _feed(self, const unsigned char* b, Py_ssize_t n, object data,
                   int64_t now) except -100
    cdef int _apply(self, const unsigned char* b, Py_ssize_t n, object data,
                    int64_t now) except -100
    cdef int _general(self, const unsigned char* b, Py_ssize_t n, object data,
                      int64_t now) except -100
