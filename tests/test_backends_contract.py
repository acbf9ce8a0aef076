"""One contract for every backend implementation.

Each fixture below yields a factory for one implementation; the Redis implementations
join the `params` lists when they exist, and every test here runs against each.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from helpers import MS, eventually

from relay.backends.base import Broker, PresenceStore
from relay.backends.memory import MemoryBroker, MemoryBus, MemoryStore
from relay.core.model import ActivityType, Session, UserInfo


def session(sid: int, user_id: str, ws: str = "w1", last_active: int = 1000) -> Session:
    return Session(
        sid=sid,
        user=UserInfo(user_id, user_id.title(), ws),
        color="hsl(0, 70%, 50%)",
        connected_at_ms=1000,
        last_active_ms=last_active,
    )


async def _until_ready(*backends: PresenceStore | Broker) -> None:
    async with asyncio.timeout(5000 * MS):
        for b in backends:
            while not await b.ready():
                await asyncio.sleep(10 * MS)


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[PresenceStore]:
    if request.param == "redis":
        from relay.backends.redis_pool import RedisShared
        from relay.backends.redis_store import RedisStore
        from relay.config import PresenceConfig

        url = request.getfixturevalue("redis_url")
        s: PresenceStore = RedisStore(RedisShared(url), PresenceConfig(redis_url=url), "node-s")
    else:
        s = MemoryStore()
    await s.start()
    await _until_ready(s)
    yield s
    await s.close()


@pytest.fixture(params=["memory", "redis"])
async def broker_pair(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Broker, Broker]]:
    a: Broker
    b: Broker
    if request.param == "redis":
        from relay.backends.redis_broker import RedisBroker
        from relay.backends.redis_pool import RedisShared

        url = request.getfixturevalue("redis_url")
        # Two pools, as two processes would have.
        a, b = RedisBroker(RedisShared(url), "node-a"), RedisBroker(RedisShared(url), "node-b")
    else:
        bus = MemoryBus()
        a, b = MemoryBroker(bus, "node-a"), MemoryBroker(bus, "node-b")
    for x in (a, b):
        await x.start()
    await _until_ready(a, b)
    yield a, b
    for x in (a, b):
        await x.close()


async def test_store_lists_distinct_users_with_latest_activity(store: PresenceStore) -> None:
    tab1, tab2 = session(1, "ann", last_active=1000), session(2, "ann", last_active=5000)
    tab2.activity = ActivityType.EDITING
    store.session_changed("doc", tab1)
    store.session_changed("doc", tab2)
    store.session_changed("doc", session(3, "bob"))

    async def users() -> Any:
        got = await store.document_users("doc")
        return got if len(got) == 2 else None

    got = {u.user_id: u for u in await eventually(users)}
    assert got["ann"].last_active_at == 5000 and got["ann"].activity == "Editing"
    assert got["bob"].name == "Bob"


async def test_store_forgets_left_sessions_and_empty_documents(store: PresenceStore) -> None:
    a, b = session(1, "ann"), session(2, "bob", ws="w2")
    store.session_changed("doc", a)
    store.session_changed("doc", b)
    store.session_left("doc", a)

    async def only_bob() -> Any:
        return [u.user_id for u in await store.document_users("doc")] == ["bob"]

    assert await eventually(only_bob)
    assert await store.workspace_documents("w2") == {"doc": 1}
    assert await store.workspace_documents("w1") == {}
    store.session_left("doc", b)

    async def gone() -> Any:
        return await store.document_users("doc") == [] and not await store.workspace_documents("w2")

    assert await eventually(gone)
    store.session_left("never-seen", a)  # idempotent, no error


async def test_store_workspace_documents_counts_users(store: PresenceStore) -> None:
    store.session_changed("d1", session(1, "ann"))
    store.session_changed("d1", session(2, "ann"))
    store.session_changed("d1", session(3, "bob"))
    store.session_changed("d2", session(1, "cy"))
    store.session_changed("d3", session(1, "dee", ws="other"))

    async def both() -> Any:
        got = await store.workspace_documents("w1")
        return got if len(got) == 2 else None

    assert await eventually(both) == {"d1": 2, "d2": 1}
    assert await store.ready()


async def test_store_workspace_counts_only_that_workspaces_users(store: PresenceStore) -> None:
    """A document with members of two workspaces (tokens grant documents, not workspaces):
    each workspace counts its own users only (before, memory counted everyone)."""
    store.session_changed("shared", session(1, "ann", ws="w1"))
    store.session_changed("shared", session(2, "bob", ws="w2"))
    store.session_changed("shared", session(3, "cy", ws="w2"))
    store.session_changed("w2-only", session(1, "dee", ws="w2"))

    async def w2() -> Any:
        got = await store.workspace_documents("w2")
        return got if len(got) == 2 else None

    assert await eventually(w2) == {"shared": 2, "w2-only": 1}
    assert await store.workspace_documents("w1") == {"shared": 1}
    assert await store.workspace_documents("w3") == {}


async def test_broker_delivers_to_other_nodes_not_self(broker_pair: tuple[Broker, Broker]) -> None:
    a, b = broker_pair
    got_a: list[tuple[str, bytes]] = []
    got_b: list[tuple[str, bytes]] = []
    a.set_callback(lambda d, f, _origin: got_a.append((d, f)))
    b.set_callback(lambda d, f, _origin: got_b.append((d, f)))
    a.subscribe("doc")
    b.subscribe("doc")
    b.subscribe("doc")  # idempotent
    await b.ensure_subscribed("doc")  # subscribing over a network completes later
    a.publish("doc", b"\x94frame")

    async def arrived() -> Any:
        return got_b

    assert await eventually(arrived) == [("doc", b"\x94frame")]
    await asyncio.sleep(50 * MS)
    assert got_a == []  # a node ignores its own messages
    assert got_b == [("doc", b"\x94frame")]  # exactly once despite the double subscribe


async def test_broker_unsubscribe_stops_delivery(broker_pair: tuple[Broker, Broker]) -> None:
    a, b = broker_pair
    got: list[bytes] = []
    b.set_callback(lambda d, f, _origin: got.append(f))
    b.subscribe("doc")
    b.unsubscribe("doc")
    b.unsubscribe("doc")  # idempotent
    a.publish("doc", b"x")
    a.publish("other", b"y")
    await asyncio.sleep(100 * MS)
    assert got == []
    assert await a.ready() and await b.ready()
