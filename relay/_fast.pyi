"""Type stub for both twins of the hot path: relay._fast (compiled) and relay.core.pure.

Names, signatures, results and exceptions are the same in both; tests/test_twins.py holds
them to it.
"""

from collections.abc import Sequence
from typing import Any

from relay.core.document import Batch as Batch
from relay.core.document import DocumentRules
from relay.core.model import ActivityType, UserInfo
from relay.core.ratelimit import BadFrameWindow as BadFrameWindow
from relay.exceptions import DocumentFull as DocumentFull

IMPLEMENTATION: str
NEVER: int
FALLBACK: int
RATE_LIMITED: int
NEED_MORE: int
NOT_OURS: int

def encode(value: Any) -> bytes: ...  # compiled twin only: its msgpack writer, for parity tests

class Session:
    sid: int
    user: UserInfo
    color: str
    connected_at_ms: int
    last_active_ms: int
    activity: ActivityType
    typing: bool
    typing_until_ms: int
    focused: bool
    blurred_at_ms: int
    cursor: tuple[int, int, int] | None
    selection: tuple[int, int, int, bool] | None
    viewport: tuple[int, int, float] | None
    cursor_moved: bool
    cursor_arrived_ms: int
    remote: bool
    disconnected: bool
    kind: int
    status: str | None
    status_moved: bool
    def __init__(
        self,
        sid: int,
        user: UserInfo,
        color: str,
        connected_at_ms: int,
        last_active_ms: int,
        activity: ActivityType | int = ...,
        typing: bool = ...,
        typing_until_ms: int = ...,
        focused: bool = ...,
        blurred_at_ms: int = ...,
        cursor: tuple[int, int, int] | None = ...,
        selection: tuple[int, int, int, bool] | None = ...,
        viewport: tuple[int, int, float] | None = ...,
        cursor_moved: bool = ...,
        cursor_arrived_ms: int = ...,
        remote: bool = ...,
        disconnected: bool = ...,
        kind: int = ...,
        status: str | None = ...,
        status_moved: bool = ...,
    ) -> None: ...
    def member(self) -> tuple[Any, ...]: ...

class Document:
    doc_id: str
    rules: DocumentRules
    sessions: dict[int, Session]
    next_deadline_ms: int
    def __init__(
        self, doc_id: str, rules: DocumentRules, dirty_set: set[Any] | None = ...
    ) -> None: ...
    @property
    def dirty(self) -> bool: ...
    @property
    def empty(self) -> bool: ...
    def allocate_sid(self) -> int: ...
    def join(
        self, user: UserInfo, now_ms: int, sid: int | None = ..., kind: int = ...
    ) -> Session: ...
    def leave(self, sid: int, now_ms: int, reason: int = ...) -> Session | None: ...
    def disconnect(self, sid: int, now_ms: int) -> None: ...
    def reconnect(self, sid: int, now_ms: int) -> None: ...
    def snapshot(self) -> list[tuple[Any, ...]]: ...
    def workspaces(self) -> set[str]: ...
    def move_cursor(
        self,
        sid: int,
        cursor: tuple[int, int, int] | None,
        selection: tuple[int, int, int, bool] | None,
        now_ms: int,
    ) -> None: ...
    def set_typing(self, sid: int, typing: bool, now_ms: int) -> None: ...
    def set_viewport(
        self, sid: int, top: int, bottom: int, scroll_pct: float, now_ms: int
    ) -> None: ...
    def set_focus(self, sid: int, focused: bool, now_ms: int) -> None: ...
    def set_status(self, sid: int, text: str | None, now_ms: int) -> None: ...
    def advance(self, now_ms: int) -> None: ...
    def flush(self, now_ms: int) -> Batch | None: ...

class TokenBucket:
    last_error_ms: float
    def __init__(self, rate: float, burst: int, close_after_ms: float, now_ms: float) -> None: ...
    def take(self, now_ms: float) -> bool: ...
    def abusive(self, now_ms: float) -> bool: ...
    def state(self) -> tuple[float, float, float, float, float]: ...
    def restore(self, state: Sequence[float]) -> None: ...

class Membership:
    doc: Document
    sid: int
    def __init__(self, doc: Document, sid: int) -> None: ...

class HotCounts:
    def __init__(self) -> None: ...
    def __getitem__(self, message_type: int) -> int: ...
    @property
    def total(self) -> int: ...
    def add(self, message_type: int) -> None: ...

class Peer:
    bucket: TokenBucket
    handles: dict[int, Membership]
    counts: HotCounts
    def __init__(self, bucket: TokenBucket, counts: HotCounts | None = None) -> None: ...
    def feed(self, data: bytes, now_ms: int) -> int: ...
    def feed_wire(
        self, buf: bytes, start: int, max_payload: int, now_ms: int
    ) -> tuple[int, int, bytes | None]: ...
