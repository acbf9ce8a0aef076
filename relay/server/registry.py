"""The registry: this node's documents, their local members, and their flush groups.

It alone owns that state; the hub, the ticker, the cluster mirror and the HTTP routes ask it.
A document is opened on its first join (here, once, for local and clustered joins alike),
goes into the flush group with the fewest documents, and is dropped when it has no local
member left (and no join under way); what else must forget it then (the ticker's timers,
the mirror's bookkeeping, the broker's subscription) registers with `on_drop`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from relay.core.document import DocumentRules
from relay.core.model import UserInfo
from relay.twin import Document, Membership


class Registry:
    def __init__(self, rules: DocumentRules, flush_groups: int) -> None:
        self.rules = rules
        self.documents: dict[str, Document] = {}
        self.local: dict[str, dict[int, Any]] = {}  # doc_id -> sid -> Client on this node
        # doc_id -> sids of this node's members set over HTTP (relay/server/agents.py): local
        # members without a socket, so not in `local`, but they keep the document open.
        self.agents: dict[str, set[int]] = {}
        # Documents are spread over `flush_groups` groups that flush one after another, each
        # every `batch_ms` (so every document still gets one BATCH per interval): the writes
        # of one tick are a group's, not every member's at once, so a member's batch does
        # not wait behind the whole node's and reads are not starved for a whole burst.
        # Each document registers itself as dirty in its group's set.
        self.groups: list[set[Document]] = [set() for _ in range(flush_groups)]
        self.group_of: dict[Document, int] = {}
        self.group_sizes = [0] * flush_groups
        self.on_open: list[Callable[[str], None]] = []
        self.on_drop: list[Callable[[Document], None]] = []

    def get(self, doc_id: str) -> Document | None:
        return self.documents.get(doc_id)

    def open(self, doc_id: str) -> Document:
        """The document, opened here if it was not (in the group with the fewest)."""
        doc = self.documents.get(doc_id)
        if doc is not None:
            return doc
        sizes = self.group_sizes
        g = sizes.index(min(sizes))
        sizes[g] += 1
        doc = Document(doc_id, self.rules, self.groups[g])
        self.group_of[doc] = g
        self.documents[doc_id] = doc
        self.local[doc_id] = {}
        for hook in self.on_open:
            hook(doc_id)
        return doc

    def join(
        self, client: Any, doc: Document, user: UserInfo, now_ms: int, sid: int | None = None
    ) -> Membership:
        """Add the client's session to the document (raises DocumentFull)."""
        session = doc.join(user, now_ms, sid=sid)
        self.local[doc.doc_id][session.sid] = client
        self.groups[self.group_of[doc]].add(doc)
        return Membership(doc, session.sid)

    def leave(self, member: Membership, now_ms: int, reason: int) -> Any:
        """Remove a member (its `left` says why); the session that left (None if it was
        not there)."""
        doc = member.doc
        session = doc.leave(member.sid, now_ms, reason)
        members = self.local.get(doc.doc_id)
        if members is not None:
            members.pop(member.sid, None)
        return session

    def members(self, doc_id: str) -> dict[int, Any] | None:
        """The document's local members (sid -> Client), None if it is not open here."""
        return self.local.get(doc_id)

    def drop(self, doc: Document) -> None:
        """Forget a document (its last local member left)."""
        if self.documents.get(doc.doc_id) is not doc:
            return
        del self.documents[doc.doc_id]
        del self.local[doc.doc_id]
        g = self.group_of.pop(doc, None)
        if g is not None:
            self.group_sizes[g] -= 1
            self.groups[g].discard(doc)
        for hook in self.on_drop:
            hook(doc)
