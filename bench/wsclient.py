"""The generator's cold path: open one connection with raw HTTP, HELLO, JOIN.

After JOINED the transport is handed to `_wsgen.Conn` (the hot path, compiled) with
`transport.set_protocol`; bytes that arrived after JOINED go to it first. Everything here
runs once per connection, so clarity wins over speed.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
from typing import Any
from urllib.parse import urlsplit

import msgpack

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
SUBPROTOCOL = "presence.v1"
WELCOME, JOINED, ERROR = 32, 33, 35


class SetupError(Exception):
    pass


def parse_url(url: str) -> tuple[str, int, str]:
    parts = urlsplit(url)
    if parts.scheme != "ws":
        raise SetupError(f"only ws:// URLs are supported: {url}")
    host = parts.hostname or "127.0.0.1"
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise SetupError(f"the bench only connects to loopback, not {host!r}")
    return host, parts.port or 80, parts.path or "/ws"


def split_frames(buf: bytearray) -> list[tuple[int, bytes]]:
    """Pop every whole server frame off `buf`: [(first_byte, payload)]."""
    out = []
    while len(buf) >= 2:
        b0, b1 = buf[0], buf[1]
        n, hl = b1 & 0x7F, 2
        if n == 126:
            if len(buf) < 4:
                break
            n, hl = int.from_bytes(buf[2:4], "big"), 4
        elif n == 127:
            if len(buf) < 10:
                break
            n, hl = int.from_bytes(buf[2:10], "big"), 10
        if b1 & 0x80:
            raise SetupError("the server sent a masked frame")
        if len(buf) < hl + n:
            break
        out.append((b0, bytes(buf[hl : hl + n])))
        del buf[: hl + n]
    return out


class SetupProtocol(asyncio.Protocol):
    """Buffers bytes until the setup coroutine asks for them."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[None] | None = None
        self.lost: BaseException | None = None
        self.closed = False
        self.welcome: list[Any] | None = None  # WELCOME, once open_joined has read it

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self._wake()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.lost = exc
        self._wake()

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def wait_data(self) -> None:
        if self.closed:
            raise SetupError(f"connection closed during setup ({self.lost})")
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None


async def _read_http(proto: SetupProtocol) -> bytes:
    while b"\r\n\r\n" not in proto.buf:
        if len(proto.buf) > 65536:
            raise SetupError("HTTP response too large")
        await proto.wait_data()
    end = proto.buf.index(b"\r\n\r\n") + 4
    head = bytes(proto.buf[:end])
    del proto.buf[:end]
    return head


async def _read_message(proto: SetupProtocol, frame: Any, want: int) -> list[Any]:
    """Wait for the server message of type `want` (BATCH etc. before it are skipped)."""
    while True:
        for b0, payload in split_frames(proto.buf):
            op = b0 & 0x0F
            if op == 0x8:
                code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                raise SetupError(f"closed during setup: {code} {payload[2:]!r}")
            if op == 0x9:  # ping
                proto.transport.write(frame(0xA, payload))  # type: ignore[union-attr]
                continue
            if op != 0x2:
                continue
            msg = msgpack.unpackb(payload, raw=False, strict_map_key=False)
            if msg[0] == want:
                return msg  # type: ignore[no-any-return]
            if msg[0] == ERROR:
                raise SetupError(f"ERROR during setup: {msg}")
        await proto.wait_data()


async def open_joined(
    host: str,
    port: int,
    path: str,
    user_id: str,
    doc_id: str,
    handle: int,
    frame: Any,
) -> tuple[asyncio.Transport, SetupProtocol, int]:
    """Connect, upgrade, HELLO, JOIN. Returns (transport, setup protocol, sid)."""
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_connection(SetupProtocol, host, port)
    try:
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: {SUBPROTOCOL}\r\n"
            "User-Agent: presence-relay-bench/0\r\n\r\n"
        )
        transport.write(request.encode())
        head = await _read_http(proto)
        status = head.split(b"\r\n", 1)[0]
        if b" 101 " not in status + b" ":
            raise SetupError(f"handshake refused: {head[:300]!r}")
        accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest())
        if accept not in head:
            raise SetupError("bad Sec-WebSocket-Accept")
        info = {"sdk": "bench/0", "user_id": user_id, "name": user_id}
        transport.write(frame(0x2, msgpack.packb([1, 1, None, info])))
        proto.welcome = await _read_message(proto, frame, WELCOME)
        transport.write(frame(0x2, msgpack.packb([2, handle, doc_id])))
        joined = await _read_message(proto, frame, JOINED)
        return transport, proto, int(joined[3])
    except BaseException:
        transport.abort()
        raise
