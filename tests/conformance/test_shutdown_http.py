"""Server shutdown (close 1001) and the HTTP endpoints on the same port (docs/protocol.md: HTTP)."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from .conftest import (
    CLOSE_GOING_AWAY,
    CURSOR,
    EV_JOINED,
    http_get,
    new_doc_id,
)

pytestmark = pytest.mark.timeout(60)


async def test_sigterm_closes_clients_with_1001(fresh_server_factory, client_factory):
    srv = fresh_server_factory({"batch_ms": 50})
    doc = new_doc_id()
    a = await client_factory(srv)
    b = await client_factory(srv)
    idle = await client_factory(srv)  # connected, in no document
    await a.join(1, doc)
    await b.join(1, doc)
    await a.send([CURSOR, 1, 1, 1, 1])
    await asyncio.sleep(0.2)
    srv.sigterm()
    results = await asyncio.gather(
        a.expect_close(CLOSE_GOING_AWAY, timeout=8),
        b.expect_close(CLOSE_GOING_AWAY, timeout=8),
        idle.expect_close(CLOSE_GOING_AWAY, timeout=8),
        return_exceptions=True,
    )
    failures = [r for r in results if isinstance(r, BaseException)]
    assert not failures, failures
    deadline = time.monotonic() + 10
    while srv.proc.poll() is None and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert srv.proc.poll() is not None, "server still running 10 s after SIGTERM"


# --- HTTP ------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
def test_health_endpoints(server, path):
    status, _, _ = http_get(server.http_base + path)
    assert status == 200


def test_metrics_is_prometheus_text(server):
    status, headers, body = http_get(server.http_base + "/metrics")
    assert status == 200
    ctype = {k.lower(): v for k, v in headers.items()}.get("content-type", "")
    assert ctype.startswith("text/plain"), ctype
    assert b"# TYPE" in body or b"# HELP" in body, body[:200]


async def test_internal_presence_lists_distinct_users(server, client_factory, doc_id):
    tab1 = await client_factory(server, user_id="http-u1", name="One")
    tab2 = await client_factory(server, user_id="http-u1", name="One")
    other = await client_factory(server, user_id="http-u2", name="Two")
    for c in (tab1, tab2, other):
        await c.join(1, doc_id)
    await other.wait_event(lambda d, e: e[0] == EV_JOINED, 2)
    await asyncio.sleep(0.2)
    status, _, body = await asyncio.to_thread(
        http_get, f"{server.http_base}/internal/presence/{doc_id}"
    )
    assert status == 200, body
    data = json.loads(body)
    assert {"document_id", "active_users", "total_count", "timestamp"} <= set(data), data
    assert data["document_id"] == doc_id
    users = data["active_users"]
    assert sorted(u["user_id"] for u in users) == ["http-u1", "http-u2"], (
        f"a user with two sessions appears once: {users}"
    )
    for u in users:
        assert {"user_id", "name", "avatar_url", "activity", "last_active_at"} <= set(u), u
    assert data["total_count"] == len(users)


async def test_internal_workspace_documents(server, client_factory, doc_id):
    c = await client_factory(server)  # anonymous: workspace `default`
    await c.join(1, doc_id)
    await asyncio.sleep(0.2)
    status, _, body = await asyncio.to_thread(
        http_get, f"{server.http_base}/internal/workspaces/default/documents"
    )
    assert status == 200, body
    assert doc_id.encode() in body, body[:500]


def test_internal_api_key_required_when_configured(fresh_server_factory):
    srv = fresh_server_factory({"batch_ms": 50}, ["--internal-api-key", "k3y-conformance-0123"])
    url = f"{srv.http_base}/internal/presence/some-doc"
    status, _, _ = http_get(url)
    assert status in (401, 403), f"no bearer key must be refused, got {status}"
    status, _, _ = http_get(url, headers={"Authorization": "Bearer wrong"})
    assert status in (401, 403), f"a wrong bearer key must be refused, got {status}"
    status, _, body = http_get(url, headers={"Authorization": "Bearer k3y-conformance-0123"})
    assert status == 200, body
