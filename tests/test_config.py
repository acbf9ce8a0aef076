"""Configuration (relay.config) and the CLI (relay.cli)."""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any

import jwt
import pytest

from relay.auth import verify_token
from relay.config import (
    FIELDS,
    SECRET_FIELDS,
    ConfigError,
    PresenceConfig,
    coerce,
    load_config,
)
from relay.core.document import DocumentRules


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No PRESENCE_* variable of the machine running the tests leaks into them."""
    for key in list(os.environ):
        if key.startswith("PRESENCE_"):
            monkeypatch.delenv(key)


SECRET = "a-test-secret-of-more-than-32-bytes-0123456789"
# A file a *_file setting can name (the generic "every field" tests need one that exists).
SECRET_FILE = Path(__file__).resolve().parent / "vectors" / "secret.txt"


def write(tmp_path: Path, text: str, name: str = "relay.toml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


# ===================================================================== defaults


class TestDefaults:
    def test_seed_defaults(self) -> None:
        c = load_config(env={})
        assert c.cursor_throttle_ms == 50
        assert c.typing_debounce_ms == 500
        assert c.presence_ttl_seconds == 30
        assert c.activity_timeout_ms == 30_000
        assert c.max_users_per_document == 1000
        assert c.batch_ms == 50
        assert c.port == 8765
        assert c.host == "127.0.0.1"

    def test_server_defaults_match_the_protocol(self) -> None:
        c = PresenceConfig()
        assert c.max_frame_bytes == 8192
        assert c.max_frames_per_s == 200
        assert c.max_frames_burst == 400
        assert c.rate_limit_close_after_s == 5.0
        assert c.max_bad_frames == 20
        assert c.bad_frames_window_s == 10.0
        assert c.max_send_backlog == 1024 * 1024
        assert c.auth_timeout_ms == 5000
        assert c.away_after_ms == 300_000
        assert c.away_after_blur_ms == 60_000
        assert c.jwt_secret is None
        assert c.internal_api_key is None
        assert c.redis_url is None

    def test_load_config_with_nothing_equals_the_dataclass_defaults(self) -> None:
        assert load_config(flags={}, env={}) == PresenceConfig()

    def test_document_rules_carry_the_settings(self) -> None:
        c = load_config(
            flags={
                "typing_debounce_ms": "700",
                "max_users_per_document": "7",
                "activity_timeout_ms": "1234",
                "away_after_ms": "5678",
                "away_after_blur_ms": "910",
            },
            env={},
        )
        assert c.document_rules() == DocumentRules(
            max_users_per_document=7,
            typing_debounce_ms=700,
            activity_timeout_ms=1234,
            away_after_ms=5678,
            away_after_blur_ms=910,
        )

    def test_welcome_settings_has_the_protocol_keys(self) -> None:
        s = load_config(flags={"batch_ms": "20"}, env={}).welcome_settings()
        for key in (
            "batch_ms",
            "cursor_throttle_ms",
            "typing_debounce_ms",
            "max_frame_bytes",
            "max_documents",
            "max_frames_per_s",
            "max_frames_burst",
        ):
            assert key in s
        assert s["batch_ms"] == 20
        assert "jwt_secret" not in s

    def test_frozen(self) -> None:
        c = PresenceConfig()
        with pytest.raises(dataclasses.FrozenInstanceError):
            c.port = 1  # type: ignore[misc]


# ===================================================================== precedence


class TestPrecedence:
    def test_file_over_defaults(self, tmp_path: Path) -> None:
        path = write(tmp_path, "batch_ms = 30\nhost = '::1'\n")
        c = load_config(env={}, config_path=path)
        assert c.batch_ms == 30
        assert c.host == "::1"
        assert c.port == 8765

    def test_env_over_file(self, tmp_path: Path) -> None:
        path = write(tmp_path, "batch_ms = 30\nport = 9000\n")
        c = load_config(env={"PRESENCE_BATCH_MS": "20"}, config_path=path)
        assert c.batch_ms == 20
        assert c.port == 9000  # the file still counts for what env does not set

    def test_flags_over_env_over_file(self, tmp_path: Path) -> None:
        path = write(tmp_path, "batch_ms = 30\nport = 9000\ntyping_debounce_ms = 900\n")
        env = {"PRESENCE_BATCH_MS": "20", "PRESENCE_PORT": "9001"}
        c = load_config(flags={"batch_ms": "10"}, env=env, config_path=path)
        assert c.batch_ms == 10
        assert c.port == 9001
        assert c.typing_debounce_ms == 900

    def test_flags_over_env(self) -> None:
        c = load_config(flags={"host": "0.0.0.0"}, env={"PRESENCE_HOST": "::1"})
        assert c.host == "0.0.0.0"

    def test_none_flags_do_not_override(self) -> None:
        c = load_config(flags={"batch_ms": None, "port": None}, env={"PRESENCE_PORT": "1234"})
        assert c.port == 1234
        assert c.batch_ms == 50

    def test_empty_env_value_is_unset(self) -> None:
        c = load_config(env={"PRESENCE_PORT": "", "PRESENCE_BATCH_MS": ""})
        assert c.port == 8765 and c.batch_ms == 50

    def test_relay_table(self, tmp_path: Path) -> None:
        path = write(
            tmp_path,
            "[relay]\nbatch_ms = 25\nmetrics_per_document = true\nrate_limit_close_after_s = 2.5\n",
        )
        c = load_config(env={}, config_path=path)
        assert c.batch_ms == 25
        assert c.metrics_per_document is True
        assert c.rate_limit_close_after_s == 2.5

    def test_relay_table_below_env_and_flags(self, tmp_path: Path) -> None:
        path = write(tmp_path, "[relay]\nbatch_ms = 25\nport = 7000\nhost = '::1'\n")
        c = load_config(flags={"port": "7001"}, env={"PRESENCE_BATCH_MS": "26"}, config_path=path)
        assert (c.batch_ms, c.port, c.host) == (26, 7001, "::1")

    def test_kebab_case_keys_in_toml(self, tmp_path: Path) -> None:
        path = write(tmp_path, "batch-ms = 33\nmax-frames-per-s = 150\n")
        c = load_config(env={}, config_path=path)
        assert c.batch_ms == 33
        assert c.max_frames_per_s == 150

    def test_presence_config_env_names_the_file(self, tmp_path: Path) -> None:
        path = write(tmp_path, "batch_ms = 44\n")
        c = load_config(env={"PRESENCE_CONFIG": path})
        assert c.batch_ms == 44

    def test_explicit_path_beats_presence_config(self, tmp_path: Path) -> None:
        a = write(tmp_path, "batch_ms = 44\n", "a.toml")
        b = write(tmp_path, "batch_ms = 45\n", "b.toml")
        c = load_config(env={"PRESENCE_CONFIG": a}, config_path=b)
        assert c.batch_ms == 45

    def test_os_environ_is_the_default_env(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("PRESENCE_BATCH_MS", "17")
        assert load_config().batch_ms == 17

    def test_native_toml_types_accepted(self, tmp_path: Path) -> None:
        path = write(
            tmp_path,
            f"close_timeout_s = 3\nmetrics_per_document = false\njwt_secret = '{SECRET}' \n",
        )
        c = load_config(env={}, config_path=path)
        assert c.close_timeout_s == 3.0 and isinstance(c.close_timeout_s, float)
        assert c.metrics_per_document is False
        assert c.jwt_secret == SECRET

    @pytest.mark.parametrize(
        "raw,want",
        [
            ("1", True),
            ("true", True),
            ("YES", True),
            ("on", True),
            ("0", False),
            ("false", False),
            ("No", False),
            ("off", False),
        ],
    )
    def test_bool_spellings(self, raw: str, want: bool) -> None:
        c = load_config(env={"PRESENCE_METRICS_PER_DOCUMENT": raw})
        assert c.metrics_per_document is want

    def test_the_demo_follows_the_secret_unless_set(self) -> None:
        assert load_config(env={}).demo_enabled is True
        assert load_config(env={"PRESENCE_JWT_SECRET": SECRET}).demo_enabled is False
        both = {"PRESENCE_JWT_SECRET": SECRET, "PRESENCE_DEMO": "true"}
        assert load_config(env=both).demo_enabled is True
        assert load_config(env={"PRESENCE_DEMO": "off"}).demo_enabled is False
        with pytest.raises(ConfigError, match="demo: 'maybe' is not a valid bool"):
            load_config(env={"PRESENCE_DEMO": "maybe"})


# ===================================================================== every field from env


def _valid_value(name: str) -> tuple[str, Any]:
    """A valid, non-default value for the field: (env string, expected attribute)."""
    f = FIELDS[name]
    default = f.default
    lo, hi = f.metadata.get("lo"), f.metadata.get("hi")
    special = {
        "host": "::1",
        "log_level": "debug",
        "allowed_origins": "https://app.example",
        "jwt_secret": SECRET,
        "jwt_secret_file": str(SECRET_FILE),
        "internal_api_key_file": str(SECRET_FILE),
        "metrics_host": "::1",
        "webhook_urls": "https://hooks.example/presence",
        "webhook_secret_file": str(SECRET_FILE),
    }
    if name in special:
        return special[name], special[name]
    if name == "metrics_port":
        return "9100", 9100
    if name == "demo":  # default None (follows jwt_secret); False is a real, non-default value
        return "false", False
    if isinstance(default, bool):
        return "true", True
    if isinstance(default, int):
        v = default + 1 if hi is None or default + 1 <= hi else default - 1
        assert lo is None or v >= lo
        return str(v), v
    if isinstance(default, float):
        v = default + 0.5 if hi is None or default + 0.5 <= hi else default - 0.5
        return str(v), v
    return f"value-for-{name}", f"value-for-{name}"


@pytest.mark.parametrize("name", sorted(FIELDS))
def test_every_field_is_settable_from_env(name: str) -> None:
    raw, want = _valid_value(name)
    c = load_config(env={"PRESENCE_" + name.upper(): raw})
    assert getattr(c, name) == want
    assert getattr(c, name) != FIELDS[name].default
    assert type(getattr(c, name)) is type(want)


@pytest.mark.parametrize("name", sorted(FIELDS))
def test_every_field_is_settable_from_flags_and_toml(name: str, tmp_path: Path) -> None:
    raw, want = _valid_value(name)
    assert getattr(load_config(flags={name: raw}, env={}), name) == want
    toml_value = (
        repr(want).lower()
        if isinstance(want, bool)
        else (f'"{want}"' if isinstance(want, str) else repr(want))
    )
    path = write(tmp_path, f"{name} = {toml_value}\n")
    assert getattr(load_config(env={}, config_path=path), name) == want


def test_fields_cover_the_dataclass() -> None:
    assert set(FIELDS) == {f.name for f in dataclasses.fields(PresenceConfig)}
    assert set(FIELDS) >= SECRET_FIELDS


# ===================================================================== invalid values


class TestInvalid:
    @pytest.mark.parametrize(
        "name,raw",
        [
            ("port", "70000"),
            ("port", "-1"),
            ("batch_ms", "0"),
            ("batch_ms", "1001"),
            ("typing_debounce_ms", "0"),
            ("max_users_per_document", "0"),
            ("max_frame_bytes", "10"),
            ("rate_limit_close_after_s", "0.05"),
            ("close_timeout_s", "-1"),
            ("bad_frames_window_s", "inf"),
        ],
    )
    def test_out_of_range_names_the_setting(self, name: str, raw: str) -> None:
        with pytest.raises(ConfigError) as ei:
            load_config(env={"PRESENCE_" + name.upper(): raw})
        assert name in str(ei.value)
        assert "range" in str(ei.value)

    @pytest.mark.parametrize(
        "name", sorted(n for n, f in FIELDS.items() if f.metadata.get("lo") is not None)
    )
    def test_every_bounded_field_rejects_below_its_lower_bound(self, name: str) -> None:
        lo = FIELDS[name].metadata["lo"]
        below = lo - 1 if isinstance(FIELDS[name].default, int) else lo - 0.01
        with pytest.raises(ConfigError, match=name):
            load_config(flags={name: str(below)}, env={})

    @pytest.mark.parametrize(
        "name", sorted(n for n, f in FIELDS.items() if f.metadata.get("hi") is not None)
    )
    def test_every_bounded_field_rejects_above_its_upper_bound(self, name: str) -> None:
        hi = FIELDS[name].metadata["hi"]
        above = hi + 1 if isinstance(FIELDS[name].default, int) else hi + 0.5
        with pytest.raises(ConfigError, match=name):
            load_config(flags={name: str(above)}, env={})

    @pytest.mark.parametrize(
        "name", sorted(n for n, f in FIELDS.items() if f.metadata.get("lo") is not None)
    )
    def test_bounds_are_inclusive(self, name: str) -> None:
        f = FIELDS[name]
        for bound in (f.metadata["lo"], f.metadata["hi"]):
            integral = isinstance(f.default, int) or f.metadata.get("kind") is int
            raw = str(int(bound)) if integral else str(float(bound))
            c = load_config(flags={name: raw}, env={})
            assert getattr(c, name) == bound

    @pytest.mark.parametrize(
        "name,raw",
        [
            ("port", "abc"),
            ("batch_ms", "1.5"),
            ("batch_ms", "ten"),
            ("close_timeout_s", "fast"),
            ("max_documents", ""),
        ],
    )
    def test_not_a_number_names_the_setting(self, name: str, raw: str) -> None:
        with pytest.raises(ConfigError) as ei:
            load_config(flags={name: raw}, env={})
        assert name in str(ei.value)

    def test_not_a_number_from_env(self) -> None:
        with pytest.raises(ConfigError, match="batch_ms"):
            load_config(env={"PRESENCE_BATCH_MS": "fast"})

    @pytest.mark.parametrize("raw", ["maybe", "2", "tru", "y e s"])
    def test_bad_bool_names_the_setting(self, raw: str) -> None:
        with pytest.raises(ConfigError, match="metrics_per_document"):
            load_config(env={"PRESENCE_METRICS_PER_DOCUMENT": raw})

    def test_bad_log_level(self) -> None:
        with pytest.raises(ConfigError, match="log_level"):
            load_config(env={"PRESENCE_LOG_LEVEL": "verbose"})

    @pytest.mark.parametrize(
        "name", ["close_timeout_s", "rate_limit_close_after_s", "bad_frames_window_s"]
    )
    def test_nan_is_out_of_range(self, name: str) -> None:
        with pytest.raises(ConfigError, match=name):
            load_config(env={"PRESENCE_" + name.upper(): "nan"})

    def test_unknown_key_in_toml(self, tmp_path: Path) -> None:
        path = write(tmp_path, "batch_ms = 20\nbatchms = 20\n")
        with pytest.raises(ConfigError, match="batchms"):
            load_config(env={}, config_path=path)

    def test_unknown_key_in_relay_table(self, tmp_path: Path) -> None:
        path = write(tmp_path, "[relay]\nnot_a_setting = 1\n")
        with pytest.raises(ConfigError, match="not_a_setting"):
            load_config(env={}, config_path=path)

    def test_unknown_flag_name(self) -> None:
        with pytest.raises(ConfigError, match="no_such"):
            load_config(flags={"no_such": "1"}, env={})

    def test_unreadable_file(self, tmp_path: Path) -> None:
        missing = str(tmp_path / "nope.toml")
        with pytest.raises(ConfigError) as ei:
            load_config(env={}, config_path=missing)
        assert "nope.toml" in str(ei.value)

    def test_directory_is_unreadable(self, tmp_path: Path) -> None:
        with pytest.raises(ConfigError, match="cannot read"):
            load_config(env={}, config_path=str(tmp_path))

    def test_missing_file_named_by_env(self, tmp_path: Path) -> None:
        missing = str(tmp_path / "from-env.toml")
        with pytest.raises(ConfigError, match=r"from-env\.toml"):
            load_config(env={"PRESENCE_CONFIG": missing})

    @pytest.mark.parametrize(
        "text",
        ["port = \n", "[relay\nport = 1\n", "port = 1\nport = 2\n", "host = 'unterminated\n"],
    )
    def test_invalid_toml(self, tmp_path: Path, text: str) -> None:
        path = write(tmp_path, text)
        with pytest.raises(ConfigError) as ei:
            load_config(env={}, config_path=path)
        assert "TOML" in str(ei.value)
        assert "relay.toml" in str(ei.value)

    @pytest.mark.parametrize(
        "line,name",
        [
            ("host = 5", "host"),
            ("port = 80.5", "port"),
            ("port = true", "port"),
            ("port = '80x'", "port"),
            ("close_timeout_s = false", "close_timeout_s"),
            ("log_level = ['info']", "log_level"),
            ("metrics_per_document = 'maybe'", "metrics_per_document"),
        ],
    )
    def test_wrong_toml_types_name_the_setting(self, tmp_path: Path, line: str, name: str) -> None:
        path = write(tmp_path, line + "\n")
        with pytest.raises(ConfigError, match=name):
            load_config(env={}, config_path=path)

    @pytest.mark.parametrize(
        "line,name",
        [
            ("port = [1]", "port"),
            ("port = 1979-05-27", "port"),
            ("batch_ms = {a = 1}", "batch_ms"),
            ("close_timeout_s = [2.0]", "close_timeout_s"),
            ("bad_frames_window_s = 07:32:00", "bad_frames_window_s"),
        ],
    )
    def test_non_scalar_toml_values_for_numbers_name_the_setting(
        self, tmp_path: Path, line: str, name: str
    ) -> None:
        path = write(tmp_path, line + "\n")
        with pytest.raises(ConfigError, match=name):
            load_config(env={}, config_path=path)

    def test_relay_key_that_is_not_a_table(self, tmp_path: Path) -> None:
        path = write(tmp_path, "relay = 5\n")
        with pytest.raises(ConfigError, match="relay"):
            load_config(env={}, config_path=path)

    def test_invalid_file_fails_even_when_env_overrides_it(self, tmp_path: Path) -> None:
        path = write(tmp_path, "batch_ms = 0\n")  # out of range, but env wins
        assert load_config(env={"PRESENCE_BATCH_MS": "5"}, config_path=path).batch_ms == 5
        path = write(tmp_path, "batch_ms = 'x'\n", "bad.toml")  # a type error is reported
        with pytest.raises(ConfigError, match="batch_ms"):
            load_config(env={"PRESENCE_BATCH_MS": "5"}, config_path=path)

    def test_config_error_is_a_value_error(self) -> None:
        assert issubclass(ConfigError, ValueError)

    def test_coerce_rejects_float_for_int_and_bool_for_number(self) -> None:
        with pytest.raises(ConfigError, match="port"):
            coerce("port", 1.0)
        with pytest.raises(ConfigError, match="port"):
            coerce("port", True)
        with pytest.raises(ConfigError, match="close_timeout_s"):
            coerce("close_timeout_s", True)
        assert coerce("close_timeout_s", 3) == 3.0
        assert math.isclose(coerce("close_timeout_s", "2.5"), 2.5)


# ===================================================================== loopback


class TestLoopback:
    @pytest.mark.parametrize("host", ["127.0.0.1", "127.1.2.3", "::1", "localhost"])
    def test_loopback(self, host: str) -> None:
        assert load_config(flags={"host": host}, env={}).loopback is True

    @pytest.mark.parametrize(
        "host",
        ["0.0.0.0", "::", "10.0.0.1", "192.168.1.5", "example.com", "localhost.evil.com", ""],
    )
    def test_not_loopback(self, host: str) -> None:
        assert load_config(flags={"host": host}, env={}).loopback is False


# ===================================================================== CLI


class TestCli:
    @pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
    def test_token_prints_a_verifiable_token(self, capsys: pytest.CaptureFixture[str]) -> None:
        from relay.cli import main

        rc = main(
            [
                "token",
                "--jwt-secret",
                SECRET,
                "--user",
                "u",
                "--name",
                "N",
                "--docs",
                "a,b*",
                "--ttl",
                "60",
            ]
        )
        out = capsys.readouterr().out.strip()
        assert rc == 0
        assert out.count(".") == 2 and "\n" not in out
        grant = verify_token(out, SECRET)
        assert grant.docs == ("a", "b*")
        assert grant.user.user_id == "u"
        assert grant.user.name == "N"
        assert grant.user.workspace_id == "default"
        claims = jwt.decode(out, options={"verify_signature": False})
        assert claims["exp"] - claims["iat"] == 60
        assert jwt.get_unverified_header(out)["alg"] == "HS256"

    def test_token_secret_from_env(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        from relay.cli import main

        monkeypatch.setenv("PRESENCE_JWT_SECRET", "env-secret-env-secret-env-secret!")
        assert main(["token", "--user", "u", "--name", "N", "--docs", "*"]) == 0
        out = capsys.readouterr().out.strip()
        assert verify_token(out, "env-secret-env-secret-env-secret!").docs == ("*",)

    def test_token_requires_docs(self, capsys: pytest.CaptureFixture[str]) -> None:
        """`docs` is the boundary between workspaces: a token never grants everything by
        default."""
        from relay.cli import main

        with pytest.raises(SystemExit) as ei:
            main(["token", "--jwt-secret", SECRET, "--user", "u", "--name", "N"])
        assert ei.value.code == 2
        assert "--docs" in capsys.readouterr().err
        assert (
            main(["token", "--jwt-secret", SECRET, "--user", "u", "--name", "N", "--docs", " , "])
            == 2
        )
        assert "--docs" in capsys.readouterr().err

    def test_token_without_secret_fails(self, capsys: pytest.CaptureFixture[str]) -> None:
        from relay.cli import main

        assert main(["token", "--user", "u", "--name", "N", "--docs", "*"]) == 2
        err = capsys.readouterr()
        assert "jwt-secret" in err.err or "JWT_SECRET" in err.err
        assert err.out == ""

    def test_serve_rejects_batch_ms_zero(
        self, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        from relay import cli

        _refuse_to_serve(monkeypatch)
        rc = cli.main(["serve", "--batch-ms", "0"])
        assert rc == 2
        err = capsys.readouterr().err
        assert "batch_ms" in err

    @pytest.mark.timeout(30)
    def test_serve_public_host_without_secret_refuses(
        self, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        from relay import cli

        _refuse_to_serve(monkeypatch)
        rc = cli.main(["serve", "--host", "0.0.0.0", "--port", "0"])
        assert rc == 2
        err = capsys.readouterr().err
        assert "jwt_secret" in err

    def test_serve_with_invalid_toml_file(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        from relay import cli

        _refuse_to_serve(monkeypatch)
        path = write(tmp_path, "batch_ms = 'soon'\n")
        assert cli.main(["serve", "--config", path]) == 2
        assert "batch_ms" in capsys.readouterr().err

    def test_serve_with_non_scalar_toml_value(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        from relay import cli

        _refuse_to_serve(monkeypatch)
        path = write(tmp_path, "port = [1]\n")
        assert cli.main(["serve", "--config", path]) == 2
        assert "port" in capsys.readouterr().err

    def test_config_command_hides_secrets(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        from relay.cli import main

        monkeypatch.setenv("PRESENCE_JWT_SECRET", "hunter2-hunter2-hunter2-hunter2-hunter2")
        monkeypatch.setenv("PRESENCE_BATCH_MS", "21")
        assert main(["config"]) == 0
        out = capsys.readouterr().out
        assert "hunter2" not in out
        line = next(ln for ln in out.splitlines() if ln.startswith("jwt_secret = "))
        assert "***" in line
        assert "internal_api_key = None" in out  # unset secrets show as unset
        assert "batch_ms = 21" in out

    def test_every_field_is_a_serve_flag(self) -> None:
        from relay.cli import build_parser

        parser = build_parser()
        argv = ["serve"]
        for name in FIELDS:
            raw, _ = _valid_value(name)
            argv += ["--" + name.replace("_", "-"), raw]
        ns = parser.parse_args(argv)
        for name in FIELDS:
            assert getattr(ns, name) == _valid_value(name)[0]


def _refuse_to_serve(monkeypatch: pytest.MonkeyPatch) -> None:
    """If the CLI ever gets as far as listening, fail loudly instead of serving forever."""
    from relay.server import app

    async def start(self: Any) -> None:
        raise AssertionError("the relay started serving despite an invalid configuration")

    monkeypatch.setattr(app.Relay, "start", start)


def test_allowed_origins() -> None:
    c = PresenceConfig(allowed_origins=" https://app.example.com , http://localhost:3000")
    assert c.origins == [None, "https://app.example.com", "http://localhost:3000"]
    assert PresenceConfig().origins is None  # unset: no Origin check
    for bad in (",", " ", "app.example.com", "https://a.example,localhost"):
        with pytest.raises(ConfigError, match="allowed_origins"):
            PresenceConfig(allowed_origins=bad)


# ===================================================================== secrets


class TestSecrets:
    @pytest.mark.parametrize("name,least", [("jwt_secret", 32), ("internal_api_key", 16)])
    def test_a_short_secret_refuses_to_start_naming_the_setting(
        self, name: str, least: int
    ) -> None:
        for bad in ("", "x", "s" * (least - 1), "é" * (least // 2 - 1) + "x"):
            with pytest.raises(ConfigError, match=name):
                load_config(flags={name: bad}, env={})
        assert getattr(load_config(flags={name: "s" * least}, env={}), name) == "s" * least

    def test_empty_secret_from_toml_and_env_is_refused(self, tmp_path: Path) -> None:
        path = write(tmp_path, 'jwt_secret = ""\n')
        with pytest.raises(ConfigError, match="jwt_secret"):
            load_config(env={}, config_path=path)
        # An empty environment variable means "unset" (development mode on loopback only).
        assert load_config(env={"PRESENCE_JWT_SECRET": ""}).jwt_secret is None

    def test_secrets_from_files(self, tmp_path: Path) -> None:
        jwt_file = tmp_path / "jwt"
        jwt_file.write_text(SECRET + "\n")
        key_file = tmp_path / "key"
        key_file.write_text("k" * 20)
        c = load_config(
            flags={"jwt_secret_file": str(jwt_file), "internal_api_key_file": str(key_file)}, env={}
        )
        assert c.jwt_secret == SECRET and c.internal_api_key == "k" * 20

    def test_secret_file_problems_name_the_setting(self, tmp_path: Path) -> None:
        with pytest.raises(ConfigError, match="jwt_secret_file"):
            load_config(flags={"jwt_secret_file": str(tmp_path / "missing")}, env={})
        short = tmp_path / "short"
        short.write_text("tiny\n")
        with pytest.raises(ConfigError, match="jwt_secret"):
            load_config(flags={"jwt_secret_file": str(short)}, env={})
        both = {"jwt_secret_file": str(SECRET_FILE), "jwt_secret": SECRET}
        with pytest.raises(ConfigError, match="not both"):
            load_config(flags=both, env={})

    def test_secret_on_the_command_line_is_warned_about(
        self, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
    ) -> None:
        from relay import cli

        _refuse_to_serve(monkeypatch)
        with caplog.at_level("WARNING"), pytest.raises(AssertionError):
            cli.main(["serve", "--jwt-secret", SECRET, "--port", "0"])
        assert "visible to every local user" in caplog.text
        assert SECRET not in caplog.text


def test_the_readme_lists_every_setting() -> None:
    """The configuration table in README.md is what operators read: no setting missing."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    for name in FIELDS:
        flag = "--" + name.replace("_", "-")
        assert f"| `{name}` | `{flag}` / `PRESENCE_{name.upper()}` |" in readme, name


def test_a_setting_that_was_replaced_names_its_successor(tmp_path: Path) -> None:
    path = tmp_path / "relay.toml"
    path.write_text("ping_interval_s = 20\n")
    with pytest.raises(ConfigError, match="liveness_timeout_ms"):
        load_config(config_path=str(path))


@pytest.mark.parametrize(("value", "ok"), [(0, True), (1, False), (499, False), (500, True)])
def test_liveness_timeout_is_off_or_at_least_half_a_second(value: int, ok: bool) -> None:
    if ok:
        assert PresenceConfig(liveness_timeout_ms=value).liveness_timeout_ms == value
    else:
        with pytest.raises(ConfigError, match="liveness_timeout_ms"):
            PresenceConfig(liveness_timeout_ms=value)
