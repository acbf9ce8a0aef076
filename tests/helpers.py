"""Test helpers: the one module the test modules share (no test module imports another).

- Time: `MS`, one millisecond scaled by RELAY_TEST_TIME_SCALE (default 1): every wait and
  timeout in the tests is a multiple of it, so a slow machine runs the suite with, say,
  RELAY_TEST_TIME_SCALE=3 instead of failing on timing.
- Clients: `RawClient` (a websockets client, lists in and out), `RawSocket` (WebSocket by
  hand over a plain socket: any split, any frame, a client that stops reading), `ws_frame`.
- Processes and servers: `RelayProcess` (`presence-relay serve` in a subprocess),
  `RedisServer` (a real redis-server on a free port), `free_port`, `http_get`.
- Redis and BATCH helpers: `wait_event`, `joined`, `users_hash`, the event codes,
  `ids_sharing_a_stripe` (node ids whose fallback-sid stripes would collide).
- The twins, driven as the hub drives them: `Twin`, `flush_view`, `random_frame`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable
from types import ModuleType
from typing import Any

import msgpack
import redis.asyncio as aioredis
from websockets.asyncio.client import ClientConnection
from websockets.speedups import apply_mask

from relay.core import protocol as p
from relay.core.document import DocumentRules
from relay.core.model import UserInfo

# One millisecond of test time: every wait and timeout is a multiple of it.
MS = 0.001 * float(os.environ.get("RELAY_TEST_TIME_SCALE", "1"))

SUBPROTOCOL = "presence.v1"


def ws_frame(
    payload: bytes,
    opcode: int = 2,
    fin: bool = True,
    mask: bool = True,
    key: bytes | None = None,
    first: int | None = None,
    ext: int | None = None,
) -> bytes:
    """One client frame, masked with `key` (or a random key). `first` sets the first byte
    as it is (any RSV bits, any opcode); `ext` forces the 16- (126) or 64-bit (127) length
    form."""
    b0 = first if first is not None else (0x80 if fin else 0) | opcode
    m = 0x80 if mask else 0
    n = len(payload)
    if ext == 127 or n >= 65536:
        head = bytes([b0, m | 127]) + n.to_bytes(8, "big")
    elif ext == 126 or n >= 126:
        head = bytes([b0, m | 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([b0, m | n])
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

    async def recv_frame(self, timeout: float = 3000 * MS) -> tuple[int, bytes]:
        deadline = time.monotonic() + timeout
        while True:
            frame = take_server_frame(self.buf)
            if frame is not None:
                return frame
            await self._fill(max(0.01, deadline - time.monotonic()))

    async def recv_msg(
        self, pred: Callable[[Any], bool] = lambda m: True, timeout: float = 3000 * MS
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


async def eventually(
    check: Callable[[], Any], timeout: float = 5000 * MS, interval: float = 20 * MS
) -> Any:
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

    async def ready(self, timeout: float = 15000 * MS) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"relay exited: {self.output()}")
            try:
                if (await http_get(self.port, "/healthz"))[0] == 200:
                    return
            except OSError:
                pass
            await asyncio.sleep(50 * MS)
        raise RuntimeError(f"relay not ready: {self.output()}")

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-4000:]

    def terminate(self, timeout: float = 10000 * MS) -> float | None:
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


# ---------------------------------------------------------------- a websockets client


class RawClient:
    """A protocol client with no SDK in the way: lists in, lists out."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws

    async def send(self, frame: list[Any]) -> None:
        await self.ws.send(msgpack.packb(frame))

    async def recv(self, timeout: float = 2000 * MS) -> list[Any]:
        data = await asyncio.wait_for(self.ws.recv(), timeout)
        return msgpack.unpackb(data)  # type: ignore[no-any-return]

    async def recv_until(
        self, pred: Callable[[list[Any]], bool], timeout: float = 3000 * MS
    ) -> list[Any]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            frame = await self.recv(max(0.01, deadline - loop.time()))
            if pred(frame):
                return frame

    async def hello(
        self,
        user_id: str,
        name: str | None = None,
        token: str | None = None,
        resume: str | None = None,
    ) -> list[Any]:
        info: dict[str, Any] = (
            {"sdk": "test/0"}
            if token
            else {"sdk": "test/0", "user_id": user_id, "name": name or user_id}
        )
        if resume is not None:
            info["resume"] = resume
        await self.send([1, 1, token, info])
        return await self.recv()

    async def join(self, h: int, doc_id: str) -> list[Any]:
        await self.send([2, h, doc_id])
        return await self.recv_until(lambda f: f[0] in (33, 35))

    async def quiet(self, seconds: float) -> list[list[Any]]:
        """Everything received within `seconds` (used to assert that nothing arrives)."""
        got = []
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                while True:
                    got.append(msgpack.unpackb(await self.ws.recv()))
        return got


# ---------------------------------------------------------------- redis-server

REDIS_BIN = shutil.which("redis-server") or "/usr/bin/redis-server"


