"""An agent present in a document over the relay's HTTP API, with no WebSocket.

    async with AgentPresence("http://127.0.0.1:8765", "design-doc", "review-bot",
                             name="Reviewer") as agent:
        await agent.move(12, 4, 318)
        await agent.set_status("thinking")

`PUT /internal/presence/{doc}/members/{member_id}` (protocol v1.1, "Members set over HTTP")
creates or updates a member of kind AGENT whose user id is `member_id`, for `ttl_s` seconds;
every PUT renews it; `DELETE` makes it leave (LEFT), and the end of its TTL too (EXPIRED).
`AgentPresence` sends the first PUT on enter, renews in the background every
`max(0.5, ttl_s / 3)` seconds (any PUT counts: a call resets the renewal's clock), and
DELETEs on exit, so that while the context is open the member never expires.

Decisions:

* One request at a time, in the order of the calls (a lock): the relay applies them in that
  order, and a renewal never overtakes a move. Every PUT carries `name` and `ttl_s` (a PUT
  without `ttl_s` would renew for the relay's default, 30 s); fields a call does not name
  keep their value on the relay.
* 429 (too many PUTs for this member): a call waits `RETRY_429_S` (0.5 s: the relay's
  default budget, 10/s with a burst of 20, has a token again by then) and retries once; a
  second 429 raises `AgentPresenceError(429)`. The background renewal treats 429 as
  transient (the calls that used the budget renewed the TTL themselves).
* A call raises `AgentPresenceError` for every answer that is not 2xx (status and the
  relay's `error` and `field`), and for no answer at all (`status` None: connection refused,
  the timeout, a broken response; the cause chained). It does not retry (but for 429).
* The background renewal logs a warning and retries with a backoff (0.5 s doubling to 5 s)
  after a transient failure: no answer, 409 (the member was gone and the document is now at
  capacity), 429, 5xx. After any other 4xx (400, 401, 403, 404 for a wrong base URL, ...) it
  stops: every later call raises that error (chained), and so does the exit, unless a call
  already raised it or the block is raising something else.
* A member the relay forgot while the context is open (its TTL ran out while the relay was
  unreachable, the relay restarted, someone DELETEd it) is created afresh by the next PUT:
  on that unexpected 201 the SDK sends the avatar, cursor, selection, viewport and status it
  last set again, at once (`sid` is the new member's). Typing is not sent again: the relay
  ends it by itself after its debounce.
* Exit: the renewal is cancelled, then one DELETE (404 ignored: the member is gone
  already). It never hangs: every request is bounded by `timeout` (5 s) as a whole. When the
  relay cannot be reached the exit logs a warning and returns (the member ends at its TTL);
  another non-2xx answer raises `AgentPresenceError`, unless the block is raising.

The HTTP client is a small HTTP/1.1 one on asyncio streams (the standard library only, and
cancellable): one request per connection, as the relay answers with `Connection: close`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from types import TracebackType
from typing import Any
from urllib.parse import quote, urlsplit

from .connection import SDK_VERSION
from .errors import RelayClientError

__all__ = ["AgentPresence", "AgentPresenceError"]

log = logging.getLogger("presence_client.agent")

DEFAULT_TIMEOUT_S = 5.0
"""The bound on one request, as a whole: connecting, sending, reading the answer."""
MIN_RENEW_S = 0.5
"""The renewal period is `max(MIN_RENEW_S, ttl_s / 3)`: two renewals may fail in a row
before the TTL runs out."""
RETRY_429_S = 0.5
"""How long a call waits after a 429 before it retries (once)."""
BACKOFF_MAX_S = 5.0
"""The longest wait between two retries of a failing background renewal."""
MAX_TTL_S = 3600
MAX_NAME_CHARS = 256
MAX_ANSWER_BYTES = 65536
_RESTORED = ("avatar_url", "cursor", "selection", "viewport", "status")


class AgentPresenceError(RelayClientError):
    """A request of `AgentPresence` failed. `status` is the HTTP status (None when no
    answer came: connection refused, timed out, not HTTP; the exception is the `__cause__`),
    `message` the relay's `error`, `field` the body field it refused (a 400), else None."""

    def __init__(self, status: int | None, message: str, field: str | None = None) -> None:
        text = message if status is None else f"[{status}] {message}"
        if field is not None:
            text += f" (field {field!r})"
        super().__init__(text)
        self.status = status
        self.message = message
        self.field = field


