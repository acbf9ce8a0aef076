"""Three nodes under load while Redis restarts empty: no sid handed out twice in a
document, and no ghost afterwards (a member that left during the outage is gone
everywhere, every node's snapshot is the truth)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable
from typing import Any

import pytest
from helpers import (
    EV_CURSOR,
    EV_JOINED,
    EV_LEFT,
    MS,
    RedisServer,
    RelayProcess,
    eventually,
    joined,
    wait_event,
)

from relay.server.app import Relay

pytestmark = pytest.mark.timeout(90)


async def moving(clients: list[Any], stop: asyncio.Event) -> None:
    """Every client moves its cursor every 20 ms (bounded: at most 30 s of it)."""
    for i in range(1500):
        if stop.is_set():
            return
        for c in clients:
            with contextlib.suppress(Exception):
                await c.send([4, 1, i % 50, i % 7, i])
        await asyncio.sleep(20 * MS)


async def join(c: Any, doc: str) -> int:
    """JOIN with room for the wait a Redis younger than redis_settle_ms imposes."""
    await c.send([2, 1, doc])
    reply = await c.recv_until(lambda f: f[0] in (33, 35), timeout=8000 * MS)
    assert reply[0] == 33, reply
    return int(reply[3])


async def seen_all(c: Any, wanted: list[list[Any]]) -> None:
    """Wait (bounded) until `c` got each of the events `[code, sid]`, in any order."""
    missing = [tuple(w) for w in wanted]

    def about(e: list[Any]) -> Any:
        return (e[0], e[1][0] if e[0] == EV_JOINED else e[1])

    while missing:
        _, e = await wait_event(c, lambda e: about(e) in missing, 5000 * MS)
        missing.remove(about(e))


async def test_three_nodes_keep_sids_unique_and_no_ghost_across_an_empty_redis_restart(
    redis_factory: Callable[[], RedisServer],
    relay_factory: Callable[..., Any],
    client_factory: Callable[..., Any],
) -> None:
    server = redis_factory()
    nodes: list[Relay] = []
    # Node 1 heartbeats least often (a longer TTL): it is the last to notice the restart.
    for ttl in (30, 5, 5):
        r = await relay_factory(
            redis_url=server.url, presence_ttl_seconds=ttl, redis_settle_ms=3000
        )
        assert await eventually(r.hub.store.ready, 5000 * MS)
        nodes.append(r)
    n1, n2, n3 = nodes
    # d1 on nodes 1 and 2, d2 on nodes 1 and 3: each document has a node without it.
    ann, bob = await client_factory(n1, "ann"), await client_factory(n2, "bob")
    cy, dee = await client_factory(n1, "cy"), await client_factory(n3, "dee")
    truth: dict[str, dict[int, str]] = {"d1": {}, "d2": {}}
    placed = ((ann, "ann", "d1"), (bob, "bob", "d1"), (cy, "cy", "d2"), (dee, "dee", "d2"))
    for c, user, doc in placed:
        truth[doc][await join(c, doc)] = user
    stop = asyncio.Event()
    load = asyncio.get_running_loop().create_task(moving([ann, bob, cy, dee], stop))
    try:
        await asyncio.sleep(300 * MS)
        server.kill()  # everything in it is lost
        await bob.send([3, 1])  # bob leaves while Redis is away
        await asyncio.sleep(500 * MS)
        server.start()  # empty, on the same port
        # Joins as soon as a node that does not have the document open can reach Redis:
        # the document's counter starts again from nothing there.
        eve, fay = await client_factory(n3, "eve"), await client_factory(n2, "fay")
        assert await eventually(lambda: n3.hub.store.reach.up and n2.hub.store.reach.up)
        t0 = asyncio.get_running_loop().time()
        sid_e, sid_f = await asyncio.gather(join(eve, "d1"), join(fay, "d2"))
        waited = asyncio.get_running_loop().time() - t0
        assert sid_e not in truth["d1"], f"sid {sid_e} handed out twice in d1: {truth}"
        assert sid_f not in truth["d2"], f"sid {sid_f} handed out twice in d2: {truth}"
        sid_b = next(s for s, u in truth["d1"].items() if u == "bob")
        del truth["d1"][sid_b]
        truth["d1"][sid_e] = "eve"
        truth["d2"][sid_f] = "fay"
        assert n3.hub.store.sid_waits + n2.hub.store.sid_waits >= 1  # type: ignore[attr-defined]
        print(f"joins right after the restart waited {waited:.2f} s")
        await asyncio.sleep(1000 * MS)  # the load goes on after the restart
    finally:
        stop.set()
        await load

    # The members who stayed see the newcomers, and bob's leave.
    await seen_all(ann, [[EV_LEFT, sid_b], [EV_JOINED, sid_e]])
    await seen_all(dee, [[EV_JOINED, sid_f]])

    # Every node's snapshot of each document is the truth (bounded: the resyncs converge).
    async def views_agree() -> Any:
        for r in nodes:
            for doc, want in truth.items():
                probe = await client_factory(r, f"probe-{doc}")
                _, members = await joined(probe, 1, doc)
                got = {m[0]: m[1] for m in members if not m[1].startswith("probe")}
                await probe.send([3, 1])
                if got != want:
                    return None
        return True

    assert await eventually(views_agree, 10_000 * MS), truth


async def test_a_sid_that_left_during_the_outage_is_not_handed_out_again(
    redis_factory: Callable[[], RedisServer],
    relay_factory: Callable[..., Any],
    client_factory: Callable[..., Any],
) -> None:
    """The protocol: a sid is never reused while the document has members. bob (sid 2)
    leaves while Redis is away and his node closes the document; ann stays. Once Redis
    is back empty, only ann's node holds the document, and it has to raise the counter
    past every sid it has seen there (bob's too), not only past its live ones."""
    server = redis_factory()
    n1, n2 = [await relay_factory(redis_url=server.url, redis_settle_ms=1000) for _ in range(2)]
    for r in (n1, n2):
        assert await eventually(r.hub.store.ready, 5000 * MS)
    ann, bob = await client_factory(n1, "ann"), await client_factory(n2, "bob")
    sid_a, sid_b = await join(ann, "d1"), await join(bob, "d1")
    await seen_all(ann, [[EV_JOINED, sid_b]])
    server.kill()
    await bob.send([3, 1])  # bob leaves while Redis is away: node 2 closes d1
    assert await eventually(lambda: n2.hub.registry.get("d1") is None, 2000 * MS)
    await asyncio.sleep(300 * MS)
    server.start()  # empty
    await seen_all(ann, [[EV_LEFT, sid_b]])  # node 2 says it once Redis is back
    # Past the settle time: a join is not held back any more, and counts on the counter.
    await asyncio.sleep(1200 * MS)
    fay = await client_factory(n2, "fay")
    sid_f = await join(fay, "d1")
    assert sid_f not in (sid_a, sid_b), f"fay got sid {sid_f}: ann {sid_a}, bob {sid_b}"


async def ann_and_bob(
    n1: Relay, n2: RelayProcess, client_factory: Callable[..., Any]
) -> tuple[Any, Any, int]:
    """ann on node 1 and bob on node 2 (a process) in d1, bob mirrored on node 1 for
    longer than a resync spares a member mirrored lately (3 s): (ann, bob, bob's sid)."""
    await n2.ready()
    ann, bob = await client_factory(n1, "ann"), await client_factory(n2, "bob")
    await join(ann, "d1")
    sid_b = await join(bob, "d1")
    await seen_all(ann, [[EV_JOINED, sid_b]])
    await asyncio.sleep(3200 * MS)
    return ann, bob, sid_b


async def test_a_node_slow_to_come_back_keeps_its_members_on_the_others(
    redis_factory: Callable[[], RedisServer],
    relay_factory: Callable[..., Any],
    client_factory: Callable[..., Any],
) -> None:
    """After an empty restart the node that reconnects first re-reads its documents while
    another node has not rewritten its members yet: bob's record is missing, but bob is
    there. A resync removes nobody while Redis is younger than `redis_settle_ms`, so ann
    never sees bob leave and come back. (Node 2 is a process held with SIGSTOP for part
    of that time; it stays in the document throughout.)"""
    server = redis_factory()
    # (Node 2 is held for 2 s of the 5 s Redis gives the nodes to come back: room for it
    # to rewrite bob on a loaded machine.)
    n1 = await relay_factory(redis_url=server.url, redis_settle_ms=5000)
    n2 = RelayProcess("--redis-url", server.url, "--redis-settle-ms", "5000", "--batch-ms", "20")
    try:
        ann, bob, sid_b = await ann_and_bob(n1, n2, client_factory)
        server.kill()
        await asyncio.sleep(300 * MS)
        n2.proc.send_signal(signal.SIGSTOP)
        try:
            server.start()  # empty: node 1 reconnects, re-announces, re-reads d1
            await asyncio.sleep(2000 * MS)  # past node 1's 0.5 s and 2 s re-reads
        finally:
            n2.proc.send_signal(signal.SIGCONT)
        # (Past node 1's re-reads: 4 s after its reconnect, and 5.5 s, the first it may
        # remove in.)
        with pytest.raises(TimeoutError):
            await wait_event(ann, lambda e: e[0] == EV_LEFT and e[1] == sid_b, 6000 * MS)
        await bob.send([4, 1, 7, 7, 77])  # and bob's moves reach ann again
        await wait_event(ann, lambda e: e[0] == EV_CURSOR and e[1] == sid_b, 5000 * MS)
    finally:
        n2.kill()


async def test_a_node_that_died_in_the_outage_loses_its_members_once_redis_settles(
    redis_factory: Callable[[], RedisServer],
    relay_factory: Callable[..., Any],
    client_factory: Callable[..., Any],
) -> None:
    """The other side of the rule above: node 2 is killed while Redis is away, and Redis
    comes back empty, so nothing says bob is gone but his missing record. The resyncs
    before `redis_settle_ms` (5 s here) spare him; one right after it removes him, not
    the anti-entropy pass `presence_ttl_seconds` (60 s) later."""
    server = redis_factory()
    n1 = await relay_factory(redis_url=server.url, redis_settle_ms=5000, presence_ttl_seconds=60)
    n2 = RelayProcess("--redis-url", server.url, "--batch-ms", "20")
    try:
        ann, _, sid_b = await ann_and_bob(n1, n2, client_factory)
        server.kill()
        n2.kill()
        await asyncio.sleep(300 * MS)
        server.start()  # empty
        t0 = asyncio.get_running_loop().time()
        await wait_event(ann, lambda e: e[0] == EV_LEFT and e[1] == sid_b, 9000 * MS)
        waited = asyncio.get_running_loop().time() - t0
        assert waited > 4.0, f"bob removed {waited:.1f} s after the restart, before it settled"
    finally:
        n2.kill()
