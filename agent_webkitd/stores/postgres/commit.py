"""How the Postgres store writes a batch: one transaction that checks, row by row, that
this host still owns each session (`owner = node_id`) and stores nothing for a session it
lost. So a host whose lease ran out can never commit, and never publish, a seq the new
owner will assign.
"""

from __future__ import annotations

from typing import Any

import asyncpg
import structlog

from ..writer import ArtefactWrite, Batch

log = structlog.get_logger(__name__)

# Failures that pass: the database is away, restarting, or asked us to retry.
TRANSIENT = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.OperatorInterventionError,
    asyncpg.TransactionRollbackError,
    asyncpg.InsufficientResourcesError,
)


async def commit(pool: Any, node_id: str, batch: Batch) -> set[str]:
    """Store a batch in one transaction; returns the sessions this host no longer owns
    (their events and artefacts are not stored)."""
    last: dict[str, int] = {}
    for event_log, seq, _, _ in batch.events:
        last[event_log.session_id] = seq
    meta, artefacts = batch.meta, batch.artefacts
    # A release hands the session back (owner NULL, still open); a close ends it.
    closes: dict[str, str | None] = {**dict.fromkeys(batch.releases), **batch.closes}
    touched = sorted(set(last) | set(meta) | set(closes) | {w.session_id for w in artefacts})
    if not touched:
        return set()
    async with pool.acquire() as conn, conn.transaction():
        # Taking the row locks first makes a concurrent claim wait for this commit,
        # or makes this commit see the claim and store nothing for that session.
        owned = {
            r["id"]
            for r in await conn.fetch(
                "UPDATE awk_sessions s SET"
                " last_seq = GREATEST(s.last_seq, COALESCE(v.last_seq, 0)),"
                " sdk_session_id = COALESCE(v.sdk_session_id, s.sdk_session_id),"
                " spec = COALESCE(v.spec::jsonb, s.spec),"
                " updated_at = now()"
                " FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[])"
                "   AS v(id, last_seq, sdk_session_id, spec)"
                " WHERE s.id = v.id AND s.owner = $5 AND s.state = 'open'"
                " RETURNING s.id",
                touched,
                [last.get(s) for s in touched],
                [meta.get(s, {}).get("sdk_session_id") for s in touched],
                [meta.get(s, {}).get("spec") for s in touched],
                node_id,
            )
        }
        rows = [e for e in batch.events if e[0].session_id in owned]
        if rows:
            await conn.execute(
                # A retry of a commit whose acknowledgement was lost finds its rows
                # already there: the same events (no other host can write while
                # this one owns the session), so skip them.
                "INSERT INTO awk_events (session_id, seq, name, data)"
                " SELECT s, q, n, d::json FROM unnest($1::text[], $2::bigint[],"
                " $3::text[], $4::text[]) AS v(s, q, n, d)"
                " ON CONFLICT (session_id, seq) DO NOTHING",
                [event_log.session_id for event_log, _, _, _ in rows],
                [seq for _, seq, _, _ in rows],
                [name for _, _, name, _ in rows],
                [text for _, _, _, text in rows],
            )
        for write in artefacts:
            if write.session_id in owned:
                await _write_artefact(conn, write)
        ended = [s for s in closes if s in owned]
        if ended:
            await conn.execute(
                "UPDATE awk_sessions s SET owner = NULL, updated_at = now(),"
                " state = CASE WHEN v.reason IS NULL THEN 'open' ELSE 'closed' END,"
                " close_reason = v.reason,"
                " closed_at = CASE WHEN v.reason IS NULL THEN NULL ELSE now() END"
                " FROM unnest($1::text[], $2::text[]) AS v(id, reason) WHERE s.id = v.id",
                ended,
                [closes[s] for s in ended],
            )
    # A session that ended here, or was never stored, is not "lost".
    return {s for s in last if s not in owned and s not in closes}


async def commit_each_session(pool: Any, node_id: str, batch: Batch) -> set[str]:
    """PostgreSQL refused a batch for good (not a connection problem): commit each
    session's share on its own, so one session's bad events cannot stall every other.
    A session whose share is refused again is stopped here, its events unpublished;
    another host can claim it from its last committed event."""
    lost: set[str] = set()
    for session_id, share in sorted(batch.by_session().items()):
        try:
            lost |= await commit(pool, node_id, share)
        except TRANSIENT:
            raise  # the whole batch is retried; what was committed is skipped then
        except asyncpg.PostgresError as exc:
            log.error("session_events_refused", session_id=session_id, error=str(exc))
            lost.add(session_id)
    return lost


async def _write_artefact(conn: Any, write: ArtefactWrite) -> None:
    """In order: a retried batch finds its own rows already there and skips them."""
    record = write.record
    if record is None:  # its versions go with it (ON DELETE CASCADE)
        await conn.execute(
            "DELETE FROM awk_artefacts WHERE session_id = $1 AND artefact_id = $2",
            write.session_id,
            write.artefact_id,
        )
        return
    if record.version.version == 1:
        await conn.execute(
            "INSERT INTO awk_artefacts (session_id, artefact_id, title, kind, language, created_at)"
            " VALUES ($1, $2, $3, $4, $5, to_timestamp($6)) ON CONFLICT DO NOTHING",
            *write.artefact_row(),
        )
    await conn.execute(
        "INSERT INTO awk_artefact_versions"
        " (session_id, artefact_id, version, content, summary, bytes, created_at)"
        " SELECT $1, $2, $3, $4, $5, $6, to_timestamp($7) WHERE EXISTS (SELECT 1 FROM"
        "  awk_artefacts WHERE session_id = $1 AND artefact_id = $2)"  # not if deleted meanwhile
        " ON CONFLICT DO NOTHING",
        *write.version_row(),
    )
