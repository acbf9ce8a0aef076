"""Shared fixtures: an in-process relay on a free loopback port, and a raw protocol client."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgpack
import pytest
from redis_fixture import redis_factory, redis_server, redis_url  # noqa: F401 (fixtures)
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


class RawClient:
    """A protocol client with no SDK in the way: lists in, lists out."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws

    async def send(self, frame: list[Any]) -> None:
        await self.ws.send(msgpack.packb(frame))

    async def recv(self, timeout: float = 2.0) -> list[Any]:
        data = await asyncio.wait_for(self.ws.recv(), timeout)
        return msgpack.unpackb(data)  # type: ignore[no-any-return]

    async def recv_until(
        self, pred: Callable[[list[Any]], bool], timeout: float = 3.0
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
    ) -> list[Any]:
        info = (
            {"sdk": "test/0"}
            if token
            else {"sdk": "test/0", "user_id": user_id, "name": name or user_id}
        )
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
            await asyncio.wait_for(ws.close(), 2)
