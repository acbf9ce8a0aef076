"""The record of one connection on this node: its socket and its session."""

from __future__ import annotations

import asyncio
from typing import Any

from websockets.protocol import State

from relay.core.model import UserInfo
from relay.core.session import CLOSED, Session


class _NoTransport:
    """Where a suspended session's batches go: nowhere (and nothing is ever unsent)."""

    __slots__ = ()

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


class _ClosedProtocol:
    __slots__ = ()
    state = State.CLOSED
    extensions: list[Any] = []


class Detached:
    """The socket of a session whose connection was lost: the client record stays in its
    documents until the grace ends or a resume moves it, and every write skips it (the
    outlet sends only to OPEN connections). The dead connection itself is let go."""

    __slots__ = ()
    transport = _NoTransport()
    protocol = _ClosedProtocol()
    send_in_progress = None
    remote_address = None
    fd = -1


DETACHED = Detached()


class Client:
    """One WebSocket connection: the socket (`ws`, its fd for the kernel's send queue), the
    protocol state (`session`), and what the shell keeps for it (the close in progress, the
    timer that wakes the session)."""

    __slots__ = ("close_task", "fd", "resume_key", "session", "timer", "timer_at", "ws")

    def __init__(self, ws: Any, session: Session, resume_key: str = "") -> None:
        self.ws = ws
        # What the hub's resumable sessions are keyed by, here and in Redis: a hash of the
        # session's resume token (the token itself is only ever in WELCOME and HELLO).
        self.resume_key = resume_key
        self.fd: int = getattr(ws, "fd", -1)
        self.session = session
        # The close the relay started (4400/4401/4408/4429/1001); the handler awaits it so
        # that websockets does not close with its default 1000 first.
        self.close_task: asyncio.Task[None] | None = None
        self.timer: asyncio.TimerHandle | None = None  # wakes the session at its deadline
        self.timer_at = -1

    def detach(self) -> None:
        """The connection is gone but the session is held (suspended): let the socket go."""
        self.ws = DETACHED
        self.fd = -1

    @property
    def connection_id(self) -> str:
        return self.session.connection_id

    @property
    def closing(self) -> bool:
        return self.session.state == CLOSED

    @property
    def user(self) -> UserInfo:
        user: UserInfo = self.session.grant.user
        return user

    @property
    def handles(self) -> dict[int, Any]:
        return self.session.handles