def _fatal_for_renewal(exc: AgentPresenceError) -> bool:
    """An answer that retrying the same renewal would only get again."""
    s = exc.status
    return s is not None and 400 <= s < 500 and s not in (409, 429)


class AgentPresence:
    """Keeps the member `member_id` (kind AGENT) present in `doc_id` while the context is
    open. `url` is the relay's HTTP base (`http://host:port`, or `https://`, with a path
    prefix when the relay is behind one). `api_key` is the relay's `internal_api_key`
    (sent as `Authorization: Bearer ...`); a relay without one accepts direct loopback
    callers only. `status` and `avatar_url` go with the first PUT. One context per
    (document, member id): the exit of one deletes the member of both.

    The module's docstring lists what is retried and what raises."""

    def __init__(
        self,
        url: str,
        doc_id: str,
        member_id: str,
        *,
        name: str,
        api_key: str | None = None,
        ttl_s: int = 30,
        avatar_url: str | None = None,
        status: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"url must be http(s)://host[:port][/prefix], not {url!r}")
        for label, value in (("doc_id", doc_id), ("member_id", member_id)):
            if not isinstance(value, str) or not value:
                raise ValueError(f"{label} must be a non-empty string")
        if not isinstance(name, str) or not 1 <= len(name) <= MAX_NAME_CHARS:
            raise ValueError(f"name must be a string of 1 to {MAX_NAME_CHARS} characters")
        if type(ttl_s) is not int or not 1 <= ttl_s <= MAX_TTL_S:
            raise ValueError(f"ttl_s must be an integer in 1..{MAX_TTL_S}")
        if not timeout > 0:
            raise ValueError("timeout must be positive")
        self._tls = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._tls else 80)
        self._netloc = parts.netloc.rpartition("@")[2]
        self._path = (
            f"{parts.path.rstrip('/')}/internal/presence/"
            f"{quote(doc_id, safe='')}/members/{quote(member_id, safe='')}"
        )
        self._api_key = api_key
        self._doc_id = doc_id
        self._member_id = member_id
        self._name = name
        self._ttl_s = ttl_s
        self._timeout = float(timeout)
        self._first: dict[str, Any] = {}
        if avatar_url is not None:
            self._first["avatar_url"] = avatar_url
        if status is not None:
            self._first["status"] = status
        self.renew_every_s = max(MIN_RENEW_S, ttl_s / 3)
        """The renewal period, in seconds."""
        self._lock = asyncio.Lock()
        self._state: dict[str, Any] = {}  # what a re-created member is given again
        self._restore = False
        self._sid: int | None = None
        self._expires_at: int | None = None
        self._renewed_at = 0.0  # loop time at which the last successful PUT was sent
        self._renewal: asyncio.Task[None] | None = None
        self._failure: AgentPresenceError | None = None
        self._failure_raised = False
        self._started = False
        self._closed = False

    # ------------------------------------------------------------ properties

    @property
    def sid(self) -> int:
        """The member's sid in the document (a new one if the relay had to create it
        again). RuntimeError before the first PUT succeeded."""
        if self._sid is None:
            raise RuntimeError("not started: use `async with AgentPresence(...)`")
        return self._sid

    @property
    def expires_at(self) -> int:
        """When the member ends unless renewed: the relay's clock, ms since the epoch, as
        of the last successful PUT."""
        if self._expires_at is None:
            raise RuntimeError("not started: use `async with AgentPresence(...)`")
        return self._expires_at

    @property
    def doc_id(self) -> str:
        return self._doc_id

    @property
    def member_id(self) -> str:
        return self._member_id

    # ------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> AgentPresence:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._close(raising=exc_type is None)

    async def start(self) -> None:
        """The first PUT (raises AgentPresenceError when it fails), then the renewals.
        `async with` calls it; pair it with `close()` otherwise."""
        if self._started:
            raise RuntimeError("an AgentPresence is entered once")
        self._started = True
        async with self._lock:
            await self._put_locked(dict(self._first), retry_429=True)
        self._renewal = asyncio.create_task(
            self._renew_forever(), name=f"agent-renewal:{self._doc_id}/{self._member_id}"
        )

    async def close(self) -> None:
        """Stop renewing and DELETE the member (what the exit does). Idempotent."""
        await self._close(raising=True)

    async def _close(self, raising: bool) -> None:
        if self._closed or not self._started:
            return
        self._closed = True
        task, self._renewal = self._renewal, None
        if task is not None:
            task.cancel()
            # (a request is cancelled at once: asyncio streams; bounded all the same)
            await asyncio.wait({task}, timeout=self._timeout)
        error: AgentPresenceError | None = None
        try:
            async with asyncio.timeout(self._timeout):  # a call of another task may hold it
                await self._lock.acquire()
        except TimeoutError:
            log.warning("%s: a request is still running; not deleting the member", self)
            return
        try:
            status, body = await self._request("DELETE", None)
            if status != 404 and not 200 <= status < 300:
                error = _answer_error(status, body)
        except AgentPresenceError as exc:
            log.warning("%s: could not delete the member (%s); it ends at its TTL", self, exc)
        finally:
            self._lock.release()
        if not raising:
            if error is not None:
                log.warning("%s: deleting the member failed: %s", self, error)
            return
        if error is not None:
            raise error
        if self._failure is not None and not self._failure_raised:
            self._failure_raised = True
            raise self._failure

    def __repr__(self) -> str:
        return f"AgentPresence({self._doc_id!r}, {self._member_id!r})"

    # ------------------------------------------------------------ calls

    async def move(
        self,
        line: int,
        col: int,
        off: int,
        selection: tuple[int, int, int, bool] | None = None,
    ) -> None:
        """Move the cursor to (line, col, off); `selection` is its anchor (a_line, a_col,
        a_off, backward), None for none (a move without one clears the selection)."""
        await self._call(
            {"cursor": [line, col, off], "selection": None if selection is None else [*selection]}
        )

    async def clear_cursor(self) -> None:
        """No cursor (and no selection) any more."""
        await self._call({"cursor": None, "selection": None})

    async def set_status(self, status: str | None) -> None:
        """A short text (at most 64 characters) next to the member; None clears it."""
        await self._call({"status": status})

    async def typing(self, typing: bool = True) -> None:
        """Typing (a keystroke: the relay ends it by itself after its debounce) or not."""
        await self._call({"typing": typing})

    async def set_viewport(self, top: int, bottom: int, scroll_pct: float) -> None:
        """The lines shown (top <= bottom) and the scroll position, 0..100."""
        await self._call({"viewport": [top, bottom, scroll_pct]})

    async def renew(self) -> None:
        """Renew the TTL now (the background renewal does it anyway)."""
        await self._call({})

    async def _call(self, fields: dict[str, Any]) -> None:
        if not self._started or self._closed:
            raise RuntimeError(f"{self} is not open")
        async with self._lock:
            if self._failure is not None:
                self._failure_raised = True
                failure = self._failure
                raise AgentPresenceError(
                    failure.status, f"the renewal stopped: {failure.message}", failure.field
                ) from failure
            await self._put_locked(fields, retry_429=True)

    # ------------------------------------------------------------ PUT

    async def _put_locked(self, fields: dict[str, Any], retry_429: bool) -> None:
        """One PUT (the lock held). Raises AgentPresenceError."""
        loop = asyncio.get_running_loop()
        carried_state = self._restore
        body: dict[str, Any] = {"name": self._name, "ttl_s": self._ttl_s}
        if carried_state:
            body.update(self._restorable())
        body.update(fields)
        data = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
        sent_at = loop.time()
        status, answer = await self._request("PUT", data)
        if status == 429 and retry_429:
            log.info("%s: 429, retrying in %.1f s", self, RETRY_429_S)
            await asyncio.sleep(RETRY_429_S)
            sent_at = loop.time()
            status, answer = await self._request("PUT", data)
        if status not in (200, 201):
            raise _answer_error(status, answer)
        if not isinstance(answer, dict) or type(answer.get("sid")) is not int:
            raise AgentPresenceError(status, f"unexpected answer: {answer!r}")
        recreated = status == 201 and self._sid is not None
        self._sid = answer["sid"]
        expires = answer.get("expires_at")
        if type(expires) is int:
            self._expires_at = expires
        self._renewed_at = sent_at
        for key in _RESTORED:
            if key in fields:
                self._state[key] = fields[key]
        if "cursor" in fields and "selection" not in fields:
            self._state["selection"] = None
        if carried_state:
            self._restore = False
        elif recreated:
            log.info("%s: the relay had forgotten the member; created it again", self)
            if self._restorable():
                self._restore = True
                try:
                    await self._put_locked({}, retry_429=False)
                except AgentPresenceError as exc:  # (the next PUT carries it again)
                    log.warning("%s: could not set its state again: %s", self, exc)

    def _restorable(self) -> dict[str, Any]:
        return {k: v for k, v in self._state.items() if v is not None}

    # ------------------------------------------------------------ renewal

    async def _renew_forever(self) -> None:
        loop = asyncio.get_running_loop()
        backoff = MIN_RENEW_S
        failing = False
        while True:
            delay = self._renewed_at + self.renew_every_s - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
                continue
            try:
                async with self._lock:
                    await self._put_locked({}, retry_429=False)
            except AgentPresenceError as exc:
                if _fatal_for_renewal(exc):
                    log.error("%s: renewal refused, no more renewals: %s", self, exc)
                    self._failure = exc
                    return
                log.warning("%s: renewal failed (%s); retrying in %.1f s", self, exc, backoff)
                failing = True
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)
            except Exception as exc:  # a bug: stop, and say so at the next call
                log.exception("%s: the renewal failed", self)
                self._failure = AgentPresenceError(None, f"the renewal failed: {exc!r}")
                self._failure.__cause__ = exc
                return
            else:
                if failing:
                    log.info("%s: renewed again", self)
                failing = False
                backoff = MIN_RENEW_S

    # ------------------------------------------------------------ HTTP

    async def _request(self, method: str, body: bytes | None) -> tuple[int, Any]:
        """One request on its own connection: (status, the JSON answer or None). Raises
        AgentPresenceError(None, ...) when no answer comes within the timeout."""
        head = [
            f"{method} {self._path} HTTP/1.1",
            f"Host: {self._netloc}",
            f"User-Agent: presence-relay-client/{SDK_VERSION}",
            "Accept: application/json",
            "Connection: close",
        ]
        if self._api_key is not None:
            head.append(f"Authorization: Bearer {self._api_key}")
        if body is not None:
            head += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
        request = ("\r\n".join(head) + "\r\n\r\n").encode() + (body or b"")
        writer: asyncio.StreamWriter | None = None
        try:
            async with asyncio.timeout(self._timeout):
                reader, writer = await asyncio.open_connection(
                    self._host,
                    self._port,
                    ssl=ssl.create_default_context() if self._tls else None,
                    limit=MAX_ANSWER_BYTES,
                )
                writer.write(request)
                await writer.drain()
                return await _read_answer(reader)
        except TimeoutError as exc:
            raise AgentPresenceError(
                None, f"{method} {self._path}: no answer within {self._timeout:g} s"
            ) from exc
        except (OSError, EOFError, asyncio.LimitOverrunError, ValueError) as exc:
            raise AgentPresenceError(
                None, f"{method} {self._path}: {type(exc).__name__}: {exc}"
            ) from exc
        finally:
            if writer is not None:
                writer.transport.abort()  # (the relay closes anyway: nothing to wait for)


async def _read_answer(reader: asyncio.StreamReader) -> tuple[int, Any]:
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
    lines = head.split("\r\n")
    version, _, rest = lines[0].partition(" ")
    code = rest.partition(" ")[0]
    if not version.startswith("HTTP/1.") or not code.isdigit():
        raise ValueError(f"not an HTTP answer: {lines[0][:80]!r}")
    status = int(code)
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    if status == 204 or status == 304 or 100 <= status < 200:
        return status, None
    length = headers.get("content-length")
    if length is not None:
        if not length.isdigit() or int(length) > MAX_ANSWER_BYTES:
            raise ValueError(f"bad Content-Length {length[:20]!r}")
        raw = await reader.readexactly(int(length))
    else:
        raw = await reader.read(MAX_ANSWER_BYTES)
    if not raw:
        return status, None
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode("utf-8", "replace")


def _answer_error(status: int, answer: Any) -> AgentPresenceError:
    if isinstance(answer, dict) and isinstance(answer.get("error"), str):
        field = answer.get("field")
        return AgentPresenceError(
            status, answer["error"], field if isinstance(field, str) else None
        )
    text = answer if isinstance(answer, str) and answer else "no error message"
    return AgentPresenceError(status, text[:200])
