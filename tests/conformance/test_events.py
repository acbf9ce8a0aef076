"""CURSOR / TYPING / VIEWPORT / FOCUS, server-computed activity and the BATCH rules."""

from __future__ import annotations

import asyncio
import statistics
import time

import pytest

from .conftest import (
    AWAY,
    BATCH,
    CURSOR,
    EDITING,
    EV_ACTIVITY,
    EV_CURSOR,
    EV_FOCUS,
    EV_JOINED,
    EV_LEFT,
    EV_TYPING,
    EV_VIEWPORT,
    FOCUS,
    IDLE,
    JOIN,
    LEAVE,
    MAIN_SETTINGS,
    SELECTING,
    TYPING,
    VIEWING,
    VIEWPORT,
    events_of,
    new_doc_id,
    pair_in_doc,
)

pytestmark = pytest.mark.timeout(60)

BATCH_S = MAIN_SETTINGS["batch_ms"] / 1000
DEBOUNCE_S = MAIN_SETTINGS["typing_debounce_ms"] / 1000
IDLE_S = MAIN_SETTINGS["activity_timeout_ms"] / 1000
AWAY_S = MAIN_SETTINGS["away_after_ms"] / 1000
BLUR_S = MAIN_SETTINGS["away_after_blur_ms"] / 1000


def ev_of(sid, code):
    return lambda d, e: e[0] == code and e[1] == sid


# --- CURSOR -----------------------------------------------------------------------------------


async def test_cursor_plain(server, client_factory, doc_id):
    a, sid_a, b, _ = await pair_in_doc(client_factory, server, doc_id)
    await a.send([CURSOR, 1, 3, 7, 42])
    _, ev = await b.wait_event(ev_of(sid_a, EV_CURSOR))
    assert ev == [EV_CURSOR, sid_a, 3, 7, 42]


async def test_cursor_with_selection(server, client_factory, doc_id):
    a, sid_a, b, _ = await pair_in_doc(client_factory, server, doc_id)
    await a.send([CURSOR, 1, 3, 7, 42, 1, 0, 10, True])
    _, ev = await b.wait_event(ev_of(sid_a, EV_CURSOR))
    assert ev == [EV_CURSOR, sid_a, 3, 7, 42, 1, 0, 10, True]
    assert len(ev) == 9


async def test_cursor_cleared(server, client_factory, doc_id):
    a, sid_a, b, _ = await pair_in_doc(client_factory, server, doc_id)
    await a.send([CURSOR, 1, 3, 7, 42])
    await b.wait_event(ev_of(sid_a, EV_CURSOR))
    await a.send([CURSOR, 1])
    _, ev = await b.wait_event(ev_of(sid_a, EV_CURSOR))
    assert ev == [EV_CURSOR, sid_a], f"a cleared cursor is [1, sid]: {ev!r}"


async def test_cursor_max_values_accepted(server, client_factory, doc_id):
    a, sid_a, b, _ = await pair_in_doc(client_factory, server, doc_id)
    top = 2**32 - 1
    await a.send([CURSOR, 1, top, top, top, 0, 0, 0, False])
    _, ev = await b.wait_event(ev_of(sid_a, EV_CURSOR))
    assert ev == [EV_CURSOR, sid_a, top, top, top, 0, 0, 0, False]


async def test_cursor_moves_are_coalesced_and_last_is_delivered(server, client_factory, doc_id):
    a, sid_a, b, _ = await pair_in_doc(client_factory, server, doc_id)
    for i in range(10):
        await a.send([CURSOR, 1, 100 + i, i, 1000 + i])
    frames = await b.collect(BATCH_S * 6 + 0.3)
    batches = [f for f in frames if f[0] == BATCH and f[1] == doc_id]
    assert batches, "no BATCH with the cursor moves"
    cursor_events = []
    for f in batches:
        mine = [e for e in f[3] if e[0] == EV_CURSOR and e[1] == sid_a]
        assert len(mine) <= 1, f"at most one cursor event per sid per batch: {f!r}"
        cursor_events += mine
    assert cursor_events[-1] == [EV_CURSOR, sid_a, 109, 9, 1009], cursor_events
    assert len(cursor_events) < 10, f"10 quick moves were not coalesced: {cursor_events}"


