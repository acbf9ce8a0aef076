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
from relay.core.protocol import ProtocolError
from relay.core.ratelimit import TokenBucket

FALLBACK = -1  # not handled here: the general path must process the frame
RATE_LIMITED = -2  # dropped by the token bucket


class Membership:
    """A connection's open document: which document, and its sid there."""

    __slots__ = ("doc", "sid")

    def __init__(self, doc: Document, sid: int) -> None:
        self.doc = doc
        self.sid = sid


class Peer:
    """One connection's handles and rate limit."""

    __slots__ = ("bucket", "handles")

    def __init__(self, bucket: TokenBucket) -> None:
        self.bucket = bucket
        self.handles: dict[int, Membership] = {}

    def feed(self, data: bytes, now_ms: int) -> int:
        """Take one frame: its message type when applied, else FALLBACK or RATE_LIMITED."""
        if not self.bucket.take(now_ms):
            return RATE_LIMITED
        return feed_decoded(self.handles, data, now_ms)


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
