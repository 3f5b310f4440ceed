"""Command line: `agent-webkitd [--config FILE]`, `agent-webkitd check-config --config FILE`,
`agent-webkitd migrate --config FILE`, `agent-webkitd prune --older-than 30d --config FILE`,
`agent-webkitd --version`."""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys

from . import __version__
from .config import ConfigError, load_config, load_environment, redacted, store_dsn
from .logs import configure_logging


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="agent-webkitd", description=__doc__)
    parser.add_argument("--version", action="version", version=f"agent-webkitd {__version__}")
    parser.add_argument("--config", help="TOML config file (every key has a default)")
    sub = parser.add_subparsers(dest="command")
    check = sub.add_parser("check-config", help="print the effective config, secrets redacted")
    check.add_argument("--config", dest="sub_config", help="TOML config file")
    migrate = sub.add_parser("migrate", help="create or upgrade the Postgres schema, then exit")
    migrate.add_argument("--config", dest="sub_config", help="TOML config file")
    prune = sub.add_parser("prune", help="delete closed sessions' data older than a duration")
    prune.add_argument("--older-than", required=True, type=duration, help="e.g. 30d, 12h, 90m")
    prune.add_argument("--config", dest="sub_config", help="TOML config file")
    args = parser.parse_args(argv)

    path = getattr(args, "sub_config", None) or args.config
    try:
        config = load_config(path)
        load_environment(config)
        if args.command == "check-config":
            print(json.dumps(redacted(config), indent=2))
            return 0
        if args.command in ("migrate", "prune"):
            return run_store_command(args, store_dsn(config))
        from .daemon import StartupFailed, serve, take_secrets  # the SDK: only to serve

        configure_logging(config.logging)
        token, dsn = take_secrets(config)
    except ConfigError as exc:
        print(f"agent-webkitd: config error: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(serve(config, token, dsn))
    except StartupFailed as exc:
        print(f"agent-webkitd: {exc}", file=sys.stderr)
        return 1
    return 0


def duration(text: str) -> float:
    """'30d', '12h', '90m', '45s' -> seconds."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", text.strip())
    if not match:
        raise argparse.ArgumentTypeError(
            f"expected a duration like 30d, 12h, 90m or 45s, got {text!r}"
        )
    return float(match[1]) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[match[2]]


def run_store_command(args: argparse.Namespace, dsn: str) -> int:
    if not dsn:
        raise ConfigError("no database: set store.dsn or DATABASE_URL")
    from .pgstore import prune, run_migrations  # asyncpg only when it is used

    try:
        if args.command == "migrate":
            applied = asyncio.run(run_migrations(dsn))
            print(json.dumps({"applied": applied}))
        else:
            print(json.dumps({"deleted": asyncio.run(prune(dsn, args.older_than))}))
    except Exception as exc:  # connection refused, schema too new, ...: say it and fail
        print(f"agent-webkitd {args.command}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
