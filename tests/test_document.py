"""The per-document state machine (relay.core.document), driven by a fake clock.

Every time is a plain integer `now_ms`; no sockets, no sleeps. BATCH frames are decoded
with msgpack so the tests check what goes on the wire, not internal lists.
"""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay.core import protocol as p
from relay.core.colors import PALETTE
from relay.core.document import DocumentRules
from relay.core.model import ActivityType, UserInfo
from relay.twin import Batch, Document, DocumentFull
from relay.twin import Session as TwinSession

EDITING, VIEWING, SELECTING, IDLE, AWAY, DISCONNECTED = (int(a) for a in ActivityType)

RULES = DocumentRules(
    max_users_per_document=1000,
    typing_debounce_ms=500,
    activity_timeout_ms=30_000,
    away_after_ms=300_000,
    away_after_blur_ms=60_000,
)


def user(uid: str, name: str | None = None, avatar: str | None = None) -> UserInfo:
    return UserInfo(
        user_id=uid, name=name or uid.capitalize(), workspace_id="ws1", avatar_url=avatar
    )


def decode(batch: Batch) -> list[Any]:
    return msgpack.unpackb(batch.frame, raw=False)


def events(batch: Batch | None) -> list[list[Any]]:
    assert batch is not None, "expected a batch, got None"
    frame = decode(batch)
    assert frame[0] == p.BATCH
    return frame[3]


def drain(doc: Document, now: int = 0) -> list[list[Any]]:
    """Flush whatever is pending (possibly nothing) and return its events."""
    b = doc.flush(now)
    return [] if b is None else events(b)


def fresh(rules: DocumentRules = RULES, doc_id: str = "doc-1") -> Document:
    return Document(doc_id, rules)


# ===================================================================== join


class TestJoin:
    def test_snapshot_contains_the_joiner_with_15_field_member(self) -> None:
        doc = fresh()
        s = doc.join(user("alice", "Alice", "https://a.example/a.png"), now_ms=1000)
        snap = doc.snapshot()
        assert len(snap) == 1
        m = snap[0]
        assert len(m) == 15  # v1.1: kind and status after the 13 of v1
        sid, uid, name, avatar, color, activity, typing, focused, cur, sel, vp, conn, last = m[:13]
        assert m[13:] == (0, None)  # a person, no status
        assert sid == s.sid == 1
        assert (uid, name, avatar) == ("alice", "Alice", "https://a.example/a.png")
        assert color in PALETTE
        assert activity == VIEWING
        assert typing is False
        assert focused is True
        assert (cur, sel, vp) == (None, None, None)
        assert conn == 1000
        assert last == 1000

    def test_member_without_avatar_has_nil(self) -> None:
        doc = fresh()
        doc.join(user("bob"), 0)
        assert doc.snapshot()[0][3] is None

    def test_snapshot_lists_every_member_and_reflects_current_state(self) -> None:
        doc = fresh()
        a = doc.join(user("alice"), 0)
        b = doc.join(user("bob"), 10)
        doc.move_cursor(a.sid, (3, 4, 50), (3, 1, 47, True), 20)
        doc.set_viewport(b.sid, 0, 40, 12.5, 30)
        doc.set_typing(a.sid, True, 40)
        c = doc.join(user("carol"), 50)  # snapshot at the moment of the join, before any flush
        snap = {m[0]: m for m in doc.snapshot()}
        assert set(snap) == {a.sid, b.sid, c.sid}
        assert snap[a.sid][8] == (3, 4, 50)
        assert snap[a.sid][9] == (3, 1, 47, True)
        assert snap[a.sid][6] is True  # typing
        assert snap[a.sid][5] == EDITING
        assert snap[b.sid][10] == (0, 40, 12.5)
        assert snap[c.sid][11] == 50

    def test_joined_event_carries_the_member(self) -> None:
        doc = fresh()
        s = doc.join(user("alice"), 5)
        b = doc.flush(5)
        evs = events(b)
        assert evs == [[p.EV_JOINED, list(_as_lists(s.member()))]]
        assert len(evs[0][1]) == 15

    def test_sids_are_monotonic_and_never_reused_while_members_remain(self) -> None:
        doc = fresh()
        sids = [doc.join(user(f"u{i}"), i).sid for i in range(5)]
        assert sids == [1, 2, 3, 4, 5]
        doc.leave(5, 10)
        doc.leave(2, 11)
        new = [doc.join(user(f"v{i}"), 20 + i).sid for i in range(3)]
        assert new == [6, 7, 8]
        assert not set(new) & set(sids)

    def test_explicit_sid_from_another_node_advances_the_counter(self) -> None:
        doc = fresh()
        doc.join(user("local"), 0)  # sid 1
        doc.join(user("remote"), 0, sid=10)
        assert doc.join(user("next"), 0).sid == 11

    def test_capacity_exactly_at_max_users(self) -> None:
        doc = fresh(DocumentRules(max_users_per_document=3))
        for i in range(3):  # not before: the third still fits
            doc.join(user(f"u{i}"), i)
        assert len(doc.sessions) == 3
        drain(doc)
        with pytest.raises(DocumentFull):
            doc.join(user("late"), 10)
        assert len(doc.sessions) == 3
        assert doc.flush(10) is None  # a refused join queues nothing
        doc.leave(2, 11)
        s = doc.join(user("late"), 12)
        assert s.sid == 4

    def test_capacity_counts_sessions_not_users(self) -> None:
        doc = fresh(DocumentRules(max_users_per_document=2, max_sessions_per_user=5))
        doc.join(user("alice"), 0)
        doc.join(user("alice"), 0)
        with pytest.raises(DocumentFull):
            doc.join(user("alice"), 0)

    def test_sessions_per_user_exactly_at_the_limit(self) -> None:
        """One user (or one leaked token) cannot fill a document: at most
        max_sessions_per_user sessions of a user; other users still get in."""
        doc = fresh(DocumentRules(max_users_per_document=10, max_sessions_per_user=2))
        doc.join(user("alice"), 0)
        doc.join(user("alice"), 0)  # not before: the second still fits
        drain(doc)
        with pytest.raises(DocumentFull, match="2 sessions of one user"):
            doc.join(user("alice"), 1)
        assert doc.flush(1) is None  # a refused join queues nothing
        doc.join(user("bob"), 2)
        doc.leave(1, 3)
        assert doc.join(user("alice"), 4).user.user_id == "alice"

    def test_mirrored_sessions_count_toward_the_user_limit(self) -> None:
        """A session of the user on another node (mirrored, as the cluster writes it)."""
        doc = fresh(DocumentRules(max_sessions_per_user=1))
        doc.sessions[7] = TwinSession(7, user("alice"), "hsl(0, 70%, 50%)", 0, 0, remote=True)
        with pytest.raises(DocumentFull):
            doc.join(user("alice"), 1)

    def test_the_document_limit_answers_first(self) -> None:
        doc = fresh(DocumentRules(max_users_per_document=1, max_sessions_per_user=1))
        doc.join(user("alice"), 0)
        with pytest.raises(DocumentFull, match="document is at capacity"):
            doc.join(user("alice"), 1)

    def test_multi_tab_same_user_two_sids_same_color(self) -> None:
        doc = fresh()
        t1 = doc.join(user("alice"), 0)
        doc.join(user("bob"), 0)
        t2 = doc.join(user("alice"), 5)
        assert t1.sid != t2.sid
        assert t1.color == t2.color
        assert len(doc.snapshot()) == 3
        doc.move_cursor(t1.sid, (1, 1, 1), None, 6)
        doc.move_cursor(t2.sid, (9, 9, 99), None, 7)
        evs = drain(doc, 8)
        cursors = {e[1]: e[2:] for e in evs if e[0] == p.EV_CURSOR}
        assert cursors == {t1.sid: [1, 1, 1], t2.sid: [9, 9, 99]}

    def test_empty_and_dirty(self) -> None:
        doc = fresh()
        assert doc.empty and not doc.dirty
        s = doc.join(user("a"), 0)
        assert not doc.empty and doc.dirty
        drain(doc)
        assert not doc.dirty
        doc.leave(s.sid, 1)
        assert doc.empty and doc.dirty


