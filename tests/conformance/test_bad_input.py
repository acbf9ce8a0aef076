"""Bad frames, check order, frame size, bad-frame budget (docs/protocol.md: checks, Errors).

Every case also proves "a bad frame costs the sender an ERROR, never the connection" and that
everyone else in the document notices nothing.
"""

from __future__ import annotations

import asyncio
import math

import msgpack
import pytest

from .conftest import (
    CLOSE_PROTOCOL,
    CLOSE_TOO_BIG,
    CURSOR,
    E_BAD_FRAME,
    E_INVALID_VALUE,
    E_NOT_JOINED,
    E_UNKNOWN_TYPE,
    ERROR,
    EV_CURSOR,
    EV_LEFT,
    MAIN_SETTINGS,
    PING,
    events_of,
    pair_in_doc,
)

pytestmark = pytest.mark.timeout(60)

BIG = 2**32

# (id, payload, expected ERROR code, expected h in the ERROR or ... for "h or nil")
# payload: bytes are sent as-is; anything else is msgpack-encoded. The sender joined with h=1.
CASES = [
    # not msgpack / not an array -> 1
    ("garbage-bytes", b"\xc1\xc1\xc1", E_BAD_FRAME, None),
    ("truncated-array", b"\x95\x04\x01", E_BAD_FRAME, None),
    ("trailing-bytes", msgpack.packb([PING, 1]) + b"\x01", E_BAD_FRAME, ...),
    ("map", {"type": 4}, E_BAD_FRAME, None),
    ("int", 5, E_BAD_FRAME, None),
    ("string", "hello", E_BAD_FRAME, None),
    ("empty-array", [], E_BAD_FRAME, None),
    # unknown type -> 2
    ("unknown-type-99", [99, 1], E_UNKNOWN_TYPE, ...),
    ("unknown-type-0", [0], E_UNKNOWN_TYPE, ...),
    ("unknown-type-10", [10, 1, 2], E_UNKNOWN_TYPE, ...),  # 9 is STATUS since v1.1
    ("server-type-36", [36, 1, 2], E_UNKNOWN_TYPE, ...),
    # wrong arity -> 1
    ("cursor-4-elems", [CURSOR, 1, 1, 2], E_BAD_FRAME, ...),
    ("cursor-6-elems", [CURSOR, 1, 1, 2, 3, 4], E_BAD_FRAME, ...),
    ("cursor-10-elems", [CURSOR, 1, 1, 2, 3, 4, 5, 6, True, 7], E_BAD_FRAME, ...),
    ("ping-1-elem", [PING], E_BAD_FRAME, ...),
    ("status-int-text", [9, 1, 2], E_BAD_FRAME, ...),
    ("status-2-elems", [9, 1], E_BAD_FRAME, ...),
    ("ping-3-elems", [PING, 1, 2], E_BAD_FRAME, ...),
    ("cursor-7-elems", [CURSOR, 1, 1, 2, 3, 4, 5], E_BAD_FRAME, ...),
    ("cursor-8-elems", [CURSOR, 1, 1, 2, 3, 4, 5, 6], E_BAD_FRAME, ...),
    ("cursor-3-elems", [CURSOR, 1, 1], E_BAD_FRAME, ...),
    ("join-2-elems", [2, 1], E_BAD_FRAME, ...),
    ("leave-1-elem", [3], E_BAD_FRAME, ...),
    ("typing-4-elems", [5, 1, True, 1], E_BAD_FRAME, ...),
    ("viewport-4-elems", [6, 1, 0, 1], E_BAD_FRAME, ...),
    ("focus-2-elems", [7, 1], E_BAD_FRAME, ...),
    # wrong msgpack types -> 1
    ("float-line", [CURSOR, 1, 1.0, 2, 3], E_BAD_FRAME, ...),
    ("string-line", [CURSOR, 1, "1", 2, 3], E_BAD_FRAME, ...),
    ("bool-line", [CURSOR, 1, True, 2, 3], E_BAD_FRAME, ...),
    ("float-handle", [CURSOR, 1.0, 1, 2, 3], E_BAD_FRAME, ...),
    ("int-backward", [CURSOR, 1, 1, 2, 3, 0, 0, 0, 1], E_BAD_FRAME, ...),
    ("int-typing", [5, 1, 1], E_BAD_FRAME, ...),
    ("int-focused", [7, 1, 1], E_BAD_FRAME, ...),
    ("string-scroll", [6, 1, 0, 10, "50"], E_BAD_FRAME, ...),
    ("nil-line", [CURSOR, 1, None, 2, 3], E_BAD_FRAME, ...),
    # values out of range -> 7
    ("negative-line", [CURSOR, 1, -1, 0, 0], E_INVALID_VALUE, 1),
    ("line-2^32", [CURSOR, 1, BIG, 0, 0], E_INVALID_VALUE, 1),
    ("col-2^32", [CURSOR, 1, 0, BIG, 0], E_INVALID_VALUE, 1),
    ("negative-offset", [CURSOR, 1, 0, 0, -5], E_INVALID_VALUE, 1),
    ("negative-anchor", [CURSOR, 1, 0, 0, 0, -1, 0, 0, False], E_INVALID_VALUE, 1),
    ("anchor-2^32", [CURSOR, 1, 0, 0, 0, 0, 0, BIG, False], E_INVALID_VALUE, 1),
    ("nan-scroll", [6, 1, 0, 10, math.nan], E_INVALID_VALUE, 1),
    ("inf-scroll", [6, 1, 0, 10, math.inf], E_INVALID_VALUE, 1),
    ("scroll-101", [6, 1, 0, 10, 101], E_INVALID_VALUE, 1),
    ("scroll-100.5", [6, 1, 0, 10, 100.5], E_INVALID_VALUE, 1),
    ("scroll-negative", [6, 1, 0, 10, -0.5], E_INVALID_VALUE, 1),
    ("top-gt-bottom", [6, 1, 11, 10, 5], E_INVALID_VALUE, 1),
    ("negative-top", [6, 1, -1, 10, 5], E_INVALID_VALUE, 1),
    ("bottom-2^32", [6, 1, 0, BIG, 5], E_INVALID_VALUE, 1),
    # never-joined handle -> 3
    ("unjoined-cursor", [CURSOR, 99, 1, 1, 1], E_NOT_JOINED, 99),
    ("unjoined-clear", [CURSOR, 99], E_NOT_JOINED, 99),
    ("unjoined-typing", [5, 99], E_NOT_JOINED, 99),
    ("unjoined-viewport", [6, 99, 0, 1, 1], E_NOT_JOINED, 99),
    ("unjoined-focus", [7, 99, True], E_NOT_JOINED, 99),
    ("unjoined-leave", [3, 99], E_NOT_JOINED, 99),
    ("unjoined-handle-70000", [CURSOR, 70000, 1, 1, 1], E_NOT_JOINED, ...),
    ("unjoined-negative-handle", [CURSOR, -1, 1, 1, 1], E_NOT_JOINED, ...),
    ("bool-handle", [CURSOR, True, 1, 1, 1], E_BAD_FRAME, ...),
    # check ORDER: type/shape (1/2) before handle (3) before range (7)
    ("order-unjoined-before-range", [CURSOR, 99, -1, 0, 0], E_NOT_JOINED, 99),
    ("order-unjoined-before-nan", [6, 99, 10, 5, math.nan], E_NOT_JOINED, 99),
    ("order-type-before-unjoined", [CURSOR, 99, 1.5, 0, 0], E_BAD_FRAME, ...),
    ("order-arity-before-range", [CURSOR, 1, BIG, 0], E_BAD_FRAME, ...),
    ("order-arity-before-unjoined", [CURSOR, 99, 1, 0], E_BAD_FRAME, ...),
    ("order-unknown-type-first", [99, 99, -1], E_UNKNOWN_TYPE, ...),
]


