"""Sessions that survive their connection (v1.1): DISCONNECTED, resume, the grace, 4409.

Real relays on loopback, raw protocol clients: what the others in the document see is the
point of every test (no `left`, no `joined`, the same sid and color), and that a resume
hands over every budget with the handles.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from helpers import MS, RawClient, wait_event
from websockets.exceptions import ConnectionClosed

from relay.auth import mint_token
from relay.core import protocol as p

pytestmark = pytest.mark.timeout(60)

SECRET = "resume-tests-secret-that-is-long-enough-for-hs256"
GRACE_MS = round(2000 * MS * 1000)


def events(frames: list[list[Any]]) -> list[list[Any]]:
    return [e for f in frames if f[0] == p.BATCH for e in f[3]]


async def setup(r: Any, client_factory: Any, **hello: Any) -> tuple[RawClient, RawClient, int, str]:
    """A watcher and a member `bob` in document d; bob's sid and resume token."""
    watcher = await client_factory(r, "ann")
    await watcher.join(1, "d")
    bob = await client_factory(r)
    welcome = await bob.hello("bob", **hello)
    token = welcome[5]["resume_token"]
    assert welcome[5]["resumed"] is False
    assert welcome[5]["reconnect_grace_ms"] == r.config.reconnect_grace_ms
    sid = (await bob.join(7, "d"))[3]
    await wait_event(watcher, lambda e: e[0] == p.EV_JOINED and e[1][0] == sid)
    return watcher, bob, sid, token


async def test_a_lost_connection_resumes_with_its_handles_sid_color_and_state(
    relay_factory: Any, client_factory: Any
) -> None:
    r = await relay_factory(reconnect_grace_ms=GRACE_MS)
    watcher, bob, sid, token = await setup(r, client_factory)
    await bob.send([p.CURSOR, 7, 3, 4, 40])
    await wait_event(watcher, lambda e: e[0] == p.EV_CURSOR and e[1] == sid)
    color = r.hub.documents["d"].sessions[sid].color
    bob.ws.transport.abort()
    await wait_event(watcher, lambda e: e == [p.EV_ACTIVITY, sid, 5])

    again = await client_factory(r)
    welcome = await again.hello("bob", resume=token)
    assert welcome[0] == p.WELCOME and welcome[5]["resumed"] is True
    assert welcome[5]["resume_token"] != token, "a new token in every WELCOME"
    joined = await again.recv()
    assert joined[:4] == [p.JOINED, 7, "d", sid], "the same handle and sid"
    me = next(m for m in joined[4] if m[0] == sid)
    assert me[4] == color and me[8] == [3, 4, 40], "color and cursor kept"
    assert me[5] != 5, "activity recomputed"
    # The handle works at once (no JOIN); the others see the move, and nothing else.
    await again.send([p.CURSOR, 7, 9, 9, 99])
    got = await watcher.quiet(400 * MS)
    evs = events(got)
    assert [p.EV_CURSOR, sid, 9, 9, 99] in evs
    assert any(e[0] == p.EV_ACTIVITY and e[1] == sid and e[2] != 5 for e in evs)
    assert not [e for e in evs if e[0] in (p.EV_LEFT, p.EV_JOINED)], evs
    assert r.hub.stats.updates["resumed"] == 1


async def test_an_open_connection_is_taken_over_and_closed_4409(
    relay_factory: Any, client_factory: Any
) -> None:
    r = await relay_factory(reconnect_grace_ms=GRACE_MS)
    watcher, bob, sid, token = await setup(r, client_factory)
    again = await client_factory(r)
    assert (await again.hello("bob", resume=token))[5]["resumed"] is True
    assert (await again.recv())[:4] == [p.JOINED, 7, "d", sid]
    with pytest.raises(ConnectionClosed):
        await bob.recv_until(lambda f: False, timeout=2000 * MS)
    assert bob.ws.close_code == p.CLOSE_RESUMED
    evs = events(await watcher.quiet(300 * MS))
    assert not [e for e in evs if e[0] in (p.EV_LEFT, p.EV_JOINED)], evs
    assert r.hub.documents["d"].sessions.keys() == {1, sid}


async def test_frames_sent_right_after_a_resuming_hello_wait_for_it(
    relay_factory: Any, client_factory: Any
) -> None:
    r = await relay_factory(reconnect_grace_ms=GRACE_MS)
    watcher, bob, sid, token = await setup(r, client_factory)
    bob.ws.transport.abort()
    await wait_event(watcher, lambda e: e == [p.EV_ACTIVITY, sid, 5])
    again = await client_factory(r)
    await again.send([1, 1, None, {"user_id": "bob", "name": "bob", "resume": token}])
    await again.send([p.CURSOR, 7, 1, 2, 3])  # pipelined: before the WELCOME came back
    assert (await again.recv())[5]["resumed"] is True
    assert (await again.recv())[0] == p.JOINED
    await wait_event(watcher, lambda e: e == [p.EV_CURSOR, sid, 1, 2, 3])


