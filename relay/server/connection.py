"""One WebSocket connection: HELLO, then frames into the hub until it closes.

Whatever happens after the hub registered the client (an exception anywhere, a close from
either side), the `finally` releases it: its documents, its expiry timer, its place in
`hub.clients`. The socket itself is counted from accept to close by `RelayConnection`.
"""

from __future__ import annotations

import asyncio
import logging

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from relay.auth import Grant, anonymous_grant, verify_token
from relay.core import protocol as p
from relay.core.colors import preferred_color
from relay.exceptions import AuthError
from relay.server.fastpath import RelayConnection
from relay.server.hub import Hub
from relay.server.outlet import close_within

log = logging.getLogger("relay.connection")


def authenticate(hub: Hub, token: str | None, info: dict[object, object]) -> Grant:
    secret = hub.config.jwt_secret
    if secret is None:
        if token is not None:
            raise AuthError("this relay runs without a JWT secret: send a nil token")
        return anonymous_grant(info)
    if token is None:
        raise AuthError("a token is required")
    return verify_token(token, secret)


async def _refuse(ws: ServerConnection, hub: Hub, code: int, reason: str) -> None:
    hub.stats.close(code)
    await close_within(ws, code, reason, hub.config.close_timeout_s)


async def handle_connection(ws: ServerConnection, hub: Hub) -> None:
    cfg = hub.config
    try:
        first = await asyncio.wait_for(ws.recv(), cfg.auth_timeout_ms / 1000)
    except TimeoutError:
        return await _refuse(ws, hub, p.CLOSE_UNAUTHENTICATED, "no HELLO in time")
    except ConnectionClosed:
        return
    if not isinstance(first, bytes):
        return await _refuse(ws, hub, p.CLOSE_UNAUTHENTICATED, "the first frame must be HELLO")
    try:
        hello = p.decode_client_frame(first)
    except p.ProtocolError:
        hello = None
    if hello is None or hello[0] != p.HELLO:
        return await _refuse(ws, hub, p.CLOSE_UNAUTHENTICATED, "the first frame must be HELLO")
    if hello[1] != p.VERSION:
        return await _refuse(ws, hub, p.CLOSE_PROTOCOL, f"unsupported version; speaks {p.VERSION}")
    try:
        grant = authenticate(hub, hello[2], hello[3])
    except AuthError as exc:  # the message never includes the token itself
        if hub.refusals.allow():
            log.info("refused HELLO from %s: %s", ws.remote_address, exc)
        return await _refuse(ws, hub, p.CLOSE_UNAUTHENTICATED, str(exc)[:120])

    client = hub.connect(ws, grant)
    try:
        user = grant.user
        client.send(
            p.encode_welcome(
                client.connection_id,
                {
                    "id": user.user_id,
                    "name": user.name,
                    "avatar": user.avatar_url,
                    "color": preferred_color(user.user_id),
                    "workspace": user.workspace_id,
                },
                hub.clock(),
                cfg.welcome_settings(),
            )
        )
        on_frame = hub.on_frame
        if isinstance(ws, RelayConnection):
            # From here on, whole binary frames go straight from the socket to the hub; the
            # loop below still gets whatever websockets delivers (text, fragmented messages).
            ws.enable_fast_path(client)
        async for message in ws:
            if type(message) is bytes:
                on_frame(client, message)
            else:
                hub.on_text(client)
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
