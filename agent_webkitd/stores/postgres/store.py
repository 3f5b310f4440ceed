"""The Postgres store: a durable event log, session ownership with leases, and failover.

The invariant: a seq is never reused. An event is published to subscribers only after
the transaction that stores it has committed, and that transaction also checks that this
host still owns the session (`owner = node_id`). So a client can only ever have seen
committed events; a host that died took nothing visible with it; and a host that lost a
session (its lease ran out and another host claimed it) can no longer commit, so it can
never publish a seq the new owner will assign.

Commits are grouped: one writer task takes everything appended since its last commit,
for every session, and stores it in one transaction. Under load a commit carries many
events; when idle it carries one, at the cost of one round trip to the database.

Ownership: each daemon process is a node with a lease (`awk_nodes.lease_until`) renewed
by a heartbeat every lease_s/3. A session whose owner's lease has expired may be claimed
by any host with one atomic UPDATE, so of two hosts racing exactly one wins. A host asked
for a session whose owner's port refuses connections (a crashed process) does not wait
for the lease: that is proof enough, and the commit-time owner check keeps even a wrong
guess safe.

While the database is unreachable, events wait in memory (up to max_pending_events,
then the CLIs are paused by backpressure) and are retried; nothing is published and
nothing is dropped. /readyz fails, new sessions get 503.
"""

from __future__ import annotations

import asyncio
import json
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import asyncpg
import structlog

from ...artefacts.versions import Artefact, StoredVersion, Version
from ...config import StoreConfig, is_loopback
from ...sessions.eventlog import stored_frame
from ..base import ClaimedSession, SessionOwnedElsewhere
from .migrations import migrate
from .transcripts import PostgresSessionStore

if TYPE_CHECKING:
    from ...sessions.eventlog import EventLog

log = structlog.get_logger(__name__)

RETRY_MIN_S = 0.1
RETRY_MAX_S = 2.0
STOP_FLUSH_S = 5.0
CHECK_TIMEOUT_S = 2.0
PROBE_TIMEOUT_S = 1.0


def _visible_to(param: str) -> str:
    """SQL: session `s` is visible to the principal in `param` (NULL: an admin). Sessions
    from before principals existed are the admin's."""
    return f"({param}::text IS NULL OR coalesce(s.spec->>'owner', 'token:default') = {param})"


# Take session $1 for node $2 if it is open, visible to $3, and {condition}: one
# statement, so of two hosts racing exactly one wins.
_CLAIM = (
    "UPDATE awk_sessions s SET owner = $2, updated_at = now()"
    f" WHERE s.id = $1 AND s.state = 'open' AND {_visible_to('$3')} AND ({{}})"
    " RETURNING s.spec::text AS spec, s.sdk_session_id, s.last_seq,"
    " extract(epoch FROM s.created_at)::float8 AS created_at"
)
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


@dataclass
class _Pending:
    log: EventLog
    seq: int
    name: str
    text: str


@dataclass
class _ArtefactWrite:
    """Save one version (`record`), or delete an artefact (`record` None)."""

    session_id: str
    artefact_id: str
    record: StoredVersion | None
    done: asyncio.Future[None]


