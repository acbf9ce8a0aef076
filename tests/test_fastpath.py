"""The inbound fast path (relay/server/fastpath.py) against hostile and unusual framing.

Frames are written raw on the client's transport, so the server sees exactly these bytes:
split anywhere, coalesced, fragmented, interleaved with text and control frames."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from helpers import MS, pk, ws_frame
from websockets.exceptions import ConnectionClosed

from relay.server.app import Relay

pytestmark = pytest.mark.timeout(30)


async def pair(relay: Relay, client_factory: Any) -> tuple[Any, Any, int]:
    """A watcher in doc `d` and a second client `raw` (hello'd, not joined)."""
    watcher = await client_factory(relay, "watcher")
    await watcher.join(1, "d")
    raw = await client_factory(relay, "raw")
    return watcher, raw, 0


def server_conn(relay: Relay, user_id: str) -> Any:
    return next(c.ws for c in relay.hub.clients if c.user.user_id == user_id)


def cursor_of(sid: int) -> Any:
    return lambda f: f[0] == 34 and any(e[0] == 1 and e[1] == sid for e in f[3])


async def test_hot_frames_take_the_fast_path(relay: Relay, client_factory: Any) -> None:
    watcher, raw, _ = await pair(relay, client_factory)
    sid = (await raw.join(1, "d"))[3]
    for i in range(50):
        await raw.send([4, 1, 1, i, i])
    batch = await watcher.recv_until(lambda f: f[0] == 34 and [1, sid, 1, 49, 49] in f[3])
    assert batch
    # every CURSOR frame went through the fast path's scanner (24 bytes each on the wire)
    assert server_conn(relay, "raw").fast_bytes >= 50 * len(ws_frame(pk([4, 1, 1, 49, 49])))


async def test_frames_split_byte_by_byte(relay: Relay, client_factory: Any) -> None:
    watcher, raw, _ = await pair(relay, client_factory)
    data = ws_frame(pk([2, 3, "d"])) + ws_frame(pk([4, 3, 7, 8, 9]))
    for i in range(len(data)):
        raw.ws.transport.write(data[i : i + 1])
        await asyncio.sleep(1 * MS)
    joined = await raw.recv_until(lambda f: f[0] == 33)
    await watcher.recv_until(lambda f: f[0] == 34 and [1, joined[3], 7, 8, 9] in f[3])


async def test_coalesced_frames_in_one_write(relay: Relay, client_factory: Any) -> None:
    watcher, raw, _ = await pair(relay, client_factory)
    sid = (await raw.join(1, "d"))[3]
    raw.ws.transport.write(b"".join(ws_frame(pk([4, 1, 2, i, i])) for i in range(100)))
    await watcher.recv_until(lambda f: f[0] == 34 and [1, sid, 2, 99, 99] in f[3])


async def test_fragmented_message_keeps_order(relay: Relay, client_factory: Any) -> None:
    """A JOIN sent in two fragments, then a CURSOR for it in the same write: no ERROR 3."""
    watcher, raw, _ = await pair(relay, client_factory)
    join = pk([2, 5, "d"])
    data = (
        ws_frame(join[:2], opcode=2, fin=False)
        + ws_frame(join[2:], opcode=0, fin=True)
        + ws_frame(pk([4, 5, 1, 1, 1]))
    )
    raw.ws.transport.write(data)
    joined = await raw.recv_until(lambda f: f[0] in (33, 35))
    assert joined[0] == 33
    await watcher.recv_until(lambda f: f[0] == 34 and [1, joined[3], 1, 1, 1] in f[3])
    assert not [f for f in await raw.quiet(200 * MS) if f[0] == 35]
    # ...and the fast path resumes afterwards
    before = server_conn(relay, "raw").fast_bytes
    await raw.send([4, 5, 2, 2, 2])
    await watcher.recv_until(lambda f: f[0] == 34 and [1, joined[3], 2, 2, 2] in f[3])
    assert server_conn(relay, "raw").fast_bytes > before


async def test_text_and_ping_frames_between_binary(relay: Relay, client_factory: Any) -> None:
    watcher, raw, _ = await pair(relay, client_factory)
    sid = (await raw.join(1, "d"))[3]
    raw.ws.transport.write(
        ws_frame(pk([4, 1, 1, 1, 1]))
        + ws_frame(b"hello", opcode=1)
        + ws_frame(b"p", opcode=9)
        + ws_frame(pk([4, 1, 3, 3, 3]))
    )
    err = await raw.recv_until(lambda f: f[0] == 35)
    assert err[2] == 1  # text frame: BAD_FRAME, connection stays
    await watcher.recv_until(lambda f: f[0] == 34 and [1, sid, 3, 3, 3] in f[3])
    await raw.send([8, 42])
    assert (await raw.recv_until(lambda f: f[0] == 36))[1] == 42


async def test_oversized_frame_closes_1009(relay_factory: Any, client_factory: Any) -> None:
    r = await relay_factory(max_frame_bytes=256)
    watcher, raw, _ = await pair(r, client_factory)
    await raw.join(1, "d")
    raw.ws.transport.write(ws_frame(pk([4, 1, 1, 1, 1])) + ws_frame(b"\x90" + b"x" * 300))
    with pytest.raises(ConnectionClosed):
        await raw.recv_until(lambda f: False, timeout=5000 * MS)
    assert raw.ws.close_code == 1009
    await watcher.send([8, 1])  # everyone else unaffected
    assert (await watcher.recv_until(lambda f: f[0] == 36))[1] == 1


async def test_unmasked_frame_is_a_protocol_error(relay: Relay, client_factory: Any) -> None:
    watcher, raw, _ = await pair(relay, client_factory)
    await raw.join(1, "d")
    raw.ws.transport.write(ws_frame(pk([4, 1, 1, 1, 1]), mask=False))
    with pytest.raises(ConnectionClosed):
        await raw.recv_until(lambda f: False, timeout=5000 * MS)
    assert raw.ws.close_code == 1002
    left = await watcher.recv_until(lambda f: f[0] == 34 and any(e[0] == 3 for e in f[3]))
    assert left
