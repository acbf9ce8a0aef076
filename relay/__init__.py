"""presence-relay: a presence and live-cursor relay for collaborative editors."""

from __future__ import annotations

__version__ = "0.1.0"


def implementation() -> str:
    """Which twin of the hot path runs: "compiled" (relay/_fast.pyx) or "pure"."""
    from relay.twin import IMPLEMENTATION

    return IMPLEMENTATION
