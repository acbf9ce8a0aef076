"""The record of one connection on this node: its socket and its session."""

from __future__ import annotations

import asyncio
from typing import Any

from relay.core.model import UserInfo
from relay.core.session import CLOSED, Session


class Client:
    """One WebSocket connection: the socket (`ws`, its fd for the kernel's send queue), the
    protocol state (`session`), and what the shell keeps for it (the close in progress, the
    timer that wakes the session)."""

    __slots__ = ("close_task", "fd", "session", "timer", "timer_at", "ws")

    def __init__(self, ws: Any, session: Session) -> None:
        self.ws = ws
        self.fd: int = getattr(ws, "fd", -1)
        self.session = session
        # The close the relay started (4400/4401/4408/4429/1001); the handler awaits it so
        # that websockets does not close with its default 1000 first.
        self.close_task: asyncio.Task[None] | None = None
        self.timer: asyncio.TimerHandle | None = None  # wakes the session at its deadline
        self.timer_at = -1

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
