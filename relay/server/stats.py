"""The node's counters: plain ints bumped where things happen, read at scrape time.

prometheus_client's `inc()` takes a lock; at tens of thousands of frames a second that is
real CPU. So the hot path bumps plain integers here (hot frames are counted inside the
compiled twin: `HotCounts`; the sessions' rules in `SessionStats`), and relay/server/
metrics.py turns them into metric families only when /metrics is scraped.
"""

from __future__ import annotations

from bisect import bisect_left

from relay.core.session import SessionStats
from relay.twin import HotCounts

# The seed's buckets for cursor latency, in seconds.
LATENCY_BUCKETS = (0.005, 0.010, 0.025, 0.050, 0.100)
BATCH_SIZE_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
TICK_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.010, 0.025, 0.050, 0.100)


class CounterHistogram:
    """A histogram that is a list of ints: observe() is a bisect and an increment."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value


class Stats:
    """Plain counters of one node."""

    __slots__ = (
        "batch_sizes",
        "bytes_out",
        "connections_total",
        "cursor_latency",
        "flush_failures",
        "frames_out",
        "hot",
        "sessions",
        "tick_duration",
        "updates",
    )

    def __init__(self) -> None:
        # Frames in = hot frames applied (counted by the peers, by type) + all the others
        # (counted by the sessions: general path, rate-limited, text, held-over).
        self.hot = HotCounts()
        self.sessions = SessionStats()
        self.frames_out = 0
        self.bytes_out = 0
        self.connections_total = 0
        self.flush_failures = 0
        self.updates = {"joined": 0, "left": 0, "resumed": 0}
        self.cursor_latency = CounterHistogram(LATENCY_BUCKETS)
        self.batch_sizes = CounterHistogram(BATCH_SIZE_BUCKETS)
        self.tick_duration = CounterHistogram(TICK_BUCKETS)

    @property
    def errors(self) -> dict[int, int]:
        """ERROR frames sent, by code."""
        return self.sessions.errors

    @property
    def closes(self) -> dict[int, int]:
        """Connections closed by the relay, by close code."""
        return self.sessions.closes

    @property
    def frames_other(self) -> int:
        return self.sessions.frames_other
