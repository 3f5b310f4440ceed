"""Command line: `agent-webkitd [--config FILE]`, `agent-webkitd check-config --config FILE`,
`agent-webkitd migrate --config FILE`, `agent-webkitd prune --older-than 30d --config FILE`,
`agent-webkitd backup DEST --config FILE` (the embedded store), `agent-webkitd check-sandbox
--config FILE` (what an agent can reach), `agent-webkitd --version`."""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
from pathlib import Path
from typing import Any

from . import __version__
from .config import Config, ConfigError, load_config, load_environment, redacted, store_dsn
from .errors import SandboxUnavailable
from .logs import configure_logging


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="agent-webkitd", description=__doc__)
    parser.add_argument("--version", action="version", version=f"agent-webkitd {__version__}")
    parser.add_argument("--config", help="TOML config file (every key has a default)")
    sub = parser.add_subparsers(dest="command")
    check = sub.add_parser("check-config", help="print the effective config, secrets redacted")
    check.add_argument("--config", dest="sub_config", help="TOML config file")
    migrate = sub.add_parser("migrate", help="create or upgrade the store's schema, then exit")
    migrate.add_argument("--config", dest="sub_config", help="TOML config file")
    prune = sub.add_parser("prune", help="delete closed sessions' data older than a duration")
    prune.add_argument("--older-than", required=True, type=duration, help="e.g. 30d, 12h, 90m")
    prune.add_argument("--config", dest="sub_config", help="TOML config file")
    backup = sub.add_parser("backup", help="copy the embedded store's file, online, to DEST")
    backup.add_argument("destination", help="the copy to write (a new file)")
    backup.add_argument("--config", dest="sub_config", help="TOML config file")
    sandbox_check = sub.add_parser(
        "check-sandbox", help="start one agent sandbox, probe what it reaches, report"
    )
    sandbox_check.add_argument("--config", dest="sub_config", help="TOML config file")
    args = parser.parse_args(argv)

    path = getattr(args, "sub_config", None) or args.config
    try:
        config = load_config(path)
        load_environment(config)
        if args.command in ("migrate", "prune", "backup"):
            return run_store_command(args, config)
        from .agents.genui import load_components  # the SDK: only to check components and serve

        components = load_components(config.genui)  # a bad component schema is a config error
        if args.command == "check-config":
            print(json.dumps(redacted(config), indent=2))
            return 0
        if args.command == "check-sandbox":
            return check_sandbox(config, path)
        from .agents import sandbox
        from .daemon import StartupFailed, serve, take_secrets

        configure_logging(config.logging)
        secrets = take_secrets(config)
        sandbox.check(config.agent)
    except ConfigError as exc:
        print(f"agent-webkitd: config error: {exc}", file=sys.stderr)
        return 2
    except SandboxUnavailable as exc:
        print(f"agent-webkitd: no sandbox for agents: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(serve(config, secrets, components, path))
    except StartupFailed as exc:
        print(f"agent-webkitd: {exc}", file=sys.stderr)
        return 1
    return 0


def check_sandbox(config: Config, path: str | None) -> int:
    """Exit 0 when the sandbox holds (DESIGN §12), 1 when it shows something it must not,
    2 when there is none."""
    from .agents import sandbox
    from .agents.sandbox_check import EXPECTED_HIDDEN, check_sandbox
    from .daemon import hidden_paths

    sandbox.check(config.agent)  # SandboxUnavailable: exit 2 with the cause
    hidden = hidden_paths(config, path)
    report = asyncio.run(check_sandbox(config, hidden, (*hidden, *EXPECTED_HIDDEN)))
    print(json.dumps(report, indent=2))
    return 0 if report["ok"] else 1


def duration(text: str) -> float:
    """'30d', '12h', '90m', '45s' -> seconds."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", text.strip())
    if not match:
        raise argparse.ArgumentTypeError(
            f"expected a duration like 30d, 12h, 90m or 45s, got {text!r}"
        )
    return float(match[1]) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[match[2]]


def run_store_command(args: argparse.Namespace, config: Config) -> int:
    """migrate, prune and backup on the configured store."""
    backend = config.store.backend
    if backend == "memory":
        raise ConfigError(f"{args.command}: store.backend is 'memory', which keeps nothing")
    if backend == "postgres" and args.command == "backup":
        raise ConfigError("backup: use pg_dump for the Postgres store")
    try:
        print(json.dumps(_store_command(args, config)))
    except Exception as exc:  # unreachable, read-only, schema too new, ...: say it and fail
        print(f"agent-webkitd {args.command}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


def _store_command(args: argparse.Namespace, config: Config) -> dict[str, Any]:
    if config.store.backend == "sqlite":
        from .stores.sqlite.db import backup
        from .stores.sqlite.store import migrate_file, prune_file

        path = Path(config.store.path)
        if args.command == "backup":
            destination = Path(args.destination).resolve()
            if destination.exists():
                raise FileExistsError(f"{destination} exists; back up to a new file")
            backup(path, destination)
            return {"backup": str(destination)}
        if args.command == "migrate":
            return {"applied": migrate_file(path)}
        return {"deleted": forget_folders(config, prune_file(path, args.older_than))}
    dsn = store_dsn(config)
    if not dsn:
        raise ConfigError("no database: set store.dsn or DATABASE_URL")
    from .stores.postgres.admin import prune, run_migrations  # asyncpg only when it is used

    if args.command == "migrate":
        return {"applied": asyncio.run(run_migrations(dsn))}
    return {"deleted": forget_folders(config, asyncio.run(prune(dsn, args.older_than)))}


def forget_folders(config: Config, deleted: dict[str, Any]) -> dict[str, Any]:
    """The pruned sessions' workspace and CLI state folders go too (this host's)."""
    from .agents.workspaces import Workspaces

    ids = deleted.pop("ids")
    deleted["folders"] = Workspaces(config.agent.workspaces_dir).forget(ids)
    return deleted


if __name__ == "__main__":
    sys.exit(main())
