"""Command line: `agent-webkitd [--config FILE]`, `agent-webkitd check-config --config FILE`,
`agent-webkitd --version`."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from . import __version__
from .config import ConfigError, load_config, load_environment, redacted
from .daemon import serve, take_auth_token
from .logs import configure_logging


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="agent-webkitd", description=__doc__)
    parser.add_argument("--version", action="version", version=f"agent-webkitd {__version__}")
    parser.add_argument("--config", help="TOML config file (every key has a default)")
    sub = parser.add_subparsers(dest="command")
    check = sub.add_parser("check-config", help="print the effective config, secrets redacted")
    check.add_argument("--config", dest="check_config", help="TOML config file")
    args = parser.parse_args(argv)

    path = getattr(args, "check_config", None) or args.config
    try:
        config = load_config(path)
        load_environment(config)
        if args.command == "check-config":
            print(json.dumps(redacted(config), indent=2))
            return 0
        configure_logging(config.logging)
        token = take_auth_token(config)
    except ConfigError as exc:
        print(f"agent-webkitd: config error: {exc}", file=sys.stderr)
        return 2
    asyncio.run(serve(config, token))
    return 0


if __name__ == "__main__":
    sys.exit(main())
