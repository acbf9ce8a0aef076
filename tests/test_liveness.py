"""Clients that vanish without closing are found by the relay's keepalive, not by waiting.

Real client processes: one frozen with SIGSTOP (its kernel still acknowledges, so only a
ping can tell), one behind a veth pair set down in a network namespace (packets just stop;
skipped, saying why, where namespaces cannot be built). The others see DISCONNECTED within
`liveness_timeout_ms`, and `left` with LOST after `reconnect_grace_ms`.
"""

from __future__ import annotations

import contextlib
import signal
from typing import Any

import pytest
from helpers import MS, eventually

from bench import vanish
from relay.auth import mint_token
from relay.core import protocol as p
from relay.server.liveness import Liveness

pytestmark = pytest.mark.timeout(90)

SECRET = "liveness-tests-secret-that-is-long-enough-for-hs256"
LIVENESS_MS = round(1500 * MS * 1000)
GRACE_MS = round(1500 * MS * 1000)
SLACK_S = 400 * MS  # a batch, a sweep period's rounding, a loaded machine


def token(user: str) -> str:
    return mint_token(SECRET, user, user, "w", ["*"], 600)


@pytest.mark.parametrize("how", ["stop", "cut"])
async def test_a_vanished_client_is_disconnected_within_the_timeout_then_lost(
    relay_factory: Any, how: str
) -> None:
    stack = contextlib.ExitStack()
    host = "127.0.0.1"
    netns = None
    if how == "cut":
        why = vanish.netns_unavailable()
        if why is not None:
            pytest.skip(f"a network cut needs a network namespace: {why}")
        netns = stack.enter_context(vanish.cuttable_network())
        host = vanish.HOST_IP
    with stack:
        r = await relay_factory(
            host=host if how == "cut" else "127.0.0.1",
            jwt_secret=SECRET,
            liveness_timeout_ms=LIVENESS_MS,
            reconnect_grace_ms=GRACE_MS,
        )
        url = f"ws://{host}:{r.port}/ws"
        async with vanish.watcher(url, token("watcher")) as ws:
            proc = vanish.start_client(url, "bob", token("bob"), netns)
            try:
                sid = await vanish.client_sid(proc, 10000 * MS)
                t_disc, t_left = await vanish.vanish(ws, proc, sid, how, 10000 * MS)
            finally:
                proc.send_signal(signal.SIGCONT)
                proc.kill()
                proc.wait()
        assert t_disc <= LIVENESS_MS / 1000 + SLACK_S, f"DISCONNECTED after {t_disc:.2f} s"
        # A client that stopped just before a ping is given up about 0.4 of the timeout later.
        assert t_disc >= LIVENESS_MS / 1000 * 0.35, "not before the client could answer a ping"
        # (each event is seen at a batch boundary: up to a batch either way)
        assert GRACE_MS / 1000 - 100 * MS <= t_left - t_disc <= GRACE_MS / 1000 + SLACK_S
        assert r.liveness is not None and r.liveness.aborts == 1


async def test_a_quiet_client_that_answers_pings_stays(
    relay_factory: Any, client_factory: Any
) -> None:
    """websockets answers pings by itself: a member that sends nothing is pinged, answers,
    and is never shown DISCONNECTED."""
    r = await relay_factory(liveness_timeout_ms=round(600 * MS * 1000))
    watcher = await client_factory(r, "ann")
    await watcher.join(1, "d")
    quiet = await client_factory(r, "bob", ping_interval=None)  # it never pings on its own
    sid = (await quiet.join(1, "d"))[3]
    got = await watcher.quiet(2000 * MS)
    assert not [e for f in got if f[0] == p.BATCH for e in f[3] if e[:2] in ([6, sid], [3, sid])]
    assert r.liveness is not None and r.liveness.pings >= 2 and r.liveness.aborts == 0
    assert sum(conn.pongs for conn in r.hub.sockets) >= 2, "pongs end in the fast path"


async def test_liveness_off_pings_nobody(relay_factory: Any, client_factory: Any) -> None:
    r = await relay_factory(liveness_timeout_ms=0)
    assert r.liveness is None
    c = await client_factory(r, "ann", ping_interval=None)
    await c.join(1, "d")
    assert await eventually(lambda: len(r.hub.sockets) == 1)


def test_the_sweep_pings_at_forty_percent_and_gives_up_two_periods_early() -> None:
    class Conn:
        class protocol:
            from websockets.protocol import OPEN as state

        remote_address = ("127.0.0.1", 1)

        def __init__(self) -> None:
            self.bytes_in = self.heard_bytes = 0
            self.heard_at = 0.0
            self.pinged = False
            self.transport = self
            self.written: list[bytes] = []
            self.aborted = False

        def write(self, data: bytes) -> None:
            self.written.append(data)

        def abort(self) -> None:
            self.aborted = True

        def get_extra_info(self, name: str) -> None:
            return None

    conn = Conn()
    live = Liveness({conn}, 10_000, lambda: 0.0)
    live.sweep(3.9)
    assert conn.written == []
    live.sweep(4.0)
    assert conn.written == [b"\x89\x00"]
    live.sweep(5.0)
    assert conn.written == [b"\x89\x00"], "one ping per silence"
    conn.bytes_in = 2  # the pong
    live.sweep(6.0)
    assert conn.heard_at == 6.0 and not conn.pinged
    live.sweep(13.9)
    assert not conn.aborted
    live.sweep(14.0)
    assert conn.aborted and live.aborts == 1
