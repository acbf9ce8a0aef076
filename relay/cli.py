"""`presence-relay serve` and `presence-relay token`.

Every PresenceConfig field is a `--kebab-case` flag of `serve` (and of `token`, which needs
`--jwt-secret` or PRESENCE_JWT_SECRET to sign with). `serve --workers N` (N > 1) makes this
process a supervisor of N relay processes on one port (relay/server/workers.py).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import sys
from typing import Any

from relay.config import FIELDS, SECRET_FIELDS, PresenceConfig, load_config
from relay.exceptions import ConfigError
from relay.server import workers


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE.toml", help="TOML file with settings")
    for name, f in FIELDS.items():
        default = f.default
        shown = "(unset)" if default is None or name in SECRET_FIELDS else repr(default)
        parser.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            default=None,
            metavar=name.upper(),
            help=f"{f.metadata.get('help', '')} [default {shown}; env PRESENCE_{name.upper()}]",
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="presence-relay", description="Presence and live-cursor relay."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the relay")
    _add_config_flags(serve)
    token = sub.add_parser("token", help="print a development token signed with jwt_secret")
    token.add_argument("--user", required=True, help="user id (the `sub` claim)")
    token.add_argument("--name", required=True, help="display name")
    token.add_argument("--workspace", default="default", help="workspace id (the `ws` claim)")
    token.add_argument(
        "--docs",
        required=True,
        help="comma-separated document ids or prefixes ending in * ('*' for all): the "
        "documents the token may join; the boundary between workspaces",
    )
    token.add_argument("--ttl", type=int, default=3600, help="seconds until it expires")
    token.add_argument("--avatar", default=None, help="http(s) avatar URL")
    _add_config_flags(token)
    sub.add_parser("config", help="print the effective configuration (secrets hidden)")
    return parser


def _flags(ns: argparse.Namespace) -> dict[str, Any]:
    return {name: getattr(ns, name, None) for name in FIELDS}


def _run_serve(config: PresenceConfig, argv: list[str]) -> int:
    workers.check_workers(config)
    index = workers.worker_index()
    if index is None and config.workers > 1:  # docs/workers.md
        return workers.Supervisor(config, argv).run()
    on_ready = None
    if index is not None:
        if not workers.bind_to_supervisor():
            logging.getLogger("relay").error("the supervisor is gone: worker %d exits", index)
            return 1
        on_ready = workers.announce(index)

    from relay.server.app import serve_forever

    try:
        import uvloop
    except ImportError:  # not available on this platform: the stock loop still works
        asyncio.run(serve_forever(config, on_ready))
    else:
        uvloop.run(serve_forever(config, on_ready))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)  # a supervisor hands them on
    ns = build_parser().parse_args(args)
    if ns.command == "config":
        config = load_config()
        for f in dataclasses.fields(config):
            v = getattr(config, f.name)
            shown = "***" if f.name in SECRET_FIELDS and v else repr(v)
            print(f"{f.name} = {shown}")
        return 0
    try:
        config = load_config(_flags(ns), config_path=ns.config)
    except ConfigError as exc:
        print(f"presence-relay: invalid configuration: {exc}", file=sys.stderr)
        return 2
    serving = ns.command == "serve"
    logging.basicConfig(
        level=config.log_level.upper(),
        format=workers.log_format(config.workers if serving else 1, workers.worker_index()),
    )
    for name in ("jwt_secret", "internal_api_key", "webhook_secret"):
        if _flags(ns).get(name) is not None:
            logging.getLogger("relay").warning(
                "--%s on the command line is visible to every local user (ps); prefer "
                "--%s-file or PRESENCE_%s",
                name.replace("_", "-"),
                name.replace("_", "-"),
                name.upper(),
            )
    if ns.command == "token":
        from relay.auth import mint_token

        if not config.jwt_secret:
            print(
                "presence-relay: token needs --jwt-secret or PRESENCE_JWT_SECRET", file=sys.stderr
            )
            return 2
        docs = [d.strip() for d in ns.docs.split(",") if d.strip()]
        if not docs:
            print("presence-relay: --docs names no document", file=sys.stderr)
            return 2
        print(
            mint_token(config.jwt_secret, ns.user, ns.name, ns.workspace, docs, ns.ttl, ns.avatar)
        )
        return 0
    try:
        return _run_serve(config, args)
    except ConfigError as exc:
        print(f"presence-relay: invalid configuration: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(
            f"presence-relay: cannot listen on {config.host}:{config.port}: {exc}", file=sys.stderr
        )
        return 1
