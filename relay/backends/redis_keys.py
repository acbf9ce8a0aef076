"""The Redis keys the relay writes and the record formats other services read.

Keys (`<doc>` is the document id itself, no braces, exactly as the seed builds them):

- `presence:<doc>:users`                 hash user_id -> UserPresence JSON (seed)
- `presence:workspace:<ws>:documents`    set of document ids (seed)
- `presence:user:<user>`                 hash doc_id -> last_active ms (seed)
- `presence:channel:<doc>`               pub/sub channel: node id[`;`seq], `|`, one BATCH frame
                                         (seed), or a node-set message (see `envelope`)
- `presence:<doc>:nodes`                 set of the node ids that have the document open
- `materi:events:presence`               stream of joined / left (seed; name configurable)
- `presence:<doc>:members`               hash sid -> msgpack
- `presence:<doc>:recent`                hash user_id -> msgpack, users who left (v1.1)
- `presence:agent:<doc>/<member_id>`     the node holding a member set over HTTP (v1.1)
                                         [node, workspace, MEMBER, last_cursor, written_at]
- `presence:<doc>:sid`                   INCR counter allocating sids (unique across nodes)
- `presence:node:<id>`                   a node's heartbeat (string with a TTL)
- `presence:node:<id>:sessions`          set of "<sid>:<doc>" the node owns
- `presence:node:registry`               set of node ids (where reapers look)

Every write is a single-key command; nothing needs two keys to change atomically, so the
keys may live on different Redis Cluster shards. See docs/redis.md.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

import msgpack

from relay.core.model import ActivityType, Session, SessionLike, UserInfo
from relay.core.recent import RecentUser

# ---------------------------------------------------------------- keys


def users_key(doc_id: str) -> str:
    return f"presence:{doc_id}:users"


def members_key(doc_id: str) -> str:
    return f"presence:{doc_id}:members"


def agent_key(doc_id: str, member_id: str) -> str:
    """String, TTL: the node holding a member set over HTTP (v1.1), for its ttl_s. (A doc
    id has no `/`, so the member id after it, whatever it holds, is never ambiguous.)"""
    return f"presence:agent:{doc_id}/{member_id}"


def recent_key(doc_id: str) -> str:
    """Hash user_id -> msgpack [name, avatar, color, left_at_ms, reason] (v1.1 `recent`)."""
    return f"presence:{doc_id}:recent"


def recent_value(e: RecentUser) -> bytes:
    value: bytes = msgpack.packb(
        [e.name, e.avatar_url, e.color, e.left_at_ms, e.reason], use_bin_type=True
    )
    return value


def parse_recent(user_id: bytes | str, raw: bytes | str) -> RecentUser | None:
    try:
        name, avatar, color, left_at, reason, *_ = msgpack.unpackb(raw, raw=False)
        return RecentUser(as_text(user_id), name, avatar, color, int(left_at), int(reason))
    except Exception:  # a foreign or corrupt value must not break a read
        return None


def sid_key(doc_id: str) -> str:
    return f"presence:{doc_id}:sid"


def workspace_key(workspace_id: str) -> str:
    return f"presence:workspace:{workspace_id}:documents"


def user_key(user_id: str) -> str:
    return f"presence:user:{user_id}"


CHANNEL_PREFIX = "presence:channel:"


def channel(doc_id: str) -> str:
    return CHANNEL_PREFIX + doc_id


def nodes_key(doc_id: str) -> str:
    """Set: the nodes that have the document open (a node publishes a document's batches
    only while another node is in it: docs/redis.md, "Who listens")."""
    return f"presence:{doc_id}:nodes"


def node_key(node_id: str) -> str:
    return f"presence:node:{node_id}"


def node_sessions_key(node_id: str) -> str:
    return f"presence:node:{node_id}:sessions"


NODE_REGISTRY = "presence:node:registry"


def node_held_key(node_id: str) -> str:
    """Set while a dead or stopped node's sessions are held for the grace (see Liveness)."""
    return f"presence:node:{node_id}:held"


def stopping_value(node_id: str) -> str:
    """The heartbeat key of a node whose sessions are held: alive for the reaper, gone for
    a resume (which then takes the members' state from their records)."""
    return json.dumps({"node_id": node_id, "stopping": True})


def new_node_id() -> str:
    return uuid.uuid4().hex[:12]


def owned(sid: int, doc_id: str) -> str:
    """A member of `presence:node:<id>:sessions`."""
    return f"{sid}:{doc_id}"


def as_text(value: bytes | str) -> str:
    """A Redis reply as text (the client returns bytes: decode_responses is off)."""
    return value.decode() if isinstance(value, bytes) else value


def parse_owned(value: bytes | str) -> tuple[int, str] | None:
    s = as_text(value)
    sid, sep, doc_id = s.partition(":")
    if not sep or not sid.isdigit():
        return None
    return int(sid), doc_id


# ---------------------------------------------------------------- envelope on the channel
#
# `<node id>;<seq>|<payload>`: the origin node, its sequence number for the document (1, 2,
# ... for every message it sends on that channel since it opened the document; a receiver
# that sees one missing or repeated re-reads the document), and the payload: a BATCH frame
# (what the seed's readers expect after the `|`) or one of the node-set messages below, also
# msgpack arrays, whose codes are no frame's (a reader that wants BATCH frames skips them).
# `<node id>|<frame>` (no sequence) is what nodes before v1.2 send; it is still read.

SEP = b"|"
SEQ_SEP = b";"
# [200, server_ms, [MEMBER, ...]]: the origin opened the document (it is in its node set
# now) or its pub/sub connection came back, and these are the members it owns there
NODE_HELLO = 200
NODE_ROSTER = 201  # [201, server_ms, [MEMBER, ...]]: every member the origin owns there
NODE_BYE = 202  # [202]: the origin closed the document


