"""Helpers shared by the tests/test_redis_*.py files."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
from conftest import RawClient

BATCH = 34
JOINED = 33
EV_CURSOR, EV_JOINED, EV_LEFT = 1, 2, 3


async def wait_event(
    c: RawClient,
    pred: Callable[[list[Any]], bool],
    timeout: float = 3.0,
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


async def eventually(
    check: Callable[[], Awaitable[Any]], timeout: float = 5.0, interval: float = 0.05
) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = await check()
        if result or loop.time() > deadline:
            return result
        await asyncio.sleep(interval)


async def users_hash(r: aioredis.Redis, doc: str) -> dict[str, dict[str, Any]]:
    raw = await r.hgetall(f"presence:{doc}:users")
    return {k.decode(): json.loads(v) for k, v in raw.items()}


async def joined(c: RawClient, h: int, doc: str) -> tuple[int, list[Any]]:
    reply = await c.join(h, doc)
    assert reply[0] == JOINED, reply
    return reply[3], reply[4]
