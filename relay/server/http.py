"""HTTP routes on the relay's port, answered from websockets' `process_request` hook."""

from __future__ import annotations

import hmac
import ipaddress
import json
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from relay.core import protocol as p
from relay.core.ids import doc_id_problem
from relay.exceptions import BackendUnavailable
from relay.server import demo
from relay.server.hub import Hub
from relay.server.metrics import make_registry, render

WS_PATH = "/ws"
# Headers a reverse proxy adds. Trust in "the caller is on loopback" (anonymous HELLO, and
# /internal/* and /metrics without a key) is void when one is present: a proxy on the same
# host makes every remote caller look local.
PROXY_HEADERS = ("Forwarded", "X-Forwarded-For", "X-Real-IP")


def _response(
    status: int,
    body: bytes,
    content_type: str,
    extra: tuple[tuple[str, str], ...] = (),
    cache: str = "no-store",
) -> Response:
    reason = {
        200: "OK",
        400: "Bad Request",
        401: "Unauthorized",
        403: "Forbidden",
        404: "Not Found",
        405: "Method Not Allowed",
        503: "Service Unavailable",
    }[status]
    headers = Headers(
        [
            ("Content-Type", content_type),
            ("Content-Length", str(len(body))),
            ("Cache-Control", cache),
            *extra,
        ]
    )
    return Response(status, reason, headers, body)


def text(status: int, body: str) -> Response:
    return _response(status, body.encode(), "text/plain; charset=utf-8")


def as_json(status: int, data: Any) -> Response:
    return _response(status, json.dumps(data).encode(), "application/json")


def _is_loopback(remote_address: Any) -> bool:
    try:
        host = remote_address[0]
        return ipaddress.ip_address(host).is_loopback
    except (TypeError, ValueError, IndexError):
        return False


def internal_denied(
    config: Any, remote_address: Any, headers: Mapping[str, str]
) -> tuple[int, str] | None:
    """Why an /internal/* (or /metrics) request is refused: (status, message), or None.
    `headers` maps names to values (websockets' Headers, or lower-cased names)."""
    key = config.internal_api_key
    if key is None:
        if _is_loopback(remote_address) and not _proxied(headers):
            return None
        return 403, "forbidden: loopback only (set internal_api_key)"
    given = headers.get("Authorization") or headers.get("authorization") or ""
    if hmac.compare_digest(given.encode(), f"Bearer {key}".encode()):
        return None
    return 401, "unauthorized"


def _proxied(headers: Mapping[str, str]) -> bool:
    """`headers`: websockets' (any case) or lower-cased names (relay/server/httpbody.py)."""
    return any(h in headers or h.lower() in headers for h in PROXY_HEADERS)


def _offered_subprotocols(request: Request) -> list[str]:
    out: list[str] = []
    for value in request.headers.get_all("Sec-WebSocket-Protocol"):
        out.extend(v.strip() for v in value.split(","))
    return out


class HttpRoutes:
    def __init__(self, hub: Hub, implementation: Any) -> None:
        self.hub = hub
        self.registry = make_registry(hub, implementation)
        # The demo page, when on (PresenceConfig.demo_enabled): its files, by URL path.
        self.demo = demo.load_assets() if hub.config.demo_enabled else {}

    async def __call__(self, conn: ServerConnection, request: Request) -> Response | None:
        path = request.path.partition("?")[0]
        if path == WS_PATH:
            if request.method != "GET":
                return text(405, "method not allowed\n")
            if p.SUBPROTOCOL not in _offered_subprotocols(request):
                return text(400, f"unsupported subprotocol; this relay speaks: {p.SUBPROTOCOL}\n")
            # Every open socket counts, this one included (HELLO or not: hub.sockets).
            if len(self.hub.sockets) > self.hub.config.max_connections:
                return text(503, "too many connections\n")
            if self.hub.config.jwt_secret is None and _proxied(request.headers):
                return text(
                    403,
                    "anonymous mode (no jwt_secret) serves direct loopback "
                    "connections only, not a proxy's\n",
                )
            return None  # proceed with the WebSocket handshake
        asset = self.demo.get(path)
        if asset is not None:
            if request.method != "GET":
                return text(405, "method not allowed\n")
            return _response(
                200, asset.body, asset.content_type, demo.SECURITY_HEADERS, cache="no-cache"
            )
        metrics_here = self.hub.config.metrics_port is None
        if (
            path not in ("/healthz", "/readyz")
            and not (path == "/metrics" and metrics_here)
            and not path.startswith("/internal/")
        ):
            return text(404, "not found\n")
        if request.method != "GET":
            return text(405, "method not allowed\n")
        if path == "/healthz":
            return text(200, "ok\n")
        if path == "/readyz":
            return await self.readyz()
        # /metrics names documents and workspaces when per-document labels are on: it is
        # guarded like /internal/* (or served on its own metrics_port, see MetricsRoutes).
        denied = self._check_internal(conn, request)
        if denied is not None:
            return denied
        if path == "/metrics":
            return self.metrics()
        return await self.internal(path)

    def metrics(self) -> Response:
        return _response(200, render(self.registry), "text/plain; version=0.0.4")

    async def readyz(self) -> Response:
        problems = []
        if not await self.hub.store.ready():
            problems.append("store")
        if not await self.hub.broker.ready():
            problems.append("broker")
        if problems:
            return text(503, "degraded: " + ", ".join(problems) + " unreachable\n")
        return text(200, "ready\n")

    def _check_internal(self, conn: ServerConnection, request: Request) -> Response | None:
        denied = internal_denied(self.hub.config, conn.remote_address, request.headers)
        return None if denied is None else text(denied[0], denied[1] + "\n")

    async def internal(self, path: str) -> Response:
        try:
            return await self._internal(path)
        except BackendUnavailable as exc:  # Redis configured but unreachable
            return text(503, f"degraded: {exc}\n")

    async def _internal(self, path: str) -> Response:
        parts = [unquote(x) for x in path.split("/")[2:]]
        if len(parts) == 2 and parts[0] == "presence" and parts[1]:
            doc_id = parts[1]
            problem = doc_id_problem(doc_id)
            if problem is not None:
                return text(400, problem + "\n")
            users = await self.hub.store.document_users(doc_id)
            recent = await self.hub.recently_left(doc_id, {u.user_id for u in users})
            return as_json(
                200,
                {
                    "document_id": doc_id,
                    "active_users": [u.to_json() for u in users],
                    "total_count": len(users),
                    "recently_left": [r.to_json() for r in recent],
                    "timestamp": int(time.time() * 1000),
                },
            )
        if len(parts) == 3 and parts[0] == "workspaces" and parts[2] == "documents" and parts[1]:
            ws = parts[1]
            docs = await self.hub.store.workspace_documents(ws)
            return as_json(
                200,
                {
                    "workspace_id": ws,
                    "documents": [
                        {"document_id": d, "active_users": n} for d, n in sorted(docs.items())
                    ],
                    "total_count": len(docs),
                    "timestamp": int(time.time() * 1000),
                },
            )
        return text(404, "not found\n")


class MetricsRoutes:
    """The `metrics_port` listener: /metrics without a key (its address is its guard:
    bind it to an interface only the scraper reaches), nothing else."""

    def __init__(self, routes: HttpRoutes) -> None:
        self.routes = routes

    def __call__(self, conn: ServerConnection, request: Request) -> Response:
        path = request.path.partition("?")[0]
        if path != "/metrics":
            return text(404, "not found\n")
        if request.method != "GET":
            return text(405, "method not allowed\n")
        return self.routes.metrics()
