"""How the Postgres store writes a batch: one transaction that checks, row by row, that
this host still owns each session (`owner = node_id`) and stores nothing for a session it
lost. So a host whose lease ran out can never commit, and never publish, a seq the new
owner will assign.
"""

from __future__ import annotations

import datetime
from typing import Any

import asyncpg
import structlog

from ...usage.model import fold
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
    if not touched and not batch.usage:
        return set()
    async with pool.acquire() as conn, conn.transaction():
        # Usage was spent whoever owns the session now: it is always added.
        await _add_usage(conn, batch)
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


USAGE_COLUMNS = (
    "input_tokens, output_tokens, cache_creation_input_tokens, cache_read_input_tokens,"
    " requests, usd"
)
_UNNEST_USAGE = "$3::bigint[], $4::bigint[], $5::bigint[], $6::bigint[], $7::bigint[], $8::float8[]"
_ADD_USAGE = ", ".join(
    f"{c} = t.{c} + EXCLUDED.{c}" for c in USAGE_COLUMNS.replace(" ", "").split(",")
)


async def _add_usage(conn: Any, batch: Batch) -> None:
    """Add the batch's usage to each session's totals and each principal's day."""
    if not batch.usage:
        return
    sessions, days = fold(batch.usage)
    if sessions:
        rows = [usage.row() for usage in sessions.values()]
        await conn.execute(
            f"INSERT INTO awk_session_usage AS t (session_id, {USAGE_COLUMNS})"
            " SELECT v.* FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[],"
            f" $5::bigint[], $6::bigint[], $7::float8[]) AS v(id, {USAGE_COLUMNS})"
            " WHERE EXISTS (SELECT 1 FROM awk_sessions s WHERE s.id = v.id)"
            f" ON CONFLICT (session_id) DO UPDATE SET {_ADD_USAGE}",
            list(sessions),
            *([row[i] for row in rows] for i in range(6)),
        )
    keys = list(days)
    rows = [usage.row() for usage in days.values()]
    await conn.execute(
        f"INSERT INTO awk_usage_days AS t (principal, day, {USAGE_COLUMNS})"
        f" SELECT * FROM unnest($1::text[], $2::date[], {_UNNEST_USAGE})"
        f" ON CONFLICT (principal, day) DO UPDATE SET {_ADD_USAGE}",
        [principal for principal, _ in keys],
        [datetime.date.fromisoformat(day) for _, day in keys],
        *([row[i] for row in rows] for i in range(6)),
    )


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