class PostgresStore:
    durable = True
    shared = True

    def __init__(self, config: StoreConfig, dsn: str, host: str, port: int) -> None:
        self.config = config
        self._dsn = dsn
        self.node_id = f"{socket.gethostname()}:{port}:{uuid.uuid4().hex[:8]}"
        if host in ("", "0.0.0.0", "::"):
            host = socket.gethostname()
        self.url = config.advertise_url or f"http://{host}:{port}"
        self.on_session_lost: Callable[[str], None] = lambda session_id: None
        self._pool: Any = None
        self._pending: list[_Pending] = []
        # Session columns not yet stored: sdk_session_id, spec (JSON text).
        self._meta: dict[str, dict[str, str]] = {}
        self._closes: dict[str, str | None] = {}  # session id -> close reason (None: release)
        self._artefacts: list[_ArtefactWrite] = []
        self._work = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._idle = asyncio.Event()  # nothing waiting to be committed
        self._idle.set()
        self.healthy = True
        self._tasks: list[asyncio.Task[None]] = []

    # -- life ---------------------------------------------------------------------------

    async def start(self) -> None:
        self._pool = await asyncpg.create_pool(
            self._dsn,
            min_size=self.config.pool_min,
            max_size=self.config.pool_max,
            # Each host has its own pool and statements are few; keep server memory flat.
            max_inactive_connection_lifetime=300,
        )
        async with self._pool.acquire() as conn:
            applied = await migrate(conn)
            if applied:
                log.info("schema_migrated", versions=applied)
            await conn.execute(
                "INSERT INTO awk_nodes (id, url, lease_until)"
                " VALUES ($1, $2, now() + make_interval(secs => $3))",
                self.node_id,
                self.url,
                self.config.lease_s,
            )
        log.info("store_started", backend="postgres", node_id=self.node_id)
        self._tasks = [
            asyncio.create_task(self._writer(), name="pg-writer"),
            asyncio.create_task(self._heartbeat(), name="pg-heartbeat"),
        ]

    async def stop(self) -> None:
        """Commit what is pending (bounded), give up the lease, close the pool."""
        try:
            async with asyncio.timeout(STOP_FLUSH_S):
                await self._idle.wait()
        except TimeoutError:
            log.error("store_stop_unflushed", pending_events=len(self._pending))
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._pool is None:
            return
        try:
            async with asyncio.timeout(STOP_FLUSH_S):
                # Leaving for good: let other hosts claim at once instead of after the lease.
                await self._pool.execute("DELETE FROM awk_nodes WHERE id = $1", self.node_id)
                await self._pool.close()
        except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
            log.warning("store_stop_failed", error=str(exc))
            self._pool.terminate()

    async def check(self) -> None:
        if not self.healthy:
            raise RuntimeError("events are waiting for the database")
        async with asyncio.timeout(CHECK_TIMEOUT_S):
            await self._pool.fetchval("SELECT 1")

    def sdk_session_store(self) -> PostgresSessionStore:
        return PostgresSessionStore(self._pool)

    # -- the event log ------------------------------------------------------------------

    def append(self, log: EventLog, seq: int, name: str, text: str) -> None:
        self._pending.append(_Pending(log, seq, name, text))
        self._wake_writer()
        if len(self._pending) >= self.config.max_pending_events:
            self._room.clear()

    @property
    def full(self) -> bool:
        return not self._room.is_set()

    async def room(self) -> None:
        await self._room.wait()

    def note_sdk_session(self, session_id: str, sdk_session_id: str) -> None:
        self._meta.setdefault(session_id, {})["sdk_session_id"] = sdk_session_id
        self._wake_writer()

    def note_spec(self, session_id: str, spec: dict[str, Any]) -> None:
        self._meta.setdefault(session_id, {})["spec"] = json.dumps(spec)
        self._wake_writer()

    async def transcript_stored(self, project_key: str, sdk_session_id: str) -> bool:
        return bool(
            await self._pool.fetchval(
                "SELECT EXISTS (SELECT 1 FROM awk_transcripts"
                " WHERE project_key = $1 AND session_id = $2 AND subpath = '')",
                project_key,
                sdk_session_id,
            )
        )

    async def session_opened(self, session_id: str, spec: dict[str, Any]) -> None:
        await self._pool.execute(
            "INSERT INTO awk_sessions (id, spec, owner) VALUES ($1, $2::jsonb, $3)",
            session_id,
            json.dumps(spec),
            self.node_id,
        )

    async def session_closed(self, session_id: str, reason: str) -> None:
        """Closed for good once its last events are committed (same transaction)."""
        self._closes[session_id] = reason
        self._wake_writer()

    async def release(self, session_id: str, last_active: float) -> None:
        self._closes[session_id] = None
        self._wake_writer()

    async def open_sessions(self, ring_size: int, idle_timeout_s: float) -> list[ClaimedSession]:
        return []  # claimed when a request for one arrives, since other hosts share them

    async def save_artefact(self, session_id: str, record: StoredVersion) -> None:
        """Committed with the event that announces it (appended just before)."""
        await self._write_artefact(session_id, record.artefact_id, record)

    async def delete_artefact(self, session_id: str, artefact_id: str) -> None:
        await self._write_artefact(session_id, artefact_id, None)

    async def _write_artefact(
        self, session_id: str, artefact_id: str, record: StoredVersion | None
    ) -> None:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._artefacts.append(_ArtefactWrite(session_id, artefact_id, record, done))
        self._wake_writer()
        await done

    async def artefact_content(self, session_id: str, artefact_id: str, version: int) -> str | None:
        content: str | None = await self._pool.fetchval(
            "SELECT content FROM awk_artefact_versions"
            " WHERE session_id = $1 AND artefact_id = $2 AND version = $3",
            session_id,
            artefact_id,
            version,
        )
        return content

    async def _artefact_index(self, session_id: str) -> list[Artefact]:
        index: dict[str, Artefact] = {}
        for r in await self._pool.fetch(
            "SELECT a.artefact_id, a.title, a.kind, a.language,"
            " extract(epoch FROM a.created_at)::float8 AS created_at, v.version, v.summary,"
            " v.bytes, extract(epoch FROM v.created_at)::float8 AS version_created_at"
            " FROM awk_artefacts a JOIN awk_artefact_versions v USING (session_id, artefact_id)"
            " WHERE a.session_id = $1 ORDER BY a.created_at, a.artefact_id, v.version",
            session_id,
        ):
            artefact = index.setdefault(
                r["artefact_id"],
                Artefact(r["artefact_id"], r["title"], r["kind"], r["language"], r["created_at"]),
            )
            artefact.versions.append(
                Version(r["version"], r["summary"], r["version_created_at"], r["bytes"])
            )
        return list(index.values())

    def _wake_writer(self) -> None:
        self._idle.clear()
        self._work.set()

    async def _writer(self) -> None:
        delay = RETRY_MIN_S
        while True:
            await self._work.wait()
            self._work.clear()
            batch, self._pending = self._pending, []
            meta, self._meta = self._meta, {}
            closes, self._closes = self._closes, {}
            artefacts, self._artefacts = self._artefacts, []
            try:
                try:
                    lost = await self._commit(batch, meta, closes, artefacts)
                except TRANSIENT:
                    raise
                except asyncpg.PostgresError as exc:
                    log.error("store_batch_refused", error=str(exc), events=len(batch))
                    lost = await self._commit_each_session(batch, meta, closes, artefacts)
            except Exception as exc:  # transient (or a bug): never let the writer die
                # Keep everything, in order, and try again: nothing is published meanwhile.
                self._pending[:0] = batch
                for session_id, fields in meta.items():  # newer notes win
                    self._meta[session_id] = {**fields, **self._meta.get(session_id, {})}
                self._closes = {**closes, **self._closes}
                self._artefacts[:0] = artefacts
                if self.healthy:
                    log.error("store_commit_failed", error=str(exc), pending_events=len(batch))
                self.healthy = False
                self._work.set()
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
                continue
            if not self.healthy:
                log.info("store_recovered", committed_events=len(batch))
            self.healthy = True
            delay = RETRY_MIN_S
            newest: dict[EventLog, int] = {}
            for item in batch:
                newest[item.log] = item.seq
            for event_log, seq in newest.items():
                if event_log.session_id in lost:
                    continue
                event_log.publish(seq)
            for session_id in lost:
                log.error("session_stopped_here", session_id=session_id)
                self.on_session_lost(session_id)
            for write in artefacts:  # stored, or void with a session this host lost
                if not write.done.done():
                    write.done.set_result(None)
            if len(self._pending) < self.config.max_pending_events:
                self._room.set()
            if not (self._pending or self._meta or self._closes or self._artefacts):
                self._idle.set()

    async def _commit_each_session(
        self,
        batch: list[_Pending],
        meta: dict[str, dict[str, str]],
        closes: dict[str, str | None],
        artefacts: list[_ArtefactWrite],
    ) -> set[str]:
        """PostgreSQL refused a batch for good (not a connection problem): commit each
        session's share on its own, so one session's bad events cannot stall every other.
        A session whose share is refused again is stopped here, its events unpublished;
        another host can claim it from its last committed event."""
        shares: dict[str, list[_Pending]] = {}
        for item in batch:
            shares.setdefault(item.log.session_id, []).append(item)
        lost: set[str] = set()
        writes = {w.session_id for w in artefacts}
        for session_id in sorted(set(shares) | set(meta) | set(closes) | writes):
            try:
                lost |= await self._commit(
                    shares.get(session_id, []),
                    {session_id: meta[session_id]} if session_id in meta else {},
                    {session_id: closes[session_id]} if session_id in closes else {},
                    [w for w in artefacts if w.session_id == session_id],
                )
            except TRANSIENT:
                raise  # the whole batch is retried; what was committed is skipped then
            except asyncpg.PostgresError as exc:
                log.error("session_events_refused", session_id=session_id, error=str(exc))
                lost.add(session_id)
        return lost

    async def _commit(
        self,
        batch: list[_Pending],
        meta: dict[str, dict[str, str]],
        closes: dict[str, str | None],
        artefacts: list[_ArtefactWrite],
    ) -> set[str]:
        """Store a batch in one transaction; returns the sessions this host no longer owns
        (their events and artefacts are not stored)."""
        last: dict[str, int] = {}
        for item in batch:
            last[item.log.session_id] = item.seq
        touched = sorted(set(last) | set(meta) | set(closes) | {w.session_id for w in artefacts})
        if not touched:
            return set()
        async with self._pool.acquire() as conn, conn.transaction():
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
                    self.node_id,
                )
            }
            rows = [i for i in batch if i.log.session_id in owned]
            if rows:
                await conn.execute(
                    # A retry of a commit whose acknowledgement was lost finds its rows
                    # already there: the same events (no other host can write while
                    # this one owns the session), so skip them.
                    "INSERT INTO awk_events (session_id, seq, name, data)"
                    " SELECT s, q, n, d::json FROM unnest($1::text[], $2::bigint[],"
                    " $3::text[], $4::text[]) AS v(s, q, n, d)"
                    " ON CONFLICT (session_id, seq) DO NOTHING",
                    [i.log.session_id for i in rows],
                    [i.seq for i in rows],
                    [i.name for i in rows],
                    [i.text for i in rows],
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

    async def frames(self, session_id: str, after: int, until: int, limit: int) -> list[bytes]:
        rows = await self._events(session_id, after, until, limit)
        return [stored_frame(r["seq"], r["name"], r["data"]) for r in rows]

    async def _events(self, session_id: str, after: int, until: int, limit: int) -> Any:
        return await self._pool.fetch(
            "SELECT seq, name, data::text AS data FROM awk_events"
            " WHERE session_id = $1 AND seq > $2 AND seq <= $3 ORDER BY seq LIMIT $4",
            session_id,
            after,
            until,
            limit,
        )

    # -- ownership ----------------------------------------------------------------------

    async def _heartbeat(self) -> None:
        period = self.config.lease_s / 3
        failing = False
        while True:
            await asyncio.sleep(period)
            try:
                async with asyncio.timeout(period):
                    await self._pool.execute(
                        "INSERT INTO awk_nodes (id, url, lease_until)"
                        " VALUES ($1, $2, now() + make_interval(secs => $3))"
                        " ON CONFLICT (id) DO UPDATE SET lease_until = EXCLUDED.lease_until",
                        self.node_id,
                        self.url,
                        self.config.lease_s,
                    )
            except (asyncpg.PostgresError, *TRANSIENT) as exc:
                if not failing:  # once per outage, not once per beat
                    log.warning("store_heartbeat_failed", error=str(exc))
                failing = True
            else:
                if failing:
                    log.info("store_heartbeat_recovered")
                failing = False

    async def claim(
        self, session_id: str, ring_size: int, principal: str | None
    ) -> ClaimedSession | None:
        # Either the owner's lease has expired, or it was released (owner NULL).
        row = await self._pool.fetchrow(
            _CLAIM.format(
                "s.owner IS NULL OR NOT EXISTS (SELECT 1 FROM awk_nodes n"
                " WHERE n.id = s.owner AND n.lease_until > now())"
            ),
            session_id,
            self.node_id,
            principal,
        )
        if row is None:
            holder = await self._pool.fetchrow(
                "SELECT s.state, s.owner, n.url FROM awk_sessions s"
                f" LEFT JOIN awk_nodes n ON n.id = s.owner WHERE s.id = $1 AND {_visible_to('$2')}",
                session_id,
                principal,
            )
            if holder is None or holder["state"] != "open":
                return None
            if holder["owner"] is not None and await owner_is_gone(holder["owner"], holder["url"]):
                row = await self._claim_from_dead(session_id, holder["owner"], principal)
            if row is None:
                raise SessionOwnedElsewhere(holder["owner"] or "", holder["url"] or "")
        last_seq = row["last_seq"]
        events = await self._events(session_id, last_seq - ring_size, last_seq, ring_size)
        return ClaimedSession(
            session_id=session_id,
            spec=json.loads(row["spec"]),
            sdk_session_id=row["sdk_session_id"],
            last_seq=last_seq,
            events=[(e["name"], json.loads(e["data"])) for e in events],
            created_at=row["created_at"],
            artefacts=await self._artefact_index(session_id),
        )

    async def _claim_from_dead(
        self, session_id: str, dead_owner: str, principal: str | None
    ) -> Any:
        """The owner's port refuses connections: it is gone, however fresh its lease.
        Claim only if that is still the owner (of two claimants one wins), and end the
        dead node's lease so its other sessions move as quickly."""
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "UPDATE awk_nodes SET lease_until = now() WHERE id = $1 AND lease_until > now()",
                dead_owner,
            )
            return await conn.fetchrow(
                _CLAIM.format("s.owner = $4"), session_id, self.node_id, principal, dead_owner
            )


