"""Members set over HTTP (relay/server/agents.py, httpbody.py): PUT and DELETE of
/internal/presence/{doc}/members/{member_id} against a real relay, seen by real WebSocket
clients; on one node, and on two sharing a real Redis, one of them killed with -9."""

from __future__ import annotations

import asyncio
import http.client
import json
import signal
from typing import Any

import pytest
from helpers import MS, RawClient, RelayProcess, http_get_json
from websockets.asyncio.client import connect

from relay.core import protocol as p

DOC = "doc-agents"
PATH = f"/internal/presence/{DOC}/members/review-bot"
REVIEWER = {"name": "Reviewer", "cursor": [3, 0, 42], "status": "reading section 2"}


def request(
    port: int, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    """One HTTP request on its own connection, the body sent exactly (bytes) or as JSON."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        conn.request(method, path, body=data, headers=headers or {})
        resp = conn.getresponse()
        raw = resp.read()
        return resp.status, json.loads(raw) if raw else None
    finally:
        conn.close()


async def put(port: int, body: Any, path: str = PATH, **kw: Any) -> tuple[int, Any]:
    return await asyncio.to_thread(request, port, "PUT", path, body, **kw)


async def delete(port: int, path: str = PATH, **kw: Any) -> tuple[int, Any]:
    return await asyncio.to_thread(request, port, "DELETE", path, **kw)


def events(frame: list[Any], code: int) -> list[list[Any]]:
    return [e for e in frame[3] if e[0] == code] if frame[0] == p.BATCH else []


async def event(c: RawClient, code: int, pred: Any = lambda e: True) -> list[Any]:
    frame = await c.recv_until(lambda f: any(pred(e) for e in events(f, code)))
    return next(e for e in events(frame, code) if pred(e))


async def test_an_agent_joins_moves_and_leaves(relay_factory: Any, client_factory: Any) -> None:
    r = await relay_factory(batch_ms=20)
    ann = await client_factory(r, "ann")
    await ann.join(0, DOC)
    status, body = await put(r.port, {**REVIEWER, "ttl_s": 60})
    assert status == 201 and set(body) == {"sid", "expires_at"}
    sid = body["sid"]
    # Its `joined`, and in the same BATCH where the PUT put it and its status.
    frame = await ann.recv_until(lambda f: any(e[1][0] == sid for e in events(f, p.EV_JOINED)))
    member = next(e[1] for e in events(frame, p.EV_JOINED) if e[1][0] == sid)
    assert member[1:3] == ["review-bot", "Reviewer"] and member[13] == p.KIND_AGENT
    assert [p.EV_CURSOR, sid, 3, 0, 42] in frame[3]
    assert [p.EV_STATUS, sid, "reading section 2"] in frame[3]
    # Moves are batched and coalesced like anyone's: three PUTs in one interval, one event.
    for col in (1, 2, 3):
        status, again = await put(r.port, {"name": "Reviewer", "cursor": [4, col, 50 + col]})
        assert status == 200 and again["sid"] == sid
    moved = await event(ann, p.EV_CURSOR, lambda e: e[1] == sid)
    assert moved == [p.EV_CURSOR, sid, 4, 3, 53]
    status, _ = await put(r.port, {"name": "Reviewer", "typing": True, "status": "thinking"})
    assert status == 200
    assert await event(ann, p.EV_STATUS, lambda e: e[1] == sid) == [p.EV_STATUS, sid, "thinking"]
    # It counts as a member for everything: the snapshot, HTTP.
    bob = await client_factory(r, "bob")
    snap = await bob.join(0, DOC)
    assert any(m[0] == sid and m[13] == p.KIND_AGENT for m in snap[4])
    _, view = await http_get_json(r.port, f"/internal/presence/{DOC}")
    agent = next(u for u in view["active_users"] if u["user_id"] == "review-bot")
    assert agent["kind"] == "agent" and agent["status"] == "thinking"
    # DELETE: it leaves with LEFT; a second DELETE finds nothing.
    assert await delete(r.port) == (204, None)
    assert await event(ann, p.EV_LEFT, lambda e: e[1] == sid) == [p.EV_LEFT, sid, p.LEFT]
    status, body = await delete(r.port)
    assert status == 404 and "error" in body


async def test_the_ttl_is_renewed_by_each_put_and_ends_with_expired(
    relay_factory: Any, client_factory: Any
) -> None:
    r = await relay_factory(batch_ms=20)
    ann = await client_factory(r, "ann")
    await ann.join(0, DOC)
    status, body = await put(r.port, {"name": "Reviewer", "ttl_s": 1})
    sid = body["sid"]
    for _ in range(4):  # renewed every 0.5 s for 2 s: it outlives its first 1 s
        await asyncio.sleep(500 * MS)
        status, again = await put(r.port, {"name": "Reviewer", "ttl_s": 1})
        assert status == 200 and again["sid"] == sid
    assert not [e for f in await ann.quiet(50 * MS) for e in events(f, p.EV_LEFT)]
    left = await asyncio.wait_for(event(ann, p.EV_LEFT, lambda e: e[1] == sid), 5000 * MS)
    assert left == [p.EV_LEFT, sid, p.EXPIRED]
    # The next PUT creates it afresh (201, a new sid).
    status, body = await put(r.port, {"name": "Reviewer"})
    assert status == 201 and body["sid"] != sid


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "name"),
        ({"name": ""}, "name"),
        ({"name": 7}, "name"),
        ({"name": "x" * 257}, "name"),
        ({"name": "R", "nickname": "r"}, "nickname"),
        ({"name": "R", "ttl_s": 0}, "ttl_s"),
        ({"name": "R", "ttl_s": 3601}, "ttl_s"),
        ({"name": "R", "ttl_s": 1.5}, "ttl_s"),
        ({"name": "R", "ttl_s": True}, "ttl_s"),
        ({"name": "R", "cursor": [1, 2]}, "cursor"),
        ({"name": "R", "cursor": [1, 2, -3]}, "cursor"),
        ({"name": "R", "cursor": [1, 2, 2**32]}, "cursor"),
        ({"name": "R", "cursor": "1,2,3"}, "cursor"),
        ({"name": "R", "selection": [1, 2, 3]}, "selection"),
        ({"name": "R", "selection": [1, 2, 3, "yes"]}, "selection"),
        ({"name": "R", "cursor": None, "selection": [1, 2, 3, False]}, "selection"),
        ({"name": "R", "selection": [1, 2, 3, False]}, "selection"),  # no cursor to head it
        ({"name": "R", "typing": "yes"}, "typing"),
        ({"name": "R", "viewport": [10, 5, 0.0]}, "viewport"),
        ({"name": "R", "viewport": [0, 5, 101]}, "viewport"),
        ({"name": "R", "viewport": [0, 5]}, "viewport"),
        ({"name": "R", "status": "s" * 65}, "status"),
        ({"name": "R", "status": 5}, "status"),
        ({"name": "R", "avatar_url": "javascript:alert(1)"}, "avatar_url"),
        ([], None),
        (b"{not json", None),
        (b"\xff\xfe", None),
    ],
)
async def test_bad_bodies_get_400_naming_the_field(
    relay_factory: Any, client_factory: Any, body: Any, field: str | None
) -> None:
    r = await relay_factory(batch_ms=20)
    ann = await client_factory(r, "ann")
    await ann.join(0, DOC)
    status, answer = await put(r.port, body)
    assert status == 400, answer
    assert answer.get("field") == field and answer["error"]
    # Nothing joined, nothing else changed; the edge values pass.
    joins = [e for f in await ann.quiet(60 * MS) for e in events(f, p.EV_JOINED)]
    assert [e[1][1] for e in joins] in ([], ["ann"])  # (ann's own joined, nothing else)
    edge = {"name": "x" * 256, "ttl_s": 3600, "status": "s" * 64, "viewport": [5, 5, 100]}
    assert (await put(r.port, edge))[0] == 201


async def test_bad_requests_paths_and_authorization(relay_factory: Any) -> None:
    r = await relay_factory(batch_ms=20, internal_api_key="agents-test-key-0123456789")
    auth = {"Authorization": "Bearer agents-test-key-0123456789"}
    assert (await put(r.port, REVIEWER))[0] == 401  # a key is set: it is needed
    assert (await put(r.port, REVIEWER, headers={"Authorization": "Bearer nope"}))[0] == 401
    assert (await put(r.port, REVIEWER, headers=auth))[0] == 201
    # A GET route: 405, as for any other method there; an unknown path: 404.
    assert (await put(r.port, REVIEWER, path="/internal/presence/x", headers=auth))[0] == 405
    assert (await delete(r.port, path="/healthz", headers=auth))[0] == 405
    assert (await put(r.port, REVIEWER, path="/elsewhere", headers=auth))[0] == 404
    bad_doc = "/internal/presence/%20bad%20/members/x"
    status, body = await put(r.port, REVIEWER, path=bad_doc, headers=auth)
    assert status == 400 and body["field"] == "doc"
    status, body = await put(r.port, b"x" * 20000, headers=auth)
    assert status == 413
    chunked = {**auth, "Transfer-Encoding": "chunked"}
    assert (await asyncio.to_thread(request, r.port, "PUT", PATH, b"{}", chunked))[0] == 411
    # GET and the WebSocket still work on the same port.
    assert (await http_get_json(r.port, "/healthz"))[0] == 200
    open_ = await asyncio.to_thread(request, r.port, "DELETE", PATH, None, auth)
    assert open_ == (204, None)


async def test_without_a_key_only_direct_loopback_callers(relay_factory: Any) -> None:
    r = await relay_factory(batch_ms=20)
    proxied = {"X-Forwarded-For": "203.0.113.9"}
    status, body = await put(r.port, REVIEWER, headers=proxied)
    assert status == 403 and "loopback" in body["error"]


async def test_puts_are_rate_limited_per_member(relay_factory: Any) -> None:
    r = await relay_factory(batch_ms=20, agent_puts_per_s=0.1, agent_puts_burst=3)
    codes = [(await put(r.port, REVIEWER))[0] for _ in range(5)]
    assert codes[0] == 201 and codes[1:4] == [200, 200, 200][:3] and codes[4] == 429
    # Another member has its own budget.
    other = f"/internal/presence/{DOC}/members/other-bot"
    assert (await put(r.port, REVIEWER, path=other))[0] == 201


async def test_agents_count_toward_capacity(relay_factory: Any, client_factory: Any) -> None:
    r = await relay_factory(batch_ms=20, max_users_per_document=2)
    ann = await client_factory(r, "ann")
    await ann.join(0, DOC)
    assert (await put(r.port, REVIEWER))[0] == 201
    status, body = await put(r.port, REVIEWER, path=f"/internal/presence/{DOC}/members/b2")
    assert status == 409 and "capacity" in body["error"]
    bob = await client_factory(r, "bob")
    refused = await bob.join(0, DOC)
    assert refused[0] == p.ERROR and refused[2] == p.DOCUMENT_AT_CAPACITY


async def test_an_agent_alone_keeps_its_document(relay_factory: Any, client_factory: Any) -> None:
    """No WebSocket member at all: the document stays open for the agent, and a later
    joiner sees it."""
    r = await relay_factory(batch_ms=20)
    status, body = await put(r.port, REVIEWER)
    assert status == 201
    await asyncio.sleep(100 * MS)  # several flush turns
    ann = await client_factory(r, "ann")
    snap = await ann.join(0, DOC)
    assert [m[1] for m in snap[4] if m[0] == body["sid"]] == ["review-bot"]


async def test_two_nodes_see_the_agent_and_a_killed_node_reaps_it(redis_url: str) -> None:
    """With Redis an agent is a member of the node that took its PUT: the others mirror it.
    When that node dies (kill -9), the agent goes with its node's members: held for the
    grace, then NODE_DOWN; its next PUT, to a live node, brings it back there."""
    grace_ms = round(1000 * MS * 1000)
    args = ["--redis-url", redis_url, "--presence-ttl-seconds", "2", "--batch-ms", "20",
            "--reconnect-grace-ms", str(grace_ms)]  # fmt: skip
    doomed, survivor = RelayProcess(*args), RelayProcess(*args)
    ws = None
    try:
        await asyncio.gather(doomed.ready(), survivor.ready())
        ws = await connect(f"ws://127.0.0.1:{survivor.port}/ws", subprotocols=[p.SUBPROTOCOL],  # type: ignore[list-item]
                           compression=None)  # fmt: skip
        watcher = RawClient(ws)
        await watcher.hello("watcher")
        await watcher.join(0, DOC)
        status, body = await put(doomed.port, {**REVIEWER, "ttl_s": 120})
        assert status == 201
        sid = body["sid"]
        joined = await event(watcher, p.EV_JOINED, lambda e: e[1][0] == sid)
        assert joined[1][1:3] == ["review-bot", "Reviewer"] and joined[1][13] == p.KIND_AGENT
        await put(doomed.port, {"name": "Reviewer", "cursor": [9, 9, 99]})
        assert await event(watcher, p.EV_CURSOR, lambda e: e[1] == sid) == [1, sid, 9, 9, 99]
        doomed.proc.send_signal(signal.SIGKILL)
        left = await asyncio.wait_for(event(watcher, p.EV_LEFT, lambda e: e[1] == sid), 20000 * MS)
        assert left == [p.EV_LEFT, sid, p.NODE_DOWN]
        status, again = await put(survivor.port, REVIEWER)
        assert status == 201 and again["sid"] != sid
        back = await event(watcher, p.EV_JOINED, lambda e: e[1][0] == again["sid"])
        assert back[1][1] == "review-bot" and back[1][13] == p.KIND_AGENT
    finally:
        if ws is not None:
            await ws.close()
        doomed.kill()
        survivor.terminate()


async def test_a_put_to_another_node_reaches_the_node_holding_the_agent(
    relay_factory: Any, client_factory: Any, redis_url: str
) -> None:
    """Behind a load balancer an agent's PUTs land anywhere: a node that does not hold the
    member forwards the request to the one that does (its control channel), so there is
    one member, one sid, whatever node is asked."""
    a = await relay_factory(batch_ms=20, redis_url=redis_url)
    b = await relay_factory(batch_ms=20, redis_url=redis_url)
    watcher = await client_factory(b, "watcher")
    await watcher.join(0, DOC)
    status, body = await put(a.port, {**REVIEWER, "ttl_s": 60})
    assert status == 201
    sid = body["sid"]
    await event(watcher, p.EV_JOINED, lambda e: e[1][0] == sid)
    status, again = await put(b.port, {"name": "Reviewer", "cursor": [7, 1, 70]})
    assert (status, again["sid"]) == (200, sid)
    assert await event(watcher, p.EV_CURSOR, lambda e: e[1] == sid) == [1, sid, 7, 1, 70]
    assert a.hub.agents.of(DOC, "review-bot") is not None
    assert b.hub.agents.of(DOC, "review-bot") is None  # not a second member on b
    # A bad body is answered by the holder, with its field, through the other node too.
    status, bad = await put(b.port, {"name": "Reviewer", "ttl_s": 0})
    assert status == 400 and bad["field"] == "ttl_s"
    held = a.hub.agents.of(DOC, "review-bot")
    assert held is not None and held.doc is a.hub.registry.get(DOC)  # its document stays open
    assert await delete(b.port) == (204, None)
    assert await event(watcher, p.EV_LEFT, lambda e: e[1] == sid) == [p.EV_LEFT, sid, p.LEFT]
    # Released: the next PUT, to b, creates it on b.
    await asyncio.sleep(100 * MS)  # (the owner record is deleted in the background)
    status, fresh = await put(b.port, REVIEWER)
    assert status == 201 and b.hub.agents.of(DOC, "review-bot") is not None
    joins = [e for f in await watcher.quiet(100 * MS) for e in events(f, p.EV_JOINED)]
    assert [e[1][0] for e in joins] in ([fresh["sid"]], [])
