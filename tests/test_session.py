"""The connection's rules (relay/core/session.py), sans-I/O: frames and a fake clock in,
actions out. No socket, no sleep: every rule the hub used to hold, one test (or more) each.

The session runs with the twin this process runs (relay.twin): `make test` runs the suite
once per twin, so both meet these rules.
"""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from helpers import pk

from relay.auth import Grant
from relay.core import protocol as p
from relay.core.document import NEVER, DocumentRules
from relay.core.model import UserInfo
from relay.core.session import (
    AWAITING_HELLO,
    CLOSED,
    OPEN,
    RESUMING,
    SUSPENDED,
    Close,
    Join,
    Leave,
    Opened,
    Resume,
    Send,
    Session,
    SessionRules,
    Suspend,
    new_peer,
)
from relay.exceptions import AuthError
from relay.twin import Document, Membership, Peer, TokenBucket

T0 = 1_000_000
RULES = SessionRules(
    auth_timeout_ms=5000,
    max_documents=2,
    max_frames_per_s=10,
    max_frames_burst=5,
    rate_limit_close_after_ms=3000,
    max_bad_frames=3,
    bad_frames_window_ms=10_000,
)
SETTINGS = {"batch_ms": 50}


def authenticate(token: str | None, info: dict[Any, Any]) -> Grant:
    """Tokens "exp:<ms>" and "docs:<pattern>" stand for real ones; "bad" is refused."""
    if token == "bad":
        raise AuthError("invalid token: InvalidSignatureError")
    exp = int(token[4:]) if token and token.startswith("exp:") else None
    docs = (token[5:],) if token and token.startswith("docs:") else ("*",)
    return Grant(UserInfo(info.get("user_id", "ann"), "Ann"), docs, exp)


def new_session(now: int = T0, rules: SessionRules = RULES, token: str | None = None) -> Session:
    peer = new_peer(rules, now, Peer, TokenBucket)
    return Session(rules, SETTINGS, authenticate, "node-1", now, peer, resume_token=token)


def decoded(actions: list[Any]) -> list[Any]:
    """Actions with their frames decoded, for readable comparisons."""
    out: list[Any] = []
    for a in actions:
        if isinstance(a, Send):
            out.append(("send", msgpack.unpackb(a.frame)))
        elif isinstance(a, Close):
            out.append(("close", a.code, a.reason))
        elif isinstance(a, Join):
            out.append(("join", a.handle, a.doc_id))
        elif isinstance(a, Leave):
            out.append(("leave", a.handle) if a.reason == p.LEFT else ("leave", a.handle, a.reason))
        elif isinstance(a, Suspend):
            out.append(("suspend", a.handle))
        elif isinstance(a, Resume):
            out.append(("resume", a.token))
        elif isinstance(a, Opened):
            out.append(("opened", a.grant.user.user_id))
    return out


def errors(actions: list[Any]) -> list[tuple[Any, int]]:
    return [(f[1], f[2]) for kind, f, *_ in decoded(actions) if kind == "send" and f[0] == 35]


def opened(token: str | None = None, now: int = T0) -> Session:
    s = new_session(now)
    s.receive(pk([1, 1, token, {"user_id": "ann"}]), now)
    s.actions()
    assert s.state == OPEN
    return s


class Registry:
    """What the shell's registry does for a join, on documents of the twin."""

    def __init__(self) -> None:
        self.docs: dict[str, Document] = {}

    def admit(self, s: Session, h: int, doc_id: str, now: int) -> Membership:
        doc = self.docs.setdefault(doc_id, Document(doc_id, DocumentRules()))
        member = Membership(doc, doc.join(s.grant.user, now).sid)
        s.joined(h, member, doc.snapshot(), now)
        return member


def joined(s: Session, h: int, doc_id: str, reg: Registry, now: int = T0) -> Membership:
    s.receive(pk([2, h, doc_id]), now)
    acts = s.actions()
    assert decoded(acts) == [("join", h, doc_id)], decoded(acts)
    member = reg.admit(s, h, doc_id, now)
    kinds = decoded(s.actions())
    assert kinds[0][0] == "send" and kinds[0][1][:4] == [33, h, doc_id, member.sid]
    return member


# ---------------------------------------------------------------- HELLO


