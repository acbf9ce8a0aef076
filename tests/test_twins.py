"""The compiled twin (relay._fast) against the pure one (relay.core.pure): same answers, same
bytes. Golden vectors, a seeded differential run of thousands of operations, and property
tests on the encoder and the frame decoder."""

from __future__ import annotations

import os
import random
import struct
from types import ModuleType
from typing import Any

import msgpack
import pytest
from helpers import TWIN_RULES, Twin, flush_view, random_frame
from hypothesis import given, settings
from hypothesis import strategies as st

import relay
from relay.core import protocol as p
from relay.core import pure
from relay.core.model import UserInfo

NO_EXT = os.environ.get("RELAY_NO_EXTENSIONS") == "1"
try:
    from relay import _fast  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - only when the build was skipped
    _fast = None

needs_fast = pytest.mark.skipif(_fast is None, reason="relay._fast not built (RELAY_NO_EXTENSIONS)")
RULES = TWIN_RULES
U32 = 2**32 - 1


def test_compiled_twin_loaded_unless_disabled() -> None:
    """A silent fallback to the pure twin is a performance bug nobody sees: fail loudly."""
    if NO_EXT:
        assert relay.implementation() == "pure"
    else:
        assert _fast is not None, "relay._fast did not build or import"
        assert relay.implementation() == "compiled"


def test_twins_export_the_same_names() -> None:
    if _fast is None:
        pytest.skip("relay._fast not built")
    assert set(pure.__all__) == set(_fast.__all__)
    assert pure.FALLBACK == _fast.FALLBACK and pure.RATE_LIMITED == _fast.RATE_LIMITED
    assert pure.NEVER == _fast.NEVER


# ---------------------------------------------------------------- encoder

msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=300),
    lambda children: (
        st.lists(children, max_size=20) | st.dictionaries(st.text(max_size=5), children, max_size=5)
    ),
    max_leaves=40,
)


@needs_fast
@given(msgpack_values)
@settings(max_examples=400, deadline=None)
def test_writer_equals_msgpack(value: Any) -> None:
    assert _fast.encode(value) == msgpack.packb(value)


@needs_fast
@pytest.mark.parametrize("n", [0, 15, 16, 31, 32, 255, 256, 65535, 65536])
def test_writer_boundaries(n: int) -> None:
    for value in ("x" * n, list(range(n % 70000)), n, -n, n * 65537, U32, U32 + 1):
        assert _fast.encode(value) == msgpack.packb(value)


# ---------------------------------------------------------------- documents in lockstep


@needs_fast
@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_differential_random_operations(seed: int) -> None:
    """Thousands of random operations on both twins: every output byte and answer equal."""
    rng = random.Random(seed)
    a, b = Twin(pure), Twin(_fast)
    now = 1_700_000_000_000
    handles: dict[int, list[int]] = {}
    users = [UserInfo(f"user-{i}", f"Name {i}", "ws") for i in range(12)]
    for _ in range(3000):
        op = rng.random()
        if op < 0.08 or not handles:
            peer_id = rng.randrange(8)
            h = rng.randrange(4)
            if h in handles.get(peer_id, []):
                continue
            user = rng.choice(users)
            assert a.join(peer_id, h, user, now) == b.join(peer_id, h, user, now)
            handles.setdefault(peer_id, []).append(h)
        elif op < 0.12:
            peer_id = rng.choice(list(handles))
            h = rng.choice(handles[peer_id])
            reason = rng.randrange(6)
            assert a.leave(peer_id, h, now, reason) == b.leave(peer_id, h, now, reason)
            handles[peer_id].remove(h)
            if not handles[peer_id]:
                del handles[peer_id]
        elif op < 0.15:  # a connection ends, or comes back (v1.1)
            peer_id = rng.choice(list(handles))
            h = rng.choice(handles[peer_id])
            step = "disconnect" if rng.random() < 0.5 else "reconnect"
            getattr(a, step)(peer_id, h, now)
            getattr(b, step)(peer_id, h, now)
        elif op < 0.18:  # STATUS (v1.1): coalesced, the latest text per member per batch
            peer_id = rng.choice(list(handles))
            h = rng.choice(handles[peer_id])
            text = rng.choice([None, "", "presenting", "thinking", "ë" * 64])
            a.set_status(peer_id, h, text, now)
            b.set_status(peer_id, h, text, now)
        elif op < 0.80:
            peer_id = rng.choice(list(handles))
            data = random_frame(rng, handles[peer_id])
            assert a.feed(peer_id, data, now) == b.feed(peer_id, data, now), data.hex()
        elif op < 0.90:
            now += rng.choice([1, 10, 49, 50, 500, 2000, 3001, 9000])
            a.doc.advance(now)
            b.doc.advance(now)
        else:
            assert (a.dirty == {a.doc}) == (b.dirty == {b.doc})
            assert flush_view(a.doc.flush(now)) == flush_view(b.doc.flush(now))
            a.dirty.clear()
            b.dirty.clear()
        assert a.state() == b.state()


