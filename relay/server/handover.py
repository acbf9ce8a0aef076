"""Sessions that move between nodes sharing Redis: a resume through another node, and the
rolling deploy (a node's SIGTERM suspends its sessions for the others to resume).

Every resumable session of this node has a record in Redis (relay/backends/redis_resume.py).
A HELLO on this node that names a token it does not hold claims the record (GETDEL: once)
and, after checking the identity, asks the owner on its control channel (`node:<id>`, a
pub/sub channel no document can have: `node:` is a reserved doc-id namespace) to release
the session. The owner takes it over like a local resume (an open socket is closed 4409),
answers with each member's state, keeps mirroring the members and stops owning them; this
node adopts them: the same handles, sids, colors and state, without a `left` or a `joined`
anywhere. An owner that shut down for a deploy cannot answer: its heartbeat key says
`stopping` for the grace, and the members' state comes from their records instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import logging
from typing import Any

import msgpack

from relay.core import protocol as p
from relay.core.model import ActivityType
from relay.core.session import RESUMING, SUSPENDED, new_peer
from relay.server.client import Client
from relay.server.cluster import twin_session
from relay.twin import Membership, Peer, TokenBucket

log = logging.getLogger("relay.handover")

# (Nothing here imports redis: a relay on the memory backend never loads it.)
CONTROL = "node:"  # + node id: the control channel's pseudo document id
OPEN_TTL_MS = 24 * 3600 * 1000  # an open session's record (deleted when it ends)
SLACK_MS = 5000  # a suspended session's record outlives the grace by this much
UNKNOWN = object()  # the owner answered: it does not hold that session (any more)


def control_channel(node_id: str) -> str:
    return CONTROL + node_id


def token_hash(token: str) -> str:
    """What Redis and the control channel know of a resume token (never the token)."""
    return hashlib.sha256(token.encode()).hexdigest()[:40]


class Handover:
    def __init__(self, hub: Any, ask_timeout_s: float = 1.0) -> None:
        self.hub = hub
        self.registry = hub.registry
        self.cluster = hub.cluster
        self.store = hub.store
        self.broker = hub.broker
        self.records = hub.store.resumes
        self.node_id: str = hub.broker.node_id
        self.ask_timeout_s = ask_timeout_s
        self._asks: dict[int, asyncio.Future[Any]] = {}
        self._budgets: dict[int, Any] = {}  # a resuming client's budgets, from the owner
        self._collecting: list[tuple[str, dict[str, Any], int]] | None = None
        self._ids = itertools.count(1)
        self._agent_tasks: set[asyncio.Task[None]] = set()
        self.resumed = 0  # sessions this node took over from another
        self.released = 0  # sessions another node took over from this one
        self.broker.subscribe(control_channel(self.node_id))

    # ------------------------------------------------------------ this node's sessions

    def _record(self, client: Client, docs: bool) -> dict[str, Any]:
        user = client.user
        record: dict[str, Any] = {"node": self.node_id, "user": user.user_id,
                                  "ws": user.workspace_id}  # fmt: skip
        if docs:
            record["docs"] = [[h, m.doc.doc_id, m.sid] for h, m in client.handles.items()]
        return record

    # The hub calls these for the sessions in its `resumable` map (keyed by `resume_key`,
    # which is also the record's key in Redis).

    def opened(self, client: Client) -> None:
        self.records.remember(client.resume_key, self._record(client, False), OPEN_TTL_MS)

    def changed(self, client: Client) -> None:
        """An open session joined or left a document: its record lists them, so that if
        this node dies, the session can be resumed elsewhere from the members' records."""
        if self.hub.resumable.get(client.resume_key) is client:
            self.records.remember(client.resume_key, self._record(client, True), OPEN_TTL_MS)

    def suspended(self, client: Client, grace_ms: int) -> None:
        """The session is held: its record now lists its documents (for the grace). During
        `suspend_all` the records are collected, to be written at once and awaited."""
        entry = (client.resume_key, self._record(client, True), grace_ms + SLACK_MS)
        if self._collecting is not None:
            self._collecting.append(entry)
        else:
            self.records.remember(*entry)

    def ended(self, client: Client) -> None:
        self.records.forget(client.resume_key)

    # ------------------------------------------------------------ the control channel

    def on_control(self, frame: bytes) -> None:
        try:
            msg = msgpack.unpackb(frame, raw=False)
            op = msg["op"]
        except Exception:
            log.warning("ignoring a malformed control message")
            return
        if op == "release":
            self._release(msg)
        elif op in ("released", "unknown"):
            fut = self._asks.pop(msg.get("id"), None)
            if fut is not None and not fut.done():
                fut.set_result(msg if op == "released" else UNKNOWN)
        elif op == "agent":  # another node took a PUT/DELETE of a member we hold
            task = asyncio.get_running_loop().create_task(self._agent_request(msg))
            self._agent_tasks.add(task)
            task.add_done_callback(self._agent_tasks.discard)
        elif op == "agent-answer":
            fut = self._asks.pop(msg.get("id"), None)
            if fut is not None and not fut.done():
                fut.set_result(msg)

    def _release(self, msg: dict[str, Any]) -> None:
        """Another node resumes one of our sessions: hand it over (see the module doc)."""
        client = self.hub.resumable.get(msg.get("h", ""))
        reply: dict[str, Any] = {"op": "unknown", "id": msg.get("id")}
        if client is not None and client.session.resumable:
            peer, bad_frames = client.session.take_over()
            self.hub._run(client)  # an open socket is closed 4409; the record is let go
            now = self.hub.clock()
            members = []
            for h, m in peer.handles.items():
                doc = m.doc
                s = doc.sessions.get(m.sid)
                if s is None:
                    continue
                members.append([h, doc.doc_id, list(s.member()), s.user.workspace_id])
                local = self.registry.local.get(doc.doc_id)
                if local is not None:
                    local.pop(m.sid, None)
                self.store.session_released(doc.doc_id, s)
                if self.cluster.unused(doc):
                    self.registry.drop(doc)
                else:  # others here still see it: it is mirrored from now on
                    s.remote = True
                    self.cluster.released(doc.doc_id, m.sid, now)
            # The budgets go along: a resume elsewhere must not reset a rate limit.
            budget = [list(peer.bucket.state()), bad_frames.times()]
            reply = {"op": "released", "id": msg.get("id"), "members": members, "budget": budget}
            self.released += 1
        self.broker.publish(control_channel(str(msg.get("to"))), msgpack.packb(reply))

    async def _agent_request(self, msg: dict[str, Any]) -> None:
        try:
            answer = await self.hub.agents.request(
                str(msg["method"]), str(msg["doc"]), str(msg["member"]), bytes(msg["body"]),
                forwarded=True,
            )  # fmt: skip
            reply = {"op": "agent-answer", "id": msg.get("id"), "status": answer.status,
                     "body": answer.body}  # fmt: skip
        except Exception:
            log.exception("a forwarded members request failed")
            reply = {"op": "agent-answer", "id": msg.get("id"), "status": 503,
                     "body": {"error": "failed; try again"}}  # fmt: skip
        self.broker.publish(control_channel(str(msg.get("to"))), msgpack.packb(reply))

    async def forward_agent(
        self, owner: str, method: str, doc_id: str, member_id: str, body: bytes
    ) -> dict[str, Any] | None:
        """Ask the node holding a member set over HTTP to answer a PUT/DELETE of it: its
        answer ({"status", "body"}), or None when none came in time."""
        ask_id = next(self._ids)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._asks[ask_id] = fut
        msg = {"op": "agent", "id": ask_id, "to": self.node_id, "method": method,
               "doc": doc_id, "member": member_id, "body": body}  # fmt: skip
        self.broker.publish(control_channel(owner), msgpack.packb(msg, use_bin_type=True))
        try:
            answer: dict[str, Any] = await asyncio.wait_for(fut, self.ask_timeout_s)
            return answer
        except TimeoutError:
            return None
        finally:
            self._asks.pop(ask_id, None)

    async def _ask(self, owner: str, h: str) -> Any:
        """The owner's answer: its `released` message, UNKNOWN, or None (none in time)."""
        ask_id = next(self._ids)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._asks[ask_id] = fut
        msg = {"op": "release", "h": h, "to": self.node_id, "id": ask_id}
        self.broker.publish(control_channel(owner), msgpack.packb(msg))
        try:
            return await asyncio.wait_for(fut, self.ask_timeout_s)
        except TimeoutError:
            return None
        finally:
            self._asks.pop(ask_id, None)

    # ------------------------------------------------------------ resuming here

    async def resume(self, client: Client, token: str) -> None:
        """A HELLO here names a session this node does not hold: find it elsewhere."""
        session = client.session
        members: Any = None
        owner = ""
        try:
            h = token_hash(token)
            record = await self.records.claim(h)
            if record is not None and record.get("node") != self.node_id:
                owner = str(record.get("node"))
                members = await self._find(client, h, record)
        except Exception:
            log.exception("resume through another node failed")
            members = None
        try:
            if isinstance(members, list):
                await self._adopt(client, members, owner)
            else:
                session.resume_refused(self.hub.clock())
        finally:
            self._budgets.pop(id(client), None)
        self.hub._run(client)

    async def _find(self, client: Client, h: str, record: dict[str, Any]) -> Any:
        grant = client.session.grant
        docs = [tuple(d) for d in record.get("docs") or []]
        if (
            record.get("user") != grant.user.user_id
            or record.get("ws") != grant.user.workspace_id
            or not all(grant.allows(d[1]) for d in docs)
        ):
            # Not this client's to resume: put the claim back, untouched.
            await self.records.restore(h, record, OPEN_TTL_MS if not docs else
                                       self.hub.grace_ms + SLACK_MS)  # fmt: skip
            return None
        owner = str(record["node"])
        state = await self.records.node_state(owner)
        if state == "up":
            answer = await self._ask(owner, h)
            if answer is UNKNOWN:
                return None
            if answer is not None:
                self._budgets[id(client)] = answer.get("budget")
                return answer.get("members", [])
            state = await self.records.node_state(owner)
        if state == "up" or not docs:
            return None  # it may still hold the session: taking it could double it
        return await self.records.member_records(owner, docs)

    async def _adopt(self, client: Client, members: list[Any], owner: str) -> None:
        hub, cluster, registry = self.hub, self.cluster, self.registry
        adopted: list[tuple[int, Any, int]] = []
        opened: list[str] = []
        try:
            for h, doc_id, member, workspace in members:
                cluster.begin(doc_id)
                opened.append(doc_id)
                doc = await cluster.open_document(doc_id)
                s = twin_session(member, workspace)
                s.remote = False
                # Held as the others last saw it; `reconnect` recomputes and announces.
                s.disconnected = True
                s.activity = ActivityType.DISCONNECTED
                doc.sessions[s.sid] = s
                registry.local[doc_id][s.sid] = client
                cluster.adopted(doc_id, s.sid)
                self.store.session_adopted(doc_id, s, owner)
                adopted.append((int(h), doc, s.sid))
        finally:
            for doc_id in opened:
                cluster.end(doc_id)
        now = hub.clock()
        session = client.session
        if session.state != RESUMING:  # the new connection went away meanwhile
            for _, doc, sid in adopted:
                hub._leave(Membership(doc, sid), p.LOST)
            return
        peer = new_peer(session.rules, now, Peer, TokenBucket, hub.stats.hot)
        budget = self._budgets.pop(id(client), None)
        if budget:  # (an owner that is gone took its budgets along: they start afresh)
            with contextlib.suppress(Exception):
                peer.bucket.restore(budget[0])
                session.bad_frames.restore(budget[1])
        joined = []
        for h, doc, sid in adopted:
            m = Membership(doc, sid)
            peer.handles[h] = m
            doc.reconnect(sid, now)
            joined.append((h, m, doc.snapshot(), hub.recent_of(doc, now)))
        session.resumed(peer, session.bad_frames, joined, now)
        hub.stats.updates["resumed"] += 1
        self.resumed += 1

    # ------------------------------------------------------------ a rolling deploy

    async def suspend_all(self, grace_ms: int) -> None:
        """SIGTERM on shared Redis: hold every session for the others to resume, with its
        record written before any client is told to go (it reconnects at once)."""
        hub = self.hub
        now = hub.clock()
        records: list[tuple[str, dict[str, Any], int]] = []
        self._collecting = records
        try:
            for client in list(hub.clients):
                client.session.suspend(now, grace_ms)
                hub._run(client)  # (-> `suspended`, which collects the record)
            written = {key for key, _, _ in records}
            for key, client in list(hub.resumable.items()):  # held before: for the grace
                if client.session.state == SUSPENDED and key not in written:
                    self.suspended(client, grace_ms)
        finally:
            self._collecting = None
        if records:
            await self.records.remember_now(records)
        self.store.handover_ms = grace_ms + SLACK_MS
