"""`RedisBroker`: cross-node fan-out over Redis pub/sub, one channel per document.

- `publish` never awaits: frames go on a bounded deque that a publisher task drains into
  pipelined PUBLISH round trips. A message is `<node id>;<seq>|<BATCH frame>` (redis_keys:
  `envelope`); a node drops its own messages and hands the frame bytes, unchanged, to the
  hub. Before sending a frame the publisher waits for the membership writes queued before
  it (`gate`: redis_writebehind's barrier), so a `joined` never outruns its record.
- Who listens: `presence:<doc>:nodes` is the set of nodes that have the document open. A
  node opening a document subscribes, adds itself, reads the set, then says HELLO on the
  channel; the nodes there answer with a ROSTER of their members (what it may have missed
  between its read of the store and their hearing of it). A document's batches are
  published only while another node is known to be in it (`others`), so a document whose
  members are all on one node costs Redis nothing per batch.
- Gaps: every message a node sends on a document's channel carries the next number of its
  sequence for that document; a receiver that sees one skipped or repeated tells the
  listener (the cluster re-reads the document and sends its members the difference).
- A supervisor task owns the one pub/sub connection: it subscribes to the channels of the
  documents this node has members in, reads messages, and when the connection breaks it
  rebuilds it with backoff, resubscribes to everything, and tells the hub (which then
  re-reads the documents' members from Redis: frames sent meanwhile were lost). On a Redis
  Cluster the channels are sharded (SPUBLISH / SSUBSCRIBE, one connection per primary:
  redis_cluster.ShardedSubscriber), and one that breaks or moves rebuilds them all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

import msgpack
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

from relay.backends import redis_cluster, redis_pool
from relay.backends import redis_keys as k
from relay.backends.base import Broker, BrokerCallback, NodeSetListener
from relay.backends.redis_pool import RedisShared

log = logging.getLogger("relay.redis.broker")

PREFIX = k.CHANNEL_PREFIX.encode()
# A node message's 2nd and 3rd bytes (its code, a msgpack uint8): no frame starts so (a
# BATCH is `94 22`, a control-channel message a map).
NODE_CODES = {b"\xcc" + bytes([c]) for c in (k.NODE_HELLO, k.NODE_ROSTER, k.NODE_BYE)}
BYE = msgpack.packb([k.NODE_BYE])
REFRESH_CHUNK = 200  # documents per round trip of a node-set refresh (a big one stalls the loop)
NODE_SET_TTL_MS = 86_400_000  # a document's node set outlives its last refresh by a day
GATE_TIMEOUT_S = 0.5  # the longest a frame waits for the membership writes before it


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
        # (doc, message, membership mark, leaving the node set): what the publisher sends.
        self._outbox: deque[tuple[str, bytes, int, bool]] = deque(maxlen=max_pending)
        self._out_wake = asyncio.Event()
        self._connected = False
        self._in_flight = 0
        self._connections = 0
        self._tasks: list[asyncio.Task[None]] = []
        self.published = 0
        self.received = 0
        self.dropped = 0
        self.skipped = 0  # batches not published: no other node had the document open
        self.gaps = 0  # messages found missing or repeated in another node's sequence
        # The barrier: membership writes a frame must not outrun (set by make_backends).
        self.gate: Any = None
        self.listener: NodeSetListener | None = None
        self._seq: dict[str, int] = {}  # doc -> the last sequence number sent
        self._heard: dict[tuple[str, bytes], int] = {}  # (doc, origin) -> last seq heard
        # doc -> the other nodes known to have it open; absent: not known yet (publish).
        self.others: dict[str, set[bytes]] = {}

    # ------------------------------------------------------------ interface

    def set_callback(self, callback: BrokerCallback) -> None:
        self._callback = callback

    def set_reconnect_callback(self, callback: Callable[[], None]) -> None:
        self._on_reconnect = callback

    def deliver_local(self, doc_id: str, frame: bytes) -> None:
        """Hand a frame to this node's hub as if another node had sent it (reaper output)."""
        if self._callback is not None:
            self._callback(doc_id, frame, "")

    def subscribe(self, doc_id: str) -> None:
        if doc_id not in self._wanted:
            self._wanted.add(doc_id)
            self._changed.set()

    def unsubscribe(self, doc_id: str) -> None:
        if doc_id in self._wanted:
            self._wanted.discard(doc_id)
            self._changed.set()
        if self.others.pop(doc_id, None) is not None or doc_id in self._seq:
            self._send_own(doc_id, BYE, leaving=True)
        self._seq.pop(doc_id, None)
        for key in [key for key in self._heard if key[0] == doc_id]:
            del self._heard[key]

    async def join_nodes(self, doc_id: str) -> None:
        """Enter the document's node set (after the subscription, before reading the
        store: see the module's docstring) and learn who else is in it. Redis unreachable:
        the node publishes everything, as if others were there."""
        if not self._connected:
            return  # down: don't hold the join (the reconnect re-enters every node set)
        key = k.nodes_key(doc_id)
        try:
            pipe = self.redis.pipeline(transaction=False)
            pipe.sadd(key, self.node_id)
            pipe.pexpire(key, NODE_SET_TTL_MS)
            pipe.smembers(key)
            async with asyncio.timeout(self.subscribe_timeout):
                *_, members = await pipe.execute()
        except (RedisError, OSError, TimeoutError) as exc:
            log.info("node set of %s unknown (%s): publishing every batch", doc_id, exc)
            return
        if doc_id not in self._wanted:
            return  # closed meanwhile
        known = self.others.setdefault(doc_id, set())
        known.update(m for m in members if m != self._nid)

    def hello(self, doc_id: str, server_ms: int, members: list[Any]) -> None:
        """Say HELLO on the document's channel, with the members this node owns there
        (after reading the store: the ROSTERs that answer are newer than what it read)."""
        if doc_id in self._wanted:
            self._send_own(doc_id, msgpack.packb([k.NODE_HELLO, server_ms, members]))

    async def refresh_nodes(self, doc_ids: list[str]) -> None:
        """Re-enter the node sets of the documents open here and re-read them (Redis may
        have come back empty); an entry whose node has no heartbeat is removed (a dead
        node's reaper removes it from the documents it had sessions in, not the others)."""
        for i in range(0, len(doc_ids), REFRESH_CHUNK):
            chunk = doc_ids[i : i + REFRESH_CHUNK]
            pipe = self.redis.pipeline(transaction=False)
            for doc_id in chunk:
                key = k.nodes_key(doc_id)
                pipe.sadd(key, self.node_id)
                pipe.pexpire(key, NODE_SET_TTL_MS)
                pipe.smembers(key)
            results = await pipe.execute()
            sets = {
                doc_id: {m for m in members if m != self._nid}
                for doc_id, members in zip(chunk, results[2::3], strict=True)
            }
            nodes = sorted(set().union(*sets.values()))
            alive: set[bytes] = set()
            if nodes:
                pipe = self.redis.pipeline(transaction=False)
                for n in nodes:
                    pipe.exists(k.node_key(n.decode()))
                alive = {n for n, up in zip(nodes, await pipe.execute(), strict=True) if up}
                pipe = self.redis.pipeline(transaction=False)
                for doc_id, others in sets.items():
                    dead = others - alive
                    if dead:
                        pipe.srem(k.nodes_key(doc_id), *dead)
                await pipe.execute()
            for doc_id, others in sets.items():
                if doc_id in self._wanted:
                    self.others[doc_id] = others & alive

    def send_roster(self, doc_id: str, server_ms: int, members: list[Any]) -> None:
        """Every member this node owns in the document (the answer to a HELLO)."""
        self._send_own(doc_id, msgpack.packb([k.NODE_ROSTER, server_ms, members]))

    async def ensure_subscribed(self, doc_id: str) -> None:
        self.subscribe(doc_id)
        if doc_id in self._confirmed or not self._connected:
            return  # down: don't hold the join; the reconnect resync catches up
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(doc_id, []).append(fut)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(fut, self.subscribe_timeout)

    def publish(self, doc_id: str, frame: bytes) -> None:
        others = self.others.get(doc_id)
        if others is not None and not others:
            self.skipped += 1  # nobody else has it open: nothing to say
            return
        self._send_own(doc_id, frame)

    def _send_own(self, doc_id: str, payload: bytes, leaving: bool = False) -> None:
        seq = self._seq[doc_id] = self._seq.get(doc_id, 0) + 1
        gate = self.gate
        mark = gate.membership_mark() if gate is not None else 0
        if len(self._outbox) == self._outbox.maxlen:
            self.dropped += 1
        self._outbox.append((doc_id, k.envelope(self._nid, payload, seq), mark, leaving))
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
                await self._wait_for_members(batch)
                pipe = self.redis.pipeline(transaction=False)
                for doc_id, data, _, leaving in batch:
                    if leaving:  # out of the node set first: nobody waits for us after BYE
                        pipe.srem(k.nodes_key(doc_id), self.node_id)
                    self._send(pipe, k.channel(doc_id), data)
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

    async def _wait_for_members(self, batch: list[tuple[str, bytes, int, bool]]) -> None:
        gate = self.gate
        if gate is None:
            return
        for doc_id, _, mark, _ in batch:
            if mark and gate.membership_pending(doc_id, mark):
                await gate.membership_written(doc_id, mark, GATE_TIMEOUT_S)

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

    def _message(self, doc_id: str, data: bytes) -> None:
        opened = k.open_envelope(data)
        if opened is None or opened[0] == self._nid:
            return  # malformed, or our own
        origin, seq, payload = opened
        self.received += 1
        if payload[1:3] not in NODE_CODES:  # a frame: a BATCH, or a control-channel message
            others = self.others.get(doc_id)
            if others is not None:
                others.add(origin)  # (one that never said HELLO: a node before v1.2)
            if seq:
                self._sequence(doc_id, origin, seq, False)
            cb = self._callback
            if cb is not None:
                try:
                    cb(doc_id, payload, origin.decode())
                except Exception:
                    log.exception("remote frame handler failed")
            return
        try:
            message = msgpack.unpackb(payload, raw=False)
            code = message[0]
        except Exception:
            log.warning("ignoring a malformed node message on %s", doc_id)
            return
        if doc_id not in self._wanted:
            return
        if code == k.NODE_BYE:
            self.others.get(doc_id, set()).discard(origin)
            self._heard.pop((doc_id, origin), None)
            return
        self.others.setdefault(doc_id, set()).add(origin)
        if seq:
            self._sequence(doc_id, origin, seq, code == k.NODE_HELLO)
        listener = self.listener
        if listener is None:
            return
        try:
            if code == k.NODE_HELLO:
                if len(message) > 2:  # (its roster: the truth about its members)
                    listener.node_roster(doc_id, origin.decode(), int(message[1]), message[2])
                listener.node_hello(doc_id, origin.decode())
            elif code == k.NODE_ROSTER:
                listener.node_roster(doc_id, origin.decode(), int(message[1]), message[2])
        except Exception:
            log.exception("node message handler failed")

    def _sequence(self, doc_id: str, origin: bytes, seq: int, restart: bool) -> None:
        """Check `seq` against the last one heard from `origin` for the document."""
        key = (doc_id, origin)
        last = self._heard.get(key)
        self._heard[key] = seq if restart or last is None else max(last, seq)
        if restart or last is None or seq == last + 1:
            return  # (the first message heard since subscribing: the store read covers before)
        self.gaps += 1
        if self.listener is not None:
            self.listener.node_gap(doc_id, "gap" if seq > last + 1 else "duplicate")

    async def _on_connect(self, connection: Any) -> None:
        """A (re)connected pub/sub connection: anything published meanwhile was missed."""
        self._connected = True
        self._connections += 1
        if self._on_reconnect is not None:
            asyncio.get_running_loop().call_soon(self._on_reconnect)

    async def _read(self, ps: PubSub) -> None:
        plen = len(PREFIX)
        while True:
            redis_pool.check_cancelled()
            msg = await ps.get_message(timeout=1.0)
            if msg is None:
                continue
            kind = msg["type"]
            if kind == "message":
                self._message(msg["channel"][plen:].decode(), msg["data"])
            elif kind == "subscribe":
                doc_id = msg["channel"][plen:].decode()
                if doc_id in self._wanted:
                    self._confirmed.add(doc_id)
                self._release_waiters({doc_id})
            elif kind == "unsubscribe":
                self._confirmed.discard(msg["channel"][plen:].decode())
