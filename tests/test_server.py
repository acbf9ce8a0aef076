"""Server behaviour over real loopback WebSockets: lifecycle, limits, slow members."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from helpers import MS
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from relay.auth import mint_token
from relay.config import ConfigError, PresenceConfig
from relay.server.app import Relay

pytestmark = pytest.mark.timeout(60)


def is_batch_with(code: int) -> Any:
    return lambda f: f[0] == 34 and any(e[0] == code for e in f[3])


async def test_move_reaches_other_member_within_a_batch(relay: Relay, client_factory: Any) -> None:
    a = await client_factory(relay, "ann")
    b = await client_factory(relay, "bob")
    await a.join(1, "d")
    joined = await b.join(2, "d")
    await a.recv_until(is_batch_with(2))  # bob's `joined`
    await b.send([4, 2, 10, 4, 200])
    batch = await a.recv_until(is_batch_with(1), timeout=1000 * MS)
    assert [1, joined[3], 10, 4, 200] in batch[3]


async def test_dropped_connection_is_disconnected_at_once_and_lost_after_the_grace(
    relay_factory: Any, client_factory: Any
) -> None:
    r = await relay_factory(reconnect_grace_ms=round(600 * MS * 1000))
    a = await client_factory(r, "ann")
    b = await client_factory(r, "bob")
    await a.join(1, "d")
    sid = (await b.join(1, "d"))[3]
    await a.recv_until(is_batch_with(2))
    b.ws.transport.abort()  # no close handshake: the TCP connection just dies
    t0 = time.monotonic()
    held = await a.recv_until(is_batch_with(6), timeout=1000 * MS)  # well under close_timeout
    assert [6, sid, 5] in held[3], "shown DISCONNECTED, not gone"
    left = await a.recv_until(is_batch_with(3), timeout=3000 * MS)
    assert [3, sid, 1] in left[3], "left with LOST once the grace ran out"
    assert time.monotonic() - t0 >= 550 * MS
    assert r.hub.documents["d"].sessions.keys() == {1}
    assert set(r.hub.resumable.values()) <= r.hub.clients, "no ended session is left"


async def test_dropped_connection_without_grace_leaves_at_once(
    relay_factory: Any, client_factory: Any
) -> None:
    r = await relay_factory(reconnect_grace_ms=0)
    a = await client_factory(r, "ann")
    b = await client_factory(r, "bob")
    await a.join(1, "d")
    sid = (await b.join(1, "d"))[3]
    await a.recv_until(is_batch_with(2))
    b.ws.transport.abort()
    left = await a.recv_until(is_batch_with(3), timeout=1000 * MS)
    assert [3, sid, 1] in left[3]
    assert r.hub.documents["d"].sessions.keys() == {1}


async def test_shutdown_closes_members_with_1001(relay_factory: Any, client_factory: Any) -> None:
    r = await relay_factory()
    a = await client_factory(r, "ann")
    await a.join(1, "d")
    await r.stop()
    with pytest.raises(ConnectionClosed):
        await a.recv_until(lambda f: False, timeout=3000 * MS)
    assert a.ws.close_code == 1001


async def test_slow_reader_is_closed_4408_and_leaves(
    relay_factory: Any,
    client_factory: Any,
) -> None:
    r = await relay_factory(
        max_send_backlog=64 * 1024, max_frames_per_s=2000, max_frames_burst=2000
    )
    # Fill the document with members whose MEMBER arrays are large, so that every JOINED
    # snapshot is ~25 KiB and a reader that stopped reading falls behind quickly.
    drains = []
    for i in range(40):
        c = await client_factory(r)
        await c.hello(f"user-{i}-" + "x" * 200, "N" * 200)
        assert (await c.join(1, "big"))[0] == 33
        drains.append(asyncio.create_task(c.quiet(30000 * MS)))  # these members keep reading
    watcher = await client_factory(r, "watcher")
    await watcher.join(1, "big")
    # max_queue=1: the client library stops reading the socket once one message is unread.
    slow = await client_factory(r, None, max_queue=1)
    await slow.hello("slow")
    await slow.send([2, 7, "other"])
    for _ in range(400):  # bounded: ~400 JOINED snapshots at most, ~10 MB
        await slow.send([2, 1, "big"])
        await slow.send([3, 1])
        if r.hub.stats.closes.get(4408):
            break
        await asyncio.sleep(2 * MS)
    assert r.hub.stats.closes.get(4408) == 1
    # It left every document at once; the other members kept their presence.
    assert all(s.user.user_id != "slow" for s in r.hub.documents["big"].sessions.values())
    assert r.hub.documents["other"].empty if "other" in r.hub.documents else True
    assert len(r.hub.documents["big"].sessions) == 41
    # The watcher is still served.
    await watcher.send([8, 1])
    assert (await watcher.recv_until(lambda f: f[0] == 36))[1] == 1
    for t in drains:
        t.cancel()


async def test_token_mode(relay_factory: Any, client_factory: Any) -> None:
    r = await relay_factory(jwt_secret="test-secret-0123456789abcdef0123456789")
    c = await client_factory(r)
    token = mint_token("test-secret-0123456789abcdef0123456789", "u1", "Una", "ws1", ["team-*"], 60)
    welcome = await c.hello("ignored", token=token)
    assert welcome[0] == 32 and welcome[3]["id"] == "u1" and welcome[3]["workspace"] == "ws1"
    assert (await c.join(1, "team-a"))[0] == 33
    err = await c.join(2, "private")
    assert err[:3] == [35, 2, 4]
    # Anonymous HELLO is refused when a secret is configured.
    anon = await client_factory(r)
    await anon.send([1, 1, None, {"sdk": "t", "user_id": "x", "name": "x"}])
    with pytest.raises(ConnectionClosed):
        await anon.recv()
    assert anon.ws.close_code == 4401


async def test_token_never_logged(
    relay_factory: Any, client_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    r = await relay_factory(jwt_secret="test-secret-0123456789abcdef0123456789")
    bad = mint_token("other-secret-0123456789abcdef0123456789", "u1", "Una", "ws1", ["*"], 60)
    c = await client_factory(r)
    with caplog.at_level("DEBUG"):
        await c.send([1, 1, bad, {"sdk": "t"}])
        with pytest.raises(ConnectionClosed):
            await c.recv()
    assert c.ws.close_code == 4401
    assert bad not in caplog.text
    assert bad.split(".")[2] not in caplog.text


def test_refuses_non_loopback_without_secret() -> None:
    with pytest.raises(ConfigError, match="jwt_secret"):
        Relay(PresenceConfig(host="0.0.0.0", port=0))


async def test_max_connections_answers_503(relay_factory: Any, client_factory: Any) -> None:
    r = await relay_factory(max_connections=2)
    await client_factory(r, "a")
    await client_factory(r, "b")
    with pytest.raises(Exception, match="503"):
        await connect(f"ws://127.0.0.1:{r.port}/ws", subprotocols=["presence.v1"])


async def test_allowed_origins_refuse_other_sites(relay_factory: Any, client_factory: Any) -> None:
    """A browser page from an unlisted site gets HTTP 403; listed sites and clients that send
    no Origin (services, SDKs outside a browser) connect."""
    r = await relay_factory(allowed_origins="https://app.example.com,http://localhost:3000")
    with pytest.raises(InvalidStatus) as refused:
        await client_factory(r, "mallory", origin="https://evil.example")
    assert refused.value.response.status_code == 403
    for origin in ("https://app.example.com", "http://localhost:3000"):
        c = await client_factory(r, "ann", origin=origin)
        assert (await c.join(1, "d"))[0] == 33
    plain = await client_factory(r, "svc")  # no Origin header at all
    assert (await plain.join(1, "d"))[0] == 33


async def test_one_user_cannot_fill_a_document(relay_factory: Any, client_factory: Any) -> None:
    r = await relay_factory(max_sessions_per_user=2)
    tabs = [await client_factory(r, "ann") for _ in range(3)]
    assert (await tabs[0].join(1, "d"))[0] == 33
    assert (await tabs[1].join(1, "d"))[0] == 33
    err = await tabs[2].join(1, "d")
    assert err[:3] == [35, 1, 5] and "2 sessions of one user" in err[3]
    other = await client_factory(r, "bob")
    assert (await other.join(1, "d"))[0] == 33


async def test_sessions_run_the_twin_the_process_runs(relay: Relay, client_factory: Any) -> None:
    """The session's peer (what the fast path calls for every read) is the selected twin's,
    not the pure reference by accident."""
    import relay.twin as twin

    c = await client_factory(relay, "ann")
    await c.join(1, "d")
    (client,) = relay.hub.clients
    assert type(client.session.peer) is twin.Peer
    assert type(client.session.peer.bucket) is twin.TokenBucket
    assert type(next(iter(client.session.handles.values()))) is twin.Membership
