"""`Peer.feed_wire` and relay/core/wire.py: WebSocket frames taken straight from the byte
stream. Both twins must give the same answer as framing + `Peer.feed` one frame at a time,
for any split of the stream, any hostile frame, and at every limit's edge."""

from __future__ import annotations

import itertools
import random
from types import ModuleType
from typing import Any

import msgpack
import pytest
from helpers import Twin, flush_view, random_frame, ws_frame
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.speedups import apply_mask

from relay import twin
from relay.core import pure, wire
from relay.core.model import UserInfo

try:
    from relay import _fast  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - only when the build was skipped
    _fast = None

TWINS = [
    pytest.param(pure, id="pure"),
    pytest.param(
        _fast,
        id="fast",
        marks=pytest.mark.skipif(
            _fast is None, reason="relay._fast not built (RELAY_NO_EXTENSIONS)"
        ),
    ),
]
LIMIT = 4096


def joined_twin(mod: ModuleType) -> Twin:
    t = Twin(mod)
    t.join(0, 1, UserInfo("u", "U"), 1000)
    t.join(1, 0, UserInfo("v", "V"), 1000)
    return t


def drain(peer: Any, stream: bytes, now: int, cuts: list[int]) -> list[Any]:
    """Feed `stream` cut into reads at `cuts`, the way the shell does: carry partial frames,
    stop at the first frame that is not ours. Returns what the shell would see."""
    seen: list[Any] = []
    pending = b""
    edges = [0, *sorted(cuts), len(stream)]
    for a, b in itertools.pairwise(edges):
        buf = pending + stream[a:b]
        i = 0
        while True:
            i, kind, payload = peer.feed_wire(buf, i, LIMIT, now)
            if kind == wire.NEED_MORE:
                break
            seen.append((kind, payload))
            if kind == wire.NOT_OURS:
                return seen
        pending = buf[i:]
    seen.append(("pending", pending))
    return seen


# ---------------------------------------------------------------- wire.py


def test_frame_header_forms() -> None:
    assert wire.frame_header(b"\x82", 0) is None
    assert wire.frame_header(b"\x82\x85", 0) == (2, 5)
    assert wire.frame_header(b"\x82\xfe\x01", 0) is None
    assert wire.frame_header(b"\x82\xfe\x01\x00", 0) == (4, 256)
    assert wire.frame_header(b"\x82\xff" + bytes(7), 0) is None
    assert wire.frame_header(b"\x82\xff" + (2**40).to_bytes(8, "big"), 0) == (10, 2**40)
    assert wire.frame_header(b"xx\x82\x85", 2) == (2, 5)


@given(st.binary(max_size=300), st.binary(min_size=4, max_size=4))
@settings(max_examples=300, deadline=None)
def test_unmask_equals_websockets(data: bytes, key: bytes) -> None:
    assert wire.unmask(data, key) == apply_mask(data, key)


def test_next_frame_outcomes() -> None:
    payload = msgpack.packb([4, 1, 2, 3, 4])
    frame = ws_frame(payload)
    assert wire.next_frame(frame, 0, LIMIT) == (len(frame), wire.FRAME, payload)
    assert wire.next_frame(frame[:-1], 0, LIMIT) == (0, wire.NEED_MORE, None)
    assert wire.next_frame(frame, 0, len(payload) - 1) == (0, wire.NOT_OURS, None)
    assert wire.next_frame(ws_frame(payload, first=0x81), 0, LIMIT)[1] == wire.NOT_OURS


# ---------------------------------------------------------------- both twins


@pytest.mark.parametrize("mod", TWINS)
def test_run_of_hot_frames_is_applied_in_one_call(mod: ModuleType) -> None:
    t = joined_twin(mod)
    peer = t.peers[0]
    stream = b"".join(ws_frame(msgpack.packb([4, 1, 1, i, i])) for i in range(30))
    stream += ws_frame(msgpack.packb([5, 1, True]))
    assert peer.feed_wire(stream, 0, LIMIT, 1001) == (len(stream), wire.NEED_MORE, None)
    assert peer.counts[4] == 30 and peer.counts[5] == 1 and peer.counts.total == 31
    sid = peer.handles[1].sid
    events = msgpack.unpackb(t.doc.flush(1002).frame)[3]
    assert [1, sid, 1, 29, 29] in events  # the latest cursor of the run (coalesced)
    assert [4, sid, True] in events


