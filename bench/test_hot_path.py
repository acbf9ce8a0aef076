"""Micro-benchmarks of the hot path, each paired `fast` (relay._fast) / `pure` (relay.core.pure).

Run: `python -m pytest bench/test_hot_path.py --benchmark-only` (`make bench` runs it first).
These measure; they assert nothing about time (shared machines are noisy): the README
quotes medians and ratios from one run.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import msgpack
import pytest

from relay.core import pure
from relay.core.document import DocumentRules
from relay.core.model import UserInfo

_fast: Any
try:
    from relay import _fast
except ImportError:  # pragma: no cover
    _fast = None

TWINS = [
    pytest.param(_fast, id="fast", marks=pytest.mark.skipif(_fast is None, reason="not built")),
    pytest.param(pure, id="pure"),
]
RULES = DocumentRules()
NOW = 1_800_000_000_000


def room(mod: ModuleType, members: int, doc_id: str = "doc") -> tuple[Any, list[Any]]:
    """A document with `members` sessions, one peer each (handle 1), joins flushed."""
    doc = mod.Document(doc_id, RULES, set())
    peers = []
    for i in range(members):
        s = doc.join(UserInfo(f"user-{i}", f"User {i}"), NOW)
        peer = mod.Peer(mod.TokenBucket(1e9, 10**9, 5000, NOW))
        peer.handles[1] = mod.Membership(doc, s.sid)
        peers.append(peer)
    doc.flush(NOW)
    return doc, peers


CURSORS = [msgpack.packb([4, 1, 120 + i, 7 + i, 3000 + i]) for i in range(1000)]
VIEWPORT = msgpack.packb([6, 1, 100, 140, 42.5])


@pytest.mark.parametrize("mod", TWINS)
def test_ingest_cursor_frame(benchmark: Any, mod: ModuleType) -> None:
    _, peers = room(mod, 20)
    feed = peers[7].feed
    frame = CURSORS[0]
    assert feed(frame, NOW + 1) == 4
    benchmark(feed, frame, NOW + 1)


def masked(payload: bytes, key: bytes = b"\x5a\xa5\x3c\xc3") -> bytes:
    """A client WebSocket frame (masked binary, FIN) carrying `payload` (< 126 bytes)."""
    body = bytes(b ^ key[i & 3] for i, b in enumerate(payload))
    return bytes([0x82, 0x80 | len(payload)]) + key + body


@pytest.mark.parametrize("mod", TWINS)
def test_ingest_cursor_wire_frame(benchmark: Any, mod: ModuleType) -> None:
    """What the server's fast path does per read: header, unmask, decode, apply."""
    _, peers = room(mod, 20)
    feed_wire = peers[7].feed_wire
    wire = masked(CURSORS[0])
    assert feed_wire(wire, 0, 8192, NOW + 1) == (len(wire), mod.NEED_MORE, None)
    benchmark(feed_wire, wire, 0, 8192, NOW + 1)


@pytest.mark.parametrize("mod", TWINS)
def test_flush_20_member_batch(benchmark: Any, mod: ModuleType) -> None:
    doc, peers = room(mod, 20)
    now = [NOW]

    def setup() -> None:
        now[0] += 50
        for i, peer in enumerate(peers):
            peer.feed(CURSORS[i], now[0])
        peers[0].feed(VIEWPORT, now[0])
        peers[1].feed(VIEWPORT, now[0])

    def flush() -> None:
        batch = doc.flush(now[0])
        assert batch.event_count >= 22

    benchmark.pedantic(flush, setup=setup, rounds=2000, iterations=1, warmup_rounds=50)


@pytest.mark.parametrize("mod", TWINS)
def test_flush_1000_member_batch(benchmark: Any, mod: ModuleType) -> None:
    doc, peers = room(mod, 1000)
    now = [NOW]

    def setup() -> None:
        now[0] += 50
        for i, peer in enumerate(peers):
            peer.feed(CURSORS[i], now[0])

    def flush() -> None:
        assert doc.flush(now[0]).event_count == 1000

    benchmark.pedantic(flush, setup=setup, rounds=200, iterations=1, warmup_rounds=5)


@pytest.mark.parametrize("mod", TWINS)
def test_tick_50_docs_x_20_members(benchmark: Any, mod: ModuleType) -> None:
    """One batch interval of the reference load: 1000 cursor frames in, 50 batches out."""
    rooms = [room(mod, 20, f"doc-{d}") for d in range(50)]
    now = [NOW]

    def tick() -> None:
        now[0] += 50
        t = now[0]
        for _, peers in rooms:
            for i, peer in enumerate(peers):
                peer.feed(CURSORS[i], t)
        for doc, _ in rooms:
            doc.advance(t)
            doc.flush(t)

    benchmark(tick)
