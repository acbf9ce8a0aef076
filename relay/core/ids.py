"""Which document ids the relay accepts, and why some well-formed ones are refused.

docs/protocol.md allows `^[A-Za-z0-9._~:@-]{1,128}$`. The Redis keys (the seed's and the relay's)
are built by plain concatenation, with no hash tag and no escaping, because other services
build them the same way (`format!("presence:{}:users", doc)`):

    presence:<doc>:users   presence:<doc>:members   presence:<doc>:sid      (per document)
    presence:user:<user>   presence:workspace:<ws>:documents                (per user, workspace)
    presence:node:<node>   presence:node:<node>:sessions   presence:node:registry  (per node)

A document whose id is `user`, or begins with `user:`, would own keys in the per-user space:
document `user:bob` has `presence:user:bob:sid`, which is user `bob:sid`'s key (INCR on a
hash: WRONGTYPE), and user `bob:users` would write fields into document `user:bob`'s users
hash. The same holds for `workspace` and `node`. So the first `:`-separated part of a
document id may not be one of those words: with that rule every key names exactly one
thing (`tests/test_ids.py` checks every pair of key builders). The rule holds with every
backend, so a document id that works on one node works on all.
"""

from __future__ import annotations

import re

DOC_ID_RE = re.compile(r"[A-Za-z0-9._~:@-]{1,128}")
RESERVED_DOC_NAMESPACES = frozenset({"user", "workspace", "node"})


def doc_id_problem(doc_id: str) -> str | None:
    """Why `doc_id` is refused (a message for ERROR 7 / HTTP 400), or None if it is fine."""
    if not DOC_ID_RE.fullmatch(doc_id):
        return "doc_id must match ^[A-Za-z0-9._~:@-]{1,128}$"
    if doc_id.partition(":")[0] in RESERVED_DOC_NAMESPACES:
        return (
            "doc_id may not be 'user', 'workspace' or 'node', nor begin with one of them "
            "and ':' (reserved for the relay's Redis keys)"
        )
    return None