class TestHello:
    def test_a_good_hello_is_welcomed_and_opens(self) -> None:
        s = new_session()
        s.receive(pk([1, 1, None, {"user_id": "ann", "sdk": "t"}]), T0 + 10)
        acts = decoded(s.actions())
        assert acts[0][0] == "send" and acts[0][1][:3] == [32, 1, "node-1"]
        assert acts[0][1][3]["id"] == "ann" and acts[0][1][4] == T0 + 10
        assert acts[0][1][5] == SETTINGS
        assert acts[1] == ("opened", "ann")
        assert s.state == OPEN

    @pytest.mark.parametrize("first", [pk([2, 1, "d"]), pk([8, 1]), b"\xc1", pk({"a": 1})])
    def test_anything_else_first_closes_4401(self, first: bytes) -> None:
        s = new_session()
        s.receive(first, T0)
        assert decoded(s.actions()) == [("close", 4401, "the first frame must be HELLO")]
        assert s.state == CLOSED

    def test_a_text_frame_first_closes_4401(self) -> None:
        s = new_session()
        s.receive_text(T0)
        assert decoded(s.actions()) == [("close", 4401, "the first frame must be HELLO")]

    def test_another_version_closes_4400(self) -> None:
        s = new_session()
        s.receive(pk([1, 2, None, {"user_id": "ann"}]), T0)
        assert decoded(s.actions()) == [("close", 4400, "unsupported version; speaks 1")]

    def test_a_refused_token_closes_4401_with_the_reason(self) -> None:
        s = new_session()
        s.receive(pk([1, 1, "bad", {}]), T0)
        assert decoded(s.actions()) == [("close", 4401, "invalid token: InvalidSignatureError")]

    def test_no_hello_in_time_closes_4401_at_the_deadline(self) -> None:
        s = new_session()
        assert s.deadline() == T0 + 5000
        s.advance(T0 + 4999)
        assert s.actions() == [] and s.state == AWAITING_HELLO
        s.advance(T0 + 5000)
        assert decoded(s.actions()) == [("close", 4401, "no HELLO in time")]
        assert s.deadline() == NEVER

    def test_a_second_hello_is_error_1(self) -> None:
        s = opened()
        s.receive(pk([1, 1, None, {"user_id": "ann"}]), T0)
        assert errors(s.actions()) == [(None, p.BAD_FRAME)]
        assert s.state == OPEN


# ---------------------------------------------------------------- joins


class TestJoin:
    def test_join_asks_the_registry_and_answers_joined(self) -> None:
        s, reg = opened(), Registry()
        member = joined(s, 7, "doc-a", reg)
        assert s.handles == {7: member}

    @pytest.mark.parametrize(
        "frame,code",
        [([2, 70_000, "d"], p.INVALID_VALUE), ([2, 1, "a/b"], p.INVALID_VALUE),
         ([2, 1, "user:bob"], p.INVALID_VALUE), ([2, 1, 5], p.BAD_FRAME)],
    )  # fmt: skip
    def test_bad_joins(self, frame: list[Any], code: int) -> None:
        s = opened()
        s.receive(pk(frame), T0)
        assert [c for _, c in errors(s.actions())] == [code]
        assert s.held is None, "a refused JOIN holds nothing"

    def test_handle_or_document_in_use_is_error_8(self) -> None:
        s, reg = opened(), Registry()
        joined(s, 1, "doc-a", reg)
        s.receive(pk([2, 1, "doc-b"]), T0)
        assert errors(s.actions()) == [(1, p.ALREADY_JOINED)]
        s.receive(pk([2, 2, "doc-a"]), T0)
        assert errors(s.actions()) == [(2, p.ALREADY_JOINED)]

    def test_a_document_outside_the_grant_is_error_4(self) -> None:
        s, reg = opened("docs:team-*"), Registry()
        s.receive(pk([2, 1, "private"]), T0)
        assert errors(s.actions()) == [(1, p.FORBIDDEN)]
        joined(s, 2, "team-x", reg)

    def test_more_than_max_documents_is_error_9(self) -> None:
        s, reg = opened(), Registry()
        joined(s, 1, "a", reg)
        joined(s, 2, "b", reg)
        s.receive(pk([2, 3, "c"]), T0)
        assert errors(s.actions()) == [(3, p.TOO_MANY_DOCUMENTS)]

    def test_a_join_after_exp_closes_4401(self) -> None:
        s = opened(f"exp:{T0 + 100}")
        s.receive(pk([2, 1, "d"]), T0 + 100)
        assert decoded(s.actions()) == [("close", 4401, "token expired")]

    def test_join_refused_answers_the_registrys_code(self) -> None:
        s = opened()
        s.receive(pk([2, 1, "d"]), T0)
        s.actions()
        s.join_refused(1, p.DOCUMENT_AT_CAPACITY, "document is at capacity", T0)
        assert errors(s.actions()) == [(1, p.DOCUMENT_AT_CAPACITY)]
        assert s.handles == {} and s.held is None

    def test_frames_wait_in_order_while_a_join_is_in_progress(self) -> None:
        s, reg = opened(), Registry()
        s.receive(pk([2, 1, "d"]), T0)
        assert decoded(s.actions()) == [("join", 1, "d")]
        s.receive(pk([6, 1, 1, 10, 0.0]), T0)  # for the handle being joined
        s.receive(pk([8, 42]), T0)
        assert s.actions() == [] and len(s.held or ()) == 2
        member = reg.admit(s, 1, "d", T0)
        acts = decoded(s.actions())
        assert acts[0][1][0] == 33  # JOINED first, then what waited
        assert acts[1][1][:2] == [36, 42]
        assert member.doc.sessions[member.sid].viewport == (1, 10, 0.0)
        assert s.held is None

    def test_a_held_join_starts_another_join_and_holds_the_rest(self) -> None:
        s, reg = opened(), Registry()
        s.receive(pk([2, 1, "a"]), T0)
        s.actions()
        s.receive(pk([2, 2, "b"]), T0)
        s.receive(pk([8, 1]), T0)
        reg.admit(s, 1, "a", T0)
        acts = decoded(s.actions())
        assert [a[0] for a in acts] == ["send", "join"] and acts[1] == ("join", 2, "b")
        assert list(s.held or ()) == [pk([8, 1])]
        reg.admit(s, 2, "b", T0)
        assert [a[1][0] for a in decoded(s.actions())] == [33, 36]

    def test_held_frames_past_the_burst_are_dropped_with_error_6_once_a_second(self) -> None:
        s = opened()
        s.receive(pk([2, 1, "d"]), T0)
        s.actions()
        for _ in range(RULES.max_frames_burst):
            s.receive(pk([8, 1]), T0)
        assert s.actions() == []
        for _ in range(3):
            s.receive(pk([8, 1]), T0 + 1)
        assert errors(s.actions()) == [(None, p.RATE_LIMITED)]
        s.receive(pk([8, 1]), T0 + 1001)
        assert errors(s.actions()) == [(None, p.RATE_LIMITED)]
        assert s.stats.frames_other == 1 + 4  # the JOIN (a cold frame) and the 4 dropped

    def test_joined_after_the_close_is_left_again(self) -> None:
        s, reg = opened(), Registry()
        s.receive(pk([2, 1, "d"]), T0)
        s.actions()
        s.close(1001, "server shutting down")
        s.actions()
        reg.admit(s, 1, "d", T0)
        assert decoded(s.actions()) == [("leave", 1)]


