"""Sockets: what a member has not received yet, and closes with a deadline.

Unsent bytes are the transport's buffer plus the kernel's send queue. The kernel queue is
kept small and fixed (`socket_send_buffer`, set as SO_SNDBUF when the connection is
accepted; Linux would otherwise let it grow to several MiB for a member that stopped
reading, where a check of the transport's buffer alone never looks). While the kernel
accepts everything, the transport's buffer is empty and the kernel holds at most that
fixed amount; once it is full, bytes pile up in the transport's buffer. So the kernel
queue (`SIOCOUTQ`, one ioctl) is read only for a member that has bytes in the transport's
buffer: a healthy member costs one call that returns 0, not a syscall per batch.

A close never waits on the peer: `close_within` starts websockets' closing handshake and,
when it has not completed by the deadline (a peer that does not read never lets the close
frame out), aborts the socket with SO_LINGER 0, so the kernel drops its queue at once
instead of keeping an orphan socket and its buffers alive against a zero window.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import socket
import struct
import sys
from typing import Any

from websockets.asyncio.connection import Connection

log = logging.getLogger("relay.outlet")

# SIOCOUTQ (Linux: bytes the peer has not acknowledged) has the number of TIOCOUTQ.
_SIOCOUTQ: int | None = 0x5411 if sys.platform.startswith("linux") else None
_LINGER_ABORT = struct.pack("ii", 1, 0)


def kernel_queue(fd: int) -> int:
    """Bytes in the kernel's send queue of socket `fd` not yet acknowledged by the peer."""
    if _SIOCOUTQ is None or fd < 0:
        return 0
    try:
        raw = fcntl.ioctl(fd, _SIOCOUTQ, b"\0\0\0\0")
    except OSError:  # closed meanwhile
        return 0
    return int(struct.unpack("i", raw)[0])


def unsent_bytes(transport: Any, fd: int) -> int:
    """The transport's buffer, plus the kernel's queue when the transport holds any."""
    n: int = transport.get_write_buffer_size()
    if n:
        n += kernel_queue(fd)
    return n


def prepare_socket(transport: Any, send_buffer: int, user_timeout_ms: int) -> int:
    """At accept: fix the kernel send buffer, and (when > 0) the time the kernel waits for
    the peer to acknowledge data before it drops the connection (TCP_USER_TIMEOUT, which
    also covers a zero window): a socket websockets aborts (keepalive timeout) with bytes
    still queued is then not kept by the kernel for minutes. Returns the socket's fd (-1 if
    there is none)."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return -1
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)
    if user_timeout_ms > 0 and hasattr(socket, "TCP_USER_TIMEOUT"):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, user_timeout_ms)
    try:
        return int(sock.fileno())
    except (OSError, ValueError):
        return -1


def abort(transport: Any) -> None:
    """Drop the connection now: RST, and the kernel frees its queue (no orphan socket)."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError, ValueError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ABORT)
    transport.abort()


async def close_within(ws: Connection, code: int, reason: str, timeout: float) -> None:
    """websockets' closing handshake, cut short by an abort after `timeout` seconds."""
    try:
        async with asyncio.timeout(timeout):
            await ws.close(code, reason)
    except TimeoutError:
        log.debug("close %d did not complete in %.1f s: aborting", code, timeout)
        abort(ws.transport)
