"""No resource outlives its deadline: members that stop reading are closed and released.

Real sockets on loopback. The member that stops reading is a plain socket with a tiny
receive buffer (`helpers.RawSocket`) that never calls recv again, so its window closes and
everything the relay sends it piles up in the relay's kernel queue, then its own buffer.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import pytest
from helpers import MS, RawSocket, eventually, kernel_has_socket, pk, ws_frame

from relay.core import protocol as p
from relay.server.app import Relay
from relay.server.sockets import kernel_queue, unsent_bytes

pytestmark = pytest.mark.timeout(60)


def server_side(relay: Relay, raw: RawSocket) -> Any:
    """The relay's connection object for a raw client (matched by the client's port)."""
    port = raw.sock.getsockname()[1]
    for conn in relay.hub.sockets:
        if conn.remote_address[1] == port:
            return conn
    return None


async def flood_viewports(
    relay: Relay, client_factory: Any, doc: str, seconds: float, stop: asyncio.Event
) -> None:
    """Two members fill `doc` with viewport events (queued, never coalesced) for a while;
    they read (and drop) everything, so only the stalled member backs up."""
    movers = []
    for i in range(2):
        m = await client_factory(relay, f"mover-{i}")
        assert (await m.join(1, doc))[0] == 33
        movers.append(m)

    async def drain(m: Any) -> None:
        with contextlib.suppress(Exception):
            while True:
                await m.ws.recv()

    readers = [asyncio.ensure_future(drain(m)) for m in movers]
    burst = b"".join(ws_frame(pk([6, 1, n, n + 40, 50.0])) for n in range(20))
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline and not stop.is_set():
            for m in movers:
                m.ws.transport.write(burst)
            await asyncio.sleep(20 * MS)
    finally:
        for t in readers:
            t.cancel()


async def test_a_member_that_stops_reading_is_closed_and_released(
    relay_factory: Any,
    client_factory: Any,
) -> None:
    """Its unsent bytes (the relay's buffer plus the kernel's queue) pass max_send_backlog:
    4408, and the socket is gone within close_timeout_s, though the peer never reads the
    close frame (before: the kernel hid the backlog, and a 4408 close waited forever on a
    drain)."""
    r = await relay_factory(
        max_send_backlog=64 * 1024,
        socket_send_buffer=4096,
        close_timeout_s=0.5,
        max_frames_per_s=100_000,
        max_frames_burst=100_000,
        liveness_timeout_ms=0,
    )
    stalled = await RawSocket.open(r.port, rcvbuf=4096)
    await stalled.hello("stalled")
    assert (await stalled.join(1, "busy"))[0] == 33
    conn = server_side(r, stalled)
    assert conn is not None
    stop = asyncio.Event()
    flood = asyncio.ensure_future(flood_viewports(r, client_factory, "busy", 15.0, stop))
    try:
        closed = await eventually(lambda: r.hub.stats.closes.get(p.CLOSE_TOO_SLOW), 10000 * MS)
        assert closed == 1, "the stalled member was not closed for its backlog"
        t_closed = time.monotonic()
        released = await eventually(lambda: conn not in r.hub.sockets, 5000 * MS)
        assert released, "the stalled member's socket outlived close_timeout_s"
        assert time.monotonic() - t_closed < 3.0
        assert conn.transport.is_closing()
    finally:
        stop.set()
        await flood
        stalled.close()


async def test_websocket_pings_without_reading_are_bounded(relay_factory: Any) -> None:
    """A client that floods WebSocket pings and never reads the pongs: websockets' replies
    obey max_send_backlog too (before: they grew the relay's buffer without limit)."""
    r = await relay_factory(
        max_send_backlog=16 * 1024,
        socket_send_buffer=4096,
        close_timeout_s=0.5,
        liveness_timeout_ms=0,
    )
    raw = await RawSocket.open(r.port, rcvbuf=4096)
    await raw.hello("pinger")
    conn = server_side(r, raw)
    ping = ws_frame(b"x" * 125, opcode=9)
    try:
        for _ in range(4000):  # ~0.5 MB of pongs asked for, at most
            if conn not in r.hub.sockets:
                break
            try:
                await asyncio.wait_for(raw.send(ping * 10), 1000 * MS)
            except (TimeoutError, OSError):
                break  # the relay stopped reading us (it closed or is closing)
            await asyncio.sleep(0)
        assert await eventually(lambda: conn not in r.hub.sockets, 5000 * MS)
        assert r.hub.stats.closes.get(p.CLOSE_TOO_SLOW) == 1
    finally:
        raw.close()


async def test_unsent_bytes_count_the_kernel_queue(relay_factory: Any) -> None:
    """Once the relay's own buffer holds bytes, the kernel's queue is added (SIOCOUTQ)."""
    r = await relay_factory(socket_send_buffer=4096, liveness_timeout_ms=0)
    raw = await RawSocket.open(r.port, rcvbuf=4096)
    await raw.hello("stalled")
    conn = server_side(r, raw)
    try:
        for _ in range(200):
            conn.transport.write(b"\x82\x7e\x10\x00" + b"z" * 4096)
            if conn.transport.get_write_buffer_size():
                break
            await asyncio.sleep(5 * MS)
        user = conn.transport.get_write_buffer_size()
        assert user > 0, "the kernel never filled up"
        kernel = kernel_queue(conn.fd)
        assert kernel > 0
        assert unsent_bytes(conn.transport, conn.fd) >= user + kernel - 4096
    finally:
        raw.close()


async def test_close_of_a_peer_that_never_reads_completes_in_time(
    relay_factory: Any,
) -> None:
    """A close is a deadline, not a wait: the relay's close of a zero-window peer ends the
    socket within close_timeout_s, whatever the peer does."""
    r = await relay_factory(socket_send_buffer=4096, close_timeout_s=0.3, liveness_timeout_ms=0)
    raw = await RawSocket.open(r.port, rcvbuf=4096)
    await raw.hello("stalled")
    conn = server_side(r, raw)
    client = next(c for c in r.hub.clients if c.ws is conn)
    try:
        while conn.transport.get_write_buffer_size() < 256 * 1024:  # well past the pause mark
            conn.transport.write(b"\x82\x7e\x10\x00" + b"z" * 4096)
            await asyncio.sleep(0)
        t0 = time.monotonic()
        r.hub.close_client(client, p.CLOSE_TOO_SLOW, "send backlog exceeded")
        assert await eventually(lambda: conn not in r.hub.sockets, 3000 * MS)
        assert time.monotonic() - t0 < 2.0
    finally:
        raw.close()


async def test_a_keepalive_timeout_leaves_no_socket_in_the_kernel(
    relay_factory: Any, client_factory: Any
) -> None:
    """A member that stops reading in a quiet-enough document is found by keepalive, which
    websockets ends with a plain abort; the kernel then kept the socket and its queue for
    minutes against the zero window. TCP_USER_TIMEOUT (liveness_timeout_ms) ends it."""
    r = await relay_factory(
        liveness_timeout_ms=2000,
        close_timeout_s=0.5,
        max_frames_per_s=100_000,
        max_frames_burst=100_000,
    )
    stalled = await RawSocket.open(r.port, rcvbuf=4096)
    await stalled.hello("stalled")
    assert (await stalled.join(1, "busy"))[0] == 33
    peer = stalled.sock.getsockname()[1]
    stop = asyncio.Event()
    flood = asyncio.ensure_future(flood_viewports(r, client_factory, "busy", 15.0, stop))
    try:
        assert await eventually(lambda: not kernel_has_socket(r.port, peer), 10000 * MS), (
            "the kernel still holds the stalled member's socket"
        )
    finally:
        stop.set()
        await flood
        stalled.close()