@pytest.mark.parametrize("case", ["other user", "used token", "unknown token"])
async def test_a_resume_that_cannot_be_honoured_is_refused_and_leaks_nothing(
    relay_factory: Any, client_factory: Any, case: str
) -> None:
    r = await relay_factory(reconnect_grace_ms=GRACE_MS)
    watcher, bob, sid, token = await setup(r, client_factory)
    bob.ws.transport.abort()
    await wait_event(watcher, lambda e: e == [p.EV_ACTIVITY, sid, 5])
    if case == "used token":
        first = await client_factory(r)
        assert (await first.hello("bob", resume=token))[5]["resumed"] is True
        await first.recv()  # its JOINED
    intruder = await client_factory(r)
    who = "eve" if case == "other user" else "bob"
    welcome = await intruder.hello(who, resume=token if case != "unknown token" else "x" * 24)
    assert welcome[0] == p.WELCOME and welcome[5]["resumed"] is False
    # Nothing of the old session reached it: no JOINED, and its handle is not joined.
    await intruder.send([p.CURSOR, 7, 1, 1, 1])
    err = await intruder.recv_until(lambda f: f[0] == p.ERROR)
    assert err[2] == p.NOT_JOINED
    assert all(f[0] != p.JOINED for f in await intruder.quiet(200 * MS))
    if case == "other user":
        # A refused attempt does not use the token: bob still resumes with it.
        real = await client_factory(r)
        assert (await real.hello("bob", resume=token))[5]["resumed"] is True


async def test_after_the_grace_the_member_left_lost_and_the_token_is_dead(
    relay_factory: Any, client_factory: Any
) -> None:
    grace = round(300 * MS * 1000)
    r = await relay_factory(reconnect_grace_ms=grace)
    watcher, bob, sid, token = await setup(r, client_factory)
    bob.ws.transport.abort()
    t0 = time.monotonic()
    await wait_event(watcher, lambda e: e == [p.EV_ACTIVITY, sid, 5])
    t_left, _ = await wait_event(watcher, lambda e: e == [p.EV_LEFT, sid, p.LOST])
    assert t_left - t0 >= grace / 1000 * 0.9
    late = await client_factory(r)
    assert (await late.hello("bob", resume=token))[5]["resumed"] is False
    assert set(r.hub.resumable.values()) <= r.hub.clients, "no ended session is left"


async def test_a_deliberate_close_leaves_at_once_with_left(
    relay_factory: Any, client_factory: Any
) -> None:
    r = await relay_factory(reconnect_grace_ms=GRACE_MS)
    watcher, bob, sid, _ = await setup(r, client_factory)
    await bob.ws.close(1000)
    await wait_event(watcher, lambda e: e == [p.EV_LEFT, sid, p.LEFT], timeout=1000 * MS)


async def test_a_resume_needs_a_grant_for_every_document(
    relay_factory: Any, client_factory: Any
) -> None:
    r = await relay_factory(reconnect_grace_ms=GRACE_MS, jwt_secret=SECRET)
    watcher = await client_factory(r)
    await watcher.hello("w", token=mint_token(SECRET, "w", "W", "acme", ["*"], 600))
    await watcher.join(1, "d")
    bob = await client_factory(r)
    welcome = await bob.hello("", token=mint_token(SECRET, "bob", "Bob", "acme", ["d"], 600))
    token = welcome[5]["resume_token"]
    sid = (await bob.join(7, "d"))[3]
    bob.ws.transport.abort()
    await wait_event(watcher, lambda e: e == [p.EV_ACTIVITY, sid, 5])
    narrower = await client_factory(r)
    fresh = mint_token(SECRET, "bob", "Bob", "acme", ["other"], 600)
    assert (await narrower.hello("", token=fresh, resume=token))[5]["resumed"] is False
    elsewhere = await client_factory(r)
    other_ws = mint_token(SECRET, "bob", "Bob", "globex", ["*"], 600)
    assert (await elsewhere.hello("", token=other_ws, resume=token))[5]["resumed"] is False
    ok = await client_factory(r)
    fresh = mint_token(SECRET, "bob", "Bob", "acme", ["d"], 600)
    assert (await ok.hello("", token=fresh, resume=token))[5]["resumed"] is True


async def test_a_resume_keeps_the_bad_frame_budget(relay_factory: Any, client_factory: Any) -> None:
    r = await relay_factory(reconnect_grace_ms=GRACE_MS, max_bad_frames=4)
    watcher, bob, sid, token = await setup(r, client_factory)
    for _ in range(4):  # at the limit, not past it
        await bob.send([p.CURSOR, 99, 1, 1, 1])
        assert (await bob.recv_until(lambda f: f[0] == p.ERROR))[2] == p.NOT_JOINED
    bob.ws.transport.abort()
    await wait_event(watcher, lambda e: e == [p.EV_ACTIVITY, sid, 5])
    again = await client_factory(r)
    assert (await again.hello("bob", resume=token))[5]["resumed"] is True
    await again.recv()
    await again.send([p.CURSOR, 99, 1, 1, 1])  # one more is one too many, resumed or not
    with pytest.raises(ConnectionClosed):
        await again.recv_until(lambda f: False, timeout=2000 * MS)
    assert again.ws.close_code == p.CLOSE_PROTOCOL


async def test_a_resume_keeps_the_rate_limit_bucket(
    relay_factory: Any, client_factory: Any
) -> None:
    r = await relay_factory(reconnect_grace_ms=GRACE_MS, max_frames_per_s=1, max_frames_burst=5)
    watcher, bob, sid, token = await setup(r, client_factory)
    for i in range(4):  # the JOIN took one: the burst is now empty
        await bob.send([p.VIEWPORT, 7, i, i + 10, 0])
    await asyncio.sleep(50 * MS)
    bob.ws.transport.abort()
    await wait_event(watcher, lambda e: e == [p.EV_ACTIVITY, sid, 5])
    again = await client_factory(r)
    assert (await again.hello("bob", resume=token))[5]["resumed"] is True
    await again.recv()
    await again.send([p.VIEWPORT, 7, 50, 60, 0])
    err = await again.recv_until(lambda f: f[0] == p.ERROR)
    assert err[2] == p.RATE_LIMITED, "the budget went with the session"