@needs_fast
@given(st.binary(max_size=40))
@settings(max_examples=1500, deadline=None)
def test_feed_any_bytes_same_answer(data: bytes) -> None:
    a, b = Twin(pure), Twin(_fast)
    for t in (a, b):
        t.join(0, 1, UserInfo("u", "U"), 1000)
        t.join(1, 0, UserInfo("v", "V"), 1000)
    assert a.feed(0, data, 1001) == b.feed(0, data, 1001)
    assert a.state() == b.state()
    assert flush_view(a.doc.flush(1002)) == flush_view(b.doc.flush(1002))


@needs_fast
@given(
    st.lists(
        st.one_of(
            st.integers(-5, 2**33), st.booleans(), st.none(), st.floats(), st.text(max_size=3)
        ),
        max_size=10,
    )
)
@settings(max_examples=1500, deadline=None)
def test_feed_near_valid_arrays_same_answer(tail: list[Any]) -> None:
    for t_code in (4, 5, 6, 7):
        data = msgpack.packb([t_code, 1, *tail])
        a, b = Twin(pure), Twin(_fast)
        for t in (a, b):
            t.join(0, 1, UserInfo("u", "U"), 1000)
        assert a.feed(0, data, 1001) == b.feed(0, data, 1001), data.hex()
        assert a.state() == b.state()
        assert flush_view(a.doc.flush(1002)) == flush_view(b.doc.flush(1002))


# ---------------------------------------------------------------- golden batches


def golden_doc(mod: ModuleType) -> list[bytes]:
    """A fixed script whose flushed frames are pinned below for both twins."""
    t = Twin(mod)
    out = []
    now = 1_800_000_000_000
    ann = t.join(0, 1, UserInfo("ann", "Ann", "ws", "https://a.example/ann.png"), now)
    bob = t.join(1, 1, UserInfo("bob", "Bob"), now)
    out.append(t.doc.flush(now).frame)  # two joined events
    t.feed(0, msgpack.packb([4, 1, 3, 4, 40]), now + 1)
    t.feed(1, msgpack.packb([4, 1, U32, U32, U32, 1, 2, 3, True]), now + 1)
    out.append(t.doc.flush(now + 50).frame)  # cursor without and with selection at 2^32-1
    t.feed(0, msgpack.packb([5, 1]), now + 60)
    t.feed(0, msgpack.packb([6, 1, 10, 60, 12.5]), now + 60)
    t.feed(1, msgpack.packb([7, 1, False]), now + 60)
    t.feed(1, msgpack.packb([4, 1]), now + 61)
    t.set_status(0, 1, "presenting", now + 62)
    t.set_status(0, 1, "thinking", now + 63)  # coalesced: only the latest goes out
    out.append(t.doc.flush(now + 100).frame)  # typing, activity, viewport, focus, clear, status
    t.leave(1, 1, now + 120)
    out.append(t.doc.flush(now + 150).frame)  # left
    assert ann == 1 and bob == 2
    return out