async def test_cursor_moves_spread_over_batches_keep_trailing_edge(server, client_factory, doc_id):
    a, sid_a, b, _ = await pair_in_doc(client_factory, server, doc_id)
    for i in range(12):
        await a.send([CURSOR, 1, i, 0, i])
        await asyncio.sleep(0.012)
    frames = await b.collect(BATCH_S * 6 + 0.3)
    cursor_events = []
    for f in frames:
        if f[0] == BATCH and f[1] == doc_id:
            mine = [e for e in f[3] if e[0] == EV_CURSOR and e[1] == sid_a]
            assert len(mine) <= 1, f"at most one cursor event per sid per batch: {f!r}"
            cursor_events += mine
    assert cursor_events and cursor_events[-1] == [EV_CURSOR, sid_a, 11, 0, 11], cursor_events
    lines = [e[2] for e in cursor_events]
    assert lines == sorted(lines), f"coalesced cursor events must be the latest each: {lines}"


async def test_cursor_latency_within_batch_interval(server, client_factory, doc_id):
    a, _sid_a, b, _ = await pair_in_doc(client_factory, server, doc_id)
    samples = []
    for i in range(7):
        t0 = time.monotonic()
        await a.send([CURSOR, 1, 500 + i, 0, 0])
        t, _ = await b.wait_event(lambda d, e, i=i: e[0] == EV_CURSOR and e[2] == 500 + i, 2)
        samples.append(t - t0)
        await asyncio.sleep(0.07)
    median = statistics.median(samples)
    assert median <= BATCH_S + 0.1, f"median cursor latency {median * 1000:.0f} ms: {samples}"


# --- TYPING -----------------------------------------------------------------------------------


async def test_typing_starts_then_stops_after_debounce(server, client_factory, doc_id):
    a, sid_a, b, _ = await pair_in_doc(client_factory, server, doc_id)
    t_key = time.monotonic()
    await a.send([TYPING, 1])
    _, ev = await b.wait_event(ev_of(sid_a, EV_TYPING))
    assert ev == [EV_TYPING, sid_a, True]
    t_stop, ev = await b.wait_event(ev_of(sid_a, EV_TYPING), timeout=DEBOUNCE_S + 2)
    assert ev == [EV_TYPING, sid_a, False]
    waited = t_stop - t_key
    assert DEBOUNCE_S * 0.9 <= waited <= DEBOUNCE_S + 1.0, f"typing stopped after {waited:.3f}s"


async def test_typing_true_form_is_a_keystroke(server, client_factory, doc_id):
    a, sid_a, b, _ = await pair_in_doc(client_factory, server, doc_id)
    await a.send([TYPING, 1, True])
    _, ev = await b.wait_event(ev_of(sid_a, EV_TYPING))
    assert ev == [EV_TYPING, sid_a, True]
    _, ev = await b.wait_event(ev_of(sid_a, EV_TYPING), timeout=DEBOUNCE_S + 2)
    assert ev == [EV_TYPING, sid_a, False]


async def test_typing_debounce_counts_from_last_keystroke(server, client_factory, doc_id):
    a, sid_a, b, _ = await pair_in_doc(client_factory, server, doc_id)
    for _ in range(4):
        await a.send([TYPING, 1])
        t_last = time.monotonic()
        await asyncio.sleep(DEBOUNCE_S / 2)
    t_stop, _ev = await b.wait_event(
        lambda d, e: e[0] == EV_TYPING and e[1] == sid_a and e[2] is False, timeout=DEBOUNCE_S + 2
    )
    waited = t_stop - t_last
    assert waited >= DEBOUNCE_S * 0.9, (
        f"typing stopped {waited:.3f}s after the last keystroke (debounce {DEBOUNCE_S}s)"
    )
    typing = [e for _, _, e in b.events if e[0] == EV_TYPING and e[1] == sid_a]
    assert typing[-1] == [EV_TYPING, sid_a, False]
    assert [EV_TYPING, sid_a, False] not in typing[:-1], f"stopped between keystrokes: {typing}"


