"""The two backend interfaces.

Both are called from the event loop and must never block it: writes are fire-and-forget
(a store queues them and flushes off the hot path), reads are coroutines used only on the
cold path (HTTP, joins).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, Protocol

from relay.core.model import SessionLike, UserPresenceSummary
from relay.core.recent import RecentUser

# Frames received from another node for a document: (doc_id, frame bytes, origin node id;
# "" for frames a node hands itself, e.g. its reaper's).
BrokerCallback = Callable[[str, bytes, str], None]


class NodeSetListener(Protocol):
    """What a broker tells about the other nodes of a document (the cluster listens)."""

    def node_hello(self, doc_id: str, origin: str) -> None:
        """`origin` opened the document or came back: it may have missed what happened
        meanwhile (its members come first, as a ROSTER)."""

    def node_roster(self, doc_id: str, origin: str, server_ms: int, members: list[Any]) -> None:
        """Every member `origin` owns in the document (MEMBER arrays), as of `server_ms`."""

    def node_gap(self, doc_id: str, cause: str) -> None:
        """Messages of the document were lost (`gap`), repeated (`duplicate`), or may have
        been (`reconnect`): re-read it."""


# Sids a node allocates on its own (the shared store was unreachable at the join) live far
# above the ones the store hands out, in a stripe the node holds alone (`fallback_stripe`),
# so they collide with neither those nor another node's. See docs/redis.md ("sid allocation").
FALLBACK_SID_BASE = 1 << 24
FALLBACK_STRIPES = 4096
FALLBACK_ROUNDS = 1_000_000  # (a stripe's count wraps here: every fallback sid is < 2^32)


def fallback_sid(stripe: int, n: int) -> int:
    """A stripe's `n`-th fallback sid. The stripes interleave (sid mod 4096 is the stripe),
    so each has room for every sid its node hands out, and the first 4096 of each stay
    below 2^25."""
    return FALLBACK_SID_BASE + (n % FALLBACK_ROUNDS) * FALLBACK_STRIPES + stripe


class PresenceStore(ABC):
    """Who is in which document, with their presence, durable enough for other services."""

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Connect and start background work."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Flush what can be flushed and release resources."""

    @abstractmethod
    def session_changed(self, doc_id: str, session: SessionLike) -> None:
        """A session joined or its presence changed. Must not block; may coalesce."""

    @abstractmethod
    def session_left(self, doc_id: str, session: SessionLike, reason: int = 0) -> None:
        """A session left the document (`reason`: the v1.1 leave reason). Must not block."""

    @abstractmethod
    async def document_users(self, doc_id: str) -> list[UserPresenceSummary]:
        """Distinct users present in the document (most recent activity per user)."""

    @abstractmethod
    async def workspace_documents(self, workspace_id: str) -> dict[str, int]:
        """Active documents of a workspace with their distinct-user counts."""

    async def ready(self) -> bool:
        """Whether the backend can serve right now (/readyz)."""
        return True

    def queue_depth(self) -> int:
        """Writes accepted but not yet stored."""
        return 0

    # Shared-state hooks (the Redis store). A store that is not `clustered` holds only this
    # node's sessions, and the hub joins synchronously without them.
    clustered = False

    async def load_members(self, doc_id: str) -> list[SessionLike]:
        """The document's sessions owned by OTHER nodes (`remote=True`), for the mirror."""
        return []

    async def allocate_sid(self, doc_id: str, floor: int) -> int | None:
        """A sid unique in the document across nodes and above `floor`; None = unavailable."""
        return None

    settle_s = 0.0  # how long after a restart `settled` may say False

    async def settled(self, doc_id: str) -> bool:
        """Whether a session the store lacks in the document is gone (False: the store may
        have restarted empty and not be rewritten by every node yet)."""
        return True

    async def load_recent(self, doc_id: str) -> list[RecentUser]:
        """The users who left the document lately, as every node recorded them (a store
        that is not shared has none: the node's own book, relay/server/recent.py, is all)."""
        return []

    # Sessions resumed across nodes (relay/backends/redis_resume.py): the records, and the
    # ownership moving without a `left` or a `joined`.
    resumes: Any = None
    handover_ms = 0

    def session_released(self, doc_id: str, session: SessionLike) -> None:  # noqa: B027
        """Another node took the session over: stop owning it, say nothing."""

    def session_adopted(self, doc_id: str, session: SessionLike, from_node: str) -> None:  # noqa: B027
        """This node took over a session `from_node` owned."""

    def reconcile_soon(self) -> None:  # noqa: B027 - optional hook
        """The shared store may have lost writes (it restarted, or failed over): rewrite
        this node's sessions and raise its counters."""

    def watch_sid_floors(self, floors: Callable[[], dict[str, int]]) -> None:  # noqa: B027
        """Where the store learns, per open document, the sid its counter must not fall
        below (every sid this node has seen there, its own and other nodes')."""

    def fallback_stripe(self) -> int:
        """The stripe of fallback sids this node holds alone (relay/backends/redis_stripes.py;
        a store that is not shared has only this node's sids: any stripe is its own)."""
        return 0


class Broker(ABC):
    """Cross-node fan-out of encoded BATCH frames, one channel per document."""

    node_id: str

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Connect and start background work."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Stop receiving and release resources."""

    @abstractmethod
    def subscribe(self, doc_id: str) -> None:
        """Start receiving other nodes' frames for the document (idempotent)."""

    @abstractmethod
    def unsubscribe(self, doc_id: str) -> None:
        """Stop receiving frames for the document (idempotent)."""

    @abstractmethod
    def publish(self, doc_id: str, frame: bytes) -> None:
        """Send a frame to the other nodes; never blocks, never delivers to this node."""

    @abstractmethod
    def set_callback(self, callback: BrokerCallback) -> None:
        """Where frames from other nodes go."""

    listener: NodeSetListener | None = None  # told of other nodes' HELLOs, ROSTERs, gaps

    async def join_nodes(self, doc_id: str) -> None:  # noqa: B027 - optional hook
        """Enter the document's set of nodes (after `ensure_subscribed`)."""

    def hello(self, doc_id: str, server_ms: int, members: list[Any]) -> None:  # noqa: B027
        """Tell the document's other nodes this one is in it, and the members it owns there
        (they answer with ROSTERs)."""

    async def refresh_nodes(self, doc_ids: list[str]) -> None:  # noqa: B027 - optional hook
        """Re-enter and re-read the node sets of these documents."""

    def send_roster(self, doc_id: str, server_ms: int, members: list[Any]) -> None:  # noqa: B027
        """Tell the document's other nodes every member this node owns there."""

    async def ready(self) -> bool:
        return True

    async def ensure_subscribed(self, doc_id: str) -> None:
        """`subscribe`, then wait (briefly) until frames for the document can arrive."""
        self.subscribe(doc_id)

    def set_reconnect_callback(self, callback: Callable[[], None]) -> None:  # noqa: B027
        """Called after a (re)connection, when frames may have been missed meanwhile."""
