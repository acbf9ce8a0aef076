"""Generate tests/vectors/protocol_v1.json, the golden vectors of wire protocol v1.

    python tests/vectors/make_vectors.py            # rewrite protocol_v1.json
    python tests/vectors/make_vectors.py --check    # fail if the committed file is stale
    python tests/vectors/make_vectors.py --markdown NAME...  # rows for docs/protocol.md
                                       # (+NAME: byte-by-byte dump, =NAME: hex block)

Every vector is {"name", "direction", "hex", "value"} or, for a client frame the relay must
reject, {"name", "direction", "hex", "error"} with the ERROR code (1 BAD_FRAME, 2 UNKNOWN_TYPE,
7 INVALID_VALUE). The expected values and codes below are written from docs/protocol.md, never
read back from the codec: the vectors judge relay/core/protocol.py, they do not copy it.

Client bytes are canonical msgpack (`msgpack.packb`) unless the vector pins a non-canonical
encoding the relay must still accept; those are assembled with the small writers below.
Server bytes come from the relay's encoders and must equal `msgpack.packb` of the value.
The output is deterministic: same code, same file.
"""

from __future__ import annotations

import argparse
import json
import math
import struct
import sys
from pathlib import Path
from typing import Any

import msgpack

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from relay.core import protocol as p  # noqa: E402

OUT = Path(__file__).with_name("protocol_v1.json")
MAX = 2**32 - 1
MS = 1_800_000_000_000  # mid-2027 in Unix ms: needs uint64 (0xcf) on the wire