async def test_typing_false_stops_at_once(server, client_factory, doc_id):
    a, sid_a, b, _ = await pair_in_doc(client_factory, server, doc_id)
    await a.send([TYPING, 1])
    await b.wait_event(ev_of(sid_a, EV_TYPING))
    await a.send([TYPING, 1])  # fresh keystroke: debounce would end DEBOUNCE_S from now
    t0 = time.monotonic()
    await a.send([TYPING, 1, False])
    t_stop, ev = await b.wait_event(ev_of(sid_a, EV_TYPING), timeout=DEBOUNCE_S + 2)
    assert ev == [EV_TYPING, sid_a, False]
    assert t_stop - t0 < DEBOUNCE_S * 0.75, (
        f"[5, h, false] must stop at once; took {t_stop - t0:.3f}s (debounce {DEBOUNCE_S}s)"
    )


# --- VIEWPORT / FOCUS -------------------------------------------------------------------------


async def test_viewport(server, client_factory, doc_id):
    a, sid_a, b, _ = await pair_in_doc(client_factory, server, doc_id)
    await a.send([VIEWPORT, 1, 10, 60, 33.5])
    _, ev = await b.wait_event(ev_of(sid_a, EV_VIEWPORT))
    assert ev[:4] == [EV_VIEWPORT, sid_a, 10, 60] and len(ev) == 5
    assert ev[4] == pytest.approx(33.5)


@pytest.mark.parametrize("top,bottom,pct", [(0, 0, 0), (7, 7, 100), (0, 2**32 - 1, 50)])
async def test_viewport_edges_accepted(server, client_factory, doc_id, top, bottom, pct):
    a, sid_a, b, _ = await pair_in_doc(client_factory, server, doc_id)
    await a.send([VIEWPORT, 1, top, bottom, pct])
    _, ev = await b.wait_event(ev_of(sid_a, EV_VIEWPORT))
    assert ev[:4] == [EV_VIEWPORT, sid_a, top, bottom]
    assert ev[4] == pytest.approx(pct)


async def test_focus(server, client_factory, doc_id):
    a, sid_a, b, _ = await pair_in_doc(client_factory, server, doc_id)
    await a.send([FOCUS, 1, False])
    _, ev = await b.wait_event(ev_of(sid_a, EV_FOCUS))
    assert ev == [EV_FOCUS, sid_a, False]
    await a.send([FOCUS, 1, True])
    _, ev = await b.wait_event(ev_of(sid_a, EV_FOCUS))
    assert ev == [EV_FOCUS, sid_a, True]


# --- activity ---------------------------------------------------------------------------------


async def test_activity_editing_while_typing_then_viewing(server, client_factory, doc_id):
    a, sid_a, b, _ = await pair_in_doc(client_factory, server, doc_id)
    await a.send([TYPING, 1])
    _, ev = await b.wait_event(ev_of(sid_a, EV_ACTIVITY))
    assert ev == [EV_ACTIVITY, sid_a, EDITING]
    _, ev = await b.wait_event(ev_of(sid_a, EV_ACTIVITY), timeout=DEBOUNCE_S + 2)
    assert ev == [EV_ACTIVITY, sid_a, VIEWING], "typing stopped: back to Viewing"


async def test_activity_selecting_with_selection(server, client_factory, doc_id):
    a, sid_a, b, _ = await pair_in_doc(client_factory, server, doc_id)
    await a.send([CURSOR, 1, 5, 0, 50, 4, 0, 40, False])
    _, ev = await b.wait_event(ev_of(sid_a, EV_ACTIVITY))
    assert ev == [EV_ACTIVITY, sid_a, SELECTING]
    await a.send([CURSOR, 1, 5, 0, 50])  # selection collapsed
    _, ev = await b.wait_event(ev_of(sid_a, EV_ACTIVITY))
    assert ev == [EV_ACTIVITY, sid_a, VIEWING]


async def test_activity_sent_only_on_change(server, client_factory, doc_id):
    a, sid_a, b, _ = await pair_in_doc(client_factory, server, doc_id)
    for i in range(3):
        await a.send([CURSOR, 1, i, 0, i])
        await asyncio.sleep(0.08)
    frames = await b.collect(0.3)
    activity = [e for e in events_of(frames) if e[0] == EV_ACTIVITY and e[1] == sid_a]
    assert not activity, f"plain cursor moves keep a Viewing member Viewing: {activity}"


