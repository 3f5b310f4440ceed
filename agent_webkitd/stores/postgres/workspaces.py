"""Workspace checkpoints in Postgres (DESIGN §14): one row per file, directory or link
of a session's workspace, as of its last checkpoint. A checkpoint carries only what
changed, and is stored only while this host owns the session, in the same way events
are: a host that lost the session can never overwrite the new owner's files.
"""

from __future__ import annotations

from typing import Any

from ..base import FileRow

_COLUMNS = "path, kind, mode, size, mtime_ns, target, content"


async def save_workspace(
    pool: Any, node_id: str, session_id: str, changed: list[FileRow], removed: list[str]
) -> bool:
    async with pool.acquire() as conn, conn.transaction():
        # The row lock makes a concurrent claim wait for this checkpoint, or this
        # checkpoint see the claim and store nothing.
        owned = await conn.fetchval(
            "SELECT true FROM awk_sessions WHERE id = $1 AND owner = $2 AND state = 'open'"
            " FOR UPDATE",
            session_id,
            node_id,
        )
        if not owned:
            return False
        if removed:
            await conn.execute(
                "DELETE FROM awk_workspace_files WHERE session_id = $1 AND path = ANY($2::text[])",
                session_id,
                removed,
            )
        if changed:
            await conn.execute(
                f"INSERT INTO awk_workspace_files (session_id, {_COLUMNS})"
                " SELECT $1, v.* FROM unnest($2::text[], $3::text[], $4::int[], $5::bigint[],"
                " $6::bigint[], $7::text[], $8::bytea[]) AS v"
                " ON CONFLICT (session_id, path) DO UPDATE SET kind = EXCLUDED.kind,"
                " mode = EXCLUDED.mode, size = EXCLUDED.size, mtime_ns = EXCLUDED.mtime_ns,"
                " target = EXCLUDED.target, content = EXCLUDED.content",
                session_id,
                *(list(column) for column in zip(*changed, strict=True)),
            )
    return True


async def workspace_files(pool: Any, session_id: str) -> list[FileRow]:
    rows = await pool.fetch(
        f"SELECT {_COLUMNS} FROM awk_workspace_files WHERE session_id = $1 ORDER BY path",
        session_id,
    )
    return [FileRow(*row) for row in rows]
