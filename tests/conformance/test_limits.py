"""Rate limit (ERROR 6 / close 4429) and the send-backlog limit (close 4408)."""

from __future__ import annotations

import asyncio
import itertools
import socket
import time

import pytest
from websockets.exceptions import ConnectionClosed

from .conftest import (
    CLOSE_RATE_LIMIT,
    CLOSE_TOO_SLOW,
    CURSOR,
    E_RATE_LIMITED,
    ERROR,
    EV_CURSOR,
    EV_LEFT,
    JOIN,
    LEAVE,
    PING,
    PONG,
    RATE_SETTINGS,
    RawClient,
    pair_in_doc,
)

pytestmark = pytest.mark.timeout(60)


async def _read_until_closed(c: RawClient, limit_s: float):
    """Read frames until the server closes (returns its close code) or `limit_s` passes."""
    deadline = time.monotonic() + limit_s
    try:
        while (left := deadline - time.monotonic()) > 0:
            try:
                await c.recv(timeout=left)
            except TimeoutError:
                break
    except ConnectionClosed as exc:
        return exc.rcvd.code if exc.rcvd is not None else None
    return "still-open"


async def test_welcome_announces_rate_limits(rate_server, client_factory):
    c = await client_factory(rate_server)
    settings = c.welcome[5]
    assert settings["max_frames_per_s"] == RATE_SETTINGS["max_frames_per_s"]
    assert settings["max_frames_burst"] == RATE_SETTINGS["max_frames_burst"]


async def test_within_burst_no_rate_limit_error(rate_server, client_factory, doc_id):
    a, sid_a, b, _ = await pair_in_doc(client_factory, rate_server, doc_id)
    n = RATE_SETTINGS["max_frames_burst"] - 10  # the HELLO/JOIN used a few tokens already
    for i in range(n):
        await a.send([CURSOR, 1, i, 0, i])
    await a.send([PING, 5])
    pong = await a.reply(timeout=3)
    assert pong[0] == PONG, f"no ERROR 6 within the burst: {pong!r}"
    _, _ev = await b.wait_event(
        lambda d, e: e[0] == EV_CURSOR and e[1] == sid_a and e[2] == n - 1, timeout=2
    )
    # steady traffic below max_frames_per_s is never limited
    await asyncio.sleep(1.0)
    rate = RATE_SETTINGS["max_frames_per_s"]
    for i in range(rate // 2):
        await a.send([CURSOR, 1, i, 1, i])
        await asyncio.sleep(1.0 / (rate / 2) * 0.95 + 0.002)
    await a.send([PING, 6])
    pong = await a.reply(timeout=3)
    assert pong[0] == PONG, f"no ERROR 6 below the rate: {pong!r}"


async def test_short_burst_over_limit_is_error_6_once_not_closed(
    rate_server, client_factory, doc_id
):
    a, sid_a, b, _ = await pair_in_doc(client_factory, rate_server, doc_id)
    for i in range(RATE_SETTINGS["max_frames_burst"] * 2):
        await a.send([CURSOR, 1, i, 0, i])
    frames = await a.collect(0.8)
    errors = [f for f in frames if f[0] == ERROR]
    assert errors, "frames over the limit must be answered with ERROR 6"
    assert all(f[2] == E_RATE_LIMITED for f in errors), errors
    assert len(errors) == 1, f"at most one ERROR 6 per second: {errors}"
    # a burst is not `rate_limit_close_after_s` of continuous excess: still connected
    await asyncio.sleep(1.2)
    await a.ping(timeout=3)
    await a.send([CURSOR, 1, 4242, 0, 0])
    await b.wait_event(lambda d, e: e[0] == EV_CURSOR and e[1] == sid_a and e[2] == 4242, 3)


async def test_flood_is_error_6_then_close_4429(rate_server, client_factory, doc_id):
    a, sid_a, b, _ = await pair_in_doc(client_factory, rate_server, doc_id)
    reader = asyncio.create_task(_read_until_closed(a, 8))
    t0 = time.monotonic()
    sent = 0
    try:
        while time.monotonic() - t0 < 6 and not reader.done():
            await a.send([CURSOR, 1, sent % 1000, 0, sent])
            sent += 1
            if sent % 4 == 0:
                await asyncio.sleep(0.01)  # ~400 frames/s, 8x max_frames_per_s
    except ConnectionClosed:
        pass
    code = await asyncio.wait_for(reader, 10)
    t_close = time.monotonic()
    err6 = [(t, f) for t, f, _ in a.frames if f[0] == ERROR]
    assert err6, "expected ERROR 6 before the close"
    assert all(f[2] == E_RATE_LIMITED for _, f in err6), err6
    times = [t for t, _ in err6]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(g >= 0.8 for g in gaps), f"at most one ERROR 6 per second; gaps {gaps}"
    assert code == CLOSE_RATE_LIMIT, f"expected close 4429 after continuous excess, got {code}"
    assert t_close - times[0] >= RATE_SETTINGS["rate_limit_close_after_s"] * 0.7, (
        f"closed {t_close - times[0]:.2f}s after the first ERROR 6"
    )
    # everyone else: the flooder is gone, the document still works
    await b.wait_event(lambda d, e: e[:2] == [EV_LEFT, sid_a], timeout=3)
    c = await client_factory(rate_server)
    sid_c, _ = await c.join(1, doc_id)
    await c.send([CURSOR, 1, 6, 6, 6])
    _, ev = await b.wait_event(lambda d, e: e[0] == EV_CURSOR and e[1] == sid_c, timeout=2)
    assert ev == [EV_CURSOR, sid_c, 6, 6, 6]


async def test_slow_consumer_closed_4408(fresh_server_factory, client_factory, doc_id):
    """A member whose unsent bytes pass max_send_backlog is closed with 4408.

    The slow member S has a tiny receive buffer and stops reading, then re-joins a crowded
    document (members with long names) hundreds of times: every JOINED carries the full
    snapshot, ~10 MB in all, far more than the kernel socket buffers (a few MB) absorb.
    """
    srv = fresh_server_factory(
        {
            "batch_ms": 50,
            "max_send_backlog": 65536,
            "max_frames_per_s": 100000,
            "max_frames_burst": 100000,
            "max_users_per_document": 1000,
        }
    )
    crowded = doc_id + "-crowd"
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", srv.port))
    slow = await RawClient.open(srv.ws_url, sock=sock, max_queue=1)
    try:
        await slow.hello(user_id="slow", name="Slow")
        await slow.join(1, doc_id)
        for i in range(60):
            p = await client_factory(srv, user_id=f"big{i}", name=f"{i:02d}-" + "N" * 240)
            await p.join(1, crowded)
        t0 = time.monotonic()
        for _ in range(600):
            if slow.closed or time.monotonic() - t0 > 10:
                break
            try:
                await asyncio.wait_for(slow.send([JOIN, 2, crowded]), 5)
                await asyncio.wait_for(slow.send([LEAVE, 2]), 5)
            except (ConnectionClosed, TimeoutError):
                break
            await asyncio.sleep(0.001)
        # S reads again: whatever was queued, then the close frame
        code = await _read_until_closed(slow, 15)
        assert code == CLOSE_TOO_SLOW, (
            f"expected close 4408 for a member past max_send_backlog, got {code!r}"
        )
    finally:
        await slow.close()