async def test_activity_idle_then_away_then_active_again(server, client_factory, doc_id):
    a, sid_a, b, _ = await pair_in_doc(client_factory, server, doc_id)
    t_action = time.monotonic()
    await a.send([CURSOR, 1, 1, 1, 1])  # last action
    t_idle, ev = await b.wait_event(ev_of(sid_a, EV_ACTIVITY), timeout=IDLE_S + 2)
    assert ev == [EV_ACTIVITY, sid_a, IDLE]
    assert t_idle - t_action >= IDLE_S * 0.9, f"Idle after {t_idle - t_action:.2f}s"
    t_away, ev = await b.wait_event(ev_of(sid_a, EV_ACTIVITY), timeout=AWAY_S + 2)
    assert ev == [EV_ACTIVITY, sid_a, AWAY]
    assert t_away - t_action >= AWAY_S * 0.9, f"Away after {t_away - t_action:.2f}s"
    await a.send([CURSOR, 1, 2, 2, 2])
    _, ev = await b.wait_event(ev_of(sid_a, EV_ACTIVITY), timeout=2)
    assert ev == [EV_ACTIVITY, sid_a, VIEWING], "the next action makes it active again"


async def test_activity_idle_then_typing_is_editing(server, client_factory, doc_id):
    a, sid_a, b, _ = await pair_in_doc(client_factory, server, doc_id)
    await a.send([CURSOR, 1, 1, 1, 1])
    _, ev = await b.wait_event(ev_of(sid_a, EV_ACTIVITY), timeout=IDLE_S + 2)
    assert ev == [EV_ACTIVITY, sid_a, IDLE]
    await a.send([TYPING, 1])
    _, ev = await b.wait_event(ev_of(sid_a, EV_ACTIVITY), timeout=2)
    assert ev == [EV_ACTIVITY, sid_a, EDITING]


async def test_activity_away_after_blur(server, client_factory, doc_id):
    a, sid_a, b, _ = await pair_in_doc(client_factory, server, doc_id)
    t_blur = time.monotonic()
    await a.send([FOCUS, 1, False])
    await b.wait_event(ev_of(sid_a, EV_FOCUS))
    t_away, ev = await b.wait_event(ev_of(sid_a, EV_ACTIVITY), timeout=BLUR_S + 2)
    assert ev == [EV_ACTIVITY, sid_a, AWAY], f"unfocused for away_after_blur_ms -> Away: {ev}"
    waited = t_away - t_blur
    assert BLUR_S * 0.9 <= waited < IDLE_S + 1, f"Away {waited:.2f}s after blur"
    await a.send([FOCUS, 1, True])
    await a.send([CURSOR, 1, 3, 3, 3])
    _, ev = await b.wait_event(ev_of(sid_a, EV_ACTIVITY), timeout=2)
    assert ev == [EV_ACTIVITY, sid_a, VIEWING], "the next action makes it active again"


# --- BATCH rules ------------------------------------------------------------------------------


async def test_member_does_not_receive_batch_of_only_its_own_events(server, client_factory, doc_id):
    a, sid_a, b, _ = await pair_in_doc(client_factory, server, doc_id)
    await a.send([CURSOR, 1, 9, 9, 9])
    await a.send([VIEWPORT, 1, 0, 10, 0])
    await b.wait_event(ev_of(sid_a, EV_VIEWPORT))
    await a.expect_silence(0.3, "(a batch holding only the member's own events)")


async def test_quiet_document_sends_nothing(server, client_factory, doc_id):
    a, _, b, _ = await pair_in_doc(client_factory, server, doc_id)
    await asyncio.sleep(BATCH_S * 2)
    await asyncio.gather(a.drain(0.05), b.drain(0.05))
    # (well inside activity_timeout_ms, so no Idle transition is due yet)
    await asyncio.gather(
        a.expect_silence(0.6, "(quiet document)"), b.expect_silence(0.6, "(quiet document)")
    )