@pytest.mark.parametrize("payload,code,h", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
async def test_bad_frame_answers_error_and_nothing_else_changes(
    server, client_factory, doc_id, payload, code, h
):
    a, sid_a, b, _ = await pair_in_doc(client_factory, server, doc_id)
    if isinstance(payload, bytes):
        await a.send_raw(payload)
    else:
        await a.send(payload)
    err = await a.expect_error(code, h=h)
    assert err[0] == ERROR and len(err) == 4
    # the sender's connection is still usable...
    await a.ping()
    # ...and in the document: its next valid frame reaches the other member
    await a.send([CURSOR, 1, 31, 4, 1])
    _, ev = await b.wait_event(lambda d, e: e[0] == EV_CURSOR and e[1] == sid_a, timeout=2)
    assert ev == [EV_CURSOR, sid_a, 31, 4, 1], "the bad frame must not have changed anything"
    before = [e for _, _, e in b.events if e[1] == sid_a]
    assert [e for e in before if e[0] == EV_CURSOR] == [ev], f"bad frame leaked: {before}"


async def test_bad_frames_within_budget_keep_the_connection(server, client_factory, doc_id):
    a, _, _b, _ = await pair_in_doc(client_factory, server, doc_id)
    for _ in range(MAIN_SETTINGS["max_bad_frames"]):
        await a.send_raw(b"\xc1")
    for _ in range(MAIN_SETTINGS["max_bad_frames"]):
        await a.expect_error(E_BAD_FRAME)
    await a.ping()


async def test_more_than_max_bad_frames_closes_4400(server, client_factory, doc_id):
    a, sid_a, b, _sid_b = await pair_in_doc(client_factory, server, doc_id)
    limit = MAIN_SETTINGS["max_bad_frames"]
    for i in range(limit):
        await a.send_raw(bytes([0xC1, i]))  # not msgpack: ERROR 1 (BAD_FRAME) each
    for _ in range(limit):
        await a.expect_error(E_BAD_FRAME, timeout=3)
    await a.ping(timeout=3)
    await a.send_raw(b"\xc1")  # one more than max_bad_frames
    await a.expect_close(CLOSE_PROTOCOL, timeout=3)
    # everyone else: A is gone, the document still works
    await b.wait_event(lambda d, e: e[:2] == [EV_LEFT, sid_a], timeout=3)
    c = await client_factory(server)
    sid_c, _ = await c.join(1, doc_id)
    await c.send([CURSOR, 1, 8, 8, 8])
    _, ev = await b.wait_event(lambda d, e: e[0] == EV_CURSOR and e[1] == sid_c, timeout=2)
    assert ev == [EV_CURSOR, sid_c, 8, 8, 8]


async def test_frame_over_max_frame_bytes_closes_1009(server, client_factory, doc_id):
    a, sid_a, b, _ = await pair_in_doc(client_factory, server, doc_id)
    await a.send([PING, "x" * (MAIN_SETTINGS["max_frame_bytes"] + 100)])
    await a.expect_close(CLOSE_TOO_BIG, timeout=3)
    await b.wait_event(lambda d, e: e[:2] == [EV_LEFT, sid_a], timeout=3)
    c = await client_factory(server)
    sid_c, _ = await c.join(1, doc_id)
    await c.send([CURSOR, 1, 2, 2, 2])
    _, ev = await b.wait_event(lambda d, e: e[0] == EV_CURSOR and e[1] == sid_c, timeout=2)
    assert ev == [EV_CURSOR, sid_c, 2, 2, 2]


def _frame_of_exact_size(size: int) -> bytes:
    """A msgpack [99, "xxx..."] frame of exactly `size` bytes (unknown type: ERROR 2)."""
    payload = msgpack.packb([99, "x" * (size - 5)])  # fixarray + fixint + str16 header = 5
    assert len(payload) == size
    return payload


async def test_frame_of_exactly_max_frame_bytes_is_not_closed(server, client_factory, doc_id):
    a, _, b, _ = await pair_in_doc(client_factory, server, doc_id)
    await a.send_raw(_frame_of_exact_size(MAIN_SETTINGS["max_frame_bytes"]))
    await a.expect_error(E_UNKNOWN_TYPE)
    await a.ping()
    frames = await b.collect(0.2)
    assert not [e for e in events_of(frames) if e[0] == EV_LEFT], frames


async def test_frame_one_byte_over_max_frame_bytes_closes_1009(server, client_factory):
    a = await client_factory(server)
    await a.send_raw(_frame_of_exact_size(MAIN_SETTINGS["max_frame_bytes"] + 1))
    await a.expect_close(CLOSE_TOO_BIG, timeout=3)


async def test_bad_frame_budget_is_per_window(fresh_server_factory, client_factory):
    """More than max_bad_frames *within bad_frames_window_s* closes; spread out, it does not."""
    srv = fresh_server_factory({"batch_ms": 50, "max_bad_frames": 3, "bad_frames_window_s": 1})
    a = await client_factory(srv)
    for _ in range(3):
        await a.send_raw(b"\xc1")
        await a.expect_error(E_BAD_FRAME)
    await asyncio.sleep(1.3)  # the window has passed
    for _ in range(3):
        await a.send_raw(b"\xc1")
        await a.expect_error(E_BAD_FRAME)
    await a.ping()
    await asyncio.sleep(1.3)
    for _ in range(4):
        await a.send_raw(b"\xc1")
    await a.expect_close(CLOSE_PROTOCOL, timeout=3)
