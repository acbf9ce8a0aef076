"""JOIN / JOINED / LEAVE, MEMBER snapshots and document-level errors (docs/protocol.md)."""

from __future__ import annotations

import asyncio

import pytest

from .conftest import (
    BATCH,
    CURSOR,
    E_ALREADY_JOINED,
    E_AT_CAPACITY,
    E_BAD_FRAME,
    E_INVALID_VALUE,
    E_NOT_JOINED,
    E_TOO_MANY_DOCUMENTS,
    EV_CURSOR,
    EV_JOINED,
    EV_LEFT,
    FOCUS,
    JOIN,
    JOINED,
    LEAVE,
    MAIN_SETTINGS,
    PING,
    PONG,
    SELECTING,
    VIEWING,
    VIEWPORT,
    check_member,
    new_doc_id,
    now_ms,
    pair_in_doc,
)

pytestmark = pytest.mark.timeout(60)


def _is_joined_of(sid):
    return lambda d, e: e[0] == EV_JOINED and e[1][0] == sid


async def test_joined_shape_and_self_in_members(server, client_factory, doc_id):
    c = await client_factory(server, user_id="u1", name="Ann")
    await c.send([JOIN, 7, doc_id])
    joined = await c.reply()
    assert joined[0] == JOINED, joined
    assert len(joined) == 6, f"JOINED is [33, h, doc_id, sid, members, recent]: {joined!r}"
    _, h, doc, sid, members, recent = joined
    assert recent == [], "nobody has left this new document"
    assert h == 7 and doc == doc_id
    assert isinstance(sid, int) and not isinstance(sid, bool)
    assert isinstance(members, list)
    for m in members:
        check_member(m)
    me = [m for m in members if m[0] == sid]
    assert len(me) == 1, f"the joiner must be in the snapshot: {members!r}"
    m = me[0]
    assert m[1] == "u1" and m[2] == "Ann" and m[3] is None
    assert m[5] == VIEWING, f"a fresh member without typing/selection is Viewing: {m!r}"
    assert m[6] is False, m
    assert m[8] is None and m[9] is None and m[10] is None, m
    assert abs(m[11] - now_ms()) < 10_000 and abs(m[12] - now_ms()) < 10_000, m


async def test_join_is_announced_to_other_members(server, client_factory, doc_id):
    a = await client_factory(server, user_id="ua", name="Ann")
    b = await client_factory(server, user_id="ub", name="Bob")
    sid_a, _ = await a.join(1, doc_id)
    sid_b, members_b = await b.join(2, doc_id)
    assert sid_a != sid_b
    assert {m[0] for m in members_b} == {sid_a, sid_b}, members_b
    assert [m[1] for m in members_b if m[0] == sid_a] == ["ua"]
    frame = await a.recv_until(lambda f: f[0] == BATCH, timeout=2)
    assert len(frame) == 4, f"BATCH is [34, doc_id, server_ms, events]: {frame!r}"
    _, doc, server_ms, events = frame
    assert doc == doc_id
    assert isinstance(server_ms, int) and abs(server_ms - now_ms()) < 5000
    assert isinstance(events, list)
    joined = [e for e in events if e[0] == EV_JOINED and e[1][0] == sid_b]
    assert len(joined) == 1, f"expected [2, MEMBER] for sid {sid_b}: {events!r}"
    assert len(joined[0]) == 2
    check_member(joined[0][1])
    assert joined[0][1][1] == "ub" and joined[0][1][2] == "Bob"