GOLDEN = [  # pinned after checking each decoded value by hand (see the asserts below)
    "9422a5646f632d31cf000001a3185c50009292029f01a3616e6ea3416e6eb968747470733a2f2f612e6578616d"
    "706c652f616e6e2e706e67b168736c2834352c203730252c203530252901c2c3c0c0c0cf000001a3185c5000cf"
    "000001a3185c500000c092029f02a3626f62a3426f62c0b268736c283132302c203730252c203530252901c2c3"
    "c0c0c0cf000001a3185c5000cf000001a3185c500000c0",
    "9422a5646f632d31cf000001a3185c50329393060202950101030428990102ceffffffffceffffffffceffffff"
    "ff010203c3",
    "9422a5646f632d31cf000001a3185c506497930401c3930601009505010a3ccb4029000000000000930702c293"
    "060201920102930801a87468696e6b696e67",
    "9422a5646f632d31cf000001a3185c50969193030200",
]


@needs_fast
def test_golden_batches_equal_between_twins_and_msgpack() -> None:
    frames_pure, frames_fast = golden_doc(pure), golden_doc(_fast)
    assert frames_pure == frames_fast
    assert [f.hex() for f in frames_pure] == GOLDEN
    decoded = [msgpack.unpackb(f) for f in frames_pure]
    for frame, value in zip(frames_pure, decoded, strict=True):
        assert msgpack.packb(value) == frame  # canonical msgpack, byte for byte
    assert [e[0] for e in decoded[0][3]] == [2, 2]
    assert [e[1][13:] for e in decoded[0][3]] == [[0, None], [0, None]]  # kind, status (v1.1)
    # bob's selection makes him Selecting (activity 2); cursors follow the queued events
    assert decoded[1][3] == [[6, 2, 2], [1, 1, 3, 4, 40], [1, 2, U32, U32, U32, 1, 2, 3, True]]
    # typing -> Editing; viewport; blur; clearing the cursor drops the selection -> Viewing
    assert decoded[2][3] == [
        [4, 1, True],
        [6, 1, 0],
        [5, 1, 10, 60, 12.5],
        [7, 2, False],
        [6, 2, 1],
        [1, 2],
        [8, 1, "thinking"],
    ]
    assert decoded[3][3] == [[3, 2, 0]]  # left, reason LEFT (v1.1)
    assert frames_pure[2].count(b"\xcb" + struct.pack(">d", 12.5)) == 1


@pytest.mark.parametrize("count", [0, 1, 15, 16, 1000, 65535, 65536])
def test_batch_prefix_matches_msgpack(count: int) -> None:
    events = [[3, i] for i in range(count)]
    body = b"".join(msgpack.packb(e) for e in events)
    assert p.batch_prefix("d", 1_800_000_000_000, count) + body == msgpack.packb(
        [34, "d", 1_800_000_000_000, events]
    )


@needs_fast
def test_thousand_member_batch_crosses_array16() -> None:
    """1000 moved cursors: the events array needs array16 (dc 03 e8); both twins agree."""
    frames = []
    for mod in (pure, _fast):
        t = Twin(mod, "big")
        for i in range(1000):
            t.join(i, 0, UserInfo(f"u{i}", f"U{i}"), 1000)
        t.doc.flush(1000)
        for i in range(1000):
            t.feed(i, msgpack.packb([4, 0, i, i * 3, U32 - i]), 1001)
        frames.append(t.doc.flush(1050).frame)
    assert frames[0] == frames[1]
    value = msgpack.unpackb(frames[0])
    assert len(value[3]) == 1000 and b"\xdc\x03\xe8" in frames[0][:20]
    assert msgpack.packb(value) == frames[0]
