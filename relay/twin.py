"""Selects the twin of the hot path this process runs: compiled (relay._fast) or pure.

`RELAY_NO_EXTENSIONS=1` forces the pure twin. Otherwise the compiled module is expected;
if it is missing (a source checkout that was never built), the pure twin runs and a warning
says so once: `relay.implementation()` and the `presence_relay_implementation_info` metric
report which one is live, and the test suite fails when the compiled one did not load.

For the type checker both twins are the one interface of relay/_fast.pyi (tests/test_twins.py
holds them to it), so code that uses the twin is checked once, against that.
"""

from __future__ import annotations

import os
import warnings
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from relay._fast import (
        FALLBACK,
        IMPLEMENTATION,
        NEED_MORE,
        NEVER,
        NOT_OURS,
        RATE_LIMITED,
        BadFrameWindow,
        Batch,
        Document,
        DocumentFull,
        HotCounts,
        Membership,
        Peer,
        Session,
        TokenBucket,
    )
elif os.environ.get("RELAY_NO_EXTENSIONS") == "1":
    from relay.core.pure import *  # noqa: F403
    from relay.core.pure import IMPLEMENTATION
else:
    try:
        from relay._fast import *  # noqa: F403
        from relay._fast import IMPLEMENTATION
    except ImportError as exc:  # not built: run, but never silently
        warnings.warn(
            f"relay._fast is not built ({exc}); running the pure-Python hot path. "
            "Build it with `pip install -e .` or set RELAY_NO_EXTENSIONS=1.",
            RuntimeWarning,
            stacklevel=2,
        )
        from relay.core.pure import *  # noqa: F403
        from relay.core.pure import IMPLEMENTATION

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
