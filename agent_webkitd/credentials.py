"""Secrets, wherever the operator keeps them: the one lookup every secret goes through.

A secret named `NAME` (`AGENT_WEBKIT_AUTH_TOKEN`, `DATABASE_URL`, `ANTHROPIC_API_KEY`, an
`[[auth.tokens]]` entry's `env`, ...) is, first found first:

1. the environment variable `NAME` (a `.env` file counts: it fills the environment);
2. the file named by `NAME_FILE`;
3. systemd's credential: `$CREDENTIALS_DIRECTORY/<name>` (`LoadCredential=`), where
   `<name>` is the variable's name in lower case (`agent_webkit_auth_token`).

A file's value loses one trailing newline. A file that cannot be read, or is empty, is a
ConfigError naming the variable and the path, never the content. `take()` also removes
`NAME` and `NAME_FILE` from this process's environment, so the CLI processes (and the tools
they run) never inherit them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping
from pathlib import Path

from .errors import ConfigError

CREDENTIALS_DIRECTORY = "CREDENTIALS_DIRECTORY"  # set by systemd when the unit loads any
# The model credentials: the model gateway holds them, each CLI gets a session key instead
# (DESIGN.md §12).
MODEL_CREDENTIALS = ("ANTHROPIC_API_KEY", "CLAUDE_CODE_OAUTH_TOKEN", "ANTHROPIC_AUTH_TOKEN")


def credential_name(name: str) -> str:
    """The systemd credential a secret is read from: its variable's name in lower case."""
    return name.lower()


def secret(name: str, env: Mapping[str, str] = os.environ) -> str:
    """The secret `name` from the environment, `NAME_FILE` or the credentials directory;
    "" when it is in none of them."""
    value = env.get(name, "")
    if value:
        return value
    pointer = f"{name}_FILE"
    if env.get(pointer):
        return _read(Path(env[pointer]), f"{pointer}: {env[pointer]}")
    directory = env.get(CREDENTIALS_DIRECTORY, "")
    if directory:
        path = Path(directory) / credential_name(name)
        if os.path.lexists(path):
            return _read(path, f"{name}: the credential {path}")
    return ""


def take(name: str, env: MutableMapping[str, str] = os.environ) -> str:
    """`secret(name)`, then `NAME` and `NAME_FILE` are gone from the environment."""
    value = secret(name, env)
    forget(name, env)
    return value


def forget(name: str, env: MutableMapping[str, str] = os.environ) -> None:
    """`NAME` and `NAME_FILE` gone from the environment (a credential file cannot be)."""
    env.pop(name, None)
    env.pop(f"{name}_FILE", None)


def model_credential_environment(env: MutableMapping[str, str] = os.environ) -> dict[str, str]:
    """Every model credential found (`{"ANTHROPIC_API_KEY": ...}`, ...), taken out of the
    environment: only the model gateway sends it, the CLIs never inherit it."""
    found = {name: take(name, env) for name in MODEL_CREDENTIALS}
    return {name: value for name, value in found.items() if value}


def _read(path: Path, source: str) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"{source} cannot be read: {exc.strerror or type(exc).__name__}"
        ) from None
    try:
        value = data.decode()
    except UnicodeDecodeError:
        raise ConfigError(f"{source} is not UTF-8 text") from None
    value = value.removesuffix("\n").removesuffix("\r") if value.endswith("\n") else value
    if not value:
        raise ConfigError(f"{source} is empty")
    return value
