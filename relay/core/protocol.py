"""Wire protocol v1: constants, the client-frame decoder and the server-frame encoders.

Every message is one binary WebSocket frame holding one MessagePack array whose first
element is the message type. docs/protocol.md explains it with worked examples and
tests/vectors/protocol_v1.json pins the bytes.

Decoding is split in two so the checks answer in the order the protocol requires:
`decode_client_frame` checks that the frame is an array of a known type with a listed
shape and msgpack types (ERROR 1 / 2); the caller then checks the handle (ERROR 3); then
`check_ranges` checks values (ERROR 7).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import msgpack

from relay.core.ids import doc_id_problem
from relay.exceptions import ProtocolError

VERSION = 1
SUBPROTOCOL = "presence.v1"

# Client -> server
HELLO = 1
JOIN = 2
LEAVE = 3
CURSOR = 4
TYPING = 5
VIEWPORT = 6
FOCUS = 7
PING = 8
STATUS = 9  # v1.1: [9, h, text_or_nil]

# Server -> client
WELCOME = 32
JOINED = 33
BATCH = 34
ERROR = 35
PONG = 36

# BATCH event codes
EV_CURSOR = 1
EV_JOINED = 2
EV_LEFT = 3
EV_TYPING = 4
EV_VIEWPORT = 5
EV_ACTIVITY = 6
EV_FOCUS = 7
EV_STATUS = 8  # v1.1: [8, sid, text_or_nil], coalesced like cursors

# MEMBER kind (v1.1, element 13)
KIND_PERSON = 0
KIND_AGENT = 1  # a member set over HTTP (an agent, a bot, a service)
MAX_STATUS_CHARS = 64

# ERROR codes
BAD_FRAME = 1
UNKNOWN_TYPE = 2
NOT_JOINED = 3
FORBIDDEN = 4
DOCUMENT_AT_CAPACITY = 5
RATE_LIMITED = 6
INVALID_VALUE = 7
ALREADY_JOINED = 8
TOO_MANY_DOCUMENTS = 9
UNAVAILABLE = 10
UNAUTHENTICATED = 11

# Close codes
CLOSE_GOING_AWAY = 1001
CLOSE_TOO_BIG = 1009
CLOSE_PROTOCOL = 4400
CLOSE_UNAUTHENTICATED = 4401
CLOSE_TOO_SLOW = 4408
CLOSE_RATE_LIMIT = 4429
CLOSE_RESUMED = 4409  # this connection was resumed by a newer one (v1.1)

# Leave reasons: `left` is [3, sid, reason] (v1.1)
LEFT = 0  # LEAVE, or a deliberate close
LOST = 1  # the connection ended otherwise and was not resumed within the grace
NODE_DOWN = 2  # the node that held the session died, and it was not resumed elsewhere
EVICTED = 3  # the relay closed the connection: 4400, 4401, 4408, 4429
EXPIRED = 4  # a member set over HTTP reached the end of its ttl_s
SHUTDOWN = 5  # a relay without shared state shut down gracefully
LEAVE_REASONS = ("LEFT", "LOST", "NODE_DOWN", "EVICTED", "EXPIRED", "SHUTDOWN")

MAX_U32 = 2**32 - 1
MAX_HANDLE = 65535


def _is_int(v: object) -> bool:
    # msgpack decodes true/false to bool, which is an int subclass in Python: not a number.
    return type(v) is int


def _is_number(v: object) -> bool:
    return type(v) is int or type(v) is float


def _handle_of(frame: list[Any]) -> int | None:
    h = frame[1] if len(frame) > 1 else None
    return h if _is_int(h) else None


def _shape_error(frame: list[Any], what: str) -> ProtocolError:
    return ProtocolError(BAD_FRAME, what, _handle_of(frame))


def unpack(data: bytes) -> Any:
    """Decode one MessagePack value; raise ProtocolError(BAD_FRAME) on anything malformed."""
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False, use_list=True)
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise ProtocolError(BAD_FRAME, f"not a msgpack value: {type(exc).__name__}") from None


def decode_client_frame(data: bytes) -> list[Any]:
    """Decode a client frame and check its type and shape (not its handle or ranges).

    Returns the msgpack array as a list. Raises ProtocolError with BAD_FRAME or UNKNOWN_TYPE.
    """
    frame = unpack(data)
    if type(frame) is not list or not frame:
        raise ProtocolError(BAD_FRAME, "a frame must be a non-empty msgpack array")
    t = frame[0]
    if not _is_int(t):
        raise ProtocolError(BAD_FRAME, "the first element must be an integer type")
    n = len(frame)
    if t == CURSOR:
        if n == 2 or n == 5 or n == 9:
            for v in frame[1 : 8 if n == 9 else n]:
                if not _is_int(v):
                    raise _shape_error(frame, "CURSOR fields must be integers")
            if n == 9 and type(frame[8]) is not bool:
                raise _shape_error(frame, "CURSOR backward must be a boolean")
            return frame
        raise _shape_error(frame, "CURSOR is [4, h], [4, h, line, col, off] or with a selection")
    if t == TYPING:
        if (n == 2 or (n == 3 and type(frame[2]) is bool)) and _is_int(frame[1]):
            return frame
        raise _shape_error(frame, "TYPING is [5, h] or [5, h, bool]")
    if t == VIEWPORT:
        if (
            n == 5
            and _is_int(frame[1])
            and _is_int(frame[2])
            and _is_int(frame[3])
            and (_is_number(frame[4]))
        ):
            return frame
        raise _shape_error(frame, "VIEWPORT is [6, h, top_line, bottom_line, scroll_pct]")
    if t == FOCUS:
        if n == 3 and _is_int(frame[1]) and type(frame[2]) is bool:
            return frame
        raise _shape_error(frame, "FOCUS is [7, h, bool]")
    if t == JOIN:
        if n == 3 and _is_int(frame[1]) and type(frame[2]) is str:
            return frame
        raise _shape_error(frame, "JOIN is [2, h, doc_id]")
    if t == LEAVE:
        if n == 2 and _is_int(frame[1]):
            return frame
        raise _shape_error(frame, "LEAVE is [3, h]")
    if t == PING:
        if n == 2 and _is_number(frame[1]):
            return frame
        raise ProtocolError(BAD_FRAME, "PING is [8, client_ms]")
    if t == STATUS:
        if n == 3 and _is_int(frame[1]) and (frame[2] is None or type(frame[2]) is str):
            return frame
        raise _shape_error(frame, "STATUS is [9, h, text_or_nil]")
    if t == HELLO:
        if (
            n == 4
            and _is_int(frame[1])
            and (frame[2] is None or type(frame[2]) is str)
            and type(frame[3]) is dict
        ):
            return frame
        raise ProtocolError(BAD_FRAME, "HELLO is [1, version, token_or_nil, info_map]")
    raise ProtocolError(UNKNOWN_TYPE, f"unknown message type {t}")


def _u32(v: int) -> bool:
    return 0 <= v <= MAX_U32


def check_ranges(frame: list[Any]) -> None:
    """Check value ranges of a decoded frame; raise ProtocolError(INVALID_VALUE)."""
    t = frame[0]
    if t == CURSOR:
        for v in frame[2:8]:
            if not _u32(v):
                raise ProtocolError(INVALID_VALUE, "positions are integers in 0..2^32-1", frame[1])
    elif t == VIEWPORT:
        h, top, bottom, pct = frame[1], frame[2], frame[3], frame[4]
        if not (_u32(top) and _u32(bottom)):
            raise ProtocolError(INVALID_VALUE, "viewport lines are integers in 0..2^32-1", h)
        if top > bottom:
            raise ProtocolError(INVALID_VALUE, "top_line must be <= bottom_line", h)
        if not (math.isfinite(pct) and 0 <= pct <= 100):
            raise ProtocolError(INVALID_VALUE, "scroll_pct must be a finite number in [0, 100]", h)
    elif t == STATUS:
        text = frame[2]
        if text is not None and len(text) > MAX_STATUS_CHARS:
            raise ProtocolError(
                INVALID_VALUE, f"status is at most {MAX_STATUS_CHARS} characters", frame[1]
            )
    elif t == JOIN:
        h, doc_id = frame[1], frame[2]
        if not 0 <= h <= MAX_HANDLE:
            raise ProtocolError(INVALID_VALUE, "handle must be in 0..65535", h)
        problem = doc_id_problem(doc_id)
        if problem is not None:
            raise ProtocolError(INVALID_VALUE, problem, h)


# ---------------------------------------------------------------- server frames

_packer = msgpack.Packer(use_bin_type=True)
pack: Callable[[Any], bytes] = _packer.pack  # (msgpack is untyped: say what it returns)
_array_header: Callable[[int], bytes] = _packer.pack_array_header


def encode_welcome(
    connection_id: str, user: dict[str, Any], server_ms: int, settings: dict[str, Any]
) -> bytes:
    return pack([WELCOME, VERSION, connection_id, user, server_ms, settings])


def encode_joined(
    handle: int,
    doc_id: str,
    sid: int,
    members: list[tuple[Any, ...]],
    recent: list[tuple[Any, ...]] | None = None,
) -> bytes:
    """JOINED; v1.1 adds `recent` (RECENT arrays, newest first), always sent by this relay."""
    return pack([JOINED, handle, doc_id, sid, members, recent if recent is not None else []])


def encode_batch(doc_id: str, server_ms: int, events: list[tuple[Any, ...]]) -> bytes:
    return pack([BATCH, doc_id, server_ms, events])


def batch_prefix(doc_id: str, server_ms: int, event_count: int) -> bytes:
    """Everything of a BATCH frame before its events (msgpack concatenates: the events'
    own encodings follow, and the result equals `encode_batch` byte for byte)."""
    return b"\x94\x22" + pack(doc_id) + pack(server_ms) + _array_header(event_count)


def encode_error(handle: int | None, code: int, message: str) -> bytes:
    return pack([ERROR, handle, code, message])


def encode_pong(client_ms: int | float, server_ms: int) -> bytes:
    return pack([PONG, client_ms, server_ms])