def _as_lists(v: Any) -> Any:
    """Tuples -> lists recursively, as msgpack decodes them."""
    if isinstance(v, tuple | list):
        return [_as_lists(x) for x in v]
    return v


# ===================================================================== leave


class TestLeave:
    def test_left_event(self) -> None:
        doc = fresh()
        a = doc.join(user("a"), 0)
        b = doc.join(user("b"), 0)
        drain(doc)
        gone = doc.leave(a.sid, 100)
        assert gone is a
        assert events(doc.flush(100)) == [[p.EV_LEFT, a.sid, p.LEFT]]
        assert [m[0] for m in doc.snapshot()] == [b.sid]

    def test_unknown_sid_is_ignored(self) -> None:
        doc = fresh()
        doc.join(user("a"), 0)
        drain(doc)
        assert doc.leave(42, 10) is None
        assert doc.flush(10) is None
        assert len(doc.sessions) == 1

    def test_leaving_twice_sends_one_left(self) -> None:
        doc = fresh()
        a = doc.join(user("a"), 0)
        drain(doc)
        doc.leave(a.sid, 1)
        doc.leave(a.sid, 2)
        assert events(doc.flush(3)) == [[p.EV_LEFT, a.sid, p.LEFT]]

    def test_pending_cursor_does_not_follow_left(self) -> None:
        doc = fresh()
        a = doc.join(user("a"), 0)
        b = doc.join(user("b"), 0)
        drain(doc)
        doc.move_cursor(a.sid, (1, 2, 3), None, 10)
        doc.move_cursor(b.sid, (4, 5, 6), None, 11)
        doc.leave(a.sid, 12)
        b_ = doc.flush(20)
        evs = events(b_)
        left_at = evs.index([p.EV_LEFT, a.sid, p.LEFT])
        assert all(e[1] != a.sid for e in evs[left_at + 1 :])
        assert [e for e in evs if e[0] == p.EV_CURSOR] == [[p.EV_CURSOR, b.sid, 4, 5, 6]]
        assert b_ is not None and b_.cursor_arrivals == [11]

    def test_no_timer_event_of_a_departed_sid(self) -> None:
        doc = fresh()
        a = doc.join(user("a"), 0)
        doc.join(user("b"), 100_000)
        doc.set_typing(a.sid, True, 10)
        drain(doc)
        doc.leave(a.sid, 20)
        doc.advance(10_000_000)  # far past every deadline
        evs = drain(doc, 10_000_000)
        assert evs[0] == [p.EV_LEFT, a.sid, p.LEFT]
        assert all(e[1] != a.sid for e in evs[1:])

    def test_join_and_leave_in_one_batch(self) -> None:
        doc = fresh()
        a = doc.join(user("a"), 0)
        doc.move_cursor(a.sid, (1, 1, 1), None, 1)
        doc.leave(a.sid, 2)
        evs = drain(doc, 3)
        assert [e[0] for e in evs] == [p.EV_JOINED, p.EV_LEFT]


# ===================================================================== cursor


