"""Webhooks: user.joined / user.left / document.active / document.empty, POSTed as signed
JSON to every endpoint of `webhook_urls` (docs/webhooks.md).

    source (hub observers, or the presence stream with Redis) -> Webhooks.emit (sync, O(1)
    per endpoint) -> one bounded queue and one sender task per endpoint -> HTTP/1.1 POST

Nothing on the presence path awaits a webhook: `emit` appends to each endpoint's queue and
wakes its sender. A sender sends one event at a time, in order, over a keep-alive
connection (asyncio streams, TLS with the system's trust store for https). 2xx is
delivered; anything else, a timeout or a connection error is retried, with the same id and
a fresh signature timestamp, after a backoff that doubles per failure in a row up to
`webhook_backoff_max_ms`; the event at the head waits for its retries (later ones wait
behind it) until it is delivered or has had `webhook_max_attempts` attempts. A queue past
`webhook_queue_max` drops its oldest event. Every outcome (delivered, given up, dropped) is
reported once per endpoint to the event's `on_done`, which the Redis source uses to ack the
stream entry the event came from.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import random
import ssl
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

import relay
from relay.config import PresenceConfig
from relay.exceptions import ConfigError
from relay.server.logbudget import LogBudget
from relay.server.stats import CounterHistogram

log = logging.getLogger("relay.webhooks")

USER_JOINED = "user.joined"
USER_LEFT = "user.left"
DOCUMENT_ACTIVE = "document.active"
DOCUMENT_EMPTY = "document.empty"
TYPES = (USER_JOINED, USER_LEFT, DOCUMENT_ACTIVE, DOCUMENT_EMPTY)

# What became of an event at one endpoint (WebhookEvent.on_done).
DELIVERED = "delivered"
GIVEN_UP = "given_up"
ABANDONED = "abandoned"

# A response body is read (and thrown away) up to this size to keep the connection; a
# bigger one, a chunked one, or one delimited by the close ends the connection instead.
MAX_KEPT_BODY = 65_536
MAX_HEAD = 65_536
# Seconds, from the event to its 2xx (`presence_relay_webhooks_delivery_seconds`).
DELAY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 60.0, 300.0)
# How long a stop waits for queued events (memory mode: they are lost past it).
DRAIN_S = 2.0


def wall_ms() -> int:
    return int(time.time() * 1000)


@dataclass(slots=True, eq=False)
class WebhookEvent:
    """One event, shared by every endpoint's queue (the body is encoded once)."""

    id: str
    type: str
    document_id: str
    workspace_id: str
    at: int  # ms since the epoch: when it happened (the stream entry's timestamp)
    user_id: str | None = None  # user.* only
    reason: str | None = None  # user.left only: the leave reason's name ("LEFT", "LOST", ...)
    # Called once per endpoint with the outcome: DELIVERED (a 2xx), GIVEN_UP (attempts
    # used up, or dropped from a full queue) or ABANDONED (the relay stopped first).
    on_done: Callable[[str], None] | None = None
    _body: bytes | None = field(default=None, repr=False)

    def payload(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "type": self.type,
            "document_id": self.document_id,
            "workspace_id": self.workspace_id,
        }
        if self.user_id is not None:
            out["user_id"] = self.user_id
        if self.reason is not None:
            out["reason"] = self.reason
        out["at"] = self.at
        return out

    def body(self) -> bytes:
        if self._body is None:
            self._body = json.dumps(self.payload(), separators=(",", ":")).encode()
        return self._body


def new_event_id() -> str:
    """An event id of the memory source (the Redis source derives them from the stream)."""
    return uuid.uuid4().hex