async def test_leave_is_announced_and_handle_released(server, client_factory, doc_id):
    a, sid_a, b, sid_b = await pair_in_doc(client_factory, server, doc_id, h_a=3, h_b=4)
    await a.send([LEAVE, 3])
    # LEAVE has no reply: the next direct answer is the PONG.
    await a.send([PING, 1])
    pong = await a.reply()
    assert pong[0] == PONG, f"LEAVE must have no reply; got {pong!r}"
    await b.wait_event(lambda d, e: d == doc_id and e[:2] == [EV_LEFT, sid_a], timeout=2)
    # later frames with that handle: ERROR 3
    await a.send([CURSOR, 3, 1, 1, 1])
    await a.expect_error(E_NOT_JOINED, h=3)
    # the leaver no longer gets the document's batches
    a.skip_events()
    await b.send([CURSOR, 4, 5, 5, 5])
    frames = await a.collect(0.4)
    assert not [f for f in frames if f[0] == BATCH and f[1] == doc_id], frames
    # ...until h is joined again
    sid_a2, members = await a.join(3, doc_id)
    assert sid_b in {m[0] for m in members}
    await b.wait_event(_is_joined_of(sid_a2), timeout=2)


async def test_left_sid_is_not_reused_while_document_has_members(server, client_factory, doc_id):
    a, sid_a, b, sid_b = await pair_in_doc(client_factory, server, doc_id)
    await b.send([LEAVE, 1])
    await a.wait_event(lambda d, e: e[:2] == [EV_LEFT, sid_b], timeout=2)
    c = await client_factory(server)
    sid_c, members = await c.join(1, doc_id)
    assert sid_c not in (sid_a, sid_b), "sid reused while the document has members"
    assert {m[0] for m in members} == {sid_a, sid_c}


async def test_same_handle_twice_is_error_8(server, client_factory):
    d1, d2 = new_doc_id(), new_doc_id()
    c = await client_factory(server)
    await c.join(1, d1)
    await c.send([JOIN, 1, d2])
    await c.expect_error(E_ALREADY_JOINED, h=1)
    await c.ping()


async def test_same_document_twice_is_error_8(server, client_factory, doc_id):
    c = await client_factory(server)
    await c.join(1, doc_id)
    await c.send([JOIN, 2, doc_id])
    await c.expect_error(E_ALREADY_JOINED, h=2)
    await c.ping()


@pytest.mark.parametrize(
    "bad",
    ["", "has space", "a/b", "x" * 129, "caf\u00e9", "semi;colon", "new\nline"],
    ids=["empty", "space", "slash", "129chars", "non-ascii", "semicolon", "newline"],
)
async def test_bad_doc_id_is_error_7(server, client_factory, bad):
    c = await client_factory(server)
    await c.send([JOIN, 1, bad])
    await c.expect_error(E_INVALID_VALUE, h=1)
    await c.ping()


@pytest.mark.parametrize(
    "good",
    ["A-z0.9_~:@-", "y" * 128, "a"],
    ids=["all-classes", "128chars", "single"],
)
async def test_edge_valid_doc_ids_are_accepted(server, client_factory, good):
    c = await client_factory(server)
    good = good if len(good) > 20 else f"{good}{new_doc_id()}"
    sid, _ = await c.join(1, good)
    assert isinstance(sid, int)


async def test_doc_id_of_wrong_type_is_error_1(server, client_factory):
    c = await client_factory(server)
    await c.send([JOIN, 1, 12345])
    await c.expect_error(E_BAD_FRAME)
    await c.ping()


@pytest.mark.parametrize("h", [65536, -1])
async def test_handle_out_of_range_is_error_7(server, client_factory, doc_id, h):
    c = await client_factory(server)
    await c.send([JOIN, h, doc_id])
    await c.expect_error(E_INVALID_VALUE)
    await c.ping()


async def test_handle_edges_are_accepted(server, client_factory):
    c = await client_factory(server)
    await c.join(0, new_doc_id())
    await c.join(65535, new_doc_id())


async def test_too_many_documents_is_error_9(server, client_factory):
    c = await client_factory(server)
    limit = MAIN_SETTINGS["max_documents"]
    for h in range(limit):
        await c.join(h + 1, new_doc_id())
    await c.send([JOIN, 100, new_doc_id()])
    await c.expect_error(E_TOO_MANY_DOCUMENTS, h=100)
    # leaving one frees a slot
    await c.send([LEAVE, 1])
    await c.join(100, new_doc_id())


