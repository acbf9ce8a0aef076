"""Every exception the relay raises, in one tree.

    RelayException
    ├── ConfigError          an invalid setting; the message names it (also a ValueError)
    ├── AuthError            HELLO cannot be accepted: close 4401 (never says the token)
    ├── ProtocolError        a client frame answered with ERROR `code`; the connection stays
    ├── DocumentFull         the document cannot take this session: ERROR 5 (says which limit)
    └── BackendUnavailable   a read needs a backend that is unreachable now: HTTP 503

The bench (bench/: BenchError, BuildError, SetupError) and the Python SDK (its own
distribution, with its own tree in `presence_client.errors`) are outside this tree.
"""

from __future__ import annotations


class RelayException(Exception):
    """The base of every exception the relay raises on purpose."""


class ConfigError(RelayException, ValueError):
    """An invalid setting; the message names it."""


class AuthError(RelayException):
    """HELLO cannot be accepted (close 4401). The message never contains the token."""


class ProtocolError(RelayException):
    """A client frame the relay answers with ERROR `code` (the connection stays open)."""

    def __init__(self, code: int, message: str, handle: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.handle = handle


class DocumentFull(RelayException):
    """The document cannot take this session (ERROR 5); the message names the limit."""


class BackendUnavailable(RelayException):
    """A read needs a backend that is unreachable right now (HTTP answers 503)."""
