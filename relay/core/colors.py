"""Member colors: stable per user, distinct within a document while the palette allows.

The seed hashes the user id to a hue, which is stable but lets two people in one document
share a color. We keep the hash as the user's *preferred* slot in a palette of well-spaced
hues, and when another user in the document already holds it, walk the palette to the
nearest free slot. Two tabs of one user share a color: they are one person.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable

PALETTE_SIZE = 24  # 15 degrees apart: neighbours are still told apart on screen
PALETTE = tuple(f"hsl({i * 360 // PALETTE_SIZE}, 70%, 50%)" for i in range(PALETTE_SIZE))


def preferred_slot(user_id: str) -> int:
    # crc32, not hash(): Python's str hash is salted per process, and the color must be the
    # same on every node and after every restart.
    return zlib.crc32(user_id.encode()) % PALETTE_SIZE


def preferred_color(user_id: str) -> str:
    return PALETTE[preferred_slot(user_id)]


def assign_color(user_id: str, taken: Iterable[str]) -> str:
    """The user's preferred color, or the nearest palette color nobody else holds."""
    used = set(taken)
    start = preferred_slot(user_id)
    for step in range(PALETTE_SIZE):
        # Alternate around the preferred hue: +0, +1, -1, +2, -2, ...
        delta = (step + 1) // 2 if step % 2 else -(step // 2)
        color = PALETTE[(start + delta) % PALETTE_SIZE]
        if color not in used:
            return color
    return PALETTE[start]  # palette exhausted: stable beats distinct
