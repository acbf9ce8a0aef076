"""The body of `PUT /internal/presence/{doc}/members/{member_id}` (protocol v1.1, "Members set
over HTTP"): checked field by field, so a bad one gets a 400 that names it. No I/O."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from relay.auth import MAX_ID, carriable
from relay.core import protocol as p

FIELDS = ("name", "avatar_url", "cursor", "selection", "typing", "viewport", "status", "ttl_s")
DEFAULT_TTL_S = 30
MAX_TTL_S = 3600
MAX_BODY_BYTES = 16384
UNSET: Any = object()  # a field the body does not have: the member keeps what it had


class BadBody(ValueError):
    """A 400: `field` is what to fix (None: the body as a whole)."""

    def __init__(self, field: str | None, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


@dataclass(frozen=True, slots=True)
class AgentUpdate:
    name: str
    avatar_url: Any = UNSET  # str | None
    cursor: Any = UNSET  # (line, col, off) | None
    selection: Any = UNSET  # (a_line, a_col, a_off, backward) | None
    typing: Any = UNSET  # bool
    viewport: Any = UNSET  # (top, bottom, pct)
    status: Any = UNSET  # str | None
    ttl_s: int = DEFAULT_TTL_S


def _int(v: Any) -> bool:
    return type(v) is int


def _u32s(field: str, v: Any, n: int) -> tuple[int, ...]:
    if type(v) is not list or len(v) != n or not all(_int(x) for x in v):
        raise BadBody(field, f"{field} must be an array of {n} integers")
    if not all(0 <= x <= p.MAX_U32 for x in v):
        raise BadBody(field, f"{field} positions are integers in 0..2^32-1")
    return tuple(v)


def parse_agent_body(raw: bytes) -> AgentUpdate:
    if len(raw) > MAX_BODY_BYTES:
        raise BadBody(None, f"the body is over {MAX_BODY_BYTES} bytes")
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise BadBody(None, "the body is not JSON") from None
    if type(body) is not dict:
        raise BadBody(None, "the body must be a JSON object")
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        raise BadBody(unknown[0], f"unknown field {unknown[0]!r} (known: {', '.join(FIELDS)})")
    name = body.get("name")
    if type(name) is not str or not name or len(name) > MAX_ID or not carriable(name):
        raise BadBody("name", f"name is required: a string of 1 to {MAX_ID} characters")
    out: dict[str, Any] = {"name": name}
    if "avatar_url" in body:
        a = body["avatar_url"]
        if a is not None and (
            type(a) is not str
            or len(a) > 2048
            or not a.startswith(("http://", "https://"))
            or not carriable(a)
        ):
            raise BadBody("avatar_url", "avatar_url must be an http(s) URL or null")
        out["avatar_url"] = a
    if "cursor" in body:
        c = body["cursor"]
        out["cursor"] = None if c is None else _u32s("cursor", c, 3)
    if "selection" in body:
        sel = body["selection"]
        if sel is None:
            out["selection"] = None
        else:
            if type(sel) is not list or len(sel) != 4 or type(sel[3]) is not bool:
                raise BadBody("selection", "selection is [a_line, a_col, a_off, backward]")
            out["selection"] = (*_u32s("selection", sel[:3], 3), sel[3])
            if out.get("cursor", UNSET) is None:
                raise BadBody("selection", "a selection needs a cursor (its head)")
    if "typing" in body:
        if type(body["typing"]) is not bool:
            raise BadBody("typing", "typing must be true or false")
        out["typing"] = body["typing"]
    if "viewport" in body:
        vp = body["viewport"]
        if (
            type(vp) is not list
            or len(vp) != 3
            or not (_int(vp[0]) and _int(vp[1]))
            or type(vp[2]) not in (int, float)
        ):
            raise BadBody("viewport", "viewport is [top_line, bottom_line, scroll_pct]")
        top, bottom, pct = vp
        if not (0 <= top <= p.MAX_U32 and 0 <= bottom <= p.MAX_U32) or top > bottom:
            raise BadBody("viewport", "viewport lines are 0..2^32-1 with top <= bottom")
        if not (math.isfinite(pct) and 0 <= pct <= 100):
            raise BadBody("viewport", "viewport scroll_pct is a number in [0, 100]")
        out["viewport"] = (top, bottom, float(pct))
    if "status" in body:
        st = body["status"]
        if st is not None and (type(st) is not str or not carriable(st)):
            raise BadBody("status", "status must be a string or null")
        if st is not None and len(st) > p.MAX_STATUS_CHARS:
            raise BadBody("status", f"status is at most {p.MAX_STATUS_CHARS} characters")
        out["status"] = st
    if "ttl_s" in body:
        ttl = body["ttl_s"]
        if not _int(ttl) or not 1 <= ttl <= MAX_TTL_S:
            raise BadBody("ttl_s", f"ttl_s must be an integer in 1..{MAX_TTL_S}")
        out["ttl_s"] = ttl
    return AgentUpdate(**out)