class TestCursor:
    def _doc(self) -> tuple[Document, int, int]:
        doc = fresh()
        a = doc.join(user("a"), 0)
        b = doc.join(user("b"), 0)
        drain(doc)
        return doc, a.sid, b.sid

    def test_many_moves_coalesce_to_latest(self) -> None:
        doc, a, _ = self._doc()
        for i in range(50):
            doc.move_cursor(a, (i, i + 1, i * 10), None, 100 + i)
        b = doc.flush(200)
        evs = events(b)
        assert evs == [[p.EV_CURSOR, a, 49, 50, 490]]
        assert b is not None
        assert b.cursor_arrivals == [149]
        assert b.event_count == 1

    def test_one_cursor_event_per_sid_per_batch(self) -> None:
        doc, a, bb = self._doc()
        for i in range(10):
            doc.move_cursor(a, (i, 0, i), None, i)
            doc.move_cursor(bb, (i, 1, i + 1), None, i)
        evs = events(doc.flush(20))
        cursors = [e for e in evs if e[0] == p.EV_CURSOR]
        assert sorted(e[1] for e in cursors) == [a, bb]
        assert {e[1]: e[2:] for e in cursors} == {a: [9, 0, 9], bb: [9, 1, 10]}

    def test_last_position_always_delivered_across_flushes(self) -> None:
        doc, a, _ = self._doc()
        doc.move_cursor(a, (1, 0, 1), None, 10)
        assert events(doc.flush(50)) == [[p.EV_CURSOR, a, 1, 0, 1]]
        doc.move_cursor(a, (2, 0, 2), None, 60)
        doc.move_cursor(a, (3, 0, 3), None, 70)
        assert events(doc.flush(100)) == [[p.EV_CURSOR, a, 3, 0, 3]]
        assert doc.flush(150) is None  # nothing new: nothing sent, nothing repeated

    def test_move_back_to_same_position_is_still_delivered(self) -> None:
        doc, a, _ = self._doc()
        doc.move_cursor(a, (1, 0, 1), None, 10)
        drain(doc, 50)
        doc.move_cursor(a, (2, 0, 2), None, 60)
        doc.move_cursor(a, (1, 0, 1), None, 70)
        assert events(doc.flush(100)) == [[p.EV_CURSOR, a, 1, 0, 1]]

    def test_clear(self) -> None:
        doc, a, _ = self._doc()
        doc.move_cursor(a, (1, 2, 3), None, 10)
        drain(doc, 50)
        doc.move_cursor(a, None, None, 60)
        assert events(doc.flush(100)) == [[p.EV_CURSOR, a]]
        assert doc.sessions[a].cursor is None

    def test_move_then_clear_in_one_batch_delivers_the_clear(self) -> None:
        doc, a, _ = self._doc()
        doc.move_cursor(a, (1, 2, 3), None, 10)
        doc.move_cursor(a, None, None, 11)
        assert events(doc.flush(20)) == [[p.EV_CURSOR, a]]

    def test_selection_event_has_nine_elements(self) -> None:
        doc, a, _ = self._doc()
        doc.move_cursor(a, (5, 10, 110), (2, 0, 40, True), 10)
        evs = events(doc.flush(20))
        cur = [e for e in evs if e[0] == p.EV_CURSOR]
        assert cur == [[p.EV_CURSOR, a, 5, 10, 110, 2, 0, 40, True]]
        assert len(cur[0]) == 9
        assert cur[0][8] is True

    def test_forward_selection_backward_false(self) -> None:
        doc, a, _ = self._doc()
        doc.move_cursor(a, (5, 10, 110), (7, 0, 140, False), 10)
        cur = [e for e in events(doc.flush(20)) if e[0] == p.EV_CURSOR]
        assert cur[0][8] is False

    def test_selection_cleared_when_cursor_cleared(self) -> None:
        doc, a, _ = self._doc()
        doc.move_cursor(a, (5, 10, 110), (2, 0, 40, True), 10)
        drain(doc, 20)
        # Even if a selection is passed alongside a None cursor, both are cleared.
        doc.move_cursor(a, None, (2, 0, 40, True), 30)
        evs = events(doc.flush(40))
        assert [p.EV_CURSOR, a] in evs
        s = doc.sessions[a]
        assert s.selection is None and s.cursor is None
        assert doc.snapshot()[0][9] is None

    def test_selection_dropped_by_a_plain_move(self) -> None:
        doc, a, _ = self._doc()
        doc.move_cursor(a, (5, 10, 110), (2, 0, 40, True), 10)
        doc.move_cursor(a, (6, 0, 120), None, 11)
        cur = [e for e in events(doc.flush(20)) if e[0] == p.EV_CURSOR]
        assert cur == [[p.EV_CURSOR, a, 6, 0, 120]]

    def test_cursor_arrivals_per_moved_session(self) -> None:
        doc, a, bb = self._doc()
        doc.move_cursor(a, (1, 1, 1), None, 10)
        doc.move_cursor(bb, (2, 2, 2), None, 15)
        doc.move_cursor(a, (3, 3, 3), None, 20)
        b = doc.flush(30)
        assert b is not None
        assert sorted(b.cursor_arrivals) == [15, 20]

    def test_no_cursor_arrivals_without_cursor_events(self) -> None:
        doc, a, _ = self._doc()
        doc.set_viewport(a, 0, 1, 0.0, 10)
        b = doc.flush(20)
        assert b is not None and b.cursor_arrivals == []

    def test_cursor_move_counts_as_action(self) -> None:
        doc, a, _ = self._doc()
        doc.move_cursor(a, (1, 1, 1), None, 1234)
        assert doc.sessions[a].last_active_ms == 1234


# ===================================================================== typing


class TestTyping:
    def _doc(self) -> tuple[Document, int]:
        doc = fresh()
        a = doc.join(user("a"), 0)
        drain(doc)
        return doc, a.sid

    def test_keystroke_starts_typing_once(self) -> None:
        doc, a = self._doc()
        doc.set_typing(a, True, 100)
        doc.set_typing(a, True, 150)
        doc.set_typing(a, True, 200)
        evs = events(doc.flush(210))
        assert evs.count([p.EV_TYPING, a, True]) == 1
        assert [p.EV_ACTIVITY, a, EDITING] in evs
        assert evs.index([p.EV_TYPING, a, True]) < evs.index([p.EV_ACTIVITY, a, EDITING])
        assert doc.sessions[a].typing is True

    def test_stays_typing_while_keystrokes_within_debounce(self) -> None:
        doc, a = self._doc()
        t = 1000
        doc.set_typing(a, True, t)
        drain(doc, t)
        for _ in range(20):  # every 499 ms: always inside the 500 ms debounce
            t += 499
            doc.advance(t)
            doc.set_typing(a, True, t)
            assert doc.flush(t) is None, f"typing changed at {t}"
            assert doc.sessions[a].typing is True

    def test_stops_exactly_at_last_keystroke_plus_debounce(self) -> None:
        doc, a = self._doc()
        doc.set_typing(a, True, 1000)
        doc.set_typing(a, True, 1300)  # last keystroke
        drain(doc, 1300)
        doc.advance(1799)
        assert doc.flush(1799) is None
        assert doc.sessions[a].typing is True
        doc.advance(1800)
        evs = events(doc.flush(1800))
        assert evs == [[p.EV_TYPING, a, False], [p.EV_ACTIVITY, a, VIEWING]]
        assert doc.sessions[a].typing is False

    def test_advance_past_deadline_stops_once(self) -> None:
        doc, a = self._doc()
        doc.set_typing(a, True, 1000)
        drain(doc, 1000)
        doc.advance(5000)
        doc.advance(5001)
        doc.advance(6000)
        evs = drain(doc, 6000)
        assert evs.count([p.EV_TYPING, a, False]) == 1

    def test_explicit_stop_is_immediate(self) -> None:
        doc, a = self._doc()
        doc.set_typing(a, True, 1000)
        drain(doc, 1000)
        doc.set_typing(a, False, 1100)
        evs = events(doc.flush(1100))
        assert evs == [[p.EV_TYPING, a, False], [p.EV_ACTIVITY, a, VIEWING]]
        doc.advance(1500)  # the old debounce deadline: nothing more
        assert doc.flush(1500) is None

    def test_stop_when_not_typing_sends_nothing(self) -> None:
        doc, a = self._doc()
        doc.set_typing(a, False, 100)
        assert doc.flush(100) is None

    def test_typing_again_after_stop(self) -> None:
        doc, a = self._doc()
        doc.set_typing(a, True, 100)
        doc.set_typing(a, False, 200)
        doc.set_typing(a, True, 300)
        evs = [e for e in drain(doc, 300) if e[0] == p.EV_TYPING]
        assert evs == [[p.EV_TYPING, a, True], [p.EV_TYPING, a, False], [p.EV_TYPING, a, True]]

    def test_member_shows_typing(self) -> None:
        doc, a = self._doc()
        doc.set_typing(a, True, 100)
        assert doc.snapshot()[0][6] is True
        assert doc.snapshot()[0][5] == EDITING

    def test_custom_debounce(self) -> None:
        doc = fresh(DocumentRules(typing_debounce_ms=2000))
        a = doc.join(user("a"), 0).sid
        doc.set_typing(a, True, 100)
        drain(doc, 100)
        doc.advance(2099)
        assert doc.sessions[a].typing is True
        doc.advance(2100)
        assert doc.sessions[a].typing is False


