"""TokenBucket and BadFrameWindow, driven by a fake clock (times in ms, no sleeps)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.twin import BadFrameWindow, TokenBucket

RATE = 200  # frames a second (the protocol's default)
BURST = 400
CLOSE_AFTER_MS = 5000


def bucket(
    now: float = 0, rate: float = RATE, burst: int = BURST, close_after_ms: float = CLOSE_AFTER_MS
) -> TokenBucket:
    return TokenBucket(rate, burst, close_after_ms, now)


def send_evenly(
    b: TokenBucket, per_s: float, start: float, end: float
) -> tuple[int, int, float | None, float | None]:
    """Send `per_s` frames a second over [start, end); return (passed, dropped, first drop
    time, first time `abusive` was seen after a drop, as the hub checks it)."""
    gap = 1000.0 / per_s
    t = start
    passed = dropped = 0
    first_drop = first_abusive = None
    while t < end:
        if b.take(t):
            passed += 1
        else:
            dropped += 1
            if first_drop is None:
                first_drop = t
            if first_abusive is None and b.abusive(t):
                first_abusive = t
        t += gap
    return passed, dropped, first_drop, first_abusive


class TestTokenBucket:
    def test_burst_then_empty(self) -> None:
        b = bucket()
        assert all(b.take(0) for _ in range(BURST))
        assert not b.take(0)
        assert not b.take(0)

    def test_refills_at_the_rate_after_the_burst(self) -> None:
        b = bucket()
        for _ in range(BURST):
            b.take(0)
        assert not b.take(4)  # 4 ms at 200/s = 0.8 token
        assert b.take(5)  # 5 ms = 1 token (with the 0.8 carried over: 1.0 + ...)
        # one second later: 200 more, not 201
        ok = sum(b.take(1005) for _ in range(300))
        assert ok == 200

    def test_refill_is_capped_at_burst(self) -> None:
        b = bucket()
        for _ in range(BURST):
            b.take(0)
        # a minute of silence refills to the burst, not to 60 s * 200
        ok = sum(b.take(60_000) for _ in range(1000))
        assert ok == BURST

    def test_initial_bucket_is_full_but_not_more(self) -> None:
        b = bucket(now=1_000_000)
        ok = sum(b.take(1_000_000) for _ in range(BURST + 50))
        assert ok == BURST

    def test_sustained_throughput_is_the_rate(self) -> None:
        b = bucket()
        passed, dropped, _, _ = send_evenly(b, 1000, 0, 10_000)  # 5x the rate for 10 s
        # burst + 10 s * 200/s, give or take the edge
        assert BURST + 2000 - 2 <= passed <= BURST + 2000 + 1
        assert dropped == 10_000 - passed

    def test_client_at_the_rate_never_drops_nor_is_abusive(self) -> None:
        b = bucket()
        passed, dropped, _, abusive = send_evenly(b, RATE, 0, 120_000)
        assert dropped == 0
        assert passed == 24_000
        assert abusive is None
        assert not b.abusive(120_000)

    def test_client_bursting_within_budget_never_drops(self) -> None:
        b = bucket()
        for k in range(30):  # 400 frames at once every 2 s = 200/s on average
            t = k * 2000
            assert all(b.take(t) for _ in range(BURST)), f"dropped at {t}"
        assert not b.abusive(60_000)

    def test_abusive_only_after_close_after_ms_of_continuous_excess(self) -> None:
        b = bucket()
        gap = 1.0  # 1000/s: 5x the rate
        t = 0.0
        first_drop = None
        while True:
            if not b.take(t):
                if first_drop is None:
                    first_drop = t
                if b.abusive(t):
                    break
            t += gap
            assert t < 60_000, "never became abusive"
        assert first_drop is not None
        assert t - first_drop >= CLOSE_AFTER_MS
        assert t - first_drop < CLOSE_AFTER_MS + 2 * gap

    def test_abusive_edge_is_exact(self) -> None:
        b = bucket(rate=1, burst=1, close_after_ms=5000)
        assert b.take(0)
        assert not b.take(1)  # the excess starts at t=1
        drops = 1
        for t in range(2, 5001):  # hammer every ms: never a second without a drop
            drops += not b.take(t)
        assert drops >= 4990  # ~1 frame a second passes, the rest are dropped
        assert not b.abusive(5000)  # 4999 ms of excess
        assert b.abusive(5001)  # 5000 ms of excess

    def test_pause_of_a_second_resets_the_excess(self) -> None:
        b = bucket()
        _, dropped, first_drop, abusive = send_evenly(b, 1000, 0, 4000)
        assert dropped > 0 and abusive is None
        assert first_drop is not None
        # 1 s of silence: the next frame passes and the excess is over
        assert b.take(5000)
        _, _, first_drop2, abusive2 = send_evenly(b, 1000, 5001, 9000)
        # < 4 s of new excess: not yet 5 s (without the reset it would be 8.5 s)
        assert first_drop2 is not None
        assert abusive2 is None
        assert not b.abusive(9000)

    def test_short_excess_spikes_are_not_abuse(self) -> None:
        b = bucket()
        t = 0.0
        for _ in range(20):  # 20 s: 0.5 s at 5x the rate, 1.5 s quiet
            _, _, _, abusive = send_evenly(b, 1000, t, t + 500)
            assert abusive is None
            t += 2000
        assert not b.abusive(t)

    def test_excess_without_a_full_second_of_relief_accumulates(self) -> None:
        b = bucket()
        t = 0.0
        seen = None
        # 5x the rate for 0.9 s, then at the rate for 0.5 s (drops never stop for 1 s)
        for _ in range(10):
            _, _, _, a1 = send_evenly(b, 1000, t, t + 900)
            _, _, _, a2 = send_evenly(b, RATE, t + 900, t + 1400)
            seen = seen or a1 or a2
            t += 1400
        assert seen is not None

    def test_error_rate_field_starts_far_in_the_past(self) -> None:
        b = bucket(now=0)
        assert 0 - b.last_error_ms >= 1000  # the first ERROR 6 goes out at once

    @settings(max_examples=200, deadline=None)
    @given(
        rate=st.integers(1, 1000),
        burst=st.integers(1, 500),
        slack=st.lists(st.floats(0, 5000, allow_nan=False), min_size=1, max_size=300),
    )
    def test_below_the_rate_never_drops(self, rate: int, burst: int, slack: list[float]) -> None:
        """Frames spaced at least 1/rate apart (plus any extra gap) always pass."""
        b = bucket(rate=rate, burst=burst)
        t = 0.0
        for extra in slack:
            assert b.take(t), f"dropped at {t}"
            assert not b.abusive(t)
            t += 1000.0 / rate * 1.000001 + extra

    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.floats(0, 3, allow_nan=False), min_size=1, max_size=2000))
    def test_passed_frames_never_exceed_burst_plus_rate_times_time(self, gaps: list[float]) -> None:
        b = bucket(rate=100, burst=10)
        t = 0.0
        passed = 0
        for g in gaps:
            t += g
            passed += b.take(t)
            assert passed <= 10 + t * 100 / 1000 + 1e-9


class TestBadFrameWindow:
    def test_over_only_past_the_limit(self) -> None:
        w = BadFrameWindow(limit=20, window_ms=10_000)
        for i in range(20):
            assert w.add(i * 10) is False, i
        assert w.add(200) is True
        assert w.add(201) is True

    def test_limit_zero_closes_on_the_first(self) -> None:
        w = BadFrameWindow(limit=0, window_ms=10_000)
        assert w.add(0) is True

    def test_old_entries_expire(self) -> None:
        w = BadFrameWindow(limit=20, window_ms=10_000)
        for _ in range(20):
            w.add(0)
        assert w.add(9_999) is True  # 21 within 10 s
        w2 = BadFrameWindow(limit=20, window_ms=10_000)
        for _ in range(20):
            w2.add(0)
        assert w2.add(10_000) is False  # the 20 at t=0 are exactly one window old: gone
        for _ in range(19):
            assert w2.add(10_001) is False
        assert w2.add(10_002) is True

    def test_steady_trickle_under_the_limit_is_never_over(self) -> None:
        w = BadFrameWindow(limit=20, window_ms=10_000)
        t = 0
        for _ in range(1000):  # 2 a second = 20 per 10 s, forever
            assert w.add(t) is False, t
            t += 500

    def test_trickle_just_over_the_limit_is_caught(self) -> None:
        w = BadFrameWindow(limit=20, window_ms=10_000)
        t = 0
        over = False
        for _ in range(100):
            over = w.add(t) or over
            t += 450
        assert over

    @pytest.mark.parametrize("limit", [1, 5, 20])
    def test_matches_a_brute_force_count(self, limit: int) -> None:
        import random

        rng = random.Random(limit)
        w = BadFrameWindow(limit=limit, window_ms=1000)
        times: list[int] = []
        t = 0
        for _ in range(2000):
            t += rng.choice([0, 1, 10, 50, 200, 999, 1000, 1500])
            times.append(t)
            in_window = sum(1 for x in times if x > t - 1000)
            assert w.add(t) is (in_window > limit)


def test_a_bucket_restored_elsewhere_goes_on_where_it_was() -> None:
    """A resume through another node carries the bucket: the copy answers as the original."""
    original = bucket(rate=1, burst=5, close_after_ms=3000)
    for t in range(0, 800, 100):
        original.take(t)
    copy = bucket(now=900, rate=1, burst=5, close_after_ms=3000)  # full: what a reset gives
    copy.restore(original.state())
    for t in range(900, 6000, 70):
        assert copy.take(t) == original.take(t)
        assert copy.abusive(t) == original.abusive(t)


def test_a_bad_frame_window_restored_keeps_its_times() -> None:
    w = BadFrameWindow(2, 10_000)
    assert not w.add(1) and not w.add(2)
    copy = BadFrameWindow(2, 10_000)
    copy.restore(w.times())
    assert copy.add(3), "the third bad frame is one too many, wherever it lands"
