"""The Python SDK's token provider against a real in-process relay with a JWT secret.

The relay ends a connection at its token's `exp` (close 4401 "token expired"). With a token
provider the SDK reconnects at once with a fresh token and rejoins; a fresh token that is
refused, or a plain string token that expires, is fatal. Tokens live about two seconds here
(PyJWT directly: `mint_token` has whole-second ttls), so each expiry test takes that long.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import jwt
import pytest
from helpers import MS
from presence_client import (
    Connection,
    ConnectionClosedError,
    Document,
    Event,
    Resynced,
    TokenProviderError,
    connect,
)

from relay.auth import mint_token
from relay.server.app import Relay

SECRET = "presence-relay-test-secret-0123456789abcdef"  # the relay wants 32+ bytes
OTHER_SECRET = "not-the-relays-secret-0123456789abcdef-xyz"
TOKEN_TTL_S = 2.0
TIMEOUT = 20.0  # generous: a loaded 2-core machine; every wait below is bounded by it


def _token(user: str, ttl_s: float = TOKEN_TTL_S, secret: str = SECRET) -> tuple[str, float]:
    """A token for `user` and its `exp` (a float: PyJWT and the relay take sub-seconds)."""
    exp = time.time() + ttl_s
    claims = {"sub": user, "name": user.title(), "ws": "acme", "docs": ["*"], "exp": exp}
    return jwt.encode(claims, secret, algorithm="HS256"), exp


class Provider:
    """A sync token provider that records every call; `script` may replace a call's token
    (by call number, from 0) or make it raise."""

    def __init__(self, user: str, script: dict[int, str | Exception] | None = None) -> None:
        self.user = user
        self.script = script or {}
        self.calls: list[float] = []  # time.time() of each call
        self.exps: list[float] = []
        self.issued: list[str] = []

    def __call__(self) -> str:
        n = len(self.calls)
        self.calls.append(time.time())
        step = self.script.get(n)
        if isinstance(step, Exception):
            raise step
        token, exp = _token(self.user)
        token = step if step is not None else token
        self.exps.append(exp)
        self.issued.append(token)
        return token


@pytest.fixture
async def relay(relay_factory: Callable[..., Awaitable[Relay]]) -> Relay:
    return await relay_factory(jwt_secret=SECRET, batch_ms=20)


@pytest.fixture
def url(relay: Relay) -> str:
    return f"ws://127.0.0.1:{relay.port}/ws"


@pytest.fixture
async def bob(url: str) -> AsyncIterator[Connection]:
    """The other member, on a long-lived string token."""
    token = mint_token(SECRET, "bob", "Bob", workspace="acme", ttl_s=600)
    async with connect(url, token=token, proxy=None) as conn:
        yield conn


@pytest.fixture(autouse=True)
def _no_token_in_logs(caplog: pytest.LogCaptureFixture) -> Iterator[list[str]]:
    """Whatever a test does, none of the tokens it lists here reaches the SDK's (or the
    relay's) logs, tracebacks included."""
    caplog.set_level(logging.DEBUG)
    issued: list[str] = []
    yield issued
    formatter = logging.Formatter()
    text = "\n".join(formatter.format(r) for r in caplog.get_records("call"))
    for token in issued:
        assert token not in text


def _doc_id() -> str:
    return f"doc-{uuid.uuid4().hex[:12]}"


async def _wait_event(doc: Document, pred: Callable[[Event], bool]) -> Event:
    async with asyncio.timeout(TIMEOUT):
        async for event in doc.events():
            if pred(event):
                return event
    raise AssertionError("events() ended")


async def _eventually(cond: Callable[[], bool], what: str) -> None:
    try:
        async with asyncio.timeout(TIMEOUT):
            while not cond():
                await asyncio.sleep(10 * MS)
    except TimeoutError:
        raise AssertionError(f"timed out: {what}") from None


def _sees_cursor(doc: Document, user: str, cursor: tuple[int, int, int]) -> bool:
    return any(m.user_id == user and m.cursor == cursor for m in doc.members.values())


# ---------------------------------------------------------------------------- renewal


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_expiry_reconnects_with_a_fresh_token(
    url: str, bob: Connection, kind: str, _no_token_in_logs: list[str]
) -> None:
    provider = Provider("ann")

    async def async_provider() -> str:
        await asyncio.sleep(10 * MS)  # a real one would ask a token service
        return provider()

    # A backoff of up to 30 s: the reconnect after an expiry must not wait for it.
    ann = connect(url, token=provider if kind == "sync" else async_provider, proxy=None,
                  backoff_base=30.0, backoff_cap=30.0)  # fmt: skip
    async with ann:
        first_connection = ann.connection_id
        assert ann.user["id"] == "ann" and len(provider.calls) == 1
        doc_id = _doc_id()
        da = await ann.join(doc_id)
        db = await bob.join(doc_id)
        old_sid = da.sid

        ev = await _wait_event(da, lambda e: isinstance(e, Resynced))
        assert isinstance(ev, Resynced) and ev.old_sid == old_sid
        assert ann.last_close == (4401, "token expired")
        assert ann.reconnects >= 1
        assert len(provider.calls) >= 2  # a fresh token for the new HELLO...
        assert ann.connection_id != first_connection  # ...which got its own WELCOME
        assert ann.user["id"] == "ann"
        # At once, not after the backoff: the second call came right after the first exp.
        assert provider.calls[1] - provider.exps[0] < 1.5, provider.calls[1] - provider.exps[0]

        # The rejoined document works: a cursor moved now reaches bob. (The second token
        # expires too; the cursor is sent again after every rejoin, so bob gets it anyway.)
        da.move_cursor(5, 6, 7)
        await _eventually(lambda: _sees_cursor(db, "ann", (5, 6, 7)), "bob sees ann's cursor")
        assert not ann.closed
    _no_token_in_logs.extend(provider.issued)


