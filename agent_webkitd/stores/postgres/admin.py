"""The Postgres store's maintenance commands: `agent-webkitd migrate` and `prune`."""

from __future__ import annotations

from typing import Any

import asyncpg

from .migrations import migrate


async def run_migrations(dsn: str) -> list[int]:
    """`agent-webkitd migrate`."""
    conn = await asyncpg.connect(dsn)
    try:
        return await migrate(conn)
    finally:
        await conn.close()


async def prune(dsn: str, older_than_s: float) -> dict[str, Any]:
    """`agent-webkitd prune`: delete closed sessions (events and transcripts too) that
    closed longer ago than `older_than_s`, and nodes long gone."""
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            gone = await conn.fetch(
                "DELETE FROM awk_sessions WHERE state = 'closed'"
                " AND closed_at < now() - make_interval(secs => $1)"
                " RETURNING id, sdk_session_id",
                older_than_s,
            )
            sdk_ids = [r["sdk_session_id"] for r in gone if r["sdk_session_id"]]
            # Entries and subagent transcripts go with their transcript (ON DELETE CASCADE).
            transcripts = await conn.execute(
                "DELETE FROM awk_transcripts WHERE session_id = ANY($1::text[])", sdk_ids
            )
            nodes = await conn.execute(
                "DELETE FROM awk_nodes n WHERE lease_until < now() - make_interval(secs => $1)"
                " AND NOT EXISTS (SELECT 1 FROM awk_sessions s WHERE s.owner = n.id)",
                older_than_s,
            )
        return {
            "sessions": len(gone),
            "transcripts": int(transcripts.split()[-1]),
            "nodes": int(nodes.split()[-1]),
            "ids": [r["id"] for r in gone],
        }
    finally:
        await conn.close()
