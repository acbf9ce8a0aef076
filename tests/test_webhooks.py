"""Webhooks (docs/webhooks.md) against a real loopback HTTP endpoint: signed, user-level,
retried, at least once across a restart, once with two nodes, never in presence's way."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from helpers import (
    EV_CURSOR,
    MS,
    RawClient,
    RelayProcess,
    eventually,
    free_port,
    http_get,
    joined,
    wait_event,
)
from websockets.asyncio.client import connect
from websockets.typing import Subprotocol

from relay.config import PresenceConfig, load_config
from relay.core import protocol as p
from relay.exceptions import ConfigError
from relay.server.app import Relay
from relay.server.webhook_stream import GROUP, lease_key, state_key
from relay.server.webhooks import sign

pytestmark = pytest.mark.timeout(90)

SECRET = "webhook-test-secret-0123456789"
STREAM = "materi:events:presence"


@dataclass
class Request:
    at_ms: int  # wall clock when the body was read
    path: str
    headers: dict[str, str]
    body: bytes
    status: int  # what the endpoint answered

    @property
    def event(self) -> dict[str, Any]:
        return json.loads(self.body)  # type: ignore[no-any-return]


class Receiver:
    """A small HTTP/1.1 server on loopback (keep-alive) that records every POST and answers
    `status`, after `delay` seconds; `stop()` closes it (connections are refused)."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.status = 200
        self.delay = 0.0
        self.port = free_port()
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/presence?tenant=t1"

    async def start(self) -> None:
        self.server = await asyncio.start_server(
            self._serve, "127.0.0.1", self.port, reuse_address=True
        )

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            for w in list(self.writers):
                w.close()
            with contextlib.suppress(Exception):
                await self.server.wait_closed()
            self.server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode().split("\r\n")
                method, target, _ = lines[0].split(" ")
                headers = {}
                for line in lines[1:]:
                    if line:
                        k, _, v = line.partition(":")
                        headers[k.strip().lower()] = v.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                assert method == "POST"
                status = self.status
                self.requests.append(
                    Request(int(time.time() * 1000), target, headers, body, status)
                )
                if self.delay:
                    await asyncio.sleep(self.delay)
                writer.write(f"HTTP/1.1 {status} X\r\nContent-Length: 3\r\n\r\nok\n".encode())
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.writers.discard(writer)
            writer.close()

    def delivered(self) -> list[dict[str, Any]]:
        """The events answered with a 2xx, in arrival order."""
        return [r.event for r in self.requests if 200 <= r.status < 300]

    def delivered_ids(self) -> Counter[str]:
        return Counter(e["id"] for e in self.delivered())

    def of(self, kind: str, **match: Any) -> list[dict[str, Any]]:
        return [
            e
            for e in self.delivered()
            if e["type"] == kind and all(e.get(k) == v for k, v in match.items())
        ]

    async def wait(self, check: Callable[[], Any], timeout: float = 5000 * MS) -> None:
        assert await eventually(check, timeout), self.summary()

    def summary(self) -> str:
        return "\n".join(f"{r.status} {r.body.decode()}" for r in self.requests)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    await r.start()
    yield r
    await r.stop()


def verify(secret: str, req: Request, tolerance_ms: int = 300_000) -> bool:
    """What docs/webhooks.md tells a receiver to do."""
    sig = req.headers["x-presence-signature"]
    parts = dict(item.split("=", 1) for item in sig.split(","))
    t = int(parts["t"])
    want = hmac.new(secret.encode(), f"{t}.".encode() + req.body, hashlib.sha256).hexdigest()
    fresh = abs(time.time() * 1000 - t) <= tolerance_ms
    return fresh and hmac.compare_digest(want, parts["v1"])


