"""Who was here lately (relay/core/recent.py): the rules, with a fake clock."""

from __future__ import annotations

from relay.core import protocol as p
from relay.core.recent import MAX_KEPT, MAX_LISTED, RecentLog, RecentUser

WINDOW = 600_000


def gone(user: str, at: int, reason: int = p.LEFT) -> RecentUser:
    return RecentUser(user, user.title(), None, "hsl(0, 70%, 50%)", at, reason)


def names(entries: list[RecentUser]) -> list[str]:
    return [e.user_id for e in entries]


def test_newest_first_within_the_window() -> None:
    log = RecentLog(WINDOW)
    log.left(gone("ann", 1000))
    log.left(gone("bob", 2000, p.LOST))
    log.left(gone("cy", 3000))
    assert names(log.listing(3000, set())) == ["cy", "bob", "ann"]
    assert log.listing(3000, set())[1].reason == p.LOST
    # ann left at 1000: past the window at 601 001, the others not yet
    assert names(log.listing(1000 + WINDOW + 1, set())) == ["cy", "bob"]


def test_a_user_present_again_is_not_listed() -> None:
    log = RecentLog(WINDOW)
    log.left(gone("ann", 1000))  # one of ann's tabs closed ...
    log.left(gone("bob", 2000))
    assert names(log.listing(2000, {"ann"})) == ["bob"]  # ... and another is still open
    assert names(log.listing(2000, set())) == ["bob", "ann"]


def test_the_latest_leave_of_a_user_wins_and_older_copies_change_nothing() -> None:
    log = RecentLog(WINDOW)
    log.left(gone("ann", 1000))
    log.left(gone("bob", 2000))
    log.left(gone("ann", 3000, p.NODE_DOWN))
    assert names(log.listing(3000, set())) == ["ann", "bob"]
    assert log.listing(3000, set())[0].reason == p.NODE_DOWN
    log.merge([gone("ann", 500), gone("cy", 1500)])  # a store's copy, merged late
    listed = log.listing(3000, set())
    assert names(listed) == ["ann", "bob", "cy"]  # cy placed by time, ann's newer leave kept
    assert listed[0].left_at_ms == 3000


def test_bounded_listed_and_kept() -> None:
    log = RecentLog(WINDOW)
    for i in range(MAX_KEPT + 10):
        log.left(gone(f"u{i:03}", 1000 + i))
    assert len(log) == MAX_KEPT
    listed = log.listing(2000, set())
    assert len(listed) == MAX_LISTED
    assert listed[0].user_id == f"u{MAX_KEPT + 9:03}"
    # the newest present users are skipped, and the list still fills from older leavers
    present = {f"u{MAX_KEPT + 9 - i:03}" for i in range(10)}
    assert len(log.listing(2000, present)) == MAX_LISTED
    assert not present & set(names(log.listing(2000, present)))


def test_prune_forgets_what_is_past_the_window() -> None:
    log = RecentLog(WINDOW)
    log.left(gone("ann", 1000))
    assert not log.prune(1000 + WINDOW)
    assert log.prune(1000 + WINDOW + 1)
    assert len(log) == 0


def test_wire_and_json_shapes() -> None:
    e = RecentUser("u-3", "Bob", None, "hsl(195, 70%, 50%)", 1_799_999_910_000, p.LOST)
    assert e.wire() == ("u-3", "Bob", None, "hsl(195, 70%, 50%)", 1_799_999_910_000, 1)
    assert e.to_json() == {
        "user_id": "u-3",
        "name": "Bob",
        "avatar_url": None,
        "left_at": 1_799_999_910_000,
        "reason": "LOST",
    }
