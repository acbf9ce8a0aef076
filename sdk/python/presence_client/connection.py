"""One WebSocket connection to a relay: handshake, reader/writer tasks, reconnects."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import random
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TypeAlias

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException
from websockets.typing import Subprotocol

from .document import Document, ErrorEvent, _Link
from .errors import ConnectionClosedError, RelayClientError, RelayError, TokenProviderError
from .protocol import (
    ALREADY_JOINED,
    BATCH,
    CLOSE_INVALID_DATA,
    CLOSE_NORMAL,
    CLOSE_PROTOCOL,
    CLOSE_PROTOCOL_ERROR,
    CLOSE_RATE_LIMIT,
    CLOSE_RESUMED,
    CLOSE_TOO_BIG,
    CLOSE_UNAUTHENTICATED,
    ERROR,
    HELLO,
    JOIN,
    JOINED,
    LEAVE,
    MAX_HANDLE,
    NOT_JOINED,
    PING,
    PONG,
    SUBPROTOCOL,
    VERSION,
    WELCOME,
    DecodeError,
    pack,
    unpack,
)

__all__ = ["FATAL_CLOSE_CODES", "SDK_VERSION", "Connection", "TokenProvider", "connect"]

log = logging.getLogger("presence_client")

SDK_VERSION = "py/0.1.0"
FATAL_CLOSE_CODES = frozenset({
    CLOSE_PROTOCOL_ERROR, CLOSE_INVALID_DATA, CLOSE_TOO_BIG,
    CLOSE_PROTOCOL, CLOSE_UNAUTHENTICATED, CLOSE_RESUMED, CLOSE_RATE_LIMIT,
})  # fmt: skip
"""Close codes after which the SDK does not reconnect, because the same client would only
be closed again: a WebSocket protocol violation (1002, 1007 invalid UTF-8, 1009 too big),
4400 (relay protocol violation), 4401 (unauthenticated) and 4429 (rate-limit abuse); and
4409 (v1.1), this connection was resumed by a newer one: another connection holding its
resume token took the session over, and reconnecting would only take it back. The browser
SDK (sdk/browser/presence.js, FATAL_CLOSES) uses the same set. One exception: with a token
provider, 4401 "token expired" on a connection that had been welcomed is the relay ending
it at the token's `exp`, and the SDK reconnects with a fresh token."""
KEEPALIVE_S = 5.0
"""The SDK's ping interval and pong timeout (websockets' `ping_interval`/`ping_timeout`,
which the options of `connect` override): a dead network is noticed within about 10 s, well
inside the relay's default `reconnect_grace_ms` (30 s), so the session resumes."""
TOKEN_EXPIRED = "token expired"
"""The close reason of 4401 when the relay ends a connection at its token's `exp`."""
ABNORMAL_CLOSURE = 1006
STABLE_AFTER_S = 5.0
"""A connection that lived this long resets the reconnect backoff."""
RENEW_AT_ONCE_AFTER_S = 1.0
"""A connection ended at its token's `exp` after living at least this long reconnects at
once; a shorter one goes through the backoff, so a provider that hands out tokens about to
expire cannot make the SDK reconnect in a tight loop."""

TokenProvider: TypeAlias = Callable[[], str | Awaitable[str]]
"""A callable taking no arguments that returns a token, or an awaitable of one (an ``async
def`` works). Called before every HELLO: the first connect and every reconnect."""


@dataclass(slots=True)
class _Session:
    """One physical WebSocket connection (a reconnect makes a new one)."""

    ws: ClientConnection
    resumed: bool = False
    """The relay resumed the previous connection's session (WELCOME `resumed`)."""
    queue: asyncio.Queue[bytes | None] = field(default_factory=asyncio.Queue)
    writer: asyncio.Task[None] | None = None


