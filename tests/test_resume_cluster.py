"""Sessions that move between nodes sharing a real redis-server (v1.1).

A resume through another node (the session lost, or its socket still open on the first
node), a refused one, and a rolling deploy: a node stopped the way SIGTERM stops it, its
clients resuming through the other node. What the other members see is the point: no
`left`, no `joined`, the same sids.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import pytest
from helpers import MS, RawClient, RelayProcess, eventually, wait_event
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from relay.core import protocol as p
from relay.server.app import Relay

pytestmark = pytest.mark.timeout(90)

GRACE_MS = round(5000 * MS * 1000)


async def two_nodes(relay_factory: Callable[..., Any], url: str, **kw: Any) -> tuple[Relay, Relay]:
    kw.setdefault("presence_ttl_seconds", 5)
    kw.setdefault("reconnect_grace_ms", GRACE_MS)
    r1 = await relay_factory(redis_url=url, **kw)
    r2 = await relay_factory(redis_url=url, **kw)
    for r in (r1, r2):
        assert await eventually(r.hub.store.ready, 5000 * MS)
    return r1, r2


def flicker(frames: list[list[Any]], sids: set[int]) -> list[Any]:
    """Every `left` or `joined` of one of `sids` in these frames."""
    out = []
    for f in frames:
        if f[0] != p.BATCH:
            continue
        for e in f[3]:
            if (e[0] == p.EV_LEFT and e[1] in sids) or (e[0] == p.EV_JOINED and e[1][0] in sids):
                out.append(e)
    return out


class Recorder:
    """Everything a raw client receives, in the background."""

    def __init__(self, c: RawClient) -> None:
        self.c = c
        self.frames: list[list[Any]] = []
        self.task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        while True:
            try:
                self.frames.append(await self.c.recv(60.0))
            except (ConnectionClosed, TimeoutError):
                return

    def events(self) -> list[list[Any]]:
        return [e for f in self.frames if f[0] == p.BATCH for e in f[3]]

    def stop(self) -> None:
        self.task.cancel()


async def member(client_factory: Any, r: Relay, user: str, doc: str, h: int = 1) -> Any:
    c = await client_factory(r)
    welcome = await c.hello(user)
    sid = (await c.join(h, doc))[3]
    return c, sid, welcome[5]["resume_token"]


@pytest.mark.parametrize("lost", [True, False], ids=["lost", "still-open"])
async def test_a_session_resumes_through_another_node(
    relay_factory: Callable[..., Any], client_factory: Any, redis_url: str, lost: bool
) -> None:
    r1, r2 = await two_nodes(relay_factory, redis_url)
    w1, _, _ = await member(client_factory, r1, "w1", "doc")
    w2, _, _ = await member(client_factory, r2, "w2", "doc")
    bob, sid, token = await member(client_factory, r1, "bob", "doc", h=5)
    await bob.send([p.CURSOR, 5, 7, 7, 7])
    for w in (w1, w2):  # everything before this point read
        await wait_event(w, lambda e: e == [p.EV_CURSOR, sid, 7, 7, 7])
    rec1, rec2 = Recorder(w1), Recorder(w2)
    try:
        if lost:
            bob.ws.transport.abort()
            assert await eventually(lambda: [6, sid, 5] in rec2.events(), 2000 * MS)
        again = await client_factory(r2)
        welcome = await again.hello("bob", resume=token)
        assert welcome[5]["resumed"] is True
        joined = await again.recv()
        assert joined[:4] == [p.JOINED, 5, "doc", sid]
        me = next(m for m in joined[4] if m[0] == sid)
        assert me[8] == [7, 7, 7], "its state came along"
        if not lost:
            with pytest.raises(ConnectionClosed):
                await bob.recv_until(lambda f: False, timeout=3000 * MS)
            assert bob.ws.close_code == p.CLOSE_RESUMED
        await again.send([p.CURSOR, 5, 8, 8, 8])
        for rec in (rec1, rec2):
            assert await eventually(lambda rec=rec: [1, sid, 8, 8, 8] in rec.events(), 2000 * MS)
        await asyncio.sleep(300 * MS)
        assert not flicker(rec1.frames + rec2.frames, {sid})
        # Node 2 owns it now: node 1 only mirrors it (and its reaper would never remove it).
        assert r2.hub.local["doc"][sid] is not None
        assert sid not in r1.hub.local["doc"]
        assert r1.hub.documents["doc"].sessions[sid].remote
    finally:
        rec1.stop()
        rec2.stop()


async def test_a_resume_through_another_node_checks_the_identity(
    relay_factory: Callable[..., Any], client_factory: Any, redis_url: str
) -> None:
    r1, r2 = await two_nodes(relay_factory, redis_url)
    bob, sid, token = await member(client_factory, r1, "bob", "doc")
    bob.ws.transport.abort()
    eve = await client_factory(r2)
    assert (await eve.hello("eve", resume=token))[5]["resumed"] is False
    again = await client_factory(r2)  # the claim was put back: bob still resumes
    assert (await again.hello("bob", resume=token))[5]["resumed"] is True
    assert (await again.recv())[:4] == [p.JOINED, 1, "doc", sid]
    twice = await client_factory(r1)
    assert (await twice.hello("bob", resume=token))[5]["resumed"] is False, "used once"


async def test_a_rolling_deploy_is_invisible(
    relay_factory: Callable[..., Any], client_factory: Any, redis_url: str
) -> None:
    """Node 1 stops (Relay.stop: what SIGTERM runs); its clients reconnect to node 2 and
    resume; the watchers on node 2 never see any of them leave or join."""
    r1, r2 = await two_nodes(relay_factory, redis_url)
    docs = [f"doc-{i}" for i in range(4)]
    watchers = []
    for d in docs:
        w, _, _ = await member(client_factory, r2, "watch-" + d, d)
        watchers.append(Recorder(w))
    moving: list[tuple[str, str, int, str]] = []
    for i in range(20):
        d = docs[i % len(docs)]
        c, sid, token = await member(client_factory, r1, f"u{i}", d)
        moving.append((f"u{i}", d, sid, token))
    sids = {m[2] for m in moving}
    await asyncio.sleep(300 * MS)  # every joined is seen
    for rec in watchers:
        rec.frames.clear()
    await r1.stop()
    resumed = []
    for user, d, sid, token in moving:
        c = await client_factory(r2)
        welcome = await c.hello(user, resume=token)
        assert welcome[5]["resumed"] is True, (user, welcome)
        joined = await c.recv()
        assert joined[:4] == [p.JOINED, 1, d, sid]
        resumed.append(c)
    await asyncio.sleep(500 * MS)
    for rec in watchers:
        assert not flicker(rec.frames, sids), flicker(rec.frames, sids)
        rec.stop()
    assert {sid for _, _, sid, _ in moving} <= {s for d in docs for s in r2.hub.local[d]}


async def test_a_killed_node_s_sessions_are_held_then_resumed_elsewhere_or_node_down(
    redis_url: str,
) -> None:
    """kill -9 of a node: its members turn DISCONNECTED once the reaper notices (within the
    TTL), a client that resumes through the other node keeps its sid and nobody sees it
    leave; one that does not comes back leaves with NODE_DOWN after the grace."""
    grace_ms = round(3000 * MS * 1000)
    args = ["--redis-url", redis_url, "--presence-ttl-seconds", "2", "--batch-ms", "20",
            "--reconnect-grace-ms", str(grace_ms)]  # fmt: skip
    doomed, survivor = RelayProcess(*args), RelayProcess(*args)
    opened: list[Any] = []

    async def raw(port: int, user: str) -> tuple[RawClient, dict[str, Any]]:
        ws = await connect(f"ws://127.0.0.1:{port}/ws", subprotocols=[p.SUBPROTOCOL],  # type: ignore[list-item]
                           compression=None, max_queue=None)  # fmt: skip
        opened.append(ws)
        c = RawClient(ws)
        return c, (await c.hello(user))[5]

    try:
        await asyncio.gather(doomed.ready(), survivor.ready())
        watcher, _ = await raw(survivor.port, "w")
        await watcher.join(1, "doc")
        rec = Recorder(watcher)
        comer, settings = await raw(doomed.port, "comer")
        sid_comer = (await comer.join(1, "doc"))[3]
        goner, _ = await raw(doomed.port, "goner")
        sid_goner = (await goner.join(1, "doc"))[3]
        sids = {sid_comer, sid_goner}
        await asyncio.sleep(1500 * MS)  # joined seen, records written (write-behind)
        rec.frames.clear()
        doomed.proc.kill()
        doomed.proc.wait()
        for sid in sids:
            assert await eventually(lambda sid=sid: [6, sid, 5] in rec.events(), 4000 * MS)
        again2 = await client_with_resume(survivor.port, "comer", settings["resume_token"])
        opened.append(again2.ws)
        assert (await again2.recv())[:4] == [p.JOINED, 1, "doc", sid_comer]
        gone = [p.EV_LEFT, sid_goner, p.NODE_DOWN]
        assert await eventually(lambda: gone in rec.events(), grace_ms / 1000 + 5)
        evs = rec.events()
        assert [p.EV_LEFT, sid_goner, p.NODE_DOWN] in evs
        assert not flicker(rec.frames, {sid_comer})
        rec.stop()
    finally:
        for ws in opened:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), 1000 * MS)
        doomed.kill()
        survivor.kill()


async def client_with_resume(port: int, user: str, token: str) -> RawClient:
    ws = await connect(f"ws://127.0.0.1:{port}/ws", subprotocols=[p.SUBPROTOCOL],  # type: ignore[list-item]
                       compression=None)  # fmt: skip
    c = RawClient(ws)
    welcome = await c.hello(user, resume=token)
    assert welcome[5]["resumed"] is True, welcome
    return c


async def test_a_resume_through_another_node_keeps_the_budgets(
    relay_factory: Callable[..., Any], client_factory: Any, redis_url: str
) -> None:
    r1, r2 = await two_nodes(
        relay_factory, redis_url, max_frames_per_s=1, max_frames_burst=5, max_bad_frames=2
    )
    bob, _, token = await member(client_factory, r1, "bob", "doc", h=7)
    for _ in range(2):  # the bad-frame window at its limit
        await bob.send([p.CURSOR, 99, 1, 1, 1])
    for _ in range(2):
        assert (await bob.recv_until(lambda f: f[0] == p.ERROR))[2] == p.NOT_JOINED
    for i in range(2):  # with the JOIN and the bad frames: the burst of 5 is used up
        await bob.send([p.VIEWPORT, 7, i, i + 10, 0])
    await asyncio.sleep(50 * MS)
    again = await client_factory(r2)
    assert (await again.hello("bob", resume=token))[5]["resumed"] is True
    await again.recv_until(lambda f: f[0] == p.JOINED)
    await again.send([p.VIEWPORT, 7, 50, 60, 0])
    err = await again.recv_until(lambda f: f[0] == p.ERROR)
    assert err[2] == p.RATE_LIMITED, "the bucket came along"
    await asyncio.sleep(1100 * MS)  # a token back; one more bad frame closes
    await again.send([p.CURSOR, 99, 1, 1, 1])
    with pytest.raises(ConnectionClosed):
        await again.recv_until(lambda f: False, timeout=2000 * MS)
    assert again.ws.close_code == p.CLOSE_PROTOCOL
