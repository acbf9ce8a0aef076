"""The outlet: the one way to a client's socket.

Three things go out, all here: a direct reply to one client (WELCOME, JOINED, ERROR, PONG),
a BATCH to every local member of a document (local batches, other nodes' batches, a
resync's difference), and the close. Each obeys the same backlog rule: a member whose unsent
bytes (the transport's buffer and the kernel's queue) pass `max_send_backlog` gets nothing
more; the caller closes it with 4408 (the outlet does not decide protocol outcomes, it
reports them). Closes are cut short by an abort after `close_timeout_s`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from relay.config import PresenceConfig
from relay.server.client import Client
from relay.server.fanout import fan_out
from relay.server.sockets import close_within, unsent_bytes
from relay.server.stats import Stats

Spawn = Callable[[Coroutine[Any, Any, None]], "asyncio.Task[None]"]


class Outlet:
    def __init__(self, config: PresenceConfig, stats: Stats, spawn: Spawn) -> None:
        self.backlog_limit = config.max_send_backlog
        self.close_timeout_s = config.close_timeout_s
        self.stats = stats
        self._spawn = spawn

    def send(self, client: Client, payload: bytes) -> bool:
        """A direct reply; False (and nothing sent) when the client is past its backlog."""
        if unsent_bytes(client.ws.transport, client.fd) > self.backlog_limit:
            return False
        sent = fan_out({0: client}, None, payload, self.backlog_limit, [])
        self.stats.frames_out += sent
        self.stats.bytes_out += len(payload) * sent
        return True

    def batch(
        self, members: dict[int, Client], skip_sid: int | None, payload: bytes, slow: list[Client]
    ) -> int:
        """One BATCH, framed once, to every member but `skip_sid`; members past their
        backlog are appended to `slow` (for the caller to close)."""
        sent = fan_out(members, skip_sid, payload, self.backlog_limit, slow)
        self.stats.frames_out += sent
        self.stats.bytes_out += len(payload) * sent
        return sent

    def close(self, client: Client, code: int, reason: str) -> None:
        """The closing handshake in the background, aborted after `close_timeout_s`."""
        if client.close_task is None:
            client.close_task = self._spawn(
                close_within(client.ws, code, reason, self.close_timeout_s)
            )
