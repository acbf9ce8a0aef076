"""One WebSocket connection: every message into the hub until it closes.

The session (relay/core/session.py, through the hub) holds the rules, HELLO included: this
handler only moves messages. Whatever happens (an exception anywhere, a close from either
side), the `finally` releases the client: its documents, its timer, its place in
`hub.clients`. The socket itself is counted from accept to close by `RelayConnection`.
"""

from __future__ import annotations

import asyncio

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from relay.server.fastpath import RelayConnection
from relay.server.hub import Hub


async def handle_connection(ws: ServerConnection, hub: Hub) -> None:
    client = hub.open_session(ws)
    receive, receive_text = hub.receive, hub.receive_text
    try:
        async for message in ws:
            if type(message) is bytes:
                receive(client, message)
            else:
                receive_text(client)
            if client.closing:
                break
    except ConnectionClosed:
        pass
    finally:
        if isinstance(ws, RelayConnection):
            ws.enable_fast_path(None)
        hub.disconnect(client)
    if client.close_task is not None:
        await asyncio.shield(client.close_task)
