"""Start the relay: backends, hub, WebSocket server, ticker; stop it cleanly on a signal."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
from collections.abc import Callable

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.typing import Origin, Subprotocol

import relay
from relay.backends.base import Broker, PresenceStore
from relay.backends.memory import MemoryBroker, MemoryStore
from relay.config import PresenceConfig
from relay.core import protocol as p
from relay.core.session import OPEN
from relay.exceptions import ConfigError
from relay.server.connection import handle_connection
from relay.server.fastpath import RelayConnection
from relay.server.http import HttpRoutes, MetricsRoutes
from relay.server.hub import Hub
from relay.server.liveness import Liveness
from relay.server.metrics import WebhookCollector
from relay.server.sockets import abort
from relay.server.webhook_source import build_webhooks

log = logging.getLogger("relay")
# websockets logs through this logger, never below INFO: at DEBUG it writes request lines
# (query strings) and frames (a HELLO's token), which must never reach a log.
WS_LOG = logging.getLogger("relay.websockets")


def make_backends(config: PresenceConfig) -> tuple[PresenceStore, Broker]:
    if config.redis_url:
        from relay.backends.redis_broker import RedisBroker
        from relay.backends.redis_keys import new_node_id
        from relay.backends.redis_pool import RedisShared
        from relay.backends.redis_store import RedisStore

        try:
            shared = RedisShared(config.redis_url)
        except ValueError as exc:
            raise ConfigError(f"redis_url: {exc}") from None
        node_id = new_node_id()
        broker = RedisBroker(shared, node_id)
        store = RedisStore(shared, config, node_id, deliver_local=broker.deliver_local)
        broker.gate = store.writebehind  # a frame waits for the membership writes before it
        return store, broker
    return MemoryStore(), MemoryBroker()


def check_security(config: PresenceConfig) -> None:
    if config.jwt_secret is None:
        if not config.loopback:
            raise ConfigError(
                f"jwt_secret: required when listening on {config.host!r} (not loopback); "
                "anonymous HELLO is only allowed on 127.0.0.1 / ::1 / localhost"
            )
        log.warning(
            "DEVELOPMENT MODE: no jwt_secret configured, anonymous HELLO is accepted "
            "(listening on loopback %s only)",
            config.host,
        )


class Relay:
    """A running relay (used by the CLI and by tests that need one in-process)."""

    def __init__(
        self, config: PresenceConfig, backends: tuple[PresenceStore, Broker] | None = None
    ) -> None:
        check_security(config)
        self.config = config
        store, broker = backends if backends is not None else make_backends(config)
        self.hub = Hub(config, store, broker)
        # Webhooks (docs/webhooks.md): only with webhook_urls; no secret is a ConfigError.
        self.webhooks = build_webhooks(config, self.hub) if config.webhook_urls else None
        self.server: Server | None = None
        self.metrics_server: Server | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._liveness: asyncio.Task[None] | None = None
        self.liveness: Liveness | None = None

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    @property
    def metrics_port(self) -> int:
        assert self.metrics_server is not None
        return int(self.metrics_server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        cfg, hub = self.config, self.hub
        await hub.store.start()
        await hub.broker.start()

        async def handler(ws: ServerConnection) -> None:
            await handle_connection(ws, hub)

        WS_LOG.setLevel(logging.INFO if cfg.log_level == "debug" else logging.WARNING)
        routes = HttpRoutes(hub, relay.implementation)
        if self.webhooks is not None:
            routes.registry.register(WebhookCollector(self.webhooks))
            await self.webhooks.start()  # before the first member: no event is missed
        allowed = cfg.origins
        origins = None if allowed is None else [Origin(o) if o else None for o in allowed]
        self.server = await serve(
            handler,
            cfg.host,
            cfg.port,
            subprotocols=[Subprotocol(p.SUBPROTOCOL)],
            compression=None,  # permessage-deflate costs ~40 % CPU and doubles memory
            max_size=cfg.max_frame_bytes,
            origins=origins,  # a listed Origin or none at all; others get HTTP 403
            process_request=routes,
            # Keepalive is the relay's own (relay/server/liveness.py): it pings only the
            # connections that went quiet, and a missing pong marks the member DISCONNECTED.
            ping_interval=None,
            ping_timeout=None,
            # Closes the relay starts are cut short at close_timeout_s (sockets.close_within,
            # with SO_LINGER 0); websockets' own deadline is the backstop for the closes it
            # starts (keepalive timeout, protocol errors).
            close_timeout=cfg.close_timeout_s + 1.0,
            # websockets pauses writing above this and then waits for a drain inside close()
            # and ping(): for a peer that stopped reading, forever. The relay never awaits a
            # drain (a member past max_send_backlog is closed), so pausing must not start
            # below that.
            write_limit=2 * cfg.max_send_backlog,
            server_header=f"presence-relay/{relay.__version__}",
            create_connection=functools.partial(RelayConnection, hub=hub),  # type: ignore[arg-type]
            logger=WS_LOG,
            reuse_port=cfg.workers > 1,  # the workers share the port (docs/workers.md)
        )
        if cfg.metrics_port is not None:
            self.metrics_server = await serve(
                handler,
                cfg.metrics_host,
                cfg.metrics_port,
                process_request=MetricsRoutes(routes),
                logger=WS_LOG,
                server_header=f"presence-relay/{relay.__version__}",
            )
        loop = asyncio.get_running_loop()
        self._ticker = loop.create_task(hub.run_ticker())
        if cfg.liveness_timeout_ms > 0:
            self.liveness = Liveness(hub.sockets, cfg.liveness_timeout_ms, loop.time)
            self._liveness = loop.create_task(self.liveness.run())
        if hub.cluster is not None:
            hub.cluster.start()
        log.info(
            "presence-relay listening on ws://%s:%d/ws (%s core)",
            cfg.host,
            self.port,
            relay.implementation(),
        )

    async def stop(self) -> None:
        """Stop accepting, tell members the relay is going away (1001), flush, exit.

        Bounded whatever the clients do: a close that has not completed after
        `close_timeout_s` is aborted, and after one more second every socket still open
        (a handshake that never finished, a peer that never acknowledges) is aborted too.
        """
        hub = self.hub
        if self.metrics_server is not None:
            self.metrics_server.close()
            await self.metrics_server.wait_closed()
        if self.server is not None:
            clients = list(hub.clients)
            # Members set over HTTP live on this node only: they end with it (their next
            # PUT, to any node, brings them back).
            hub.agents.leave_all(p.SHUTDOWN)
            if hub.handover is not None and self.config.reconnect_grace_ms > 0:
                # On shared Redis a deploy is invisible: every session is held, its clients
                # resume through another node, and nobody sees anyone leave.
                try:
                    async with asyncio.timeout(self.config.close_timeout_s):
                        await hub.handover.suspend_all(self.config.reconnect_grace_ms)
                except Exception as exc:  # Redis down: the sessions end with the node
                    log.warning("shutdown: could not hand sessions over (%s)", exc)
                for client in clients:
                    if client.session.state == OPEN:  # not handed over (Redis failed)
                        hub.close_client(client, p.CLOSE_GOING_AWAY, "server shutting down")
                    else:  # held (or ended without documents): only the socket goes
                        hub.outlet.close(client, p.CLOSE_GOING_AWAY, "server restarting")
            else:
                for client in clients:
                    hub.close_client(client, p.CLOSE_GOING_AWAY, "server shutting down")
                hub.end_suspended(p.SHUTDOWN)  # held sessions die with this process
            hub.flush_all(hub.clock())  # publish the last events before the broker goes away
            self.server.close()  # stops accepting; closes the rest (mid-HELLO) with 1001
            try:
                async with asyncio.timeout(self.config.close_timeout_s + 1.0):
                    await self.server.wait_closed()
            except TimeoutError:
                log.warning(
                    "shutdown: aborting %d connections that did not close in time", len(hub.sockets)
                )
                for conn in list(hub.sockets):
                    abort(conn.transport)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(2.0):
                        await self.server.wait_closed()
        for task in (self._ticker, self._liveness):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if hub.cluster is not None:
            await hub.cluster.stop()
        await hub.broker.close()
        await hub.store.close()
        if self.webhooks is not None:  # last: every member has left (and been written)
            await self.webhooks.stop()


async def serve_forever(
    config: PresenceConfig,
    on_ready: Callable[[Relay], None] | None = None,
) -> None:
    relay_ = Relay(config)
    await relay_.start()
    if on_ready is not None:
        on_ready(relay_)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down")
    await relay_.stop()
