# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, nonecheck=False
"""The load generator's hot path: masked CURSOR frames out, BATCH frames in.

Compiled on first use by bench/_ext.py (cythonize, in place; the .c and .so are gitignored).

- `Sender.tick()` walks every connection whose next send is due, builds its 24-byte masked
  CURSOR frame `[4, h, line=sender, col=k, off=seq]` (uint32 fields: fixed length, so the
  header is constant), records the send time (CLOCK_MONOTONIC) in a per-sender ring indexed
  by `k`, and writes it with one non-blocking send(2) on the socket (uvloop only reads it).
- `Conn` is the asyncio protocol of one connection once it has joined: it splits the read
  buffer into server frames (unmasked), walks each BATCH's msgpack without building Python
  objects, and for each cursor event looks up the send time of (sender, k) and adds the
  latency to the histograms. Anything that is not a binary BATCH frame (ping, close, ERROR,
  PONG, text) goes to a Python callback: the rare path.
"""

from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free
from libc.string cimport memcpy, memmove


cdef extern from "<time.h>" nogil:
    ctypedef long time_t
    struct timespec:
        time_t tv_sec
        long tv_nsec
    int clock_gettime(int clk, timespec* ts)
    int CLOCK_MONOTONIC


cdef extern from "<sys/socket.h>" nogil:
    ssize_t c_send "send"(int fd, const void* buf, size_t n, int flags)
    int MSG_DONTWAIT
    int MSG_NOSIGNAL


cdef extern from "<errno.h>" nogil:
    int errno
    int EAGAIN
    int EWOULDBLOCK
    int EINTR


# Per-sender ring of send times, indexed by the sender's own counter k (col): K sends back.
cdef enum:
    KRING = 512
    KMASK = 511
    NB = 1851          # latency buckets, see bucket_of
    CURSOR_LEN = 24    # 6-byte masked header + 18-byte payload
    PEND_MAX = 64


cdef inline int64_t now_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <int64_t>ts.tv_sec * 1000000000 + ts.tv_nsec


def monotonic_ns():
    """The clock both sides use (CLOCK_MONOTONIC, ns): same as time.monotonic_ns()."""
    return now_ns()