def packb(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


# ------------------------------------------------------------ non-canonical writers


def arr16(*items: bytes) -> bytes:
    """An array16 header (0xdc) where a fixarray would do."""
    return b"\xdc" + struct.pack(">H", len(items)) + b"".join(items)


def fixarr(*items: bytes) -> bytes:
    return bytes([0x90 | len(items)]) + b"".join(items)


def map16(pairs: dict[str, Any]) -> bytes:
    """A map16 header (0xde) where a fixmap would do."""
    body = b"".join(packb(k) + packb(v) for k, v in pairs.items())
    return b"\xde" + struct.pack(">H", len(pairs)) + body


def u32(n: int) -> bytes:
    return b"\xce" + struct.pack(">I", n)


def u64(n: int) -> bytes:
    return b"\xcf" + struct.pack(">Q", n)


def i8(n: int) -> bytes:
    return b"\xd0" + struct.pack(">b", n)


def f32(x: float) -> bytes:
    return b"\xca" + struct.pack(">f", x)


def str8(s: str) -> bytes:
    """A str8 header (0xd9) where a fixstr would do."""
    raw = s.encode()
    return b"\xd9" + bytes([len(raw)]) + raw


def bin8(raw: bytes) -> bytes:
    return b"\xc4" + bytes([len(raw)]) + raw


# ------------------------------------------------------------ vectors

DOC = "doc-1"
TOKEN = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1LTQyIn0.c2lnbmF0dXJl"


def client_vectors() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    def ok(name: str, value: list[Any], data: bytes | None = None) -> None:
        data = packb(value) if data is None else data
        decoded = msgpack.unpackb(data, raw=False)
        assert _same(decoded, value), (name, decoded, value)
        out.append({"name": name, "direction": "client", "hex": data.hex(), "value": value})

    def bad(name: str, code: int, data: bytes | list[Any]) -> None:
        if isinstance(data, list):
            data = packb(data)
        out.append({"name": name, "direction": "client", "hex": data.hex(), "error": code})

    # HELLO [1, version, token_or_nil, info]
    ok("hello_token", [1, 1, TOKEN, {"sdk": "py/0.1.0"}])
    ok("hello_anonymous", [1, 1, None, {"sdk": "js/0.1.0", "user_id": "u-42", "name": "Zoë"}])
    ok("hello_empty_info", [1, 1, None, {}])
    info = {"sdk": "py/0.1.0"}
    ok("hello_info_map16", [1, 1, TOKEN, info], fixarr(b"\x01", b"\x01", packb(TOKEN), map16(info)))
    bad("hello_arity_3", 1, [1, 1, TOKEN])
    bad("hello_arity_5", 1, [1, 1, TOKEN, {}, 0])
    bad("hello_version_str", 1, [1, "1", TOKEN, {}])
    bad("hello_token_int", 1, [1, 1, 42, {}])
    bad("hello_token_bin", 1, fixarr(b"\x01", b"\x01", bin8(b"tok"), b"\x80"))
    bad("hello_info_array", 1, [1, 1, TOKEN, []])
    bad("hello_info_nil", 1, [1, 1, TOKEN, None])

    # JOIN [2, h, doc_id]
    ok("join", [2, 0, DOC])
    ok("join_max_handle", [2, 65535, DOC])
    ok("join_doc_id_all_punctuation", [2, 1, "ws:acme~spec@v2.1_draft-3"])
    ok("join_doc_id_128_chars", [2, 2, "d" * 128])
    ok("join_doc_id_str8", [2, 3, DOC], fixarr(b"\x02", b"\x03", str8(DOC)))
    bad("join_handle_70000", 7, [2, 70000, DOC])
    bad("join_handle_65536", 7, [2, 65536, DOC])
    bad("join_handle_negative", 7, [2, -1, DOC])
    bad("join_doc_id_empty", 7, [2, 0, ""])
    bad("join_doc_id_129_chars", 7, [2, 0, "d" * 129])
    bad("join_doc_id_slash", 7, [2, 0, "team/doc-1"])
    bad("join_doc_id_space", 7, [2, 0, "doc 1"])
    bad("join_doc_id_non_ascii", 7, [2, 0, "café"])
    bad("join_doc_id_trailing_newline", 7, [2, 0, "doc-1\n"])
    bad("join_doc_id_reserved", 7, [2, 0, "user:bob"])  # aliases Redis keys (relay/core/ids.py)
    bad("join_doc_id_int", 1, [2, 0, 17])
    bad("join_doc_id_bin", 1, fixarr(b"\x02", b"\x00", bin8(DOC.encode())))
    bad("join_handle_float", 1, [2, 0.0, DOC])
    bad("join_handle_bool", 1, [2, False, DOC])
    bad("join_arity_2", 1, [2, 0])
    bad("join_arity_4", 1, [2, 0, DOC, 0])

    # LEAVE [3, h]
    ok("leave", [3, 0])
    ok("leave_max_handle", [3, 65535])
    bad("leave_arity_1", 1, [3])
    bad("leave_arity_3", 1, [3, 0, 0])
    bad("leave_handle_str", 1, [3, "0"])

    # CURSOR [4, h] / [4, h, line, col, off] / [4, h, line, col, off, a_line, a_col, a_off, bw]
    ok("cursor_clear", [4, 0])
    ok("cursor", [4, 0, 10, 4, 120])
    ok("cursor_selection_forward", [4, 0, 12, 8, 190, 10, 4, 120, False])
    ok("cursor_selection_backward", [4, 0, 10, 4, 120, 12, 8, 190, True])
    ok("cursor_max_u32", [4, 1, MAX, MAX, MAX])
    ok("cursor_selection_max_u32", [4, 1, MAX, MAX, MAX, 0, 0, 0, True])
    ok("cursor_zero", [4, 0, 0, 0, 0])
    ok(
        "cursor_array16_header",
        [4, 0, 10, 4, 120],
        arr16(b"\x04", b"\x00", b"\x0a", b"\x04", b"\x78"),
    )
    ok(
        "cursor_uint32_small_ints",
        [4, 0, 10, 4, 120],
        fixarr(u32(4), u32(0), *map(u32, (10, 4, 120))),
    )
    ok(
        "cursor_uint64_small_ints",
        [4, 0, 10, 4, 120],
        fixarr(b"\x04", b"\x00", *map(u64, (10, 4, 120))),
    )
    ok("cursor_int8_positive", [4, 0, 10, 4, 120], fixarr(b"\x04", i8(0), *map(i8, (10, 4, 120))))
    bad("cursor_arity_3", 1, [4, 0, 10])
    bad("cursor_arity_4", 1, [4, 0, 10, 4])
    bad("cursor_arity_6", 1, [4, 0, 10, 4, 120, 12])
    bad("cursor_arity_8", 1, [4, 0, 10, 4, 120, 12, 8, 190])
    bad("cursor_arity_10", 1, [4, 0, 10, 4, 120, 12, 8, 190, True, 0])
    bad("cursor_arity_1", 1, [4])
    bad("cursor_float_line", 1, [4, 0, 10.0, 4, 120])
    bad("cursor_float_anchor", 1, [4, 0, 10, 4, 120, 12.5, 8, 190, True])
    bad("cursor_bool_col", 1, [4, 0, 10, True, 120])
    bad("cursor_nil_off", 1, [4, 0, 10, 4, None])
    bad("cursor_str_handle", 1, [4, "0", 10, 4, 120])
    bad("cursor_nil_handle_clear", 1, [4, None])
    bad("cursor_backward_int", 1, [4, 0, 10, 4, 120, 12, 8, 190, 1])
    bad("cursor_backward_nil", 1, [4, 0, 10, 4, 120, 12, 8, 190, None])
    bad("cursor_negative_line", 7, [4, 0, -1, 4, 120])
    bad("cursor_negative_off", 7, [4, 0, 10, 4, -120])
    bad("cursor_line_2_32", 7, [4, 0, 2**32, 4, 120])
    bad("cursor_off_uint64_max", 7, [4, 0, 10, 4, 2**64 - 1])
    bad("cursor_anchor_negative", 7, [4, 0, 10, 4, 120, -12, 8, 190, False])
    bad("cursor_anchor_2_32", 7, [4, 0, 10, 4, 120, 12, 8, 2**32, False])

    # TYPING [5, h] / [5, h, true] / [5, h, false]
    ok("typing_keystroke", [5, 0])
    ok("typing_true", [5, 0, True])
    ok("typing_false", [5, 0, False])
    bad("typing_int_flag", 1, [5, 0, 1])
    bad("typing_nil_flag", 1, [5, 0, None])
    bad("typing_arity_1", 1, [5])
    bad("typing_arity_4", 1, [5, 0, True, True])
    bad("typing_bool_handle", 1, [5, True])

    # STATUS [9, h, text_or_nil] (v1.1): at most 64 characters (code points, not bytes)
    ok("status", [9, 0, "presenting"])
    ok("status_clear", [9, 0, None])
    ok("status_64_chars", [9, 0, "s" * 64])
    ok("status_64_chars_multibyte", [9, 0, "ë" * 64])  # 128 bytes, 64 characters
    ok("status_str8", [9, 0, "thinking"], fixarr(b"\x09", b"\x00", str8("thinking")))
    bad("status_65_chars", 7, [9, 0, "s" * 65])
    bad("status_int", 1, [9, 0, 7])
    bad("status_bool", 1, [9, 0, True])
    bad("status_bin", 1, fixarr(b"\x09", b"\x00", bin8(b"presenting")))
    bad("status_arity_2", 1, [9, 0])
    bad("status_arity_4", 1, [9, 0, "a", "b"])

    # VIEWPORT [6, h, top_line, bottom_line, scroll_pct]
    ok("viewport", [6, 0, 120, 160, 37.5])
    ok("viewport_int_pct_0", [6, 0, 0, 40, 0])
    ok("viewport_int_pct_100", [6, 0, 960, 1000, 100])
    ok("viewport_float_pct_100", [6, 0, 960, 1000, 100.0])
    ok(
        "viewport_float32_pct",
        [6, 0, 120, 160, 12.5],
        fixarr(*map(packb, (6, 0, 120, 160)), f32(12.5)),
    )
    ok("viewport_single_line", [6, 0, 7, 7, 0.0])
    ok("viewport_max_u32", [6, 0, MAX, MAX, 100.0])
    bad("viewport_nan_pct", 7, [6, 0, 120, 160, math.nan])
    bad("viewport_float32_nan_pct", 7, fixarr(*map(packb, (6, 0, 120, 160)), f32(math.nan)))
    bad("viewport_inf_pct", 7, [6, 0, 120, 160, math.inf])
    bad("viewport_minus_inf_pct", 7, [6, 0, 120, 160, -math.inf])
    bad("viewport_pct_100_5", 7, [6, 0, 120, 160, 100.5])
    bad("viewport_pct_minus_0_5", 7, [6, 0, 120, 160, -0.5])
    bad("viewport_int_pct_101", 7, [6, 0, 120, 160, 101])
    bad("viewport_int_pct_negative", 7, [6, 0, 120, 160, -1])
    bad("viewport_top_after_bottom", 7, [6, 0, 161, 160, 50.0])
    bad("viewport_negative_top", 7, [6, 0, -1, 160, 50.0])
    bad("viewport_bottom_2_32", 7, [6, 0, 120, 2**32, 50.0])
    bad("viewport_pct_nil", 1, [6, 0, 120, 160, None])
    bad("viewport_pct_str", 1, [6, 0, 120, 160, "37.5"])
    bad("viewport_pct_bool", 1, [6, 0, 120, 160, True])
    bad("viewport_float_top", 1, [6, 0, 120.0, 160, 37.5])
    bad("viewport_arity_4", 1, [6, 0, 120, 160])
    bad("viewport_arity_6", 1, [6, 0, 120, 160, 37.5, 0])

    # FOCUS [7, h, focused]
    ok("focus_true", [7, 0, True])
    ok("focus_false", [7, 0, False])
    bad("focus_int", 1, [7, 0, 1])
    bad("focus_arity_2", 1, [7, 0])
    bad("focus_arity_4", 1, [7, 0, True, False])

    # PING [8, client_ms]
    ok("ping", [8, MS])
    ok("ping_zero", [8, 0])
    ok("ping_float_ms", [8, 1712345678901.25])
    bad("ping_arity_1", 1, [8])
    bad("ping_arity_3", 1, [8, MS, 0])
    bad("ping_str", 1, [8, "1800000000000"])
    bad("ping_bool", 1, [8, True])
    bad("ping_nil", 1, [8, None])

    # Frames that are not a message at all, and unknown types
    bad("garbage_byte_c1", 1, b"\xc1")
    bad("garbage_text", 1, b"hello relay")
    bad("empty_bytes", 1, b"")
    bad("truncated_array", 1, packb([4, 0, 10, 4, 120])[:-1])
    bad("truncated_str", 1, packb([2, 0, DOC])[:-2])
    bad("invalid_utf8_str", 1, fixarr(b"\x02", b"\x00", b"\xa2\xff\xfe"))
    bad("not_array_int", 1, packb(4))
    bad("not_array_nil", 1, packb(None))
    bad("not_array_str", 1, packb("cursor"))
    bad("not_array_map", 1, packb({"t": 4, "h": 0}))
    bad("empty_array", 1, [])
    bad("empty_array16", 1, b"\xdc\x00\x00")
    bad("trailing_bytes", 1, packb([4, 0, 10, 4, 120]) + b"\x00")
    bad("two_frames_in_one", 1, packb([5, 0]) + packb([5, 0]))
    bad("type_str", 1, ["4", 0])
    bad("type_float", 1, [4.0, 0])
    bad("type_bool", 1, [True, 1, TOKEN, {}])
    bad("type_nil", 1, [None, 0])
    bad("type_array", 1, [[4], 0])
    bad("unknown_type_99", 2, [99])
    bad("unknown_type_99_with_fields", 2, [99, 0, 10, 4, 120])
    bad("unknown_type_0", 2, [0, 0])
    bad("unknown_type_10", 2, [10, 0])
    bad("unknown_type_negative", 2, [-1, 0])
    bad("server_type_welcome_from_client", 2, [32, 1])
    bad("server_type_batch_from_client", 2, [34, DOC, MS, []])
    return out


def member(
    sid: int,
    user_id: str,
    name: str,
    avatar: str | None,
    color: str,
    activity: int,
    typing: bool,
    focused: bool,
    cursor: list[int] | None,
    selection: list[Any] | None,
    viewport: list[Any] | None,
    connected_at_ms: int,
    last_active_ms: int,
    kind: int = 0,
    status: str | None = None,
) -> list[Any]:
    """A MEMBER array; v1.1 appends kind (0 person, 1 agent) and status."""
    return [
        sid,
        user_id,
        name,
        avatar,
        color,
        activity,
        typing,
        focused,
        cursor,
        selection,
        viewport,
        connected_at_ms,
        last_active_ms,
        kind,
        status,
    ]


ADA = member(
    1,
    "u-42",
    "Ada Lovelace",
    "https://example.com/a/42.png",
    "hsl(240, 70%, 50%)",
    2,  # Selecting
    False,
    True,
    [12, 8, 190],
    [10, 4, 120, False],
    [0, 40, 25.0],
    MS - 60_000,
    MS - 1_000,
)
GRACE = member(
    2, "u-7", "Grace", None, "hsl(15, 70%, 50%)", 1, False, True, None, None, None, MS, MS
)
ZOE = member(3, "u-9", "Zoë", None, "hsl(120, 70%, 50%)", 1, False, True, None, None, None, MS, MS)
# v1.1: a member set over HTTP (kind 1), with a status.
REVIEWER = member(
    4,
    "review-bot",
    "Reviewer",
    None,
    "hsl(60, 70%, 50%)",
    1,
    False,
    True,
    [3, 0, 42],
    None,
    None,
    MS - 5_000,
    MS - 1_000,
    kind=1,
    status="reading section 2",
)
# v1.1: JOINED's `recent`, [user_id, name, avatar_or_nil, color, left_at_ms, reason].
RECENT_BOB = ["u-3", "Bob", None, "hsl(195, 70%, 50%)", MS - 90_000, 1]  # LOST
RECENT_CY = ["u-5", "Cy", "https://example.com/a/5.png", "hsl(300, 70%, 50%)", MS - 400_000, 0]

SETTINGS = {
    "batch_ms": 50,
    "cursor_throttle_ms": 50,
    "typing_debounce_ms": 500,
    "max_frame_bytes": 8192,
    "max_documents": 32,
    "max_frames_per_s": 200,
    "max_frames_burst": 400,
    "activity_timeout_ms": 30_000,
}


def encode(value: list[Any]) -> bytes:
    """The relay's encoder for a server frame `value` (the one the server really calls)."""
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
    raise ValueError(f"not a server frame type: {t}")


def server_vectors() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    def srv(name: str, value: list[Any]) -> None:
        data = encode(value)
        # Serialize-once means the encoders are plain msgpack: no second encoding may exist.
        assert data == packb(value), name
        out.append({"name": name, "direction": "server", "hex": data.hex(), "value": value})

    def batch(name: str, events: list[list[Any]], ms: int = MS + 50) -> None:
        srv(name, [p.BATCH, DOC, ms, events])

    user = {
        "id": "u-42",
        "name": "Ada Lovelace",
        "avatar": "https://example.com/a/42.png",
        "color": "hsl(240, 70%, 50%)",
        "workspace": "acme",
    }
    srv("welcome", [p.WELCOME, 1, "c-7f3a9e", user, MS, SETTINGS])
    anon = {"id": "u-7", "name": "Grace", "avatar": None, "color": "hsl(15, 70%, 50%)",
            "workspace": "default"}  # fmt: skip
    srv("welcome_anonymous", [p.WELCOME, 1, "c-0001", anon, MS, SETTINGS])

    srv("joined_two_members", [p.JOINED, 0, DOC, 2, [ADA, GRACE], []])
    srv("joined_alone_max_handle", [p.JOINED, 65535, DOC, 2, [GRACE], []])
    recent = [RECENT_BOB, RECENT_CY]  # newest first
    srv("joined_agent_and_recent", [p.JOINED, 1, DOC, 2, [GRACE, REVIEWER], recent])

    batch("batch_empty", [])
    batch("batch_cursor", [[1, 1, 10, 4, 120]])
    batch("batch_cursor_selection", [[1, 1, 12, 8, 190, 10, 4, 120, False]])
    batch("batch_cursor_selection_backward", [[1, 1, 10, 4, 120, 12, 8, 190, True]])
    batch("batch_cursor_cleared", [[1, 1]])
    batch("batch_joined", [[2, ZOE]])
    batch("batch_left", [[3, 2, 0]])  # v1.1: [3, sid, reason] (v1 clients read the prefix)
    batch("batch_left_lost", [[3, 2, 1]])
    batch("batch_typing_true", [[4, 1, True]])
    batch("batch_typing_false", [[4, 1, False]])
    batch("batch_viewport", [[5, 1, 120, 160, 37.5]])
    batch("batch_viewport_integral_pct", [[5, 1, 0, 40, 50.0]])
    batch("batch_activity", [[6, 1, 3]])
    batch("batch_activity_disconnected", [[6, 1, 5]])  # v1.1
    batch("batch_focus", [[7, 1, False]])
    batch("batch_status", [[8, 1, "presenting"]])  # v1.1
    batch("batch_status_cleared", [[8, 1, None]])
    batch(
        "batch_every_event",
        [
            [2, ZOE],
            [4, 1, True],
            [6, 1, 0],
            [5, 3, 0, 40, 0.0],
            [7, 2, False],
            [3, 2, 3],
            [1, 1, 10, 5, 121],
            [1, 3, 0, 0, 0, 2, 0, 31, True],
            [8, 1, "presenting"],
        ],
    )
    batch(
        "batch_20_cursors",
        [[1, sid, sid * 3, sid % 7, sid * 97] for sid in range(1, 21)],
    )
    batch(
        "batch_max_u32",
        [
            [1, 1, MAX, MAX, MAX, MAX, MAX, MAX, True],
            [5, 1, MAX, MAX, 100.0],
            [1, 65535, MAX, 0, MAX],
        ],
        ms=MS,
    )

    srv("error_nil_handle", [p.ERROR, None, 1, "a frame must be a non-empty msgpack array"])
    srv("error_with_handle", [p.ERROR, 0, 7, "top_line must be <= bottom_line"])
    srv("error_rate_limited", [p.ERROR, None, 6, "rate limited"])
    srv("error_max_handle", [p.ERROR, 65535, 3, "not joined"])

    srv("pong", [p.PONG, MS, MS + 12])
    srv("pong_float_client_ms", [p.PONG, 1712345678901.25, MS + 12])
    srv("pong_small_client_ms", [p.PONG, 0, MS])
    return out


def build() -> dict[str, Any]:
    vectors = client_vectors() + server_vectors()
    names = [v["name"] for v in vectors]
    assert len(names) == len(set(names)), "vector names must be unique"
    return {"version": 1, "vectors": vectors}


def render(doc: dict[str, Any]) -> str:
    """One vector per line: small diffs when a vector changes."""
    lines = [json.dumps(v, ensure_ascii=False, allow_nan=False) for v in doc["vectors"]]
    body = ",\n  ".join(lines)
    return f'{{"version": {doc["version"]}, "vectors": [\n  {body}\n]}}\n'


# ------------------------------------------------------------ docs helpers


def show(v: Any) -> str:
    """A value in the notation docs/protocol.md uses (msgpack's nil, JSON otherwise)."""
    if v is None:
        return "nil"
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, list):
        return "[" + ", ".join(show(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{show(k)}: {show(x)}" for k, x in v.items()) + "}"
    return json.dumps(v, ensure_ascii=False)


TYPE_NAMES = {
    **{v: k for k, v in vars(p).items() if k in ("HELLO", "JOIN", "LEAVE", "CURSOR", "TYPING")},
    **{v: k for k, v in vars(p).items() if k in ("VIEWPORT", "FOCUS", "PING", "STATUS")},
    **{v: k for k, v in vars(p).items() if k in ("WELCOME", "JOINED", "BATCH", "ERROR", "PONG")},
}


def annotate(data: bytes) -> list[str]:
    """A byte-by-byte reading of one msgpack value (the subset the protocol uses)."""
    rows: list[tuple[bytes, str]] = []

    def take(i: int, n: int, what: str) -> int:
        rows.append((data[i : i + n], what))
        return i + n

    def plural(n: int, word: str) -> str:
        return f"{n} {word}" if n == 1 else f"{n} {word}s"

    def walk(i: int, depth: int) -> int:
        pad = "  " * depth
        b = data[i]
        if b <= 0x7F:
            note = f" = {TYPE_NAMES[b]}" if i == 1 and b in TYPE_NAMES else ""
            return take(i, 1, f"{pad}positive fixint {b}{note}")
        if 0x80 <= b <= 0x8F or b in (0xDE, 0xDF):
            if b <= 0x8F:
                n, hl, kind = b & 0x0F, 1, "fixmap"
            else:
                hl = 3 if b == 0xDE else 5
                n = int.from_bytes(data[i + 1 : i + hl], "big")
                kind = "map16" if b == 0xDE else "map32"
            i = take(i, hl, f"{pad}{kind} of {plural(n, 'pair')}")
            for _ in range(2 * n):
                i = walk(i, depth + 1)
            return i
        if 0x90 <= b <= 0x9F or b in (0xDC, 0xDD):
            if b <= 0x9F:
                n, hl, kind = b & 0x0F, 1, "fixarray"
            else:
                hl = 3 if b == 0xDC else 5
                n = int.from_bytes(data[i + 1 : i + hl], "big")
                kind = "array16" if b == 0xDC else "array32"
            i = take(i, hl, f"{pad}{kind} of {plural(n, 'element')}")
            for _ in range(n):
                i = walk(i, depth + 1)
            return i
        if 0xA0 <= b <= 0xBF or b in (0xD9, 0xDA):
            if b <= 0xBF:
                n, hl, kind = b & 0x1F, 1, "fixstr"
            else:
                hl = 2 if b == 0xD9 else 3
                n = int.from_bytes(data[i + 1 : i + hl], "big")
                kind = "str8" if b == 0xD9 else "str16"
            text = json.dumps(data[i + hl : i + hl + n].decode(), ensure_ascii=False)
            return take(i, hl + n, f"{pad}{kind} of {plural(n, 'byte')}: {text}")
        if b >= 0xE0:
            return take(i, 1, f"{pad}negative fixint {b - 256}")
        simple = {0xC0: "nil", 0xC2: "false", 0xC3: "true"}
        if b in simple:
            return take(i, 1, f"{pad}{simple[b]}")
        sized = {0xCC: ("uint8", 1), 0xCD: ("uint16", 2), 0xCE: ("uint32", 4),
                 0xCF: ("uint64", 8), 0xD0: ("int8", 1), 0xD1: ("int16", 2),
                 0xD2: ("int32", 4), 0xD3: ("int64", 8)}  # fmt: skip
        if b in sized:
            kind, n = sized[b]
            value = int.from_bytes(data[i + 1 : i + 1 + n], "big", signed=kind[0] == "i")
            return take(i, 1 + n, f"{pad}{kind} {value}")
        if b in (0xCA, 0xCB):
            kind, n, fmt = ("float32", 4, ">f") if b == 0xCA else ("float64", 8, ">d")
            value = struct.unpack(fmt, data[i + 1 : i + 1 + n])[0]
            return take(i, 1 + n, f"{pad}{kind} {value!r}")
        raise ValueError(f"byte {b:#04x} at {i} is outside the subset the protocol uses")

    end = walk(0, 0)
    if end != len(data):
        rows.append((data[end:], "trailing bytes (BAD_FRAME)"))
    out = []
    for chunk, what in rows:
        for j in range(0, len(chunk), 9):
            cont = " " * (len(what) - len(what.lstrip())) + "(cont.)"
            out.append(f"{chunk[j : j + 9].hex(' '):<26}  # {what if j == 0 else cont}")
    return out


def markdown(doc: dict[str, Any], names: list[str]) -> str:
    by_name = {v["name"]: v for v in doc["vectors"]}
    out = []
    for name in names:
        if name.startswith("+"):  # +name: annotated byte-by-byte dump
            v = by_name[name[1:]]
            out += ["```hex", f"# vector: {v['name']}", *annotate(bytes.fromhex(v["hex"])), "```"]
            continue
        if name.startswith("="):  # =name: hex block, 16 bytes a line, value as a comment
            v = by_name[name[1:]]
            data = bytes.fromhex(v["hex"])
            rows = [data[i : i + 16].hex(" ") for i in range(0, len(data), 16)]
            head = [f"# vector: {v['name']} ({len(data)} bytes)", f"# {show(v['value'])}"]
            out += ["```hex", *head, *rows, "```"]
            continue
        v = by_name[name]
        shown = show(v["value"]) if "value" in v else f"ERROR {v['error']}"
        out.append(f"| `{name}` | `{v['hex']}` | `{shown}` |")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--check", action="store_true", help="fail if protocol_v1.json is stale")
    ap.add_argument(
        "--markdown", nargs="+", metavar="NAME", help="print doc rows (+NAME: dump, =NAME: block)"
    )
    args = ap.parse_args()
    doc = build()
    if args.markdown:
        print(markdown(doc, args.markdown))
        return 0
    text = render(doc)
    if args.check:
        if OUT.read_text(encoding="utf-8") != text:
            print(f"{OUT} is stale: run {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text, encoding="utf-8")
    print(f"wrote {len(doc['vectors'])} vectors to {OUT}")
    return 0


def _same(a: Any, b: Any) -> bool:
    """Equal AND of the same msgpack kind (1, 1.0 and True are three different values)."""
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


if __name__ == "__main__":
    sys.exit(main())
