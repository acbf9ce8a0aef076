"""Inbound frames taken from the socket before websockets' per-message machinery.

websockets parses every frame (about 2 us), queues it, and wakes the handler task for each
message (several more us). For a relay whose inbound traffic is tiny binary frames, that is
most of the CPU per frame. `RelayConnection` keeps websockets for the handshake, control
frames, fragmentation, text frames and closing, and takes only what it can take safely:
whole, unfragmented, masked binary frames without RSV bits, within `max_frame_bytes`, while
the connection is OPEN, no extension is negotiated, and websockets holds no partial frame,
no fragmented message and no undelivered message (so frames are handled in arrival order).
Those frames are unmasked and applied synchronously by `Peer.feed_wire` (one compiled call per
read for a run of hot frames); what it does not apply goes to the hub. Every other
frame goes to websockets unchanged and whole: its parser never sees a partial frame from
us, so it can take over at any frame boundary.

Order with websockets' own path: a fragmented message keeps the fast path off from its first
fragment (`current_size` is set) until the handler has popped its last frame from websockets'
queue, and the handler hands it to the hub in the same step as that pop (`Assembler.get`
returns without awaiting once the last frame is there), so a later hot frame cannot overtake
it (`tests/test_fastpath.py::test_fragmented_message_keeps_order`).

Internals used (stable from websockets 13 to 17, pinned in pyproject): `data_received`,
`protocol.state`, `protocol.current_size`, `protocol.extensions`, `protocol.reader.buffer`,
`recv_messages.frames`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from websockets.asyncio.server import ServerConnection
from websockets.protocol import OPEN

from relay.core.wire import FRAME, frame_header, next_frame
from relay.twin import NEED_MORE, NOT_OURS

if TYPE_CHECKING:
    from relay.server.hub import Client, Hub


class RelayConnection(ServerConnection):
    """A ServerConnection whose hot inbound frames skip the asyncio message queue."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fast_hub: Hub | None = None
        self.fast_client: Client | None = None
        self.fast_max_payload = 0
        self._active = False  # our scanner owns the byte stream
        self._pending = b""  # a partial frame carried to the next read
        self.fast_bytes = 0  # bytes of frames taken by the fast path (for tests)

    def enable_fast_path(self, hub: Hub, client: Client, max_payload: int) -> None:
        """Start taking frames (after HELLO). Takes effect at the next clean frame boundary."""
        self.fast_hub = hub
        self.fast_client = client
        self.fast_max_payload = max_payload

    def _websockets_idle(self) -> bool:
        protocol = self.protocol
        return (
            protocol.state is OPEN
            and protocol.current_size is None
            and not protocol.extensions
            and not self.recv_messages.frames.queue
        )

    def data_received(self, data: bytes) -> None:
        if not self._active:
            if (self.fast_client is None or self.protocol.reader.buffer
                    or not self._websockets_idle()):
                super().data_received(data)
                return
            self._active = True
        buf = self._pending + data if self._pending else data
        self._pending = b""
        hub = self.fast_hub
        client = self.fast_client
        assert hub is not None and client is not None
        limit = self.fast_max_payload
        now = hub.clock()
        n = len(buf)
        i = 0
        while True:
            start = i
            if client.closing or client.held is not None:
                # The hub's per-frame path: it drops frames once a close has begun and holds
                # them (in order) while a clustered JOIN completes.
                i, kind, payload = next_frame(buf, i, limit)
                if kind == FRAME:
                    self.fast_bytes += i - start
                    hub.on_frame(client, payload)  # type: ignore[arg-type]
                    continue
            else:
                # The common case: one compiled call applies every hot frame of this read.
                i, kind, payload = client.peer.feed_wire(buf, i, limit, now)
                self.fast_bytes += i - start
                if kind != NEED_MORE and kind != NOT_OURS:
                    hub.on_unapplied(client, payload, kind, now)  # type: ignore[arg-type]
                    continue
            if kind == NEED_MORE:
                break
            # Not ours (control, text, fragment, RSV bits, unmasked, too big): it goes to
            # websockets whole. A frame too big (1009) or malformed ends the fast path:
            # websockets fails the connection and owns the rest of the stream.
            header = frame_header(buf, i)
            assert header is not None
            head, length = header
            if length > limit or not buf[i + 1] & 0x80 or buf[i] & 0x70:
                self._active = False
                super().data_received(buf[i:])
                return
            end = i + head + 4 + length
            if end > n:
                break
            super().data_received(buf[i:end])
            i = end
            if not self._websockets_idle():
                self._active = False  # closing, or a message is now in websockets' hands
                if i < n:
                    super().data_received(buf[i:])
                return
        if i < n:
            self._pending = buf[i:]
