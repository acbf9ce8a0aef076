"""Log lines on a budget: a failure that repeats every tick, or a client that retries a
refused HELLO in a loop, must not flood the log (nor cost a formatted line each time)."""

from __future__ import annotations

import logging
import time


class LogBudget:
    """At most `lines` lines per `per_s` seconds; then one line saying how many were not."""

    __slots__ = ("_lines", "_log", "_per", "_start", "_used", "suppressed")

    def __init__(self, logger: logging.Logger, lines: int, per_s: float) -> None:
        self._log = logger
        self._lines = lines
        self._per = per_s
        self._start = -1e18
        self._used = 0
        self.suppressed = 0

    def allow(self) -> bool:
        """True when this line may be logged."""
        now = time.monotonic()
        if now - self._start >= self._per:
            if self.suppressed:
                self._log.warning(
                    "%d similar lines not logged in the last %.0f s", self.suppressed, self._per
                )
            self._start, self._used, self.suppressed = now, 0, 0
        if self._used < self._lines:
            self._used += 1
            return True
        self.suppressed += 1
        return False
