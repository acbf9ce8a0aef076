"""The inbound fast path never misparses: any stream, split anywhere, means what it means.

A raw socket sends one byte stream (the HTTP request, then HELLO and JOIN pipelined, then a
mix of hot frames, text frames, WebSocket pings, PING messages and fragmented messages,
each frame with its own random mask) to a real relay, cut into chunks at chosen positions.
Each chunk is sent only once the relay has read the previous one, and a few milliseconds
later, so the relay's handler has run in between: every cut is a real read boundary.

What the relay must make of it is what websockets alone would make of the unsplit stream:
every message in order. Observable: a second member sees the raw client's viewports (queued
events, never coalesced) in order; the raw client gets one ERROR per text frame and one
PONG per PING message, in order, a pong per ping with its payload, and no close.

(Before the fix: a text frame or a pipelined HELLO + JOIN followed by a frame whose header
was cut made the fast path start inside a frame: 1002.)
"""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
import time
from dataclasses import dataclass, field
from typing import Any

import msgpack
import pytest
from helpers import MS, handshake_request, pk, take_server_frame, ws_frame
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay.server.app import Relay

pytestmark = pytest.mark.timeout(300)


@dataclass
class Stream:
    """A client byte stream and what it must produce."""

    data: bytes
    viewports: list[int] = field(default_factory=list)  # tops, in order
    replies: list[tuple[int, int]] = field(default_factory=list)  # (35, code) / (36, ping id)
    pongs: list[bytes] = field(default_factory=list)  # WebSocket pong payloads, in order


# Masks that are themselves the start of a hot frame's header (FIN + binary, masked, length
# 5): a parser that starts at a mask instead of a header takes them for a frame of ours.
ADVERSARIAL = [b"\x82\x85" + bytes([i, 255 - i]) for i in range(0, 256, 37)]


def build_stream(port: int, doc: str, items: list[str], masks: list[bytes]) -> Stream:
    rnd = itertools.cycle(masks)

    def key() -> bytes:
        return next(rnd)

    def frame(payload: bytes, opcode: int = 2, fin: bool = True) -> bytes:
        return ws_frame(payload, opcode=opcode, fin=fin, key=key())

    s = Stream(handshake_request(port))
    s.data += frame(pk([1, 1, None, {"sdk": "t", "user_id": "raw", "name": "raw"}]))
    s.data += frame(pk([2, 1, doc]))
    s.replies += [(32, 0), (33, 0)]
    top = 0
    for n, item in enumerate(items):
        if item == "viewport":
            top += 1
            s.data += frame(pk([6, 1, top, top + 30, 10.0]))
            s.viewports.append(top)
        elif item == "fragmented":  # a viewport in three fragments
            top += 1
            m = pk([6, 1, top, top + 30, 10.0])
            s.data += frame(m[:2], 2, False) + frame(m[2:5], 0, False) + frame(m[5:], 0, True)
            s.viewports.append(top)
        elif item == "text":
            s.data += frame(b"not msgpack", opcode=1)
            s.replies.append((35, 1))
        elif item == "ping":  # a WebSocket ping: websockets answers it
            payload = f"p{n}".encode()
            s.data += frame(payload, opcode=9)
            s.pongs.append(payload)
        elif item == "PING":  # the protocol's PING: the hub answers it
            s.data += frame(pk([8, n]))
            s.replies.append((36, n))
        elif item == "long":  # a text frame with a 16-bit length header
            s.data += frame(b"t" * 300, opcode=1)
            s.replies.append((35, 1))
        else:
            raise AssertionError(item)
    return s


def server_conn(relay: Relay, local_port: int) -> Any:
    for conn in relay.hub.sockets:
        if conn.remote_address[1] == local_port:
            return conn
    return None


