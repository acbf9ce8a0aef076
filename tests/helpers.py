"""Test helpers shared by several test modules: raw WebSocket bytes and a raw socket client.

`RawSocket` speaks WebSocket by hand over a plain non-blocking socket, so a test decides
exactly what the relay gets (any split, any frame) and whether the client reads at all
(a tiny receive buffer and no reads: a client that stopped reading).
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgpack
from websockets.speedups import apply_mask

SUBPROTOCOL = "presence.v1"


def ws_frame(
    payload: bytes, opcode: int = 2, fin: bool = True, mask: bool = True, key: bytes | None = None
) -> bytes:
    """One client frame (masked with `key`, or a random key)."""
    b0 = (0x80 if fin else 0) | opcode
    m = 0x80 if mask else 0
    n = len(payload)
    if n < 126:
        head = bytes([b0, m | n])
    elif n < 65536:
        head = bytes([b0, m | 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([b0, m | 127]) + n.to_bytes(8, "big")
    if not mask:
        return head + payload
    key = os.urandom(4) if key is None else key
    return head + key + apply_mask(payload, key)


def pk(value: Any) -> bytes:
    return msgpack.packb(value)  # type: ignore[no-any-return]


def handshake_request(port: int, path: str = "/ws", extra: str = "") -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: {SUBPROTOCOL}\r\n"
        f"{extra}\r\n"
    ).encode()


def take_server_frame(buf: bytearray) -> tuple[int, bytes] | None:
    """Take one whole (unmasked) server frame off the front of `buf`: (opcode, payload)."""
    if len(buf) < 2:
        return None
    n = buf[1] & 0x7F
    i = 2
    if n == 126:
        if len(buf) < 4:
            return None
        n, i = int.from_bytes(buf[2:4], "big"), 4
    elif n == 127:
        if len(buf) < 10:
            return None
        n, i = int.from_bytes(buf[2:10], "big"), 10
    if len(buf) < i + n:
        return None
    frame = (buf[0] & 0x0F, bytes(buf[i : i + n]))
    del buf[: i + n]
    return frame


class RawSocket:
    """A WebSocket client made of a plain socket: it reads only when asked to."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.loop = asyncio.get_running_loop()

    @classmethod
    async def open(
        cls,
        port: int,
        rcvbuf: int | None = None,
        extra_headers: str = "",
    ) -> RawSocket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:  # before connect, so the window is small from the start
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        await loop.sock_connect(sock, ("127.0.0.1", port))
        raw = cls(sock)
        await raw.send(handshake_request(port, extra=extra_headers))
        while b"\r\n\r\n" not in raw.buf:
            await raw._fill(5.0)
        head, _, rest = bytes(raw.buf).partition(b"\r\n\r\n")
        raw.status = int(head.split()[1])
        raw.buf = bytearray(rest)
        return raw

    async def send(self, data: bytes) -> None:
        await self.loop.sock_sendall(self.sock, data)

    async def send_msg(self, value: Any) -> None:
        await self.send(ws_frame(pk(value)))

    async def _fill(self, timeout: float) -> None:
        data = await asyncio.wait_for(self.loop.sock_recv(self.sock, 65536), timeout)
        if not data:
            raise ConnectionError("closed by the relay")
        self.buf += data

    async def recv_frame(self, timeout: float = 3.0) -> tuple[int, bytes]:
        deadline = time.monotonic() + timeout
        while True:
            frame = take_server_frame(self.buf)
            if frame is not None:
                return frame
            await self._fill(max(0.01, deadline - time.monotonic()))

    async def recv_msg(
        self, pred: Callable[[Any], bool] = lambda m: True, timeout: float = 3.0
    ) -> Any:
        """The next binary message matching `pred` (pings answered, others skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            op, data = await self.recv_frame(max(0.01, deadline - time.monotonic()))
            if op == 9:
                await self.send(ws_frame(data, opcode=10))
            elif op == 2:
                msg = msgpack.unpackb(data)
                if pred(msg):
                    return msg
            elif op == 8:
                raise ConnectionError(f"close frame {data[:2].hex()} {data[2:]!r}")

    async def hello(self, user_id: str, token: str | None = None) -> Any:
        info = (
            {"sdk": "test/0"} if token else {"sdk": "test/0", "user_id": user_id, "name": user_id}
        )
        await self.send_msg([1, 1, token, info])
        return await self.recv_msg()

    async def join(self, h: int, doc: str) -> Any:
        await self.send_msg([2, h, doc])
        return await self.recv_msg(lambda m: m[0] in (33, 35))

    def close(self) -> None:
        self.sock.close()


async def eventually(check: Callable[[], Any], timeout: float = 5.0, interval: float = 0.02) -> Any:
    """Poll `check` (sync or async) until it returns something true, or the time is up."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = check()
        if isinstance(result, Awaitable):
            result = await result
        if result or loop.time() > deadline:
            return result
        await asyncio.sleep(interval)


def free_port() -> int:
    """A free loopback port (never 6379, a developer's own Redis)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port: int = s.getsockname()[1]
        if port != 6379:
            return port


async def http_get(
    port: int,
    path: str,
    headers: dict[str, str] | None = None,
) -> tuple[int, bytes]:
    """One HTTP/1.1 GET on loopback: (status, body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{extra}\r\n".encode())
    data = await reader.read()
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


class RelayProcess:
    """`python -m relay serve` in a subprocess on a free port, with its output in a file."""

    def __init__(self, *args: str) -> None:
        import subprocess
        import sys
        import tempfile

        self.port = free_port()
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 - closed by kill()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "relay", "serve", "--port", str(self.port), *args],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    async def ready(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"relay exited: {self.output()}")
            try:
                if (await http_get(self.port, "/healthz"))[0] == 200:
                    return
            except OSError:
                pass
            await asyncio.sleep(0.05)
        raise RuntimeError(f"relay not ready: {self.output()}")

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-4000:]

    def terminate(self, timeout: float = 10.0) -> float | None:
        """SIGTERM; seconds until the process exited (None: still running after `timeout`,
        then killed)."""
        import signal
        import subprocess

        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            return None
        return time.monotonic() - t0

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.log.close()


def kernel_has_socket(local_port: int, peer_port: int) -> bool:
    """Whether the kernel still has a TCP socket from `local_port` to `peer_port` (in any
    state but TIME_WAIT), e.g. one a process closed with bytes still queued."""
    want_local, want_peer = f":{local_port:04X}", f":{peer_port:04X}"
    with open("/proc/net/tcp") as fh:
        next(fh)
        for line in fh:
            f = line.split()
            if f[1].endswith(want_local) and f[2].endswith(want_peer) and f[3] != "06":
                return True
    return False