async def test_same_batch_bytes_to_every_member(server, client_factory, doc_id):
    a, sid_a, b, _ = await pair_in_doc(client_factory, server, doc_id)
    c = await client_factory(server)
    sid_c, _ = await c.join(1, doc_id)
    await a.wait_event(lambda d, e: e[0] == EV_JOINED and e[1][0] == sid_c)
    await b.wait_event(lambda d, e: e[0] == EV_JOINED and e[1][0] == sid_c)
    await asyncio.sleep(BATCH_S * 2)
    await asyncio.gather(a.drain(0.05), b.drain(0.05), c.drain(0.05))
    await a.send([CURSOR, 1, 77, 7, 7])
    await b.wait_event(ev_of(sid_a, EV_CURSOR))
    await c.wait_event(ev_of(sid_a, EV_CURSOR))
    raw_b = [
        raw for _, f, raw in b.frames if f[0] == BATCH and [EV_CURSOR, sid_a, 77, 7, 7] in f[3]
    ]
    raw_c = [
        raw for _, f, raw in c.frames if f[0] == BATCH and [EV_CURSOR, sid_a, 77, 7, 7] in f[3]
    ]
    assert raw_b and raw_b == raw_c, "a BATCH is encoded once: the same bytes to every member"


async def test_other_events_keep_their_order(server, client_factory, doc_id):
    a, sid_a, b, _ = await pair_in_doc(client_factory, server, doc_id)
    await a.send([TYPING, 1])
    await a.send([VIEWPORT, 1, 1, 2, 3])
    await a.send([FOCUS, 1, False])
    await a.send([VIEWPORT, 1, 4, 5, 6])
    await a.send([FOCUS, 1, True])
    await a.send([TYPING, 1, False])
    frames = await b.collect(BATCH_S * 4 + 0.3)
    seq = [
        e if e[0] != EV_VIEWPORT else [*e[:4], round(e[4])]
        for e in events_of(frames, doc_id)
        if e[1] == sid_a and e[0] in (EV_TYPING, EV_VIEWPORT, EV_FOCUS)
    ]
    assert seq == [
        [EV_TYPING, sid_a, True],
        [EV_VIEWPORT, sid_a, 1, 2, 3],
        [EV_FOCUS, sid_a, False],
        [EV_VIEWPORT, sid_a, 4, 5, 6],
        [EV_FOCUS, sid_a, True],
        [EV_TYPING, sid_a, False],
    ], f"other events keep their order: {seq}"


async def test_joined_precedes_and_left_ends_a_sids_events(server, client_factory, doc_id):
    a = await client_factory(server)
    await a.join(1, doc_id)
    c = await client_factory(server)
    await c.send([JOIN, 1, doc_id])
    await c.send([CURSOR, 1, 4, 4, 4])
    await c.send([TYPING, 1])
    await c.send([LEAVE, 1])
    joined = await c.reply()
    sid_c = joined[3]
    frames = await a.collect(BATCH_S * 4 + 0.4)
    evs = [
        e
        for e in events_of(frames, doc_id)
        if e[1] == sid_c or (e[0] == EV_JOINED and e[1][0] == sid_c)
    ]
    if evs:
        assert evs[0][0] == EV_JOINED, f"a `joined` precedes any event of that sid: {evs}"
        assert evs[-1][:2] == [EV_LEFT, sid_c], f"nothing of a sid follows its `left`: {evs}"
        assert [e[:2] for e in evs if e[0] == EV_LEFT] == [[EV_LEFT, sid_c]], evs


async def test_nothing_of_a_sid_follows_its_left(server, client_factory, doc_id):
    a, _, c, sid_c = await pair_in_doc(client_factory, server, doc_id)
    await c.send([CURSOR, 1, 4, 4, 4, 1, 1, 1, False])
    await c.send([TYPING, 1])
    await c.send([VIEWPORT, 1, 1, 2, 3])
    await c.send([LEAVE, 1])
    frames = await a.collect(BATCH_S * 4 + 0.4)
    evs = [e for e in events_of(frames, doc_id) if e[1] == sid_c]
    assert evs and evs[-1][:2] == [EV_LEFT, sid_c], f"nothing of a sid follows its `left`: {evs}"
    assert [e[:2] for e in evs].count([EV_LEFT, sid_c]) == 1, evs


