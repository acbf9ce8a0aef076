"""No id can alias another's Redis keys (relay/core/ids.py): every key names one thing.

The keys are built by concatenation (the seed's format, which other services share), so
the rule lives in which ids are accepted. Checked here for every pair of key builders over
ids made of the pieces that could collide, and end to end: a JOIN of a reserved id gets
ERROR 7 with the reason.
"""

from __future__ import annotations

from typing import Any

import pytest

from relay.auth import MAX_ID
from relay.backends import redis_keys as k
from relay.config import PresenceConfig
from relay.core.ids import doc_id_problem

PIECES = [
    "user",
    "users",
    "workspace",
    "documents",
    "node",
    "sessions",
    "registry",
    "sid",
    "members",
    "presence",
    "channel",
    "materi",
    "events",
    "bob",
    "acme",
    "x",
    "",
    "0",
]


def candidate_ids(max_parts: int = 3) -> list[str]:
    """Every id of up to `max_parts` of the pieces joined by ':' (the pieces the keys are
    made of, so every collision of up to that length is among them)."""
    out = list(PIECES)
    layer = list(PIECES)
    for _ in range(max_parts - 1):
        layer = [f"{a}:{b}" for a in layer for b in PIECES]
        out += layer
    return out


CANDIDATES = candidate_ids()
DOC_IDS = [d for d in CANDIDATES if doc_id_problem(d) is None]
USER_IDS = [u for u in CANDIDATES if 0 < len(u) <= MAX_ID]  # workspace ids: the same rules
NODE_IDS = ["0123456789ab", "abcdefabcdef"]  # new_node_id(): 12 hex digits

# (builder name, its ids, builder): every key the relay and the seed write
BUILDERS: list[tuple[str, list[str], Any]] = [
    ("users", DOC_IDS, k.users_key),
    ("members", DOC_IDS, k.members_key),
    ("sid", DOC_IDS, k.sid_key),
    ("workspace", USER_IDS, k.workspace_key),
    ("user", USER_IDS, k.user_key),
    ("node", NODE_IDS, k.node_key),
    ("node-sessions", NODE_IDS, k.node_sessions_key),
    ("registry", [""], lambda _: k.NODE_REGISTRY),
    ("stream", [""], lambda _: PresenceConfig().presence_stream),
]


def test_no_two_key_builders_share_a_key() -> None:
    owner: dict[str, tuple[str, str]] = {}
    for name, id_list, build in BUILDERS:
        for i in id_list:
            key = build(i)
            other = owner.setdefault(key, (name, i))
            assert other == (name, i), f"{name}({i!r}) and {other[0]}({other[1]!r}): {key}"
    assert len(owner) > 10_000  # the enumeration really ran


def test_without_the_rule_the_enumeration_finds_the_collision() -> None:
    """The check above can fail: with reserved ids allowed it finds the reported clash."""
    keys = {k.user_key(u): u for u in USER_IDS}
    clashes = [d for d in CANDIDATES if k.sid_key(d) in keys and doc_id_problem(d) is not None]
    assert "user:bob" in clashes


@pytest.mark.parametrize(
    "doc",
    ["user", "user:bob", "user:", "node", "node:abc", "workspace", "workspace:acme:documents"],
)
def test_reserved_document_ids_are_refused(doc: str) -> None:
    problem = doc_id_problem(doc)
    assert problem is not None and "reserved" in problem


@pytest.mark.parametrize(
    "doc",
    [
        "users:bob",
        "username",
        "User:bob",
        "bob:user",
        "a:user:b",
        "nodes",
        "channel:general",
        "presence:x",
        "doc-1",
    ],
)
def test_other_document_ids_are_fine(doc: str) -> None:
    assert doc_id_problem(doc) is None


def test_the_collision_from_the_report_is_gone() -> None:
    """User `bob:sid` and document `user:bob` shared presence:user:bob:sid (WRONGTYPE on
    INCR); user `bob:users` wrote into document `user:bob`'s users hash."""
    assert k.user_key("bob:sid") == k.sid_key("user:bob")  # the keys alone would collide...
    assert k.user_key("bob:users") == k.users_key("user:bob")
    assert doc_id_problem("user:bob") is not None  # ...so the document id is refused


async def test_join_of_a_reserved_id_is_error_7(relay: Any, client_factory: Any) -> None:
    c = await client_factory(relay, "bob:sid")
    err = await c.join(1, "user:bob")
    assert err[:3] == [35, 1, 7] and "reserved" in err[3]
    assert (await c.join(2, "users:bob"))[0] == 33
