"""Inbound bytes: the relay frames the client's stream itself, from the first byte after the
HTTP request to the close.

websockets parses every frame (about 2 us), queues it, and wakes the handler task for each
message (several more us). For a relay whose inbound traffic is tiny binary frames, that is
most of the CPU per frame. So `RelayConnection` splits the stream into WebSocket frames
itself (`relay.core.wire`) and decides, one whole frame at a time, who takes it:

- hot frames (whole, unfragmented, masked binary frames without RSV bits, within
  `max_frame_bytes`) of a client past HELLO, while websockets holds no undelivered message
  and no fragmented one (so frames are handled in arrival order), are unmasked and applied
  synchronously by `Peer.feed_wire` (one compiled call per read for a run of them); what it
  does not apply goes to the hub;
- every other frame (control, text, fragments, anything before HELLO, anything while a
  message waits in websockets' queue or the connection closes) goes to websockets whole.

websockets' parser therefore only ever receives whole frames and is always at a frame
boundary when a read ends. (An earlier version let websockets parse until HELLO and took
over at the first read that found websockets' buffer empty; a buffer can be empty while
websockets' parser holds a frame header it already consumed, e.g. right after a text frame
or a pipelined HELLO + JOIN whose next header was split across reads, and the fast path
then parsed the middle of a frame: 1002.) The HTTP request ends at its first empty line
(websockets refuses requests with a body), found across reads. A frame websockets must fail
(too big: 1009; unmasked or RSV bits: 1002) hands websockets the rest of the stream.

Order with websockets' own path: a fragmented message keeps hot frames in websockets' hands
from its first fragment (`current_size` is set) until the handler has popped its last frame
from websockets' queue, and the handler hands it to the hub in the same step as that pop
(`Assembler.get` returns without awaiting once the last frame is there), so a later hot
frame cannot overtake it (`tests/test_fastpath.py::test_fragmented_message_keeps_order`).

The connection is counted (`hub.sockets`) from accept to close, HELLO or not, and its kernel
send buffer is fixed at accept (`relay.server.sockets`). Anything websockets writes on its
own (pongs, close frames) is checked against `max_send_backlog` like the hub's writes.

Internals used (stable from websockets 13 to 17, pinned in pyproject): `data_received`,
`connection_made`/`connection_lost`, `protocol.state`, `protocol.current_size`,
`protocol.extensions`, `recv_messages.frames`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from websockets.asyncio.server import ServerConnection
from websockets.protocol import CONNECTING, OPEN

from relay.core import protocol as p
from relay.core.wire import FRAME, frame_header, next_frame
from relay.server import httpbody
from relay.server.sockets import prepare_socket, unsent_bytes
from relay.twin import NEED_MORE, NOT_OURS

if TYPE_CHECKING:
    from relay.core.session import Session
    from relay.server.client import Client
    from relay.server.hub import Hub

log = logging.getLogger("relay.http")

SESSION_OPEN = 1  # relay.core.session.OPEN (read on every read: a module global is quicker)

REQUEST_END = b"\r\n\r\n"
HOLD_LIMIT = 65536  # bytes a client may send before its handshake completes (then: paused)


class RelayConnection(ServerConnection):
    """A ServerConnection that frames its inbound stream and applies hot frames directly."""

    def __init__(self, *args: Any, hub: Hub, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.hub = hub
        self.fast_client: Client | None = None
        self.fast_session: Session | None = None
        self.max_payload = hub.config.max_frame_bytes
        self.fd = -1
        self._clear = False  # websockets was idle when last asked and got nothing since
        self._framing = False  # the HTTP request is over: the stream is frames now
        self._handed_over = False  # websockets failed the stream and owns the rest
        self._tail = b""  # the request's last bytes so far (its end may span two reads)
        self._pending = b""  # a partial frame carried to the next read
        # A PUT/DELETE (relay/server/httpbody.py): None until the first bytes tell, then
        # the bytes so far (answered here) or False (a request for websockets).
        self._body_request: bytearray | bool | None = None
        self._paused = False  # reading paused: too much sent before the handshake completed
        self.bytes_in = 0  # every byte received (keepalive reads it; tests wait on it)
        # Keepalive's bookkeeping (relay/server/liveness.py): the count it last saw, when
        # it changed, and whether a ping is out.
        self.heard_bytes = 0
        self.heard_at = 0.0
        self.pinged = False
        self.fast_bytes = 0  # bytes of frames taken by the fast path (for tests)
        self.pongs = 0  # pongs dropped here (keepalive's answers)

    # ------------------------------------------------------------ lifecycle

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        cfg = self.hub.config
        self.fd = prepare_socket(transport, cfg.socket_send_buffer, cfg.tcp_user_timeout_ms)
        self.heard_at = asyncio.get_running_loop().time()
        self.hub.sockets.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.hub.sockets.discard(self)
        super().connection_lost(exc)

    async def handshake(self, *args: Any, **kwargs: Any) -> None:
        try:
            await super().handshake(*args, **kwargs)
        finally:
            self._handshake_done()

    def _handshake_done(self) -> None:
        """Frames that came with the request are handled once the handshake is answered
        (websockets alone would parse them at once, and could answer a pipelined ping
        before the 101 response)."""
        held, self._pending = self._pending, b""
        if self._paused:
            self._paused = False
            self.transport.resume_reading()
        if held and self.protocol.state is OPEN:
            self._frames(held)

    def enable_fast_path(self, client: Client | None) -> None:
        """After HELLO: this client's hot frames may skip websockets from the next frame on
        (None once the handler is done: what still arrives goes to websockets)."""
        self.fast_client = client
        self.fast_session = client.session if client is not None else None

    # ------------------------------------------------------------ inbound

    def data_received(self, data: bytes) -> None:
        self.bytes_in += len(data)
        session = self.fast_session
        if (
            session is not None
            and self._clear
            and self._framing
            and session.state == SESSION_OPEN
            and session.held is None
        ):
            # The common case, kept to one compiled call: every hot frame of this read. (A
            # session is set only after HELLO, so the handshake is over: no state to check.)
            buf = self._pending + data if self._pending else data
            now = self.hub.clock()
            i, kind, payload = session.peer.feed_wire(buf, 0, self.max_payload, now)
            self.fast_bytes += i
            if kind == NEED_MORE:
                self._pending = buf[i:] if i < len(buf) else b""
                return
            if kind != NOT_OURS:
                assert self.fast_client is not None and payload is not None
                self.hub.on_unapplied(self.fast_client, payload, kind, now)
            self._frames(buf, i)
        elif self._framing:
            self._frames(self._pending + data if self._pending else data)
        elif self._handed_over:
            self._to_websockets(data)
        elif self._body_request is not False:
            self._body(data)
        else:
            self._request(data)

    def _body(self, data: bytes) -> None:
        """The first bytes decide: a PUT or DELETE is read and answered here (websockets
        refuses request bodies), anything else goes to websockets as before."""
        buf = self._body_request
        if buf is None:
            claimed = httpbody.claims(data)
            if claimed is False:
                self._body_request = False
                self._request(data)
                return
            buf = self._body_request = bytearray()
        assert isinstance(buf, bytearray)
        buf += data
        claimed = httpbody.claims(bytes(buf[: httpbody.SNIFF]))
        if claimed is None:
            return  # too few bytes yet to tell
        if claimed is False:
            self._body_request = False
            self._request(bytes(buf))
            return
        try:
            req = httpbody.parse(bytes(buf))
        except httpbody.BadRequest as exc:
            self._body_request = bytearray()  # nothing more is read into it
            self._reply(httpbody.error(exc.status, exc.message))
            return
        if req is None:
            return
        self.transport.pause_reading()  # one request per connection
        task = asyncio.get_running_loop().create_task(
            httpbody.answer(self.hub, req, self.transport.get_extra_info("peername"))
        )
        task.add_done_callback(self._answered)

    def _answered(self, task: asyncio.Task[bytes]) -> None:
        try:
            answer = task.result()
        except Exception:
            log.exception("answering a members request failed")
            answer = httpbody.response(503, b'{"error": "failed; try again"}')
        self._reply(answer)

    def _reply(self, answer: bytes) -> None:
        if not self.transport.is_closing():
            self.transport.write(answer)
            self.transport.close()

    def _request(self, data: bytes) -> None:
        """HTTP request bytes go to websockets as they come; frames start after its end."""
        seen = self._tail + data
        i = seen.find(REQUEST_END)
        if i < 0:
            self._tail = seen[-3:]
            super().data_received(data)
            return
        end = i + len(REQUEST_END) - len(self._tail)
        self._tail = b""
        self._framing = True
        super().data_received(data[:end])
        if end < len(data):
            self._frames(data[end:])

    def _websockets_idle(self) -> bool:
        """No message in websockets' hands (asked again only after it was given a frame)."""
        protocol = self.protocol
        self._clear = (
            protocol.state is OPEN
            and protocol.current_size is None
            and not protocol.extensions
            and not self.recv_messages.frames.queue
        )
        return self._clear

    def _frames(self, buf: bytes, i: int = 0) -> None:
        """Every frame of `buf` from `i` on, each to the fast path or to websockets."""
        if self.protocol.state is CONNECTING:  # handled once the handshake is answered
            self._pending = buf[i:]
            if len(self._pending) > HOLD_LIMIT and not self._paused:
                self._paused = True
                self.transport.pause_reading()
            return
        self._pending = b""
        limit = self.max_payload
        n = len(buf)
        while i < n:
            client = self.fast_client
            session = self.fast_session
            if (
                client is not None
                and session is not None
                and session.state == SESSION_OPEN
                and (self._clear or self._websockets_idle())
            ):
                hub = self.hub
                now = hub.clock()
                start = i
                if session.held is not None:
                    # A join is completing: the session holds frames, in order.
                    i, kind, payload = next_frame(buf, i, limit)
                    if kind == FRAME:
                        assert payload is not None
                        self.fast_bytes += i - start
                        hub.receive(client, payload)
                        continue
                else:
                    # The common case: one compiled call applies every hot frame here.
                    i, kind, payload = session.peer.feed_wire(buf, i, limit, now)
                    self.fast_bytes += i - start
                    if kind != NEED_MORE and kind != NOT_OURS:
                        assert payload is not None
                        hub.on_unapplied(client, payload, kind, now)
                        continue
                if kind == NEED_MORE:
                    break
            # websockets' turn: one whole frame (or, for a frame it must fail, the rest).
            header = frame_header(buf, i)
            if header is None:
                break
            head, length = header
            if length > limit or not buf[i + 1] & 0x80 or buf[i] & 0x70:
                self._framing = False
                self._handed_over = True
                self._to_websockets(buf[i:])
                return
            end = i + head + 4 + length
            if end > n:
                break
            if buf[i] == 0x8A:
                # A whole pong: the answer to keepalive (liveness.py), which counted its
                # bytes already. The relay never awaits a pong of websockets' own, so
                # there is nothing for websockets to do with it: not parsing it there
                # halves what an idle member costs.
                self.pongs += 1
                i = end
                continue
            self._to_websockets(buf[i:end])
            i = end
        if i < n:
            self._pending = buf[i:]

    def _to_websockets(self, data: bytes) -> None:
        self._clear = False
        super().data_received(data)
        # websockets may have answered (a pong, a close frame): the backlog rule holds for
        # what it writes too, or a client that pings without reading grows our buffer.
        client = self.fast_client
        if client is not None and not client.closing:
            limit = self.hub.config.max_send_backlog
            if unsent_bytes(self.transport, self.fd) > limit:
                self.hub.close_client(client, p.CLOSE_TOO_SLOW, "send backlog exceeded")
