"""An idle member costs Redis nothing: its record is written when its presence changes, not
every sweep (with 5000 idle members the relay spent 80 % of a core rewriting them)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from helpers import MS, eventually, joined

pytestmark = pytest.mark.timeout(30)


async def hset_calls(r: aioredis.Redis) -> int:
    stats = await r.info("commandstats")
    return int(stats.get("cmdstat_hset", {}).get("calls", 0))


async def test_an_unchanged_session_is_not_rewritten(
    relay_factory: Callable[..., Any], client_factory: Callable[..., Any], redis_url: str
) -> None:
    relay = await relay_factory(redis_url=redis_url)
    assert await eventually(relay.hub.store.ready, 5000 * MS)
    ann = await client_factory(relay, "ann")
    await joined(ann, 1, "doc")
    await ann.send([4, 1, 1, 2, 3])
    rds = aioredis.from_url(redis_url)
    try:

        async def written() -> bool:
            raw = await rds.hget("presence:doc:users", "ann")
            return raw is not None and b'"line":1' in raw

        assert await eventually(written, 4000 * MS)
        await asyncio.sleep(1500 * MS)  # the sweep after the move has run
        before = await hset_calls(rds)
        await asyncio.sleep(2500 * MS)  # two more sweeps (refresh every second)
        assert await hset_calls(rds) == before, "an unchanged session was written again"
        # A change is written at the next sweep.
        await ann.send([4, 1, 5, 6, 7])

        async def moved() -> bool:
            raw = await rds.hget("presence:doc:users", "ann")
            return raw is not None and b'"line":5' in raw

        assert await eventually(moved, 4000 * MS)
    finally:
        await rds.aclose()