# ---------------------------------------------------------------- frames


class TestFrames:
    def test_leave_and_later_frames_for_the_handle(self) -> None:
        s, reg = opened(), Registry()
        joined(s, 1, "d", reg)
        s.receive(pk([3, 1]), T0)
        assert decoded(s.actions()) == [("leave", 1)]
        s.receive(pk([4, 1, 1, 2, 3]), T0)
        s.receive(pk([3, 1]), T0)
        assert errors(s.actions()) == [(1, p.NOT_JOINED), (1, p.NOT_JOINED)]

    def test_ping_is_answered_with_pong(self) -> None:
        s = opened()
        s.receive(pk([8, 12.5]), T0 + 7)
        assert decoded(s.actions()) == [("send", [36, 12.5, T0 + 7])]

    def test_hot_frames_are_applied_to_the_document(self) -> None:
        s, reg = opened(), Registry()
        member = joined(s, 1, "d", reg)
        s.receive(pk([4, 1, 3, 4, 5]), T0 + 1)
        assert s.actions() == []
        assert member.doc.sessions[member.sid].cursor == (3, 4, 5)

    @pytest.mark.parametrize(
        "frame,code",
        [([4, 9, 1, 2, 3], p.NOT_JOINED), ([4, 1, -1, 2, 3], p.INVALID_VALUE),
         ([6, 1, 5, 1, 0.0], p.INVALID_VALUE), ([4, 1, "x", 2, 3], p.BAD_FRAME),
         ([99, 1], p.UNKNOWN_TYPE), ([7, 1, 1], p.BAD_FRAME)],
    )  # fmt: skip
    def test_bad_hot_frames_answer_the_exact_error(self, frame: list[Any], code: int) -> None:
        s, reg = opened(), Registry()
        joined(s, 1, "d", reg)
        s.receive(pk(frame), T0)
        assert [c for _, c in errors(s.actions())] == [code]

    def test_text_frames_are_error_1(self) -> None:
        s = opened()
        s.receive_text(T0)
        assert errors(s.actions()) == [(None, p.BAD_FRAME)]
        assert s.stats.frames_other == 1


# ---------------------------------------------------------------- budgets


