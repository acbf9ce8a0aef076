"""The SDK's cursor throttle, driven by a fake clock (no sockets, no sleeps)."""

from __future__ import annotations

import itertools
import random

import pytest
from presence_client.throttle import Throttle


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


def drive(
    throttle: Throttle[int], moves: list[tuple[float, int]], end: float
) -> list[tuple[float, int]]:
    """Feed (time, value) moves, firing the trailing-edge timer like the SDK does; return
    the (time, value) pairs that would have been sent."""
    sent: list[tuple[float, int]] = []
    timer: float | None = None
    events = sorted(moves)
    i = 0
    while True:
        next_move = events[i][0] if i < len(events) else None
        if timer is not None and (next_move is None or timer <= next_move):
            now, timer = timer, None
            ok, value = throttle.poll(now)
            if ok:
                assert value is not None
                sent.append((now, value))
            elif throttle.pending:
                timer = throttle.deadline()
            continue
        if next_move is None:
            break
        now, value = events[i]
        i += 1
        if throttle.offer(value, now):
            sent.append((now, value))
        elif timer is None:
            timer = throttle.deadline()
    assert not throttle.pending
    assert all(t <= end for t, _ in sent)
    return sent


def test_first_move_is_sent_immediately() -> None:
    t: Throttle[int] = Throttle(0.05)
    assert t.offer(1, now=10.0) is True
    assert not t.pending
    assert t.deadline() is None


def test_moves_inside_the_window_coalesce_to_the_last() -> None:
    clock = FakeClock()
    t: Throttle[int] = Throttle(0.05)
    assert t.offer(1, clock.now)
    for v in range(2, 10):
        assert t.offer(v, clock.advance(0.004)) is False
    assert t.pending
    assert t.deadline() == pytest.approx(0.05)
    # Nothing is due before the window ends.
    assert t.poll(0.03) == (False, None)
    assert t.pending
    # Trailing edge: only the last value, at the end of the window.
    assert t.poll(0.05) == (True, 9)
    assert not t.pending
    assert t.poll(0.2) == (False, None)


def test_trailing_edge_starts_a_new_window() -> None:
    t: Throttle[int] = Throttle(0.05)
    assert t.offer(1, 0.0)
    assert not t.offer(2, 0.01)
    assert t.poll(0.05) == (True, 2)
    # The trailing send counts: a move right after it waits for the next window.
    assert not t.offer(3, 0.06)
    assert t.deadline() == pytest.approx(0.10)
    assert t.poll(0.10) == (True, 3)


def test_a_move_after_a_quiet_window_goes_at_once() -> None:
    t: Throttle[int] = Throttle(0.05)
    assert t.offer(1, 0.0)
    assert t.offer(2, 0.05)  # exactly at the window end
    assert t.offer(3, 1.0)
    assert not t.pending


def test_late_timer_superseded_by_a_newer_move() -> None:
    t: Throttle[int] = Throttle(0.05)
    assert t.offer(1, 0.0)
    assert not t.offer(2, 0.01)
    # The timer is late; a newer move after the deadline goes out at once and replaces 2.
    assert t.offer(3, 0.07)
    assert not t.pending
    assert t.poll(0.08) == (False, None)


def test_poll_tolerates_a_timer_firing_a_hair_early() -> None:
    t: Throttle[int] = Throttle(0.05, slack=0.001)
    t.offer(1, 0.0)
    t.offer(2, 0.01)
    assert t.poll(0.0495) == (True, 2)


def test_zero_interval_lets_everything_through() -> None:
    t: Throttle[int] = Throttle(0.0)
    assert all(t.offer(v, 1.0) for v in range(5))


def test_reset_forgets_window_and_held_value() -> None:
    t: Throttle[int] = Throttle(0.05)
    t.offer(1, 0.0)
    t.offer(2, 0.01)
    t.reset()
    assert not t.pending
    assert t.deadline() is None
    assert t.offer(3, 0.02)


def test_negative_interval_is_rejected() -> None:
    with pytest.raises(ValueError):
        Throttle(-1)


@pytest.mark.parametrize("seed", range(20))
def test_never_drops_the_final_state_and_respects_the_rate(seed: int) -> None:
    rng = random.Random(seed)
    interval = 0.05
    t: Throttle[int] = Throttle(interval, slack=0.0)
    now = 0.0
    moves = []
    for v in range(rng.randint(1, 300)):
        now += rng.choice([0.0, 0.001, 0.004, 0.02, 0.049, 0.05, 0.2])
        moves.append((now, v))
    sent = drive(t, moves, end=now + interval)
    # The final state is always sent, and it is the last thing sent.
    assert sent[-1][1] == moves[-1][1]
    # At most one send per interval.
    for (a, _), (b, _) in itertools.pairwise(sent):
        assert b - a >= interval - 1e-9
    # Values go out in order (never an older one after a newer one).
    values = [v for _, v in sent]
    assert values == sorted(values)
    # The first move is sent when it is offered.
    assert sent[0] == moves[0]
    # The last move goes out no later than one interval after it was made.
    assert sent[-1][0] - moves[-1][0] <= interval + 1e-9
