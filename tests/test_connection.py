"""A connection's life (relay/server/connection.py and the hub's side of it), over real
loopback sockets: counted from accept to close, released whatever fails, ended at its
token's `exp`."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import jwt
import pytest
from helpers import MS, RawSocket, eventually
from websockets.exceptions import ConnectionClosed

from relay.auth import mint_token
from relay.core import protocol as p
from relay.server.hub import wall_ms

pytestmark = pytest.mark.timeout(60)

SECRET = "connection-test-secret-0123456789abcdef"


async def test_connections_before_hello_count_toward_max_connections(
    relay_factory: Any,
) -> None:
    """Six handshakes made before any HELLO: the cap of three holds (before: all got in)."""
    r = await relay_factory(max_connections=3)
    socks = [await RawSocket.open(r.port) for _ in range(6)]
    try:
        assert [s.status for s in socks] == [101, 101, 101, 503, 503, 503]
        for refused in socks[3:]:  # as a client does after a 503 (else websockets waits up
            refused.close()  # to close_timeout for it to, holding the socket meanwhile)
        assert await eventually(lambda: len(r.hub.sockets) == 3, 5000 * MS)
        # A slot frees when its socket closes, HELLO or not.
        socks[0].close()
        assert await eventually(lambda: len(r.hub.sockets) == 2, 3000 * MS)
        again = await RawSocket.open(r.port)
        socks.append(again)
        assert again.status == 101
    finally:
        for s in socks:
            s.close()


def surrogate_token(claim: str, value: str) -> str:
    """A correctly signed token whose claim holds a lone surrogate (JSON allows "\\ud800")."""
    claims: dict[str, Any] = {
        "sub": "mallory",
        "name": "Mallory",
        "ws": "w",
        "docs": ["*"],
        "exp": int(time.time()) + 600,
    }
    claims[claim] = value
    return jwt.encode(claims, SECRET, algorithm="HS256")


@pytest.mark.parametrize(
    "claim,value",
    [
        ("name", "bad\ud800"),
        ("sub", "\udfffx"),
        ("ws", "w\ud83d"),
        ("avatar", "https://x.example/\ud800.png"),
    ],
)
async def test_a_token_whose_claims_cannot_be_carried_is_refused_and_frees_its_slot(
    relay_factory: Any,
    client_factory: Any,
    claim: str,
    value: str,
) -> None:
    """Five replays of such a token against max_connections 5 used to lock everyone out
    (WELCOME failed after the slot was taken, and the slot was never released)."""
    r = await relay_factory(jwt_secret=SECRET, max_connections=5)
    token = surrogate_token(claim, value)
    for _ in range(6):
        c = await client_factory(r)
        await c.send([1, 1, token, {"sdk": "t"}])
        with pytest.raises(ConnectionClosed):
            await c.recv()
        assert c.ws.close_code == p.CLOSE_UNAUTHENTICATED
        assert "surrogate" in c.ws.close_reason
    assert await eventually(lambda: len(r.hub.sockets) == 0 and not r.hub.clients, 3000 * MS)
    ok = await client_factory(r)
    good = mint_token(SECRET, "ann", "Ann", "w", ["*"], 60)
    assert (await ok.hello("ignored", token=good))[0] == p.WELCOME


async def test_an_exception_after_hello_releases_the_client(
    relay_factory: Any,
    client_factory: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Whatever raises once the hub registered the client, the client is released (its
    documents, its place in hub.clients, its socket)."""
    r = await relay_factory()
    a = await client_factory(r, "ann")
    assert (await a.join(1, "d"))[0] == p.JOINED

    def boom(*args: Any) -> None:
        raise RuntimeError("welcome failed")

    monkeypatch.setattr(p, "encode_welcome", boom)
    b = await client_factory(r)
    await b.send([1, 1, None, {"sdk": "t", "user_id": "bob", "name": "Bob"}])
    with pytest.raises(ConnectionClosed):
        await b.recv()
    assert await eventually(lambda: len(r.hub.clients) == 1 and len(r.hub.sockets) == 1, 3.0)


