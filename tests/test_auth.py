"""Tokens and grants (relay.auth): HS256 pinned, claims validated, token never echoed."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import jwt
import pytest

from relay.auth import AuthError, Grant, anonymous_grant, mint_token, verify_token
from relay.core.model import UserInfo

# 64 bytes: no PyJWT short-key warning even for the HS512 tokens built below
SECRET = "test-secret-0123456789-abcdefghijklmnopqrstuvwxyz-ABCDEFGHIJKLMN"
OTHER = "another-secret-0123456789-abcdefghijklmnopqrstuvwxyz-ABCDEFGHIJK"


def claims(**over: Any) -> dict[str, Any]:
    c: dict[str, Any] = {
        "sub": "user-1",
        "name": "Ada Lovelace",
        "avatar": "https://example.com/ada.png",
        "ws": "team-42",
        "docs": ["doc-a", "notes/*"],
        "exp": int(time.time()) + 3600,
    }
    c.update(over)
    return {k: v for k, v in c.items() if v is not _DROP}


_DROP = object()


def sign(c: dict[str, Any], secret: str = SECRET, alg: str = "HS256") -> str:
    return jwt.encode(c, secret, algorithm=alg)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(c: dict[str, Any], header: dict[str, Any] | None = None) -> str:
    h = header or {"alg": "none", "typ": "JWT"}
    return b64url(json.dumps(h).encode()) + "." + b64url(json.dumps(c).encode()) + "."


def refused(token: str, secret: str = SECRET) -> AuthError:
    with pytest.raises(AuthError) as ei:
        verify_token(token, secret)
    msg = str(ei.value)
    if len(token) >= 8:
        assert token not in msg, "the AuthError message leaks the token"
    for part in token.split("."):
        if len(part) >= 8:
            assert part not in msg, "the AuthError message leaks part of the token"
    if len(secret) >= 8:
        assert secret not in msg
    return ei.value


class TestVerify:
    def test_valid_token_gives_grant_with_user_fields(self) -> None:
        g = verify_token(sign(claims()), SECRET)
        assert isinstance(g, Grant)
        assert g.user == UserInfo(
            user_id="user-1",
            name="Ada Lovelace",
            workspace_id="team-42",
            avatar_url="https://example.com/ada.png",
        )
        assert g.docs == ("doc-a", "notes/*")

    def test_optional_claims_default(self) -> None:
        g = verify_token(sign(claims(name=_DROP, avatar=_DROP, ws=_DROP, docs=_DROP)), SECRET)
        assert g.user.user_id == "user-1"
        assert g.user.name == "user-1"  # the name falls back to the id
        assert g.user.workspace_id == "default"
        assert g.user.avatar_url is None
        assert g.docs == ()
        assert not g.allows("doc-a")  # no docs claim: nothing may be joined

    def test_http_avatar_is_accepted(self) -> None:
        g = verify_token(sign(claims(avatar="http://example.com/a.png")), SECRET)
        assert g.user.avatar_url == "http://example.com/a.png"

    def test_minted_token_round_trips(self) -> None:
        tok = mint_token(
            SECRET,
            "u7",
            "Grace",
            workspace="w",
            docs=["x", "y*"],
            ttl_s=120,
            avatar="https://e.com/g.png",
        )
        g = verify_token(tok, SECRET)
        assert g.user == UserInfo("u7", "Grace", "w", "https://e.com/g.png")
        assert g.docs == ("x", "y*")
        c = jwt.decode(tok, SECRET, algorithms=["HS256"])
        assert c["exp"] - c["iat"] == 120

    def test_mint_defaults_to_all_documents(self) -> None:
        g = verify_token(mint_token(SECRET, "u", "U"), SECRET)
        assert g.docs == ("*",)
        assert g.user.avatar_url is None

    def test_expired(self) -> None:
        e = refused(sign(claims(exp=int(time.time()) - 10)))
        assert "expired" in str(e)

    def test_minted_with_old_clock_is_expired(self) -> None:
        tok = mint_token(SECRET, "u", "U", ttl_s=60, now=time.time() - 120)
        refused(tok)

    def test_wrong_secret(self) -> None:
        refused(sign(claims(), secret=OTHER))

    def test_tampered_payload(self) -> None:
        tok = sign(claims())
        h, _, s = tok.split(".")
        forged = b64url(json.dumps(claims(sub="admin", docs=["*"])).encode())
        refused(f"{h}.{forged}.{s}")

    @pytest.mark.parametrize(
        "header",
        [
            {"alg": "none", "typ": "JWT"},
            {"alg": "none"},
            {"alg": "None", "typ": "JWT"},
            {"alg": "NONE", "typ": "JWT"},
        ],
    )
    def test_alg_none_is_refused(self, header: dict[str, Any]) -> None:
        refused(unsigned(claims(), header))

    def test_alg_none_with_empty_secret(self) -> None:
        refused(unsigned(claims()), secret="")

    @pytest.mark.parametrize("alg", ["HS384", "HS512"])
    def test_other_hmac_algorithms_are_refused(self, alg: str) -> None:
        refused(sign(claims(), alg=alg))

    def test_missing_exp(self) -> None:
        refused(sign(claims(exp=_DROP)))

    def test_missing_sub(self) -> None:
        refused(sign(claims(sub=_DROP)))

    @pytest.mark.parametrize("sub", ["", 42, ["u"], "x" * 257])
    def test_bad_sub(self, sub: Any) -> None:
        refused(sign(claims(sub=sub)))

    @pytest.mark.parametrize(
        "avatar",
        [
            "javascript:alert(1)",
            "ftp://e.com/a.png",
            "data:image/png;base64,AAAA",
            "//e.com/a.png",
            "e.com/a.png",
            5,
            "",
        ],
    )
    def test_avatar_must_be_http_url(self, avatar: Any) -> None:
        refused(sign(claims(avatar=avatar)))

    @pytest.mark.parametrize("docs", ["doc-a", {"doc-a": True}, [1, 2], ["a", None], 7])
    def test_docs_must_be_a_list_of_strings(self, docs: Any) -> None:
        e = refused(sign(claims(docs=docs)))
        assert "docs" in str(e)

    @pytest.mark.parametrize(
        "key,value", [("name", ""), ("name", 3), ("ws", ""), ("ws", ["w"]), ("name", "n" * 257)]
    )
    def test_bad_optional_text_claims(self, key: str, value: Any) -> None:
        refused(sign(claims(**{key: value})))

    @pytest.mark.parametrize(
        "garbage", ["", "not-a-token", "a.b.c", "....", "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1In0"]
    )
    def test_garbage(self, garbage: str) -> None:
        refused(garbage)

    def test_message_never_contains_the_token(self) -> None:
        """Every refusal path, with a token whose payload is distinctive."""
        marker = "MARKER-" + "q" * 20
        now = int(time.time())
        tokens = [
            sign(claims(sub=marker, exp=now - 5)),
            sign(claims(sub=marker), secret=OTHER),
            unsigned(claims(sub=marker)),
            sign(claims(sub=marker), alg="HS512"),
            sign(claims(sub=marker, exp=_DROP)),
            sign(claims(sub=marker, avatar="javascript:x")),
            sign(claims(sub=marker, docs="nope")),
        ]
        for tok in tokens:
            e = refused(tok)
            assert marker not in str(e)
            assert "q" * 20 not in repr(e)


class TestGrantAllows:
    def grant(self, *docs: str) -> Grant:
        return Grant(UserInfo("u", "U"), docs)

    def test_exact(self) -> None:
        g = self.grant("doc-a")
        assert g.allows("doc-a")
        assert not g.allows("doc-ab")
        assert not g.allows("doc-")
        assert not g.allows("DOC-A")

    def test_prefix(self) -> None:
        g = self.grant("b*")
        assert g.allows("b")
        assert g.allows("b1")
        assert g.allows("bravo:notes")
        assert not g.allows("a")
        assert not g.allows("ab")
        assert not g.allows("B1")

    def test_star_allows_all(self) -> None:
        g = self.grant("*")
        for doc in ("a", "b", "x.y~z:@-_", "0" * 128):
            assert g.allows(doc)

    def test_several_patterns(self) -> None:
        g = self.grant("a", "team/*")
        assert g.allows("a")
        assert g.allows("team/1")
        assert not g.allows("team")
        assert not g.allows("b")

    def test_nothing(self) -> None:
        assert not self.grant().allows("a")

    def test_star_only_at_the_end_is_a_wildcard(self) -> None:
        g = self.grant("a*b")
        assert g.allows("a*b")
        assert not g.allows("axb")


class TestAnonymous:
    def test_needs_user_id(self) -> None:
        for info in (
            {},
            {"name": "N"},
            {"user_id": ""},
            {"user_id": 5},
            {"user_id": None},
            {"user_id": "x" * 257},
        ):
            with pytest.raises(AuthError):
                anonymous_grant(info)

    def test_grant(self) -> None:
        g = anonymous_grant({"user_id": "dev", "name": "Dev", "sdk": "py/0.1.0"})
        assert g.user == UserInfo("dev", "Dev", "default", None)
        assert g.docs == ("*",)
        assert g.allows("anything")

    def test_name_defaults_to_user_id(self) -> None:
        assert anonymous_grant({"user_id": "dev"}).user.name == "dev"

    @pytest.mark.parametrize("name", ["", 7, "n" * 257])
    def test_bad_name(self, name: Any) -> None:
        with pytest.raises(AuthError):
            anonymous_grant({"user_id": "dev", "name": name})

    def test_avatar_kept_only_if_http(self) -> None:
        assert (
            anonymous_grant({"user_id": "d", "avatar": "https://e.com/a.png"}).user.avatar_url
            == "https://e.com/a.png"
        )
        assert anonymous_grant({"user_id": "d", "avatar": "javascript:x"}).user.avatar_url is None
        assert anonymous_grant({"user_id": "d", "avatar": 3}).user.avatar_url is None

    def test_workspace_is_default(self) -> None:
        assert anonymous_grant({"user_id": "d", "ws": "other"}).user.workspace_id == "default"


def empty_key_token(c: dict[str, Any]) -> str:
    """A token signed with the empty HMAC key, built by hand (PyJWT refuses to sign one)."""
    import hashlib
    import hmac

    def b64(b: bytes) -> bytes:
        return base64.urlsafe_b64encode(b).rstrip(b"=")

    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps(c).encode())
    sig = b64(hmac.new(b"", head + b"." + body, hashlib.sha256).digest())
    return (head + b"." + body + b"." + sig).decode()


class TestEmptyKey:
    """`--jwt-secret ""` once started a relay that, with PyJWT < 2.13, accepted a token
    signed with the empty key as any user for every document."""

    def test_verify_refuses_short_secrets_whatever_the_library(self) -> None:
        token = empty_key_token(claims())
        for secret in ("", "x", "s" * 31):
            with pytest.raises(AuthError, match="too short"):
                verify_token(token, secret)

    def test_the_pinned_pyjwt_refuses_an_empty_key_too(self) -> None:
        with pytest.raises(jwt.InvalidKeyError):
            jwt.decode(empty_key_token(claims()), "", algorithms=["HS256"])

    def test_an_empty_key_token_is_refused_by_a_configured_relay(self) -> None:
        with pytest.raises(AuthError, match="invalid token"):
            verify_token(empty_key_token(claims()), SECRET)


def test_expiry_is_carried_in_the_grant() -> None:
    exp = int(time.time()) + 100
    grant = verify_token(sign(claims(exp=exp)), SECRET)
    assert grant.expires_at_ms == exp * 1000
    assert not grant.expired(exp * 1000 - 1) and grant.expired(exp * 1000)
    assert not anonymous_grant({"user_id": "u"}).expired(2**62)


@pytest.mark.parametrize("claim", ["sub", "name", "ws", "avatar"])
def test_a_claim_with_a_lone_surrogate_is_refused_naming_it(claim: str) -> None:
    value = "https://x.example/\ud800" if claim == "avatar" else "a\ud800b"
    with pytest.raises(AuthError, match=f"'{claim}'.*surrogate"):
        verify_token(sign(claims(**{claim: value})), SECRET)
