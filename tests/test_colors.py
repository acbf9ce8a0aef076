"""Member colors: stable per user, distinct within a document while the palette allows."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from helpers import MS

from relay.core.colors import PALETTE, PALETTE_SIZE, assign_color, preferred_color, preferred_slot
from relay.core.document import Document, DocumentRules
from relay.core.model import UserInfo

HSL = re.compile(r"^hsl\((\d{1,3}), 70%, 50%\)$")


def user(uid: str) -> UserInfo:
    return UserInfo(user_id=uid, name=uid)


def slot_of(color: str) -> int:
    return PALETTE.index(color)


def slot_distance(a: int, b: int) -> int:
    d = abs(a - b) % PALETTE_SIZE
    return min(d, PALETTE_SIZE - d)


def users_with_distinct_preferred_slots(n: int) -> list[str]:
    """n user ids whose preferred slots are pairwise different (n <= 24)."""
    out: list[str] = []
    slots: set[int] = set()
    i = 0
    while len(out) < n:
        uid = f"user-{i}"
        if preferred_slot(uid) not in slots:
            slots.add(preferred_slot(uid))
            out.append(uid)
        i += 1
    return out


def users_with_the_same_preferred_slot(n: int) -> list[str]:
    target = preferred_slot("anchor")
    out = ["anchor"]
    i = 0
    while len(out) < n:
        uid = f"clash-{i}"
        if preferred_slot(uid) == target:
            out.append(uid)
        i += 1
    return out


class TestPalette:
    def test_palette_is_24_distinct_css_hsl_colors(self) -> None:
        assert PALETTE_SIZE == 24
        assert len(PALETTE) == 24
        assert len(set(PALETTE)) == 24
        hues = []
        for c in PALETTE:
            m = HSL.match(c)
            assert m, c
            hues.append(int(m.group(1)))
        assert all(0 <= h < 360 for h in hues)
        assert sorted(hues) == [i * 15 for i in range(24)]  # well spaced


class TestStable:
    @pytest.mark.parametrize("uid", ["alice", "bob", "ü-ñícode", "", "x" * 256])
    def test_same_user_same_color_every_call(self, uid: str) -> None:
        first = preferred_color(uid)
        assert first in PALETTE
        assert all(preferred_color(uid) == first for _ in range(5))
        assert assign_color(uid, []) == first
        assert assign_color(uid, []) == assign_color(uid, ())

    def test_stable_across_processes(self) -> None:
        """Every node and every restart picks the same color (no salted hash())."""
        ids = ["alice", "bob", "carol", "dave", "user-42"]
        here = [preferred_color(u) for u in ids]
        code = (
            "from relay.core.colors import preferred_color;"
            f"print('|'.join(preferred_color(u) for u in {ids!r}))"
        )
        for seed in ("1", "2", "12345"):
            out = subprocess.run(
                [sys.executable, "-c", code],
                capture_output=True,
                text=True,
                check=True,
                timeout=60000 * MS,
                env={"PYTHONHASHSEED": seed, "PATH": "/usr/bin:/bin"},
            ).stdout.strip()
            assert out.split("|") == here

    def test_not_everyone_gets_the_same_color(self) -> None:
        colors = {preferred_color(f"u{i}") for i in range(200)}
        assert len(colors) > 12

    def test_document_color_is_stable_across_rejoins(self) -> None:
        doc = Document("d", DocumentRules())
        first = doc.join(user("alice"), 0)
        doc.leave(first.sid, 1)
        again = doc.join(user("alice"), 2)
        assert again.color == first.color == preferred_color("alice")
        other = Document("d2", DocumentRules())
        assert other.join(user("alice"), 0).color == first.color


class TestDistinct:
    def test_taken_preferred_moves_to_a_nearest_free_slot(self) -> None:
        uid = "alice"
        pref = preferred_slot(uid)
        c = assign_color(uid, [PALETTE[pref]])
        assert c != PALETTE[pref]
        assert slot_distance(slot_of(c), pref) == 1
        c2 = assign_color(uid, [PALETTE[pref], c])
        assert c2 not in (PALETTE[pref], c)
        assert slot_distance(slot_of(c2), pref) == 1  # the other neighbour

    def test_always_nearest_free(self) -> None:
        uid = "bob"
        pref = preferred_slot(uid)
        for k in range(1, 12):  # every slot closer than k is taken: the answer is k away
            taken = [PALETTE[(pref + d) % 24] for d in range(-(k - 1), k)]
            c = assign_color(uid, taken)
            assert c not in taken
            assert slot_distance(slot_of(c), pref) == k

    def test_assign_ignores_colors_not_in_the_palette(self) -> None:
        assert assign_color("alice", ["red", "#fff"]) == preferred_color("alice")

    def test_distinct_in_a_document_while_the_palette_allows(self) -> None:
        doc = Document("d", DocumentRules())
        # Worst case: everyone prefers the same slot.
        ids = users_with_the_same_preferred_slot(24)
        colors = [doc.join(user(u), i).color for i, u in enumerate(ids)]
        assert len(set(colors)) == 24
        assert colors[0] == preferred_color(ids[0])

    def test_distinct_preferences_are_all_honoured(self) -> None:
        doc = Document("d", DocumentRules())
        ids = users_with_distinct_preferred_slots(24)
        for i, u in enumerate(ids):
            assert doc.join(user(u), i).color == preferred_color(u)

    def test_falls_back_to_preferred_past_the_palette(self) -> None:
        doc = Document("d", DocumentRules())
        for i, u in enumerate(users_with_the_same_preferred_slot(24)):
            doc.join(user(u), i)
        assert len({s.color for s in doc.sessions.values()}) == 24
        for extra in ("zed", "yan", "xu"):
            s = doc.join(user(extra), 100)
            assert s.color == preferred_color(extra)
        assert assign_color("zed", PALETTE) == preferred_color("zed")

    def test_freed_color_is_reused(self) -> None:
        doc = Document("d", DocumentRules())
        a, b = users_with_the_same_preferred_slot(2)
        sa = doc.join(user(a), 0)
        sb = doc.join(user(b), 0)
        assert sa.color == preferred_color(a)
        assert sb.color != sa.color
        doc.leave(sa.sid, 1)
        # b keeps its color while connected (no recoloring mid-session) ...
        assert doc.sessions[sb.sid].color != preferred_color(b)
        # ... and a newcomer who prefers the freed slot gets it
        sc = doc.join(user(a), 2)
        assert sc.color == preferred_color(a)


class TestSecondTab:
    def test_second_tab_keeps_the_color(self) -> None:
        doc = Document("d", DocumentRules())
        t1 = doc.join(user("alice"), 0)
        doc.join(user("bob"), 0)
        t2 = doc.join(user("alice"), 0)
        assert t2.color == t1.color
        assert t2.sid != t1.sid

    def test_second_tab_keeps_a_non_preferred_color(self) -> None:
        doc = Document("d", DocumentRules())
        first, second = users_with_the_same_preferred_slot(2)
        doc.join(user(first), 0)
        t1 = doc.join(user(second), 0)
        assert t1.color != preferred_color(second)
        t2 = doc.join(user(second), 1)
        assert t2.color == t1.color

    def test_tabs_of_one_user_do_not_push_each_other(self) -> None:
        doc = Document("d", DocumentRules())
        colors = {doc.join(user("alice"), i).color for i in range(5)}
        assert colors == {preferred_color("alice")}
        # ... and another user who prefers the same slot still avoids that color
        target = preferred_slot("alice")
        other = next(f"o{i}" for i in range(10_000) if preferred_slot(f"o{i}") == target)
        assert doc.join(user(other), 9).color != preferred_color("alice")

    def test_second_tab_after_the_palette_is_full(self) -> None:
        doc = Document("d", DocumentRules())
        ids = users_with_the_same_preferred_slot(24)
        first = {u: doc.join(user(u), 0).color for u in ids}
        for u in ids:
            assert doc.join(user(u), 1).color == first[u]
