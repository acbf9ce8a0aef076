"""Members set over HTTP: agents, bots and services present in a document without a socket
(protocol v1.1, "Members set over HTTP"; docs/protocol.md, section 11).

`PUT /internal/presence/{doc}/members/{member_id}` creates or updates a member of kind 1
(agent) whose user id is `member_id`; every PUT renews its `ttl_s`; `DELETE` makes it leave
(LEFT), and the end of its TTL too (EXPIRED). An agent is an ordinary session of the
document on the node that took its first PUT: its moves are batched and coalesced like
anyone's, it counts toward the document's limits, and with Redis it is written, mirrored and
reaped like every member of that node. It has no socket, so it is not among the registry's
local members (nothing is sent to it); the registry's `agents` keeps its document open.

The requests come from `relay.server.httpbody` (websockets' HTTP parser refuses request
bodies, so PUT and DELETE are answered before it sees them).
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import replace
from typing import Any

from relay.auth import MAX_ID, carriable
from relay.core import protocol as p
from relay.core.agent_body import UNSET, AgentUpdate, BadBody, parse_agent_body
from relay.core.ids import doc_id_problem
from relay.core.model import UserInfo
from relay.core.ratelimit import TokenBucket
from relay.exceptions import BackendUnavailable, DocumentFull
from relay.twin import Document, Membership

log = logging.getLogger("relay.agents")

AGENT_WORKSPACE = "default"


class Agent:
    __slots__ = ("bucket", "doc", "expires_at_ms", "member_id", "sid", "timer")

    def __init__(self, doc: Document, sid: int, member_id: str, bucket: TokenBucket) -> None:
        self.doc = doc
        self.sid = sid
        self.member_id = member_id
        self.bucket = bucket
        self.expires_at_ms = 0
        self.timer: asyncio.TimerHandle | None = None


class Answer:
    """An HTTP answer: status, and a JSON body (None: no body)."""

    __slots__ = ("body", "status")

    def __init__(self, status: int, body: Any = None) -> None:
        self.status = status
        self.body = body

    def encode(self) -> bytes:
        return b"" if self.body is None else json.dumps(self.body).encode()


def _error(status: int, message: str, field: str | None = None) -> Answer:
    body: dict[str, Any] = {"error": message}
    if field is not None:
        body["field"] = field
    return Answer(status, body)


class Agents:
    def __init__(self, hub: Any) -> None:
        self.hub = hub  # (the Hub; not imported: the hub owns this object)
        self.live: dict[tuple[str, str], Agent] = {}
        # Members being created (opening a document may take Redis round trips): a second
        # PUT of the same member waits for the first instead of creating it twice.
        self._creating: dict[tuple[str, str], asyncio.Future[None]] = {}

    # ------------------------------------------------------------ requests

    async def request(
        self, method: str, doc_id: str, member_id: str, body: bytes, forwarded: bool = False
    ) -> Answer:
        """A PUT or DELETE. With Redis, one this node does not hold the member for goes to
        the node that does (`forwarded`: it came from another node, answer it here)."""
        problem = doc_id_problem(doc_id)
        if problem is not None:
            return _error(400, problem, "doc")
        if not member_id or len(member_id) > MAX_ID or not carriable(member_id):
            return _error(400, f"member_id must be 1 to {MAX_ID} characters", "member_id")
        key = (doc_id, member_id)
        pending = self._creating.get(key)
        if pending is not None:
            await asyncio.shield(pending)
        if key not in self.live and not forwarded and self.hub.handover is not None:
            answer = await self._elsewhere(method, doc_id, member_id, body)
            if answer is not None:
                return answer
        if method == "DELETE":
            return self._delete(key)
        return await self._put(key, body)

    async def _elsewhere(
        self, method: str, doc_id: str, member_id: str, body: bytes
    ) -> Answer | None:
        """The answer of the live node that holds the member, or None: nobody holds it, or
        its node is gone, stopping or silent (then this node takes it over: a PUT creates it
        here; the dead node's copy is reaped with that node's other members)."""
        records = self.hub.store.resumes
        try:
            owner = await records.agent_owner(doc_id, member_id)
            if owner is None or owner == self.hub.broker.node_id:
                return None
            if await records.node_state(owner) != "up":
                return None
        except Exception as exc:  # Redis unreachable: answer from here
            log.info("agent owner lookup failed: %s", exc)
            return None
        answer = await self.hub.handover.forward_agent(owner, method, doc_id, member_id, body)
        if answer is None:
            return None
        return Answer(int(answer["status"]), answer.get("body"))

    async def _put(self, key: tuple[str, str], raw: bytes) -> Answer:
        try:
            update = parse_agent_body(raw)
        except BadBody as exc:
            return _error(400, exc.message, exc.field)
        hub = self.hub
        now = hub.clock()
        agent = self.live.get(key)
        if agent is not None and agent.doc.sessions.get(agent.sid) is None:
            self._forget(key)  # its document went away under it (a reload): start afresh
            agent = None
        if agent is not None and not agent.bucket.take(now):
            return _error(429, "too many PUTs for this member; slow down")
        created = agent is None
        if created and update.selection not in (UNSET, None) and update.cursor in (UNSET, None):
            # (checked before it exists: the others must not see it join and leave again)
            return _error(400, "a selection needs a cursor (its head)", "selection")
        if agent is None:
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._creating[key] = done
            try:
                agent = await self._create(key, update)
            except DocumentFull as exc:
                return _error(409, str(exc))
            except BackendUnavailable as exc:
                return _error(503, f"degraded: {exc}")
            finally:
                del self._creating[key]
                done.set_result(None)
            now = hub.clock()
        problem = self._apply(agent, update, now)
        if problem is not None:
            if created:
                self._leave(key, p.LEFT)
            return problem
        agent.expires_at_ms = now + update.ttl_s * 1000
        self._arm(key, agent)
        records = hub.store.resumes if hub.handover is not None else None
        if records is not None:  # where the other nodes forward this member's requests
            if created:
                try:
                    await records.own_agent(key[0], key[1], update.ttl_s * 1000)
                except Exception as exc:  # (then a PUT elsewhere creates it there)
                    log.info("agent owner record failed: %s", exc)
            else:
                records.renew_agent(key[0], key[1], update.ttl_s * 1000)
        doc = agent.doc
        hub.store.session_changed(doc.doc_id, doc.sessions[agent.sid])
        answer = {"sid": agent.sid, "expires_at": agent.expires_at_ms}
        return Answer(201 if created else 200, answer)

    def _delete(self, key: tuple[str, str]) -> Answer:
        if key not in self.live:
            return _error(404, "no such member here")
        self._leave(key, p.LEFT)
        return Answer(204)

    # ------------------------------------------------------------ lifecycle

    async def _create(self, key: tuple[str, str], update: AgentUpdate) -> Agent:
        hub = self.hub
        doc_id, member_id = key
        avatar = update.avatar_url if update.avatar_url is not UNSET else None
        user = UserInfo(member_id, update.name, AGENT_WORKSPACE, avatar)
        registry, cluster = hub.registry, hub.cluster
        sid: int | None = None
        if cluster is not None:
            cluster.begin(doc_id)
            try:
                doc, sid = await cluster.prepare(doc_id)
                session = doc.join(user, hub.clock(), sid=sid, kind=p.KIND_AGENT)
                # Before `end`, which drops a document nothing holds.
                registry.agents.setdefault(doc_id, set()).add(session.sid)
            finally:
                cluster.end(doc_id)
        else:
            doc = registry.open(doc_id)
            try:
                session = doc.join(user, hub.clock(), kind=p.KIND_AGENT)
            except DocumentFull:
                if doc.empty:
                    registry.drop(doc)
                raise
        registry.agents.setdefault(doc_id, set()).add(session.sid)  # (again: a no-op)
        cfg = hub.config
        bucket = TokenBucket(cfg.agent_puts_per_s, cfg.agent_puts_burst, 1e18, hub.clock())
        agent = self.live[key] = Agent(doc, session.sid, member_id, bucket)
        hub.stats.updates["joined"] += 1
        for joined in hub.on_member_joined:
            joined(doc, session)
        return agent

    def _apply(self, agent: Agent, u: AgentUpdate, now: int) -> Answer | None:
        doc, sid = agent.doc, agent.sid
        s = doc.sessions[sid]
        avatar = s.user.avatar_url if u.avatar_url is UNSET else u.avatar_url
        if u.name != s.user.name or avatar != s.user.avatar_url:
            # Shown in snapshots and over HTTP from now on (there is no event for a rename).
            s.user = replace(s.user, name=u.name, avatar_url=avatar)
        if u.cursor is not UNSET or u.selection is not UNSET:
            cursor = s.cursor if u.cursor is UNSET else u.cursor
            selection = None if u.selection is UNSET else u.selection
            if selection is not None and cursor is None:
                return _error(400, "a selection needs a cursor (its head)", "selection")
            doc.move_cursor(sid, cursor, selection, now)
        if u.typing is not UNSET:
            doc.set_typing(sid, u.typing, now)
        if u.viewport is not UNSET:
            top, bottom, pct = u.viewport
            doc.set_viewport(sid, top, bottom, pct, now)
        if u.status is not UNSET:
            doc.set_status(sid, u.status, now)
        return None

    def _arm(self, key: tuple[str, str], agent: Agent) -> None:
        if agent.timer is not None:
            agent.timer.cancel()
        delay = max(0.0, (agent.expires_at_ms - self.hub.clock()) / 1000.0)
        agent.timer = asyncio.get_running_loop().call_later(delay, self._expire, key, agent)

    def _expire(self, key: tuple[str, str], agent: Agent) -> None:
        agent.timer = None
        if self.live.get(key) is agent:
            if self.hub.clock() < agent.expires_at_ms:  # renewed meanwhile: a clock step
                self._arm(key, agent)
                return
            self._leave(key, p.EXPIRED)

    def _leave(self, key: tuple[str, str], reason: int) -> None:
        agent = self._forget(key)
        if agent is None:
            return
        if self.hub.handover is not None:
            self.hub.store.resumes.release_agent(*key)
        doc = agent.doc
        agents = self.hub.registry.agents.get(doc.doc_id)
        if agents is not None:
            agents.discard(agent.sid)
            if not agents:
                del self.hub.registry.agents[doc.doc_id]
        if doc.sessions.get(agent.sid) is not None:
            # (The ticker drops the document after the flush that carries this `left`, if
            # nobody is left in it.)
            self.hub._leave(Membership(doc, agent.sid), reason)

    def _forget(self, key: tuple[str, str]) -> Agent | None:
        agent = self.live.pop(key, None)
        if agent is not None and agent.timer is not None:
            agent.timer.cancel()
            agent.timer = None
        return agent

    def leave_all(self, reason: int) -> None:
        """Every agent of this node leaves now (a shutdown)."""
        for key in list(self.live):
            self._leave(key, reason)

    def of(self, doc_id: str, member_id: str) -> Agent | None:
        return self.live.get((doc_id, member_id))
