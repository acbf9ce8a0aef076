"""Redis Sentinel: a `redis+sentinel://` URL, and the one client (one pool) that follows the
master through failovers (docs/redis.md, "Sentinel").

    redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/<master name>[/<db>]
        [?sentinel_username=...&sentinel_password=...]

The user and password authenticate to the Redis servers (master and replicas); the sentinels
are asked without credentials unless `sentinel_password` (and `sentinel_username`) is given.
Percent-encode `@ / : , ? # %` in names and passwords. A sentinel without a port is on 26379.

What follows the master:
- Every new connection asks the sentinels where the master is (redis-py's
  `SentinelManagedConnection`), and so does the pool below, every second while in use.
  When the answer changes, every connection to the old master is closed, the pub/sub one
  included (the broker's reconnect asks the sentinels again and lands on the new master),
  and checkouts fail for a moment so that the store runs its outage recovery: its
  reconcile rewrites on the new master what the old one took and lost.
- The master died (`kill -9`): commands fail ("unreachable") until Sentinel promotes a
  replica; then the same recovery.
- A write answered READONLY (a master demoted to a replica) closes that connection and
  raises ConnectionError (redis-py does this for master pools): "unreachable" to the
  backends (redis_pool.UNREACHABLE) too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

log = logging.getLogger("relay.redis")

SCHEME = "redis+sentinel"
DEFAULT_SENTINEL_PORT = 26379
QUERY_OPTIONS = ("sentinel_username", "sentinel_password")

# What every connection to a Redis server gets: the same as RedisShared's standalone pool
# (redis_pool.py; tests/test_redis_sentinel.py checks that the two agree).
POOL_TIMEOUT_S = 2.0  # waiting for a free pooled connection
CONNECTION_SETTINGS: dict[str, Any] = {
    "socket_timeout": 2.0,
    "socket_connect_timeout": 1.0,
    "socket_keepalive": True,
    "health_check_interval": 5,
    "client_name": "presence-relay",
}


def _retry() -> Retry:
    """2 quick retries: the backends add their own backoff on top."""
    return Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=2)


@dataclass(frozen=True, slots=True)
class SentinelURL:
    """A parsed `redis+sentinel://` URL (its repr leaves the passwords out)."""

    sentinels: tuple[tuple[str, int], ...]
    master: str
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    sentinel_username: str | None = None
    sentinel_password: str | None = field(default=None, repr=False)

    def redacted(self) -> str:
        """The URL without credentials: fit for a log line."""
        hosts = ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in self.sentinels)
        auth = "***@" if self.username or self.password else ""
        return f"{SCHEME}://{auth}{hosts}/{self.master}/{self.db}"


def is_sentinel_url(url: str) -> bool:
    return url.partition("://")[0].lower() == SCHEME


def _address(item: str) -> tuple[str, int]:
    """`host[:port]` or `[v6]:port` (never holds credentials: they were split off)."""
    if item.startswith("["):
        host, sep, rest = item[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"sentinel address {item!r} is not [ipv6]:port")
        port_text = rest[1:] if rest else ""
    else:
        host, _, port_text = item.rpartition(":") if ":" in item else (item, "", "")
        if ":" in host:
            raise ValueError(f"sentinel address {item!r}: write an IPv6 address as [addr]:port")
    host = unquote(host)
    if not host or any(c.isspace() or c in "/?#@" for c in host):
        raise ValueError(f"sentinel address {item!r} names no valid host")
    if not port_text:
        return host, DEFAULT_SENTINEL_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"sentinel address {item!r}: the port must be 1-65535")
    return host, int(port_text)


def parse_sentinel_url(url: str) -> SentinelURL:
    """Parse a `redis+sentinel://` URL; ValueError (naming no credential) when it is bad."""
    form = f"{SCHEME}://[:password@]host:port[,host:port...]/<master name>[/<db>]"
    if not is_sentinel_url(url):
        raise ValueError(f"not a {SCHEME}:// URL")
    if not url.isascii() or any(ord(c) < 0x21 or c == "\x7f" for c in url):
        raise ValueError("use ASCII without spaces or control characters (percent-encode)")
    parts = urlsplit(url)
    if "@" in url.partition("://")[2][len(parts.netloc) :]:
        # (Never echo the URL here: part of a password would be in it.)
        raise ValueError("percent-encode '/', '?' and '#' in the user name and password")
    if parts.fragment or url.endswith("#"):
        raise ValueError("a sentinel URL has no #fragment (percent-encode '#' as %23)")
    userinfo, at, hostlist = parts.netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, pw = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(pw) if colon else None
        if password == "":
            password = None
    items = hostlist.split(",")
    if not hostlist:
        raise ValueError(f"lists no sentinel (expected {form})")
    if any(not i for i in items):
        raise ValueError("an empty entry in the list of sentinels")
    sentinels = tuple(_address(i) for i in items)
    if len(set(sentinels)) != len(sentinels):
        raise ValueError("a sentinel is listed twice")
    path = parts.path[1:].split("/") if parts.path.startswith("/") else []
    if path and path[-1] == "" and len(path) > 1:
        path.pop()  # a trailing slash
    if not path or not path[0]:
        raise ValueError(f"names no master (expected {form})")
    if len(path) > 2:
        raise ValueError(f"too many path segments (expected {form})")
    master = unquote(path[0])
    if any(c.isspace() for c in master):
        raise ValueError(f"master name {master!r} has white space")
    db = 0
    if len(path) == 2:
        if not path[1].isdigit():
            raise ValueError(f"db {path[1]!r} is not a non-negative number")
        db = int(path[1])
    options: dict[str, str] = {}
    for pair in parts.query.split("&") if parts.query else []:
        raw_name, _, raw_value = pair.partition("=")
        name, value = unquote(raw_name), unquote(raw_value)  # ('+' stays a plus)
        if name not in QUERY_OPTIONS:
            raise ValueError(f"unknown option {name!r} (known: {', '.join(QUERY_OPTIONS)})")
        if name in options:
            raise ValueError(f"option {name!r} is given twice")
        options[name] = value
    return SentinelURL(
        sentinels=sentinels,
        master=master,
        db=db,
        username=username,
        password=password,
        sentinel_username=options.get("sentinel_username") or None,
        sentinel_password=options.get("sentinel_password") or None,
    )


class MasterMovedError(RedisConnectionError):
    """The sentinels name another master than the one this pool's connections were on."""


