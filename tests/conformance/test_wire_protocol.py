"""Transport, handshake, HELLO/WELCOME and PING/PONG (docs/protocol.md: sections 1 to 3)."""

from __future__ import annotations

import asyncio
import struct
import time

import msgpack
import pytest
from websockets.exceptions import InvalidStatus

from .conftest import (
    CLOSE_PROTOCOL,
    CLOSE_UNAUTHENTICATED,
    E_BAD_FRAME,
    HELLO,
    JOIN,
    MAIN_SETTINGS,
    PING,
    PONG,
    SUBPROTOCOL,
    WELCOME,
    RawClient,
    now_ms,
)

pytestmark = pytest.mark.timeout(60)

WELCOME_SETTINGS_KEYS = {
    "batch_ms",
    "cursor_throttle_ms",
    "typing_debounce_ms",
    "max_frame_bytes",
    "max_documents",
    "max_frames_per_s",
    "max_frames_burst",
}


# --- handshake -------------------------------------------------------------------------------


@pytest.mark.parametrize("offered", [None, ["presence.v9"], ["chat", "presence.v2"]])
async def test_handshake_without_supported_subprotocol_is_http_400_naming_versions(server, offered):
    with pytest.raises(InvalidStatus) as info:
        ws = await RawClient.open(server.ws_url, subprotocols=offered)
        await ws.close()
    resp = info.value.response
    assert resp.status_code == 400, f"expected HTTP 400, got {resp.status_code}"
    body = resp.body or b""
    assert SUBPROTOCOL.encode() in body, f"400 body must name the versions spoken: {body!r}"
    ctype = resp.headers.get("Content-Type", "")
    assert ctype.startswith("text/plain"), f"400 body must be plain text: {ctype!r}"


async def test_handshake_selects_presence_v1(server):
    c = await RawClient.open(server.ws_url)
    try:
        assert c.ws.subprotocol == SUBPROTOCOL
    finally:
        await c.close()


async def test_handshake_selects_presence_v1_among_several_offers(server):
    c = await RawClient.open(server.ws_url, subprotocols=["presence.v9", SUBPROTOCOL])
    try:
        assert c.ws.subprotocol == SUBPROTOCOL
        await c.hello()
    finally:
        await c.close()


# --- HELLO / WELCOME --------------------------------------------------------------------------


async def test_welcome_shape(server, client_factory):
    c = await client_factory(server, hello=False)
    before = now_ms()
    welcome = await c.hello(user_id="u1", name="Ann")
    after = now_ms()
    assert len(welcome) == 6, f"WELCOME has 6 elements: {welcome!r}"
    typ, version, connection_id, user, server_ms, settings = welcome
    assert typ == WELCOME
    assert version == 1
    assert connection_id is not None and not isinstance(connection_id, bool | dict | list)
    assert isinstance(user, dict), welcome
    assert {"id", "name", "avatar", "color", "workspace"} <= set(user), user
    assert user["id"] == "u1"
    assert user["name"] == "Ann"
    assert user["avatar"] is None
    assert isinstance(user["color"], str) and user["color"], user
    assert user["workspace"] == "default", "anonymous users belong to workspace `default`"
    assert isinstance(server_ms, int) and not isinstance(server_ms, bool)
    assert before - 5000 <= server_ms <= after + 5000, (before, server_ms, after)
    assert isinstance(settings, dict)
    assert set(settings) >= WELCOME_SETTINGS_KEYS, f"missing settings: {settings!r}"


async def test_welcome_settings_reflect_server_configuration(server, client_factory):
    c = await client_factory(server)
    settings = c.welcome[5]
    for key in WELCOME_SETTINGS_KEYS:
        assert settings[key] == MAIN_SETTINGS[key], (key, settings)


async def test_connection_ids_are_distinct(server, client_factory):
    a = await client_factory(server)
    b = await client_factory(server)
    assert a.welcome[2] != b.welcome[2]


async def test_hello_with_map16_encoding_is_accepted(server, client_factory):
    """'Any valid MessagePack encoding is accepted (e.g. map16 where fixmap would do).'"""
    c = await client_factory(server, hello=False)
    info = {"sdk": "conformance/0", "user_id": "u-map16", "name": "Map"}
    body = b"\xde" + len(info).to_bytes(2, "big")  # map16 header
    for k, v in info.items():
        body += msgpack.packb(k) + msgpack.packb(v)
    # array32 header for the outer array (fixarray would do)
    frame = b"\xdd" + (4).to_bytes(4, "big") + msgpack.packb(HELLO) + b"\xcd\x00\x01"  # uint16 1
    frame += msgpack.packb(None) + body
    await c.send_raw(frame)
    welcome = await c.reply()
    assert welcome[0] == WELCOME, welcome
    assert welcome[3]["id"] == "u-map16"


async def test_no_hello_in_time_closes_4401(server, client_factory):
    c = await client_factory(server, hello=False)
    t0 = time.monotonic()
    await c.expect_close(CLOSE_UNAUTHENTICATED, timeout=MAIN_SETTINGS["auth_timeout_ms"] / 1000 + 3)
    elapsed = time.monotonic() - t0
    assert elapsed >= MAIN_SETTINGS["auth_timeout_ms"] / 1000 * 0.8, (
        f"closed after {elapsed:.2f}s, before auth_timeout_ms"
    )