def connect(
    url: str,
    token: str | TokenProvider | None = None,
    user_id: str | None = None,
    name: str | None = None,
    avatar: str | None = None,
    *,
    reconnect: bool = True,
    **options: Any,
) -> Connection:
    """Open a connection to the relay at `url` (e.g. ``ws://127.0.0.1:8765/ws``).

    Use as ``async with connect(...) as conn:`` or ``conn = await connect(...)`` (then
    ``await conn.close()``). With a `token` the identity comes from the token; without one
    the relay must allow anonymous use and `user_id`/`name` identify the user. `token` is a
    string or a `TokenProvider` (called for a fresh token before every HELLO). See
    `Connection` for the other options.
    """
    return Connection(
        url, token=token, user_id=user_id, name=name, avatar=avatar, reconnect=reconnect, **options
    )


class Connection:
    """A client connection to a presence relay.

    After the handshake: `user` and `settings` (the WELCOME maps) and `connection_id`.
    `join()` opens documents, `ping()` measures the round trip, `errors` collects ERROR
    frames that belong to no call. With `reconnect=True` an unexpected close (anything but
    a close asked for by `close()` and the `FATAL_CLOSE_CODES`
    1002/1007/1009/4400/4401/4409/4429) reconnects with jittered exponential backoff and
    re-runs HELLO. Within the relay's `reconnect_grace_ms` of the drop the HELLO asks to
    resume the session (protocol v1.1): the relay then brings every document back with the
    same handle and sid, the others see this client as DISCONNECTED for the gap and never
    as gone, and each document emits the differences it finds as events, then
    `Resynced(resumed=True)`. Otherwise every open document is joined again with the same
    handle and emits `Resynced`. Either way the latest cursor, viewport, focus and typing
    are sent again, and the status when the relay's snapshot lacks it.

    `close()` is a deliberate leave: LEAVE for every document, then close 1000, so the
    others see reason LEFT at once instead of a DISCONNECTED member.

    `token` is a string, or a token provider: a callable with no arguments returning a
    token or an awaitable of one, called before every HELLO, so that reconnects use a fresh
    token. The relay ends a connection at its token's `exp` (close 4401 "token expired");
    with a provider that is not fatal: the SDK reconnects at once with a new token and
    rejoins. A HELLO refused with 4401 stays fatal (a fresh token did not help), as does
    every 4401 with a string token. A provider that raises (or takes longer than
    `open_timeout`) counts as a failed reconnect attempt; on the first connect `start()`
    raises `TokenProviderError`. A sync provider runs on the event loop: keep it quick, or
    make it ``async``. Tokens are never logged.
    """

    def __init__(
        self,
        url: str,
        *,
        token: str | TokenProvider | None = None,
        user_id: str | None = None,
        name: str | None = None,
        avatar: str | None = None,
        reconnect: bool = True,
        sdk: str = SDK_VERSION,
        open_timeout: float = 10.0,
        request_timeout: float = 10.0,
        backoff_base: float = 0.1,
        backoff_cap: float = 5.0,
        max_reconnect_attempts: int | None = None,
        max_errors: int = 1000,
        **ws_options: Any,
    ) -> None:
        """`open_timeout`: seconds for the WebSocket handshake and again for WELCOME;
        `request_timeout`: default for `join()` and `ping()`; `backoff_base`/`backoff_cap`:
        reconnect delays (full jitter); `max_reconnect_attempts`: None retries forever;
        `ws_options` go to `websockets.asyncio.client.connect`."""
        self.url = url
        self.reconnect = reconnect
        self.open_timeout = open_timeout
        self.request_timeout = request_timeout
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.max_reconnect_attempts = max_reconnect_attempts
        if token is not None and not isinstance(token, str) and not callable(token):
            raise TypeError("token must be a string or a callable returning one")
        self._token = token
        if token is not None:
            self._info: dict[str, Any] = {"sdk": sdk}
        else:
            uid = user_id if user_id is not None else f"anon-{uuid.uuid4().hex[:12]}"
            self._info = {"sdk": sdk, "user_id": uid, "name": name if name is not None else uid}
            if avatar is not None:
                self._info["avatar"] = avatar
        self._ws_options: dict[str, Any] = {
            "compression": None,
            "max_size": 16 * 1024 * 1024,
            # A network that went away sends nothing: without pings of its own the SDK
            # would learn of it at websockets' default (20 + 20 s), after the relay's grace
            # may have run out (it then rejoins as a new member instead of resuming).
            "ping_interval": KEEPALIVE_S,
            "ping_timeout": KEEPALIVE_S,
            **ws_options,
        }

        self.user: dict[str, Any] = {}
        """The WELCOME `user` map: id, name, avatar, color, workspace."""
        self.settings: dict[str, Any] = {}
        """The WELCOME `settings` map (batch_ms, cursor_throttle_ms, ...)."""
        self.connection_id: str | None = None
        self.clock_offset_ms: float = 0.0
        """Estimated server clock minus local clock, in ms (refined by `ping()`)."""
        self.errors: deque[ErrorEvent] = deque(maxlen=max_errors)
        """ERROR frames that answered no call: nil handle, unknown handle, or a document's
        non-join error (which also appears in that document's `events()`). Oldest dropped."""
        self.last_close: tuple[int, str] | None = None
        """(close code, reason) of the last WebSocket that closed (1006: no close frame)."""
        self.reconnects: int = 0
        """How many times the connection came back after an unexpected close."""
        self.resumed: bool = False
        """True when the current WebSocket resumed the previous one's session (v1.1)."""
        self.documents: dict[int, Document] = {}
        """Open (or joining) documents by handle."""

        self._by_doc_id: dict[str, Document] = {}
        self._next_handle = 0
        # Resume (v1.1): the last WELCOME's token and grace, and when its connection dropped.
        self._resume_token: str | None = None
        self._grace_ms = 0
        self._dropped_at: float | None = None
        # Handles of documents left while disconnected, which the suspended session may
        # still hold: a resume LEAVEs them. Then `_unwanted`: LEAVE sent, and the resumed
        # JOINED (or the NOT_JOINED) that is still to come must not be answered again.
        self._stale: set[int] = set()
        self._unwanted: set[int] = set()
        self._session: _Session | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._pings: dict[int, tuple[float, asyncio.Future[float]]] = {}
        self._backoff_attempt = 0
        self._closing = False
        self._fatal: ConnectionClosedError | None = None
        self._done: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        state = "connected" if self.connected else "closed" if self.closed else "connecting"
        return f"<Connection {self.url} {state} docs={len(self.documents)}>"

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> Connection:
        """Connect and complete HELLO/WELCOME. Raises on failure (no retry the first time):
        `ConnectionClosedError` if the relay closed the connection, `TokenProviderError` if
        the token provider failed, or the `OSError` / `websockets` exception of the failed
        handshake."""
        if self._supervisor is not None:
            raise RelayClientError("already started")
        self._loop = asyncio.get_running_loop()
        self._done = asyncio.Event()
        session = await self._open_session()
        self._activate(session)
        self._supervisor = asyncio.create_task(self._run(session), name="relay-client")
        return self

    async def close(self) -> None:
        """Close the connection (queued frames are sent first); every document ends.

        Deliberately: LEAVE for every document, then close 1000, so that the others see
        reason LEFT at once. (A close without the LEAVEs would look like a lost connection:
        the relay would hold this client's place as DISCONNECTED for `reconnect_grace_ms`.)
        """
        if self._closing:
            if self._supervisor is not None:
                with contextlib.suppress(BaseException):
                    await self._supervisor
            return
        self._closing = True
        session = self._session
        if session is not None:
            for handle in self._held_handles():
                self._send(pack([LEAVE, handle]))
            session.queue.put_nowait(None)  # the writer sends what is queued, then stops
            if session.writer is not None:
                with contextlib.suppress(BaseException):
                    await asyncio.wait_for(asyncio.shield(session.writer), 2.0)
            with contextlib.suppress(Exception):
                await session.ws.close(CLOSE_NORMAL)
        if self._supervisor is not None:
            if session is None:
                self._supervisor.cancel()  # sleeping between reconnect attempts
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(self._supervisor, 5.0)
        self._shutdown(None)

    async def __aenter__(self) -> Connection:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __await__(self) -> Generator[Any, None, Connection]:
        return self.start().__await__()

    async def wait_closed(self) -> None:
        """Wait until the connection is closed for good; raises `ConnectionClosedError` if
        that was not the result of `close()`."""
        if self._done is None:
            raise RelayClientError("not started")
        await self._done.wait()
        if self._fatal is not None:
            raise self._fatal

    @property
    def connected(self) -> bool:
        """True while a WebSocket is open and past WELCOME (False while reconnecting)."""
        return self._session is not None

    @property
    def closed(self) -> bool:
        """True once closed for good (by `close()` or a fatal close)."""
        return self._done is not None and self._done.is_set()

    # ------------------------------------------------------------------ requests

    async def join(self, doc_id: str, *, timeout: float | None = None) -> Document:
        """Join `doc_id` with a fresh handle and wait for JOINED.

        Raises `RelayError(code, message)` when the relay answers with ERROR (e.g. 7 for a
        bad doc id, 4 forbidden, 5 at capacity), `TimeoutError` after `timeout` seconds
        (default `request_timeout`). Joining while reconnecting waits for the reconnect.
        """
        self._check_usable()
        if doc_id in self._by_doc_id:
            raise RelayError(ALREADY_JOINED, f"{doc_id!r} is already joined on this connection")
        handle = self._alloc_handle()
        doc = Document(self, handle, doc_id)
        waiter: asyncio.Future[None] = self._loop.create_future()
        doc._join_waiter = waiter
        self.documents[handle] = doc
        self._by_doc_id[doc_id] = doc
        if self._session is not None:
            self._send_join(doc)
        try:
            async with asyncio.timeout(self.request_timeout if timeout is None else timeout):
                await waiter
        except BaseException as exc:
            # A late JOINED for this handle is answered with LEAVE by the reader.
            self._release(doc)
            doc._close(exc if isinstance(exc, RelayClientError) else None)
            raise
        return doc

    async def ping(self, *, timeout: float | None = None) -> float:
        """Send PING and return the round-trip time in seconds (also updates
        `clock_offset_ms`)."""
        self._check_usable()
        if self._session is None:
            raise RelayClientError("not connected (reconnecting)")
        client_ms = time.time_ns() // 1_000_000
        while client_ms in self._pings:
            client_ms += 1
        fut: asyncio.Future[float] = self._loop.create_future()
        self._pings[client_ms] = (self._loop.time(), fut)
        self._send(pack([PING, client_ms]))
        try:
            async with asyncio.timeout(self.request_timeout if timeout is None else timeout):
                return await fut
        finally:
            self._pings.pop(client_ms, None)

    # ------------------------------------------------------------------ internals used by Document

    def _send(self, data: bytes) -> None:
        """Queue one frame on the current session (dropped while disconnected: documents
        keep their state and send it again after the rejoin)."""
        session = self._session
        if session is not None:
            session.queue.put_nowait(data)

    def _send_join(self, doc: Document, *, dup_ok: bool = False) -> None:
        self._send(pack([JOIN, doc.handle, doc.doc_id]))
        doc._link = _Link.JOINING
        doc._dup_join = dup_ok

    def _forget(self, doc: Document) -> None:
        if self.documents.get(doc.handle) is doc:
            del self.documents[doc.handle]
        if self._by_doc_id.get(doc.doc_id) is doc:
            del self._by_doc_id[doc.doc_id]

    def _release(self, doc: Document) -> None:
        """Forget `doc` and undo it on the relay: LEAVE now when the relay has it, or at the
        resume when it holds it for a suspended connection."""
        self._forget(doc)
        link, doc._link = doc._link, None
        if link is None:
            return
        if self._session is None:
            self._stale.add(doc.handle)
        elif link is _Link.JOINED:
            self._send(pack([LEAVE, doc.handle]))
        elif link is _Link.RESUMING:
            self._send(pack([LEAVE, doc.handle]))
            self._unwanted.add(doc.handle)  # its resumed JOINED may be on the way already
        # JOINING: the late JOINED is answered with LEAVE by the reader.

    def _held_handles(self) -> list[int]:
        """The handles the relay has, or will have, open on the current session."""
        return [h for h, doc in self.documents.items() if doc._link is not None]

    def _cursor_interval(self) -> float:
        return _seconds(self.settings.get("cursor_throttle_ms"), 0.05)

    def _typing_debounce(self) -> float:
        return _seconds(self.settings.get("typing_debounce_ms"), 0.5)

    def _check_usable(self) -> None:
        if self._fatal is not None:
            raise self._fatal
        if self._closing or self._supervisor is None:
            raise RelayClientError("connection is closed" if self._closing else "not started")

    def _alloc_handle(self) -> int:
        # Monotonic (mod 65536) so a stale reply for a left handle cannot hit a new document.
        for _ in range(MAX_HANDLE + 1):
            h = self._next_handle
            self._next_handle = (h + 1) % (MAX_HANDLE + 1)
            if h not in self.documents and h not in self._stale and h not in self._unwanted:
                return h
        raise RelayClientError("no free handle")

    # ------------------------------------------------------------------ sessions

    async def _next_token(self) -> str | None:
        """The token for the next HELLO: the string, or a fresh one from the provider."""
        source = self._token
        if source is None or isinstance(source, str):
            return source
        try:
            # Bounded: a provider that hangs (a token service down) must not stall the
            # reconnect loop forever; it then counts as one failed attempt.
            async with asyncio.timeout(self.open_timeout):
                result = source()
                token: object = await result if inspect.isawaitable(result) else result
        except Exception as exc:  # not BaseException: close() cancels us mid-call
            # The type only: the provider's message may quote a credential or a token.
            raise TokenProviderError(f"token provider failed: {type(exc).__name__}") from exc
        if not isinstance(token, str) or not token:
            raise TokenProviderError(
                f"token provider returned {type(token).__name__}, not a non-empty string"
            )
        return token

    async def _open_session(self) -> _Session:
        # The token first, before the socket: the relay gives HELLO only auth_timeout_ms.
        token = await self._next_token()
        ws = await ws_connect(
            self.url,
            subprotocols=[Subprotocol(SUBPROTOCOL)],
            open_timeout=self.open_timeout,
            **self._ws_options,
        )
        info = self._hello_info()
        try:
            await ws.send(pack([HELLO, VERSION, token, info]))
            async with asyncio.timeout(self.open_timeout):
                while True:
                    data = await ws.recv()
                    frame = self._decode(data)
                    if frame is None:
                        continue
                    if frame[0] == WELCOME:
                        self._on_welcome(frame)
                        break
                    if frame[0] == ERROR and len(frame) >= 4:
                        self.errors.append(ErrorEvent(frame[2], frame[3], frame[1]))
        except ConnectionClosed as exc:
            raise _closed_error(exc) from None
        except BaseException:
            with contextlib.suppress(Exception):
                await ws.close()
            raise
        resumed = self.settings.get("resumed") is True
        if resumed and "resume" not in info:
            log.warning("the relay says it resumed a session this client did not ask for")
        return _Session(ws, resumed=resumed and "resume" in info)

    def _hello_info(self) -> dict[str, Any]:
        """HELLO's `info`, with `resume` when the previous session may still be held."""
        if not self._can_resume():
            return self._info
        return {**self._info, "resume": self._resume_token}

    def _can_resume(self) -> bool:
        """After a drop, within the last WELCOME's `reconnect_grace_ms` (past it the relay
        has ended the session: asking could only fail)."""
        if self._resume_token is None or self._dropped_at is None:
            return False
        return (self._loop.time() - self._dropped_at) * 1000.0 < self._grace_ms

    def _on_welcome(self, frame: list[Any]) -> None:
        _, _version, connection_id, user, server_ms, settings = frame[:6]
        self.connection_id = connection_id
        self.user = dict(user) if isinstance(user, dict) else {}
        self.settings = dict(settings) if isinstance(settings, dict) else {}
        if isinstance(server_ms, int | float):
            self.clock_offset_ms = server_ms - time.time() * 1000.0
        token, grace = self.settings.get("resume_token"), self.settings.get("reconnect_grace_ms")
        # A v1 relay sends neither: no resume, every reconnect joins afresh.
        self._resume_token = token if isinstance(token, str) and token else None
        self._grace_ms = grace if type(grace) is int and grace > 0 else 0
        interval = self._cursor_interval()
        for doc in self.documents.values():
            doc._set_interval(interval)

    def _activate(self, session: _Session) -> None:
        """Make `session` current and get every registered document joined on it."""
        session.writer = asyncio.create_task(self._write(session), name="relay-client-writer")
        self._session = session
        self.resumed = session.resumed
        if session.resumed:
            self._reconcile_resumed()
            return
        # A fresh connection: the relay has nothing of ours (the old session's documents
        # end there on their own).
        self._stale.clear()
        self._unwanted.clear()
        for doc in list(self.documents.values()):
            self._send_join(doc)

    def _reconcile_resumed(self) -> None:
        """The relay resumed the suspended session and is sending one JOINED per document
        it held. LEAVE those left meanwhile (first: a document left and joined again under
        a new handle would otherwise be ALREADY_JOINED), JOIN those it cannot have."""
        self._stale |= self._unwanted  # a LEAVE from a resume that dropped too early
        self._unwanted = self._stale
        self._stale = set()
        for handle in sorted(self._unwanted):
            self._send(pack([LEAVE, handle]))
        for doc in list(self.documents.values()):
            if doc._link is _Link.JOINED or doc._link is _Link.RESUMING:
                doc._link = _Link.RESUMING  # its JOINED comes unasked: no JOIN
            else:
                # Joined while disconnected (None), or a JOIN sent just before the drop that
                # the relay may or may not have had: JOIN; in the second case a resumed
                # JOINED and an ALREADY_JOINED may answer instead.
                self._send_join(doc, dup_ok=doc._link is _Link.JOINING)

    async def _write(self, session: _Session) -> None:
        ws, queue = session.ws, session.queue
        while True:
            data = await queue.get()
            if data is None:
                return
            try:
                await ws.send(data)
            except ConnectionClosed:
                return
            except Exception:  # e.g. a frame over max_size: drop it, keep the writer alive
                log.exception("could not send a frame")

    async def _run(self, session: _Session) -> None:
        """Read frames; on an unexpected close, reconnect (or give up) and go on."""
        try:
            while True:
                opened_at = self._loop.time()
                code, reason = await self._read(session)
                self._dropped_at = self._loop.time()  # the resume grace runs from here
                self.last_close = (code, reason)
                self._session = None
                if session.writer is not None:
                    session.writer.cancel()
                if self._closing:
                    return
                err = ConnectionClosedError(code, reason)
                renew = self._renews(code, reason)
                if not self.reconnect or (code in FATAL_CLOSE_CODES and not renew):
                    self._shutdown(err)
                    return
                lived = self._loop.time() - opened_at
                if renew:
                    log.info("token expired; reconnecting with a fresh token")
                else:
                    log.info("connection lost (%s %s); reconnecting", code, reason)
                if lived >= STABLE_AFTER_S:
                    self._backoff_attempt = 0  # it was a healthy connection: start over
                self._suspend()
                try:
                    session = await self._reconnect_loop(
                        err, at_once=renew and lived >= RENEW_AT_ONCE_AFTER_S
                    )
                except ConnectionClosedError as exc:
                    self._shutdown(exc)
                    return
                if self._closing_now():  # close() may have come while we reconnected
                    await self._close_unused(session)
                    return
                self.reconnects += 1
                self._activate(session)
        except asyncio.CancelledError:
            if self._session is not None and self._session.writer is not None:
                self._session.writer.cancel()
            raise
        finally:
            if self._closing:
                self._shutdown(None)

    def _closing_now(self) -> bool:
        return self._closing

    async def _close_unused(self, session: _Session) -> None:
        """Close a session that close() made useless before it was activated; if it resumed
        a session, leave its documents first, like close() does."""
        with contextlib.suppress(Exception):
            if session.resumed:
                for handle in sorted({*self._held_handles(), *self._stale, *self._unwanted}):
                    await session.ws.send(pack([LEAVE, handle]))
            await session.ws.close(CLOSE_NORMAL)

    def _renews(self, code: int, reason: str) -> bool:
        """True for the relay ending a welcomed connection at its token's `exp`, when a
        provider can give a fresh token. (A refused HELLO never gets here: it fails in
        `_open_session`, and 4401 there is fatal.)"""
        return (
            code == CLOSE_UNAUTHENTICATED
            and reason == TOKEN_EXPIRED
            and self._token is not None
            and not isinstance(self._token, str)
        )

    async def _read(self, session: _Session) -> tuple[int, str]:
        ws = session.ws
        while True:
            try:
                data = await ws.recv()
            except ConnectionClosed as exc:
                return _close_code(exc), exc.rcvd.reason if exc.rcvd is not None else ""
            try:
                self._dispatch(data)
            except Exception:  # a bug or a malformed frame must not kill the reader
                log.exception("error while handling a frame from the relay")

    async def _reconnect_loop(
        self, last: ConnectionClosedError, *, at_once: bool = False
    ) -> _Session:
        """Full-jitter exponential backoff. The attempt count carries over when the previous
        connection died young, so a relay that accepts and then drops at once is not
        hammered. `at_once`: the first attempt goes without delay (the token expired; the
        relay is fine, and the user should not see a gap)."""
        attempt = 0
        cause: BaseException | None = None
        while True:
            if at_once and attempt == 0:
                delay = 0.0  # not a backoff step: the counter is left alone
            else:
                n = min(self._backoff_attempt, 32)
                delay = random.uniform(0, min(self.backoff_cap, self.backoff_base * 2**n))
                self._backoff_attempt += 1
            await asyncio.sleep(delay)
            if self._closing:
                raise asyncio.CancelledError
            try:
                return await self._open_session()
            except TokenProviderError as exc:
                # Like a failed attempt: back off and ask the provider again. The message
                # names the exception's type only, never a token.
                log.warning("reconnect attempt failed: %s", exc)
                last, cause = ConnectionClosedError(last.code, str(exc)), exc
            except ConnectionClosedError as exc:
                if exc.code in FATAL_CLOSE_CODES:
                    raise  # 4401 included: a fresh token was refused, another will not help
                last, cause = exc, None
            except InvalidStatus as exc:
                status = exc.response.status_code
                if 400 <= status < 500 and status not in (408, 429):
                    raise ConnectionClosedError(None, f"handshake refused: HTTP {status}") from exc
                last, cause = ConnectionClosedError(None, f"handshake failed: HTTP {status}"), exc
            except (OSError, TimeoutError, WebSocketException) as exc:
                last = ConnectionClosedError(last.code, f"reconnect failed: {exc!r}")
                cause = exc
            attempt += 1
            if self.max_reconnect_attempts is not None and attempt >= self.max_reconnect_attempts:
                raise ConnectionClosedError(
                    last.code, f"gave up reconnecting: {last.reason}"
                ) from cause

    def _suspend(self) -> None:
        for doc in self.documents.values():
            doc._suspend()
        self._fail_pings(RelayClientError("connection lost while waiting for PONG"))

    def _shutdown(self, error: ConnectionClosedError | None) -> None:
        """Closed for good: end every document and pending call."""
        if error is not None and self._fatal is None and not self._closing:
            self._fatal = error
        self._session = None
        for doc in list(self.documents.values()):
            doc._close(self._fatal)
        self.documents.clear()
        self._by_doc_id.clear()
        self._fail_pings(self._fatal or RelayClientError("connection closed"))
        if self._done is not None:
            self._done.set()

    def _fail_pings(self, exc: BaseException) -> None:
        for _, fut in self._pings.values():
            if not fut.done():
                fut.set_exception(exc)
        self._pings.clear()

    # ------------------------------------------------------------------ incoming frames

    @staticmethod
    def _decode(data: bytes | str) -> list[Any] | None:
        if not isinstance(data, bytes):
            log.warning("ignoring a text frame from the relay")
            return None
        try:
            frame = unpack(data)
        except DecodeError:
            log.warning("ignoring a frame that is not msgpack")
            return None
        if type(frame) is not list or not frame:
            log.warning("ignoring a frame that is not a non-empty array")
            return None
        return frame

    def _dispatch(self, data: bytes | str) -> None:
        frame = self._decode(data)
        if frame is None:
            return
        t = frame[0]
        if t == BATCH:
            doc = self._by_doc_id.get(frame[1])
            if doc is not None:
                doc._apply_batch(frame[3], frame[2])
        elif t == JOINED:
            handle = frame[1]
            if handle in self._unwanted:  # left while disconnected; the LEAVE is sent
                self._unwanted.discard(handle)
                return
            doc = self.documents.get(handle)
            if doc is None or doc.doc_id != frame[2]:
                self._send(pack([LEAVE, handle]))  # a join we gave up on: undo it
            else:
                recent = frame[5] if len(frame) > 5 else None  # v1.1
                doc._on_joined(frame[3], frame[4], recent, resumed=self.resumed)
        elif t == ERROR:
            handle, code, message = frame[1], frame[2], frame[3]
            if code == NOT_JOINED and handle in self._unwanted:
                self._unwanted.discard(handle)  # the resume did not bring it back: fine
                return
            doc = self.documents.get(handle) if handle is not None else None
            if doc is not None:
                consumed = doc._on_error(code, message)
                if doc.closed:
                    self._forget(doc)
                if consumed:
                    return
            self.errors.append(ErrorEvent(code, message, handle))
            log.debug("relay error %s on handle %s: %s", code, handle, message)
        elif t == PONG:
            client_ms, server_ms = frame[1], frame[2]
            entry = self._pings.pop(client_ms, None)
            if entry is not None:
                sent_at, fut = entry
                rtt = self._loop.time() - sent_at
                self.clock_offset_ms = server_ms - (client_ms + rtt * 500.0)
                if not fut.done():
                    fut.set_result(rtt)
        elif t == WELCOME:
            self._on_welcome(frame)


def _seconds(ms: object, default: float) -> float:
    """A WELCOME setting in ms as seconds (`default` when it is missing or not a number)."""
    if type(ms) is not int and type(ms) is not float:
        return default
    return max(0.0, ms / 1000.0)


def _close_code(exc: ConnectionClosed) -> int:
    return exc.rcvd.code if exc.rcvd is not None else ABNORMAL_CLOSURE


def _closed_error(exc: ConnectionClosed) -> ConnectionClosedError:
    return ConnectionClosedError(_close_code(exc), exc.rcvd.reason if exc.rcvd is not None else "")
