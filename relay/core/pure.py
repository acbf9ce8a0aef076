"""The pure-Python twin of relay/_fast.pyx: the reference implementation of the hot path.

Same names, signatures, results and exceptions as the compiled module. Only the selector
(relay/twin.py) and the twin-parity tests import this module or relay._fast directly.
"""

from __future__ import annotations

from relay.core.document import NEVER, Batch, Document, DocumentFull
from relay.core.model import Session
from relay.core.peer import FALLBACK, RATE_LIMITED, Membership, Peer
from relay.core.ratelimit import BadFrameWindow, TokenBucket

IMPLEMENTATION = "pure"

__all__ = [
    "FALLBACK",
    "IMPLEMENTATION",
    "NEVER",
    "RATE_LIMITED",
    "BadFrameWindow",
    "Batch",
    "Document",
    "DocumentFull",
    "Membership",
    "Peer",
    "Session",
    "TokenBucket",
]
