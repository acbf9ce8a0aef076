"""One Redis client (one connection pool) per process, and what the backends' background
tasks share: which errors mean "unreachable", whether Redis is reachable now, cancellation.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable
from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ClusterDownError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from relay.backends import redis_cluster
from relay.backends.redis_sentinel import is_sentinel_url, sentinel_client

log = logging.getLogger("relay.redis")

# Errors that mean "Redis is unreachable right now" (as opposed to a bad command). On a
# Cluster also CLUSTERDOWN (no node answering, or a slot nobody serves, is a ConnectionError:
# redis_cluster.ClusterUnreachable).
UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError, TimeoutError, ClusterDownError)

# The client: one Redis (or its Sentinel-managed master), or a Redis Cluster.
Client = Redis | RedisCluster


class RedisShared:
    """One `redis.asyncio` client (one pool) shared by the store and the broker.

    Explicit retry (2 quick retries; the backends add their own backoff on top), socket
    timeouts so a hung server cannot hold a task forever, and a health check so idle pooled
    connections (and the pub/sub connection) notice a dead server.

    A URL naming a node of a Redis Cluster (`redis_cluster.probe`, one round trip now) gets a
    `RedisCluster` with the same settings (`cluster` is then True; docs/redis.md, "Cluster").
    """

    def __init__(self, url: str, max_connections: int = 32) -> None:
        self.url = url
        self.cluster = False  # a Redis Cluster (found out once, here)
        self._unprobed: str | None = None  # why the probe could not tell (`check_mode`)
        if is_sentinel_url(url):  # redis+sentinel://: relay/backends/redis_sentinel.py
            self.redis: Client = sentinel_client(url, max_connections)
        elif self._is_cluster(url):
            self.redis = redis_cluster.cluster_client(url, max_connections)
        else:
            pool = BlockingConnectionPool.from_url(
                url,
                max_connections=max_connections,
                timeout=2.0,  # waiting for a free pooled connection
                socket_timeout=2.0,
                socket_connect_timeout=1.0,
                socket_keepalive=True,
                health_check_interval=5,
                retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=2),
                client_name="presence-relay",
            )
            self.redis = Redis.from_pool(pool)
        self._users = 0

    def _is_cluster(self, url: str) -> bool:
        try:
            self.cluster = redis_cluster.probe(url)
        except redis_cluster.ProbeFailed as exc:
            self._unprobed = str(exc)
            log.warning(
                "redis: could not ask %s whether it is a Redis Cluster node (%s); using it as "
                "one Redis (a Cluster must be reachable when the relay starts)",
                redis_cluster.redacted(url),
                exc,
            )
        return self.cluster

    async def check_mode(self) -> None:
        """Once Redis answers, if the probe at start could not reach it: a Cluster node used
        as one Redis cannot work (most keys are on other shards), so say it, loudly, once."""
        if self._unprobed is None or self.cluster:
            return
        self._unprobed = None
        with contextlib.suppress(Exception):
            info = await self.redis.info("cluster")
            if int(info.get("cluster_enabled", 0)):
                log.error(
                    "redis: %s is a Redis Cluster node, but it was unreachable when the relay "
                    "started, so it is used as one Redis, which cannot work: restart the relay",
                    redis_cluster.redacted(self.url),
                )

    def acquire(self) -> Client:
        self._users += 1
        return self.redis

    async def release(self) -> None:
        self._users -= 1
        if self._users <= 0:
            await self.redis.aclose()


def cancelling() -> bool:
    """True inside a task that is being cancelled.

    redis-py turns a cancellation in the middle of a command into a ConnectionError; a
    loop that retries on connection errors must check this, or it never stops.
    """
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def check_cancelled() -> None:
    """Raise CancelledError if a cancellation was requested and then swallowed below us."""
    if cancelling():
        raise asyncio.CancelledError


async def stop_tasks(tasks: Iterable[asyncio.Task[Any]], timeout: float = 2.0) -> None:
    tasks = [t for t in tasks if not t.done()]
    for t in tasks:
        t.cancel()
    if tasks:
        await asyncio.wait(tasks, timeout=timeout)
    for t in tasks:
        if t.done():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                t.result()


class Reachability:
    """Whether the store can reach Redis now: down on the first unreachable error, up again
    when the liveness probe answers (which calls `on_up`: reconcile and re-announce)."""

    def __init__(self, on_up: Callable[[], None]) -> None:
        self.up = False
        self.failures = 0
        self._on_up = on_up
        self.on_down: Callable[[], None] | None = None

    def down(self, exc: BaseException) -> None:
        if self.up:
            log.warning(
                "redis unreachable (%s: %s); presence keeps working locally, writes queue up",
                type(exc).__name__,
                exc,
            )
        self.up = False
        self.failures += 1
        if self.on_down is not None:
            self.on_down()  # (the liveness probe starts at once, not at its next period)

    def back(self) -> None:
        if not self.up:
            log.info("redis reachable: reconciling this node's sessions")
        self.up = True
        self._on_up()
