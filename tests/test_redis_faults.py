"""Redis faults against a real redis-server the test kills (SIGKILL) and restarts (empty)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from helpers import (
    EV_CURSOR,
    EV_JOINED,
    MS,
    RedisServer,
    eventually,
    free_port,
    http_get_json,
    joined,
    users_hash,
    wait_event,
)

from relay.backends.base import FALLBACK_SID_BASE
from relay.backends.redis_pool import RedisShared
from relay.backends.redis_store import RedisStore
from relay.config import PresenceConfig
from relay.core.model import Session, UserInfo

pytestmark = pytest.mark.timeout(60)


class LagMonitor:
    """The largest event-loop stall seen (what a tick would suffer)."""

    def __init__(self) -> None:
        self.max_lag = 0.0
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            t = loop.time()
            await asyncio.sleep(5 * MS)
            self.max_lag = max(self.max_lag, loop.time() - t - 0.005)

    def stop(self) -> None:
        self._task.cancel()


async def test_redis_killed_for_10s_then_back_empty(
    redis_factory: Callable[[], RedisServer],
    relay_factory: Callable[..., Any],
    client_factory: Callable[..., Any],
) -> None:
    server = redis_factory()
    kw = {"redis_url": server.url, "presence_ttl_seconds": 5}
    r1 = await relay_factory(**kw)
    r2 = await relay_factory(**kw)
    for r in (r1, r2):
        await eventually(r.hub.store.ready)
    a1 = await client_factory(r1, "ann")
    a2 = await client_factory(r1, "al")
    b = await client_factory(r2, "bob")
    sid_a1, _ = await joined(a1, 1, "doc-f")
    await joined(a2, 1, "doc-f")
    await joined(b, 1, "doc-f")

    lag = LagMonitor()
    stop = asyncio.Event()

    async def move(c: Any, base: int) -> None:  # light load: 20 Hz per member
        i = 0
        while not stop.is_set():
            i += 1
            await c.send([4, 1, base + i, 0, 0])
            await asyncio.sleep(50 * MS)

    movers = [asyncio.ensure_future(move(a1, 0)), asyncio.ensure_future(move(b, 10_000))]
    await asyncio.sleep(500 * MS)
    server.kill()
    t_down = time.monotonic()
    # During the outage: the document keeps working on each node.
    seen_lines: list[int] = []
    depths: list[int] = []
    # cy reads nothing for 10 s: an unbounded queue keeps its library reading (and
    # answering the relay's keepalive pings), or it would look frozen and be let go.
    c = await client_factory(r1, "cy", max_queue=None)
    sid_c, members = await joined(c, 1, "doc-f")  # joins still answer, with a fallback sid
    assert sid_c >= FALLBACK_SID_BASE and sid_a1 in {m[0] for m in members}
    while time.monotonic() - t_down < 10:
        _, ev = await wait_event(a2, lambda e: e[:2] == [EV_CURSOR, sid_a1], timeout=1000 * MS)
        seen_lines.append(ev[2])
        depths.append(r1.hub.store.queue_depth())
    assert seen_lines == sorted(seen_lines) and len(seen_lines) > 50, "local delivery went on"
    status, body = await http_get_json(r1.port, "/readyz")
    assert status == 503 and "degraded" in body
    status, _ = await http_get_json(r1.port, "/internal/presence/doc-f")
    assert status == 503
    assert max(depths) <= 10, f"the write queue stays bounded (coalesced): {max(depths)}"
    assert lag.max_lag < 0.1, f"event loop stalled {lag.max_lag * 1000:.0f} ms"
    assert sum(r1.hub.stats.tick_duration.counts[-1:]) == 0  # no tick over 100 ms

    # Back, empty (no persistence): within 5 s everything is rebuilt and views agree.
    server.start()
    t_up = time.monotonic()
    rds = aioredis.from_url(server.url)
    try:

        async def rebuilt() -> bool:
            users = await users_hash(rds, "doc-f")
            return {"ann", "al", "bob", "cy"} <= set(users)

        assert await eventually(rebuilt, 5000 * MS)
        # bob (node 2) never heard of cy (joined on node 1 during the outage): now he does.
        await wait_event(
            b,
            lambda e: e[0] == EV_JOINED and e[1][0] == sid_c,
            timeout=5 - (time.monotonic() - t_up),
        )
        # (A node's store can be back before its pub/sub is: its reconcile re-announced cy
        # to bob while its own SUBSCRIBE still waits out the broker's backoff, up to 2 s.)
        for r in (r1, r2):

            async def ready(r: Any = r) -> bool:
                return (await http_get_json(r.port, "/readyz"))[0] == 200

            assert await eventually(ready, 5 - (time.monotonic() - t_up))
        # Pub/sub is back: ann's cursor reaches bob on the other node again.
        line = seen_lines[-1] + 1_000
        stop.set()
        await asyncio.gather(*movers)
        await a1.send([4, 1, line, 1, 1])
        await wait_event(b, lambda e: e == [EV_CURSOR, sid_a1, line, 1, 1], timeout=2000 * MS)
        # A new member on node 2 gets the whole cluster in its snapshot.
        d = await client_factory(r2, "dee")
        _, members = await joined(d, 1, "doc-f")
        assert {sid_a1, sid_c} <= {m[0] for m in members}
        assert time.monotonic() - t_up < 6
        status, body = await http_get_json(r2.port, "/internal/presence/doc-f")
        assert {u["user_id"] for u in body["active_users"]} == {"ann", "al", "bob", "cy", "dee"}
        for x in (a1, a2, b, c, d):  # unread frames would stall the clients' close handshakes
            await x.quiet(50 * MS)
    finally:
        stop.set()
        lag.stop()
        await rds.aclose()


async def test_redis_down_at_start(
    relay_factory: Callable[..., Any],
    client_factory: Callable[..., Any],
) -> None:
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    r = await relay_factory(redis_url=url)  # starts although nothing listens there
    status, body = await http_get_json(r.port, "/readyz")
    assert status == 503 and body.startswith("degraded")
    assert (await http_get_json(r.port, "/healthz"))[0] == 200
    a = await client_factory(r, "ann")
    sid, members = await joined(a, 1, "doc-s")
    assert sid >= FALLBACK_SID_BASE and [m[0] for m in members] == [sid]
    server = RedisServer(port).start()
    try:

        async def ready() -> bool:
            return (await http_get_json(r.port, "/readyz"))[0] == 200

        assert await eventually(ready, 5000 * MS), "retries with backoff (at most 2 s apart)"
        rds = aioredis.from_url(url)
        try:

            async def written() -> bool:
                return "ann" in await users_hash(rds, "doc-s")

            assert await eventually(written, 3000 * MS)
        finally:
            await rds.aclose()
    finally:
        server.kill()


async def test_write_queue_coalesces_and_stays_bounded_while_down() -> None:
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    store = RedisStore(RedisShared(url), PresenceConfig(redis_url=url), "node-q", max_queue=50)
    await store.start()
    server = None
    try:
        sessions = [
            Session(
                sid=i,
                user=UserInfo(f"u{i}", f"U{i}"),
                color="c",
                connected_at_ms=1,
                last_active_ms=1,
            )
            for i in range(1, 201)
        ]
        one = sessions[0]
        store.session_changed("doc", one)
        for t in range(1000):  # the same session changing: one entry
            one.last_active_ms = t
            store.session_changed("doc", one)
        assert store.queue_depth() == 1
        for s in sessions[1:]:
            store.session_changed("doc", s)
        assert store.queue_depth() <= 50, "bounded: past it only a reconcile flag is kept"
        for s in sessions[100:]:
            store.session_left("doc", s)
        server = RedisServer(port).start()
        rds = aioredis.from_url(url)
        try:

            async def consistent() -> bool:
                users = await users_hash(rds, "doc")
                return set(users) == {f"u{i}" for i in range(1, 101)}

            assert await eventually(consistent, 6000 * MS), "the reconcile wrote every live session"
            # Redis may have applied the last pipeline before the store has read its reply
            # (entries count as in flight until then), so the depth is awaited, not sampled.
            assert await eventually(lambda: store.queue_depth() == 0, 2000 * MS)
            assert (await users_hash(rds, "doc"))["u1"]["last_active_at"] == 999
        finally:
            await rds.aclose()
    finally:
        await store.close()
        if server is not None:
            server.kill()