cdef inline int bucket_of(int64_t us) noexcept nogil:
    # 20 us steps to 10 ms, 0.2 ms to 100 ms, 2 ms to 1 s, 20 ms to 10 s, then overflow.
    if us < 0:
        return 0
    if us < 10000:
        return <int>(us // 20)
    if us < 100000:
        return 500 + <int>((us - 10000) // 200)
    if us < 1000000:
        return 950 + <int>((us - 100000) // 2000)
    if us < 10000000:
        return 1400 + <int>((us - 1000000) // 20000)
    return NB - 1


def bucket_edges_us():
    """[(lo_us, hi_us)] for every bucket; the last one's hi is None (overflow)."""
    out = []
    cdef int b
    for b in range(NB - 1):
        if b < 500:
            out.append((b * 20, (b + 1) * 20))
        elif b < 950:
            out.append((10000 + (b - 500) * 200, 10000 + (b - 499) * 200))
        elif b < 1400:
            out.append((100000 + (b - 950) * 2000, 100000 + (b - 949) * 2000))
        else:
            out.append((1000000 + (b - 1400) * 20000, 1000000 + (b - 1399) * 20000))
    out.append((10000000, None))
    return out


cdef inline uint64_t xorshift(uint64_t* s) noexcept nogil:
    cdef uint64_t x = s[0]
    x ^= x << 13
    x ^= x >> 7
    x ^= x << 17
    s[0] = x
    return x


cdef uint64_t _frame_rng = 0x9E3779B97F4A7C15


def client_frame(int opcode, payload):
    """One masked, unfragmented client frame (cold path: HELLO, JOIN, pong, close)."""
    cdef bytes data = bytes(payload)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data), hl, i
    cdef const unsigned char* src = <const unsigned char*>PyBytes_AS_STRING(data)
    cdef unsigned char head[14]
    head[0] = <unsigned char>(0x80 | (opcode & 0x0F))
    if n < 126:
        head[1] = <unsigned char>(0x80 | n)
        hl = 2
    elif n < 65536:
        head[1] = 0x80 | 126
        head[2] = <unsigned char>(n >> 8)
        head[3] = <unsigned char>(n & 0xFF)
        hl = 4
    else:
        head[1] = 0x80 | 127
        for i in range(8):
            head[2 + i] = <unsigned char>((n >> (8 * (7 - i))) & 0xFF)
        hl = 10
    cdef uint64_t m = xorshift(&_frame_rng)
    for i in range(4):
        head[hl + i] = <unsigned char>((m >> (8 * i)) & 0xFF)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, hl + 4 + n)
    cdef unsigned char* dst = <unsigned char*>PyBytes_AS_STRING(out)
    memcpy(dst, head, hl + 4)
    for i in range(n):
        dst[hl + 4 + i] = src[i] ^ head[hl + (i & 3)]
    return out


cdef class Shared:
    """Everything both sides write: send times, per-receiver progress, histograms, counters."""

    cdef public int n_conn, users, nsec
    cdef int64_t* send_ns
    cdef int32_t* send_k
    cdef int32_t* lastk
    cdef int64_t* hist
    cdef int64_t* sec_hist
    # Window: sends with t0 <= send time < t1 are measured (send times, CLOCK_MONOTONIC ns).
    cdef public int64_t t_start, t0, t1, coalesce_ns
    cdef public int64_t delivered, coalesced, lost, dup, own, stale, foreign, other_events
    cdef public int64_t batches, frames_in, bytes_in, parse_errors, max_lat_ns, lat_sum_us
    cdef public int64_t events_total

    def __cinit__(self, int n_conn, int users, int nsec):
        cdef Py_ssize_t i
        self.n_conn = n_conn
        self.users = users
        self.nsec = nsec
        self.send_ns = <int64_t*>calloc(<size_t>n_conn * KRING, sizeof(int64_t))
        self.send_k = <int32_t*>calloc(<size_t>n_conn * KRING, sizeof(int32_t))
        self.lastk = <int32_t*>calloc(<size_t>n_conn * users, sizeof(int32_t))
        self.hist = <int64_t*>calloc(NB, sizeof(int64_t))
        self.sec_hist = <int64_t*>calloc(<size_t>nsec * NB, sizeof(int64_t))
        if (self.send_ns == NULL or self.send_k == NULL or self.lastk == NULL
                or self.hist == NULL or self.sec_hist == NULL):
            raise MemoryError()
        for i in range(<Py_ssize_t>n_conn * KRING):
            self.send_k[i] = -1
        for i in range(<Py_ssize_t>n_conn * users):
            self.lastk[i] = -1
        self.t_start = 0
        self.t0 = 1 << 62
        self.t1 = 1 << 62
        self.coalesce_ns = 50000000

    def __dealloc__(self):
        free(self.send_ns)
        free(self.send_k)
        free(self.lastk)
        free(self.hist)
        free(self.sec_hist)

    def histogram(self):
        cdef int b
        return [self.hist[b] for b in range(NB)]

    def second_histogram(self, int s):
        cdef int b
        if s < 0 or s >= self.nsec:
            raise IndexError(s)
        return [self.sec_hist[<Py_ssize_t>s * NB + b] for b in range(NB)]

    cdef inline void cursor(self, int idx, int doc_base, int64_t line, int64_t col,
                            int64_t now) noexcept:
        cdef int64_t slot, sent, lat, m, first, s_m, s_next
        cdef Py_ssize_t li
        cdef int32_t last
        cdef int b
        cdef int64_t sec
        if line == idx:
            self.own += 1
            return
        if line < doc_base or line >= doc_base + self.users or line >= self.n_conn:
            self.foreign += 1  # a cursor of a session outside this document: must not happen
            return
        if col < 0 or col > 0x7FFFFFFF:
            self.stale += 1
            return
        slot = line * KRING + (col & KMASK)
        if self.send_k[slot] != col:
            self.stale += 1  # more than KRING sends ago, or not one of ours
            return
        sent = self.send_ns[slot]
        li = <Py_ssize_t>idx * self.users + (line - doc_base)
        last = self.lastk[li]
        if col <= last:
            self.dup += 1
            return
        if last >= 0 and col > last + 1:
            # Updates of this sender this receiver never saw: coalesced by the relay when the
            # next one followed within a batch interval (the protocol's latest-wins), else lost.
            first = last + 1
            if col - first > KRING - 1:
                first = col - (KRING - 1)
            for m in range(first, col):
                if self.send_k[line * KRING + (m & KMASK)] != m:
                    continue
                s_m = self.send_ns[line * KRING + (m & KMASK)]
                if s_m < self.t0 or s_m >= self.t1:
                    continue
                s_next = self.send_ns[line * KRING + ((m + 1) & KMASK)]
                if s_next - s_m < self.coalesce_ns:
                    self.coalesced += 1
                else:
                    self.lost += 1
        self.lastk[li] = <int32_t>col
        lat = now - sent
        b = bucket_of(lat // 1000)
        sec = (sent - self.t_start) // 1000000000
        if 0 <= sec < self.nsec:
            self.sec_hist[sec * NB + b] += 1
        if sent >= self.t0 and sent < self.t1:
            self.delivered += 1
            self.hist[b] += 1
            self.lat_sum_us += lat // 1000
            if lat > self.max_lat_ns:
                self.max_lat_ns = lat


cdef struct Reader:
    const unsigned char* p
    Py_ssize_t n
    Py_ssize_t pos
    int err


cdef inline int64_t read_int(Reader* r) noexcept nogil:
    cdef unsigned char c
    cdef const unsigned char* q
    cdef Py_ssize_t need
    if r.pos >= r.n:
        r.err = 1
        return 0
    c = r.p[r.pos]
    if c < 0x80:
        r.pos += 1
        return c
    if c >= 0xE0:
        r.pos += 1
        return <int64_t>(<signed char>c)
    need = 0
    if c == 0xCC or c == 0xD0:
        need = 1
    elif c == 0xCD or c == 0xD1:
        need = 2
    elif c == 0xCE or c == 0xD2:
        need = 4
    elif c == 0xCF or c == 0xD3:
        need = 8
    else:
        r.err = 1
        return 0
    if r.pos + 1 + need > r.n:
        r.err = 1
        return 0
    q = r.p + r.pos + 1
    r.pos += 1 + need
    if c == 0xCC:
        return q[0]
    if c == 0xCD:
        return (<int64_t>q[0] << 8) | q[1]
    if c == 0xCE:
        return ((<int64_t>q[0] << 24) | (<int64_t>q[1] << 16) | (<int64_t>q[2] << 8)
                | q[3])
    if c == 0xCF:
        return <int64_t>(
            (<uint64_t>q[0] << 56) | (<uint64_t>q[1] << 48) | (<uint64_t>q[2] << 40)
            | (<uint64_t>q[3] << 32) | (<uint64_t>q[4] << 24) | (<uint64_t>q[5] << 16)
            | (<uint64_t>q[6] << 8) | q[7])
    if c == 0xD0:
        return <int64_t>(<signed char>q[0])
    if c == 0xD1:
        return <int64_t>(<short>((q[0] << 8) | q[1]))
    if c == 0xD2:
        return <int64_t>(<int32_t>((<uint32_t>q[0] << 24) | (<uint32_t>q[1] << 16)
                                   | (<uint32_t>q[2] << 8) | q[3]))
    return <int64_t>(
        (<uint64_t>q[0] << 56) | (<uint64_t>q[1] << 48) | (<uint64_t>q[2] << 40)
        | (<uint64_t>q[3] << 32) | (<uint64_t>q[4] << 24) | (<uint64_t>q[5] << 16)
        | (<uint64_t>q[6] << 8) | q[7])


cdef inline int64_t read_be(Reader* r, int nbytes) noexcept nogil:
    cdef int64_t v = 0
    cdef int i
    if r.pos + nbytes > r.n:
        r.err = 1
        return 0
    for i in range(nbytes):
        v = (v << 8) | r.p[r.pos + i]
    r.pos += nbytes
    return v


cdef inline int64_t read_array(Reader* r) noexcept nogil:
    cdef unsigned char c
    if r.pos >= r.n:
        r.err = 1
        return 0
    c = r.p[r.pos]
    if 0x90 <= c <= 0x9F:
        r.pos += 1
        return c & 0x0F
    if c == 0xDC:
        r.pos += 1
        return read_be(r, 2)
    if c == 0xDD:
        r.pos += 1
        return read_be(r, 4)
    r.err = 1
    return 0


cdef void skip(Reader* r, int depth) noexcept nogil:
    """Skip one msgpack value of any type (depth-bounded)."""
    cdef unsigned char c
    cdef int64_t n, i
    if r.err:
        return
    if r.pos >= r.n or depth > 32:
        r.err = 1
        return
    c = r.p[r.pos]
    r.pos += 1
    if c < 0x80 or c >= 0xE0 or c == 0xC0 or c == 0xC2 or c == 0xC3:
        return
    if 0x80 <= c <= 0x8F:
        n = 2 * (c & 0x0F)
    elif 0x90 <= c <= 0x9F:
        n = c & 0x0F
    elif 0xA0 <= c <= 0xBF:
        r.pos += c & 0x1F
        if r.pos > r.n:
            r.err = 1
        return
    elif c == 0xCC or c == 0xD0:
        r.pos += 1
        n = -1
    elif c == 0xCD or c == 0xD1:
        r.pos += 2
        n = -1
    elif c == 0xCE or c == 0xD2 or c == 0xCA:
        r.pos += 4
        n = -1
    elif c == 0xCF or c == 0xD3 or c == 0xCB:
        r.pos += 8
        n = -1
    elif c == 0xD9 or c == 0xC4:
        r.pos += read_be(r, 1)
        n = -1
    elif c == 0xDA or c == 0xC5:
        r.pos += read_be(r, 2)
        n = -1
    elif c == 0xDB or c == 0xC6:
        r.pos += read_be(r, 4)
        n = -1
    elif c == 0xD4:
        r.pos += 2
        n = -1
    elif c == 0xD5:
        r.pos += 3
        n = -1
    elif c == 0xD6:
        r.pos += 5
        n = -1
    elif c == 0xD7:
        r.pos += 9
        n = -1
    elif c == 0xD8:
        r.pos += 17
        n = -1
    elif c == 0xC7:
        r.pos += read_be(r, 1) + 1
        n = -1
    elif c == 0xC8:
        r.pos += read_be(r, 2) + 1
        n = -1
    elif c == 0xC9:
        r.pos += read_be(r, 4) + 1
        n = -1
    elif c == 0xDC:
        n = read_be(r, 2)
    elif c == 0xDD:
        n = read_be(r, 4)
    elif c == 0xDE:
        n = 2 * read_be(r, 2)
    elif c == 0xDF:
        n = 2 * read_be(r, 4)
    else:
        r.err = 1
        return
    if n < 0:
        if r.pos > r.n:
            r.err = 1
        return
    for i in range(n):
        skip(r, depth + 1)
        if r.err:
            return


cdef class Sender


cdef class Conn:
    """Protocol of one joined connection (set with transport.set_protocol)."""

    cdef Shared sh
    cdef public Sender sender     # ticked from here too, so a burst of reads cannot stall it
    cdef public int idx, doc_base
    cdef bytearray pend
    cdef public object slow       # slow(conn, first_byte, payload: bytes)
    cdef public object on_lost    # on_lost(conn, exc)
    cdef public object transport
    cdef public bint closed

    def __cinit__(self, Shared sh, int idx, int doc_base, slow, on_lost, transport):
        self.sh = sh
        self.idx = idx
        self.doc_base = doc_base
        self.pend = bytearray()
        self.slow = slow
        self.on_lost = on_lost
        self.transport = transport
        self.closed = False
        self.sender = None

    def connection_made(self, transport):
        self.transport = transport

    def pause_writing(self):
        pass

    def resume_writing(self):
        pass

    def eof_received(self):
        return False

    def connection_lost(self, exc):
        self.closed = True
        if self.on_lost is not None:
            self.on_lost(self, exc)

    def data_received(self, data):
        cdef int64_t now = now_ns()
        cdef Py_ssize_t n, used
        cdef const unsigned char* p
        if type(data) is not bytes:
            data = bytes(data)
        n = PyBytes_GET_SIZE(data)
        self.sh.bytes_in += n
        if PyByteArray_GET_SIZE(self.pend) == 0:
            p = <const unsigned char*>PyBytes_AS_STRING(data)
            used = self._parse(p, n, now)
            if used < n:
                self.pend += data[used:]
        else:
            self.pend += data
            n = PyByteArray_GET_SIZE(self.pend)
            p = <const unsigned char*>PyByteArray_AS_STRING(self.pend)
            used = self._parse(p, n, now)
            del self.pend[:used]
        # A burst of BATCH frames (every member of every document, each batch_ms) can keep
        # the loop in read callbacks for milliseconds: keep the send schedule from here too.
        if self.sender is not None and now - self.sender.last_tick_ns >= 1000000:
            self.sender._tick()

    cdef Py_ssize_t _parse(self, const unsigned char* p, Py_ssize_t n, int64_t now) except -1:
        cdef Py_ssize_t pos = 0, hl, plen, i
        cdef unsigned char b0, b1
        while n - pos >= 2:
            b0 = p[pos]
            b1 = p[pos + 1]
            plen = b1 & 0x7F
            hl = 2
            if plen == 126:
                if n - pos < 4:
                    break
                plen = (<Py_ssize_t>p[pos + 2] << 8) | p[pos + 3]
                hl = 4
            elif plen == 127:
                if n - pos < 10:
                    break
                plen = 0
                for i in range(8):
                    plen = (plen << 8) | p[pos + 2 + i]
                hl = 10
                if plen < 0 or plen > (1 << 30):
                    raise ValueError("server frame length out of range")
            if b1 & 0x80:
                hl += 4  # a masked server frame breaks RFC 6455; the slow path reports it
            if n - pos - hl < plen:
                break
            self.sh.frames_in += 1
            if b0 == 0x82 and not (b1 & 0x80):
                if not self._batch(p + pos + hl, plen, now):
                    self.slow(self, b0, PyBytes_FromStringAndSize(
                        <const char*>(p + pos + hl), plen))
            else:
                self.slow(self, b0 | ((b1 & 0x80) << 1), PyBytes_FromStringAndSize(
                    <const char*>(p + pos + hl), plen))
            pos += hl + plen
        return pos

    cdef bint _batch(self, const unsigned char* p, Py_ssize_t n, int64_t now) noexcept:
        """Walk one BATCH; False when the payload is not a BATCH (the slow path decodes it)."""
        cdef Reader r
        cdef int64_t alen, t, ev, i, m, j, code, line, col
        cdef Shared sh = self.sh
        r.p = p
        r.n = n
        r.pos = 0
        r.err = 0
        alen = read_array(&r)
        if r.err or alen != 4:
            return False
        t = read_int(&r)
        if r.err or t != 34:
            return False
        skip(&r, 0)  # doc_id
        skip(&r, 0)  # server_ms
        ev = read_array(&r)
        if r.err:
            sh.parse_errors += 1
            return True
        sh.batches += 1
        sh.events_total += ev
        for i in range(ev):
            m = read_array(&r)
            if r.err:
                break
            if m == 0:
                continue
            code = read_int(&r)
            if r.err:
                break
            if code == 1 and m == 5:
                read_int(&r)  # sid
                line = read_int(&r)
                col = read_int(&r)
                read_int(&r)  # off: the global sequence number (unused here)
                if r.err:
                    break
                sh.cursor(self.idx, self.doc_base, line, col, now)
            else:
                sh.other_events += 1
                for j in range(m - 1):
                    skip(&r, 1)
                if r.err:
                    break
        if r.err:
            sh.parse_errors += 1
        return True


cdef class Sender:
    """The send schedule of every connection and the frames it writes."""

    cdef Shared sh
    cdef public int n
    cdef int* fds
    cdef unsigned char* handles
    cdef int64_t* nominal
    cdef int64_t* due
    cdef int32_t* k
    cdef unsigned char* pend
    cdef int* pend_len
    cdef char* active
    cdef public int64_t period_ns, jitter_ns
    cdef uint64_t rng
    cdef uint32_t seq
    cdef public int64_t sent, sent_window, frames_out, bytes_out, blocked, errors, skipped
    cdef public int64_t late_1ms, late_2ms, late_5ms, late_10ms, late_25ms, max_late_ns
    cdef public int64_t late_window_n, late_window_5ms, ticks
    cdef int64_t last_tick_ns
    cdef int64_t* sec_late   # per second of the run: sends more than 5 ms behind schedule
    cdef int64_t* sec_sent
    cdef int64_t* sec_gap    # per second: the longest gap between two ticks, ns

    def __cinit__(self, Shared sh, int n, int64_t period_ns, int64_t jitter_ns, uint64_t seed):
        self.sh = sh
        self.n = n
        self.fds = <int*>calloc(n, sizeof(int))
        self.handles = <unsigned char*>calloc(n, 1)
        self.nominal = <int64_t*>calloc(n, sizeof(int64_t))
        self.due = <int64_t*>calloc(n, sizeof(int64_t))
        self.k = <int32_t*>calloc(n, sizeof(int32_t))
        self.pend = <unsigned char*>calloc(<size_t>n * PEND_MAX, 1)
        self.pend_len = <int*>calloc(n, sizeof(int))
        self.active = <char*>calloc(n, 1)
        self.sec_late = <int64_t*>calloc(sh.nsec, sizeof(int64_t))
        self.sec_sent = <int64_t*>calloc(sh.nsec, sizeof(int64_t))
        self.sec_gap = <int64_t*>calloc(sh.nsec, sizeof(int64_t))
        if (self.sec_late == NULL or self.sec_sent == NULL or self.fds == NULL or self.handles == NULL or self.nominal == NULL or self.due == NULL
                or self.k == NULL or self.pend == NULL or self.pend_len == NULL
                or self.active == NULL):
            raise MemoryError()
        self.period_ns = period_ns
        self.jitter_ns = jitter_ns
        self.rng = seed | 1
        self.seq = 0

    def __dealloc__(self):
        free(self.fds)
        free(self.handles)
        free(self.nominal)
        free(self.due)
        free(self.k)
        free(self.pend)
        free(self.pend_len)
        free(self.active)
        free(self.sec_late)
        free(self.sec_sent)
        free(self.sec_gap)

    def second_stats(self, int s):
        """(sends, sends more than 5 ms late) in second s of the run."""
        if s < 0 or s >= self.sh.nsec:
            raise IndexError(s)
        return self.sec_sent[s], self.sec_late[s], self.sec_gap[s]

    def add(self, int i, int fd, int handle):
        if i < 0 or i >= self.n or handle < 0 or handle > 127:
            raise ValueError("bad connection index or handle")
        self.fds[i] = fd
        self.handles[i] = <unsigned char>handle

    def start(self, int i, int64_t first_ns):
        """Connection i sends first at first_ns (+ jitter), then every period."""
        self.nominal[i] = first_ns
        self.due[i] = first_ns + self._jitter()
        self.active[i] = 1

    def stop(self, int i):
        self.active[i] = 0

    def stop_all(self):
        cdef int i
        for i in range(self.n):
            self.active[i] = 0

    def active_count(self):
        cdef int i, c = 0
        for i in range(self.n):
            c += self.active[i]
        return c

    cdef inline int64_t _jitter(self) noexcept:
        cdef uint64_t x
        if self.jitter_ns <= 0:
            return 0
        x = xorshift(&self.rng)
        return <int64_t>(x % <uint64_t>(2 * self.jitter_ns + 1)) - self.jitter_ns

    def send_raw(self, int i, bytes frame):
        """Write a prepared frame (pong, close) on connection i; False if it did not fit."""
        cdef Py_ssize_t n = PyBytes_GET_SIZE(frame)
        cdef ssize_t r
        if self.pend_len[i] > 0 and not self._flush(i):
            return False
        r = c_send(self.fds[i], PyBytes_AS_STRING(frame), n, MSG_DONTWAIT | MSG_NOSIGNAL)
        if r == n:
            self.frames_out += 1
            self.bytes_out += n
            return True
        if r > 0 and n - r <= PEND_MAX:
            memcpy(self.pend + <size_t>i * PEND_MAX, PyBytes_AS_STRING(frame) + r, n - r)
            self.pend_len[i] = <int>(n - r)
            self.frames_out += 1
            self.bytes_out += n
            return True
        return False

    cdef bint _flush(self, int i) noexcept:
        cdef int left = self.pend_len[i]
        cdef unsigned char* q = self.pend + <size_t>i * PEND_MAX
        cdef ssize_t r = c_send(self.fds[i], q, left, MSG_DONTWAIT | MSG_NOSIGNAL)
        if r == left:
            self.pend_len[i] = 0
            return True
        if r > 0:
            memmove(q, q + r, left - r)
            self.pend_len[i] = <int>(left - r)
        elif r < 0 and errno != EAGAIN and errno != EWOULDBLOCK and errno != EINTR:
            self.active[i] = 0
            self.errors += 1
        return False

    def tick(self):
        """Send every due CURSOR frame; returns how many went out."""
        return self._tick()

    cdef int _tick(self) noexcept:
        cdef int64_t now = now_ns()
        cdef int i, count = 0
        cdef int64_t late
        cdef int64_t sec = (now - self.sh.t_start) // 1000000000
        if 0 <= sec < self.sh.nsec and self.last_tick_ns > 0:
            if now - self.last_tick_ns > self.sec_gap[sec]:
                self.sec_gap[sec] = now - self.last_tick_ns
        self.ticks += 1
        self.last_tick_ns = now
        for i in range(self.n):
            if self.active[i] and self.due[i] <= now:
                late = now - self.due[i]
                if self._send(i, late):
                    count += 1
                    now = now_ns()
        return count

    cdef bint _send(self, int i, int64_t late) noexcept:
        cdef unsigned char buf[CURSOR_LEN]
        cdef uint32_t line = <uint32_t>i, col, off
        cdef uint64_t mk
        cdef int64_t t, slot, sec
        cdef ssize_t r
        cdef int j
        cdef Shared sh = self.sh
        if self.pend_len[i] > 0 and not self._flush(i):
            self.blocked += 1
            return False
        col = <uint32_t>self.k[i]
        off = self.seq
        mk = xorshift(&self.rng)
        buf[0] = 0x82
        buf[1] = 0x80 | 18
        buf[2] = <unsigned char>(mk & 0xFF)
        buf[3] = <unsigned char>((mk >> 8) & 0xFF)
        buf[4] = <unsigned char>((mk >> 16) & 0xFF)
        buf[5] = <unsigned char>((mk >> 24) & 0xFF)
        buf[6] = 0x95
        buf[7] = 0x04
        buf[8] = self.handles[i]
        buf[9] = 0xCE
        buf[10] = <unsigned char>(line >> 24)
        buf[11] = <unsigned char>(line >> 16)
        buf[12] = <unsigned char>(line >> 8)
        buf[13] = <unsigned char>line
        buf[14] = 0xCE
        buf[15] = <unsigned char>(col >> 24)
        buf[16] = <unsigned char>(col >> 16)
        buf[17] = <unsigned char>(col >> 8)
        buf[18] = <unsigned char>col
        buf[19] = 0xCE
        buf[20] = <unsigned char>(off >> 24)
        buf[21] = <unsigned char>(off >> 16)
        buf[22] = <unsigned char>(off >> 8)
        buf[23] = <unsigned char>off
        for j in range(18):
            buf[6 + j] ^= buf[2 + (j & 3)]
        slot = <int64_t>i * KRING + (col & KMASK)
        t = now_ns()
        sh.send_ns[slot] = t
        sh.send_k[slot] = <int32_t>col
        r = c_send(self.fds[i], buf, CURSOR_LEN, MSG_DONTWAIT | MSG_NOSIGNAL)
        if r < CURSOR_LEN:
            if r > 0:
                memcpy(self.pend + <size_t>i * PEND_MAX, buf + r, CURSOR_LEN - r)
                self.pend_len[i] = <int>(CURSOR_LEN - r)
            elif r < 0 and (errno == EAGAIN or errno == EWOULDBLOCK or errno == EINTR):
                sh.send_k[slot] = -1
                self.blocked += 1
                return False
            else:
                sh.send_k[slot] = -1
                self.active[i] = 0
                self.errors += 1
                return False
        self.k[i] += 1
        self.seq += 1
        self.sent += 1
        self.frames_out += 1
        self.bytes_out += CURSOR_LEN
        sec = (t - sh.t_start) // 1000000000
        if 0 <= sec < sh.nsec:
            self.sec_sent[sec] += 1
            if late > 5000000:
                self.sec_late[sec] += 1
        if t >= sh.t0 and t < sh.t1:
            self.sent_window += 1
            self.late_window_n += 1
            if late > 5000000:
                self.late_window_5ms += 1
        if late > 1000000:
            self.late_1ms += 1
            if late > 2000000:
                self.late_2ms += 1
                if late > 5000000:
                    self.late_5ms += 1
                    if late > 10000000:
                        self.late_10ms += 1
                        if late > 25000000:
                            self.late_25ms += 1
        if late > self.max_late_ns:
            self.max_late_ns = late
        # Next send: one period after the last nominal time (no drift), never a catch-up burst.
        self.nominal[i] += self.period_ns
        while self.nominal[i] + self.period_ns <= t:
            self.nominal[i] += self.period_ns
            self.skipped += 1
        self.due[i] = self.nominal[i] + self._jitter()
        return True
