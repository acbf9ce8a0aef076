"""Tokens (docs/protocol.md: HELLO, Tokens): HS256 JWT, `docs` scoping, 4401 on bad tokens."""

from __future__ import annotations

import base64
import json
import time

import jwt
import pytest

from .conftest import (
    CLOSE_UNAUTHENTICATED,
    CURSOR,
    E_FORBIDDEN,
    EV_CURSOR,
    HELLO,
    JOIN,
    JWT_SECRET,
    WELCOME,
    new_doc_id,
)

pytestmark = pytest.mark.timeout(60)


def mint(
    sub: str = "tok-user",
    name: str = "Token User",
    ws: str = "ws-1",
    docs: list[str] | None = None,
    exp_in: float = 3600,
    secret: str = JWT_SECRET,
    **extra,
) -> str:
    claims = {
        "sub": sub,
        "name": name,
        "ws": ws,
        "docs": ["*"] if docs is None else docs,
        "exp": int(time.time() + exp_in),
        **extra,
    }
    return jwt.encode(claims, secret, algorithm="HS256")


def _b64(obj) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


async def _hello_frame(c, token, info=None):
    await c.send([HELLO, 1, token, info or {"sdk": "conformance/0"}])


async def test_token_identity_comes_from_token(jwt_server, client_factory):
    c = await client_factory(jwt_server, hello=False)
    token = mint(sub="alice", name="Alice", ws="acme", avatar="https://example.com/a.png")
    await _hello_frame(c, token, {"sdk": "conformance/0", "user_id": "mallory", "name": "M"})
    welcome = await c.reply()
    assert welcome[0] == WELCOME, welcome
    user = welcome[3]
    assert user["id"] == "alice", "with a token, identity comes from the token only"
    assert user["name"] == "Alice"
    assert user["workspace"] == "acme"
    assert user["avatar"] == "https://example.com/a.png"
    _, members = await c.join(1, new_doc_id())
    assert [m[1:4] for m in members] == [["alice", "Alice", "https://example.com/a.png"]]


async def test_token_docs_star_allows_all(jwt_server, client_factory):
    c = await client_factory(jwt_server, token=mint(docs=["*"]))
    await c.join(1, new_doc_id())


async def test_token_docs_exact_and_prefix(jwt_server, client_factory):
    exact = new_doc_id()
    c = await client_factory(jwt_server, token=mint(docs=[exact, "proj-*"]))
    await c.join(1, exact)
    await c.join(2, "proj-" + new_doc_id())
    # an entry without `*` is exact: it is not a prefix
    await c.send([JOIN, 3, exact + "x"])
    await c.expect_error(E_FORBIDDEN, h=3)


async def test_join_outside_docs_is_error_4_and_nothing_changes(jwt_server, client_factory):
    allowed = "proj-" + new_doc_id()
    other = new_doc_id()
    watcher = await client_factory(jwt_server, token=mint(sub="w", docs=["*"]))
    sid_w, _ = await watcher.join(1, other)
    watcher.skip_events()
    c = await client_factory(jwt_server, token=mint(sub="scoped", docs=["proj-*"]))
    await c.send([JOIN, 1, other])
    await c.expect_error(E_FORBIDDEN, h=1)
    await c.send([JOIN, 1, "pro" + new_doc_id()])  # not under the prefix either
    await c.expect_error(E_FORBIDDEN, h=1)
    frames = await watcher.collect(0.3)
    assert not frames, f"a forbidden JOIN changes nothing for the document: {frames}"
    # the handle was not consumed: it can join an allowed document
    sid_c, _ = await c.join(1, allowed)
    await c.send([CURSOR, 1, 1, 2, 3])
    await c.ping()
    del sid_w, sid_c


async def test_token_user_cursor_reaches_other_member(jwt_server, client_factory):
    doc = new_doc_id()
    a = await client_factory(jwt_server, token=mint(sub="a", name="A"))
    b = await client_factory(jwt_server, token=mint(sub="b", name="B"))
    sid_a, _ = await a.join(1, doc)
    await b.join(1, doc)
    await a.send([CURSOR, 1, 1, 2, 3])
    _, ev = await b.wait_event(lambda d, e: e[0] == EV_CURSOR and e[1] == sid_a)
    assert ev == [EV_CURSOR, sid_a, 1, 2, 3]


def _alg_none_token() -> str:
    header = _b64({"alg": "none", "typ": "JWT"})
    payload = _b64(
        {"sub": "evil", "name": "Evil", "ws": "w", "docs": ["*"], "exp": int(time.time()) + 3600}
    )
    return f"{header}.{payload}."


BAD_TOKENS = {
    "expired": lambda: mint(exp_in=-60),
    "wrong-secret": lambda: mint(secret="not-the-secret-0123456789abcdef0123456"),
    "alg-none": _alg_none_token,
    "garbage": lambda: "not.a.jwt",
    "empty": lambda: "",
    "nil-token-when-anonymous-not-allowed": lambda: None,
}


@pytest.mark.parametrize("kind", list(BAD_TOKENS))
async def test_bad_token_closes_4401(jwt_server, client_factory, kind):
    c = await client_factory(jwt_server, hello=False)
    token = BAD_TOKENS[kind]()
    await _hello_frame(c, token, {"sdk": "conformance/0", "user_id": "u1", "name": "Ann"})
    frames = await c.expect_close(CLOSE_UNAUTHENTICATED, timeout=3)
    assert not [f for f in frames if f[0] == WELCOME], f"no WELCOME for a bad token: {frames}"


async def test_no_hello_in_time_closes_4401_on_jwt_server(jwt_server, client_factory):
    c = await client_factory(jwt_server, hello=False)
    await c.expect_close(CLOSE_UNAUTHENTICATED, timeout=4)
