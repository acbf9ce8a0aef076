"""A leading + trailing edge throttle with no I/O: the caller passes the time in.

The SDK uses one per document for cursor frames (and one for viewport frames): at most one
frame per interval leaves the client, the first one at once (leading edge), and the last one
offered inside a window is sent when that window ends (trailing edge), so the final state is
never dropped. The class never reads a clock and never schedules anything: the owner asks
`deadline()` when to come back and calls `poll(now)` then.
"""

from __future__ import annotations

from typing import Generic, TypeVar

T = TypeVar("T")

__all__ = ["Throttle"]


class Throttle(Generic[T]):
    """Let at most one value through per `interval` seconds, always keeping the latest.

    >>> t = Throttle[str](0.05)
    >>> t.offer("a", now=0.0)       # leading edge: send "a" now
    True
    >>> t.offer("b", now=0.01)      # inside the window: held
    False
    >>> t.offer("c", now=0.02)      # replaces "b"
    False
    >>> t.deadline()
    0.05
    >>> t.poll(now=0.05)            # trailing edge: send "c"
    (True, 'c')
    """

    __slots__ = ("_has_pending", "_last_sent", "_pending", "interval", "slack")

    def __init__(self, interval: float, slack: float = 0.001) -> None:
        """`interval` in seconds (0 lets everything through); `poll` accepts a call up to
        `slack` seconds early, because event loop timers may fire a hair before their time."""
        if interval < 0:
            raise ValueError("interval must be >= 0")
        self.interval = interval
        self.slack = slack
        self._last_sent: float | None = None
        self._pending: T | None = None
        self._has_pending = False

    @property
    def pending(self) -> bool:
        """True while a value is held for the trailing edge."""
        return self._has_pending

    def offer(self, value: T, now: float) -> bool:
        """Offer the newest value. True: send it now. False: it is held (replacing any held
        value) and must be collected with `poll` at `deadline()`."""
        if self._last_sent is None or now >= self._last_sent + self.interval:
            # The window is over (a held value, if any, is superseded by this newer one).
            self._pending = None
            self._has_pending = False
            self._last_sent = now
            return True
        self._pending = value
        self._has_pending = True
        return False

    def deadline(self) -> float | None:
        """When the held value is due, or None if nothing is held."""
        if not self._has_pending or self._last_sent is None:
            return None
        return self._last_sent + self.interval

    def poll(self, now: float) -> tuple[bool, T | None]:
        """At or after `deadline()`: (True, held value), which counts as a send at `now`.
        Otherwise (False, None)."""
        due = self.deadline()
        if due is None or now + self.slack < due:
            return False, None
        value = self._pending
        self._pending = None
        self._has_pending = False
        self._last_sent = now
        return True, value

    def reset(self) -> None:
        """Forget the window and any held value (e.g. after a reconnect)."""
        self._last_sent = None
        self._pending = None
        self._has_pending = False
