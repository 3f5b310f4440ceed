"""Where a session's CLI finds the conversation it resumes, and where history reads it.

Each session's CLI keeps its transcripts in a state folder of its own (DESIGN §12); a
durable store mirrors them too. A conversation that moves to another session (a resume,
a fork) is filed in the new session's folder, under the cwd the new CLI runs in, before
that CLI starts: from the folder of the session that had it, else from the store.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from claude_agent_sdk import (
    SessionMessage,
    get_session_messages_from_store,
    project_key_for_directory,
)

from ..agents.workspaces import copy_transcript, transcript_file, write_transcript
from ..stores.base import Store
from .spec import SessionSpec


async def find_or_file(spec: SessionSpec, store: Store, claude_session_id: str) -> bool:
    """Whether the CLI of this session can resume `claude_session_id`, after filing the
    transcript where it will look if it is elsewhere; False if it is nowhere."""
    cwd = spec.cwd
    if await store.transcript_stored(project_key_for_directory(cwd), claude_session_id):
        return True  # the SDK writes it out of the store for the CLI
    if await asyncio.to_thread(transcript_file, spec.state_dir, cwd, claude_session_id):
        return True
    if spec.source_state_dir is not None:
        found = await asyncio.to_thread(
            transcript_file, spec.source_state_dir, spec.source_cwd, claude_session_id
        )
        if found is not None:
            await asyncio.to_thread(copy_transcript, found, spec.state_dir, cwd)
            return True
    transcripts = store.sdk_session_store()
    if transcripts is not None and spec.source_cwd != cwd:
        entries = await transcripts.load(
            {
                "project_key": project_key_for_directory(spec.source_cwd),
                "session_id": claude_session_id,
            }
        )
        if entries:
            await asyncio.to_thread(
                write_transcript, list(entries), spec.state_dir, cwd, claude_session_id
            )
            return True
    return False


async def refile(spec: SessionSpec, store: Store, claude_session_id: str) -> None:
    """A session taken up from a host whose workspace had another path (once, at the
    claim): its transcript is filed in the store under that path's project; file it under
    this host's too, where the SDK and history look, even over a copy from before an
    earlier move (entries already there, by uuid, are skipped; appends go there from now
    on)."""
    transcripts = store.sdk_session_store()
    if transcripts is None or spec.moved_from_cwd is None:
        return
    old = {
        "project_key": project_key_for_directory(spec.moved_from_cwd),
        "session_id": claude_session_id,
    }
    entries = await transcripts.load(old)  # type: ignore[arg-type]
    if entries:
        new = {"project_key": project_key_for_directory(spec.cwd), "session_id": claude_session_id}
        await transcripts.append(new, list(entries))  # type: ignore[arg-type]


class _TranscriptFile:
    """A CLI's transcript file as a read-only SessionStore, for the SDK's reader."""

    def __init__(self, path: Path) -> None:
        self._path = path

    async def load(self, key: Any) -> list[dict[str, Any]] | None:
        def read() -> list[dict[str, Any]]:
            lines = self._path.read_text(encoding="utf-8", errors="replace").splitlines()
            entries = []
            for line in lines:
                try:
                    entries.append(json.loads(line))
                except ValueError:  # a line cut short by a crash
                    continue
            return entries

        return await asyncio.to_thread(read)

    async def append(self, key: Any, entries: list[Any]) -> None:
        raise NotImplementedError


async def file_messages(
    state_dir: str, cwd: str | None, claude_session_id: str
) -> list[SessionMessage]:
    """The conversation as the CLI's own transcript file in `state_dir` holds it."""
    path = await asyncio.to_thread(transcript_file, state_dir, cwd, claude_session_id)
    if path is None:
        return []
    return await get_session_messages_from_store(
        _TranscriptFile(path),  # type: ignore[arg-type]
        claude_session_id,
        cwd,
    )
