"""Fixtures for the wire-protocol conformance suite.

Everything here is written from `docs/protocol.md` only: the suite never imports the
`relay` package. It starts the relay as a subprocess (`python -m relay serve ...`) and talks to
it with a plain `websockets` client and `msgpack`, exactly like a third-party client would.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import msgpack
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

REPO_ROOT = Path(__file__).resolve().parents[2]
SUBPROTOCOL = "presence.v1"

# Frame types (docs/protocol.md, sections 2 and 3).
HELLO, JOIN, LEAVE, CURSOR, TYPING, VIEWPORT, FOCUS, PING = 1, 2, 3, 4, 5, 6, 7, 8
WELCOME, JOINED, BATCH, ERROR, PONG = 32, 33, 34, 35, 36

# BATCH event codes.
EV_CURSOR, EV_JOINED, EV_LEFT, EV_TYPING, EV_VIEWPORT, EV_ACTIVITY, EV_FOCUS = 1, 2, 3, 4, 5, 6, 7

# Activity codes.
EDITING, VIEWING, SELECTING, IDLE, AWAY = 0, 1, 2, 3, 4

# ERROR codes.
E_BAD_FRAME = 1
E_UNKNOWN_TYPE = 2
E_NOT_JOINED = 3
E_FORBIDDEN = 4
E_AT_CAPACITY = 5
E_RATE_LIMITED = 6
E_INVALID_VALUE = 7
E_ALREADY_JOINED = 8
E_TOO_MANY_DOCUMENTS = 9

# Close codes.
CLOSE_PROTOCOL = 4400
CLOSE_UNAUTHENTICATED = 4401
CLOSE_TOO_SLOW = 4408
CLOSE_RATE_LIMIT = 4429
CLOSE_GOING_AWAY = 1001
CLOSE_TOO_BIG = 1009

JWT_SECRET = "conformance-secret-0123456789abcdef0123456789"

# The main server: short timers so the activity rules can be observed in a few seconds, and
# small limits so the capacity edges are cheap to reach.
MAIN_SETTINGS = {
    "batch_ms": 50,
    "cursor_throttle_ms": 50,
    "typing_debounce_ms": 400,
    "activity_timeout_ms": 1500,
    "away_after_ms": 3000,
    "away_after_blur_ms": 1000,
    "auth_timeout_ms": 1000,
    "rate_limit_close_after_s": 1,
    "max_users_per_document": 3,
    "max_documents": 2,
    "max_frame_bytes": 4096,
    "max_frames_per_s": 200,
    "max_frames_burst": 400,
    "max_bad_frames": 20,
    "bad_frames_window_s": 10,
}

RATE_SETTINGS = {
    "batch_ms": 50,
    "max_frames_per_s": 50,
    "max_frames_burst": 50,
    "rate_limit_close_after_s": 1,
}


def _flags(settings: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for key, value in settings.items():
        out += ["--" + key.replace("_", "-"), str(value)]
    return out


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_get(url: str, headers: dict[str, str] | None = None, timeout: float = 3.0):
    """GET `url` bypassing any proxy; returns (status, headers, body bytes)."""
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with _NO_PROXY.open(req, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


class RelayServer:
    """One `python -m relay serve` subprocess on a free loopback port."""

    def __init__(self, settings: dict[str, Any], extra: Iterable[str] = ()):
        self.settings = dict(settings)
        self.extra = list(extra)
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self._log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - lives as long as the server
            prefix="relay-conformance-", suffix=".log", delete=False
        )

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def http_base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, ready_timeout: float = 20.0) -> RelayServer:
        cmd = [
            sys.executable,
            "-m",
            "relay",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            *_flags(self.settings),
            *self.extra,
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("PRESENCE_")}
        env["PYTHONUNBUFFERED"] = "1"
        self.proc = subprocess.Popen(
            cmd,
            cwd=REPO_ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"relay exited with {self.proc.returncode} before /healthz answered:\n"
                    f"{' '.join(cmd)}\n{self.log_tail()}"
                )
            try:
                status, _, _ = http_get(self.http_base + "/healthz", timeout=0.5)
                if status == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"relay not ready in {ready_timeout}s:\n{self.log_tail()}")

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        return self.proc.returncode

    def sigterm(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)

    def log_tail(self, n: int = 4000) -> str:
        self._log.flush()
        try:
            return Path(self._log.name).read_text(errors="replace")[-n:]
        except OSError:
            return ""


def start_server(settings: dict[str, Any], extra: Iterable[str] = ()) -> RelayServer:
    return RelayServer(settings, extra).start()


@pytest.fixture(scope="session")
def server():
    srv = start_server(MAIN_SETTINGS)
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def jwt_server():
    srv = start_server({"batch_ms": 50, "auth_timeout_ms": 1000}, ["--jwt-secret", JWT_SECRET])
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def rate_server():
    srv = start_server(RATE_SETTINGS)
    yield srv
    srv.stop()


@pytest.fixture
def fresh_server_factory():
    """Function-scoped servers (for tests that kill or exhaust the server)."""
    made: list[RelayServer] = []

    def _start(settings: dict[str, Any], extra: Iterable[str] = ()) -> RelayServer:
        srv = start_server(settings, extra)
        made.append(srv)
        return srv

    yield _start
    for srv in made:
        srv.stop()


_doc_counter = itertools.count(1)


@pytest.fixture
def doc_id() -> str:
    return new_doc_id()


def new_doc_id() -> str:
    return f"conf-{os.getpid()}-{next(_doc_counter)}"


_user_counter = itertools.count(1)


def now_ms() -> int:
    return int(time.time() * 1000)


def events_of(frames: Iterable[list], doc: str | None = None) -> list[list]:
    """All BATCH events in `frames` (optionally only those of `doc`), in order."""
    out: list[list] = []
    for f in frames:
        if f and f[0] == BATCH and (doc is None or f[1] == doc):
            out.extend(f[3])
    return out


class RawClient:
    """A protocol client written from docs/protocol.md: one msgpack array per binary frame."""

    def __init__(self, ws: ClientConnection):
        self.ws = ws
        self.welcome: list | None = None
        self.frames: list[tuple[float, list, bytes]] = []  # (monotonic time, decoded, raw)
        self.events: list[tuple[float, str, list]] = []  # (time, doc_id, event) from BATCHes
        self._ev_pos = 0

    # -- connection -------------------------------------------------------------------------
    @classmethod
    async def open(
        cls, url: str, subprotocols: Iterable[str] | None = (SUBPROTOCOL,), **kw: Any
    ) -> RawClient:
        protos = None if subprotocols is None else [Subprotocol(p) for p in subprotocols]
        options: dict[str, Any] = {
            "compression": None,
            "proxy": None,
            "ping_interval": None,
            "open_timeout": 5,
            "close_timeout": 2,
            "max_size": None,
            # a test client may leave frames unread; never let that stall the close handshake
            "max_queue": 4096,
        }
        options.update(kw)
        ws = await asyncio.wait_for(connect(url, subprotocols=protos, **options), timeout=6)
        return cls(ws)

    async def hello(
        self,
        user_id: str | None = None,
        name: str | None = None,
        token: str | None = None,
        version: int = 1,
        info: dict | None = None,
    ) -> list:
        if info is None:
            n = next(_user_counter)
            info = {
                "sdk": "conformance/0",
                "user_id": user_id or f"u{n}",
                "name": name or f"User {n}",
            }
        await self.send([HELLO, version, token, info])
        frame = await self.recv_until(lambda f: True, timeout=3)
        assert frame[0] == WELCOME, f"expected WELCOME, got {frame!r}"
        self.welcome = frame
        return frame

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(), timeout=3)

    # -- sending ----------------------------------------------------------------------------
    async def send(self, frame: Any) -> None:
        await self.ws.send(msgpack.packb(frame, use_bin_type=True))

    async def send_raw(self, data: bytes | str) -> None:
        await self.ws.send(data)

    # -- receiving --------------------------------------------------------------------------
    def _ingest(self, raw: bytes | str) -> list:
        assert isinstance(raw, bytes), f"server sent a text frame: {raw!r}"
        frame = msgpack.unpackb(raw, raw=False, strict_map_key=False)
        assert isinstance(frame, list) and frame, (
            f"server frame is not a non-empty array: {frame!r}"
        )
        t = time.monotonic()
        self.frames.append((t, frame, raw))
        if frame[0] == BATCH:
            assert len(frame) == 4, f"BATCH must have 4 elements: {frame!r}"
            for ev in frame[3]:
                self.events.append((t, frame[1], ev))
        return frame

    async def recv(self, timeout: float = 2.0) -> list:
        raw = await asyncio.wait_for(self.ws.recv(), timeout)
        return self._ingest(raw)

    async def recv_until(self, pred: Callable[[list], bool], timeout: float = 2.0) -> list:
        """Next frame matching `pred`; other frames are recorded (self.frames) and skipped."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no matching frame within {timeout}s; got {self.recent()}")
            try:
                frame = await self.recv(timeout=left)
            except TimeoutError:
                raise TimeoutError(
                    f"no matching frame within {timeout}s; got {self.recent()}"
                ) from None
            if pred(frame):
                return frame

    async def reply(self, timeout: float = 2.0) -> list:
        """Next frame that is not a BATCH (a direct answer: WELCOME/JOINED/ERROR/PONG)."""
        return await self.recv_until(lambda f: f[0] != BATCH, timeout)

    async def collect(self, duration: float) -> list[list]:
        """Every frame received during `duration` seconds."""
        out: list[list] = []
        deadline = time.monotonic() + duration
        while (left := deadline - time.monotonic()) > 0:
            try:
                out.append(await self.recv(timeout=left))
            except TimeoutError:
                break
        return out

    async def expect_silence(self, duration: float, what: str = "") -> None:
        frames = await self.collect(duration)
        assert not frames, f"expected no frames for {duration}s {what}; got {frames!r}"

    async def wait_event(
        self, pred: Callable[[str, list], bool], timeout: float = 2.0
    ) -> tuple[float, list]:
        """Next BATCH event (after the last one this returned) with pred(doc, event)."""
        deadline = time.monotonic() + timeout
        while True:
            while self._ev_pos < len(self.events):
                t, doc, ev = self.events[self._ev_pos]
                self._ev_pos += 1
                if pred(doc, ev):
                    return t, ev
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(
                    f"no matching event within {timeout}s; events seen: "
                    f"{[e for _, _, e in self.events[-20:]]!r}"
                )
            with contextlib.suppress(TimeoutError):
                await self.recv(timeout=left)

    def skip_events(self) -> None:
        """Forget every event received so far (wait_event starts after them)."""
        self._ev_pos = len(self.events)

    async def drain(self, duration: float = 0.2) -> list[list]:
        frames = await self.collect(duration)
        self.skip_events()
        return frames

    async def expect_close(self, code: int, timeout: float = 3.0) -> list[list]:
        """Read (and return) frames until the server closes; assert the close code."""
        frames: list[list] = []
        deadline = time.monotonic() + timeout
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"connection still open after {timeout}s (expected close {code}); "
                        f"frames: {frames[-10:]!r}"
                    )
                try:
                    raw = await asyncio.wait_for(self.ws.recv(), left)
                except TimeoutError:
                    continue
                frames.append(self._ingest(raw))
        except ConnectionClosed as exc:
            got = exc.rcvd.code if exc.rcvd is not None else None
            assert got == code, (
                f"expected close code {code}, got {got} "
                f"(rcvd={exc.rcvd!r}, sent={exc.sent!r}); frames before: {frames[-10:]!r}"
            )
        return frames

    @property
    def closed(self) -> bool:
        return self.ws.close_code is not None

    def recent(self, n: int = 10) -> list[list]:
        return [f for _, f, _ in self.frames[-n:]]

    # -- protocol helpers -------------------------------------------------------------------
    async def join(self, h: int, doc: str) -> tuple[int, list]:
        await self.send([JOIN, h, doc])
        frame = await self.reply(timeout=3)
        assert frame[0] == JOINED, f"JOIN {doc!r} expected JOINED, got {frame!r}"
        assert frame[1] == h and frame[2] == doc, frame
        return frame[3], frame[4]

    async def expect_error(self, code: int, h: Any = ..., timeout: float = 2.0) -> list:
        frame = await self.reply(timeout=timeout)
        assert frame[0] == ERROR, f"expected ERROR {code}, got {frame!r}"
        assert len(frame) == 4, f"ERROR must be [35, h_or_nil, code, message]: {frame!r}"
        assert frame[2] == code, f"expected ERROR code {code}, got {frame!r}"
        assert isinstance(frame[3], str), f"ERROR message must be a string: {frame!r}"
        if h is not ...:
            assert frame[1] == h, f"ERROR should name handle {h!r}: {frame!r}"
        else:
            assert frame[1] is None or isinstance(frame[1], int), frame
        return frame

    async def ping(self, value: int = 4242, timeout: float = 2.0) -> list:
        """PING -> PONG; proves the connection is still usable."""
        await self.send([PING, value])
        frame = await self.recv_until(lambda f: f[0] in (PONG, ERROR), timeout)
        assert frame[0] == PONG and frame[1] == value, f"expected PONG {value}, got {frame!r}"
        return frame