class TestBudgets:
    def test_more_than_max_bad_frames_in_the_window_closes_4400(self) -> None:
        s = opened()
        for i in range(RULES.max_bad_frames):
            s.receive(b"\xc1", T0 + i)
        assert s.state == OPEN
        s.receive(b"\xc1", T0 + 10)
        acts = decoded(s.actions())
        assert acts[-1] == ("close", 4400, "too many bad frames")

    def test_the_bad_frame_window_slides(self) -> None:
        s = opened()
        for i in range(RULES.max_bad_frames):
            s.receive(b"\xc1", T0 + i)
        s.receive(b"\xc1", T0 + 10_000)  # the first ones are out of the window now
        assert s.state == OPEN

    def test_server_answers_do_not_count_as_bad_frames(self) -> None:
        s = opened("docs:only")
        for _ in range(RULES.max_bad_frames + 2):
            s.receive(pk([2, 1, "elsewhere"]), T0)  # ERROR 4, the server's call
        assert s.state == OPEN

    def test_rate_limit_error_6_once_a_second_then_4429(self) -> None:
        s = opened()
        now = T0
        for _ in range(RULES.max_frames_burst):
            s.receive(pk([8, 1]), now)
        s.actions()
        # over the limit: each further frame is dropped; ERROR 6 at most once a second
        dropped = [pk([8, 1])] * 20
        for f in dropped:
            s.receive(f, now)
        assert errors(s.actions()) == [(None, p.RATE_LIMITED)]
        # continuous excess for rate_limit_close_after_ms: 4429
        closed_at = None
        for ms in range(0, 4000, 50):
            for _ in range(3):
                s.receive(pk([8, 1]), now + ms)
            if s.state == CLOSED:
                closed_at = ms
                break
        assert closed_at is not None and 3000 <= closed_at < 3200
        assert decoded(s.actions())[-1] == ("close", 4429, "rate limit exceeded")

    def test_errors_and_closes_are_counted(self) -> None:
        s = opened()
        s.receive(b"\xc1", T0)
        s.receive(pk([99]), T0)
        s.close(4408, "send backlog exceeded")
        assert s.stats.errors == {p.BAD_FRAME: 1, p.UNKNOWN_TYPE: 1}
        assert s.stats.closes == {4408: 1}


# ---------------------------------------------------------------- time and the end


class TestLifetime:
    def test_the_token_expiry_closes_4401(self) -> None:
        s = opened(f"exp:{T0 + 60_000}")
        assert s.deadline() == T0 + 60_000
        s.advance(T0 + 59_999)
        assert s.actions() == []
        s.advance(T0 + 60_000)
        assert decoded(s.actions()) == [("close", 4401, "token expired")]

    def test_an_expired_token_holds_the_documents_for_the_grace_then_evicts(self) -> None:
        s, reg = opened(f"exp:{T0 + 60_000}"), Registry()
        joined(s, 1, "a", reg)
        s.advance(T0 + 60_000, grace_ms=5000)
        assert decoded(s.actions()) == [("suspend", 1), ("close", 4401, "token expired")]
        assert s.deadline() == T0 + 65_000
        s.advance(T0 + 65_000, grace_ms=5000)
        assert decoded(s.actions()) == [("leave", 1, p.EVICTED)]

    def test_without_exp_nothing_is_timed_after_hello(self) -> None:
        assert opened().deadline() == NEVER

    def test_close_leaves_every_document_first_and_only_once(self) -> None:
        s, reg = opened(), Registry()
        joined(s, 1, "a", reg)
        joined(s, 2, "b", reg)
        s.close(4408, "send backlog exceeded")
        s.close(1001, "again")
        acts = decoded(s.actions())
        assert sorted(acts[:2]) == [("leave", 1, p.EVICTED), ("leave", 2, p.EVICTED)]
        assert acts[2:] == [("close", 4408, "send backlog exceeded")]
        assert s.handles == {}

    def test_detach_leaves_without_a_close(self) -> None:
        s, reg = opened(), Registry()
        joined(s, 1, "a", reg)
        s.detach()
        assert decoded(s.actions()) == [("leave", 1)]
        s.receive(pk([8, 1]), T0)
        s.unapplied(pk([8, 1]), -1, T0)
        assert s.actions() == [], "nothing is handled after the end"


# ---------------------------------------------------------------- sessions that outlive sockets


def resuming(token: str = "tok-old", user: str = "ann", now: int = T0) -> Session:
    s = new_session(now, token="tok-new")
    s.receive(pk([1, 1, None, {"user_id": user, "resume": token}]), now)
    assert decoded(s.actions()) == [("resume", token)]
    assert s.state == RESUMING
    return s


