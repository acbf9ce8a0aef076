"""Resume records: where a session that a HELLO may resume lives, for every node to find.

`presence:resume:<hash>` (the hash of the WELCOME's resume_token: Redis never holds a token
itself) is a small JSON map: the owner `node`, the identity (`user`, `ws`), and, once the
session is suspended, its documents (`docs`: [[handle, doc_id, sid], ...]). It is written
when a session opens (no docs, a day's TTL), rewritten when it is suspended (with its docs,
for the grace), deleted when it ends. A resume on another node claims it with GETDEL, so a
token is used once however many nodes race for it; a claim that cannot be honoured (another
identity) puts it back.

The owner hands the session over when asked on its control channel (relay/server/hub.py);
a node that shut down for a deploy cannot be asked, so its heartbeat key says `stopping` for
the grace, and the claimer takes the members' state from their records in
`presence:<doc>:members` instead (`member_records`).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from redis.exceptions import RedisError

from relay.backends import redis_keys as k
from relay.backends.redis_pool import UNREACHABLE, Client

log = logging.getLogger("relay.redis.resume")


def resume_key(token_hash: str) -> str:
    """`token_hash`: relay.server.handover.token_hash of the token (the token never)."""
    return f"presence:resume:{token_hash}"


class ResumeRecords:
    def __init__(self, redis: Client, node_id: str) -> None:
        self.redis = redis
        self.node_id = node_id
        self._tasks: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------ the owner's side

    def remember(self, h: str, record: dict[str, Any], ttl_ms: int) -> None:
        """Write (or rewrite) a record in the background (never awaited by the hot path)."""
        self._spawn(self._set([(h, record, ttl_ms)]))

    async def remember_now(self, records: list[tuple[str, dict[str, Any], int]]) -> None:
        """Write records and wait for it (a shutdown, before its clients reconnect)."""
        await self._set(records)

    def forget(self, h: str) -> None:
        self._spawn(self._delete(h))

    # ------------------------------------------------------------ agents' owners

    async def own_agent(self, doc_id: str, member_id: str, ttl_ms: int) -> None:
        """This node holds the member set over HTTP (relay/server/agents.py), for `ttl_ms`:
        a PUT reaching another node is forwarded here."""
        await self.redis.set(k.agent_key(doc_id, member_id), self.node_id, px=max(1, ttl_ms))

    def renew_agent(self, doc_id: str, member_id: str, ttl_ms: int) -> None:
        self._spawn(self.own_agent(doc_id, member_id, ttl_ms))

    def release_agent(self, doc_id: str, member_id: str) -> None:
        self._spawn(self._release_agent(doc_id, member_id))

    async def _release_agent(self, doc_id: str, member_id: str) -> None:
        key = k.agent_key(doc_id, member_id)
        # Only our own claim: a node that took the agent over meanwhile keeps its record.
        if k.as_text(await self.redis.get(key) or b"") == self.node_id:
            await self.redis.delete(key)

    async def agent_owner(self, doc_id: str, member_id: str) -> str | None:
        raw = await self.redis.get(k.agent_key(doc_id, member_id))
        return None if raw is None else k.as_text(raw)

    # ------------------------------------------------------------ a claimer's side

    async def claim(self, h: str) -> dict[str, Any] | None:
        raw = await self.redis.getdel(resume_key(h))
        if raw is None:
            return None
        try:
            record = json.loads(raw)
        except ValueError:
            return None
        return record if isinstance(record, dict) else None

    async def restore(self, h: str, record: dict[str, Any], ttl_ms: int) -> None:
        await self._set([(h, record, ttl_ms)])

    async def node_state(self, node_id: str) -> str:
        """`up` (heartbeating), `stopping` (shut down for a deploy, its sessions held) or
        `gone`."""
        raw = await self.redis.get(k.node_key(node_id))
        if raw is None:
            return "gone"
        try:
            value = json.loads(raw)
        except ValueError:
            return "up"
        return "stopping" if isinstance(value, dict) and value.get("stopping") else "up"

    async def member_records(
        self, node_id: str, docs: list[tuple[int, str, int]]
    ) -> list[tuple[int, str, list[Any], str]]:
        """The members of a stopped node's session, from their records: (handle, doc_id,
        MEMBER, workspace), only those the node still owns."""
        pipe = self.redis.pipeline(transaction=False)
        for _, doc_id, sid in docs:
            pipe.hget(k.members_key(doc_id), str(sid))
        out = []
        for (h, doc_id, _), raw in zip(docs, await pipe.execute(), strict=True):
            r = k.parse_member_record(raw) if raw is not None else None
            if r is not None and r.node_id == node_id:
                out.append((h, doc_id, list(r.member), r.workspace_id))
        return out

    # ------------------------------------------------------------ plumbing

    async def _set(self, records: list[tuple[str, dict[str, Any], int]]) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for h, record, ttl_ms in records:
            pipe.set(resume_key(h), json.dumps(record, separators=(",", ":")), px=ttl_ms)
        await pipe.execute()

    async def _delete(self, h: str) -> None:
        await self.redis.delete(resume_key(h))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(self._quiet(coro))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _quiet(self, coro: Any) -> None:
        # A record that could not be written costs a resume (the client joins afresh), never
        # presence itself: Redis down is logged by the store's own reachability.
        try:
            await coro
        except (*UNREACHABLE, RedisError) as exc:
            log.debug("resume record not written: %s", exc)

    async def close(self) -> None:
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=1.0)
