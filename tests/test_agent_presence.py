"""`presence_client.AgentPresence`: an agent kept present over the relay's HTTP API, against
a real in-process relay watched by a real WebSocket client (and, for the answers a relay
gives only when something goes wrong, a scripted HTTP server in this file)."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from helpers import MS, RawClient, free_port
from presence_client import AgentPresence, AgentPresenceError

from relay.core import protocol as p

pytestmark = pytest.mark.timeout(60)

DOC = "doc-agent-sdk"
KEY = "agent-sdk-test-key-0123456789"
WAIT_S = 5000 * MS  # the bound on every wait for something that must come


def url(port: int) -> str:
    return f"http://127.0.0.1:{port}"


def events(frame: list[Any], code: int) -> list[list[Any]]:
    return [e for e in frame[3] if e[0] == code] if frame[0] == p.BATCH else []


class Watch:
    """A WebSocket member of DOC: the events it got, taken in order by `next`."""

    def __init__(self, c: RawClient) -> None:
        self.c = c
        self.pending: list[list[Any]] = []

    async def next(self, code: int, pred: Any = lambda e: True) -> list[Any]:
        """The first event of `code` matching `pred` not taken yet (bounded wait)."""
        async with asyncio.timeout(WAIT_S):
            while True:
                for i, e in enumerate(self.pending):
                    if e[0] == code and pred(e):
                        del self.pending[i]
                        return e
                frame = await self.c.recv(WAIT_S)
                if frame[0] == p.BATCH:
                    self.pending.extend(frame[3])

    async def joined(self, member_id: str) -> list[Any]:
        """The MEMBER of `member_id`'s next `joined`."""
        e = await self.next(p.EV_JOINED, lambda e: e[1][1] == member_id)
        return e[1]  # type: ignore[no-any-return]

    async def of(self, code: int, sid: int) -> list[Any]:
        return await self.next(code, lambda e: e[1] == sid)


async def watcher(r: Any, client_factory: Any) -> Watch:
    ann: RawClient = await client_factory(r, "ann")
    await ann.join(0, DOC)
    return Watch(ann)


async def until(pred: Any, what: str) -> None:
    """Poll `pred` (cheap, local) until it holds; bounded."""
    try:
        async with asyncio.timeout(WAIT_S):
            while not pred():
                await asyncio.sleep(10 * MS)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


# ---------------------------------------------------------------- against a real relay


async def test_an_agent_joins_moves_types_sets_its_status_and_leaves(
    relay_factory: Any, client_factory: Any
) -> None:
    r = await relay_factory(batch_ms=20)
    ann = await watcher(r, client_factory)
    async with AgentPresence(
        url(r.port), DOC, "review-bot", name="Reviewer", status="reading"
    ) as a:
        member = await ann.joined("review-bot")
        sid = a.sid
        assert member[0] == sid and member[2] == "Reviewer" and member[13] == p.KIND_AGENT
        assert await ann.of(p.EV_STATUS, sid) == [8, sid, "reading"]
        assert a.expires_at > 0
        await a.move(12, 4, 318)
        assert await ann.of(p.EV_CURSOR, sid) == [1, sid, 12, 4, 318]
        await a.move(12, 9, 323, selection=(12, 4, 318, False))
        moved = await ann.of(p.EV_CURSOR, sid)
        assert moved == [1, sid, 12, 9, 323, 12, 4, 318, False]
        await a.set_status("thinking")
        assert await ann.of(p.EV_STATUS, sid) == [8, sid, "thinking"]
        await a.typing(True)
        assert await ann.of(p.EV_TYPING, sid) == [4, sid, True]
        await a.set_viewport(0, 40, 12.5)
        assert await ann.of(p.EV_VIEWPORT, sid) == [5, sid, 0, 40, 12.5]
        await a.set_status(None)
        assert await ann.of(p.EV_STATUS, sid) == [8, sid, None]
        await a.clear_cursor()
        assert await ann.of(p.EV_CURSOR, sid) == [1, sid]
    assert await ann.of(p.EV_LEFT, sid) == [3, sid, p.LEFT]
    with pytest.raises(RuntimeError):
        await a.move(1, 1, 1)  # closed


async def test_renewals_keep_a_one_second_ttl_alive(
    relay_factory: Any, client_factory: Any
) -> None:
    r = await relay_factory(batch_ms=20)
    ann = await watcher(r, client_factory)
    async with AgentPresence(url(r.port), DOC, "review-bot", name="Reviewer", ttl_s=1) as a:
        assert a.renew_every_s == 0.5
        sid, first_expiry = a.sid, a.expires_at
        await ann.joined("review-bot")
        frames = await ann.c.quiet(3000 * MS)  # three times its TTL, no call made
        assert not [e for f in frames for e in events(f, p.EV_LEFT)]
        assert not [e for e in ann.pending if e[0] == p.EV_LEFT]
        assert a.sid == sid and a.expires_at > first_expiry  # renewed, the same member
    assert await ann.of(p.EV_LEFT, sid) == [3, sid, p.LEFT]


