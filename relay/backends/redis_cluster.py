"""Redis Cluster: a `redis_url` naming any node of a cluster is found out at start and used
through redis-py's `RedisCluster`, with sharded pub/sub (docs/redis.md, "Cluster").

- `probe(url)`: `INFO cluster` (`cluster_enabled:1`), one blocking round trip when
  `RedisShared` is built (before the relay serves anything). Unreachable: `ProbeFailed`, and
  the URL is used as one Redis (`RedisShared.check_mode` says so loudly once it answers).
- `cluster_client(url)`: the `RedisCluster` every backend shares, with the single client's
  timeouts and retries. Its nodes' pools refuse a connection past their size instead of
  waiting for one (redis-py's MaxConnectionsError, a ConnectionError: "unreachable" to the
  backends), so a gate makes a command or pipeline wait for one of `max_connections` turns
  instead, as the single client's BlockingConnectionPool does.
- `publish(pipe, channel, data)`: PUBLISH on one Redis, SPUBLISH in a cluster pipeline (a
  cluster forwards a PUBLISH to every node; an SPUBLISH stays on the shard owning the
  channel's slot, where its SSUBSCRIBErs are). redis-py refuses PUBLISH in a cluster pipeline.
- `Script`: a registered Lua script that also runs in a cluster pipeline, as EVAL (redis-py
  refuses EVALSHA there, and a shard restarted empty has no script cached). Every script here
  touches one key (redis-py checks that an EVAL's keys share a slot).
- Subscribers, behind the one interface the broker's supervisor drives: `ChannelSubscriber`
  (SUBSCRIBE on one Redis) and `ShardedSubscriber` (SSUBSCRIBE on the node owning each
  channel's slot, one connection and one reader per node). A sharded subscription that the
  server drops (its slot moved: a failover, a reshard) breaks the subscriber like a lost
  connection: the supervisor refreshes the slot map and subscribes everything again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Collection,
    Coroutine,
    Iterable,
    Sequence,
)
from contextvars import ContextVar
from typing import Any, Protocol
from urllib.parse import urlsplit

import redis
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import ClusterNode, ClusterPipeline, RedisCluster
from redis.asyncio.connection import ConnectionPool
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import (
    RedisClusterException,
    RedisError,
    ResponseError,
    SlotNotCoveredError,
)
from redis.retry import Retry as SyncRetry

# The single client's settings (redis_pool.RedisShared), for every connection to a node.
SETTINGS: dict[str, Any] = {
    "socket_timeout": 2.0,
    "socket_connect_timeout": 1.0,
    "socket_keepalive": True,
    "health_check_interval": 5,
    "client_name": "presence-relay",
}
WAIT_S = 2.0  # the longest a command waits for a turn (BlockingConnectionPool's timeout)


def _retry() -> Retry:
    return Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=2)


# ---------------------------------------------------------------- detection


class ProbeFailed(Exception):
    """The server could not be asked whether it is a Cluster node (the message says why)."""


def redacted(url: str) -> str:
    """The URL's scheme, host and port only: fit for a log line (no user, no password)."""
    parts = urlsplit(url)
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ""
    return f"{parts.scheme}://{parts.hostname or ''}{port}"


def probe(url: str, timeout_s: float = 1.0) -> bool:
    """Whether the server at `url` is a Redis Cluster node: `INFO cluster`, or, for a user
    whose ACL refuses INFO, `CLUSTER MYID` (refused with "cluster support disabled" by a
    server that is not one). Blocking, at most about `timeout_s` twice."""
    if url.partition("://")[0].lower() == "unix":
        return False  # (a cluster is never reached over a Unix socket)
    pool = redis.ConnectionPool.from_url(
        url,
        socket_connect_timeout=timeout_s,
        socket_timeout=timeout_s,
        retry=SyncRetry(NoBackoff(), 0),
        client_name=SETTINGS["client_name"],
    )
    pool.connection_kwargs["db"] = 0  # a cluster node refuses SELECT of any other
    client = redis.Redis(connection_pool=pool)
    try:
        try:
            info = client.info("cluster")
        except ResponseError:
            try:
                client.execute_command("CLUSTER", "MYID")  # type: ignore[no-untyped-call]
            except ResponseError as exc:
                if "disabled" in str(exc).lower():
                    return False
                raise
            return True
        return bool(int(info.get("cluster_enabled", 0)))
    except (RedisError, OSError) as exc:
        raise ProbeFailed(f"{type(exc).__name__}: {exc}") from None
    finally:
        client.close()
        pool.disconnect()


# ---------------------------------------------------------------- the client