def documented_verify() -> Callable[[bytes, bytes, str], bool]:
    """The receiver's `verify` as docs/webhooks.md prints it (run as it is)."""
    doc = (Path(__file__).resolve().parent.parent / "docs" / "webhooks.md").read_text()
    section = doc.split("## Verifying a request", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    scope: dict[str, Any] = {}
    exec(code, scope)
    return scope["verify"]  # type: ignore[no-any-return]


def hooks(receiver: Receiver, **kw: Any) -> dict[str, Any]:
    kw.setdefault("webhook_urls", receiver.url)
    kw.setdefault("webhook_secret", SECRET)
    return kw


def kinds(events: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    return [
        (e["type"], e["document_id"], e.get("user_id"), e.get("reason"))
        if "user_id" in e
        else (e["type"], e["document_id"])
        for e in events
    ]


# ---------------------------------------------------------------- memory backend


async def test_user_level_events_signed_once_each(
    receiver: Receiver, relay_factory: Callable[..., Any], client_factory: Callable[..., Any]
) -> None:
    r = await relay_factory(**hooks(receiver), reconnect_grace_ms=400)
    ann1 = await client_factory(r, "ann")
    ann2 = await client_factory(r, "ann")
    bob = await client_factory(r)
    token = (await bob.hello("bob"))[5]["resume_token"]
    await joined(ann1, 1, "doc-a")
    await receiver.wait(lambda: len(receiver.delivered()) == 2)
    await joined(ann2, 1, "doc-a")  # a second tab: no user.joined
    sid_b, _ = await joined(bob, 1, "doc-a")
    await receiver.wait(lambda: receiver.of("user.joined", user_id="bob"))
    # bob's connection is lost and he resumes within the grace: not a leave.
    bob.ws.transport.abort()
    await wait_event(ann1, lambda e: e == [p.EV_ACTIVITY, sid_b, 5])
    again = await client_factory(r)
    assert (await again.hello("bob", resume=token))[5]["resumed"] is True
    # ann closes one tab: she is still there.
    await ann1.send([p.LEAVE, 1])
    await wait_event(ann2, lambda e: e[0] == p.EV_LEFT)
    again.ws.transport.abort()  # lost for good this time: LOST after the grace
    await receiver.wait(lambda: receiver.of("user.left", user_id="bob"))
    await ann2.ws.close()  # her last tab: LEFT, and the document is empty
    await receiver.wait(lambda: receiver.of("document.empty"))
    await asyncio.sleep(100 * MS)  # nothing else follows

    assert kinds(receiver.delivered()) == [
        ("document.active", "doc-a"),
        ("user.joined", "doc-a", "ann", None),
        ("user.joined", "doc-a", "bob", None),
        ("user.left", "doc-a", "bob", "LOST"),
        ("user.left", "doc-a", "ann", "LEFT"),
        ("document.empty", "doc-a"),
    ]
    assert all(n == 1 for n in receiver.delivered_ids().values())
    for req in receiver.requests:
        ev = req.event
        assert verify(SECRET, req), req.headers
        assert not verify("another-secret-of-16-bytes", req)
        assert req.path == "/hooks/presence?tenant=t1"
        assert req.headers["content-type"] == "application/json"
        assert req.headers["x-presence-event"] == ev["type"]
        assert req.headers["x-presence-delivery"] == ev["id"]
        assert ev["workspace_id"] == "default"
        assert set(ev) == {"id", "type", "document_id", "workspace_id", "at"} | (
            {"user_id"} if ev["type"].startswith("user.") else set()
        ) | ({"reason"} if ev["type"] == "user.left" else set())
        assert 0 <= req.at_ms - ev["at"] < 5000
    # The recipe of docs/webhooks.md agrees; a tampered body, another key or an old `t` fail.
    doc_verify = documented_verify()
    for req in receiver.requests:
        assert doc_verify(SECRET.encode(), req.body, req.headers["x-presence-signature"])
    forged = receiver.requests[0]
    sig = forged.headers["x-presence-signature"]
    assert not doc_verify(SECRET.encode(), forged.body.replace(b"doc-a", b"doc-b"), sig)
    assert not doc_verify(b"another-secret-of-16-bytes", forged.body, sig)
    old = sign(SECRET.encode(), int(time.time() * 1000) - 600_000, forged.body)
    assert not doc_verify(SECRET.encode(), forged.body, old)
    forged.body = forged.body.replace(b"doc-a", b"doc-b")
    assert not verify(SECRET, forged)

    status, text = await http_get(r.port, "/metrics")
    assert status == 200
    label = f'endpoint="http://127.0.0.1:{receiver.port}/hooks/presence"'
    assert f"presence_relay_webhooks_delivered_total{{{label}}} 6.0" in text.decode()


async def test_redelivered_after_the_endpoint_was_down(
    receiver: Receiver, relay_factory: Callable[..., Any], client_factory: Callable[..., Any]
) -> None:
    """Refusing connections for 10 s, then answering 500 twice: every event arrives, in
    order, with its id, after the endpoint is back (backoff 0.5 s doubling, capped at 2 s:
    the default 1 s..60 s schedule would make the test wait a minute)."""
    r = await relay_factory(
        **hooks(receiver), webhook_backoff_ms=500, webhook_backoff_max_ms=2000,
        webhook_max_attempts=100,
    )  # fmt: skip
    await receiver.stop()
    down = time.monotonic()
    ann = await client_factory(r, "ann")
    bob = await client_factory(r, "bob")
    await joined(ann, 1, "doc-d")
    await joined(bob, 1, "doc-d")
    await bob.ws.close()
    # Presence does not wait for the endpoint.
    await wait_event(ann, lambda e: e[0] == p.EV_LEFT, 1000 * MS)
    await asyncio.sleep(max(0.0, 10_000 * MS - (time.monotonic() - down)))
    queued = r.webhooks.endpoints[0].depth()
    assert queued == 4, queued  # document.active, 2 x user.joined, user.left
    failures = r.webhooks.endpoints[0].stats.failed_attempts
    assert failures >= 5, failures  # it kept trying meanwhile (0, 0.5, 1.5, 3.5, 5.5, ...)
    receiver.status = 500
    await receiver.start()
    await receiver.wait(lambda: len(receiver.requests) >= 2, 8000 * MS)
    receiver.status = 200
    await receiver.wait(lambda: len(receiver.delivered()) == 4, 8000 * MS)
    assert kinds(receiver.delivered()) == [
        ("document.active", "doc-d"),
        ("user.joined", "doc-d", "ann", None),
        ("user.joined", "doc-d", "bob", None),
        ("user.left", "doc-d", "bob", "LEFT"),
    ]
    first = receiver.requests[0]
    retried = [q for q in receiver.requests if q.event["id"] == first.event["id"]]
    assert [q.status for q in retried][:2] == [500, 500] and retried[-1].status == 200
    assert len({q.headers["x-presence-signature"] for q in retried}) == len(retried)
    assert all(verify(SECRET, q) for q in receiver.requests)
    assert [q.headers["x-presence-attempt"] for q in retried][-1] != "1"


async def test_a_slow_endpoint_never_delays_presence(
    receiver: Receiver, relay_factory: Callable[..., Any], client_factory: Callable[..., Any]
) -> None:
    receiver.delay = 5.0
    r = await relay_factory(**hooks(receiver), webhook_timeout_ms=20_000)
    ann = await client_factory(r, "ann")
    bob = await client_factory(r, "bob")
    await joined(ann, 1, "doc-s")
    sid_b, _ = await joined(bob, 1, "doc-s")
    await receiver.wait(lambda: receiver.requests, 2000 * MS)  # one POST hangs for 5 s
    for i in range(10):
        t0 = time.monotonic()
        await bob.send([p.CURSOR, 1, i, i, i])
        t1, _ = await wait_event(ann, lambda e, i=i: e[:3] == [EV_CURSOR, sid_b, i], 1000 * MS)
        assert t1 - t0 < 0.5
    assert len(receiver.requests) == 1, "still in the first, slow, request"
    assert r.webhooks.endpoints[0].depth() == 3


# ---------------------------------------------------------------- bad inputs


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"webhook_urls": "http://127.0.0.1:9/x"}, "webhook_secret"),  # no secret
        ({"webhook_urls": "http://127.0.0.1:9/x", "webhook_secret": "short"}, "webhook_secret"),
        ({"webhook_urls": "ftp://hooks.example/x", "webhook_secret": SECRET}, "webhook_urls"),
        ({"webhook_urls": "hooks.example/x", "webhook_secret": SECRET}, "webhook_urls"),
        ({"webhook_urls": "https:///x", "webhook_secret": SECRET}, "webhook_urls"),
        ({"webhook_urls": "https://u:pw@hooks.example/", "webhook_secret": SECRET}, "webhook_urls"),
        ({"webhook_urls": "http://hooks.example:99999/", "webhook_secret": SECRET}, "webhook_urls"),
        ({"webhook_urls": "http://a.example/ x", "webhook_secret": SECRET}, "webhook_urls"),
        ({"webhook_urls": " , ", "webhook_secret": SECRET}, "webhook_urls"),
        ({"webhook_urls": "http://a.example/,http://a.example/", "webhook_secret": SECRET},
         "webhook_urls"),
        ({"webhook_timeout_ms": 0}, "webhook_timeout_ms"),
        ({"webhook_max_attempts": 0}, "webhook_max_attempts"),
        ({"webhook_queue_max": 0}, "webhook_queue_max"),
        ({"webhook_backoff_ms": 5}, "webhook_backoff_ms"),
        ({"webhook_secret": SECRET, "webhook_secret_file": "/nonexistent"}, "webhook_secret"),
        ({"webhook_secret_file": "/nonexistent/secret"}, "webhook_secret_file"),
    ],
)  # fmt: skip
def test_bad_settings_are_refused_naming_the_setting(settings: dict[str, Any], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        Relay(PresenceConfig(**settings))


def test_settings_from_the_environment_and_a_secret_file(tmp_path: Any) -> None:
    path = tmp_path / "hook.secret"
    path.write_text(SECRET + "\n")
    c = load_config(
        env={
            "PRESENCE_WEBHOOK_URLS": "https://a.example/h, http://127.0.0.1:8080/h?x=1",
            "PRESENCE_WEBHOOK_SECRET_FILE": str(path),
            "PRESENCE_WEBHOOK_MAX_ATTEMPTS": "3",
        }
    )
    assert c.webhook_secret == SECRET
    assert c.webhook_url_list == ["https://a.example/h", "http://127.0.0.1:8080/h?x=1"]
    assert c.webhook_max_attempts == 3
    assert load_config(env={}).webhook_url_list == []


def test_the_cli_refuses_webhooks_without_a_secret(capsys: pytest.CaptureFixture[str]) -> None:
    from relay import cli

    rc = cli.main(["serve", "--port", "0", "--webhook-urls", "http://127.0.0.1:9/hook"])
    assert rc == 2
    assert "webhook_secret" in capsys.readouterr().err


def test_the_signature_recipe() -> None:
    """The example in docs/webhooks.md, byte for byte."""
    body = b'{"id":"1733500000000-0:user.joined","type":"user.joined"}'
    assert sign(b"0123456789abcdef", 1733500000123, body) == (
        "t=1733500000123,v1="
        + hmac.new(b"0123456789abcdef", b"1733500000123." + body, hashlib.sha256).hexdigest()
    )


# ---------------------------------------------------------------- Redis: the stream


@pytest.fixture
async def rds(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    r = aioredis.from_url(redis_url)
    yield r
    await r.aclose()


async def stream_has(rds: aioredis.Redis, n: int) -> bool:
    return int(await rds.xlen(STREAM)) >= n


async def test_two_nodes_send_each_event_once(
    receiver: Receiver,
    relay_factory: Callable[..., Any],
    client_factory: Callable[..., Any],
    redis_url: str,
    rds: aioredis.Redis,
) -> None:
    kw = hooks(receiver, redis_url=redis_url, reconnect_grace_ms=0, presence_ttl_seconds=5)
    r1 = await relay_factory(**kw)
    r2 = await relay_factory(**kw)
    # ann in two tabs, one on each node; bob and cy on the second node; doc-y on the first.
    ann1 = await client_factory(r1, "ann")
    ann2 = await client_factory(r2, "ann")
    bob = await client_factory(r2, "bob")
    cy = await client_factory(r1, "cy")
    await joined(ann1, 1, "doc-x")
    await receiver.wait(lambda: len(receiver.delivered()) == 2)
    await joined(ann2, 1, "doc-x")
    await joined(bob, 1, "doc-x")
    await joined(cy, 1, "doc-y")
    await receiver.wait(lambda: len(receiver.delivered()) == 5)
    await ann1.ws.close()  # one of ann's tabs: nothing
    await eventually(lambda: stream_has(rds, 5))
    await bob.send([p.LEAVE, 1])
    await receiver.wait(lambda: receiver.of("user.left", user_id="bob"))
    for c in (ann2, cy):
        await c.ws.close()
    await receiver.wait(lambda: len(receiver.of("document.empty")) == 2)
    await asyncio.sleep(300 * MS)  # a duplicate would show up by now

    got = receiver.delivered()
    assert len(got) == len(receiver.requests) == 10, receiver.summary()
    assert all(n == 1 for n in receiver.delivered_ids().values())
    x = [k for k in kinds(got) if k[1] == "doc-x"]
    assert x == [
        ("document.active", "doc-x"),
        ("user.joined", "doc-x", "ann", None),
        ("user.joined", "doc-x", "bob", None),
        ("user.left", "doc-x", "bob", "LEFT"),
        ("user.left", "doc-x", "ann", "LEFT"),
        ("document.empty", "doc-x"),
    ]
    assert sorted(k for k in kinds(got) if k[1] == "doc-y") == [
        ("document.active", "doc-y"),
        ("document.empty", "doc-y"),
        ("user.joined", "doc-y", "cy", None),
        ("user.left", "doc-y", "cy", "LEFT"),
    ]
    entry_ids = {e.decode() for e, _ in await rds.xrange(STREAM)}
    assert all(ev["id"].rpartition(":")[0] in entry_ids for ev in got)
    assert all(verify(SECRET, q) for q in receiver.requests)
    # Everything acked, nothing left of the state.
    await eventually(lambda: _pending(rds, 0))
    assert await _pending(rds, 0)
    assert not await rds.exists(state_key("doc-x"), state_key("doc-y"))
    assert sum(1 for r in (r1, r2) if r.webhooks.source.leader) == 1  # type: ignore[union-attr]


async def _pending(rds: aioredis.Redis, n: int) -> bool:
    info = await rds.xpending(STREAM, GROUP)
    return int(info["pending"]) == n


async def test_none_lost_across_a_relay_restart(
    receiver: Receiver,
    relay_factory: Callable[..., Any],
    client_factory: Callable[..., Any],
    redis_url: str,
    rds: aioredis.Redis,
) -> None:
    """The endpoint fails (503) while the first relay runs and stops, so everything it read
    is pending; another relay on the same Redis delivers every event, with the same ids.
    (A kill while a POST is in flight: test_a_killed_relay_loses_no_event.)"""
    kw = hooks(
        receiver, redis_url=redis_url, reconnect_grace_ms=0, presence_ttl_seconds=5,
        webhook_backoff_ms=200, webhook_backoff_max_ms=400,
    )  # fmt: skip
    receiver.status = 503
    r1 = await relay_factory(**kw)
    ann = await client_factory(r1, "ann")
    bob = await client_factory(r1, "bob")
    await joined(ann, 1, "doc-r")
    await joined(bob, 1, "doc-r")
    await joined(bob, 2, "doc-q")
    await eventually(lambda: stream_has(rds, 3))
    await bob.send([p.LEAVE, 2])
    await eventually(lambda: stream_has(rds, 4))
    await receiver.wait(lambda: len(receiver.requests) >= 3)
    await r1.stop()  # ann and bob leave with it (SHUTDOWN)
    tried = {q.event["id"] for q in receiver.requests}
    # Read, not delivered: pending in the group (the SHUTDOWN entries too, if r1 read them).
    assert 4 <= int((await rds.xpending(STREAM, GROUP))["pending"]) <= 6
    assert not await rds.exists(lease_key(STREAM)), "the stopping relay gave the lease back"

    receiver.status = 200
    await relay_factory(**kw)
    await receiver.wait(lambda: len(receiver.of("document.empty")) == 2)
    await asyncio.sleep(200 * MS)
    got = receiver.delivered()
    assert sorted(kinds(got)) == sorted(
        [
            ("document.active", "doc-r"),
            ("user.joined", "doc-r", "ann", None),
            ("user.joined", "doc-r", "bob", None),
            ("document.active", "doc-q"),
            ("user.joined", "doc-q", "bob", None),
            ("user.left", "doc-q", "bob", "LEFT"),
            ("document.empty", "doc-q"),
            ("user.left", "doc-r", "ann", "SHUTDOWN"),
            ("user.left", "doc-r", "bob", "SHUTDOWN"),
            ("document.empty", "doc-r"),
        ]
    ), receiver.summary()
    assert tried <= set(receiver.delivered_ids()), "the same ids after the restart"
    assert all(n == 1 for n in receiver.delivered_ids().values())
    # One id, one body, whoever sent it.
    bodies: dict[str, set[bytes]] = {}
    for q in receiver.requests:
        bodies.setdefault(q.event["id"], set()).add(q.body)
    assert all(len(b) == 1 for b in bodies.values())
    await eventually(lambda: _pending(rds, 0))


async def test_a_killed_relay_loses_no_event(
    receiver: Receiver,
    relay_factory: Callable[..., Any],
    client_factory: Callable[..., Any],
    redis_url: str,
    rds: aioredis.Redis,
) -> None:
    """kill -9 of the reading relay with events in flight: the other node takes the lease
    over when it runs out, claims the pending entries and delivers them (and the reaper's
    `left` of the dead node's members)."""
    receiver.status = 500
    proc = RelayProcess(
        "--redis-url", redis_url, "--presence-ttl-seconds", "2", "--reconnect-grace-ms", "0",
        "--webhook-urls", receiver.url, "--webhook-secret", SECRET, "--webhook-backoff-ms",
        "100", "--webhook-backoff-max-ms", "200",
    )  # fmt: skip
    try:
        await proc.ready()
        ws = await connect(
            f"ws://127.0.0.1:{proc.port}/ws", subprotocols=[Subprotocol("presence.v1")],
            compression=None,
        )  # fmt: skip
        ann = RawClient(ws)
        await ann.hello("ann")
        await joined(ann, 1, "doc-k")
        await receiver.wait(lambda: len(receiver.requests) >= 2, 5000 * MS)
        proc.proc.kill()
        proc.proc.wait(5)
        with contextlib.suppress(Exception):
            await ws.close()
        receiver.status = 200
        await relay_factory(
            **hooks(receiver, redis_url=redis_url, presence_ttl_seconds=2, reconnect_grace_ms=0)
        )
        await receiver.wait(lambda: receiver.of("document.empty"), 15000 * MS)
        assert kinds(receiver.delivered()) == [
            ("document.active", "doc-k"),
            ("user.joined", "doc-k", "ann", None),
            ("user.left", "doc-k", "ann", "NODE_DOWN"),
            ("document.empty", "doc-k"),
        ], receiver.summary()
        tried = {q.event["id"] for q in receiver.requests if q.status == 500}
        assert tried <= set(receiver.delivered_ids())
    finally:
        proc.kill()


async def test_redelivered_and_repeated_entries_change_nothing(
    receiver: Receiver,
    relay_factory: Callable[..., Any],
    client_factory: Callable[..., Any],
    redis_url: str,
    rds: aioredis.Redis,
) -> None:
    """Entries announced twice (a retried flush), an entry of an older node (no sid), and
    a `left` of a session never seen: none yields an event."""
    r = await relay_factory(**hooks(receiver, redis_url=redis_url, reconnect_grace_ms=0))
    ann = await client_factory(r, "ann")
    sid, _ = await joined(ann, 1, "doc-i")
    await receiver.wait(lambda: len(receiver.delivered()) == 2)
    base = {"user_id": "ann", "document_id": "doc-i", "workspace_id": "default"}
    now = str(int(time.time() * 1000))
    await rds.xadd(STREAM, {"type": "joined", **base, "timestamp": now, "sid": str(sid)})
    await rds.xadd(STREAM, {"type": "joined", **base, "timestamp": now})  # an old node's
    await rds.xadd(
        STREAM, {"type": "left", **base, "timestamp": now, "sid": "999", "reason": "LOST"}
    )
    await eventually(lambda: _pending(rds, 0))
    await ann.ws.close()
    await receiver.wait(lambda: receiver.of("document.empty"))
    # The real left, written twice (a flush retried after a lost reply).
    await rds.xadd(
        STREAM, {"type": "left", **base, "timestamp": now, "sid": str(sid), "reason": "LEFT"}
    )
    await eventually(lambda: _pending(rds, 0))
    await asyncio.sleep(100 * MS)
    assert kinds(receiver.delivered()) == [
        ("document.active", "doc-i"),
        ("user.joined", "doc-i", "ann", None),
        ("user.left", "doc-i", "ann", "LEFT"),
        ("document.empty", "doc-i"),
    ]
    assert r.webhooks.source.skipped == 1  # type: ignore[union-attr]
