"""The per-connection ingest path: rate limit, decode, route to the document slot.

`Peer.feed` is what every inbound frame goes through first. It handles the hot frames
(CURSOR, TYPING, VIEWPORT, FOCUS) that are well formed, name a joined handle and are in
range, and answers FALLBACK for everything else: the shell's general path then handles the
frame (JOIN, LEAVE, PING) or answers the exact ERROR the protocol requires. This is the pure
twin; relay/_fast.pyx has the compiled one, which parses canonical encodings straight from
the bytes.
"""

from __future__ import annotations

from typing import Any

from relay.core import protocol as p
from relay.core.document import Document
from relay.core.ratelimit import TokenBucket
from relay.core.wire import FRAME, next_frame
from relay.exceptions import ProtocolError

FALLBACK = -1  # not handled here: the general path must process the frame
RATE_LIMITED = -2  # dropped by the token bucket


class HotCounts:
    """Hot frames applied, by message type; one instance shared by a hub's peers.

    Counted where the frame is applied (inside the twin), so the shell's per-frame Python
    does not have to; read at scrape time.
    """

    __slots__ = ("_by_type",)

    def __init__(self) -> None:
        self._by_type = [0] * 8

    def __getitem__(self, message_type: int) -> int:
        if not 0 <= message_type < 8:
            raise IndexError(message_type)
        return self._by_type[message_type]

    @property
    def total(self) -> int:
        return sum(self._by_type)

    def add(self, message_type: int) -> None:
        if not 0 <= message_type < 8:
            raise IndexError(message_type)
        self._by_type[message_type] += 1


class Membership:
    """A connection's open document: which document, and its sid there."""

    __slots__ = ("doc", "sid")

    def __init__(self, doc: Document, sid: int) -> None:
        self.doc = doc
        self.sid = sid


class Peer:
    """One connection's handles and rate limit."""

    __slots__ = ("bucket", "counts", "handles")

    def __init__(self, bucket: TokenBucket, counts: HotCounts | None = None) -> None:
        self.bucket = bucket
        self.handles: dict[int, Membership] = {}
        self.counts = counts if counts is not None else HotCounts()

    def feed(self, data: bytes, now_ms: int) -> int:
        """Take one frame: its message type when applied, else FALLBACK or RATE_LIMITED."""
        if not self.bucket.take(now_ms):
            return RATE_LIMITED
        t = feed_decoded(self.handles, data, now_ms)
        if t > 0:
            self.counts.add(t)
        return t

    def feed_wire(
        self, buf: bytes, start: int, max_payload: int, now_ms: int
    ) -> tuple[int, int, bytes | None]:
        """Take the WebSocket frames of `buf` from `start`, as many as `feed` applies.

        Stops at the first frame it cannot apply and says why, with the position to go on:
        - (i, NEED_MORE, None): the frame at i is not whole (i == len(buf) when all are taken);
        - (i, NOT_OURS, None): the frame at i is not a whole-message masked binary frame
          within `max_payload` (control, text, fragment, RSV bits, unmasked, too big);
        - (end, FALLBACK or RATE_LIMITED, payload): the frame before `end`, unmasked, is
          for the shell's general path (as `feed` answered it).
        """
        if start < 0 or start > len(buf):
            raise IndexError(start)
        i = start
        while True:
            end, kind, payload = next_frame(buf, i, max_payload)
            if kind != FRAME:
                return i, kind, None  # NEED_MORE or NOT_OURS, at the frame's first byte
            assert payload is not None
            t = self.feed(payload, now_ms)
            if t <= 0:
                return end, t, payload
            i = end


def feed_decoded(handles: dict[int, Membership], data: bytes, now_ms: int) -> int:
    """The general decode of `Peer.feed` (the compiled twin's path for unusual encodings)."""
    try:
        frame = p.decode_client_frame(data)
    except ProtocolError:
        return FALLBACK
    t = frame[0]
    if t < p.CURSOR or t > p.FOCUS:
        return FALLBACK
    m = handles.get(frame[1])
    if m is None:
        return FALLBACK
    try:
        p.check_ranges(frame)
    except ProtocolError:
        return FALLBACK
    apply_hot(m, frame, now_ms)
    return t  # type: ignore[no-any-return]


def apply_hot(m: Membership, frame: list[Any], now_ms: int) -> None:
    """Apply a decoded, range-checked hot frame to the member's document."""
    t = frame[0]
    n = len(frame)
    doc, sid = m.doc, m.sid
    if t == p.CURSOR:
        if n == 2:
            doc.move_cursor(sid, None, None, now_ms)
        else:
            sel = (frame[5], frame[6], frame[7], frame[8]) if n == 9 else None
            doc.move_cursor(sid, (frame[2], frame[3], frame[4]), sel, now_ms)
    elif t == p.TYPING:
        doc.set_typing(sid, frame[2] if n == 3 else True, now_ms)
    elif t == p.VIEWPORT:
        doc.set_viewport(sid, frame[2], frame[3], frame[4], now_ms)
    else:
        doc.set_focus(sid, frame[2], now_ms)