@pytest.fixture
async def client_factory():
    """`await clients(server, user_id=..., name=..., token=..., hello=True)`."""
    made: list[RawClient] = []

    async def _make(srv: RelayServer, *, hello: bool = True, **kw: Any) -> RawClient:
        subprotocols = kw.pop("subprotocols", (SUBPROTOCOL,))
        c = await RawClient.open(srv.ws_url, subprotocols=subprotocols)
        made.append(c)
        if hello:
            await c.hello(**kw)
        return c

    yield _make
    await asyncio.gather(*(c.close() for c in made), return_exceptions=True)


async def pair_in_doc(clients, srv: RelayServer, doc: str, h_a: int = 1, h_b: int = 1):
    """Two distinct users A and B joined to `doc`; A has already seen B's `joined` event.

    Returns (a, sid_a, b, sid_b) with both event cursors past everything received so far.
    """
    a = await clients(srv)
    b = await clients(srv)
    sid_a, _ = await a.join(h_a, doc)
    sid_b, _ = await b.join(h_b, doc)
    await a.wait_event(lambda d, e: d == doc and e[0] == EV_JOINED and e[1][0] == sid_b, 2)
    a.skip_events()
    b.skip_events()
    return a, sid_a, b, sid_b


COLOR_RE = r"hsl\(\d+(\.\d+)?, 70%, 50%\)"