def sign(secret: bytes, t_ms: int, body: bytes) -> str:
    """The `X-Presence-Signature` value: `t=<unix ms>,v1=<hex HMAC-SHA256(secret, "t.body")>`."""
    mac = hmac.new(secret, str(t_ms).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={t_ms},v1={mac}"


# ---------------------------------------------------------------- HTTP/1.1 client


class HttpError(Exception):
    """The endpoint's answer could not be read as HTTP/1.1."""


@dataclass(frozen=True, slots=True)
class Target:
    url: str
    https: bool
    host: str
    port: int
    host_header: str
    path: str  # path and query, as sent in the request line
    label: str  # scheme://host:port/path, no query (for logs and metrics)

    @classmethod
    def parse(cls, url: str) -> Target:
        parts = urlsplit(url)
        https = parts.scheme == "https"
        host = parts.hostname or ""
        port = parts.port or (443 if https else 80)
        default = (https and port == 443) or (not https and port == 80)
        shown = f"[{host}]" if ":" in host else host
        host_header = shown if default else f"{shown}:{port}"
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        label = f"{parts.scheme}://{shown}:{port}{parts.path or '/'}"
        return cls(url, https, host, port, host_header, path, label)


class Connection:
    """One keep-alive HTTP/1.1 connection to an endpoint."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.used = 0  # requests answered on it

    @classmethod
    async def open(cls, target: Target, ssl_context: ssl.SSLContext | None) -> Connection:
        reader, writer = await asyncio.open_connection(
            target.host,
            target.port,
            ssl=ssl_context if target.https else None,
            server_hostname=target.host if target.https else None,
            limit=MAX_HEAD,
        )
        return cls(reader, writer)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()

    @property
    def usable(self) -> bool:
        return not (self.writer.is_closing() or self.reader.at_eof())

    async def request(self, head: bytes, body: bytes) -> tuple[int, bool]:
        """Send one request; (status, whether the connection may be used again)."""
        self.writer.write(head + body)
        await self.writer.drain()
        reader = self.reader
        while True:
            line = await reader.readuntil(b"\r\n")
            parts = line.split(None, 2)
            if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
                raise HttpError(f"not an HTTP status line: {line[:80]!r}")
            version, status = parts[0], int(parts[1])
            headers: dict[bytes, bytes] = {}
            size = len(line)
            while True:
                h = await reader.readuntil(b"\r\n")
                if h == b"\r\n":
                    break
                size += len(h)
                if size > MAX_HEAD:
                    raise HttpError("response head too large")
                name, _, value = h.partition(b":")
                headers[name.strip().lower()] = value.strip()
            if 100 <= status < 200:
                continue  # 100 Continue and friends: the real answer follows
            break
        keep = version == b"HTTP/1.1" and headers.get(b"connection", b"").lower() != b"close"
        if status in (204, 304):
            pass  # no body
        elif b"transfer-encoding" in headers:
            keep = False  # chunked: not worth reading, the status is all we need
        else:
            length = headers.get(b"content-length")
            if length is None or not length.isdigit() or int(length) > MAX_KEPT_BODY:
                keep = False
            elif int(length):
                await reader.readexactly(int(length))
        self.used += 1
        return status, keep


# ---------------------------------------------------------------- one endpoint


class EndpointStats:
    __slots__ = ("attempts", "delay", "delivered", "dropped", "failed_attempts")

    def __init__(self) -> None:
        self.delivered = 0
        self.attempts = 0
        self.failed_attempts = 0
        self.dropped = {"queue_full": 0, "attempts": 0, "shutdown": 0}
        self.delay = CounterHistogram(DELAY_BUCKETS)


class Endpoint:
    """One URL's queue and sender."""

    def __init__(
        self,
        url: str,
        secret: bytes,
        config: PresenceConfig,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.target = Target.parse(url)
        self.secret = secret
        self.timeout_s = config.webhook_timeout_ms / 1000
        self.max_attempts = config.webhook_max_attempts
        self.backoff_s = config.webhook_backoff_ms / 1000
        self.backoff_max_s = max(config.webhook_backoff_max_ms, config.webhook_backoff_ms) / 1000
        self.queue_max = config.webhook_queue_max
        self.queue: deque[WebhookEvent] = deque()
        self.current: WebhookEvent | None = None  # the one being sent (not in the queue)
        self.stats = EndpointStats()
        self.failures = 0  # failed attempts in a row (the backoff's exponent)
        self._wake = asyncio.Event()
        self._conn: Connection | None = None
        self._ssl = ssl_context
        self._budget = LogBudget(log, 10, 60.0)
        self._ua = f"presence-relay/{relay.__version__}".encode()

    @property
    def label(self) -> str:
        return self.target.label

    def depth(self) -> int:
        return len(self.queue) + (self.current is not None)

    def put(self, event: WebhookEvent) -> None:
        """Queue an event (synchronous, O(1)); past the bound the oldest waiting one goes."""
        queue = self.queue
        if len(queue) >= self.queue_max:
            old = queue.popleft()
            self.stats.dropped["queue_full"] += 1
            if self._budget.allow():
                log.warning(
                    "webhook %s: queue full (%d), dropped event %s", self.label, self.queue_max,
                    old.id,
                )  # fmt: skip
            _done(old, GIVEN_UP)
        queue.append(event)
        self._wake.set()

    def drop_all(self, why: str) -> int:
        """Let go of everything queued (a stop: ABANDONED); returns how many."""
        n = 0
        while self.queue:
            _done(self.queue.popleft(), ABANDONED)
            self.stats.dropped[why] += 1
            n += 1
        return n

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def run(self) -> None:
        try:
            while True:
                if not self.queue:
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                event = self.current = self.queue.popleft()
                attempts = 0
                while True:
                    attempts += 1
                    if await self.attempt(event, attempts):
                        self.failures = 0
                        self.stats.delivered += 1
                        self.stats.delay.observe(max(0.0, (wall_ms() - event.at) / 1000))
                        self.current = None
                        _done(event, DELIVERED)
                        break
                    self.failures += 1
                    self.stats.failed_attempts += 1
                    if attempts >= self.max_attempts:
                        self.stats.dropped["attempts"] += 1
                        log.warning(
                            "webhook %s: gave up on event %s after %d attempts", self.label,
                            event.id, attempts,
                        )  # fmt: skip
                        self.current = None
                        _done(event, GIVEN_UP)
                    await asyncio.sleep(self.retry_delay())
                    if self.current is None:
                        break
        finally:
            self.close()

    def retry_delay(self) -> float:
        """Seconds before the next attempt after `failures` failures in a row (+-10 %)."""
        base = min(self.backoff_max_s, self.backoff_s * 2 ** min(self.failures - 1, 30))
        return float(base * random.uniform(0.9, 1.1))

    async def attempt(self, event: WebhookEvent, n: int) -> bool:
        """One POST of `event`; True on 2xx."""
        body = event.body()
        t = wall_ms()
        head = b"".join(
            (
                b"POST ", self.target.path.encode(), b" HTTP/1.1\r\nHost: ",
                self.target.host_header.encode(), b"\r\nUser-Agent: ", self._ua,
                b"\r\nContent-Type: application/json\r\nContent-Length: ",
                str(len(body)).encode(), b"\r\nX-Presence-Event: ", event.type.encode(),
                b"\r\nX-Presence-Delivery: ", event.id.encode(), b"\r\nX-Presence-Attempt: ",
                str(n).encode(), b"\r\nX-Presence-Signature: ",
                sign(self.secret, t, body).encode(), b"\r\n\r\n",
            )
        )  # fmt: skip
        self.stats.attempts += 1
        try:
            async with asyncio.timeout(self.timeout_s):
                status = await self._send(head, body)
        except (OSError, EOFError, TimeoutError, HttpError, ssl.SSLError, ValueError) as exc:
            self.close()
            if self._budget.allow():
                log.warning(
                    "webhook %s: attempt %d of event %s failed: %s", self.label, n, event.id,
                    _describe(exc),
                )  # fmt: skip
            return False
        if 200 <= status < 300:
            return True
        if self._budget.allow():
            log.warning(
                "webhook %s: attempt %d of event %s: HTTP %d", self.label, n, event.id, status
            )
        return False

    async def _send(self, head: bytes, body: bytes) -> int:
        conn = self._conn
        if conn is not None and not conn.usable:
            conn.close()
            conn = self._conn = None
        if conn is not None:
            try:
                status, keep = await conn.request(head, body)
            except (OSError, asyncio.IncompleteReadError) as exc:
                # A kept connection the server closed meanwhile (its idle timeout): once more
                # on a new one, at once. (If the server did take the request, the receiver
                # sees the id twice: at least once.)
                conn.close()
                self._conn = None
                if isinstance(exc, asyncio.IncompleteReadError) and exc.partial:
                    raise
            else:
                if not keep:
                    conn.close()
                    self._conn = None
                return status
        conn = self._conn = await Connection.open(self.target, self._ssl)
        status, keep = await conn.request(head, body)
        if not keep:
            conn.close()
            self._conn = None
        return status


def _done(event: WebhookEvent, outcome: str) -> None:
    if event.on_done is not None:
        try:
            event.on_done(outcome)
        except Exception:  # a bug in a source must not stop a sender
            log.exception("webhook: on_done of %s failed", event.id)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, asyncio.IncompleteReadError):
        return "connection closed before a full response"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


# ---------------------------------------------------------------- the service


class Source(Protocol):
    """Where events come from: the hub's observers (memory) or the presence stream."""

    async def start(self) -> None: ...

    async def stop_reading(self) -> None:
        """No new events from here on (the relay is stopping)."""

    async def close(self, abandoned: int) -> None:
        """The senders are gone; `abandoned` events were never delivered."""

    def describe(self) -> str: ...


class Webhooks:
    """The endpoints, their senders, and the source of events (built by
    `relay.server.webhook_source.build_webhooks`, started and stopped by the Relay)."""

    def __init__(self, config: PresenceConfig, ssl_context: ssl.SSLContext | None = None) -> None:
        urls = config.webhook_url_list
        if not urls:
            raise ConfigError("webhook_urls: not set (webhooks are off)")
        if config.webhook_secret is None:
            raise ConfigError(
                "webhook_secret: required when webhook_urls is set (or webhook_secret_file); "
                "generate one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'"
            )
        secret = config.webhook_secret.encode()
        if any(urlsplit(u).scheme == "https" for u in urls) and ssl_context is None:
            ssl_context = ssl.create_default_context()
        self.config = config
        self.endpoints = [Endpoint(u, secret, config, ssl_context) for u in urls]
        self._tasks: list[asyncio.Task[None]] = []
        self.emitted = 0
        self.source: Source | None = None
        self._stopped = False

    def emit(self, events: list[WebhookEvent]) -> None:
        """Hand events to every endpoint (synchronous; never blocks, never raises)."""
        for event in events:
            self.emitted += 1
            for endpoint in self.endpoints:
                endpoint.put(event)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for endpoint in self.endpoints:
            self._tasks.append(loop.create_task(endpoint.run()))
        assert self.source is not None
        await self.source.start()
        log.info(
            "webhooks on: %d endpoint(s) (%s), events from %s",
            len(self.endpoints),
            ", ".join(e.label for e in self.endpoints),
            self.source.describe(),
        )

    async def stop(self) -> None:
        """Stop taking events, give the queues up to DRAIN_S to empty, then end."""
        assert self.source is not None
        if self._stopped:
            return
        self._stopped = True
        await self.source.stop_reading()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DRAIN_S
        while any(e.depth() for e in self.endpoints) and loop.time() < deadline:
            # A queue in backoff does not drain: stop waiting for it.
            if all(e.depth() == 0 or e.failures for e in self.endpoints):
                break
            await asyncio.sleep(0.02)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        lost = 0
        for e in self.endpoints:
            if e.current is not None:
                e.queue.appendleft(e.current)
                e.current = None
            lost += e.drop_all("shutdown")
        await self.source.close(lost)
