"""HTTP requests with a method websockets does not answer: PUT and DELETE of
`/internal/presence/{doc}/members/{member_id}` (members set over HTTP, relay/server/agents.py).

websockets' HTTP parser refuses any request with a body (it only ever expects a handshake),
so `RelayConnection` looks at the first bytes of a connection: a request line starting with
`PUT ` or `DELETE ` is read here (head, then `Content-Length` bytes of body, both bounded)
and answered here, and websockets never sees it. One request per connection (the answer says
`Connection: close`), the same authorization as every `/internal/*` route.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING
from urllib.parse import unquote

import relay
from relay.core.agent_body import MAX_BODY_BYTES
from relay.server.http import internal_denied

if TYPE_CHECKING:
    from relay.server.hub import Hub

METHODS = (b"PUT ", b"DELETE ")
SERVER = f"presence-relay/{relay.__version__}"
SNIFF = max(len(m) for m in METHODS)
MAX_HEAD_BYTES = 8192
REASONS = {
    200: "OK",
    201: "Created",
    204: "No Content",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    411: "Length Required",
    413: "Content Too Large",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
}


def claims(first_bytes: bytes) -> bool | None:
    """Whether a connection's first bytes are a request for this module: True, False, or
    None when too few bytes have come to tell."""
    for m in METHODS:
        if first_bytes[: len(m)] == m[: len(first_bytes)]:
            return True if len(first_bytes) >= len(m) else None
    return False


class ParsedRequest:
    __slots__ = ("body", "headers", "method", "path")

    def __init__(self, method: str, path: str, headers: dict[str, str], body: bytes) -> None:
        self.method = method
        self.path = path
        self.headers = headers
        self.body = body


class BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def parse(buf: bytes) -> ParsedRequest | None:
    """The request in `buf`, or None while it is not whole. Raises BadRequest."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        if len(buf) > MAX_HEAD_BYTES:
            raise BadRequest(431, "request head too large")
        return None
    try:
        head = buf[:end].decode("ascii")
    except UnicodeDecodeError:
        raise BadRequest(400, "request head is not ASCII") from None
    lines = head.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or parts[2] not in ("HTTP/1.1", "HTTP/1.0"):
        raise BadRequest(400, "bad request line")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise BadRequest(400, "bad header line")
        headers[name.strip().lower()] = value.strip()
    if "transfer-encoding" in headers:
        raise BadRequest(411, "send the body with Content-Length, not chunked")
    raw_length = headers.get("content-length", "0")
    if not raw_length.isdigit():
        raise BadRequest(400, "bad Content-Length")
    length = int(raw_length)
    if length > MAX_BODY_BYTES:
        raise BadRequest(413, f"the body is over {MAX_BODY_BYTES} bytes")
    start = end + 4
    if len(buf) < start + length:
        return None
    return ParsedRequest(parts[0], parts[1], headers, bytes(buf[start : start + length]))


def error(status: int, message: str) -> bytes:
    return response(status, json.dumps({"error": message}).encode())


def response(status: int, body: bytes) -> bytes:
    head = [
        f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}",
        f"Server: {SERVER}",
        "Cache-Control: no-store",
        "Connection: close",
    ]
    if status != 204:
        head += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + (b"" if status == 204 else body)


def route(path: str) -> tuple[str, str] | None:
    """(doc_id, member_id) of `/internal/presence/{doc}/members/{member_id}`, else None."""
    parts = path.partition("?")[0].split("/")
    if len(parts) != 6 or parts[:3] != ["", "internal", "presence"] or parts[4] != "members":
        return None
    return unquote(parts[3]), unquote(parts[5])


# Paths answered with GET (http.py): other methods there are a 405, as websockets' path says.
GET_ONLY = ("/", "/ws", "/healthz", "/readyz", "/metrics")


async def answer(hub: Hub, req: ParsedRequest, remote: object) -> bytes:
    target = route(req.path)
    if target is None:
        path = req.path.partition("?")[0]
        if path in GET_ONLY or path.startswith("/internal/"):
            return error(405, "method not allowed")
        return error(404, "not found")
    denied = internal_denied(hub.config, remote, req.headers)
    if denied is not None:
        return error(*denied)
    doc_id, member_id = target
    result = await hub.agents.request(req.method, doc_id, member_id, req.body)
    return response(result.status, result.encode())
