"""The pure-Python twin of relay/_fast.pyx: the reference implementation of the hot path.

Same names, signatures, results and exceptions as the compiled module. Only the selector
(relay/twin.py) and the twin-parity tests import this module or relay._fast directly.
"""

from __future__ import annotations

from relay.core.document import NEVER, Batch, Document
from relay.core.model import Session
from relay.core.peer import FALLBACK, RATE_LIMITED, HotCounts, Membership, Peer
from relay.core.ratelimit import BadFrameWindow, TokenBucket
from relay.core.wire import NEED_MORE, NOT_OURS
from relay.exceptions import DocumentFull

IMPLEMENTATION = "pure"

__all__ = [
    "FALLBACK",
    "IMPLEMENTATION",
    "NEED_MORE",
    "NEVER",
    "NOT_OURS",
    "RATE_LIMITED",
    "BadFrameWindow",
    "Batch",
    "Document",
    "DocumentFull",
    "HotCounts",
    "Membership",
    "Peer",
    "Session",
    "TokenBucket",
]
