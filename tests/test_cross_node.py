"""Nodes of one Redis: a `joined` never outruns its record, a document's batches are
published only while another node has it open, gaps in a node's sequence are repaired,
and a mirrored member keeps every field of its own (its workspace too)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import msgpack
import pytest
import redis.asyncio as aioredis
from helpers import EV_CURSOR, EV_JOINED, EV_LEFT, MS, eventually, joined, wait_event

from relay.auth import mint_token
from relay.backends import redis_keys as k
from relay.server.app import Relay

pytestmark = pytest.mark.timeout(60)

DOC = "doc-x"
SECRET = "s" * 32


@pytest.fixture
async def rds(redis_url: str) -> Any:
    r = aioredis.from_url(redis_url)
    yield r
    await r.aclose()


async def node(relay_factory: Callable[..., Any], url: str, **kw: Any) -> Relay:
    kw.setdefault("presence_ttl_seconds", 5)
    r: Relay = await relay_factory(redis_url=url, **kw)
    assert await eventually(r.hub.store.ready, 5000 * MS)
    assert await eventually(r.hub.broker.ready, 5000 * MS)
    return r


async def nodes(relay_factory: Callable[..., Any], url: str, n: int, **kw: Any) -> list[Relay]:
    return [await node(relay_factory, url, **kw) for _ in range(n)]


def slow_writes(r: Relay, delay_s: float) -> None:
    """Make the node's write-behind take `delay_s` longer per round trip (a busy Redis)."""
    wb = r.hub.store.writebehind  # type: ignore[attr-defined]
    write = wb._write

    async def delayed(entries: Any) -> None:
        await asyncio.sleep(delay_s)
        await write(entries)

    wb._write = delayed


async def test_a_joined_is_published_only_once_its_record_is_readable(
    relay_factory: Callable[..., Any],
    client_factory: Callable[..., Any],
    redis_url: str,
    rds: aioredis.Redis,
) -> None:
    a, b = await nodes(relay_factory, redis_url, 2)
    bob = await client_factory(b, "bob")
    await joined(bob, 1, DOC)  # node b is in the document: node a publishes its batches
    slow_writes(a, 0.3)  # the ticker (20 ms) would publish long before the write lands
    sub = rds.pubsub()
    await sub.subscribe(k.channel(DOC))
    await sub.get_message(timeout=1.0)  # the subscription's confirmation
    ann = await client_factory(a, "ann")
    sid_a, _ = await joined(ann, 1, DOC)
    checked: list[str] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 3.0
    while len(checked) < 2 and loop.time() < deadline:  # bounded: the joined, then the left
        msg = await sub.get_message(timeout=0.5)
        if msg is None or msg["type"] != "message":
            continue
        opened = k.open_envelope(msg["data"])
        assert opened is not None
        origin, _, payload = opened
        if origin != a.hub.broker.node_id.encode() or payload[1:2] != b"\x22":
            continue
        for ev in msgpack.unpackb(payload, strict_map_key=False)[3]:
            stored = await rds.hexists(k.members_key(DOC), str(sid_a))
            if ev[0] == EV_JOINED and ev[1][0] == sid_a:
                assert stored, "a joined reached the channel before its member record"
                checked.append("joined")
                await ann.send([3, 1])  # LEAVE: now the left, and its removal
            elif ev[0] == EV_LEFT and ev[1] == sid_a:
                assert not stored, "a left reached the channel before the record went"
                checked.append("left")
    await sub.aclose()
    assert checked == ["joined", "left"]
    # Bob saw both, in order, through the channel.
    await wait_event(bob, lambda e: e[0] == EV_LEFT and e[1] == sid_a)


async def test_a_document_on_one_node_publishes_nothing_until_another_opens_it(
    relay_factory: Callable[..., Any],
    client_factory: Callable[..., Any],
    redis_url: str,
    rds: aioredis.Redis,
) -> None:
    a, b = await nodes(relay_factory, redis_url, 2)
    ann = await client_factory(a, "ann")
    sid_a, _ = await joined(ann, 1, DOC)
    broker = a.hub.broker
    assert await rds.smembers(k.nodes_key(DOC)) == {broker.node_id.encode()}
    published, skipped = broker.published, broker.skipped
    for i in range(5):
        await ann.send([4, 1, i, 0, i])
        await asyncio.sleep(30 * MS)
    assert await eventually(lambda: broker.skipped >= skipped + 5, 2000 * MS)
    assert broker.published == published, "a batch nobody else listens to was published"

    # A member on node b: node b subscribes, enters the set, says HELLO; from then on
    # node a publishes, and bob sees ann's moves at once.
    bob = await client_factory(b, "bob")
    sid_b, members = await joined(bob, 1, DOC)
    # Ann's last move is in her record within a second (her node's sweep), and in node a's
    # ROSTER, which answers node b's HELLO at once: bob has it from one or the other.
    if [m[8] for m in members if m[0] == sid_a] != [[4, 0, 4]]:
        await wait_event(
            bob, lambda e: e[0] == EV_JOINED and e[1][:1] + e[1][8:9] == [sid_a, [4, 0, 4]]
        )
    assert await eventually(lambda: broker.others.get(DOC) == {b.hub.broker.node_id.encode()})
    await ann.send([4, 1, 9, 9, 99])
    await wait_event(bob, lambda e: e == [EV_CURSOR, sid_a, 9, 9, 99])
    await bob.send([4, 1, 1, 1, 1])
    await wait_event(ann, lambda e: e == [EV_CURSOR, sid_b, 1, 1, 1])

    # Bob leaves: node b closes the document (BYE, out of the set); node a goes quiet again.
    await bob.send([3, 1])
    await wait_event(ann, lambda e: e[0] == EV_LEFT and e[1] == sid_b)
    assert await eventually(lambda: broker.others.get(DOC) == set(), 3000 * MS)
    assert await rds.smembers(k.nodes_key(DOC)) == {broker.node_id.encode()}
    published = broker.published
    await ann.send([4, 1, 2, 2, 2])
    await asyncio.sleep(100 * MS)
    assert broker.published == published


