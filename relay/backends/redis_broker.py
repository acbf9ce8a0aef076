"""`RedisBroker`: cross-node fan-out over Redis pub/sub, one channel per document.

- `publish` never awaits: frames go on a bounded deque that a publisher task drains into
  pipelined PUBLISH round trips. A message is `<node id>|<BATCH frame>`; a node drops its
  own messages and hands the frame bytes, unchanged, to the hub.
- A supervisor task owns the one pub/sub connection: it subscribes to the channels of the
  documents this node has members in, reads messages, and when the connection breaks it
  rebuilds it with backoff, resubscribes to everything, and tells the hub (which then
  re-reads the documents' members from Redis: frames sent meanwhile were lost).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

from redis.asyncio.client import PubSub
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

from relay.backends import redis_cluster, redis_pool
from relay.backends import redis_keys as k
from relay.backends.base import Broker, BrokerCallback
from relay.backends.redis_pool import RedisShared

log = logging.getLogger("relay.redis.broker")

PREFIX = k.CHANNEL_PREFIX.encode()


class RedisBroker(Broker):
    def __init__(
        self,
        shared: RedisShared,
        node_id: str,
        max_pending: int = 10_000,
        subscribe_timeout: float = 1.0,
    ) -> None:
        self.shared = shared
        self.redis = shared.acquire()
        self.node_id = node_id
        self._nid = node_id.encode()
        self.subscribe_timeout = subscribe_timeout
        self._callback: BrokerCallback | None = None
        self._on_reconnect: Callable[[], None] | None = None
        self._wanted: set[str] = set()
        self._confirmed: set[str] = set()
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._changed = asyncio.Event()
        self._outbox: deque[tuple[str, bytes]] = deque(maxlen=max_pending)
        self._out_wake = asyncio.Event()
        self._connected = False
        self._in_flight = 0
        self._connections = 0
        self._tasks: list[asyncio.Task[None]] = []
        self.published = 0
        self.received = 0
        self.dropped = 0

    # ------------------------------------------------------------ interface

    def set_callback(self, callback: BrokerCallback) -> None:
        self._callback = callback

    def set_reconnect_callback(self, callback: Callable[[], None]) -> None:
        self._on_reconnect = callback

    def deliver_local(self, doc_id: str, frame: bytes) -> None:
        """Hand a frame to this node's hub as if another node had sent it (reaper output)."""
        if self._callback is not None:
            self._callback(doc_id, frame)

    def subscribe(self, doc_id: str) -> None:
        if doc_id not in self._wanted:
            self._wanted.add(doc_id)
            self._changed.set()

    def unsubscribe(self, doc_id: str) -> None:
        if doc_id in self._wanted:
            self._wanted.discard(doc_id)
            self._changed.set()

    async def ensure_subscribed(self, doc_id: str) -> None:
        self.subscribe(doc_id)
        if doc_id in self._confirmed or not self._connected:
            return  # down: don't hold the join; the reconnect resync catches up
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(doc_id, []).append(fut)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(fut, self.subscribe_timeout)

    def publish(self, doc_id: str, frame: bytes) -> None:
        if len(self._outbox) == self._outbox.maxlen:
            self.dropped += 1
        self._outbox.append((doc_id, frame))
        self._out_wake.set()

    async def ready(self) -> bool:
        return self._connected

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._supervise()), loop.create_task(self._publisher())]

    async def close(self) -> None:
        # Drain what the hub published last (the `left` events of a graceful shutdown).
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2.0):
                while (
                    (self._outbox or self._in_flight) and self._tasks and not self._tasks[1].done()
                ):
                    await asyncio.sleep(0.01)
        await redis_pool.stop_tasks(self._tasks)
        self._tasks = []
        self._release_waiters()
        await self.shared.release()

    # ------------------------------------------------------------ publishing

    async def _publisher(self) -> None:
        backoff = 0.1
        out = self._outbox
        while True:
            redis_pool.check_cancelled()
            await self._out_wake.wait()
            self._out_wake.clear()
            while out:
                n = min(len(out), 500)
                batch = [out.popleft() for _ in range(n)]
                pipe = self.redis.pipeline(transaction=False)
                for doc_id, frame in batch:
                    self._send(pipe, k.channel(doc_id), k.envelope(self._nid, frame))
                self._in_flight = n
                try:
                    await pipe.execute()
                    self.published += n
                    backoff = 0.1
                except (RedisError, OSError) as exc:
                    if redis_pool.cancelling():
                        raise asyncio.CancelledError from None
                    # Real-time frames go stale fast: drop them (and what queued meanwhile);
                    # the reconnect resync and the store's re-announce repair the views.
                    self.dropped += n + len(out)
                    out.clear()
                    log.debug("publish failed (%s); dropped frames", exc)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 2.0)
                finally:
                    self._in_flight = 0

    def _send(self, pipe: Any, channel: str, data: bytes) -> None:
        """PUBLISH, or on a Redis Cluster SPUBLISH (sharded: only the shard owning the
        channel's slot carries it; docs/redis.md, "Cluster")."""
        redis_cluster.publish(pipe, channel, data)

    # ------------------------------------------------------------ subscribing

    def _release_waiters(self, doc_ids: set[str] | None = None) -> None:
        for doc_id in list(self._waiters) if doc_ids is None else list(doc_ids):
            for fut in self._waiters.pop(doc_id, []):
                if not fut.done():
                    fut.set_result(None)

    def _subscriber(self, rebuild: bool) -> redis_cluster.Subscriber:
        """Classic channels on one Redis; sharded ones (SSUBSCRIBE) on a Redis Cluster, where
        a rebuild first re-reads the slot map (a failover or a reshard may have moved them)."""
        if isinstance(self.redis, RedisCluster):
            return redis_cluster.ShardedSubscriber(self.redis, refresh=rebuild)
        return redis_cluster.ChannelSubscriber(self.redis)

    async def _supervise(self) -> None:
        backoff = 0.1
        rebuild = False
        while True:
            redis_pool.check_cancelled()
            sub = self._subscriber(rebuild)
            rebuild = True
            reader: asyncio.Task[None] | None = None
            try:
                await sub.connect(self._on_connect)
                requested: set[str] = set()
                if self._wanted:
                    requested = set(self._wanted)
                    await sub.subscribe([k.channel(d) for d in requested])
                await self._on_connect(None)
                await self.shared.check_mode()
                backoff = 0.1
                reader = asyncio.get_running_loop().create_task(sub.read(self._read))
                while True:
                    redis_pool.check_cancelled()
                    self._changed.clear()
                    add = self._wanted - requested
                    remove = requested - self._wanted
                    if add:
                        requested |= add
                        await sub.subscribe([k.channel(d) for d in add])
                    if remove:
                        requested -= remove
                        self._confirmed -= remove
                        await sub.unsubscribe([k.channel(d) for d in remove])
                    changed = asyncio.ensure_future(self._changed.wait())
                    done, _ = await asyncio.wait(
                        {changed, reader}, return_when=asyncio.FIRST_COMPLETED
                    )
                    if reader in done:
                        changed.cancel()
                        reader.result()  # raises what broke the connection
                        raise ConnectionError("pub/sub reader stopped")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if redis_pool.cancelling():
                    raise asyncio.CancelledError from None
                if self._connected:
                    log.warning(
                        "redis pub/sub lost (%s: %s); resubscribing with backoff",
                        type(exc).__name__,
                        exc,
                    )
                self._connected = False
                self._confirmed.clear()
                self._release_waiters()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
            finally:
                if reader is not None:
                    reader.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await reader
                await sub.aclose()

    async def _on_connect(self, connection: Any) -> None:
        """A (re)connected pub/sub connection: anything published meanwhile was missed."""
        self._connected = True
        self._connections += 1
        if self._on_reconnect is not None:
            asyncio.get_running_loop().call_soon(self._on_reconnect)

    async def _read(self, ps: PubSub) -> None:
        callback_nid = self._nid
        plen = len(PREFIX)
        while True:
            redis_pool.check_cancelled()
            msg = await ps.get_message(timeout=1.0)
            if msg is None:
                continue
            kind = msg["type"]
            if kind == "message":
                opened = k.open_envelope(msg["data"])
                if opened is None or opened[0] == callback_nid:
                    continue  # malformed, or our own
                self.received += 1
                cb = self._callback
                if cb is not None:
                    doc_id = msg["channel"][plen:].decode()
                    try:
                        cb(doc_id, opened[1])
                    except Exception:
                        log.exception("remote frame handler failed")
            elif kind == "subscribe":
                doc_id = msg["channel"][plen:].decode()
                if doc_id in self._wanted:
                    self._confirmed.add(doc_id)
                self._release_waiters({doc_id})
            elif kind == "unsubscribe":
                self._confirmed.discard(msg["channel"][plen:].decode())