# Set while a task holds a turn: what it runs inside (a pipeline's redirected commands, a
# retry's reinitialization) takes none of its own, so the gate cannot deadlock on itself.
_HOLDING: ContextVar[bool] = ContextVar("relay_redis_cluster_turn", default=False)


class Gate:
    """At most `size` commands or pipelines at once; the others wait (at most `wait_s`)."""

    def __init__(self, size: int, wait_s: float) -> None:
        self.size = size
        self.wait_s = wait_s
        self._turns = asyncio.Semaphore(size)

    @contextlib.asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        if _HOLDING.get():
            yield
            return
        try:
            async with asyncio.timeout(self.wait_s):
                await self._turns.acquire()
        except TimeoutError:
            raise RedisConnectionError(
                f"no free connection to the cluster within {self.wait_s} s "
                f"({self.size} commands in flight)"
            ) from None
        token = _HOLDING.set(True)
        try:
            yield
        finally:
            _HOLDING.reset(token)
            self._turns.release()


class ClusterUnreachable(RedisConnectionError):
    """No node of the cluster answered, or no node serves a slot a command needs."""


@contextlib.asynccontextmanager
async def unreachable_as_connection_error() -> AsyncIterator[None]:
    """redis-py raises a bare RedisClusterException (not a RedisError) when no node answers
    its slot map refresh, and SlotNotCoveredError for a slot nobody serves: to the backends
    both are "unreachable" (a ConnectionError), like a single Redis that does not answer."""
    try:
        yield
    except SlotNotCoveredError as exc:
        raise ClusterUnreachable(str(exc)) from exc
    except RedisClusterException as exc:
        if isinstance(exc.__cause__, (RedisError, OSError)):
            raise ClusterUnreachable(str(exc)) from exc
        raise