def envelope(node_id: bytes, frame: bytes, seq: int = 0) -> bytes:
    if seq:
        return b"%s;%d|%s" % (node_id, seq, frame)
    return node_id + SEP + frame


def open_envelope(data: bytes) -> tuple[bytes, int, bytes] | None:
    """(origin node id, sequence or 0, payload), or None for a malformed message."""
    i = data.find(SEP)
    if i <= 0:
        return None
    head = data[:i]
    j = head.find(SEQ_SEP)
    if j < 0:
        return head, 0, data[i + 1 :]
    try:
        seq = int(head[j + 1 :])
    except ValueError:
        return None
    if j == 0 or seq <= 0:
        return None
    return head[:j], seq, data[i + 1 :]


# ---------------------------------------------------------------- records


def _pos(c: tuple[int, int, int]) -> dict[str, int]:
    return {"line": c[0], "column": c[1], "offset": c[2]}


def user_presence(doc_id: str, s: SessionLike) -> dict[str, Any]:
    """The seed's UserPresence, field for field."""
    u = s.user
    vp = s.viewport
    cur = s.cursor
    sel = s.selection
    return {
        "user_id": u.user_id,
        "document_id": doc_id,
        "workspace_id": u.workspace_id,
        "name": u.name,
        "avatar_url": u.avatar_url,
        "color": s.color,
        "state": {
            "online": True,
            "typing": s.typing,
            "focused": s.focused,
            "activity": s.activity.label,
            "viewport": None
            if vp is None
            else {
                "top_line": vp[0],
                "bottom_line": vp[1],
                "scroll_percentage": vp[2],
            },
        },
        "cursor": None if cur is None else _pos(cur),
        "selection": None
        if sel is None or cur is None
        else {
            "anchor": _pos((sel[0], sel[1], sel[2])),
            "head": _pos(cur),
            "is_backward": sel[3],
        },
        "connected_at": s.connected_at_ms,
        "last_active_at": s.last_active_ms,
        "last_cursor_update": s.cursor_arrived_ms or s.connected_at_ms,
    }


def user_presence_json(doc_id: str, s: SessionLike) -> str:
    return json.dumps(user_presence(doc_id, s), separators=(",", ":"))


def member_record(node_id: str, s: SessionLike, written_at_ms: int) -> bytes:
    """The value in `presence:<doc>:members`: enough to rebuild the session elsewhere.

    `written_at_ms` is the owner's wall clock when it read the live session (the clock its
    BATCH `server_ms` come from): every event the owner batched at or before that time is
    reflected in the record, so another node can tell whether its mirror, updated by those
    BATCHes, or the record is the newer view of a field (see `Cluster.resync`).
    """
    record: bytes = msgpack.packb(
        [node_id, s.user.workspace_id, s.member(), s.cursor_arrived_ms, written_at_ms],
        use_bin_type=True,
    )
    return record


def repack_member_record(r: MemberRecord) -> bytes:
    """A record written back after a field of its MEMBER changed (the owner is gone)."""
    record: bytes = msgpack.packb(
        [r.node_id, r.workspace_id, r.member, r.last_cursor, r.written_at], use_bin_type=True
    )
    return record


@dataclass(slots=True, eq=False)
class StoredSession(Session):
    """A session rebuilt from a member record: also says when its owner wrote the record."""

    written_at_ms: int = 0
    node_id: str = ""  # the node that owns it


def _tuple(v: Any) -> Any:
    return tuple(v) if v is not None else None


class MemberRecord:
    __slots__ = ("last_cursor", "member", "node_id", "workspace_id", "written_at")

    def __init__(
        self,
        node_id: str,
        workspace_id: str,
        member: list[Any],
        last_cursor: int,
        written_at: int = 0,
    ) -> None:
        self.node_id = node_id
        self.workspace_id = workspace_id
        self.member = member
        self.last_cursor = last_cursor
        self.written_at = written_at  # 0: a record of the older 4-element format

    @property
    def sid(self) -> int:
        return int(self.member[0])

    @property
    def user_id(self) -> str:
        return str(self.member[1])

    @property
    def last_active(self) -> int:
        return int(self.member[12])

    @property
    def activity(self) -> ActivityType:
        return ActivityType(self.member[5])

    def session(self) -> StoredSession:
        m = self.member
        return StoredSession(
            sid=m[0],
            user=user_from_record(self),
            color=m[4],
            connected_at_ms=m[11],
            last_active_ms=m[12],
            activity=ActivityType(m[5]),
            typing=m[6],
            focused=m[7],
            cursor=_tuple(m[8]),
            selection=_tuple(m[9]),
            viewport=_tuple(m[10]),
            cursor_arrived_ms=self.last_cursor,
            remote=True,
            kind=m[13] if len(m) > 13 else 0,  # a v1 node's record has 13 elements
            status=m[14] if len(m) > 14 else None,
            written_at_ms=self.written_at,
            node_id=self.node_id,
        )


def parse_member_record(raw: bytes | str) -> MemberRecord | None:
    try:
        # Four elements: written by a node from before `written_at`. Elements past the fifth
        # are ignored, so a later format can add some without blinding this reader.
        node_id, ws, member, last_cursor, *rest = msgpack.unpackb(raw, raw=False)
        return MemberRecord(node_id, ws, member, last_cursor, int(rest[0]) if rest else 0)
    except Exception:  # a foreign or corrupt value must not break a read
        return None


def user_from_record(r: MemberRecord) -> UserInfo:
    m = r.member
    return UserInfo(user_id=m[1], name=m[2], workspace_id=r.workspace_id, avatar_url=m[3])