async def test_hello_within_auth_timeout_is_accepted(server, client_factory):
    c = await client_factory(server, hello=False)
    await asyncio.sleep(MAIN_SETTINGS["auth_timeout_ms"] / 1000 * 0.5)
    welcome = await c.hello()
    assert welcome[0] == WELCOME
    await asyncio.sleep(MAIN_SETTINGS["auth_timeout_ms"] / 1000 * 0.7)
    await c.ping()  # the auth timer stopped at HELLO


@pytest.mark.parametrize(
    "first",
    [[PING, 1], [JOIN, 1, "doc-x"], [4, 1, 0, 0, 0]],
    ids=["ping", "join", "cursor"],
)
async def test_other_frame_before_hello_closes_4401(server, client_factory, first):
    c = await client_factory(server, hello=False)
    await c.send(first)
    await c.expect_close(CLOSE_UNAUTHENTICATED, timeout=3)


async def test_hello_version_2_closes_4400(server, client_factory):
    c = await client_factory(server, hello=False)
    await c.send([HELLO, 2, None, {"sdk": "conformance/0", "user_id": "u1", "name": "Ann"}])
    await c.expect_close(CLOSE_PROTOCOL, timeout=3)


async def test_second_hello_is_error_1_and_connection_survives(server, client_factory):
    c = await client_factory(server)
    await c.send([HELLO, 1, None, {"sdk": "conformance/0", "user_id": "u1", "name": "Ann"}])
    await c.expect_error(E_BAD_FRAME)
    await c.ping()


async def test_text_frame_is_error_1_and_connection_survives(server, client_factory):
    c = await client_factory(server)
    await c.send_raw("[8, 1]")
    await c.expect_error(E_BAD_FRAME, h=None)
    await c.ping()


# --- PING / PONG ------------------------------------------------------------------------------


async def test_ping_pong(server, client_factory):
    c = await client_factory(server)
    before = now_ms()
    await c.send([PING, 123])
    pong = await c.reply()
    after = now_ms()
    assert len(pong) == 3, pong
    assert pong[0] == PONG and pong[1] == 123
    assert isinstance(pong[2], int) and not isinstance(pong[2], bool)
    assert before - 5000 <= pong[2] <= after + 5000


async def test_ping_echoes_large_client_ms(server, client_factory):
    c = await client_factory(server)
    client_ms = now_ms()
    await c.send([PING, client_ms])
    pong = await c.reply()
    assert pong[:2] == [PONG, client_ms]


async def test_pings_are_answered_in_order(server, client_factory):
    c = await client_factory(server)
    for i in range(5):
        await c.send([PING, i])
    got = []
    for _ in range(5):
        f = await c.reply()
        assert f[0] == PONG, f
        got.append(f[1])
    assert got == list(range(5))


async def test_non_minimal_msgpack_encodings_are_accepted(server, client_factory, doc_id):
    """Wide ints, str16 and float32 where smaller encodings would do are still valid."""
    a = await client_factory(server)
    b = await client_factory(server)
    doc = doc_id.encode()
    # JOIN as array16, h as uint32, doc_id as str16
    join = b"\xdc\x00\x03" + b"\x02" + b"\xce\x00\x00\x00\x05"
    join += b"\xda" + len(doc).to_bytes(2, "big") + doc
    await a.send_raw(join)
    joined = await a.reply()
    assert joined[:3] == [33, 5, doc_id], joined
    sid_a = joined[3]
    await b.join(1, doc_id)
    # CURSOR with line as uint64, col as int64, off as int16
    cursor = b"\x95\x04\x05" + b"\xcf" + (7).to_bytes(8, "big")
    cursor += b"\xd3" + (8).to_bytes(8, "big") + b"\xd1" + (9).to_bytes(2, "big")
    await a.send_raw(cursor)
    _, ev = await b.wait_event(lambda d, e: e[0] == 1 and e[1] == sid_a)
    assert ev == [1, sid_a, 7, 8, 9]
    # VIEWPORT with scroll_pct as float32
    viewport = b"\x95\x06\x05\x00\x0a\xca" + struct.pack(">f", 25.0)
    await a.send_raw(viewport)
    _, ev = await b.wait_event(lambda d, e: e[0] == 5 and e[1] == sid_a)
    assert ev[:4] == [5, sid_a, 0, 10] and ev[4] == pytest.approx(25.0)


async def test_welcome_settings_defaults(fresh_server_factory, client_factory):
    """docs/protocol.md defaults: max_frame_bytes 8 KiB, max_frames_per_s 200, burst 400."""
    srv = fresh_server_factory({})
    c = await client_factory(srv)
    settings = c.welcome[5]
    assert settings["max_frame_bytes"] == 8192
    assert settings["max_frames_per_s"] == 200
    assert settings["max_frames_burst"] == 400
