"""Fallback-sid stripes: which node may hand out which fallback sids, claimed in Redis.

A join while Redis is unreachable takes a sid from the node's own stripe,
`FALLBACK_SID_BASE + n * 4096 + stripe` (relay.backends.base.fallback_sid). Two nodes in one
stripe would hand out the same sids in a document (one user's cursor drawn as another's
once Redis is back), so each node claims a stripe no live node holds while Redis answers,
and keeps it for as long as it lives: `presence:node:stripes`, one hash (one key, so one
slot on a Cluster) of stripe -> `<expires at ms>:<node id>`. A claim lasts the heartbeat
key's TTL and is renewed with every heartbeat period; an expired claim is free.

A node that never reached Redis since it started, or finds all 4096 stripes held, uses the
stripe its node id hashes to (crc32 mod 4096): one such node collides with a given other
only if they share that stripe and a document during the same outage.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import zlib

from redis.exceptions import RedisError

from relay.backends import redis_cluster, redis_pool
from relay.backends.base import FALLBACK_STRIPES
from relay.backends.redis_pool import UNREACHABLE, Client, Reachability

log = logging.getLogger("relay.redis.stripes")

STRIPES_KEY = "presence:node:stripes"
STRIPES = FALLBACK_STRIPES  # (more nodes than docs/scaling.md's largest deployment)

# Keep ARGV[4] (the stripe held, -1 for none) if it is still this node's or free; else the
# first free stripe from ARGV[2] on. Returns the stripe claimed, or -1 when all are held.
CLAIM_STRIPE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local node, first, ttl, held = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local n = tonumber(ARGV[5])
local function free(s)
  local v = redis.call('HGET', KEYS[1], s)
  if not v then return true end
  local sep = string.find(v, ':', 1, true)
  return string.sub(v, sep + 1) == node or tonumber(string.sub(v, 1, sep - 1)) < now
end
local got = -1
if held >= 0 and free(held) then
  got = held
else
  for i = 0, n - 1 do
    local s = (first + i) % n
    if free(s) then got = s break end
  end
end
if got >= 0 then
  redis.call('HSET', KEYS[1], got, (now + ttl) .. ':' .. node)
end
redis.call('PEXPIRE', KEYS[1], ttl)
return got
"""


def preferred_stripe(node_id: str) -> int:
    """Where a node's search for a free stripe starts (and its stripe when it has none)."""
    return zlib.crc32(node_id.encode()) % STRIPES


class Stripes:
    """This node's claim on a stripe: made at start, renewed every `every_s`, and again at
    once when Redis comes back (`renew_now`: it may have restarted empty)."""

    def __init__(self, redis: Client, reach: Reachability, node_id: str, ttl_ms: int) -> None:
        self.redis = redis
        self.reach = reach
        self.node_id = node_id
        self.ttl_ms = ttl_ms
        self.every_s = ttl_ms / 4000
        self.preferred = preferred_stripe(node_id)
        self.held: int | None = None  # None: no claim (yet); fallback sids use `preferred`
        self.full = 0  # claims that found every stripe held
        self._claim = redis_cluster.Script(redis, CLAIM_STRIPE)
        self._wake = asyncio.Event()

    @property
    def stripe(self) -> int:
        return self.preferred if self.held is None else self.held

    def renew_now(self) -> None:
        self._wake.set()

    async def claim(self) -> None:
        held = -1 if self.held is None else self.held
        got = int(
            await self._claim(
                keys=[STRIPES_KEY],
                args=[self.node_id, self.preferred, self.ttl_ms, held, STRIPES],
            )
        )
        if got < 0:
            if self.full == 0:
                log.warning(
                    "redis: all %d fallback-sid stripes are held by live nodes; this node "
                    "uses stripe %d (its id's hash), which another node may share",
                    STRIPES,
                    self.preferred,
                )
            self.full += 1
            self.held = None
        elif got != self.held:
            if self.held is not None:
                log.warning("redis: fallback-sid stripe %d taken by another node", self.held)
            self.held = got

    async def keep(self) -> None:
        """Renew the claim (RedisStore.start made the first; `renew_now` also wakes this when
        Redis answers again, so a start without Redis claims as soon as it comes)."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.every_s)
            self._wake.clear()  # (after the wait: a renew_now asked before it is not lost)
            redis_pool.check_cancelled()
            if self.reach.up:
                try:
                    await self.claim()
                except (*UNREACHABLE, RedisError) as exc:
                    if redis_pool.cancelling():
                        raise asyncio.CancelledError from None
                    log.info("redis: stripe claim failed (%s); retrying", exc)