# ===================================================================== viewport & focus


class TestViewport:
    def test_event_with_float_scroll_pct(self) -> None:
        doc = fresh()
        a = doc.join(user("a"), 0).sid
        drain(doc)
        doc.set_viewport(a, 10, 55, 37, 100)  # an int percentage still goes out as a float
        evs = events(doc.flush(100))
        assert evs == [[p.EV_VIEWPORT, a, 10, 55, 37.0]]
        assert type(evs[0][4]) is float
        assert doc.snapshot()[0][10] == (10, 55, 37.0)

    def test_every_viewport_change_in_order(self) -> None:
        doc = fresh()
        a = doc.join(user("a"), 0).sid
        drain(doc)
        doc.set_viewport(a, 0, 10, 0.0, 1)
        doc.set_viewport(a, 5, 15, 50.5, 2)
        evs = events(doc.flush(3))
        assert evs == [[p.EV_VIEWPORT, a, 0, 10, 0.0], [p.EV_VIEWPORT, a, 5, 15, 50.5]]


class TestFocus:
    def _doc(self, rules: DocumentRules = RULES) -> tuple[Document, int]:
        doc = fresh(rules)
        a = doc.join(user("a"), 0).sid
        drain(doc)
        return doc, a

    def test_event_only_on_change(self) -> None:
        doc, a = self._doc()
        doc.set_focus(a, True, 10)  # already focused
        assert doc.flush(10) is None
        doc.set_focus(a, False, 20)
        doc.set_focus(a, False, 30)
        assert events(doc.flush(30)) == [[p.EV_FOCUS, a, False]]
        assert doc.snapshot()[0][7] is False

    def test_away_after_blur(self) -> None:
        rules = DocumentRules(
            activity_timeout_ms=30_000, away_after_ms=300_000, away_after_blur_ms=10_000
        )
        doc, a = self._doc(rules)
        doc.set_focus(a, False, 1000)
        drain(doc, 1000)
        doc.advance(10_999)
        assert doc.flush(10_999) is None
        assert doc.sessions[a].activity is ActivityType.VIEWING
        doc.advance(11_000)
        assert events(doc.flush(11_000)) == [[p.EV_ACTIVITY, a, AWAY]]

    def test_away_after_blur_with_default_rules_goes_through_idle(self) -> None:
        doc, a = self._doc()  # Idle at 30 s, blur-Away at 60 s after the blur
        doc.set_focus(a, False, 5000)
        drain(doc, 5000)
        doc.advance(30_000)
        assert events(doc.flush(30_000)) == [[p.EV_ACTIVITY, a, IDLE]]
        doc.advance(64_999)
        assert doc.flush(64_999) is None
        doc.advance(65_000)
        assert events(doc.flush(65_000)) == [[p.EV_ACTIVITY, a, AWAY]]

    def test_refocus_makes_active_again(self) -> None:
        rules = DocumentRules(activity_timeout_ms=30_000, away_after_blur_ms=10_000)
        doc, a = self._doc(rules)
        doc.set_focus(a, False, 1000)
        doc.advance(11_000)
        drain(doc, 11_000)
        assert doc.sessions[a].activity is ActivityType.AWAY
        doc.set_focus(a, True, 12_000)
        evs = events(doc.flush(12_000))
        assert evs == [[p.EV_FOCUS, a, True], [p.EV_ACTIVITY, a, VIEWING]]
        assert doc.sessions[a].last_active_ms == 12_000
        # and the normal Idle clock restarts from the refocus
        doc.advance(41_999)
        assert doc.flush(41_999) is None
        doc.advance(42_000)
        assert events(doc.flush(42_000)) == [[p.EV_ACTIVITY, a, IDLE]]

    def test_refocus_before_blur_deadline_cancels_away(self) -> None:
        rules = DocumentRules(activity_timeout_ms=30_000, away_after_blur_ms=10_000)
        doc, a = self._doc(rules)
        doc.set_focus(a, False, 1000)
        doc.set_focus(a, True, 5000)
        drain(doc, 5000)
        doc.advance(11_000)
        assert doc.flush(11_000) is None
        assert doc.sessions[a].activity is ActivityType.VIEWING


# ===================================================================== activity


