"""Where a new session's agent works: the folder a client chose, checked against the
operator's policy, or None for the session's own workspace (DESIGN §4, §12)."""

from __future__ import annotations

import os
from pathlib import Path

from ..config import AgentConfig
from ..errors import ApiError, bad_request


def resolve_cwd(
    requested: str | None, agent: AgentConfig, daemons: tuple[str, ...], workspaces: str
) -> str | None:
    """The real path of a client-chosen cwd: inside an allowed root (403 otherwise),
    never a folder holding any of the `daemons` own paths nor inside another session's
    workspace (the sandbox binds it read-write: 403), and a directory (400)."""
    if requested is None:
        return agent.cwd or None
    real = os.path.realpath(requested)
    roots = [os.path.realpath(r) for r in agent.allowed_cwd_roots]
    if not any(_within(real, root) for root in roots):
        raise ApiError(403, "cwd_not_allowed", f"cwd {requested!r} is not inside an allowed root")
    if any(_within(path, real) for path in daemons) or _within(real, workspaces):
        raise ApiError(403, "cwd_not_allowed", f"cwd {requested!r} holds the daemon's own files")
    try:
        is_dir = Path(real).is_dir()
    except OSError:  # a name too long, a path through a file, ...
        is_dir = False
    if not is_dir:
        raise bad_request("cwd_not_found", f"cwd {requested!r} is not a directory")
    return real


def _within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)