@pytest.mark.parametrize("mod", TWINS)
def test_stops_at_unapplied_and_not_ours(mod: ModuleType) -> None:
    peer = joined_twin(mod).peers[0]
    ping = msgpack.packb([8, 7])
    a = ws_frame(msgpack.packb([4, 1, 1, 1, 1]))
    b = ws_frame(ping)
    c = ws_frame(b"hello", first=0x81)
    stream = a + b + c
    assert peer.feed_wire(stream, 0, LIMIT, 1001) == (len(a + b), pure.FALLBACK, ping)
    assert peer.feed_wire(stream, len(a + b), LIMIT, 1001) == (len(a + b), wire.NOT_OURS, None)
    with pytest.raises(IndexError):
        peer.feed_wire(stream, len(stream) + 1, LIMIT, 1001)
    with pytest.raises(IndexError):
        peer.feed_wire(stream, -1, LIMIT, 1001)


@pytest.mark.parametrize("mod", TWINS)
@pytest.mark.parametrize(
    "first, mask",
    [
        (0x81, True),
        (0x02, True),
        (0x00, True),
        (0x88, True),
        (0x89, True),
        (0xC2, True),
        (0x92, True),
        (0xA2, True),
        (0x82, False),
    ],
)
def test_frames_not_ours(mod: ModuleType, first: int, mask: bool) -> None:
    """Text, fragments, continuations, close, ping, RSV bits, unmasked: all left alone."""
    peer = joined_twin(mod).peers[0]
    frame = ws_frame(msgpack.packb([4, 1, 1, 1, 1]), first=first, mask=mask)
    assert peer.feed_wire(frame, 0, LIMIT, 1001) == (0, wire.NOT_OURS, None)
    assert peer.counts.total == 0


@pytest.mark.parametrize("mod", TWINS)
@pytest.mark.parametrize("ext", [None, 126, 127])
def test_max_payload_edge(mod: ModuleType, ext: int | None) -> None:
    """A payload of exactly max_payload is taken; one byte more is not (websockets: 1009)."""
    peer = joined_twin(mod).peers[0]
    payload = msgpack.packb([8, 1]) + b"x" * 40  # a cold frame with trailing bytes
    frame = ws_frame(payload, ext=ext)
    assert peer.feed_wire(frame, 0, len(payload), 1001) == (len(frame), pure.FALLBACK, payload)
    assert peer.feed_wire(frame, 0, len(payload) - 1, 1001) == (0, wire.NOT_OURS, None)


@pytest.mark.parametrize("mod", TWINS)
@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 128, 129, 300, 70000])
def test_payload_sizes_round_trip(mod: ModuleType, size: int) -> None:
    """Across the compiled twin's stack-buffer edge (128) and every length form."""
    peer = joined_twin(mod).peers[0]
    payload = bytes(random.Random(size).randrange(256) for _ in range(size))
    frame = ws_frame(payload)
    end, kind, got = peer.feed_wire(frame, 0, 100_000, 1001)
    assert end == len(frame) and kind == pure.FALLBACK and got == payload


@pytest.mark.parametrize("mod", TWINS)
def test_rate_limit_in_the_middle_of_a_run(mod: ModuleType) -> None:
    t = Twin(mod)
    t.peers[0] = mod.Peer(mod.TokenBucket(1, 3, 5000, 1000))
    sid = t.doc.join(UserInfo("u", "U"), 1000).sid
    t.peers[0].handles[1] = mod.Membership(t.doc, sid)
    frames = [ws_frame(msgpack.packb([4, 1, 1, i, i])) for i in range(5)]
    stream = b"".join(frames)
    edge = sum(map(len, frames[:4]))
    r = t.peers[0].feed_wire(stream, 0, LIMIT, 1000)
    assert r[:2] == (edge, pure.RATE_LIMITED)
    assert r[2] == msgpack.packb([4, 1, 1, 3, 3])
    assert t.peers[0].counts.total == 3