async def test_a_refused_fresh_token_is_fatal(
    url: str, bob: Connection, _no_token_in_logs: list[str]
) -> None:
    bad, _ = _token("ann", ttl_s=600, secret=OTHER_SECRET)
    provider = Provider("ann", {1: bad})
    ann = await connect(url, token=provider, proxy=None, backoff_base=0.01)
    try:
        doc = await ann.join(_doc_id())
        with pytest.raises(ConnectionClosedError) as info:
            async with asyncio.timeout(TIMEOUT):
                await ann.wait_closed()
        assert info.value.code == 4401
        assert info.value.reason.startswith("invalid token"), info.value.reason
        with pytest.raises(ConnectionClosedError):
            await doc.next_event(TIMEOUT)
        await asyncio.sleep(500 * MS)  # no loop: nothing asks the provider again
        assert len(provider.calls) == 2
        assert ann.closed and ann.reconnects == 0
    finally:
        await ann.close()
    _no_token_in_logs.extend([*provider.issued, bad])


async def test_an_expiring_string_token_is_fatal(url: str, _no_token_in_logs: list[str]) -> None:
    token, _ = _token("ann", ttl_s=1.5)
    ann = await connect(url, token=token, proxy=None, backoff_base=0.01)
    try:
        doc = await ann.join(_doc_id())
        with pytest.raises(ConnectionClosedError) as info:
            async with asyncio.timeout(TIMEOUT):
                await ann.wait_closed()
        assert (info.value.code, info.value.reason) == (4401, "token expired")
        with pytest.raises(ConnectionClosedError):
            await doc.next_event(TIMEOUT)
        assert ann.closed and ann.reconnects == 0
    finally:
        await ann.close()
    _no_token_in_logs.append(token)


# ---------------------------------------------------------------------------- failing providers


async def test_a_failing_provider_is_a_failed_attempt(
    url: str, bob: Connection, caplog: pytest.LogCaptureFixture, _no_token_in_logs: list[str]
) -> None:
    secret_message = "credential-in-the-message"
    provider = Provider("ann", {1: RuntimeError(secret_message), 2: RuntimeError("again")})
    ann = await connect(url, token=provider, proxy=None, backoff_base=0.05, backoff_cap=0.2)
    try:
        doc_id = _doc_id()
        da = await ann.join(doc_id)
        db = await bob.join(doc_id)
        await _wait_event(da, lambda e: isinstance(e, Resynced))
        assert len(provider.calls) >= 4  # ok, raised, raised, ok
        assert ann.reconnects >= 1
        da.move_cursor(1, 2, 3)
        await _eventually(lambda: _sees_cursor(db, "ann", (1, 2, 3)), "bob sees ann's cursor")
        assert "token provider failed: RuntimeError" in caplog.text
        assert secret_message not in caplog.text  # the type only, never the message
    finally:
        await ann.close()
    _no_token_in_logs.extend(provider.issued)


async def test_a_provider_that_keeps_failing_gives_up(url: str) -> None:
    provider = Provider("ann", {n: ValueError("down") for n in range(1, 10)})
    ann = await connect(url, token=provider, proxy=None, backoff_base=0.01,
                        max_reconnect_attempts=3)  # fmt: skip
    try:
        await ann.join(_doc_id())
        with pytest.raises(ConnectionClosedError) as info:
            async with asyncio.timeout(TIMEOUT):
                await ann.wait_closed()
        assert info.value.reason == "gave up reconnecting: token provider failed: ValueError"
        assert isinstance(info.value.__cause__, TokenProviderError)
        assert isinstance(info.value.__cause__.__cause__, ValueError)
        assert len(provider.calls) == 4  # the first connect, then 3 attempts
    finally:
        await ann.close()


async def test_the_first_connect_raises_when_the_provider_fails(url: str) -> None:
    def broken() -> str:
        raise OSError("token service unreachable")

    async def not_a_token() -> Any:
        return None

    with pytest.raises(TokenProviderError) as info:
        await connect(url, token=broken, proxy=None)
    assert str(info.value) == "token provider failed: OSError"
    assert isinstance(info.value.__cause__, OSError)
    with pytest.raises(TokenProviderError, match="returned NoneType"):
        await connect(url, token=not_a_token, proxy=None)
    with pytest.raises(TypeError):
        Connection(url, token=42)  # type: ignore[arg-type]
