"""HTTP routes on the relay's port: health, readiness, metrics, internal presence queries."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from helpers import MS

from relay import implementation
from relay.server.app import Relay


async def http(
    r: Relay,
    method: str,
    path: str,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", r.port)
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), 5000 * MS)
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode().split("\r\n")
    hdrs = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
    return int(status_line.split()[1]), hdrs, body


async def test_healthz_and_readyz(relay: Relay) -> None:
    assert (await http(relay, "GET", "/healthz"))[0] == 200
    status, _, body = await http(relay, "GET", "/readyz")
    assert status == 200 and body == b"ready\n"


async def test_unknown_path_404_and_wrong_method_405(relay: Relay) -> None:
    assert (await http(relay, "GET", "/nope"))[0] == 404
    assert (await http(relay, "DELETE", "/healthz"))[0] == 405
    assert (await http(relay, "PUT", "/internal/presence/doc-1"))[0] == 405


async def test_ws_path_without_subprotocol_is_400_naming_versions(relay: Relay) -> None:
    status, _, body = await http(
        relay,
        "GET",
        "/ws",
        {
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
            "Sec-WebSocket-Protocol": "chat.v9",
        },
    )
    assert status == 400
    assert b"presence.v1" in body


async def test_metrics_expose_seed_metrics_and_implementation(
    relay: Relay,
    client_factory: Any,
) -> None:
    a = await client_factory(relay, "ann")
    b = await client_factory(relay, "bob")
    await a.join(1, "doc-1")
    await b.join(1, "doc-1")
    await b.send([4, 1, 1, 2, 3])
    await a.recv_until(lambda f: f[0] == 34 and any(e[0] == 1 for e in f[3]))
    status, hdrs, body = await http(relay, "GET", "/metrics")
    assert status == 200 and hdrs["content-type"].startswith("text/plain")
    text = body.decode()
    assert "materi_presence_active_users 2.0" in text
    assert 'materi_presence_updates_total{event_type="cursor"} 1.0' in text
    assert 'materi_cursor_update_latency_seconds_bucket{le="0.005"}' in text
    assert 'materi_cursor_update_latency_seconds_bucket{le="0.1"}' in text
    assert "materi_cursor_update_latency_seconds_count 1.0" in text
    impl = implementation()
    assert f'presence_relay_implementation_info{{implementation="{impl}"}} 1.0' in text
    assert "presence_relay_connections 2.0" in text
    assert "document_id=" not in text  # per-document labels are opt-in


async def test_metrics_per_document_is_opt_in(relay_factory: Any, client_factory: Any) -> None:
    r = await relay_factory(metrics_per_document=True)
    a = await client_factory(r, "ann")
    await a.join(1, "doc-9")
    text = (await http(r, "GET", "/metrics"))[2].decode()
    assert 'materi_presence_active_users{document_id="doc-9",workspace_id="default"} 1.0' in text


async def test_internal_presence_counts_distinct_users(relay: Relay, client_factory: Any) -> None:
    tab1 = await client_factory(relay, "ann")
    tab2 = await client_factory(relay, "ann")
    bob = await client_factory(relay, "bob")
    for c in (tab1, tab2, bob):
        assert (await c.join(5, "doc-x"))[0] == 33
    status, hdrs, body = await http(relay, "GET", "/internal/presence/doc-x")
    assert status == 200 and hdrs["content-type"] == "application/json"
    data = json.loads(body)
    assert data["document_id"] == "doc-x"
    assert data["total_count"] == 2
    assert sorted(u["user_id"] for u in data["active_users"]) == ["ann", "bob"]
    u = data["active_users"][0]
    seed = {"user_id", "name", "avatar_url", "activity", "last_active_at"}
    assert set(u) == seed | {"kind", "status"}  # v1.1 adds kind and status
    assert u["activity"] == "Viewing" and u["kind"] == "person" and u["status"] is None
    assert data["recently_left"] == []
    assert isinstance(data["timestamp"], int)
    status, _, body = await http(relay, "GET", "/internal/workspaces/default/documents")
    assert status == 200
    docs = json.loads(body)["documents"]
    assert docs == [{"document_id": "doc-x", "active_users": 2}]
    empty = json.loads((await http(relay, "GET", "/internal/presence/nobody-here"))[2])
    assert empty["total_count"] == 0 and empty["active_users"] == []


async def test_internal_requires_bearer_key_when_configured(relay_factory: Any) -> None:
    key = "k3y-k3y-k3y-k3y-k3y"
    r = await relay_factory(internal_api_key=key)
    assert (await http(r, "GET", "/internal/presence/d"))[0] == 401
    wrong = await http(r, "GET", "/internal/presence/d", {"Authorization": "Bearer nope"})
    assert wrong[0] == 401
    ok = await http(r, "GET", "/internal/presence/d", {"Authorization": f"Bearer {key}"})
    assert ok[0] == 200
    assert (await http(r, "GET", "/healthz"))[0] == 200  # health is never guarded


async def test_internal_without_key_answers_loopback_only(relay: Relay) -> None:
    # A non-loopback peer cannot be produced on this machine without leaving loopback, so
    # the route's guard is called with the peer address it would see.
    from websockets.datastructures import Headers
    from websockets.http11 import Request

    from relay.server.http import HttpRoutes

    class Peer:
        def __init__(self, host: str) -> None:
            self.remote_address = (host, 40000)

    routes = HttpRoutes(relay.hub, lambda: "pure")
    req = Request("/internal/presence/d", Headers())
    assert routes._check_internal(Peer("127.0.0.1"), req) is None  # type: ignore[arg-type]
    assert routes._check_internal(Peer("::1"), req) is None  # type: ignore[arg-type]
    denied = routes._check_internal(Peer("203.0.113.9"), req)  # type: ignore[arg-type]
    assert denied is not None and denied.status_code == 403


async def test_metrics_is_guarded_like_internal(
    relay_factory: Any,
    client_factory: Any,
) -> None:
    """With per-document labels /metrics names documents and workspaces: with a key set it
    wants the key (before: it answered anyone), and without one loopback only."""
    key = "metrics-key-0123456789"
    r = await relay_factory(internal_api_key=key, metrics_per_document=True)
    c = await client_factory(r, "ann")
    await c.join(1, "secret-plans")
    status, _, body = await http(r, "GET", "/metrics")
    assert status == 401 and b"secret-plans" not in body
    status, _, body = await http(r, "GET", "/metrics", {"Authorization": f"Bearer {key}"})
    assert status == 200 and b'document_id="secret-plans"' in body


async def test_without_a_key_proxied_requests_are_refused(relay: Relay) -> None:
    """Loopback is trusted only for direct callers: a same-host proxy makes every remote
    caller look local."""
    for path in ("/metrics", "/internal/presence/d"):
        assert (await http(relay, "GET", path))[0] == 200
        assert (await http(relay, "GET", path, {"X-Forwarded-For": "203.0.113.9"}))[0] == 403
        assert (await http(relay, "GET", path, {"Forwarded": "for=203.0.113.9"}))[0] == 403
    assert (await http(relay, "GET", "/healthz", {"X-Real-IP": "203.0.113.9"}))[0] == 200


async def test_metrics_on_their_own_port(relay_factory: Any) -> None:
    r = await relay_factory(metrics_port=0, internal_api_key="metrics-key-0123456789")
    assert (await http(r, "GET", "/metrics"))[0] == 404  # not on the main port any more
    reader, writer = await asyncio.open_connection("127.0.0.1", r.metrics_port)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    raw = await asyncio.wait_for(reader.read(), 5000 * MS)
    writer.close()
    assert raw.startswith(b"HTTP/1.1 200") and b"presence_relay_sockets" in raw
    reader, writer = await asyncio.open_connection("127.0.0.1", r.metrics_port)
    writer.write(b"GET /internal/presence/d HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    raw = await asyncio.wait_for(reader.read(), 5000 * MS)
    writer.close()
    assert raw.startswith(b"HTTP/1.1 404")


async def test_reserved_document_ids_are_400(relay: Relay) -> None:
    for doc in ("user:bob", "node", "workspace:acme"):
        status, _, body = await http(relay, "GET", f"/internal/presence/{doc}")
        assert status == 400 and b"reserved" in body