@pytest.mark.parametrize("mod", TWINS)
def test_shared_counts(mod: ModuleType) -> None:
    counts = mod.HotCounts()
    a = mod.Peer(mod.TokenBucket(100, 100, 5000, 0), counts)
    b = mod.Peer(mod.TokenBucket(100, 100, 5000, 0), counts)
    assert a.counts is counts and b.counts is counts
    counts.add(7)
    assert counts[7] == 1 and counts.total == 1
    for bad in (-1, 8):
        with pytest.raises(IndexError):
            counts[bad]
        with pytest.raises(IndexError):
            counts.add(bad)


def test_selected_twin_exports_the_wire_outcomes() -> None:
    assert (twin.NEED_MORE, twin.NOT_OURS) == (wire.NEED_MORE, wire.NOT_OURS)
    assert wire.NEED_MORE not in (pure.FALLBACK, pure.RATE_LIMITED)
    assert wire.NOT_OURS not in (pure.FALLBACK, pure.RATE_LIMITED)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("mod", TWINS)
def test_any_split_same_as_frame_by_frame(mod: ModuleType, seed: int) -> None:
    """A stream of random frames (valid, hostile, cold) cut into random reads gives what
    feeding each unmasked payload to `Peer.feed` gives: same answers, same document."""
    rng = random.Random(seed)
    payloads = [random_frame(rng, [0, 1]) for _ in range(400)]
    stream = b"".join(ws_frame(x) for x in payloads)
    cuts = sorted(rng.sample(range(1, len(stream)), 60))
    by_wire, by_frame = joined_twin(mod), joined_twin(mod)
    seen = drain(by_wire.peers[0], stream, 1001, cuts)
    expected = []
    for x in payloads:
        r = by_frame.peers[0].feed(x, 1001)
        if r <= 0:
            expected.append((r, x))
    assert seen == [*expected, ("pending", b"")]
    assert by_wire.state() == by_frame.state()
    assert by_wire.peers[0].counts.total == by_frame.peers[0].counts.total
    assert flush_view(by_wire.doc.flush(1002)) == flush_view(by_frame.doc.flush(1002))


@pytest.mark.skipif(_fast is None, reason="relay._fast not built (RELAY_NO_EXTENSIONS)")
@given(st.binary(max_size=200), st.integers(0, 200), st.integers(0, 300))
@settings(max_examples=1500, deadline=None)
def test_any_bytes_same_answer_from_both_twins(data: bytes, start: int, limit: int) -> None:
    start = min(start, len(data))
    a, b = joined_twin(pure), joined_twin(_fast)
    assert a.peers[0].feed_wire(data, start, limit, 1001) == b.peers[0].feed_wire(
        data, start, limit, 1001
    )
    assert a.state() == b.state()
    assert a.peers[0].counts.total == b.peers[0].counts.total


@pytest.mark.skipif(_fast is None, reason="relay._fast not built (RELAY_NO_EXTENSIONS)")
@given(
    st.lists(st.tuples(st.integers(0, 15), st.integers(0, 10**6)), max_size=30),
    st.binary(min_size=4, max_size=4),
)
@settings(max_examples=500, deadline=None)
def test_framed_streams_same_answer_from_both_twins(
    kinds: list[tuple[int, int]], key: bytes
) -> None:
    """Well-framed streams of near-valid payloads (where hot frames actually apply)."""
    stream = b""
    for k, seed in kinds:
        stream += ws_frame(random_frame(random.Random(seed * 16 + k), [0, 1]), key=key)
    a, b = joined_twin(pure), joined_twin(_fast)
    assert drain(a.peers[0], stream, 1001, []) == drain(b.peers[0], stream, 1001, [])
    assert a.state() == b.state()
    assert flush_view(a.doc.flush(1002)) == flush_view(b.doc.flush(1002))
