"""Keepalive: a client that vanished without closing is found within `liveness_timeout_ms`.

A laptop that sleeps, a process that froze, a network that went away: none of them sends a
FIN, and a frozen process's kernel even keeps acknowledging. So the relay listens: every
`period` (a tenth of the timeout) it looks at each open connection's received-byte count
(kept by the inbound fast path, so the hot path pays nothing). A connection that sent
something since the last look is alive. One silent for 40 % of the timeout gets a ping
(written once, as a pre-built frame; any pong or frame counts as an answer); one still
silent at the timeout, minus the two periods the looks may lag by, is aborted: its session
is suspended (DISCONNECTED, then LOST after the grace) like any lost connection.

Busy members are never pinged (their frames answer for them), so the cost is one attribute
read per connection per period, plus a ping and a pong per quiet connection about every
half timeout. TCP_USER_TIMEOUT (the same timeout, set at accept) covers the other half: a
peer whose kernel stops acknowledging what we write is dropped by ours.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from websockets.protocol import OPEN

from relay.server.sockets import abort

log = logging.getLogger("relay.liveness")

PING_FRAME = b"\x89\x00"  # an unmasked, empty server ping (RFC 6455 5.5.2)
PING_AT = 0.4  # of the timeout: silent this long, a connection is pinged


class Liveness:
    def __init__(self, sockets: set[Any], timeout_ms: int, clock: Callable[[], float]) -> None:
        self.sockets = sockets
        self.timeout_s = timeout_ms / 1000.0
        self.period_s = self.timeout_s / 10
        self.clock = clock  # monotonic seconds
        self.pings = 0
        self.aborts = 0

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.period_s)
            try:
                self.sweep(self.clock())
            except Exception:  # a bug here must not end keepalive for everyone
                log.exception("liveness sweep failed")

    def sweep(self, now: float) -> None:
        ping_after = self.timeout_s * PING_AT
        # The count is looked at once a period, so a connection's last byte may be up to a
        # period older than `heard_at`, and the abort lands up to a period late.
        give_up_after = self.timeout_s - 2 * self.period_s
        for conn in list(self.sockets):
            if conn.protocol.state is not OPEN:
                continue  # the handshake (open_timeout) or the close (close_timeout) bound it
            n = conn.bytes_in
            if n != conn.heard_bytes:
                conn.heard_bytes = n
                conn.heard_at = now
                conn.pinged = False
                continue
            silent = now - conn.heard_at
            if silent >= give_up_after:
                self.aborts += 1
                log.info("no byte from %s for %.1f s: connection lost", conn.remote_address,
                         silent)  # fmt: skip
                abort(conn.transport)
            elif silent >= ping_after and not conn.pinged:
                conn.pinged = True
                self.pings += 1
                conn.transport.write(PING_FRAME)
