"""Staggered flushing (`flush_groups`): documents flush in groups that take turns, each group
(so each document) once per `batch_ms`. The ticker is stopped and `Hub.tick` driven by hand,
so which documents a tick flushes is checked exactly, with real members on real sockets."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest
from helpers import MS

from relay.backends.memory import MemoryBroker, MemoryStore
from relay.config import PresenceConfig
from relay.server.app import Relay

pytestmark = pytest.mark.timeout(30)


async def stop_ticker(r: Relay) -> None:
    task = r._ticker
    assert task is not None
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def documents_with_members(r: Relay, client_factory: Any, n: int) -> list[tuple[Any, Any]]:
    """n documents, each with a watcher and a mover; JOIN batches already flushed."""
    pairs = []
    for i in range(n):
        watcher = await client_factory(r, f"w{i}")
        mover = await client_factory(r, f"m{i}")
        await watcher.join(1, f"doc-{i}")
        await mover.join(1, f"doc-{i}")
        pairs.append((watcher, mover))
    for _ in r.hub.groups:  # one full turn: every group flushes its joins
        r.hub.tick(r.hub.clock())
    for watcher, mover in pairs:
        await watcher.quiet(50 * MS)
        await mover.quiet(50 * MS)
    return pairs


async def move_all(r: Relay, pairs: list[tuple[Any, Any]], col: int) -> None:
    before = r.hub.stats.hot[4]
    for _, mover in pairs:
        await mover.send([4, 1, 1, col, col])
    for _ in range(200):  # bounded wait until the relay applied every move
        if r.hub.stats.hot[4] - before == len(pairs):
            return
        await asyncio.sleep(10 * MS)
    raise AssertionError("moves not applied")


async def batches_seen(pairs: list[tuple[Any, Any]]) -> list[int]:
    """Which documents' watchers got a BATCH (each pair's index), after a short wait."""
    seen = []
    for i, (watcher, _) in enumerate(pairs):
        if [f for f in await watcher.quiet(100 * MS) if f[0] == 34]:
            seen.append(i)
    return seen


async def test_groups_take_turns(relay_factory: Any, client_factory: Any) -> None:
    r = await relay_factory(batch_ms=1000, flush_groups=3)
    await stop_ticker(r)
    pairs = await documents_with_members(r, client_factory, 6)
    hub = r.hub
    group_of = {doc.doc_id: g for doc, g in hub.registry.group_of.items()}
    assert sorted(group_of.values()) == [0, 0, 1, 1, 2, 2]  # balanced: fewest first
    await move_all(r, pairs, 5)
    turns = []
    for _ in range(3):
        g = hub.ticker.next_group
        hub.tick(hub.clock())
        seen = await batches_seen(pairs)
        assert seen == [i for i in range(6) if group_of[f"doc-{i}"] == g]
        turns.extend(seen)
    assert sorted(turns) == list(range(6))  # each document exactly once per full turn
    hub.tick(hub.clock())  # nothing new: nothing sent
    assert await batches_seen(pairs) == []


async def test_one_group_flushes_everything_at_once(
    relay_factory: Any, client_factory: Any
) -> None:
    r = await relay_factory(batch_ms=1000, flush_groups=1)
    await stop_ticker(r)
    pairs = await documents_with_members(r, client_factory, 4)
    await move_all(r, pairs, 9)
    r.hub.tick(r.hub.clock())
    assert await batches_seen(pairs) == [0, 1, 2, 3]


async def test_group_sizes_follow_documents(relay_factory: Any, client_factory: Any) -> None:
    """A document that empties leaves its group; the next one fills the emptiest group."""
    r = await relay_factory(batch_ms=1000, flush_groups=2)
    await stop_ticker(r)
    pairs = await documents_with_members(r, client_factory, 3)
    hub = r.hub
    assert hub.registry.group_sizes == [2, 1]  # doc-0 and doc-2 in group 0, doc-1 in group 1
    gone = hub.documents["doc-0"]
    assert hub.registry.group_of[gone] == 0
    for c in pairs[0]:
        await c.send([3, 1])  # both members leave doc-0
    for _ in range(200):
        if gone.empty:
            break
        await asyncio.sleep(10 * MS)
    for _ in hub.groups:
        hub.tick(hub.clock())
    assert "doc-0" not in hub.documents and gone not in hub.registry.group_of
    assert hub.registry.group_sizes == [1, 1]
    late = await client_factory(r, "late")
    await late.join(1, "doc-new")
    assert hub.registry.group_of[hub.documents["doc-new"]] == 0
    assert hub.registry.group_sizes == [2, 1]


async def test_flush_all_flushes_every_group(relay_factory: Any, client_factory: Any) -> None:
    """What a shutdown uses: one call, every group's pending events (here, a `left` in each
    of five documents in five groups) go out at once."""
    r = await relay_factory(batch_ms=1000, flush_groups=5)
    await stop_ticker(r)
    pairs = await documents_with_members(r, client_factory, 5)
    assert sorted(r.hub.registry.group_of.values()) == [0, 1, 2, 3, 4]
    for _, mover in pairs:
        await mover.send([3, 1])  # LEAVE
    for _ in range(200):
        if all(len(d.sessions) == 1 for d in r.hub.documents.values()):
            break
        await asyncio.sleep(10 * MS)
    r.hub.flush_all(r.hub.clock())
    for watcher, _ in pairs:
        batches = [f for f in await watcher.quiet(100 * MS) if f[0] == 34]
        assert len(batches) == 1 and batches[0][3][0][0] == 3  # the mover's `left`


class FaultyBroker(MemoryBroker):
    """A broker whose publish raises for one document (a backend bug, say): the failure
    the hub must keep inside that document."""

    def __init__(self, bad_doc: str) -> None:
        super().__init__()
        self.bad_doc = bad_doc

    def publish(self, doc_id: str, frame: bytes) -> None:
        if doc_id == self.bad_doc:
            raise RuntimeError("publish failed")
        super().publish(doc_id, frame)


async def test_a_failing_document_does_not_silence_the_others(client_factory: Any) -> None:
    """Before: the exception left the tick, and every document after the failing one in
    that tick was neither flushed nor dropped, and never flushed again."""
    r = Relay(
        PresenceConfig(port=0, batch_ms=20, flush_groups=1),
        backends=(MemoryStore(), FaultyBroker("doc-bad")),
    )
    await r.start()
    try:
        await stop_ticker(r)
        pairs = await documents_with_members(r, client_factory, 10)
        bad_w, bad_m = await client_factory(r, "bw"), await client_factory(r, "bm")
        await bad_w.join(1, "doc-bad")
        await bad_m.join(1, "doc-bad")
        for turn in range(5):
            for _, mover in [*pairs, (bad_w, bad_m)]:
                await mover.send([4, 1, turn, 0, turn])
            await asyncio.sleep(50 * MS)  # the frames are in
            r.hub.tick(r.hub.clock())
            for i, (watcher, _) in enumerate(pairs):
                got = await watcher.recv_until(lambda f: f[0] == 34, timeout=1000 * MS)
                assert [1, 2, turn, 0, turn] in got[3], f"doc-{i} silent at turn {turn}"
            # the failing document's own members still got their batch (fan-out came first)
            got = await bad_w.recv_until(
                lambda f: f[0] == 34 and f[1] == "doc-bad", timeout=1000 * MS
            )
            assert any(e[0] == 1 for e in got[3])
        assert r.hub.stats.flush_failures >= 5
        # ...and an emptied document is dropped, failure or not
        await bad_m.ws.close()
        await bad_w.ws.close()
        await asyncio.sleep(100 * MS)
        r.hub.tick(r.hub.clock())
        assert "doc-bad" not in r.hub.documents
    finally:
        await r.stop()