class TestActivity:
    def _doc(self, rules: DocumentRules = RULES) -> tuple[Document, int]:
        doc = fresh(rules)
        a = doc.join(user("a"), 0).sid
        drain(doc)
        return doc, a

    def test_editing_while_typing_then_viewing(self) -> None:
        doc, a = self._doc()
        doc.set_typing(a, True, 10)
        assert doc.sessions[a].activity is ActivityType.EDITING
        doc.advance(510)
        assert doc.sessions[a].activity is ActivityType.VIEWING
        evs = [e for e in drain(doc, 510) if e[0] == p.EV_ACTIVITY]
        assert evs == [[p.EV_ACTIVITY, a, EDITING], [p.EV_ACTIVITY, a, VIEWING]]

    def test_selecting_with_a_selection(self) -> None:
        doc, a = self._doc()
        doc.move_cursor(a, (1, 5, 5), (1, 0, 0, True), 10)
        evs = drain(doc, 10)
        assert [p.EV_ACTIVITY, a, SELECTING] in evs
        doc.move_cursor(a, (1, 5, 5), None, 20)
        evs = drain(doc, 20)
        assert [p.EV_ACTIVITY, a, VIEWING] in evs

    def test_typing_beats_selection(self) -> None:
        doc, a = self._doc()
        doc.move_cursor(a, (1, 5, 5), (1, 0, 0, True), 10)
        doc.set_typing(a, True, 20)
        assert doc.sessions[a].activity is ActivityType.EDITING
        doc.advance(520)
        assert doc.sessions[a].activity is ActivityType.SELECTING

    def test_viewing_by_default_and_no_event_without_change(self) -> None:
        doc, a = self._doc()
        doc.move_cursor(a, (1, 1, 1), None, 10)
        evs = drain(doc, 10)
        assert all(e[0] != p.EV_ACTIVITY for e in evs)  # Viewing -> Viewing is no change
        assert doc.sessions[a].activity is ActivityType.VIEWING

    def test_idle_exactly_at_timeout_not_before(self) -> None:
        doc, a = self._doc()
        doc.move_cursor(a, (1, 1, 1), None, 1000)
        drain(doc, 1000)
        doc.advance(30_999)
        assert doc.flush(30_999) is None
        assert doc.sessions[a].activity is ActivityType.VIEWING
        doc.advance(31_000)
        assert events(doc.flush(31_000)) == [[p.EV_ACTIVITY, a, IDLE]]

    def test_idle_from_join_time_without_any_action(self) -> None:
        doc = fresh()
        a = doc.join(user("a"), 500).sid
        drain(doc, 500)
        doc.advance(30_499)
        assert doc.flush(30_499) is None
        doc.advance(30_500)
        assert events(doc.flush(30_500)) == [[p.EV_ACTIVITY, a, IDLE]]

    def test_away_exactly_at_away_after_ms(self) -> None:
        doc, a = self._doc()
        doc.advance(30_000)
        assert events(doc.flush(30_000)) == [[p.EV_ACTIVITY, a, IDLE]]
        doc.advance(299_999)
        assert doc.flush(299_999) is None
        doc.advance(300_000)
        assert events(doc.flush(300_000)) == [[p.EV_ACTIVITY, a, AWAY]]
        doc.advance(10**9)
        assert doc.flush(10**9) is None  # Away is terminal until the next action

    def test_single_late_advance_jumps_straight_to_away(self) -> None:
        doc, a = self._doc()
        doc.advance(400_000)
        evs = drain(doc, 400_000)
        assert evs[-1] == [p.EV_ACTIVITY, a, AWAY]
        assert doc.sessions[a].activity is ActivityType.AWAY

    @pytest.mark.parametrize("until", [30_000, 300_000])
    @pytest.mark.parametrize("action", ["cursor", "typing", "viewport", "select"])
    def test_next_action_makes_active_again(self, until: int, action: str) -> None:
        doc, a = self._doc()
        doc.advance(30_000)
        doc.advance(until)
        drain(doc, until)
        assert doc.sessions[a].activity in (ActivityType.IDLE, ActivityType.AWAY)
        t = until + 10
        expected = VIEWING
        if action == "cursor":
            doc.move_cursor(a, (2, 2, 2), None, t)
        elif action == "typing":
            doc.set_typing(a, True, t)
            expected = EDITING
        elif action == "viewport":
            doc.set_viewport(a, 0, 10, 0.0, t)
        else:
            doc.move_cursor(a, (2, 2, 2), (2, 0, 0, True), t)
            expected = SELECTING
        evs = drain(doc, t)
        assert [p.EV_ACTIVITY, a, expected] in evs
        assert doc.sessions[a].activity == expected
        assert doc.sessions[a].last_active_ms == t
        # and it goes Idle again a full timeout after this action, not earlier
        doc.advance(t + 29_999)
        assert doc.sessions[a].activity != IDLE
        doc.advance(t + 30_000)
        assert doc.sessions[a].activity is ActivityType.IDLE

    def test_continuous_typing_never_idles(self) -> None:
        doc, a = self._doc()
        t = 0
        while t < 100_000:
            t += 300
            doc.advance(t)
            doc.set_typing(a, True, t)
            assert doc.sessions[a].activity is ActivityType.EDITING
        evs = drain(doc, t)
        assert [p.EV_ACTIVITY, a, IDLE] not in evs

    def test_each_session_has_its_own_clock(self) -> None:
        doc = fresh()
        a = doc.join(user("a"), 0).sid
        b = doc.join(user("b"), 1000).sid
        drain(doc, 1000)
        doc.advance(30_000)
        assert events(doc.flush(30_000)) == [[p.EV_ACTIVITY, a, IDLE]]
        doc.advance(30_999)
        assert doc.flush(30_999) is None
        doc.advance(31_000)
        assert events(doc.flush(31_000)) == [[p.EV_ACTIVITY, b, IDLE]]

    def test_member_reports_activity(self) -> None:
        doc, _ = self._doc()
        doc.advance(30_000)
        assert doc.snapshot()[0][5] == IDLE


# ===================================================================== advance


