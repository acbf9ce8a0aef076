"""Python asyncio SDK for the presence relay (wire protocol v1, with v1.1's sessions).

    from presence_client import connect

    async with connect("ws://127.0.0.1:8765/ws", user_id="u1", name="Ann") as conn:
        doc = await conn.join("doc-1")
        doc.move_cursor(3, 14, 120)
        async for event in doc.events():
            ...

Against a relay with a JWT secret pass ``token=``: a string, or a token provider (a
callable, sync or async, returning a fresh token) that is called before every HELLO, so
that reconnects, including the one after the relay ends a connection at the token's
``exp``, use a new token. See `Connection`.

Against a v1.1 relay a dropped connection resumes its session when it comes back within the
relay's ``reconnect_grace_ms``: same sids, no leave and join for the others (they see the
member as DISCONNECTED meanwhile); `Left` events carry a `LeaveReason`. Against a v1.1
relay members have a `kind` (a person, or an agent set over HTTP) and a `status` text
(`Document.set_status`, `Status` events), `Document.users()` groups sessions by user
(`UserJoined`/`UserLeft` events) and `Document.recent` lists who left a little while ago.

A distribution of its own (`pip install ./sdk/python`): it needs websockets and msgpack,
nothing of the relay's (no redis, no prometheus, no uvloop, no compiler). Its wire constants
and codec are in `presence_client.protocol`, checked against the relay's golden vectors.
"""

from .agent import AgentPresence, AgentPresenceError
from .connection import FATAL_CLOSE_CODES, SDK_VERSION, Connection, TokenProvider, connect
from .document import (
    Activity,
    ActivityState,
    CursorMoved,
    Document,
    ErrorEvent,
    Event,
    Focus,
    Joined,
    Kind,
    LeaveReason,
    Left,
    Member,
    RecentUser,
    Resynced,
    Status,
    Typing,
    User,
    UserJoined,
    UserLeft,
    Viewport,
)
from .errors import ConnectionClosedError, RelayClientError, RelayError, TokenProviderError
from .throttle import Throttle

__all__ = [
    "FATAL_CLOSE_CODES",
    "SDK_VERSION",
    "Activity",
    "ActivityState",
    "AgentPresence",
    "AgentPresenceError",
    "Connection",
    "ConnectionClosedError",
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
    "RelayClientError",
    "RelayError",
    "Resynced",
    "Status",
    "Throttle",
    "TokenProvider",
    "TokenProviderError",
    "Typing",
    "User",
    "UserJoined",
    "UserLeft",
    "Viewport",
    "connect",
]
