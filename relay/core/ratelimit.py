"""Per-connection token bucket and bad-frame window. Time passed in; no I/O."""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence


class TokenBucket:
    """`rate` frames a second with bursts of `burst`.

    `take` answers whether a frame may pass. `abusive` becomes true after `close_after_ms` of
    continuous excess: excess that started and never had a full second without a drop. A
    client that throttles to the announced rate never gets near it.
    """

    __slots__ = (
        "_burst",
        "_close_after",
        "_excess_since",
        "_last",
        "_last_drop",
        "_rate",
        "_tokens",
        "last_error_ms",
    )

    def __init__(self, rate: float, burst: int, close_after_ms: float, now_ms: float) -> None:
        self._rate = rate / 1000.0  # tokens per ms
        self._burst = float(burst)
        self._tokens = float(burst)
        self._last = now_ms
        self._close_after = close_after_ms
        self._excess_since = -1.0
        self._last_drop = -1.0
        self.last_error_ms = -1e18  # ERROR 6 goes out at most once a second

    def take(self, now_ms: float) -> bool:
        tokens = self._tokens + (now_ms - self._last) * self._rate
        self._last = now_ms
        if tokens > self._burst:
            tokens = self._burst
        if tokens >= 1.0:
            self._tokens = tokens - 1.0
            if self._excess_since >= 0 and now_ms - self._last_drop >= 1000.0:
                self._excess_since = -1.0
            return True
        self._tokens = tokens
        if self._excess_since < 0:
            self._excess_since = now_ms
        self._last_drop = now_ms
        return False

    def abusive(self, now_ms: float) -> bool:
        return self._excess_since >= 0 and now_ms - self._excess_since >= self._close_after

    def state(self) -> tuple[float, float, float, float, float]:
        """What another node needs to go on where this bucket is (a resume elsewhere)."""
        return (self._tokens, self._last, self._excess_since, self._last_drop, self.last_error_ms)

    def restore(self, state: Sequence[float]) -> None:
        tokens, last, excess_since, last_drop, last_error = (float(x) for x in state)
        self._tokens = min(tokens, self._burst)
        self._last = last
        self._excess_since = excess_since
        self._last_drop = last_drop
        self.last_error_ms = last_error


class BadFrameWindow:
    """Counts bad frames in a sliding window; `over` past the limit."""

    __slots__ = ("_limit", "_times", "_window")

    def __init__(self, limit: int, window_ms: float) -> None:
        self._limit = limit
        self._window = window_ms
        self._times: deque[float] = deque()

    def times(self) -> list[float]:
        """When the bad frames in the window came (to carry them to another node)."""
        return list(self._times)

    def restore(self, times: Sequence[float]) -> None:
        self._times = deque(float(t) for t in times)

    def add(self, now_ms: float) -> bool:
        """Record one bad frame; True when the sender is now over the limit."""
        t = self._times
        t.append(now_ms)
        horizon = now_ms - self._window
        while t and t[0] <= horizon:
            t.popleft()
        return len(t) > self._limit