async def test_batches_are_per_interval_not_per_event(server, client_factory, doc_id):
    a, sid_a, b, _ = await pair_in_doc(client_factory, server, doc_id)
    t0 = time.monotonic()
    for i in range(60):
        await a.send([VIEWPORT, 1, i, i + 10, 1])
        await asyncio.sleep(0.008)
    frames = await b.collect(BATCH_S * 4)
    span = time.monotonic() - t0
    batches = [f for f in frames if f[0] == BATCH and f[1] == doc_id]
    viewports = [e for e in events_of(batches) if e[0] == EV_VIEWPORT and e[1] == sid_a]
    assert viewports and viewports[-1][2] == 59, viewports[-3:]
    assert len(batches) <= span / BATCH_S + 3, (
        f"{len(batches)} BATCHes in {span:.2f}s with batch_ms={BATCH_S * 1000:.0f}"
    )
    stamps = [f[2] for f in batches]
    assert stamps == sorted(stamps), f"BATCH server_ms must not go backwards: {stamps}"


async def test_handles_route_to_their_document(server, client_factory):
    d1, d2 = new_doc_id(), new_doc_id()
    a = await client_factory(server)
    b = await client_factory(server)
    c = await client_factory(server)
    sid_a1, _ = await a.join(11, d1)
    sid_a2, _ = await a.join(22, d2)
    await b.join(1, d1)
    await c.join(1, d2)
    await asyncio.sleep(BATCH_S * 2)
    await asyncio.gather(b.drain(0.05), c.drain(0.05))
    await a.send([CURSOR, 22, 2, 2, 2])
    _, ev = await c.wait_event(lambda d, e: d == d2 and e[0] == EV_CURSOR, 2)
    assert ev == [EV_CURSOR, sid_a2, 2, 2, 2]
    await a.send([CURSOR, 11, 1, 1, 1])
    _, ev = await b.wait_event(lambda d, e: d == d1 and e[0] == EV_CURSOR, 2)
    assert ev == [EV_CURSOR, sid_a1, 1, 1, 1]
    frames_b = [f for _, f, _ in b.frames if f[0] == BATCH]
    assert all(f[1] == d1 for f in frames_b), "B is only in d1"
    assert [EV_CURSOR, sid_a2, 2, 2, 2] not in events_of(frames_b)


async def test_disconnect_is_announced_as_left(server, client_factory, doc_id):
    a, sid_a, b, _ = await pair_in_doc(client_factory, server, doc_id)
    await a.close()
    await b.wait_event(lambda d, e: d == doc_id and e[:2] == [EV_LEFT, sid_a], timeout=3)


async def test_cleared_cursor_and_selection_in_snapshot(server, client_factory, doc_id):
    a = await client_factory(server)
    sid_a, _ = await a.join(1, doc_id)
    await a.send([CURSOR, 1, 3, 3, 3, 1, 1, 1, False])
    await a.send([CURSOR, 1])
    await a.ping()
    await asyncio.sleep(BATCH_S * 3)
    b = await client_factory(server)
    _, members = await b.join(1, doc_id)
    m = next(m for m in members if m[0] == sid_a)
    assert m[8] is None and m[9] is None, f"[4, h] clears cursor and selection: {m!r}"
    assert m[5] == VIEWING, m


async def test_member_color_is_preferred_and_stable_when_alone(server, client_factory):
    c = await client_factory(server, user_id="color-user", name="Col")
    preferred = c.welcome[3]["color"]
    doc = new_doc_id()
    sid, members = await c.join(1, doc)
    color1 = next(m[4] for m in members if m[0] == sid)
    await c.send([LEAVE, 1])
    sid, members = await c.join(1, doc)
    color2 = next(m[4] for m in members if m[0] == sid)
    assert color1 == color2, "a member's color is stable for the user where it can be"
    assert color1 == preferred, (
        f"alone in a document nothing prevents the preferred color {preferred!r}: {color1!r}"
    )