class TestAdvance:
    def test_noop_before_next_deadline(self) -> None:
        doc = fresh()
        a = doc.join(user("a"), 0).sid
        doc.set_typing(a, True, 100)
        drain(doc, 100)
        assert doc.next_deadline_ms == 600
        doc.advance(599)
        assert doc.next_deadline_ms == 600
        assert doc.sessions[a].typing is True
        assert doc.flush(599) is None

    def test_next_deadline_is_the_earliest(self) -> None:
        doc = fresh()
        doc.join(user("a"), 0)
        assert doc.next_deadline_ms == 30_000
        b = doc.join(user("b"), 100).sid
        assert doc.next_deadline_ms == 30_000
        doc.set_typing(b, True, 200)
        assert doc.next_deadline_ms == 700
        doc.advance(700)
        assert doc.next_deadline_ms == 30_000  # back to a's Idle deadline

    def test_noop_advance_does_not_hide_a_due_deadline(self) -> None:
        doc = fresh()
        a = doc.join(user("a"), 0).sid
        drain(doc)
        for t in range(0, 30_000, 997):
            doc.advance(t)
        assert doc.sessions[a].activity is ActivityType.VIEWING
        doc.advance(30_000)
        assert doc.sessions[a].activity is ActivityType.IDLE

    def test_empty_document_advance_and_flush(self) -> None:
        doc = fresh()
        doc.advance(10**12)
        assert doc.flush(10**12) is None

    def test_remote_sessions_are_not_driven(self) -> None:
        doc = fresh()
        r = doc.join(user("r"), 0, sid=7)
        r.remote = True
        drain(doc)
        doc.advance(10**9)
        assert r.activity is ActivityType.VIEWING
        assert doc.flush(10**9) is None


# ===================================================================== flush & batch


class TestFlush:
    def test_none_when_nothing_happened(self) -> None:
        doc = fresh()
        assert doc.flush(0) is None
        doc.join(user("a"), 0)
        assert doc.flush(1) is not None
        assert doc.flush(2) is None
        assert doc.flush(3) is None

    def test_frame_decodes_to_batch(self) -> None:
        doc = fresh(doc_id="team:notes/1")
        a = doc.join(user("a"), 10).sid
        doc.set_viewport(a, 1, 2, 3.5, 11)
        b = doc.flush(12_345)
        assert b is not None
        frame = decode(b)
        assert len(frame) == 4
        assert frame[0] == 34
        assert frame[1] == "team:notes/1"
        assert frame[2] == 12_345
        assert isinstance(frame[3], list)
        assert b.event_count == len(frame[3]) == 2

    @pytest.mark.parametrize("doc_id", ["d", "x" * 31, "y" * 32, "z" * 128])
    @pytest.mark.parametrize("n_events", [1, 15, 16])
    @pytest.mark.parametrize("now", [0, 127, 2**31, 2**40 + 3])
    def test_frame_is_the_canonical_batch_encoding(
        self, doc_id: str, n_events: int, now: int
    ) -> None:
        """Whatever way the frame is assembled, it is the BATCH array's msgpack encoding
        (header sizes change at 16 events / 65536 events and with the doc_id length)."""
        self._check_canonical(doc_id, n_events, now)

    def test_frame_with_more_than_65535_events_is_canonical(self) -> None:
        self._check_canonical("d", 70_000, 5)

    def _check_canonical(self, doc_id: str, n_events: int, now: int) -> None:
        doc = fresh(doc_id=doc_id)
        a = doc.join(user("a"), 0).sid
        for i in range(n_events - 1):
            doc.set_viewport(a, i, i + 1, i / 7, 0)
        b = doc.flush(now)
        assert b is not None
        frame = decode(b)
        assert frame[1] == doc_id and frame[2] == now
        assert len(frame[3]) == n_events == b.event_count
        assert b.frame == p.encode_batch(doc_id, now, frame[3])

    def test_frame_is_one_msgpack_array_with_nothing_trailing(self) -> None:
        doc = fresh()
        doc.join(user("a"), 0)
        b = doc.flush(1)
        assert b is not None
        unpacker = msgpack.Unpacker(raw=False)
        unpacker.feed(b.frame)
        assert len(list(unpacker)) == 1

    def test_skip_sid_when_one_session_authored_everything(self) -> None:
        doc = fresh()
        a = doc.join(user("a"), 0).sid
        b = doc.join(user("b"), 0).sid
        drain(doc)
        doc.move_cursor(a, (1, 1, 1), None, 10)
        doc.set_viewport(a, 0, 5, 1.0, 11)
        doc.set_typing(a, True, 12)
        batch = doc.flush(20)
        assert batch is not None and batch.skip_sid == a
        doc.move_cursor(b, (1, 1, 1), None, 30)
        batch = doc.flush(40)
        assert batch is not None and batch.skip_sid == b

    def test_no_skip_sid_with_two_authors(self) -> None:
        doc = fresh()
        a = doc.join(user("a"), 0).sid
        b = doc.join(user("b"), 0).sid
        batch = doc.flush(1)  # two joins
        assert batch is not None and batch.skip_sid is None
        doc.move_cursor(a, (1, 1, 1), None, 10)
        doc.move_cursor(b, (2, 2, 2), None, 10)
        batch = doc.flush(20)
        assert batch is not None and batch.skip_sid is None
        doc.set_viewport(a, 0, 1, 0.0, 30)
        doc.move_cursor(b, (3, 3, 3), None, 31)  # only the cursor is b's
        batch = doc.flush(40)
        assert batch is not None and batch.skip_sid is None

    def test_no_skip_sid_for_two_tabs_of_one_user(self) -> None:
        doc = fresh()
        t1 = doc.join(user("alice"), 0).sid
        t2 = doc.join(user("alice"), 0).sid
        drain(doc)
        doc.move_cursor(t1, (1, 1, 1), None, 10)
        doc.move_cursor(t2, (2, 2, 2), None, 10)
        batch = doc.flush(20)
        assert batch is not None and batch.skip_sid is None

    def test_skip_sid_for_timer_events_of_one_session(self) -> None:
        doc = fresh()
        a = doc.join(user("a"), 0).sid
        doc.join(user("b"), 10_000)
        drain(doc)
        doc.advance(30_000)
        batch = doc.flush(30_000)
        assert batch is not None
        assert events(batch) == [[p.EV_ACTIVITY, a, IDLE]]
        assert batch.skip_sid == a

    def test_skip_sid_resets_between_batches(self) -> None:
        doc = fresh()
        a = doc.join(user("a"), 0).sid
        b = doc.join(user("b"), 0).sid
        doc.flush(1)
        doc.set_viewport(a, 0, 1, 0.0, 2)
        assert doc.flush(3).skip_sid == a  # type: ignore[union-attr]
        doc.set_viewport(b, 0, 1, 0.0, 4)
        assert doc.flush(5).skip_sid == b  # type: ignore[union-attr]

    def test_event_order_preserved_joined_first(self) -> None:
        doc = fresh()
        a = doc.join(user("a"), 0).sid
        drain(doc)
        doc.move_cursor(a, (9, 9, 9), None, 5)  # a's cursor is emitted at flush time
        b = doc.join(user("b"), 10).sid
        doc.set_viewport(b, 0, 30, 0.0, 11)
        doc.move_cursor(b, (1, 2, 3), (1, 0, 1, True), 12)
        doc.set_focus(b, False, 13)
        doc.set_typing(b, True, 14)
        evs = events(doc.flush(20))
        kinds_b = [e[0] for e in evs if e[0] != p.EV_JOINED and e[1] == b]
        assert evs[0][0] == p.EV_JOINED and evs[0][1][0] == b
        # queued events of b keep their order; the coalesced cursor comes after them
        assert kinds_b == [
            p.EV_VIEWPORT,
            p.EV_ACTIVITY,
            p.EV_FOCUS,
            p.EV_TYPING,
            p.EV_ACTIVITY,
            p.EV_CURSOR,
        ]
        first_of = {}
        for i, e in enumerate(evs):
            sid = e[1][0] if e[0] == p.EV_JOINED else e[1]
            first_of.setdefault(sid, (i, e[0]))
        assert first_of[b][1] == p.EV_JOINED
        assert [e for e in evs if e[0] == p.EV_CURSOR] == [
            [p.EV_CURSOR, a, 9, 9, 9],
            [p.EV_CURSOR, b, 1, 2, 3, 1, 0, 1, True],
        ]

    def test_interleaved_events_of_two_sessions_keep_order(self) -> None:
        doc = fresh()
        a = doc.join(user("a"), 0).sid
        b = doc.join(user("b"), 0).sid
        drain(doc)
        doc.set_viewport(a, 0, 1, 1.0, 1)
        doc.set_viewport(b, 0, 2, 2.0, 2)
        doc.set_viewport(a, 0, 3, 3.0, 3)
        doc.set_focus(b, False, 4)
        evs = events(doc.flush(5))
        assert evs == [
            [p.EV_VIEWPORT, a, 0, 1, 1.0],
            [p.EV_VIEWPORT, b, 0, 2, 2.0],
            [p.EV_VIEWPORT, a, 0, 3, 3.0],
            [p.EV_FOCUS, b, False],
        ]


