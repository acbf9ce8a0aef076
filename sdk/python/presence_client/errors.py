"""The SDK's exceptions, in one tree.

    RelayClientError            the base of every error the SDK raises
    ├── RelayError              the relay answered with ERROR `code` (a JOIN refused, ...)
    ├── ConnectionClosedError   the connection closed for good (fatal close, gave up)
    └── TokenProviderError      the token provider raised, timed out or returned no token

`protocol.DecodeError` (a payload that is not MessagePack) never leaves the SDK: such a
frame is logged and skipped.
"""

from __future__ import annotations


class RelayClientError(Exception):
    """Base class of the SDK's errors."""


class RelayError(RelayClientError):
    """The relay answered with ERROR `code` (the codes: `presence_client.protocol`)."""

    def __init__(self, code: int, message: str, handle: int | None = None) -> None:
        super().__init__(f"[{code}] {message}")
        self.code = code
        self.message = message
        self.handle = handle


class ConnectionClosedError(RelayClientError):
    """The connection closed and will not come back (fatal close code, reconnect disabled,
    or the relay could not be reached again). `code` is the WebSocket close code (1006 when
    the connection dropped without a close frame)."""

    def __init__(self, code: int | None, reason: str = "") -> None:
        super().__init__(f"connection closed: {code} {reason}".rstrip())
        self.code = code
        self.reason = reason


class TokenProviderError(RelayClientError):
    """The token provider raised, timed out or returned something other than a non-empty
    string. The message names only the exception's type (a provider's own message may quote
    a credential); the provider's exception is the `__cause__`."""