class GatedRedisCluster(RedisCluster):
    """`RedisCluster` whose commands and pipelines take turns (`Gate`): one in flight uses at
    most one connection per node, so no node's pool ever runs out."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # One turn per connection a node may open (RedisCluster's default: 100).
        self.gate = Gate(int(kwargs.get("max_connections", 100)), WAIT_S)

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        if args and args[0] == "PING" and "target_nodes" not in kwargs:
            # The stores' probe: a write round trip spans every shard, so Redis is
            # reachable when every primary answers (redis-py asks one node by default).
            kwargs["target_nodes"] = self.PRIMARIES
        async with self.gate.turn(), unreachable_as_connection_error():
            return await super().execute_command(*args, **kwargs)

    def pipeline(
        self, transaction: Any | None = None, shard_hint: Any | None = None
    ) -> ClusterPipeline:
        if transaction or shard_hint:  # (what RedisCluster.pipeline refuses)
            return super().pipeline(transaction, shard_hint)
        return GatedPipeline(self, transaction)  # type: ignore[abstract]  # (as redis-py does)


class GatedPipeline(ClusterPipeline):
    async def execute(
        self, raise_on_error: bool = True, allow_redirections: bool = True
    ) -> list[Any]:
        client = self.cluster_client
        gate = client.gate if isinstance(client, GatedRedisCluster) else None
        if gate is None:
            return await super().execute(raise_on_error, allow_redirections)
        async with gate.turn(), unreachable_as_connection_error():
            return await super().execute(raise_on_error, allow_redirections)


def cluster_client(url: str, max_connections: int = 32) -> GatedRedisCluster:
    """The one client of a process on a Redis Cluster. Nothing is sent until first used.

    Slots not covered (a shard down with no replica to take over) fail only the commands
    that need them; MOVED / ASK are followed by redis-py (and refresh its slot map)."""
    try:
        client = GatedRedisCluster.from_url(
            url,
            max_connections=max_connections,
            require_full_coverage=False,
            retry=_retry(),
            **SETTINGS,
        )
    except RedisClusterException as exc:  # e.g. a database other than 0
        raise ValueError(f"Redis Cluster: {exc}") from None
    assert isinstance(client, GatedRedisCluster)
    return client


async def uptime_s(client: Redis | RedisCluster, key: str) -> float:
    """How long the server holding `key` (on a Cluster, its slot's primary) has been up."""
    if isinstance(client, RedisCluster):
        async with unreachable_as_connection_error():
            await client.initialize()  # (the slot map: nothing to do once initialized)
            node = client.get_node_from_key(key)
        try:
            info = await client.info("server", target_nodes=node)
        except RedisConnectionError:  # (a pooled connection from before a restart: once more)
            info = await client.info("server", target_nodes=node)
    else:
        info = await client.info("server")
    return float(info.get("uptime_in_seconds", 0))


async def lost_with_restart(
    client: Redis | RedisCluster, key: str, witness: str, within_s: float
) -> bool:
    """Whether `key` may be missing only because the shard holding it restarted (empty) and
    `witness`'s shard, which kept what was written along with it, did not: `key`'s server
    started less than `within_s` ago and over a second after `witness`'s. Never on one
    Redis (everything restarts together)."""
    if not isinstance(client, RedisCluster):
        return False
    up = await uptime_s(client, key)
    return up < within_s and up + 1.0 < await uptime_s(client, witness)


# ---------------------------------------------------------------- commands in pipelines


def publish(pipe: Any, channel: str, data: bytes) -> None:
    """Queue `data` for `channel` in `pipe`: SPUBLISH in a cluster pipeline, else PUBLISH."""
    if isinstance(pipe, ClusterPipeline):
        pipe.spublish(channel, data)
    else:
        pipe.publish(channel, data)


class Script:
    """A Lua script, called like redis-py's registered scripts (`keys`, `args`, `client`).

    On one Redis (and called directly on a cluster) it is redis-py's EVALSHA, loading the
    script when the server lacks it; in a cluster pipeline it is queued as EVAL."""

    def __init__(self, client: Redis | RedisCluster, text: str) -> None:
        self.text = text
        self._script = client.register_script(text)

    async def __call__(
        self,
        keys: Sequence[str] | None = None,
        args: Iterable[Any] | None = None,
        client: Any = None,
    ) -> Any:
        keys = list(keys or ())
        args = list(args or ())
        if isinstance(client, ClusterPipeline):
            client.eval(self.text, len(keys), *keys, *args)
            return client
        return await self._script(keys=keys, args=args, client=client)


# ---------------------------------------------------------------- subscribers

ConnectCallback = Callable[[Any], Awaitable[None]]
Reader = Callable[[PubSub], Coroutine[Any, Any, None]]


class Subscriber(Protocol):
    """The broker's subscriptions for one life of its pub/sub connection(s).

    `connect` (registers `on_connect`, a bound method since redis-py keeps a weak reference,
    for every reconnect of a connection), `subscribe` / `unsubscribe` (channel names), `read`
    (runs `reader` on each PubSub until one of them breaks: it raises what broke it),
    `aclose`."""

    async def connect(self, on_connect: ConnectCallback) -> None: ...

    async def subscribe(self, channels: Collection[str]) -> None: ...

    async def unsubscribe(self, channels: Collection[str]) -> None: ...

    async def read(self, reader: Reader) -> None: ...

    async def aclose(self) -> None: ...


class ChannelSubscriber:
    """Classic pub/sub on one Redis: one PubSub connection, SUBSCRIBE / UNSUBSCRIBE."""

    def __init__(self, client: Redis) -> None:
        self.ps = client.pubsub()
        self._on_connect: ConnectCallback | None = None

    async def connect(self, on_connect: ConnectCallback) -> None:
        await self.ps.connect()  # type: ignore[no-untyped-call]  # (redis-py: untyped)
        conn: Any = self.ps.connection  # (redis-py types it as None: unannotated)
        if conn is None:
            raise ConnectionError("pub/sub did not connect")
        conn.register_connect_callback(on_connect)
        self._on_connect = on_connect

    async def subscribe(self, channels: Collection[str]) -> None:
        if channels:
            await self.ps.subscribe(*channels)

    async def unsubscribe(self, channels: Collection[str]) -> None:
        if channels:
            await self.ps.unsubscribe(*channels)

    async def read(self, reader: Reader) -> None:
        await reader(self.ps)

    async def aclose(self) -> None:
        await _close(self.ps, self._on_connect)


class SlotMoved(RedisConnectionError):
    """The server ended a sharded subscription: the channel's slot is served elsewhere now."""


# A sharded message reported under its classic name: the broker reads both kinds alike.
CLASSIC = {"smessage": "message", "ssubscribe": "subscribe", "sunsubscribe": "unsubscribe"}


class ShardPubSub(PubSub):
    """A PubSub on one cluster node, for its shard channels (SSUBSCRIBE / SUNSUBSCRIBE)."""

    async def handle_message(self, response: Any, ignore_subscribe_messages: bool = False) -> Any:
        moved = None
        if isinstance(response, list) and len(response) > 1:
            kind = response[0].decode() if isinstance(response[0], bytes) else response[0]
            if (
                kind == "sunsubscribe"
                and response[1] not in self.pending_unsubscribe_shard_channels
            ):
                moved = response[1]  # not asked for: the server moved the slot away
        message = await super().handle_message(response, ignore_subscribe_messages)  # type: ignore[no-untyped-call]
        if moved is not None:
            raise SlotMoved(f"shard channel {moved!r} was unsubscribed by the server")
        if isinstance(message, dict):
            message["type"] = CLASSIC.get(message["type"], message["type"])
        return message

    async def _resubscribe_shard_channels(self) -> None:
        # (On a reconnect.) One SSUBSCRIBE per channel: one naming channels of two slots is
        # refused (CROSSSLOT), even when one node serves both.
        for channel in list(self.shard_channels):
            await self.ssubscribe(channel)


class ShardedSubscriber:
    """Sharded pub/sub on a Redis Cluster: each channel is SSUBSCRIBEd on the primary that
    owns its slot, through a connection of this subscriber's own to that node (a node's
    pooled connections are closed and reopened by redis-py on topology changes, which a
    subscribed connection must not be); one reader per node.

    `refresh`: re-read the slot map first (this is a rebuild after something broke)."""

    def __init__(self, cluster: RedisCluster, refresh: bool = False) -> None:
        self.cluster = cluster
        self.refresh = refresh
        self._nodes: dict[str, ShardPubSub] = {}  # node name -> its PubSub
        self._where: dict[str, str] = {}  # channel -> the node it is subscribed on
        self._on_connect: ConnectCallback | None = None
        self._added = asyncio.Event()  # a node joined `_nodes`: `read` starts its reader

    def nodes(self) -> dict[str, list[str]]:
        """Node name -> the channels subscribed there (for tests and logs)."""
        out: dict[str, list[str]] = {name: [] for name in self._nodes}
        for channel, name in self._where.items():
            out.setdefault(name, []).append(channel)
        return out

    async def connect(self, on_connect: ConnectCallback) -> None:
        self._on_connect = on_connect
        await self.cluster.initialize()  # (nothing to do once the client is initialized)
        if self.refresh:
            await self.cluster.nodes_manager.initialize()

    async def subscribe(self, channels: Collection[str]) -> None:
        for channel in channels:
            node = self.cluster.get_node_from_key(channel)  # SlotNotCoveredError: broken
            if node is None:
                raise RedisConnectionError(f"no node serves the slot of {channel!r}")
            ps = await self._pubsub(node)
            await ps.ssubscribe(channel)
            self._where[channel] = node.name

    async def unsubscribe(self, channels: Collection[str]) -> None:
        for channel in channels:
            ps = self._nodes.get(self._where.pop(channel, ""))
            if ps is not None:
                await ps.sunsubscribe(channel)

    async def _pubsub(self, node: ClusterNode) -> ShardPubSub:
        ps = self._nodes.get(node.name)
        if ps is not None:
            return ps
        options = dict(node.connection_kwargs)
        options["retry"] = _retry()
        pool = ConnectionPool(connection_class=node.connection_class, max_connections=1, **options)
        ps = ShardPubSub(pool)
        try:
            await ps.connect()  # type: ignore[no-untyped-call]
        except BaseException:
            await pool.disconnect()
            raise
        conn: Any = ps.connection
        if conn is not None and self._on_connect is not None:
            conn.register_connect_callback(self._on_connect)
        self._nodes[node.name] = ps
        self._added.set()
        return ps

    async def read(self, reader: Reader) -> None:
        tasks: dict[str, asyncio.Task[None]] = {}
        loop = asyncio.get_running_loop()
        try:
            while True:
                self._added.clear()
                for name, ps in self._nodes.items():
                    if name not in tasks:
                        tasks[name] = loop.create_task(reader(ps))
                added = loop.create_task(self._added.wait())
                try:
                    done, _ = await asyncio.wait(
                        {added, *tasks.values()}, return_when=asyncio.FIRST_COMPLETED
                    )
                finally:
                    added.cancel()
                for task in done:
                    if task is not added:
                        task.result()  # raises what broke that node's connection
                        raise RedisConnectionError("a sharded pub/sub reader stopped")
        finally:
            for task in tasks.values():
                task.cancel()
            await asyncio.gather(*tasks.values(), return_exceptions=True)

    async def aclose(self) -> None:
        nodes, self._nodes = self._nodes, {}
        self._where.clear()
        for ps in nodes.values():
            await _close(ps, self._on_connect)
            with contextlib.suppress(Exception):
                await ps.connection_pool.disconnect()


async def _close(ps: PubSub, on_connect: ConnectCallback | None) -> None:
    conn: Any = ps.connection
    if conn is not None and on_connect is not None:
        conn.deregister_connect_callback(on_connect)
    with contextlib.suppress(Exception):
        await asyncio.wait_for(ps.aclose(), 1.0)  # type: ignore[no-untyped-call]