async def _write_artefact(conn: Any, write: _ArtefactWrite) -> None:
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
            write.session_id,
            record.artefact_id,
            record.title,
            record.kind,
            record.language,
            record.artefact_created_at,
        )
    version = record.version
    await conn.execute(
        "INSERT INTO awk_artefact_versions"
        " (session_id, artefact_id, version, content, summary, bytes, created_at)"
        " SELECT $1, $2, $3, $4, $5, $6, to_timestamp($7) WHERE EXISTS (SELECT 1 FROM"
        "  awk_artefacts WHERE session_id = $1 AND artefact_id = $2)"  # not if deleted meanwhile
        " ON CONFLICT DO NOTHING",
        write.session_id,
        record.artefact_id,
        version.version,
        record.content,
        version.summary,
        version.bytes,
        version.created_at,
    )


async def owner_is_gone(owner: str, url: str | None) -> bool:
    """True only on proof: nothing listens where the owner said it listens. A timeout or
    any other error proves nothing; then the lease decides. A loopback address proves
    something only on the owner's own machine."""
    parts = urlsplit(url or "")
    if not parts.hostname:
        return False
    if is_loopback(parts.hostname) and owner.split(":")[0] != socket.gethostname():
        return False
    try:
        async with asyncio.timeout(PROBE_TIMEOUT_S):
            _, writer = await asyncio.open_connection(parts.hostname, parts.port or 80)
    except ConnectionRefusedError:
        return True
    except (OSError, TimeoutError):
        return False
    writer.close()
    return False


async def run_migrations(dsn: str) -> list[int]:
    """`agent-webkitd migrate`."""
    conn = await asyncpg.connect(dsn)
    try:
        return await migrate(conn)
    finally:
        await conn.close()


async def prune(dsn: str, older_than_s: float) -> dict[str, int]:
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
        }
    finally:
        await conn.close()