async def test_the_api_key(relay_factory: Any, client_factory: Any) -> None:
    r = await relay_factory(batch_ms=20, internal_api_key=KEY)
    for key in (None, "not-the-key"):
        with pytest.raises(AgentPresenceError) as refused:
            async with AgentPresence(url(r.port), DOC, "review-bot", name="R", api_key=key):
                raise AssertionError("entered without the key")
        assert refused.value.status == 401 and refused.value.field is None
    ann = await watcher(r, client_factory)
    async with AgentPresence(url(r.port), DOC, "review-bot", name="R", api_key=KEY) as a:
        assert (await ann.joined("review-bot"))[0] == a.sid
        await a.set_status("with the key")
    assert await ann.of(p.EV_LEFT, a.sid) == [3, a.sid, p.LEFT]


async def test_a_400_names_the_field(relay_factory: Any, client_factory: Any) -> None:
    r = await relay_factory(batch_ms=20)
    ann = await watcher(r, client_factory)
    with pytest.raises(AgentPresenceError) as bad:  # at enter: nothing joins
        async with AgentPresence(url(r.port), DOC, "early-bot", name="R", status="s" * 65):
            raise AssertionError("entered with a bad status")
    assert bad.value.status == 400 and bad.value.field == "status" and bad.value.message
    async with AgentPresence(url(r.port), DOC, "review-bot", name="R") as a:
        assert (await ann.joined("review-bot"))[0] == a.sid  # (not early-bot: it never joined)
        with pytest.raises(AgentPresenceError) as bad:
            await a.set_status("s" * 65)
        assert bad.value.status == 400 and bad.value.field == "status"
        with pytest.raises(AgentPresenceError) as bad:
            await a.set_viewport(10, 5, 0.0)
        assert bad.value.status == 400 and bad.value.field == "viewport"
        await a.set_status("s" * 64)  # still present, still usable
        assert await ann.of(p.EV_STATUS, a.sid) == [8, a.sid, "s" * 64]
    # What the SDK checks itself, before any request.
    for kw in ({"ttl_s": 0}, {"ttl_s": 3601}, {"ttl_s": 1.5}, {"name": ""}):
        with pytest.raises(ValueError):
            AgentPresence(url(r.port), DOC, "bot", **{"name": "R", **kw})
    with pytest.raises(ValueError):
        AgentPresence(f"ws://127.0.0.1:{r.port}/ws", DOC, "bot", name="R")


async def test_a_429_is_retried_once_then_raised(relay_factory: Any) -> None:
    r = await relay_factory(batch_ms=20, agent_puts_per_s=0.1, agent_puts_burst=3)
    async with AgentPresence(url(r.port), DOC, "review-bot", name="R") as a:  # (free)
        for col in range(3):  # the burst
            await a.move(1, col, col)
        with pytest.raises(AgentPresenceError) as limited:  # a token comes every 10 s
            await a.move(1, 3, 3)
        assert limited.value.status == 429
    # (the DELETE is not rate limited: the exit worked, the member is gone)
    assert r.hub.agents.of(DOC, "review-bot") is None


async def test_a_forgotten_member_is_created_again_with_its_state(
    relay_factory: Any, client_factory: Any
) -> None:
    """Its TTL ran out while the relay was unreachable, the relay restarted, someone deleted
    it: the next renewal creates it afresh, and the SDK gives it its cursor and status back."""
    r = await relay_factory(batch_ms=20)
    ann = await watcher(r, client_factory)
    async with AgentPresence(url(r.port), DOC, "review-bot", name="R", ttl_s=1) as a:
        first = (await ann.joined("review-bot"))[0]
        await a.move(7, 2, 90)
        await a.set_status("reviewing")
        await ann.of(p.EV_STATUS, first)
        assert await asyncio.to_thread(delete_member, r.port, "review-bot") == 204
        assert await ann.of(p.EV_LEFT, first) == [3, first, p.LEFT]
        sid = (await ann.joined("review-bot"))[0]  # (the next renewal, within 0.5 s)
        cursor = await ann.of(p.EV_CURSOR, sid)
        status = await ann.of(p.EV_STATUS, sid)
        assert cursor == [1, sid, 7, 2, 90] and status == [8, sid, "reviewing"]
        await until(lambda: a.sid == sid, "the new sid")
    assert await ann.of(p.EV_LEFT, sid) == [3, sid, p.LEFT]


