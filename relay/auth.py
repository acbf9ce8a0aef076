"""Who a connection is: HS256 JWTs (PyJWT), or anonymous HELLO in development mode.

Claims (docs/protocol.md): `sub` user id, `name`, optional `avatar` (http/https URL), `ws`
workspace, `docs` (document ids, or prefixes ending in `*`), `exp` (required). The algorithm
is pinned to HS256, so `alg: none` and RS/HS confusion tokens are refused.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import jwt

from relay.core.model import UserInfo
from relay.exceptions import AuthError

__all__ = ["AuthError", "Grant", "anonymous_grant", "mint_token", "verify_token"]

ALGORITHM = "HS256"
MAX_ID = 256
MIN_SECRET_BYTES = 32  # the same floor the configuration enforces (relay.config)


@dataclass(frozen=True, slots=True)
class Grant:
    """An authenticated identity, the documents it may join, and until when.

    `docs` is the boundary between workspaces: a token's workspace (`ws`) says where its
    user belongs, but only `docs` says which documents it may open.
    """

    user: UserInfo
    docs: tuple[str, ...]  # exact ids, or prefixes ending in "*"
    expires_at_ms: int | None = None  # the token's `exp`; None for anonymous (development)

    def expired(self, now_ms: int) -> bool:
        return self.expires_at_ms is not None and now_ms >= self.expires_at_ms

    def allows(self, doc_id: str) -> bool:
        for pattern in self.docs:
            if pattern.endswith("*"):
                if doc_id.startswith(pattern[:-1]):
                    return True
            elif doc_id == pattern:
                return True
        return False


def carriable(v: str) -> bool:
    """True when the text can travel in a frame: JSON (a token's claims) may spell lone
    surrogates ("\\ud800") that no UTF-8 encoder, msgpack's included, can write."""
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _text(claims: dict[str, Any], key: str, required: bool = True) -> str | None:
    v = claims.get(key)
    if v is None and not required:
        return None
    if not isinstance(v, str) or not v or len(v) > MAX_ID:
        raise AuthError(f"token claim {key!r} must be a non-empty string")
    if not carriable(v):
        raise AuthError(f"token claim {key!r} is not valid Unicode text (a lone surrogate)")
    return v


def verify_token(token: str, secret: str) -> Grant:
    # The configuration refuses short secrets; refusing here too means no caller can make
    # an empty or guessable key verify anything, whatever the PyJWT version.
    if len(secret.encode()) < MIN_SECRET_BYTES:
        raise AuthError("the relay's jwt_secret is too short to verify tokens")
    try:
        claims = jwt.decode(
            token, secret, algorithms=[ALGORITHM], options={"require": ["exp", "sub"]}
        )
    except jwt.ExpiredSignatureError:
        raise AuthError("token expired") from None
    except jwt.InvalidTokenError as exc:
        raise AuthError(f"invalid token: {type(exc).__name__}") from None
    avatar = _text(claims, "avatar", required=False)
    if avatar is not None and not avatar.startswith(("http://", "https://")):
        raise AuthError("token claim 'avatar' must be an http(s) URL")
    docs = claims.get("docs", [])
    if not isinstance(docs, list) or not all(isinstance(d, str) for d in docs):
        raise AuthError("token claim 'docs' must be a list of strings")
    exp = claims["exp"]  # PyJWT checked that it is a number in the future
    user = UserInfo(
        user_id=_text(claims, "sub") or "",
        name=_text(claims, "name", required=False) or claims["sub"],
        workspace_id=_text(claims, "ws", required=False) or "default",
        avatar_url=avatar,
    )
    return Grant(user=user, docs=tuple(docs), expires_at_ms=int(exp * 1000))


def anonymous_grant(info: dict[Any, Any]) -> Grant:
    """Development mode: identity from HELLO's info map, every document allowed."""
    user_id = info.get("user_id")
    name = info.get("name", user_id)
    if not isinstance(user_id, str) or not user_id or len(user_id) > MAX_ID:
        raise AuthError(f"anonymous HELLO needs info.user_id (1 to {MAX_ID} characters)")
    if not isinstance(name, str) or not name or len(name) > MAX_ID:
        raise AuthError(f"info.name must be a string of 1 to {MAX_ID} characters")
    avatar = info.get("avatar")
    if avatar is not None and (
        not isinstance(avatar, str) or not avatar.startswith(("http://", "https://"))
    ):
        avatar = None
    return Grant(UserInfo(user_id=user_id, name=name, avatar_url=avatar), docs=("*",))


def mint_token(
    secret: str,
    user_id: str,
    name: str,
    workspace: str = "default",
    docs: list[str] | None = None,
    ttl_s: int = 3600,
    avatar: str | None = None,
    now: float | None = None,
) -> str:
    """A development token (`presence-relay token ...`)."""
    now = time.time() if now is None else now
    claims: dict[str, Any] = {
        "sub": user_id,
        "name": name,
        "ws": workspace,
        "docs": docs if docs is not None else ["*"],
        "iat": int(now),
        "exp": int(now) + ttl_s,
    }
    if avatar:
        claims["avatar"] = avatar
    return jwt.encode(claims, secret, algorithm=ALGORITHM)
