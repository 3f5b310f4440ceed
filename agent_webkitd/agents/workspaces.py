"""Where each session's agent works and keeps its state (DESIGN §12).

A session gets `<workspaces_dir>/<session id>/` (0700) as its cwd unless the client chose
one inside `allowed_cwd_roots`, and `<workspaces_dir>/.cli/<session id>/` as its CLI's
own CLAUDE_CONFIG_DIR, where its transcripts live. Both outlive the CLI (hibernation,
crashes, restarts); the workspace goes when the session closes, the transcripts stay
(a closed session's conversation can still be resumed or read) until `prune` removes the
session, or, with a store of this host's alone, until the next start.

A conversation moves between sessions (a resume, a fork): its transcript is copied into
the new session's state folder, filed under the new cwd, so the CLI finds it there.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from claude_agent_sdk import project_key_for_directory

STATE_FOLDER = ".cli"  # never a session id: those are UUIDs


class Workspaces:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def prepare(self) -> None:
        """Make the folders (at start-up, before any CLI)."""
        (self.root / STATE_FOLDER).mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.root, 0o700)

    def workspace(self, session_id: str) -> str:
        return str(self.root / session_id)

    def state_dir(self, session_id: str) -> str:
        return str(self.root / STATE_FOLDER / session_id)

    def owns(self, cwd: str | None) -> bool:
        """Whether `cwd` is a session's own workspace (not a folder the client chose)."""
        return cwd is not None and Path(cwd).parent == self.root

    def make(self, cwd: str | None, state_dir: str) -> None:
        """Make a session's folders if they are missing (a first start, or a workspace
        whose session closed and whose conversation is resumed)."""
        if self.owns(cwd):
            assert cwd is not None
            os.makedirs(cwd, mode=0o700, exist_ok=True)
        os.makedirs(state_dir, mode=0o700, exist_ok=True)

    def remove(self, cwd: str | None) -> None:
        """Delete a closed session's workspace (a client-chosen cwd is never touched)."""
        if self.owns(cwd):
            assert cwd is not None
            shutil.rmtree(cwd, ignore_errors=True)

    def remove_state(self, state_dir: str) -> None:
        shutil.rmtree(state_dir, ignore_errors=True)

    def forget(self, session_ids: list[str]) -> int:
        """`prune`: the folders of sessions the store no longer has; how many went."""
        gone = 0
        for session_id in session_ids:
            for folder in (self.root / session_id, self.root / STATE_FOLDER / session_id):
                if Path(session_id).name == session_id and folder.is_dir():
                    shutil.rmtree(folder, ignore_errors=True)
                    gone += 1
        return gone

    def sweep(self, keep: set[str]) -> int:
        """Start-up with a store of this host's alone: folders of no session it holds
        (warm CLIs of a daemon that was killed, sessions the memory store forgot)."""
        gone = 0
        for folder in (self.root, self.root / STATE_FOLDER):
            for entry in folder.iterdir():
                if entry.name != STATE_FOLDER and entry.name not in keep and entry.is_dir():
                    shutil.rmtree(entry, ignore_errors=True)
                    gone += 1
        return gone

    def copy_files(self, source: str | None, destination: str) -> None:
        """A fork starts with a copy of its source's workspace (links stay links: nothing
        outside the source is read)."""
        if not self.owns(source) or not os.path.isdir(source or ""):
            return
        assert source is not None
        shutil.copytree(source, destination, symlinks=True, dirs_exist_ok=True)


def transcript_file(state_dir: str, cwd: str | None, claude_session_id: str) -> Path | None:
    """The CLI's own transcript of a conversation in a state folder, if it is there. The
    CLI files it under projects/<key of cwd>/; a long cwd's key may be hashed differently
    by the CLI, so any project folder will do."""
    name = f"{claude_session_id}.jsonl"
    if Path(name).name != name:  # never let an id walk out of the folder
        return None
    projects = Path(state_dir) / "projects"
    exact = projects / project_key_for_directory(cwd or os.getcwd()) / name
    if exact.is_file():
        return exact
    return next((p for p in projects.glob(f"*/{name}") if p.is_file()), None)


def copy_transcript(source: Path, state_dir: str, cwd: str | None) -> None:
    """File a conversation's transcript (and its subagents' folder) in a state folder,
    under the cwd the CLI will run in."""
    folder = Path(state_dir) / "projects" / project_key_for_directory(cwd or os.getcwd())
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    shutil.copyfile(source, folder / source.name)
    sidecar = source.with_suffix("")
    if sidecar.is_dir():
        shutil.copytree(sidecar, folder / sidecar.name, dirs_exist_ok=True)


def write_transcript(
    entries: Iterable[Any], state_dir: str, cwd: str | None, claude_session_id: str
) -> None:
    """File a transcript loaded from the store, as the CLI would have written it."""
    folder = Path(state_dir) / "projects" / project_key_for_directory(cwd or os.getcwd())
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(folder / f"{claude_session_id}.jsonl", "w", encoding="utf-8") as out:
        for entry in entries:
            out.write(json.dumps(entry, separators=(",", ":")) + "\n")