async def test_the_connection_closes_4401_when_its_token_expires(
    relay_factory: Any,
    client_factory: Any,
) -> None:
    r = await relay_factory(jwt_secret=SECRET, reconnect_grace_ms=round(500 * MS * 1000))
    watcher = await client_factory(r)
    await watcher.hello("w", token=mint_token(SECRET, "w", "W", "w", ["*"], 600))
    await watcher.join(1, "d")
    c = await client_factory(r)
    exp = time.time() + 1.5
    token = jwt.encode(
        {"sub": "ann", "docs": ["*"], "exp": int(exp) + 1}, SECRET, algorithm="HS256"
    )
    deadline = int(exp) + 1
    assert (await c.hello("ignored", token=token))[0] == p.WELCOME
    sid = (await c.join(1, "d"))[3]
    with pytest.raises(ConnectionClosed):
        await c.recv_until(lambda f: False, timeout=5000 * MS)
    assert c.ws.close_code == p.CLOSE_UNAUTHENTICATED
    assert c.ws.close_reason == "token expired"
    assert abs(time.time() - deadline) < 1.0, "closed at exp, not before, not much after"
    # Held for the grace (a resume with a fresh token would keep it), then EVICTED.
    held = await watcher.recv_until(lambda f: f[0] == 34 and [6, sid, 5] in f[3])
    assert held
    left = await watcher.recv_until(lambda f: f[0] == 34 and [3, sid, p.EVICTED] in f[3])
    assert left


async def test_join_is_checked_against_the_token_as_it_stands(
    relay_factory: Any,
    client_factory: Any,
) -> None:
    """A JOIN after `exp` is refused even if the expiry timer has not fired yet (here the
    relay's clock runs ahead of the timer)."""
    r = await relay_factory(jwt_secret=SECRET)
    c = await client_factory(r)
    token = mint_token(SECRET, "ann", "Ann", "w", ["*"], 60)
    assert (await c.hello("ignored", token=token))[0] == p.WELCOME
    assert (await c.join(1, "d"))[0] == p.JOINED
    r.hub.clock = lambda: wall_ms() + 120_000
    await c.send([2, 2, "e"])
    with pytest.raises(ConnectionClosed):
        await c.recv_until(lambda f: False, timeout=3000 * MS)
    assert c.ws.close_code == p.CLOSE_UNAUTHENTICATED
    assert "e" not in r.hub.documents


async def test_anonymous_mode_refuses_proxied_handshakes(relay: Any) -> None:
    """Without a secret the relay trusts "the caller is on loopback"; a proxy on the same
    host would make every remote caller look local."""
    for header in (
        "Forwarded: for=203.0.113.9",
        "X-Forwarded-For: 203.0.113.9",
        "X-Real-IP: 203.0.113.9",
    ):
        s = await RawSocket.open(relay.port, extra_headers=header + "\r\n")
        assert s.status == 403, header
        s.close()
    assert (await RawSocket.open(relay.port)).status == 101


async def test_proxied_handshakes_are_fine_with_tokens(relay_factory: Any) -> None:
    r = await relay_factory(jwt_secret=SECRET)
    s = await RawSocket.open(r.port, extra_headers="X-Forwarded-For: 203.0.113.9\r\n")
    assert s.status == 101
    s.close()


async def test_refused_hellos_are_logged_at_a_bounded_rate(
    relay_factory: Any,
    client_factory: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    r = await relay_factory(jwt_secret=SECRET)
    with caplog.at_level("INFO", logger="relay.connection"):
        for _ in range(40):
            c = await client_factory(r)
            await c.send([1, 1, "not-a-token", {"sdk": "t"}])
            with pytest.raises(ConnectionClosed):
                await c.recv()
    refused = [rec for rec in caplog.records if "refused HELLO" in rec.getMessage()]
    assert 1 <= len(refused) <= 20


async def test_no_token_or_query_string_is_logged_at_debug(
    relay_factory: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """At log_level debug too: websockets' own debug lines (request lines, frames) would
    carry them, so websockets never logs below INFO."""
    from websockets.asyncio.client import connect

    r = await relay_factory(jwt_secret=SECRET, log_level="debug")
    good = mint_token(SECRET, "ann", "Ann", "w", ["*"], 60)
    bad = mint_token("another-secret-0123456789abcdef012345", "eve", "Eve", "w", ["*"], 60)
    with caplog.at_level("DEBUG"):
        for token in (good, bad):
            # in the HELLO, and in the query string (the way some clients send it)
            async with connect(
                f"ws://127.0.0.1:{r.port}/ws?token={token}", subprotocols=["presence.v1"]
            ) as ws:  # type: ignore[list-item]
                await ws.send(p.pack([1, 1, token, {"sdk": "t"}]))
                with pytest.raises((ConnectionClosed, TimeoutError)):
                    while True:
                        await asyncio.wait_for(ws.recv(), 500 * MS)
    # (the test's own client logs its request line: only the relay's lines count)
    relay_lines = "\n".join(
        rec.getMessage() for rec in caplog.records if not rec.name.startswith("websockets.client")
    )
    assert "connection open" in relay_lines, "the relay logged nothing at all?"
    for token in (good, bad):
        for part in token.split("."):
            assert part not in relay_lines