async def test_full_document_is_error_5_and_members_notice_nothing(server, client_factory, doc_id):
    limit = MAIN_SETTINGS["max_users_per_document"]
    members = [await client_factory(server) for _ in range(limit)]
    sids = [(await m.join(1, doc_id))[0] for m in members]
    await asyncio.sleep(0.2)
    for m in members:
        await m.drain(0.1)
    extra = await client_factory(server)
    await extra.send([JOIN, 1, doc_id])
    await extra.expect_error(E_AT_CAPACITY, h=1)
    await extra.ping()
    frames = await members[0].collect(0.3)
    assert not [e for e in frames if e[0] == BATCH], f"a refused JOIN must change nothing: {frames}"
    # a slot frees up once someone leaves
    await members[-1].send([LEAVE, 1])
    await members[0].wait_event(lambda d, e: e[:2] == [EV_LEFT, sids[-1]], timeout=2)
    sid_x, snapshot = await extra.join(1, doc_id)
    assert {m[0] for m in snapshot} == {*sids[:-1], sid_x}


async def test_multi_tab_same_user_is_two_sessions(server, client_factory, doc_id):
    obs = await client_factory(server, user_id="observer", name="Obs")
    await obs.join(1, doc_id)
    tab1 = await client_factory(server, user_id="same-user", name="Tab")
    tab2 = await client_factory(server, user_id="same-user", name="Tab")
    sid1, _ = await tab1.join(1, doc_id)
    sid2, members = await tab2.join(1, doc_id)
    assert sid1 != sid2, "two tabs of one user are two sessions"
    assert sorted(m[1] for m in members if m[0] in (sid1, sid2)) == ["same-user", "same-user"]
    await obs.wait_event(_is_joined_of(sid1), 2)
    await obs.wait_event(_is_joined_of(sid2), 2)
    await tab1.send([CURSOR, 1, 1, 1, 1])
    await tab2.send([CURSOR, 1, 2, 2, 2])
    got: dict[int, list] = {}
    for _ in range(2):
        _, ev = await obs.wait_event(lambda d, e: e[0] == EV_CURSOR and e[1] in (sid1, sid2), 2)
        got[ev[1]] = ev
    assert got == {sid1: [EV_CURSOR, sid1, 1, 1, 1], sid2: [EV_CURSOR, sid2, 2, 2, 2]}
    # each tab sees the other tab's cursor (same user, different sid)
    _, ev = await tab1.wait_event(lambda d, e: e[0] == EV_CURSOR and e[1] == sid2, 2)
    assert ev == [EV_CURSOR, sid2, 2, 2, 2]


async def test_member_colors_are_distinct(server, client_factory, doc_id):
    limit = MAIN_SETTINGS["max_users_per_document"]
    clients = [await client_factory(server) for _ in range(limit)]
    members: list = []
    for c in clients:
        _, members = await c.join(1, doc_id)
    # the last joiner's snapshot holds everyone
    colors = [m[4] for m in members]
    assert len(colors) == limit
    assert len(set(colors)) == limit, f"member colors must be distinct: {colors}"


async def test_joined_snapshot_reflects_current_state(server, client_factory, doc_id):
    a = await client_factory(server, user_id="snap-a", name="A")
    sid_a, _ = await a.join(1, doc_id)
    await a.send([CURSOR, 1, 10, 4, 200, 8, 0, 150, True])
    await a.send([VIEWPORT, 1, 5, 45, 12.5])
    await a.send([FOCUS, 1, False])
    await a.ping()  # all three frames processed
    await asyncio.sleep(0.2)  # and past a batch interval
    b = await client_factory(server)
    _, members = await b.join(1, doc_id)
    m = next(m for m in members if m[0] == sid_a)
    check_member(m)
    assert m[8] == [10, 4, 200], m
    assert m[9] == [8, 0, 150, True], m
    assert m[10][:2] == [5, 45] and m[10][2] == pytest.approx(12.5), m
    assert m[7] is False, m
    assert m[5] == SELECTING, f"a member with a selection is Selecting: {m!r}"
