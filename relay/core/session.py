"""A connection's protocol rules, sans-I/O: frames and `now_ms` in, actions out.

Like websockets' `Protocol`, a `Session` never touches a socket or reads a clock. The shell
feeds it what arrived (`receive`, `unapplied`, `receive_text`), tells it what the registry
answered to a join (`joined`, `join_refused`), wakes it at its `deadline()` (`advance`), and
carries out what `actions()` returns:

    Opened(grant)        HELLO was accepted (WELCOME is queued before it)
    Send(frame)          a direct reply: WELCOME, JOINED, ERROR, PONG
    Join(h, doc_id)      open the document: answer with joined() or join_refused()
    Leave(h, m, reason)  the session left the document (LEAVE, a close, the grace's end)
    Suspend(h, member)   the connection was lost: show the member DISCONNECTED, keep it
    Resume(token)        HELLO asked to resume: answer with resumed() or resume_refused()
    Close(code, reason)  end the connection (every document was left or suspended first)

The rules, in the order docs/protocol.md gives them: HELLO first, within `auth_timeout_ms`
(4401), version 1 (4400), a token that verifies (4401); then each frame is checked for
shape (ERROR 1 / 2), handle (ERROR 3), ranges (ERROR 7); JOIN for handle and document in
use (8), the grant (4), `max_documents` (9), the token's `exp` (4401); a frame over the rate
limit is dropped with at most one ERROR 6 a second, and continuous excess closes 4429; more
than `max_bad_frames` bad frames in a window closes 4400. While a join is in progress (the
registry may need Redis round trips), later frames wait, in order, up to the burst size.

The hot path (`Peer.feed_wire` in the inbound fast path) applies hot frames straight to the
documents through `peer`; what it does not apply comes back through `unapplied`.

Sessions outlive sockets (v1.1). A connection lost without a deliberate close is
`suspend`ed: its members stay, shown DISCONNECTED, until `reconnect_grace_ms` runs out
(then they leave with LOST, or EVICTED when the token expired). A new connection whose HELLO
carries `info.resume` waits (RESUMING, its frames held) while the shell finds the old
session; `take_over` hands over the old one's peer (handles, rate-limit bucket) and
bad-frame window, so a resume never resets a budget, and `resumed` re-attaches them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from relay.core import protocol as p
from relay.core.colors import preferred_color
from relay.core.document import NEVER
from relay.core.peer import FALLBACK, RATE_LIMITED
from relay.core.peer import Peer as PurePeer
from relay.core.ratelimit import BadFrameWindow
from relay.core.ratelimit import TokenBucket as PureBucket
from relay.exceptions import AuthError, ProtocolError

if TYPE_CHECKING:
    # Both twins have the interface of relay/_fast.pyi; the session works with either.
    from relay.twin import HotCounts, Membership, Peer

AWAITING_HELLO = 0
OPEN = 1
CLOSED = 2
RESUMING = 3  # HELLO asked to resume: waiting for the shell to find the old session
SUSPENDED = 4  # the connection was lost; the members are held for the grace

# Why the relay closed: the reason its documents end with.
EVICTING_CLOSES = frozenset(
    {p.CLOSE_PROTOCOL, p.CLOSE_UNAUTHENTICATED, p.CLOSE_TOO_SLOW, p.CLOSE_RATE_LIMIT}
)

# Errors that count toward max_bad_frames: the client sent something it should not have.
# (RATE_LIMITED has its own escalation; FORBIDDEN / capacity answers are the server's call.)
BAD_FRAME_CODES = frozenset(
    {p.BAD_FRAME, p.UNKNOWN_TYPE, p.NOT_JOINED, p.INVALID_VALUE, p.ALREADY_JOINED}
)


@dataclass(frozen=True, slots=True)
class SessionRules:
    """The connection rules' settings (all times in ms)."""

    auth_timeout_ms: int = 5000
    max_documents: int = 32
    max_frames_per_s: int = 200
    max_frames_burst: int = 400
    rate_limit_close_after_ms: float = 5000.0
    max_bad_frames: int = 20
    bad_frames_window_ms: float = 10_000.0


class SessionStats:
    """Counters every session of a node shares (plain ints, read at scrape time)."""

    __slots__ = ("closes", "errors", "frames_other")

    def __init__(self) -> None:
        self.frames_other = 0  # frames the hot path did not apply (cold, bad, dropped)
        self.errors: dict[int, int] = {}
        self.closes: dict[int, int] = {}