class BlockingSentinelConnectionPool(SentinelConnectionPool, BlockingConnectionPool):
    """redis-py's SentinelConnectionPool, made to wait for a free connection (at most its
    `timeout`, as RedisShared's standalone BlockingConnectionPool does: "Too many
    connections" would look like an outage), and to follow a new master at once.

    redis-py asks the sentinels only when it opens a connection, and closes only the idle
    ones when the answer changes. After a failover whose old master stays up (a manual one,
    or Sentinel cut off from it) pooled connections and the pub/sub connection keep using
    the old master, and lose their writes, until Sentinel demotes it (about 10 s later;
    never while it cannot reach it). So this pool also asks every `RECHECK_S` while in use
    (in the background: a slow sentinel never holds a command), and when the master moved:
    - closes every connection still open to the old one, in use or not (the pub/sub
      connection too: the broker resubscribes on the new master and resyncs);
    - fails checkouts with MasterMovedError (a ConnectionError: "unreachable") for
      `MOVED_OUTAGE_S`, more than the store's reaper interval (at most 1 s): the store takes
      it for an outage, and its recovery (probe, reconcile, re-announce) rewrites on the
      new master what the old one took and lost.
    At checkout it also drops a pooled connection open to a server that is no longer the
    master, and its `aclose` closes the sentinel clients too.
    """

    RECHECK_S = 1.0
    MOVED_OUTAGE_S = 1.5

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]  # (redis-py)
        self._checked_at = time.monotonic()
        self._moved_until = 0.0
        self._rechecking = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def get_master_address(self) -> Any:
        previous = self.master_address
        # (redis-py, untyped) closes the idle connections when the master moved
        address = await super().get_master_address()  # type: ignore[no-untyped-call]
        self._checked_at = time.monotonic()
        if previous is not None and address != previous:
            self._master_moved(previous, address)
        return address

    def _master_moved(self, previous: Any, address: Any) -> None:
        log.warning(
            "redis: Sentinel moved master %r from %s:%s to %s:%s; reconnecting",
            self.service_name,
            *previous,
            *address,
        )
        self._moved_until = time.monotonic() + self.MOVED_OUTAGE_S
        in_use: list[Any] = list(self._in_use_connections)
        stale = [c for c in in_use if c.is_connected and (c.host, c.port) != tuple(address)]
        if stale:
            self._spawn(self._close(stale))

    @staticmethod
    async def _close(connections: list[Any]) -> None:
        for c in connections:
            with contextlib.suppress(Exception):
                await c.disconnect(nowait=True)  # (a reader may hold it: don't wait)

    async def _recheck(self) -> None:
        try:
            await self.get_master_address()
        except Exception as exc:  # sentinels unreachable: keep the master we have
            log.debug("redis: sentinels not answering (%s: %s)", type(exc).__name__, exc)
        finally:
            self._rechecking = False

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def ensure_connection(self, connection: Any) -> None:
        now = time.monotonic()
        if now < self._moved_until:
            raise MasterMovedError(f"redis master {self.service_name!r} moved; reconnecting")
        if not self._rechecking and now - self._checked_at >= self.RECHECK_S:
            self._rechecking = True
            self._checked_at = now
            self._spawn(self._recheck())
        address = self.master_address
        if (
            address is not None
            and connection.is_connected
            and (connection.host, connection.port) != tuple(address)
        ):
            await connection.disconnect()
        await super().ensure_connection(connection)

    async def aclose(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        try:
            await super().aclose()
        finally:
            await self.sentinel_manager.aclose()


def sentinel_client(url: str, max_connections: int) -> Redis:
    """The client of the master a `redis+sentinel://` URL names: the same timeouts, retry
    and health check as RedisShared's standalone pool, at most `max_connections`
    connections (blocking when all are in use)."""
    parsed = parse_sentinel_url(url)
    sentinel_kwargs: dict[str, Any] = {
        "socket_timeout": CONNECTION_SETTINGS["socket_timeout"],
        "socket_connect_timeout": CONNECTION_SETTINGS["socket_connect_timeout"],
        "socket_keepalive": True,
        "client_name": CONNECTION_SETTINGS["client_name"],
        # No retries of their own (redis-py's default retries for seconds): the next
        # sentinel in the list is asked instead, and the command's retry asks again.
        "retry": Retry(NoBackoff(), 0),
    }
    if parsed.sentinel_password is not None:
        sentinel_kwargs["password"] = parsed.sentinel_password
    if parsed.sentinel_username is not None:
        sentinel_kwargs["username"] = parsed.sentinel_username
    manager = Sentinel(  # type: ignore[no-untyped-call]  # (redis-py: untyped)
        list(parsed.sentinels), sentinel_kwargs=sentinel_kwargs
    )
    client: Redis = manager.master_for(
        parsed.master,
        connection_pool_class=BlockingSentinelConnectionPool,
        max_connections=max_connections,
        timeout=POOL_TIMEOUT_S,
        db=parsed.db,
        username=parsed.username,
        password=parsed.password,
        retry=_retry(),
        **CONNECTION_SETTINGS,
    )
    log.info("redis: master %r through Sentinel (%s)", parsed.master, parsed.redacted())
    return client