# ===================================================================== property: mirror


def _apply(mirror: dict[int, dict[str, Any]], ev: list[Any]) -> None:
    """Apply one BATCH event the way an SDK does (idempotently)."""
    code = ev[0]
    if code == p.EV_JOINED:
        m = ev[1]
        mirror[m[0]] = {
            "activity": m[5],
            "typing": m[6],
            "focused": m[7],
            "cursor": m[8],
            "selection": m[9],
            "viewport": m[10],
        }
        return
    sid = ev[1]
    if sid not in mirror:
        return
    if code == p.EV_LEFT:
        del mirror[sid]
    elif code == p.EV_CURSOR:
        if len(ev) == 2:
            mirror[sid]["cursor"] = None
            mirror[sid]["selection"] = None
        else:
            mirror[sid]["cursor"] = ev[2:5]
            mirror[sid]["selection"] = ev[5:9] if len(ev) == 9 else None
    elif code == p.EV_TYPING:
        mirror[sid]["typing"] = ev[2]
    elif code == p.EV_VIEWPORT:
        mirror[sid]["viewport"] = ev[2:5]
    elif code == p.EV_ACTIVITY:
        mirror[sid]["activity"] = ev[2]
    elif code == p.EV_FOCUS:
        mirror[sid]["focused"] = ev[2]


def _state(doc: Document) -> dict[int, dict[str, Any]]:
    out = {}
    for m in doc.snapshot():
        m = _as_lists(m)
        out[m[0]] = {
            "activity": m[5],
            "typing": m[6],
            "focused": m[7],
            "cursor": m[8],
            "selection": m[9],
            "viewport": m[10],
        }
    return out


_pos = st.tuples(st.integers(0, 50), st.integers(0, 50), st.integers(0, 2000))
_op = st.one_of(
    st.tuples(st.just("join"), st.integers(0, 4)),
    st.tuples(st.just("leave"), st.integers(0, 8)),
    st.tuples(
        st.just("cursor"),
        st.integers(0, 8),
        st.none() | _pos,
        st.none()
        | st.tuples(st.integers(0, 50), st.integers(0, 50), st.integers(0, 2000), st.booleans()),
    ),
    st.tuples(st.just("typing"), st.integers(0, 8), st.booleans()),
    st.tuples(
        st.just("viewport"),
        st.integers(0, 8),
        st.integers(0, 100),
        st.floats(0, 100, allow_nan=False),
    ),
    st.tuples(st.just("focus"), st.integers(0, 8), st.booleans()),
    st.tuples(st.just("wait"), st.integers(0, 70_000)),
    st.tuples(st.just("flush")),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_op, max_size=60))
