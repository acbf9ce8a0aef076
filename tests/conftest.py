"""Fixtures: in-process relays on free loopback ports, clients, real redis-servers. (The
helpers they use, and every other shared piece of test code, are in tests/helpers.py.)"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from browser import ROOT, run_chromium, serve_directory
from helpers import MS, REDIS_BIN, RawClient, RedisServer
from redis_cluster_server import RedisClusterServer, require_binaries
from websockets.asyncio.client import ClientConnection, connect

from relay.config import PresenceConfig
from relay.server.app import Relay

SUBPROTOCOLS = ["presence.v1"]


def pytest_asyncio_loop_factories(config: Any, item: Any) -> dict[str, Callable[[], Any]]:
    """Async tests run on uvloop (as the relay does) or, with RELAY_TEST_LOOP=asyncio, on the
    stock loop; `make test` runs the suite once each way."""
    if os.environ.get("RELAY_TEST_LOOP", "uvloop") == "asyncio":
        return {"asyncio": asyncio.new_event_loop}
    import uvloop

    return {"uvloop": uvloop.new_event_loop}


@pytest.fixture
async def relay_factory() -> AsyncIterator[Callable[..., Any]]:
    """Start in-process relays with setting overrides; all stopped at teardown."""
    started: list[Relay] = []

    async def start(**overrides: Any) -> Relay:
        overrides.setdefault("port", 0)
        overrides.setdefault("batch_ms", 20)
        r = Relay(PresenceConfig(**overrides))
        await r.start()
        started.append(r)
        return r

    yield start
    for r in started:
        await r.stop()


@pytest.fixture
async def relay(relay_factory: Callable[..., Any]) -> Relay:
    return await relay_factory()  # type: ignore[no-any-return]


@pytest.fixture
async def client_factory() -> AsyncIterator[Callable[..., Any]]:
    opened: list[ClientConnection] = []

    async def open_client(r: Relay, user_id: str | None = None, **kw: Any) -> RawClient:
        kw.setdefault("subprotocols", SUBPROTOCOLS)
        kw.setdefault("compression", None)
        ws = await connect(f"ws://127.0.0.1:{r.port}/ws", **kw)
        opened.append(ws)
        c = RawClient(ws)
        if user_id is not None:
            welcome = await c.hello(user_id)
            assert welcome[0] == 32, welcome
        return c

    yield open_client
    for ws in opened:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(ws.close(), 2000 * MS)


# ---------------------------------------------------------------- redis-server


def _require_binary() -> None:
    if not os.path.exists(REDIS_BIN):
        pytest.skip("redis-server is not installed (make redis-server installs it)")


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    _require_binary()
    server = RedisServer().start()
    yield server
    server.kill()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The shared server, emptied (and started again if a test killed it)."""
    if not redis_server.running:
        redis_server.start()
    with socket.create_connection(("127.0.0.1", redis_server.port), timeout=2000 * MS) as s:
        s.sendall(b"FLUSHALL\r\n")
        assert s.recv(16).startswith(b"+OK")
    return redis_server.url


@pytest.fixture
def redis_factory() -> Iterator[Callable[[], RedisServer]]:
    _require_binary()
    servers: list[RedisServer] = []

    def make() -> RedisServer:
        server = RedisServer().start()
        servers.append(server)
        return server

    yield make
    for s in servers:
        s.kill()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisClusterServer]:
    """A three-master Redis Cluster for the session (tests/redis_cluster_server.py)."""
    require_binaries()
    cluster = RedisClusterServer().start()
    yield cluster
    cluster.kill()


@pytest.fixture
def redis_cluster_url(redis_cluster: RedisClusterServer) -> str:
    """The shared cluster, every master emptied (nodes a test killed started again)."""
    redis_cluster.ensure_running()
    redis_cluster.flushall()
    return redis_cluster.url


@pytest.fixture(scope="module")
def static_site() -> Iterator[str]:
    """The repository over HTTP on loopback (test pages, the SDK modules, the vectors)."""
    with serve_directory(ROOT) as url:
        yield url


@pytest.fixture(scope="module")
def chromium() -> Iterator[str]:
    """A headless Chromium (one per test module); yields its DevTools HTTP endpoint."""
    with run_chromium() as endpoint:
        yield endpoint