def check_member(m: Any) -> None:
    """Assert `m` is a MEMBER with the 15 fields of docs/protocol.md (v1.1: the 13 of v1,
    then kind and status), with the listed types."""
    assert isinstance(m, list) and len(m) == 15, f"MEMBER must have 15 fields: {m!r}"
    kind, status = m[13:]
    assert kind in (0, 1), f"MEMBER kind is 0 (person) or 1 (agent): {m!r}"
    assert status is None or (isinstance(status, str) and len(status) <= 64), m
    (
        sid,
        user_id,
        name,
        avatar,
        color,
        activity,
        typing,
        focused,
        cursor,
        selection,
        viewport,
        connected_at_ms,
        last_active_ms,
    ) = m[:13]
    assert isinstance(sid, int) and not isinstance(sid, bool) and sid >= 0, m
    assert isinstance(user_id, str), m
    assert isinstance(name, str), m
    assert avatar is None or isinstance(avatar, str), m
    assert isinstance(color, str) and re.fullmatch(COLOR_RE, color), (
        f"MEMBER color must be a CSS color `hsl(H, 70%, 50%)`: {color!r}"
    )
    assert activity in (EDITING, VIEWING, SELECTING, IDLE, AWAY), m
    assert isinstance(typing, bool), m
    assert isinstance(focused, bool), m
    if cursor is not None:
        assert isinstance(cursor, list) and len(cursor) == 3, m
        assert all(isinstance(x, int) for x in cursor), m
    if selection is not None:
        assert isinstance(selection, list) and len(selection) == 4, m
        assert all(isinstance(x, int) for x in selection[:3]), m
        assert isinstance(selection[3], bool), m
        assert cursor is not None, f"a selection's head is the cursor: {m!r}"
    if viewport is not None:
        assert isinstance(viewport, list) and len(viewport) == 3, m
        assert isinstance(viewport[0], int) and isinstance(viewport[1], int), m
        assert isinstance(viewport[2], int | float) and 0 <= viewport[2] <= 100, m
    for ms in (connected_at_ms, last_active_ms):
        assert isinstance(ms, int) and not isinstance(ms, bool), m
        assert abs(ms - now_ms()) < 24 * 3600 * 1000, f"ms timestamps are epoch ms: {m!r}"