# ---------------------------------------------------------------- actions


@dataclass(frozen=True, slots=True)
class Opened:
    grant: Any  # relay.auth.Grant


@dataclass(frozen=True, slots=True)
class Send:
    frame: bytes


@dataclass(frozen=True, slots=True)
class Join:
    handle: int
    doc_id: str


@dataclass(frozen=True, slots=True)
class Leave:
    handle: int
    member: Membership
    reason: int = p.LEFT


@dataclass(frozen=True, slots=True)
class Suspend:
    handle: int
    member: Membership


@dataclass(frozen=True, slots=True)
class Resume:
    token: str


@dataclass(frozen=True, slots=True)
class Close:
    code: int
    reason: str


Action = Opened | Send | Join | Leave | Suspend | Resume | Close
# (token, HELLO info) -> Grant, raising AuthError: token verification is the shell's
# (it reads the clock); the rule that HELLO needs one is the session's.
Authenticate = Callable[[str | None, dict[Any, Any]], Any]


def new_peer(
    rules: SessionRules,
    now_ms: int,
    peer_class: Any,
    bucket_class: Any,
    counts: HotCounts | None = None,
) -> Peer:
    """A Peer of the given twin (relay.twin's, or the pure one) with the session's limits."""
    bucket = bucket_class(
        rules.max_frames_per_s, rules.max_frames_burst, rules.rate_limit_close_after_ms, now_ms
    )
    peer: Peer = peer_class(bucket, counts)
    return peer


