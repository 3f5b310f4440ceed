"""Session transcripts in the embedded store's SQLite file: the claude_agent_sdk
SessionStore the SDK mirrors into and resumes from, so one file holds a conversation's
events and everything `resume` needs.

Appends ride on the store's group commit (one transaction, one fsync, with the events of
the same burst); reads use the reader connection. The tables come from db.py.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from claude_agent_sdk.types import SessionStore

from ..transcript_keys import subpath_of
from .db import Database

if TYPE_CHECKING:
    from claude_agent_sdk.types import (
        SessionKey,
        SessionListSubkeysKey,
        SessionStoreEntry,
        SessionStoreListEntry,
        SessionSummaryEntry,
    )

# The store's group commit: returns once the entries are committed.
Append = Callable[["SessionKey", list["SessionStoreEntry"]], Awaitable[None]]


class SqliteSessionStore(SessionStore):
    def __init__(self, db: Database, append: Append) -> None:
        self._db = db
        self._append = append

    async def append(self, key: SessionKey, entries: list[SessionStoreEntry]) -> None:
        if entries:
            await self._append(key, entries)

    async def load(self, key: SessionKey) -> list[SessionStoreEntry] | None:
        def load(conn: sqlite3.Connection) -> list[SessionStoreEntry] | None:
            rows = conn.execute(
                "SELECT e.entry FROM awk_transcript_entries e"
                " JOIN awk_transcripts t ON t.id = e.transcript_id"
                " WHERE t.project_key = ? AND t.session_id = ? AND t.subpath = ? ORDER BY e.id",
                (key["project_key"], key["session_id"], subpath_of(key)),
            ).fetchall()
            # Appends never leave a transcript empty: no rows means never written (or deleted).
            return [json.loads(entry) for (entry,) in rows] or None

        return await self._db.read(load)

    async def list_sessions(self, project_key: str) -> list[SessionStoreListEntry]:
        rows = await self._db.read(
            lambda conn: conn.execute(
                "SELECT session_id, mtime FROM awk_transcripts"
                " WHERE project_key = ? AND subpath = ''",
                (project_key,),
            ).fetchall()
        )
        return [{"session_id": session_id, "mtime": mtime} for session_id, mtime in rows]

    async def list_session_summaries(self, project_key: str) -> list[SessionSummaryEntry]:
        rows = await self._db.read(
            lambda conn: conn.execute(
                "SELECT session_id, mtime, summary FROM awk_transcripts"
                " WHERE project_key = ? AND subpath = '' AND summary IS NOT NULL",
                (project_key,),
            ).fetchall()
        )
        return [
            {"session_id": session_id, "mtime": mtime, "data": json.loads(summary)}
            for session_id, mtime, summary in rows
        ]

    async def delete(self, key: SessionKey) -> None:
        # The main transcript ('' subpath) takes its subagent transcripts with it.
        subpath = subpath_of(key)
        await self._db.write(
            lambda conn: conn.execute(
                "DELETE FROM awk_transcripts WHERE project_key = ? AND session_id = ?"
                " AND (? = '' OR subpath = ?)",
                (key["project_key"], key["session_id"], subpath, subpath),
            )
        )

    async def list_subkeys(self, key: SessionListSubkeysKey) -> list[str]:
        rows = await self._db.read(
            lambda conn: conn.execute(
                "SELECT subpath FROM awk_transcripts"
                " WHERE project_key = ? AND session_id = ? AND subpath <> '' ORDER BY subpath",
                (key["project_key"], key["session_id"]),
            ).fetchall()
        )
        return [subpath for (subpath,) in rows]
