"""Session transcripts in Postgres: the claude_agent_sdk SessionStore the SDK mirrors into.

One row per transcript (the main one has subpath '', subagents have theirs) carries the
write time and, for main transcripts, the folded session summary; entries hang off it in
append order. The schema is a constant for the migration runner; this module never
creates tables.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg
from claude_agent_sdk.types import (
    SessionKey,
    SessionListSubkeysKey,
    SessionStore,
    SessionStoreEntry,
    SessionStoreListEntry,
    SessionSummaryEntry,
)

from ..transcript_keys import fold_summary, subpath_of, uuid_of

TRANSCRIPT_SCHEMA = """
CREATE TABLE awk_transcripts (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    project_key text NOT NULL,
    session_id text NOT NULL,
    subpath text NOT NULL,  -- '' is the main transcript
    mtime bigint NOT NULL,  -- epoch ms, database clock
    summary jsonb,          -- fold_session_summary data, main transcripts only
    UNIQUE (project_key, session_id, subpath)
);

CREATE TABLE awk_transcript_entries (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,  -- append order
    transcript_id bigint NOT NULL REFERENCES awk_transcripts (id) ON DELETE CASCADE,
    uuid text,
    entry json NOT NULL     -- json, not jsonb: jsonb refuses NUL characters, tool output has them
);

CREATE INDEX awk_transcript_entries_order ON awk_transcript_entries (transcript_id, id);

CREATE UNIQUE INDEX awk_transcript_entries_uuid ON awk_transcript_entries (transcript_id, uuid)
    WHERE uuid IS NOT NULL;
"""

# Upserting the transcript row takes its row lock, so appends to one transcript run one
# after another until commit: entry order and the summary's read-fold-write are never
# interleaved. mtime never goes backwards, even if the database clock does.
_TOUCH_TRANSCRIPT = """
INSERT INTO awk_transcripts (project_key, session_id, subpath, mtime)
VALUES ($1, $2, $3, (extract(epoch FROM clock_timestamp()) * 1000)::bigint)
ON CONFLICT (project_key, session_id, subpath)
DO UPDATE SET mtime = greatest(excluded.mtime, awk_transcripts.mtime + 1)
RETURNING id, mtime, summary::text
"""

# A uuid already stored for this transcript (or earlier in the same batch) is skipped.
_INSERT_ENTRIES = """
INSERT INTO awk_transcript_entries (transcript_id, uuid, entry)
SELECT $1, batch.uuid, batch.entry::json
FROM unnest($2::text[], $3::text[]) WITH ORDINALITY AS batch (uuid, entry, position)
ORDER BY batch.position
ON CONFLICT DO NOTHING
RETURNING uuid
"""

_STORE_SUMMARY = "UPDATE awk_transcripts SET summary = $2::text::jsonb WHERE id = $1"

_LOAD = """
SELECT e.entry::text
FROM awk_transcript_entries e
JOIN awk_transcripts t ON t.id = e.transcript_id
WHERE t.project_key = $1 AND t.session_id = $2 AND t.subpath = $3
ORDER BY e.id
"""

_LIST_SESSIONS = """
SELECT session_id, mtime FROM awk_transcripts WHERE project_key = $1 AND subpath = ''
"""

_LIST_SUMMARIES = """
SELECT session_id, mtime, summary::text FROM awk_transcripts
WHERE project_key = $1 AND subpath = '' AND summary IS NOT NULL
"""

# The main transcript ($3 = '') takes its subagent transcripts with it.
_DELETE = """
DELETE FROM awk_transcripts
WHERE project_key = $1 AND session_id = $2 AND ($3 = '' OR subpath = $3)
"""

_LIST_SUBKEYS = """
SELECT subpath FROM awk_transcripts
WHERE project_key = $1 AND session_id = $2 AND subpath <> ''
ORDER BY subpath
"""


T = TypeVar("T")
# The SDK gives append() 60 s, retries a failure only twice within a second, then drops
# the batch. So ride out a database restart here, but answer before the SDK gives up.
OUTAGE_PATIENCE_S = 45.0
RETRY_MAX_S = 2.0
_CONNECTION_ERRORS = (
    OSError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
)


async def _riding_out_outages(call: Callable[[], Awaitable[T]]) -> T:
    deadline = time.monotonic() + OUTAGE_PATIENCE_S
    delay = 0.1
    while True:
        try:
            return await call()
        except _CONNECTION_ERRORS:
            if time.monotonic() + delay > deadline:
                raise
        await asyncio.sleep(delay)
        delay = min(delay * 2, RETRY_MAX_S)


class PostgresSessionStore(SessionStore):
    """SessionStore on an asyncpg pool; the tables come from TRANSCRIPT_SCHEMA."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def append(self, key: SessionKey, entries: list[SessionStoreEntry]) -> None:
        if entries:
            await _riding_out_outages(lambda: self._append(key, entries))

    async def _append(self, key: SessionKey, entries: list[SessionStoreEntry]) -> None:
        subpath = subpath_of(key)
        uuids = [uuid_of(entry) for entry in entries]
        blobs = [json.dumps(entry) for entry in entries]
        async with self._pool.acquire() as conn, conn.transaction():
            transcript_id, mtime, stored_summary = await conn.fetchrow(
                _TOUCH_TRANSCRIPT, key["project_key"], key["session_id"], subpath
            )
            rows = await conn.fetch(_INSERT_ENTRIES, transcript_id, uuids, blobs)
            if subpath:
                return  # subagent transcripts do not feed the session summary
            added = _added_entries(entries, uuids, {row["uuid"] for row in rows})
            summary = fold_summary(key, mtime, stored_summary, added)
            await conn.execute(_STORE_SUMMARY, transcript_id, summary)

    async def load(self, key: SessionKey) -> list[SessionStoreEntry] | None:
        return await _riding_out_outages(lambda: self._load(key))

    async def _load(self, key: SessionKey) -> list[SessionStoreEntry] | None:
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(_LOAD, key["project_key"], key["session_id"], subpath_of(key))
        # Appends never leave a transcript empty, so no rows means never written (or deleted).
        return [json.loads(row["entry"]) for row in rows] or None

    async def list_sessions(self, project_key: str) -> list[SessionStoreListEntry]:
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(_LIST_SESSIONS, project_key)
        return [{"session_id": row["session_id"], "mtime": row["mtime"]} for row in rows]

    async def list_session_summaries(self, project_key: str) -> list[SessionSummaryEntry]:
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(_LIST_SUMMARIES, project_key)
        return [
            {
                "session_id": row["session_id"],
                "mtime": row["mtime"],
                "data": json.loads(row["summary"]),
            }
            for row in rows
        ]

    async def delete(self, key: SessionKey) -> None:
        async with self._pool.acquire() as conn:
            await conn.execute(_DELETE, key["project_key"], key["session_id"], subpath_of(key))

    async def list_subkeys(self, key: SessionListSubkeysKey) -> list[str]:
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(_LIST_SUBKEYS, key["project_key"], key["session_id"])
        return [row["subpath"] for row in rows]


def _added_entries(
    entries: list[SessionStoreEntry], uuids: list[str | None], inserted_uuids: set[str]
) -> list[SessionStoreEntry]:
    """The entries the insert kept, in order: the summary describes what is stored, so a
    replayed batch (re-import, retry) must not be folded twice."""
    unclaimed = set(inserted_uuids)
    added = []
    for entry, uuid in zip(entries, uuids, strict=True):
        if uuid is None:
            added.append(entry)
        elif uuid in unclaimed:
            unclaimed.discard(uuid)  # a repeat later in the batch was the one skipped
            added.append(entry)
    return added
