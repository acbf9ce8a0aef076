"""The golden vectors of wire protocol v1 (tests/vectors/protocol_v1.json) against our codec.

The same JSON file is loaded by every SDK's tests, so a byte that changes here changes for
everyone: regenerate it with tests/vectors/make_vectors.py, never by hand.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay.core import protocol as p

HERE = Path(__file__).resolve().parent
VECTORS_PATH = HERE / "vectors" / "protocol_v1.json"
GENERATOR_PATH = HERE / "vectors" / "make_vectors.py"
DOC_PATH = HERE.parent / "docs" / "protocol.md"

DATA = json.loads(VECTORS_PATH.read_text(encoding="utf-8"))
VECTORS: list[dict[str, Any]] = DATA["vectors"]
CLIENT_OK = [v for v in VECTORS if v["direction"] == "client" and "value" in v]
CLIENT_BAD = [v for v in VECTORS if v["direction"] == "client" and "error" in v]
SERVER = [v for v in VECTORS if v["direction"] == "server"]
CLIENT_TYPES = (
    p.HELLO,
    p.JOIN,
    p.LEAVE,
    p.CURSOR,
    p.TYPING,
    p.VIEWPORT,
    p.FOCUS,
    p.PING,
    p.STATUS,
)
SERVER_TYPES = (p.WELCOME, p.JOINED, p.BATCH, p.ERROR, p.PONG)
EVENT_CODES = (
    p.EV_CURSOR,
    p.EV_JOINED,
    p.EV_LEFT,
    p.EV_TYPING,
    p.EV_VIEWPORT,
    p.EV_ACTIVITY,
    p.EV_FOCUS,
    p.EV_STATUS,
)


def ids(vectors: list[dict[str, Any]]) -> list[str]:
    return [v["name"] for v in vectors]


def same(a: Any, b: Any) -> bool:
    """Equal AND of the same msgpack kind: `==` alone says 1 == 1.0 == True."""
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


def decode(data: bytes) -> list[Any]:
    """What the relay does with a client frame, minus the handle check (ERROR 3)."""
    frame = p.decode_client_frame(data)
    p.check_ranges(frame)
    return frame


def encode(value: list[Any]) -> bytes:
    """The encoder the relay calls for a server frame of this type."""
    t = value[0]
    if t == p.WELCOME:
        assert value[1] == p.VERSION
        return p.encode_welcome(value[2], value[3], value[4], value[5])
    if t == p.JOINED:
        return p.encode_joined(value[1], value[2], value[3], value[4], value[5])
    if t == p.BATCH:
        return p.encode_batch(value[1], value[2], value[3])
    if t == p.ERROR:
        return p.encode_error(value[1], value[2], value[3])
    if t == p.PONG:
        return p.encode_pong(value[1], value[2])
    raise AssertionError(f"not a server frame type: {t}")


def tuples(v: Any) -> Any:
    """The value as the core builds it (tuples, not lists)."""
    return tuple(tuples(x) for x in v) if isinstance(v, list) else v


# ------------------------------------------------------------ the file itself


def test_file_format() -> None:
    assert DATA["version"] == 1
    names = ids(VECTORS)
    assert len(names) == len(set(names)), "vector names are unique"
    for v in VECTORS:
        assert v["direction"] in ("client", "server"), v["name"]
        assert re.fullmatch(r"(?:[0-9a-f]{2})*", v["hex"]), v["name"]
        keys = set(v) - {"name", "direction", "hex"}
        assert keys in ({"value"}, {"error"}), v["name"]
        if "error" in v:
            assert v["direction"] == "client", v["name"]
            assert v["error"] in (p.BAD_FRAME, p.UNKNOWN_TYPE, p.INVALID_VALUE), v["name"]


def test_file_is_what_the_generator_writes() -> None:
    spec = importlib.util.spec_from_file_location("make_vectors", GENERATOR_PATH)
    assert spec is not None and spec.loader is not None
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    assert VECTORS_PATH.read_text(encoding="utf-8") == gen.render(gen.build()), (
        "protocol_v1.json is stale: run python tests/vectors/make_vectors.py"
    )


# ------------------------------------------------------------ client frames


@pytest.mark.parametrize("vector", CLIENT_OK, ids=ids(CLIENT_OK))
def test_client_frame_decodes(vector: dict[str, Any]) -> None:
    frame = decode(bytes.fromhex(vector["hex"]))
    assert type(frame) is list
    assert same(frame, vector["value"]), (frame, vector["value"])


@pytest.mark.parametrize("vector", CLIENT_BAD, ids=ids(CLIENT_BAD))
def test_client_frame_is_rejected(vector: dict[str, Any]) -> None:
    with pytest.raises(p.ProtocolError) as info:
        decode(bytes.fromhex(vector["hex"]))
    assert info.value.code == vector["error"], info.value.message


@pytest.mark.parametrize("vector", CLIENT_BAD, ids=ids(CLIENT_BAD))
def test_check_order(vector: dict[str, Any]) -> None:
    """Shape errors (1/2) come from the decoder; range errors (7) only after it, once the
    handle has been checked, so a frame with both kinds of fault answers ERROR 1 or 2."""
    data = bytes.fromhex(vector["hex"])
    if vector["error"] == p.INVALID_VALUE:
        frame = p.decode_client_frame(data)  # the shape is fine: the handle check runs next
        with pytest.raises(p.ProtocolError):
            p.check_ranges(frame)
    else:
        with pytest.raises(p.ProtocolError):
            p.decode_client_frame(data)


def test_range_error_carries_the_handle() -> None:
    (v,) = [v for v in CLIENT_BAD if v["name"] == "viewport_top_after_bottom"]
    frame = p.decode_client_frame(bytes.fromhex(v["hex"]))
    with pytest.raises(p.ProtocolError) as info:
        p.check_ranges(frame)
    assert info.value.handle == frame[1]


def test_canonical_client_vectors_are_packb() -> None:
    """Where a vector is not about a non-canonical encoding, its bytes are plain packb:
    what a JS or Python SDK produces for that value."""
    noncanonical = {
        "hello_info_map16",
        "join_doc_id_str8",
        "cursor_array16_header",
        "cursor_uint32_small_ints",
        "cursor_uint64_small_ints",
        "cursor_int8_positive",
        "viewport_float32_pct",
        "status_str8",
    }
    for v in CLIENT_OK:
        packed = msgpack.packb(v["value"], use_bin_type=True).hex()
        assert (packed == v["hex"]) is (v["name"] not in noncanonical), v["name"]


# ------------------------------------------------------------ server frames


@pytest.mark.parametrize("vector", SERVER, ids=ids(SERVER))
def test_server_frame_packs(vector: dict[str, Any]) -> None:
    expected = bytes.fromhex(vector["hex"])
    assert p.pack(vector["value"]) == expected
    assert p.pack(tuples(vector["value"])) == expected  # the core hands over tuples
    assert encode(vector["value"]) == expected


@pytest.mark.parametrize("vector", SERVER, ids=ids(SERVER))
def test_server_frame_decodes(vector: dict[str, Any]) -> None:
    """What an SDK reads back (msgpack gives lists, str, float for float64)."""
    value = msgpack.unpackb(bytes.fromhex(vector["hex"]), raw=False)
    assert same(value, vector["value"])


def _viewports(value: list[Any]) -> list[list[Any]]:
    """Every viewport triple [top, bottom, scroll_pct] inside a server frame."""
    out: list[list[Any]] = []
    members: list[list[Any]] = []
    if value[0] == p.JOINED:
        members = value[4]
    elif value[0] == p.BATCH:
        for ev in value[3]:
            if ev[0] == p.EV_VIEWPORT:
                out.append(ev[2:])
            elif ev[0] == p.EV_JOINED:
                members.append(ev[1])
    out += [m[10] for m in members if m[10] is not None]
    return out


def test_server_scroll_pct_is_always_float64() -> None:
    seen = 0
    for v in SERVER:
        for top, bottom, pct in _viewports(v["value"]):
            seen += 1
            assert type(top) is int and type(bottom) is int, v["name"]
            assert type(pct) is float, f"{v['name']}: scroll_pct must be float64"
            assert msgpack.packb(pct) in bytes.fromhex(v["hex"]), v["name"]
            assert msgpack.packb(pct)[0] == 0xCB
    assert seen >= 5


def test_server_strings_are_str_never_bin() -> None:
    def walk(x: Any) -> None:
        assert not isinstance(x, bytes | bytearray)
        if isinstance(x, list):
            for y in x:
                walk(y)
        elif isinstance(x, dict):
            for k, y in x.items():
                walk(k)
                walk(y)

    # raw=False turns the str family into str and leaves bin as bytes: no bytes may appear
    for v in SERVER:
        walk(msgpack.unpackb(bytes.fromhex(v["hex"]), raw=False))


def test_member_layout() -> None:
    for v in SERVER:
        value = v["value"]
        members = list(value[4]) if value[0] == p.JOINED else []
        if value[0] == p.BATCH:
            members += [ev[1] for ev in value[3] if ev[0] == p.EV_JOINED]
        for m in members:
            assert len(m) == 15, v["name"]  # v1.1: 13, then kind and status
            sid, user_id, name, avatar, color, activity, typing, focused = m[:8]
            cursor, selection, viewport, connected_at, last_active, kind, status = m[8:]
            assert kind in (p.KIND_PERSON, p.KIND_AGENT)
            assert status is None or (type(status) is str and len(status) <= 64)
            assert type(sid) is int and type(user_id) is str and type(name) is str
            assert avatar is None or type(avatar) is str
            assert re.fullmatch(r"hsl\(\d{1,3}, 70%, 50%\)", color)
            assert activity in range(5)
            assert type(typing) is bool and type(focused) is bool
            assert cursor is None or (len(cursor) == 3 and all(type(c) is int for c in cursor))
            assert selection is None or (len(selection) == 4 and type(selection[3]) is bool)
            assert viewport is None or len(viewport) == 3
            assert type(connected_at) is int and type(last_active) is int


# ------------------------------------------------------------ coverage


def test_vectors_cover_every_type() -> None:
    client = {v["value"][0] for v in CLIENT_OK}
    server = {v["value"][0] for v in SERVER}
    events = {ev[0] for v in SERVER if v["value"][0] == p.BATCH for ev in v["value"][3]}
    assert client == set(CLIENT_TYPES)
    assert server == set(SERVER_TYPES)
    assert events == set(EVENT_CODES)
    assert {v["error"] for v in CLIENT_BAD} == {p.BAD_FRAME, p.UNKNOWN_TYPE, p.INVALID_VALUE}
    # every client type also has at least one frame the relay must reject
    rejected = {
        msgpack.unpackb(bytes.fromhex(v["hex"]))[0]
        for v in CLIENT_BAD
        if v["error"] != p.UNKNOWN_TYPE and _is_array_with_int_head(v["hex"])
    }
    assert set(CLIENT_TYPES) <= rejected


def _is_array_with_int_head(hex_: str) -> bool:
    try:
        x = msgpack.unpackb(bytes.fromhex(hex_), raw=False)
    except Exception:
        return False
    return type(x) is list and bool(x) and type(x[0]) is int


def test_vectors_cover_every_shape() -> None:
    shapes = {(v["value"][0], len(v["value"])) for v in CLIENT_OK}
    expected = {(1, 4), (2, 3), (3, 2), (4, 2), (4, 5), (4, 9), (5, 2), (5, 3), (6, 5), (7, 3)}
    assert expected | {(8, 2)} <= shapes
    cursor_events = {
        len(ev) for v in SERVER if v["value"][0] == p.BATCH for ev in v["value"][3] if ev[0] == 1
    }
    assert cursor_events == {2, 5, 9}


# ------------------------------------------------------------ docs/protocol.md


def _doc_hex() -> list[tuple[str, str]]:
    """(vector name, hex) for every example row and hex block in docs/protocol.md."""
    text = DOC_PATH.read_text(encoding="utf-8")
    found = [
        (m[1], m[2])
        for m in re.finditer(r"^\| `([a-z0-9_]+)` \| `([0-9a-f]+)` \|", text, flags=re.M)
    ]
    found += re.findall(
        r'\{"name": "([a-z0-9_]+)", "direction": "[a-z]+", "hex": "([0-9a-f]*)"', text
    )
    for block in re.findall(r"^```hex\n(.*?)^```", text, flags=re.M | re.S):
        lines = block.splitlines()
        name = re.fullmatch(r"# vector: ([a-z0-9_]+)(?: \(\d+ bytes\))?", lines[0])
        assert name, f"a hex block in docs/protocol.md must start with '# vector: NAME': {block}"
        hex_ = "".join(line.split("#", 1)[0].replace(" ", "") for line in lines[1:])
        found.append((name[1], hex_))
    return found


@pytest.mark.skipif(not DOC_PATH.exists(), reason="docs/protocol.md not written yet")
def test_doc_examples_are_the_vectors() -> None:
    by_name = {v["name"]: v["hex"] for v in VECTORS}
    found = _doc_hex()
    assert len(found) >= len(CLIENT_TYPES) + len(SERVER_TYPES)
    for name, hex_ in found:
        assert name in by_name, f"docs/protocol.md shows an unknown vector {name}"
        assert hex_ == by_name[name], f"docs/protocol.md shows stale bytes for {name}"


# ------------------------------------------------------------ properties


@settings(max_examples=500, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_crash(data: bytes) -> None:
    try:
        frame = decode(data)
    except p.ProtocolError as exc:
        assert exc.code in (p.BAD_FRAME, p.UNKNOWN_TYPE, p.INVALID_VALUE)
    else:
        assert type(frame) is list


scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.floats(width=32)
    | st.text(max_size=12)
    | st.binary(max_size=8)
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=12,
)


@settings(max_examples=1000, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(st.sampled_from(CLIENT_TYPES), st.integers(-2, 40)),
    st.lists(values, max_size=10),
)
def test_frames_of_known_types_never_crash(t: int, rest: list[Any]) -> None:
    """Arbitrary bytes rarely reach the shape and range checks: feed them array frames."""
    data = msgpack.packb([t, *rest], use_bin_type=True)
    try:
        frame = decode(data)
    except p.ProtocolError as exc:
        assert exc.code in (p.BAD_FRAME, p.UNKNOWN_TYPE, p.INVALID_VALUE)
        if exc.code == p.UNKNOWN_TYPE:
            assert t not in CLIENT_TYPES
    else:
        assert t in CLIENT_TYPES
        assert same(frame, msgpack.unpackb(data, raw=False))