class TestSuspendAndResume:
    def test_welcome_offers_a_resume_token(self) -> None:
        s = new_session(token="tok-1")
        s.receive(pk([1, 1, None, {"user_id": "ann"}]), T0)
        welcome = decoded(s.actions())[0][1]
        assert welcome[5]["resume_token"] == "tok-1" and welcome[5]["resumed"] is False

    def test_a_lost_connection_suspends_then_leaves_lost_after_the_grace(self) -> None:
        s, reg = opened(), Registry()
        joined(s, 1, "a", reg)
        s.suspend(T0, 3000)
        assert decoded(s.actions()) == [("suspend", 1)]
        assert s.state == SUSPENDED and s.resumable and s.deadline() == T0 + 3000
        s.advance(T0 + 2999)
        assert s.actions() == []
        s.advance(T0 + 3000)
        assert decoded(s.actions()) == [("leave", 1, p.LOST)]
        assert s.state == CLOSED and not s.resumable

    def test_no_grace_or_no_document_ends_at_once(self) -> None:
        s, reg = opened(), Registry()
        joined(s, 1, "a", reg)
        s.suspend(T0, 0)
        assert decoded(s.actions()) == [("leave", 1, p.LOST)]
        bare = opened()
        bare.suspend(T0, 3000)
        assert bare.state == CLOSED and bare.actions() == []

    def test_a_join_answered_while_suspended_leaves_again_lost(self) -> None:
        s, reg = opened(), Registry()
        joined(s, 1, "a", reg)
        s.receive(pk([2, 2, "b"]), T0)
        s.actions()
        s.suspend(T0, 3000)
        s.actions()
        reg.admit(s, 2, "b", T0)
        assert decoded(s.actions()) == [("leave", 2, p.LOST)]

    def test_take_over_hands_over_handles_and_budgets_and_closes_an_open_socket_4409(
        self,
    ) -> None:
        old, reg = opened(), Registry()
        member = joined(old, 1, "a", reg)
        new = resuming()
        new.receive(pk([4, 1, 5, 5, 5]), T0)  # waits for the answer
        assert new.actions() == []
        assert old.resumable_by(new.grant)
        peer, bad = old.take_over()
        assert decoded(old.actions()) == [("close", 4409, "resumed by a newer connection")]
        assert old.state == CLOSED and old.handles == {}
        snapshot = member.doc.snapshot()
        new.resumed(peer, bad, [(1, member, snapshot, [])], T0)
        acts = decoded(new.actions())
        assert acts[0][1][0] == p.WELCOME and acts[0][1][5]["resumed"] is True
        assert acts[1] == ("opened", "ann")
        assert acts[2][1][:4] == [p.JOINED, 1, "a", member.sid]
        assert new.handles == {1: member} and new.peer is peer and new.bad_frames is bad
        assert member.doc.sessions[member.sid].cursor == (5, 5, 5), "the held frame ran"

    def test_a_suspended_session_taken_over_closes_nothing(self) -> None:
        old, reg = opened(), Registry()
        joined(old, 1, "a", reg)
        old.suspend(T0, 3000)
        old.actions()
        old.take_over()
        assert old.actions() == [] and old.deadline() == NEVER

    def test_another_identity_or_a_narrower_grant_may_not_resume(self) -> None:
        old, reg = opened(), Registry()
        joined(old, 1, "a", reg)
        assert not old.resumable_by(resuming(user="eve").grant)
        narrow = new_session(token="t")
        narrow.receive(pk([1, 1, "docs:b", {"user_id": "ann", "resume": "x"}]), T0)
        assert not old.resumable_by(narrow.grant)
        old.close(4408, "slow")
        assert not old.resumable_by(resuming().grant), "a closed session is gone"

    def test_a_refused_resume_opens_afresh_and_runs_the_held_frames(self) -> None:
        new = resuming()
        new.receive(pk([8, 42]), T0)
        new.resume_refused(T0)
        acts = decoded(new.actions())
        assert acts[0][1][5]["resumed"] is False and acts[1] == ("opened", "ann")
        assert acts[2][1][:2] == [p.PONG, 42]
        assert new.state == OPEN and new.handles == {}

    def test_close_reasons(self) -> None:
        for code, why in ((4400, p.EVICTED), (4429, p.EVICTED), (1001, p.SHUTDOWN), (1000, p.LEFT)):
            s, reg = opened(), Registry()
            joined(s, 1, "a", reg)
            s.close(code, "x")
            assert decoded(s.actions())[0] == (("leave", 1) if why == p.LEFT else ("leave", 1, why))