class Session:
    """One client's protocol state: its HELLO, grant, handles, budgets and held frames."""

    __slots__ = (
        "_actions",
        "_auth_deadline",
        "_end_reason",
        "_suspended_until",
        "authenticate",
        "bad_frames",
        "connection_id",
        "grant",
        "held",
        "joining",
        "peer",
        "resume_token",
        "rules",
        "state",
        "stats",
        "welcome_settings",
    )

    def __init__(
        self,
        rules: SessionRules,
        welcome_settings: dict[str, Any],
        authenticate: Authenticate,
        connection_id: str,
        now_ms: int,
        peer: Peer | None = None,
        stats: SessionStats | None = None,
        resume_token: str | None = None,
    ) -> None:
        self.rules = rules
        # What WELCOME offers for resuming this session later (the shell makes it: it is
        # random, and the core takes no randomness from anywhere).
        self.resume_token = resume_token
        self.welcome_settings = welcome_settings
        self.authenticate = authenticate
        self.connection_id = connection_id
        self.stats = stats if stats is not None else SessionStats()
        self.state = AWAITING_HELLO
        self.grant: Any = None
        # The hot path's view: handles -> memberships, and the rate limit. The shell passes
        # the twin's Peer (compiled or pure: `new_peer`); the rules here work with either.
        self.peer: Peer = (
            peer if peer is not None else new_peer(rules, now_ms, PurePeer, PureBucket)
        )
        self.bad_frames = BadFrameWindow(rules.max_bad_frames, rules.bad_frames_window_ms)
        # While a join is in progress, later frames wait here (in order).
        self.held: deque[bytes] | None = None
        self.joining: dict[int, str] = {}  # handle -> doc_id of the join in progress
        self._auth_deadline = now_ms + rules.auth_timeout_ms
        self._suspended_until = NEVER
        self._end_reason = p.LOST  # how the members leave when a suspension runs out
        self._actions: list[Action] = []

    # ------------------------------------------------------------ reading the state

    @property
    def handles(self) -> dict[int, Membership]:
        return self.peer.handles

    @property
    def closed(self) -> bool:
        return self.state is CLOSED

    def actions(self) -> list[Action]:
        """What to do, in order (the list is handed over and emptied)."""
        out, self._actions = self._actions, []
        return out

    def deadline(self) -> int:
        """When `advance` must run next (NEVER when nothing is timed)."""
        if self.state == AWAITING_HELLO:
            return self._auth_deadline
        if self.state == SUSPENDED:
            return self._suspended_until
        if self.state == OPEN and self.grant is not None:
            exp = self.grant.expires_at_ms
            if exp is not None:
                return int(exp)
        return NEVER

    # ------------------------------------------------------------ inputs

    def advance(self, now_ms: int, grace_ms: int = 0) -> None:
        """Time passed: no HELLO in time, or the token expired (both close 4401; an expired
        session is held for `grace_ms` so that a resume with a fresh token keeps it), or a
        suspension ran out (its members leave)."""
        if self.state == AWAITING_HELLO and now_ms >= self._auth_deadline:
            self.close(p.CLOSE_UNAUTHENTICATED, "no HELLO in time")
        elif self.state == OPEN and self.grant is not None and self.grant.expired(now_ms):
            self._expired(now_ms, grace_ms)
        elif self.state == SUSPENDED and now_ms >= self._suspended_until:
            self._end(self._end_reason)

    def receive(self, data: bytes, now_ms: int) -> None:
        """One binary message (the fast path took none of it)."""
        if self.state != OPEN:
            if self.state == AWAITING_HELLO:
                self._hello(data, now_ms)
            elif self.state == RESUMING:
                self._hold(data, now_ms)
            return
        if self.held is not None:
            self._hold(data, now_ms)
            return
        handled = self.peer.feed(data, now_ms)  # applied hot frames are counted by the peer
        if handled <= 0:
            self.unapplied(data, handled, now_ms)

    def unapplied(self, data: bytes, handled: int, now_ms: int) -> None:
        """A frame the hot path did not apply: dropped for rate, or for the general rules."""
        if self.state != OPEN:
            return  # the rest of a read that arrived after the close began
        self.stats.frames_other += 1
        if handled == RATE_LIMITED:
            if self.peer.bucket.abusive(now_ms):
                self.close(p.CLOSE_RATE_LIMIT, "rate limit exceeded")
            else:
                self._dropped(now_ms)
        else:
            assert handled == FALLBACK
            self._general(data, now_ms)

    def receive_text(self, now_ms: int) -> None:
        if self.state == AWAITING_HELLO:
            self.close(p.CLOSE_UNAUTHENTICATED, "the first frame must be HELLO")
        elif self.state == OPEN:
            self.stats.frames_other += 1
            self._error(None, p.BAD_FRAME, "text frames are not part of the protocol", now_ms)

    def joined(
        self,
        handle: int,
        member: Membership,
        snapshot: list[Any],
        now_ms: int,
        recent: list[tuple[Any, ...]] | None = None,
    ) -> None:
        """The registry admitted the join: answer JOINED (with who left lately, `recent`),
        then handle what was held."""
        self.joining.pop(handle, None)
        if self.state != OPEN:
            # closed or lost meanwhile: the registry's member leaves again at once
            self._actions.append(Leave(handle, member, p.LEFT if self.state == CLOSED else p.LOST))
            return
        self.peer.handles[handle] = member
        self._send(p.encode_joined(handle, member.doc.doc_id, member.sid, snapshot, recent))
        self._release(now_ms)

    def join_refused(self, handle: int, code: int, message: str, now_ms: int) -> None:
        self.joining.pop(handle, None)
        if self.state != OPEN:
            return
        self._error(handle, code, message, now_ms)
        self._release(now_ms)

    def close(self, code: int, reason: str) -> None:
        """End the session: leave every document at once, then close the connection. The
        documents end with EVICTED for the relay's own verdicts (4400, 4401, 4408, 4429),
        SHUTDOWN for a going-away (1001), LEFT otherwise."""
        if self.state in (CLOSED, SUSPENDED):
            return
        if code in EVICTING_CLOSES:
            why = p.EVICTED
        elif code == p.CLOSE_GOING_AWAY:
            why = p.SHUTDOWN
        else:
            why = p.LEFT
        self._end(why)
        self._close_socket(code, reason)

    def detach(self, reason: int = p.LEFT) -> None:
        """The connection is gone and its session ends now: leave every document."""
        if self.state in (CLOSED, SUSPENDED):
            return
        self._end(reason)

    def suspend(self, now_ms: int, grace_ms: int, end_reason: int = p.LOST) -> None:
        """The connection was lost (or the node is going away on shared state): hold every
        document's member, shown DISCONNECTED, for `grace_ms`; then they leave with
        `end_reason`. With no document, or no grace, the session simply ends."""
        if self.state in (CLOSED, SUSPENDED):
            return
        if grace_ms <= 0 or not self.peer.handles or self.state != OPEN:
            self._end(end_reason)
            return
        self.state = SUSPENDED
        self.held = None
        self._end_reason = end_reason
        self._suspended_until = now_ms + grace_ms
        for h, m in self.peer.handles.items():
            self._actions.append(Suspend(h, m))

    @property
    def resumable(self) -> bool:
        """Whether a new connection may take this session over (open, or held)."""
        return self.state in (OPEN, SUSPENDED)

    def resumable_by(self, grant: Any) -> bool:
        """The same identity (user and workspace), and a grant that still allows every
        document the session is in."""
        mine, theirs = self.grant.user, grant.user
        return (
            self.resumable
            and mine.user_id == theirs.user_id
            and mine.workspace_id == theirs.workspace_id
            and all(grant.allows(m.doc.doc_id) for m in self.peer.handles.values())
        )

    def take_over(self) -> tuple[Peer, BadFrameWindow]:
        """A newer connection resumes this session: hand over the handles and budgets. The
        members are not left (they move to the new connection); an open socket is closed
        with 4409."""
        assert self.resumable
        was_open = self.state == OPEN
        self.state = CLOSED
        self.held = None
        peer, self.peer = self.peer, new_peer(self.rules, 0, PurePeer, PureBucket)
        if was_open:
            self._close_socket(p.CLOSE_RESUMED, "resumed by a newer connection")
        return peer, self.bad_frames

    def resumed(
        self,
        peer: Peer,
        bad_frames: BadFrameWindow,
        members: list[tuple[int, Membership, list[Any], list[tuple[Any, ...]]]],
        now_ms: int,
    ) -> None:
        """The shell took the old session over: WELCOME (resumed), then one JOINED per
        document (same handle and sid, a fresh snapshot), then the frames that waited."""
        if self.state != RESUMING:
            return
        self.peer = peer
        self.bad_frames = bad_frames
        self._open(now_ms, resumed=True)
        for h, m, snapshot, recent in members:
            self._send(p.encode_joined(h, m.doc.doc_id, m.sid, snapshot, recent))
        self._release(now_ms)

    def resume_refused(self, now_ms: int) -> None:
        """Nothing to resume (unknown or used token, another identity, the grace ran out):
        not an error; WELCOME says `resumed: false` and the client joins afresh."""
        if self.state != RESUMING:
            return
        self._open(now_ms, resumed=False)
        self._release(now_ms)

    def _expired(self, now_ms: int, grace_ms: int) -> None:
        """The token's `exp`: close 4401; the documents are held for the grace (a resume
        with a fresh token keeps them), then end with EVICTED."""
        self.suspend(now_ms, grace_ms, p.EVICTED)
        self._close_socket(p.CLOSE_UNAUTHENTICATED, "token expired")

    def _close_socket(self, code: int, reason: str) -> None:
        self.stats.closes[code] = self.stats.closes.get(code, 0) + 1
        self._actions.append(Close(code, reason))

    def _end(self, reason: int) -> None:
        self.state = CLOSED
        self.held = None
        for h in list(self.peer.handles):
            self._actions.append(Leave(h, self.peer.handles.pop(h), reason))

    # ------------------------------------------------------------ HELLO

    def _hello(self, data: bytes, now_ms: int) -> None:
        try:
            hello = p.decode_client_frame(data)
        except ProtocolError:
            hello = None
        if hello is None or hello[0] != p.HELLO:
            self.close(p.CLOSE_UNAUTHENTICATED, "the first frame must be HELLO")
            return
        if hello[1] != p.VERSION:
            self.close(p.CLOSE_PROTOCOL, f"unsupported version; speaks {p.VERSION}")
            return
        try:
            grant = self.authenticate(hello[2], hello[3])
        except AuthError as exc:  # the message never includes the token itself
            self.close(p.CLOSE_UNAUTHENTICATED, str(exc)[:120])
            return
        self.grant = grant
        resume = hello[3].get("resume") if isinstance(hello[3], dict) else None
        if isinstance(resume, str) and resume:
            # Frames that come before the answer wait (they belong to the resumed handles).
            self.state = RESUMING
            self.held = deque()
            self._actions.append(Resume(resume))
            return
        self._open(now_ms, resumed=False)

    def _open(self, now_ms: int, resumed: bool) -> None:
        self.state = OPEN
        grant = self.grant
        user = grant.user
        settings = self.welcome_settings
        if self.resume_token is not None:
            settings = {**settings, "resume_token": self.resume_token, "resumed": resumed}
        self._send(
            p.encode_welcome(
                self.connection_id,
                {
                    "id": user.user_id,
                    "name": user.name,
                    "avatar": user.avatar_url,
                    "color": preferred_color(user.user_id),
                    "workspace": user.workspace_id,
                },
                now_ms,
                settings,
            )
        )
        self._actions.append(Opened(grant))

    # ------------------------------------------------------------ the general rules

    def _general(self, data: bytes, now_ms: int) -> None:
        """Everything the hot path did not take: cold frames, unusual encodings, errors."""
        try:
            frame = p.decode_client_frame(data)
            t = frame[0]
            if t == p.JOIN:
                self._join(frame, now_ms)
            elif t == p.LEAVE:
                self._membership(frame)
                self._actions.append(Leave(frame[1], self.peer.handles.pop(frame[1])))
            elif t == p.PING:
                self._send(p.encode_pong(frame[1], now_ms))
            elif t == p.STATUS:  # v1.1; cold: a person sets a status now and then
                m = self._membership(frame)
                p.check_ranges(frame)
                m.doc.set_status(m.sid, frame[2], now_ms)
            elif t == p.HELLO:
                raise ProtocolError(p.BAD_FRAME, "HELLO was already received")
            else:
                # A hot type the hot path declined: the checks below answer the exact error.
                self._membership(frame)
                p.check_ranges(frame)
                raise AssertionError(f"hot frame not taken by Peer.feed: {frame!r}")
        except ProtocolError as exc:
            self._error(exc.handle, exc.code, exc.message, now_ms)

    def _membership(self, frame: list[Any]) -> Membership:
        m = self.peer.handles.get(frame[1])
        if m is None:
            raise ProtocolError(p.NOT_JOINED, f"handle {frame[1]} is not joined", frame[1])
        return m

    def _join(self, frame: list[Any], now_ms: int) -> None:
        h, doc_id = frame[1], frame[2]
        if self.grant.expired(now_ms):  # checked against the token as it stands now
            self.close(p.CLOSE_UNAUTHENTICATED, "token expired")
            return
        p.check_ranges(frame)
        handles = self.peer.handles
        if h in handles:
            raise ProtocolError(p.ALREADY_JOINED, f"handle {h} is already in use", h)
        if any(m.doc.doc_id == doc_id for m in handles.values()):
            raise ProtocolError(p.ALREADY_JOINED, "document already joined on this connection", h)
        if not self.grant.allows(doc_id):
            raise ProtocolError(p.FORBIDDEN, "the token does not grant this document", h)
        if len(handles) >= self.rules.max_documents:
            raise ProtocolError(
                p.TOO_MANY_DOCUMENTS, f"at most {self.rules.max_documents} documents", h
            )
        # Until the registry answers, later frames wait (a join may need Redis round trips).
        self.joining[h] = doc_id
        if self.held is None:
            self.held = deque()
        self._actions.append(Join(h, doc_id))

    # ------------------------------------------------------------ budgets

    def _error(self, h: int | None, code: int, message: str, now_ms: int) -> None:
        self.stats.errors[code] = self.stats.errors.get(code, 0) + 1
        self._send(p.encode_error(h, code, message))
        if code in BAD_FRAME_CODES and self.bad_frames.add(now_ms):
            self.close(p.CLOSE_PROTOCOL, "too many bad frames")

    def _dropped(self, now_ms: int) -> None:
        """A frame dropped for rate: ERROR 6, at most once a second per connection."""
        bucket = self.peer.bucket
        if now_ms - bucket.last_error_ms >= 1000:
            bucket.last_error_ms = now_ms
            self._error(None, p.RATE_LIMITED, "rate limit exceeded; frame dropped", now_ms)

    def _hold(self, data: bytes, now_ms: int) -> None:
        held = self.held
        assert held is not None
        if len(held) < self.rules.max_frames_burst:
            held.append(data)
        else:  # past what the rate limit would let through anyway: dropped, and said so
            self.stats.frames_other += 1
            self._dropped(now_ms)

    def _release(self, now_ms: int) -> None:
        """The join is answered: the frames that waited are handled, in order, until one of
        them starts another join (the rest wait for that one)."""
        if self.joining:
            return
        held = self._take_held()
        while held and self.state == OPEN:
            self.receive(held.popleft(), now_ms)
            again = self._take_held()
            if again is not None:  # another join began: it holds the rest, after its own
                again.extend(held)
                self.held = again
                return

    def _take_held(self) -> deque[bytes] | None:
        held, self.held = self.held, None
        return held

    def _send(self, frame: bytes) -> None:
        self._actions.append(Send(frame))
