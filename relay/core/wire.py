"""WebSocket frames of a client's byte stream, as the inbound fast path takes them (RFC 6455).

Sans-I/O: these functions read bytes already received and never touch a socket. The fast
path takes only whole, unfragmented, masked binary frames without RSV bits whose payload is
within the limit ("ours"); for anything else it stops at that frame's first byte and the
shell hands the rest to websockets. `Peer.feed_wire` (both twins) uses the same rules.
"""

from __future__ import annotations

NEED_MORE = -3  # the frame at the position is not whole yet (or its header is not)
NOT_OURS = -4  # the frame at the position is not one the fast path takes
FRAME = 0  # a whole frame of ours, unmasked (next_frame only)

OURS_FIRST_BYTE = 0x82  # FIN, no RSV bits, opcode 2 (binary)


def frame_header(buf: bytes, i: int) -> tuple[int, int] | None:
    """(header length without the mask, payload length) of the frame at i, None if partial."""
    n = len(buf) - i
    if n < 2:
        return None
    length = buf[i + 1] & 0x7F
    if length == 126:
        if n < 4:
            return None
        return 4, (buf[i + 2] << 8) | buf[i + 3]
    if length == 127:
        if n < 10:
            return None
        return 10, int.from_bytes(buf[i + 2 : i + 10], "big")
    return 2, length


def is_ours(buf: bytes, i: int, length: int, max_payload: int) -> bool:
    return buf[i] == OURS_FIRST_BYTE and bool(buf[i + 1] & 0x80) and length <= max_payload


def unmask(data: bytes, mask: bytes) -> bytes:
    """XOR with the 4-byte mask, as one big-integer operation (no per-byte Python loop)."""
    n = len(data)
    if n == 0:
        return b""
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")


def next_frame(buf: bytes, i: int, max_payload: int) -> tuple[int, int, bytes | None]:
    """One frame of ours at i: (end, FRAME, payload); else (i, NEED_MORE or NOT_OURS, None)."""
    header = frame_header(buf, i)
    if header is None:
        return i, NEED_MORE, None
    head, length = header
    if not is_ours(buf, i, length, max_payload):
        return i, NOT_OURS, None
    end = i + head + 4 + length
    if end > len(buf):
        return i, NEED_MORE, None
    return end, FRAME, unmask(buf[i + head + 4 : end], buf[i + head : i + head + 4])
