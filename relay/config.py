"""Configuration: one frozen dataclass, three sources.

Precedence: `--kebab-case` CLI flags, then `PRESENCE_UPPER_SNAKE` environment variables, then
a TOML file (`--config` / `PRESENCE_CONFIG`), then the defaults below (the seed's
PresenceConfig defaults plus the server's). Every value is validated at start; an invalid one
raises ConfigError naming the setting.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from relay.core.document import DocumentRules
from relay.core.session import SessionRules
from relay.exceptions import ConfigError

ENV_PREFIX = "PRESENCE_"


def _origin_list(value: str) -> list[str]:
    return [o.strip() for o in value.split(",") if o.strip()]


def _opt(
    default: Any,
    help: str,
    lo: float | None = None,
    hi: float | None = None,
    kind: type | None = None,
) -> Any:
    """A setting: its default, its help line, its inclusive range, and (for a setting whose
    default is None) the type a value given for it must have (str when not said)."""
    return field(default=default, metadata={"help": help, "lo": lo, "hi": hi, "kind": kind})


MIN_SECRET_BYTES = 32  # HS256 keys shorter than the hash are guessable offline (RFC 7518 3.2)
MIN_API_KEY_BYTES = 16
MIN_LIVENESS_MS = 500
MIN_WEBHOOK_SECRET_BYTES = 16


def _webhook_url_list(value: str) -> list[str]:
    """The URLs of `webhook_urls` (comma-separated), each an absolute http(s) URL with a
    host and no credentials; ConfigError naming the setting otherwise."""
    urls = [u.strip() for u in value.split(",") if u.strip()]
    if not urls:
        raise ConfigError(f"webhook_urls={value!r}: lists no URL (unset it to turn webhooks off)")
    for url in urls:
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 - raises ValueError for a port out of range
        except ValueError as exc:
            raise ConfigError(f"webhook_urls: {url!r} is not a valid URL ({exc})") from None
        if parts.scheme not in ("http", "https"):
            raise ConfigError(f"webhook_urls: {url!r} must be an http:// or https:// URL")
        if not parts.hostname:
            raise ConfigError(f"webhook_urls: {url!r} names no host")
        if parts.username is not None or parts.password is not None:
            raise ConfigError(
                f"webhook_urls: {url.split('@')[-1]!r}: credentials in the URL are not "
                "supported (receivers verify X-Presence-Signature)"
            )
        if parts.fragment or url.endswith("#"):
            raise ConfigError(f"webhook_urls: {url!r} has a fragment")
        if not url.isascii() or any(ord(c) < 0x21 or c == "\x7f" for c in url):
            raise ConfigError(
                f"webhook_urls: {url!r}: use ASCII without spaces (percent-encode the path, "
                "punycode the host)"
            )
    if len(set(urls)) != len(urls):
        raise ConfigError("webhook_urls: a URL is listed twice")
    return urls


def _read_secret(setting: str, path: str) -> str:
    """A secret kept in a file (so it is not in `ps` or the environment): the file's first
    line, without its line ending."""
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise ConfigError(f"{setting}: cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{setting}: {path} is not UTF-8 text") from None
    return text.splitlines()[0] if text else ""


@dataclass(frozen=True, slots=True)
class PresenceConfig:
    # One setting per line (the format is off here: a table reads better than wrapped calls).
    # fmt: off
    # The seed's PresenceConfig
    cursor_throttle_ms: int = _opt(50, "client-side cursor throttle announced to SDKs", 0, 10_000)
    typing_debounce_ms: int = _opt(500, "typing stops this long after the last keystroke", 1, 60_000)
    presence_ttl_seconds: int = _opt(30, "a crashed node's sessions leave within this", 1, 3600)
    redis_settle_ms: int = _opt(3000, "after this node saw Redis restart, joins wait until it has been up this long (every node has re-raised its sid counters) and resyncs remove nobody for a missing record (docs/redis.md, sid allocation)", 0, 60_000)
    activity_timeout_ms: int = _opt(30_000, "Idle after this long without an action", 1, 86_400_000)
    max_users_per_document: int = _opt(1000, "sessions per document (ERROR 5 past it)", 1, 100_000)
    max_sessions_per_user: int = _opt(10, "sessions of one user in one document (ERROR 5 past it)", 1, 100_000)
    # Activity beyond the seed
    away_after_ms: int = _opt(300_000, "Away after this long without an action", 1, 86_400_000)
    away_after_blur_ms: int = _opt(60_000, "Away after this long unfocused", 1, 86_400_000)
    # Server
    host: str = _opt("127.0.0.1", "listen address")
    port: int = _opt(8765, "listen port (0 picks a free one)", 0, 65535)
    workers: int = _opt(1, "relay processes sharing port (SO_REUSEPORT), each a node of redis_url; > 1 needs redis_url, Linux (docs/workers.md)", 1, 256)
    batch_ms: int = _opt(50, "batch interval: one BATCH per dirty document per interval", 1, 1000)
    flush_groups: int = _opt(
        5, "documents flush in this many staggered groups per interval (1 = all at once)", 1, 50
    )
    jwt_secret: str | None = _opt(
        None, "HS256 secret, at least 32 bytes; unset allows anonymous HELLO on loopback"
    )
    jwt_secret_file: str | None = _opt(None, "read jwt_secret from this file (its first line)")
    internal_api_key: str | None = _opt(
        None, "bearer key (at least 16 bytes) for /internal/* and /metrics; unset = loopback only"
    )
    internal_api_key_file: str | None = _opt(
        None, "read internal_api_key from this file (its first line)"
    )
    allowed_origins: str | None = _opt(
        None, "comma-separated Origin values browsers may connect from (unset: any)"
    )
    demo: bool | None = _opt(None, "serve the demo page at / (unset: on without jwt_secret, off with it)", kind=bool)
    redis_url: str | None = _opt(None, "Redis URL for shared presence: redis://host:port/db, or redis+sentinel://host:port[,host:port...]/<master>[/<db>] (docs/redis.md; unset: memory backend)")
    auth_timeout_ms: int = _opt(5000, "HELLO must arrive within this (else close 4401)", 1, 600_000)
    liveness_timeout_ms: int = _opt(10_000, "a client silent this long (no byte, no pong) is shown DISCONNECTED; also TCP_USER_TIMEOUT (0 = off, else >= 500)", 0, 600_000)
    reconnect_grace_ms: int = _opt(30_000, "how long a lost connection's place is held for a resume (0 = it leaves at once)", 0, 3_600_000)
    close_timeout_s: float = _opt(
        2.0, "a close that has not completed after this long aborts the socket", 0.05, 60
    )
    metrics_host: str = _opt("127.0.0.1", "listen address of metrics_port")
    metrics_port: int | None = _opt(
        None, "serve /metrics on this port only, without a key (unset: on the main port)",
        0, 65535, kind=int,
    )
    # Limits
    max_frame_bytes: int = _opt(8192, "largest client frame (close 1009 past it)", 64, 16_777_216)
    max_documents: int = _opt(32, "documents per connection (ERROR 9 past it)", 1, 65536)
    max_frames_per_s: int = _opt(200, "sustained client frames per second", 1, 1_000_000)
    max_frames_burst: int = _opt(400, "client frame burst (token bucket size)", 1, 1_000_000)
    rate_limit_close_after_s: float = _opt(5.0, "close 4429 after this much continuous excess", 0.1, 3600)
    max_bad_frames: int = _opt(20, "bad frames tolerated per window (close 4400 past it)", 0, 1_000_000)
    bad_frames_window_s: float = _opt(10.0, "window for max_bad_frames", 0.1, 3600)
    max_send_backlog: int = _opt(1_048_576, "unsent bytes per member (ours and the kernel's) before close 4408", 1024, 2**31)
    socket_send_buffer: int = _opt(65_536, "kernel send buffer per connection (SO_SNDBUF; counted in the backlog)", 4096, 16_777_216)
    max_connections: int = _opt(100_000, "open WebSocket connections (HTTP 503 past it)", 1, 10_000_000)
    # Observability
    metrics_per_document: bool = _opt(False, "label active-user gauges by document (cardinality!)")
    log_level: str = _opt("info", "debug, info, warning or error")
    # Redis stream
    presence_stream: str = _opt("materi:events:presence", "Redis stream of joined/left events")
    presence_stream_maxlen: int = _opt(100_000, "approximate MAXLEN of the presence stream", 1, 10**9)
    agent_puts_per_s: float = _opt(10.0, "PUTs a second per member set over HTTP (429 past it)", 0.1, 10_000)
    agent_puts_burst: int = _opt(20, "burst of PUTs per member set over HTTP", 1, 100_000)
    recent_window_s: int = _opt(600, "a user who left within this is 'recently here' (JOINED recent, HTTP recently_left; 0 = off)", 0, 86_400)
    # Webhooks (docs/webhooks.md)
    webhook_urls: str | None = _opt(None, "comma-separated http(s) URLs POSTed user.joined/left and document.active/empty (unset = off)")
    webhook_secret: str | None = _opt(None, "HMAC-SHA256 key (at least 16 bytes) signing every webhook; required with webhook_urls")
    webhook_secret_file: str | None = _opt(None, "read webhook_secret from this file (its first line)")
    webhook_timeout_ms: int = _opt(5000, "a webhook POST without a response within this counts as failed", 100, 600_000)
    webhook_max_attempts: int = _opt(10, "attempts per event and endpoint before it is given up", 1, 10_000)
    webhook_backoff_ms: int = _opt(1000, "delay after an endpoint's first failed attempt, doubling after each further one", 10, 3_600_000)
    webhook_backoff_max_ms: int = _opt(60_000, "the longest delay between attempts (never below webhook_backoff_ms)", 10, 3_600_000)
    webhook_queue_max: int = _opt(10_000, "events waiting per endpoint; past it the oldest is dropped (counted)", 1, 10_000_000)
    # fmt: on

    def __post_init__(self) -> None:
        # Secrets kept in files are read here, so every way of building a config gets them.
        for name in ("jwt_secret", "internal_api_key", "webhook_secret"):
            path = getattr(self, name + "_file")
            if path is not None:
                if getattr(self, name) is not None:
                    raise ConfigError(f"{name}_file: set {name} or {name}_file, not both")
                object.__setattr__(self, name, _read_secret(name + "_file", path))
        for name, least in (
            ("jwt_secret", MIN_SECRET_BYTES),
            ("internal_api_key", MIN_API_KEY_BYTES),
            ("webhook_secret", MIN_WEBHOOK_SECRET_BYTES),
        ):
            value = getattr(self, name)
            if value is not None and len(value.encode()) < least:
                raise ConfigError(
                    f"{name}: at least {least} bytes are required (got {len(value.encode())});"
                    " generate one with: python -c 'import secrets; print(secrets.token_urlsafe(48))'"
                )
        for f in dataclasses.fields(self):
            lo, hi = f.metadata.get("lo"), f.metadata.get("hi")
            v = getattr(self, f.name)
            if v is None:
                continue  # an optional setting left unset
            if isinstance(v, float) and v != v:  # NaN passes every comparison below
                raise ConfigError(f"{f.name}={v!r} is not a number")
            if (lo is not None and v < lo) or (hi is not None and v > hi):
                raise ConfigError(f"{f.name}={v!r} is out of range [{lo}, {hi}]")
        if 0 < self.liveness_timeout_ms < MIN_LIVENESS_MS:
            # Keepalive looks every tenth of it: below this it would spin, and a round trip
            # on a slow network alone could take longer than the pong is given.
            raise ConfigError(
                f"liveness_timeout_ms={self.liveness_timeout_ms}: 0 (off) or at least "
                f"{MIN_LIVENESS_MS}"
            )
        if self.log_level not in ("debug", "info", "warning", "error"):
            raise ConfigError(f"log_level={self.log_level!r}: use debug, info, warning or error")
        if self.webhook_urls is not None:
            _webhook_url_list(self.webhook_urls)  # raises ConfigError naming webhook_urls
        if self.redis_url is not None:  # (the Redis backends import redis anyway)
            from relay.backends.redis_sentinel import is_sentinel_url, parse_sentinel_url

            try:
                if is_sentinel_url(self.redis_url):
                    parse_sentinel_url(self.redis_url)
            except ValueError as exc:  # its message never holds a password
                raise ConfigError(f"redis_url: {exc}") from None
        if self.allowed_origins is not None:
            listed = _origin_list(self.allowed_origins)
            if not listed or any("://" not in o for o in listed):
                raise ConfigError(
                    f"allowed_origins={self.allowed_origins!r}: list origins as a browser sends "
                    "them, comma-separated, e.g. https://app.example.com,http://localhost:3000"
                )

    @property
    def demo_enabled(self) -> bool:
        """The demo page at `/`: on in development mode (no jwt_secret), where anyone on
        loopback may join anyway; with a secret only when asked for (`demo = true`), and the
        page then needs a token in its URL (docs/demo.md)."""
        return self.jwt_secret is None if self.demo is None else self.demo

    @property
    def origins(self) -> list[str | None] | None:
        """What the WebSocket handshake accepts as Origin: None (no check) when unset. A
        handshake without Origin (not a browser: a service, the Python SDK) is always let
        through: the check is against other sites' pages, and tokens guard the rest."""
        if self.allowed_origins is None:
            return None
        return [None, *_origin_list(self.allowed_origins)]

    @property
    def webhook_url_list(self) -> list[str]:
        """The endpoints webhooks go to, in the order listed ([] when off)."""
        return [] if self.webhook_urls is None else _webhook_url_list(self.webhook_urls)

    @property
    def tcp_user_timeout_ms(self) -> int:
        """How long the kernel may wait for a peer to acknowledge data (TCP_USER_TIMEOUT): the
        liveness timeout (a peer that acknowledges nothing for that long is gone whatever it
        might still send); 0 = the kernel's default, when liveness checks are off."""
        return self.liveness_timeout_ms

    @property
    def loopback(self) -> bool:
        """True when the server listens on loopback only (anonymous mode is allowed)."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    def document_rules(self) -> DocumentRules:
        return DocumentRules(
            max_users_per_document=self.max_users_per_document,
            max_sessions_per_user=self.max_sessions_per_user,
            typing_debounce_ms=self.typing_debounce_ms,
            activity_timeout_ms=self.activity_timeout_ms,
            away_after_ms=self.away_after_ms,
            away_after_blur_ms=self.away_after_blur_ms,
        )

    def session_rules(self) -> SessionRules:
        return SessionRules(
            auth_timeout_ms=self.auth_timeout_ms,
            max_documents=self.max_documents,
            max_frames_per_s=self.max_frames_per_s,
            max_frames_burst=self.max_frames_burst,
            rate_limit_close_after_ms=self.rate_limit_close_after_s * 1000,
            max_bad_frames=self.max_bad_frames,
            bad_frames_window_ms=self.bad_frames_window_s * 1000,
        )

    def welcome_settings(self) -> dict[str, Any]:
        """The settings map sent in WELCOME."""
        return {
            "batch_ms": self.batch_ms,
            "cursor_throttle_ms": self.cursor_throttle_ms,
            "typing_debounce_ms": self.typing_debounce_ms,
            "max_frame_bytes": self.max_frame_bytes,
            "max_documents": self.max_documents,
            "max_frames_per_s": self.max_frames_per_s,
            "max_frames_burst": self.max_frames_burst,
            "activity_timeout_ms": self.activity_timeout_ms,
            "reconnect_grace_ms": self.reconnect_grace_ms,
        }


FIELDS = {f.name: f for f in dataclasses.fields(PresenceConfig)}
SECRET_FIELDS = {"jwt_secret", "internal_api_key", "redis_url", "webhook_secret"}


def _field_type(name: str) -> type:
    kind: type | None = FIELDS[name].metadata.get("kind")
    if kind is not None:
        return kind
    default = FIELDS[name].default
    if isinstance(default, bool):
        return bool
    if isinstance(default, int):
        return int
    if isinstance(default, float):
        return float
    return str


# Settings that went away, and what replaced them (named in the error, not just "unknown").
REPLACED = {
    "ping_interval_s": "keepalive follows liveness_timeout_ms (milliseconds)",
    "ping_timeout_s": "keepalive follows liveness_timeout_ms (milliseconds)",
}


def coerce(name: str, raw: Any) -> Any:
    """Turn a raw value (string from env/flags, or TOML value) into the field's type."""
    if name not in FIELDS:
        if name in REPLACED:
            raise ConfigError(f"{name} is no longer a setting: {REPLACED[name]}")
        raise ConfigError(f"unknown setting {name!r}")
    kind = _field_type(name)
    if raw is None:
        return None
    try:
        if kind is bool:
            if isinstance(raw, bool):
                return raw
            s = str(raw).strip().lower()
            if s in ("1", "true", "yes", "on"):
                return True
            if s in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if kind is int:
            if isinstance(raw, (bool, float)):
                raise ValueError(raw)
            return int(raw)
        if kind is float:
            if isinstance(raw, bool):
                raise ValueError(raw)
            return float(raw)
        if not isinstance(raw, str):
            raise ValueError(raw)
        return raw
    except (ValueError, TypeError):  # TOML can hand us lists, tables and dates
        raise ConfigError(f"{name}: {raw!r} is not a valid {kind.__name__}") from None


def from_env(env: Mapping[str, str]) -> dict[str, Any]:
    out = {}
    for name in FIELDS:
        key = ENV_PREFIX + name.upper()
        if key in env and env[key] != "":
            out[name] = coerce(name, env[key])
    return out


def from_toml(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"config: cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config: {path} is not valid TOML: {exc}") from None
    # Accept either a flat file or one with a [relay] table.
    data = data.get("relay", data)
    if not isinstance(data, dict):
        raise ConfigError(f"config: {path}: [relay] must be a table of settings")
    return {k.replace("-", "_"): coerce(k.replace("-", "_"), v) for k, v in data.items()}


def load_config(
    flags: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    config_path: str | None = None,
) -> PresenceConfig:
    """Merge the three sources (flags > env > file > defaults) and validate."""
    env = os.environ if env is None else env
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    path = config_path or env.get(ENV_PREFIX + "CONFIG") or None
    merged: dict[str, Any] = {}
    if path:
        merged.update(from_toml(path))
    merged.update(from_env(env))
    merged.update({k: coerce(k, v) for k, v in flags.items()})
    try:
        return PresenceConfig(**merged)
    except TypeError as exc:  # a wrong type slipped past coerce (e.g. None for an int)
        raise ConfigError(str(exc)) from None