def test_batches_keep_a_mirror_in_sync_and_follow_the_rules(ops: list[tuple[Any, ...]]) -> None:
    """An SDK that applies every BATCH ends with the document's state; per batch, at most one
    cursor event per sid, `joined` before anything of its sid, nothing of a sid after its
    `left`, skip_sid only when one sid authored every event."""
    rules = DocumentRules(
        max_users_per_document=6,
        typing_debounce_ms=500,
        activity_timeout_ms=20_000,
        away_after_ms=100_000,
        away_after_blur_ms=40_000,
    )
    doc = fresh(rules)
    mirror: dict[int, dict[str, Any]] = {}
    now = 0
    seen_sids: set[int] = set()
    # The test's own model of typing and of the clocks the activity rule reads.
    typing_until: dict[int, int | None] = {}
    last_action: dict[int, int] = {}
    blurred_at: dict[int, int | None] = {}

    def act(sid: int) -> None:
        last_action[sid] = now
        if blurred_at[sid] is not None:
            blurred_at[sid] = now  # acting in a blurred tab restarts the blur clock

    def check_timers() -> None:
        for sid, s in doc.sessions.items():
            until = typing_until[sid]
            typing = until is not None and now < until
            assert s.typing is typing, f"sid {sid} typing at {now}"
            idle_for = now - last_action[sid]
            b = blurred_at[sid]
            if idle_for >= rules.away_after_ms or (
                b is not None and now >= b + rules.away_after_blur_ms
            ):
                want = ActivityType.AWAY
            elif idle_for >= rules.activity_timeout_ms:
                want = ActivityType.IDLE
            elif typing:
                want = ActivityType.EDITING
            elif s.selection is not None:
                want = ActivityType.SELECTING
            else:
                want = ActivityType.VIEWING
            assert s.activity is want, f"sid {sid} at {now}: {s.activity!r} != {want!r}"

    def flush() -> None:
        b = doc.flush(now)
        if b is None:
            assert _state(doc) == mirror
            return
        frame = decode(b)
        assert frame[:3] == [p.BATCH, "doc-1", now]
        evs = frame[3]
        assert b.event_count == len(evs)
        cursor_sids = [e[1] for e in evs if e[0] == p.EV_CURSOR]
        assert len(cursor_sids) == len(set(cursor_sids))
        assert len(b.cursor_arrivals) == len(cursor_sids)
        left: set[int] = set()
        joined: set[int] = set()
        authors = set()
        for e in evs:
            sid = e[1][0] if e[0] == p.EV_JOINED else e[1]
            authors.add(sid)
            assert sid not in left, f"event {e} after left of {sid}"
            if e[0] == p.EV_JOINED:
                joined.add(sid)
            elif e[0] == p.EV_LEFT:
                left.add(sid)
            else:
                assert sid in mirror or sid in joined, f"event {e} of a sid not joined"
            _apply(mirror, e)
        assert b.skip_sid == (next(iter(authors)) if len(authors) == 1 else None)
        assert _state(doc) == mirror

    for op in ops:
        kind = op[0]
        live = sorted(doc.sessions)
        if kind == "join":
            try:
                s = doc.join(user(f"u{op[1]}"), now)
            except DocumentFull:
                assert len(doc.sessions) == rules.max_users_per_document
                continue
            assert s.sid not in seen_sids
            seen_sids.add(s.sid)
            typing_until[s.sid] = None
            last_action[s.sid] = now
            blurred_at[s.sid] = None
        elif kind == "wait":
            now += op[1]
            doc.advance(now)
            check_timers()
        elif kind == "flush":
            flush()
        elif live:
            sid = live[op[1] % len(live)]
            if kind == "leave":
                doc.leave(sid, now)
            elif kind == "cursor":
                doc.move_cursor(sid, op[2], op[3], now)
                act(sid)
            elif kind == "typing":
                doc.set_typing(sid, op[2], now)
                typing_until[sid] = now + rules.typing_debounce_ms if op[2] else None
                act(sid)
            elif kind == "viewport":
                doc.set_viewport(sid, op[2], op[2] + 10, op[3], now)
                act(sid)
            elif kind == "focus":
                was = blurred_at[sid] is None
                doc.set_focus(sid, op[2], now)
                if op[2] and not was:
                    blurred_at[sid] = None
                    act(sid)  # coming back to the tab is an action
                elif not op[2] and was:
                    blurred_at[sid] = now
    doc.advance(now)
    check_timers()
    flush()
    assert _state(doc) == mirror


class TestDisconnected:
    """v1.1: a connection that ended without a deliberate leave keeps its place, shown
    DISCONNECTED (activity 5), until it is resumed or leaves with a reason."""

    def test_disconnect_shows_activity_5_and_keeps_the_member(self) -> None:
        doc = fresh()
        a = doc.join(user("ann"), 0)
        drain(doc)
        doc.disconnect(a.sid, 10)
        assert events(doc.flush(10)) == [[p.EV_ACTIVITY, a.sid, DISCONNECTED]]
        assert doc.snapshot()[0][5] == DISCONNECTED
        doc.disconnect(a.sid, 11)  # once
        assert doc.flush(11) is None

    def test_no_idle_or_away_while_disconnected(self) -> None:
        doc = fresh(DocumentRules(activity_timeout_ms=100, away_after_ms=200))
        a = doc.join(user("ann"), 0)
        drain(doc)
        doc.disconnect(a.sid, 10)
        drain(doc)
        for t in (150, 250, 10_000):
            doc.advance(t)
        assert doc.flush(10_000) is None
        assert doc.sessions[a.sid].activity == ActivityType.DISCONNECTED

    def test_a_typing_that_runs_out_still_stops(self) -> None:
        doc = fresh()
        a = doc.join(user("ann"), 0)
        doc.set_typing(a.sid, True, 1)
        drain(doc)
        doc.disconnect(a.sid, 2)
        drain(doc)
        doc.advance(1 + 500)
        assert events(doc.flush(600)) == [[p.EV_TYPING, a.sid, False]]

    def test_reconnect_computes_the_activity_again(self) -> None:
        doc = fresh(DocumentRules(activity_timeout_ms=100, away_after_ms=1000))
        a = doc.join(user("ann"), 0)
        b = doc.join(user("bob"), 0)
        doc.move_cursor(b.sid, (1, 1, 1), (1, 0, 0, False), 5)
        drain(doc)
        doc.disconnect(a.sid, 10)
        doc.disconnect(b.sid, 10)
        drain(doc)
        doc.reconnect(a.sid, 50)  # still within activity_timeout: Viewing
        doc.reconnect(b.sid, 500)  # past it: Idle (its selection is kept)
        assert events(doc.flush(500)) == [
            [p.EV_ACTIVITY, a.sid, VIEWING],
            [p.EV_ACTIVITY, b.sid, IDLE],
        ]
        assert doc.sessions[b.sid].selection == (1, 0, 0, False)
        doc.reconnect(a.sid, 501)  # once
        assert doc.flush(501) is None

    @pytest.mark.parametrize("reason", [p.LEFT, p.LOST, p.NODE_DOWN, p.EVICTED, p.SHUTDOWN])
    def test_left_carries_the_reason(self, reason: int) -> None:
        doc = fresh()
        a = doc.join(user("ann"), 0)
        drain(doc)
        doc.disconnect(a.sid, 1)
        doc.leave(a.sid, 2, reason)
        assert events(doc.flush(2)) == [
            [p.EV_ACTIVITY, a.sid, DISCONNECTED],
            [p.EV_LEFT, a.sid, reason],
        ]