def _ping(port: int, timeout: float = 200 * MS) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 5000 * MS) -> RedisServer:
        assert self.proc is None, "already running"
        self.proc = subprocess.Popen(
            [
                REDIS_BIN,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                "--loglevel",
                "warning",
                "--protected-mode",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while not _ping(self.port):
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on port {self.port} did not answer")
            time.sleep(0.02)
        return self

    def kill(self) -> None:
        """SIGKILL: like a crash; everything in it is lost (no persistence)."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
            self.proc = None

    def restart(self) -> RedisServer:
        self.kill()
        return self.start()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


# ---------------------------------------------------------------- BATCH events, Redis keys

BATCH = 34
JOINED = 33
EV_CURSOR, EV_JOINED, EV_LEFT = 1, 2, 3


SEED_FIELDS = {
    "user_id",
    "document_id",
    "workspace_id",
    "name",
    "avatar_url",
    "color",
    "state",
    "cursor",
    "selection",
    "connected_at",
    "last_active_at",
    "last_cursor_update",
}


async def wait_event(
    c: RawClient,
    pred: Callable[[list[Any]], bool],
    timeout: float = 3000 * MS,
) -> tuple[float, list[Any]]:
    """The first BATCH event matching `pred`: (monotonic arrival time, event)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        left = deadline - loop.time()
        if left <= 0:
            raise TimeoutError("no matching event")
        frame = await c.recv(left)
        if frame[0] == BATCH:
            for ev in frame[3]:
                if pred(ev):
                    return time.monotonic(), ev


def ids_sharing_a_stripe(n: int) -> list[str]:
    """`n` node ids whose hashes pick the same fallback-sid stripe (a 1 in 4096 draw)."""
    from relay.backends.redis_stripes import preferred_stripe

    want = preferred_stripe("node-a")
    same = (f"node-{i}" for i in itertools.count() if preferred_stripe(f"node-{i}") == want)
    return ["node-a", *itertools.islice(same, n - 1)]


async def users_hash(r: aioredis.Redis, doc: str) -> dict[str, dict[str, Any]]:
    raw = await r.hgetall(f"presence:{doc}:users")
    return {k.decode(): json.loads(v) for k, v in raw.items()}


async def joined(c: RawClient, h: int, doc: str) -> tuple[int, list[Any]]:
    reply = await c.join(h, doc)
    assert reply[0] == JOINED, reply
    return reply[3], reply[4]


async def http_get_json(port: int, path: str) -> tuple[int, Any]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    data = await reader.read()
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body.decode()


# ---------------------------------------------------------------- the twins

TWIN_RULES = DocumentRules(
    max_users_per_document=2000,
    typing_debounce_ms=500,
    activity_timeout_ms=3000,
    away_after_ms=9000,
    away_after_blur_ms=2000,
)
U32 = 2**32 - 1


class Twin:
    """One twin's document with peers, driven the way the hub drives it."""

    def __init__(self, mod: ModuleType, doc_id: str = "doc-1") -> None:
        self.mod = mod
        self.dirty: set[Any] = set()
        self.doc = mod.Document(doc_id, TWIN_RULES, self.dirty)
        self.peers: dict[int, Any] = {}  # peer id -> Peer

    def join(self, peer_id: int, h: int, user: UserInfo, now: int) -> Any:
        peer = self.peers.get(peer_id)
        if peer is None:
            peer = self.mod.Peer(self.mod.TokenBucket(200, 400, 5000, now))
            self.peers[peer_id] = peer
        s = self.doc.join(user, now)
        peer.handles[h] = self.mod.Membership(self.doc, s.sid)
        return s.sid

    def leave(self, peer_id: int, h: int, now: int, reason: int = 0) -> Any:
        m = self.peers[peer_id].handles.pop(h)
        return self.doc.leave(m.sid, now, reason) is not None

    def disconnect(self, peer_id: int, h: int, now: int) -> None:
        self.doc.disconnect(self.peers[peer_id].handles[h].sid, now)

    def reconnect(self, peer_id: int, h: int, now: int) -> None:
        self.doc.reconnect(self.peers[peer_id].handles[h].sid, now)

    def set_status(self, peer_id: int, h: int, text: str | None, now: int) -> None:
        """STATUS (v1.1) is a cold frame: the general path applies it to the document."""
        self.doc.set_status(self.peers[peer_id].handles[h].sid, text, now)

    def feed(self, peer_id: int, data: bytes, now: int) -> tuple[int, Any]:
        """Peer.feed, then the general path's answer for what it declined (the error code)."""
        peer = self.peers[peer_id]
        r = peer.feed(data, now)
        if r != self.mod.FALLBACK:
            return r, None
        try:
            frame = p.decode_client_frame(data)
            if frame[0] in (p.CURSOR, p.TYPING, p.VIEWPORT, p.FOCUS):
                if frame[1] not in peer.handles:
                    raise p.ProtocolError(p.NOT_JOINED, "not joined", frame[1])
                p.check_ranges(frame)
                raise AssertionError(f"feed declined a valid hot frame {frame!r}")
            return r, ("cold", frame[0])
        except p.ProtocolError as exc:
            return r, (exc.code, exc.handle)

    def state(self) -> Any:
        return (
            self.doc.snapshot(),
            self.doc.next_deadline_ms,
            self.doc.dirty,
            sorted(self.doc.sessions),
        )


def flush_view(batch: Any) -> Any:
    if batch is None:
        return None
    return (bytes(batch.frame), batch.skip_sid, batch.event_count, list(batch.cursor_arrivals))


def random_frame(rng: random.Random, handles: list[int]) -> bytes:
    h = rng.choice([*handles, rng.randrange(0, 70000)]) if handles else rng.randrange(9)

    def u():
        return rng.choice([0, 1, 127, 128, 255, 256, 65535, 65536, U32, rng.randrange(10**6)])

    kind = rng.randrange(16)
    if kind == 0:
        return msgpack.packb([4, h, u(), u(), u()])
    if kind == 1:
        return msgpack.packb([4, h, u(), u(), u(), u(), u(), u(), rng.random() < 0.5])
    if kind == 2:
        return msgpack.packb([4, h])
    if kind == 3:
        return msgpack.packb([5, h] + ([rng.random() < 0.5] if rng.random() < 0.5 else []))
    if kind == 4:
        top = u()
        pct = rng.choice([0, 50, 100, 42.5, -0.0, 100.5, -1, float("nan"), float("inf"), 7])
        return msgpack.packb([6, h, top, top + rng.randrange(50), pct])
    if kind == 5:
        return msgpack.packb([6, h, 1, 2, 3.0], use_single_float=True)
    if kind == 6:
        return msgpack.packb([7, h, rng.random() < 0.5])
    if kind == 7:  # non-canonical but valid: array16 header, uint32 for a small int
        return b"\xdc\x00\x05\x04" + msgpack.packb(h) + b"\xce\x00\x00\x00\x01\x02\x03"
    if kind == 8:
        return b"\x95\x04" + msgpack.packb(h) + b"\xd0\xff\x01\x02"  # negative line
    if kind == 9:
        return msgpack.packb([4, h, U32 + 1, 0, 0])
    if kind == 10:
        return msgpack.packb([4, h, 1.5, 0, 0])
    if kind == 11:
        return msgpack.packb([4, h, 1, 2, 3]) + b"\x00"  # trailing byte
    if kind == 12:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 12)))
    if kind == 13:
        return msgpack.packb([8, rng.randrange(1000)])
    if kind == 14:
        return msgpack.packb([rng.choice([2, 3, 9, 99]), h, "doc"])
    data = bytearray(msgpack.packb([4, h, u(), u(), u()]))
    data[rng.randrange(len(data))] = rng.randrange(256)  # one flipped byte
    return bytes(data)