def delete_member(port: int, member_id: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("DELETE", f"/internal/presence/{DOC}/members/{member_id}")
        return conn.getresponse().status
    finally:
        conn.close()


async def test_a_relay_stopped_mid_context_does_not_hang_the_exit(
    relay_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="presence_client.agent")
    r = await relay_factory(batch_ms=20)
    a = AgentPresence(url(r.port), DOC, "review-bot", name="R", ttl_s=1, timeout=2.0)
    async with asyncio.timeout(WAIT_S):
        await a.__aenter__()
    await r.stop()
    with pytest.raises(AgentPresenceError) as gone:
        await a.set_status("anyone there?")
    assert gone.value.status is None and isinstance(gone.value.__cause__, OSError)
    await until(lambda: "renewal failed" in caplog.text, "a renewal to fail")
    async with asyncio.timeout(WAIT_S):  # bounded, and no error: the TTL ends the member
        await a.__aexit__(None, None, None)
    assert "could not delete the member" in caplog.text


async def test_nobody_listening() -> None:
    port = free_port()
    with pytest.raises(AgentPresenceError) as refused:
        async with asyncio.timeout(WAIT_S), AgentPresence(url(port), DOC, "bot", name="R"):
            raise AssertionError("entered")
    assert refused.value.status is None and isinstance(refused.value.__cause__, OSError)


# ---------------------------------------------------------------- scripted answers


class ScriptedRelay:
    """An HTTP server answering the agent's requests with the statuses of `script`, in
    order; after that, 200 to a PUT and 204 to a DELETE. Records every request."""

    def __init__(self, *script: int) -> None:
        self.script = list(script)
        self.requests: list[tuple[str, dict[str, str], Any]] = []
        self.paths: list[str] = []
        self.server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return url(self.server.sockets[0].getsockname()[1])

    def count(self, method: str) -> int:
        return sum(1 for m, _, _ in self.requests if m == method)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(WAIT_S):
                head = (await reader.readuntil(b"\r\n\r\n")).decode()
                lines = head.split("\r\n")
                headers = {
                    k.strip().lower(): v.strip()
                    for k, _, v in (line.partition(":") for line in lines[1:] if line)
                }
                raw = await reader.readexactly(int(headers.get("content-length", "0")))
            method, path, _ = lines[0].split(" ")
            self.paths.append(path)
            self.requests.append((method, headers, json.loads(raw) if raw else None))
            status = self.script.pop(0) if self.script else (200 if method == "PUT" else 204)
            if status in (200, 201):
                body = json.dumps({"sid": len(self.requests), "expires_at": 1}).encode()
            elif status == 204:
                body = b""
            else:
                body = json.dumps({"error": f"scripted {status}"}).encode()
            writer.write(
                f"HTTP/1.1 {status} X\r\nConnection: close\r\n".encode()
                + (f"Content-Length: {len(body)}\r\n\r\n".encode() + body if body else b"\r\n")
            )
            await writer.drain()
        finally:
            writer.close()


@contextlib.asynccontextmanager
async def scripted(*script: int) -> AsyncIterator[ScriptedRelay]:
    fake = ScriptedRelay(*script)
    fake.server = await asyncio.start_server(fake.handle, "127.0.0.1", 0)
    try:
        yield fake
    finally:
        fake.server.close()


async def test_every_put_carries_name_ttl_and_key_and_a_429_is_retried() -> None:
    async with scripted(201, 429, 200) as fake:
        async with AgentPresence(
            fake.url, "my doc", "bot/1", name="R", api_key=KEY, ttl_s=30, avatar_url=None
        ) as a:
            await a.move(1, 2, 3)  # 429, then retried once: 200
            assert a.sid == 3
        assert [m for m, _, _ in fake.requests] == ["PUT", "PUT", "PUT", "DELETE"]
        assert set(fake.paths) == {"/internal/presence/my%20doc/members/bot%2F1"}
    for method, headers, body in fake.requests:
        assert headers["authorization"] == f"Bearer {KEY}"
        if method == "PUT":
            assert body["name"] == "R" and body["ttl_s"] == 30
    assert fake.requests[1][2] == fake.requests[2][2]  # the same PUT again
    assert fake.requests[2][2] == {"name": "R", "ttl_s": 30, "cursor": [1, 2, 3], "selection": None}


async def test_the_renewal_retries_transient_failures(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="presence_client.agent")
    async with scripted(201, 503, 503) as fake:
        async with AgentPresence(fake.url, DOC, "bot", name="R", ttl_s=1) as a:
            await until(lambda: fake.count("PUT") >= 4, "the renewal to succeed again")
            assert caplog.text.count("renewal failed") == 2
            await a.set_status("fine")  # nothing sticks
        assert fake.requests[-1][0] == "DELETE"
    assert all(body == {"name": "R", "ttl_s": 1} for _, _, body in fake.requests[1:4])


@pytest.mark.parametrize("call_first", [True, False])
async def test_a_refused_renewal_stops_and_raises_at_the_next_call_or_exit(
    call_first: bool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="presence_client.agent")
    async with scripted(201, 401) as fake:
        a = AgentPresence(fake.url, DOC, "bot", name="R", ttl_s=1)
        await a.__aenter__()
        await until(lambda: "renewal refused" in caplog.text, "the renewal's 401")
        if call_first:
            with pytest.raises(AgentPresenceError) as stopped:
                await a.move(1, 1, 1)
            assert stopped.value.status == 401
            assert isinstance(stopped.value.__cause__, AgentPresenceError)
            await a.__aexit__(None, None, None)  # raised once already: not again
        else:
            with pytest.raises(AgentPresenceError) as stopped:
                await a.__aexit__(None, None, None)
            assert stopped.value.status == 401
        # no renewal after the 401 (nor the call), and the exit still deleted it
        assert [m for m, _, _ in fake.requests] == ["PUT", "PUT", "DELETE"]
