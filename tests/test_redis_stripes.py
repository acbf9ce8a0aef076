"""Fallback-sid stripes (relay/backends/redis_stripes.py): a sid a node hands out while
Redis is unreachable is in a stripe no other live node holds, so two nodes never hand out
the same fallback sid in a document, even when their ids hash to the same stripe."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from helpers import MS, RedisServer, eventually, ids_sharing_a_stripe

from relay.backends import redis_keys
from relay.backends.base import (
    FALLBACK_ROUNDS,
    FALLBACK_SID_BASE,
    FALLBACK_STRIPES,
    fallback_sid,
)
from relay.backends.redis_stripes import STRIPES, STRIPES_KEY

pytestmark = pytest.mark.timeout(60)


async def join(c: Any, doc: str) -> int:
    await c.send([2, 1, doc])
    reply = await c.recv_until(lambda f: f[0] in (33, 35), timeout=8000 * MS)
    assert reply[0] == 33, reply
    return int(reply[3])


def stripe_of(r: Any) -> int:
    return int(r.hub.store.fallback_stripe())


async def test_nodes_whose_ids_share_a_stripe_hand_out_different_fallback_sids(
    redis_factory: Callable[[], RedisServer],
    relay_factory: Callable[..., Any],
    client_factory: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = redis_factory()
    ids = iter(ids_sharing_a_stripe(2))
    monkeypatch.setattr(redis_keys, "new_node_id", lambda: next(ids))
    n1 = await relay_factory(redis_url=server.url)
    n2 = await relay_factory(redis_url=server.url)
    assert stripe_of(n1) != stripe_of(n2)
    server.kill()  # the joins below get fallback sids
    assert await eventually(lambda: not n1.hub.store.reach.up and not n2.hub.store.reach.up)
    ann, bob = await client_factory(n1, "ann"), await client_factory(n2, "bob")
    sid_a, sid_b = await join(ann, "d1"), await join(bob, "d1")
    assert sid_a >= FALLBACK_SID_BASE and sid_b >= FALLBACK_SID_BASE
    assert sid_a != sid_b, f"both nodes handed out {sid_a}"
    assert (sid_a % STRIPES, sid_b % STRIPES) == (stripe_of(n1), stripe_of(n2))


@pytest.mark.timeout(10)
def test_stripes_interleave_and_every_fallback_sid_fits_in_32_bits() -> None:
    """Each stripe has room for every sid its node hands out (no wrap into another's), the
    first 4096 of each stay below 2^25, and the largest is below 2^32 (SDKs read uint32)."""
    assert STRIPES == FALLBACK_STRIPES == 4096
    for stripe in (0, 1, 17, STRIPES - 1):
        sids = [fallback_sid(stripe, n) for n in (0, 1, 4095, 4096, FALLBACK_ROUNDS - 1)]
        assert all(s % STRIPES == stripe and s >= FALLBACK_SID_BASE for s in sids)
        assert len(set(sids)) == len(sids)
        assert fallback_sid(stripe, 4095) < 1 << 25
        assert fallback_sid(stripe, FALLBACK_ROUNDS) == fallback_sid(stripe, 0)  # wraps
    assert fallback_sid(STRIPES - 1, FALLBACK_ROUNDS - 1) < 1 << 32


async def test_each_node_keeps_its_own_stripe_across_an_empty_redis_restart(
    redis_factory: Callable[[], RedisServer],
    relay_factory: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = redis_factory()
    ids = iter(ids_sharing_a_stripe(3))
    monkeypatch.setattr(redis_keys, "new_node_id", lambda: next(ids))
    nodes = [await relay_factory(redis_url=server.url) for _ in range(3)]
    stripes = {r.hub.store.node_id: stripe_of(r) for r in nodes}  # type: ignore[attr-defined]
    assert len(set(stripes.values())) == 3

    async def claims() -> dict[str, int]:
        r = aioredis.Redis(port=server.port, decode_responses=True)
        try:
            raw = await r.hgetall(STRIPES_KEY)
        finally:
            await r.aclose()
        return {v.split(":", 1)[1]: int(s) for s, v in raw.items()}

    assert await claims() == stripes
    server.kill()
    await asyncio.sleep(300 * MS)
    server.start()  # empty: each node claims its stripe again as soon as it is back

    async def reclaimed() -> bool:
        return await claims() == stripes

    assert await eventually(reclaimed, 8000 * MS)
    assert {r.hub.store.node_id: stripe_of(r) for r in nodes} == stripes  # type: ignore[attr-defined]


async def test_with_every_stripe_held_a_node_uses_its_own_until_one_is_free(
    redis_factory: Callable[[], RedisServer],
    relay_factory: Callable[..., Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """4096 stripes, all held by live nodes: the 4097th uses its id's stripe (and says
    so); a claim that expired is free again."""
    server = redis_factory()
    r = aioredis.Redis(port=server.port, decode_responses=True)
    later = int(time.time() * 1000) + 600_000
    await r.hset(STRIPES_KEY, mapping={str(s): f"{later}:other-{s}" for s in range(STRIPES)})
    caplog.set_level(logging.WARNING, "relay.redis.stripes")
    node = await relay_factory(redis_url=server.url)
    stripes = node.hub.store.stripes  # type: ignore[attr-defined]
    assert stripes.held is None and stripes.full >= 1
    assert stripe_of(node) == stripes.preferred
    assert any(f"all {STRIPES} fallback-sid stripes" in m for m in caplog.messages)
    # One claim runs out (its node died a while ago): the next renewal takes it.
    await r.hset(STRIPES_KEY, "17", f"{int(time.time() * 1000) - 1}:other-17")
    await stripes.claim()
    assert stripes.held == 17 and stripe_of(node) == 17
    assert (await r.hget(STRIPES_KEY, "17") or "").endswith(":" + node.hub.store.node_id)  # type: ignore[attr-defined]
    await r.aclose()