class ScriptedRelay:
    """A stand-in relay for SDK tests that pin the client's side of the wire: accepts
    connections and runs `script(ws, n)` for each (n counts connections from 0), keeping
    what each sent (`received`) and how each closed (`close_codes`, once the script ended
    and the client closed)."""

    def __init__(self, script: Callable[[Any, int], Awaitable[None]]) -> None:
        self.script = script
        self.connections = 0
        self.received: list[list[Any]] = []  # frames per connection
        self.close_codes: list[int | None] = []
        self.server: Any = None
        self.url = ""

    async def __aenter__(self) -> Any:
        from websockets.asyncio.server import serve
        from websockets.typing import Subprotocol

        async def handler(ws: Any) -> None:
            n = self.connections
            self.connections += 1
            self.received.append([])
            try:
                await self.script(ws, n)
            finally:
                if ws.close_code is not None:
                    self.close_codes.append(ws.close_code)

        self.server = await serve(
            handler, "127.0.0.1", 0, subprotocols=[Subprotocol(p.SUBPROTOCOL)], compression=None
        )
        port = next(iter(self.server.sockets)).getsockname()[1]
        self.url = f"ws://127.0.0.1:{port}/ws"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def recv(self, ws: Any, n: int) -> Any:
        frame = msgpack.unpackb(await ws.recv())
        self.received[n].append(frame)
        return frame


class DocumentEvents:
    """Collects a Python SDK document's events in the background (`async with`), from the
    moment it starts: the events already queued are dropped. Test modules subclass it with
    their own ways of reading `events`."""

    def __init__(self, doc: Any) -> None:
        self.doc = doc
        self.events: list[Any] = []
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Any:
        while not self.doc._events.empty():
            self.doc._events.get_nowait()
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _run(self) -> None:
        async for event in self.doc.events():
            self.events.append(event)


class GatedProvider:
    """A token provider for the Python SDK whose calls after the first wait for `gate`: the
    SDK stays disconnected after a drop until the test opens it. `mint(user)` makes a token."""

    def __init__(self, user: str, mint: Callable[[str], str]) -> None:
        self.user = user
        self.mint = mint
        self.gate = asyncio.Event()
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.calls > 1:
            await self.gate.wait()
        return self.mint(self.user)