async def play(relay: Relay, observer: Any, doc: str, stream: Stream, cuts: list[int]) -> None:
    """Send `stream` cut at `cuts` and check everything it must produce."""
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", relay.port))
    try:
        local = sock.getsockname()[1]
        conn = None
        sent = 0
        bounds = [0, *sorted(set(cuts)), len(stream.data)]
        for a, b in itertools.pairwise(bounds):
            if a == b:
                continue
            await loop.sock_sendall(sock, stream.data[a:b])
            sent = b
            deadline = time.monotonic() + 5
            while conn is None or conn.bytes_in < sent:
                assert time.monotonic() < deadline, f"the relay did not read up to {sent}"
                conn = conn or server_conn(relay, local)
                await asyncio.sleep(1 * MS)
            await asyncio.sleep(3 * MS)  # the handler runs between two reads
        # What the raw client gets: replies in order, pongs in order, no close.
        buf = bytearray()
        head: bytearray | None = bytearray()  # the HTTP response, before the frames
        replies: list[tuple[int, int]] = []
        pongs: list[bytes] = []
        deadline = time.monotonic() + 5
        while len(replies) < len(stream.replies) or len(pongs) < len(stream.pongs):
            assert time.monotonic() < deadline, (replies, pongs)
            frame = take_server_frame(buf) if head is None else None
            if frame is None:
                chunk = await asyncio.wait_for(loop.sock_recv(sock, 65536), 5000 * MS)
                assert chunk, "the relay closed the connection"
                if head is not None:
                    head += chunk
                    if b"\r\n\r\n" not in head:
                        continue
                    assert head.startswith(b"HTTP/1.1 101"), bytes(head)
                    chunk = bytes(head).partition(b"\r\n\r\n")[2]
                    head = None
                buf += chunk
                continue
            op, payload = frame
            assert op != 8, f"closed: {payload[:2].hex()} {payload[2:]!r}"
            if op == 10:
                pongs.append(payload)
            elif op == 2:
                msg = msgpack.unpackb(payload)
                if msg[0] in (32, 33):
                    replies.append((msg[0], 0))
                elif msg[0] == 35:
                    replies.append((35, msg[2]))
                elif msg[0] == 36:
                    replies.append((36, msg[1]))
        assert replies == stream.replies
        assert pongs == stream.pongs
        # What the other member sees: every viewport, in order.
        seen: list[int] = []
        deadline = time.monotonic() + 5
        while len(seen) < len(stream.viewports):
            assert time.monotonic() < deadline, (seen, stream.viewports)
            f = await observer.recv(5000 * MS)
            if f[0] == 34 and f[1] == doc:
                seen += [e[2] for e in f[3] if e[0] == 5]
        assert seen == stream.viewports
    finally:
        sock.close()


_docs = itertools.count()

TRICKY = [
    "text",
    "viewport",
    "ping",
    "viewport",
    "fragmented",
    "viewport",
    "PING",
    "text",
    "text",
    "viewport",
    "long",
]


async def observer_in(relay: Relay, client_factory: Any, doc: str) -> Any:
    obs = await client_factory(relay, "obs")
    assert (await obs.join(1, doc))[0] == 33
    return obs


async def test_every_cut_of_one_stream(relay_factory: Any, client_factory: Any) -> None:
    """One stream with every kind of frame, cut once at every byte position after the
    handshake's request line (and at every position of the request's last bytes)."""
    # Each play ends by dropping its socket: with a grace, the same user's held sessions
    # would fill max_sessions_per_user in the one document.
    relay = await relay_factory(reconnect_grace_ms=0)
    doc = f"split-{next(_docs)}"
    obs = await observer_in(relay, client_factory, doc)
    stream = build_stream(relay.port, doc, TRICKY, ADVERSARIAL)
    head = stream.data.index(b"\r\n\r\n") + 4
    for cut in range(head - 6, len(stream.data)):
        await play(relay, obs, doc, stream, [cut])


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    items=st.lists(
        st.sampled_from(["viewport", "fragmented", "text", "ping", "PING", "long"]),
        min_size=1,
        max_size=12,
    ),
    cut_fractions=st.lists(st.floats(0, 1), min_size=1, max_size=6),
    masks=st.lists(
        st.one_of(st.binary(min_size=4, max_size=4), st.sampled_from(ADVERSARIAL)),
        min_size=1,
        max_size=8,
    ),
)
def test_any_stream_cut_anywhere(
    relay_loop: Any, items: list[str], cut_fractions: list[float], masks: list[bytes]
) -> None:
    relay, client_factory, run = relay_loop

    async def case() -> None:
        doc = f"split-{next(_docs)}"
        obs = await observer_in(relay, client_factory, doc)
        stream = build_stream(relay.port, doc, items, masks)
        cuts = [int(f * len(stream.data)) for f in cut_fractions]
        await play(relay, obs, doc, stream, cuts)

    run(case())


@pytest.fixture
def relay_loop() -> Any:
    """A relay on its own event loop that hypothesis examples run on, one after another."""
    import contextlib

    from relay.config import PresenceConfig

    if os.environ.get("RELAY_TEST_LOOP", "uvloop") == "asyncio":
        loop = asyncio.new_event_loop()
    else:
        import uvloop

        loop = uvloop.new_event_loop()
    r = Relay(PresenceConfig(port=0, batch_ms=10, max_sessions_per_user=1000, reconnect_grace_ms=0))
    loop.run_until_complete(r.start())
    opened: list[Any] = []

    async def open_client(relay: Relay, user_id: str) -> Any:
        from helpers import RawClient
        from websockets.asyncio.client import connect

        ws = await connect(
            f"ws://127.0.0.1:{relay.port}/ws", subprotocols=["presence.v1"], compression=None
        )  # type: ignore[list-item]
        opened.append(ws)
        c = RawClient(ws)
        await c.hello(user_id)
        return c

    try:
        yield r, open_client, loop.run_until_complete
    finally:
        for ws in opened:
            with contextlib.suppress(Exception):
                loop.run_until_complete(asyncio.wait_for(ws.close(), 2000 * MS))
        loop.run_until_complete(r.stop())
        loop.close()
