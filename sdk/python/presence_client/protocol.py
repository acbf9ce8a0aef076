"""The wire protocol as a client sees it: message types, event codes, error and close codes,
leave reasons, member kinds, and the MessagePack codec.

The relay's contract (docs/protocol.md in the relay's repository) defines every value here;
the SDK's tests check this module against the relay's golden vectors
(tests/vectors/protocol_v1.json), so the two cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgpack

VERSION = 1
SUBPROTOCOL = "presence.v1"

# Client -> relay
HELLO = 1
JOIN = 2
LEAVE = 3
CURSOR = 4
TYPING = 5
VIEWPORT = 6
FOCUS = 7
PING = 8
STATUS = 9  # v1.1: [9, h, text_or_nil]

# Relay -> client
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
EV_STATUS = 8  # v1.1: [8, sid, text_or_nil]

# MEMBER kind (v1.1, element 13; a v1 relay's 13-element MEMBER is a person)
KIND_PERSON = 0
KIND_AGENT = 1  # a member set over HTTP (an agent, a bot, a service)
MAX_STATUS_CHARS = 64  # a STATUS text's limit, in characters (code points); ERROR 7 past it

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
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_INVALID_DATA = 1007
CLOSE_TOO_BIG = 1009
CLOSE_PROTOCOL = 4400
CLOSE_UNAUTHENTICATED = 4401
CLOSE_TOO_SLOW = 4408
CLOSE_RATE_LIMIT = 4429
CLOSE_RESUMED = 4409  # this connection was resumed by a newer one (v1.1)

# Leave reasons: `left` is [3, sid, reason] (v1.1; a v1 relay sends [3, sid])
LEFT = 0  # LEAVE, or a deliberate close
LOST = 1  # the connection ended otherwise and was not resumed within the grace
NODE_DOWN = 2  # the node that held the session died, and it was not resumed elsewhere
EVICTED = 3  # the relay closed the connection: 4400, 4401, 4408, 4429
EXPIRED = 4  # a member set over HTTP reached the end of its ttl_s
SHUTDOWN = 5  # a relay without shared state shut down gracefully
LEAVE_REASONS = ("LEFT", "LOST", "NODE_DOWN", "EVICTED", "EXPIRED", "SHUTDOWN")

MAX_HANDLE = 65535

_packer = msgpack.Packer(use_bin_type=True)
# One frame's payload: the MessagePack encoding of a value (an array). msgpack is untyped:
# this says what it returns.
pack: Callable[[Any], bytes] = _packer.pack


class DecodeError(ValueError):
    """A payload from the relay that is not one MessagePack value."""


def unpack(data: bytes) -> Any:
    """Decode one MessagePack value; raise DecodeError on anything malformed."""
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False, use_list=True)
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise DecodeError(f"not a msgpack value: {type(exc).__name__}") from None