async def test_a_gap_or_a_repeat_in_a_nodes_sequence_makes_the_receiver_re_read(
    relay_factory: Callable[..., Any],
    client_factory: Callable[..., Any],
    redis_url: str,
    rds: aioredis.Redis,
) -> None:
    b = await node(relay_factory, redis_url)
    bob = await client_factory(b, "bob")
    await joined(bob, 1, DOC)
    cluster = b.hub.cluster
    assert cluster is not None
    frame = msgpack.packb([34, DOC, 1, []])

    async def send(seq: int) -> None:
        await rds.publish(k.channel(DOC), k.envelope(b"ghostnode", frame, seq))

    before = dict(cluster.resyncs_by_cause)
    await send(1)
    await send(2)  # in order: nothing to repair
    await send(4)  # 3 is lost
    assert await eventually(lambda: cluster.resyncs_by_cause.get("gap", 0) > before.get("gap", 0))
    await send(4)  # repeated
    assert await eventually(
        lambda: cluster.resyncs_by_cause.get("duplicate", 0) > before.get("duplicate", 0)
    )
    assert b.hub.broker.gaps == 2
    # Not-yet-sequenced messages (a node from before v1.2) are taken as they come.
    await rds.publish(k.channel(DOC), k.envelope(b"oldnode", frame))
    await asyncio.sleep(100 * MS)
    assert b.hub.broker.gaps == 2


async def test_a_roster_is_the_truth_about_its_nodes_members(
    relay_factory: Callable[..., Any],
    client_factory: Callable[..., Any],
    redis_url: str,
) -> None:
    a, b = await nodes(relay_factory, redis_url, 2)
    ann = await client_factory(a, "ann")
    sid_a, _ = await joined(ann, 1, DOC)
    bob = await client_factory(b, "bob")
    await joined(bob, 1, DOC)
    cluster = b.hub.cluster
    assert cluster is not None
    a_id = a.hub.broker.node_id
    assert await eventually(lambda: cluster.owners.get(DOC, {}).get(sid_a) == a_id)
    # A roster from node a that no longer lists ann (she left while node b was not yet
    # heard as listening): node b drops her and tells bob.
    cluster.node_roster(DOC, a_id, a.hub.clock(), [])
    await wait_event(bob, lambda e: e[0] == EV_LEFT and e[1] == sid_a)
    assert sid_a not in b.hub.documents[DOC].sessions
    # And a roster listing a member node b had not heard of adds her.
    member = list(a.hub.documents[DOC].sessions[sid_a].member())
    cluster.node_roster(DOC, a_id, a.hub.clock() + 1, [member])
    _, ev = await wait_event(bob, lambda e: e[0] == EV_JOINED and e[1][0] == sid_a)
    assert ev[1][1] == "ann"


async def test_a_mirrored_member_keeps_its_own_workspace(
    relay_factory: Callable[..., Any],
    client_factory: Callable[..., Any],
    redis_url: str,
) -> None:
    a, b = await nodes(relay_factory, redis_url, 2, jwt_secret=SECRET)
    bob = await client_factory(b)
    await bob.hello("bob", token=mint_token(SECRET, "bob", "Bob", workspace="w-bob"))
    await joined(bob, 1, DOC)
    ann = await client_factory(a)
    await ann.hello("ann", token=mint_token(SECRET, "ann", "Ann", workspace="w-ann"))
    sid_a, _ = await joined(ann, 1, DOC)  # heard by node b first as a BATCH's `joined`
    await wait_event(bob, lambda e: e[0] == EV_JOINED and e[1][0] == sid_a)

    def workspace_on_b() -> Any:
        s = b.hub.documents[DOC].sessions.get(sid_a)
        return s is not None and s.user.workspace_id == "w-ann"

    assert await eventually(workspace_on_b, 2000 * MS)
    # A node that opens the document later reads it from the record.
    c = await node(relay_factory, redis_url, jwt_secret=SECRET)
    cy = await client_factory(c)
    await cy.hello("cy", token=mint_token(SECRET, "cy", "Cy", workspace="w-cy"))
    await joined(cy, 1, DOC)
    assert c.hub.documents[DOC].sessions[sid_a].user.workspace_id == "w-ann"
