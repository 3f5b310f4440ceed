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

Hand-over (DESIGN §14): a host shutting down marks its node `draining` and releases its
sessions one by one as they settle (owner NULL, committed before it answers "not here").
A host asked for a session of a draining owner waits a moment for that release instead
of refusing, so a proxy's retry finds a host that serves the session. A host whose lease
lapsed (frozen, or cut off from the database, for longer than the lease) checks which of
its sessions are still its own before serving any, and stops the others.

While the database is unreachable, events wait in memory (up to max_pending_events,
then the CLIs are paused by backpressure) and are retried; nothing is published and
nothing is dropped. /readyz fails, new sessions get 503.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import socket
import time
import uuid
from typing import Any, ClassVar
from urllib.parse import urlsplit

import asyncpg
import structlog

from ...artefacts.model import Artefact, Version
from ...config import StoreConfig, is_loopback
from ...protocol.frames import stored_frame
from ...usage.model import DayUsage, Usage
from ..base import (
    ClaimedSession,
    Conversation,
    FileRow,
    SessionOwnedElsewhere,
    ShelvedSession,
    conversation_of,
)
from ..writer import Batch, GroupCommitWriter
from . import workspaces
from .commit import TRANSIENT, USAGE_COLUMNS, commit, commit_each_session
from .migrations import migrate
from .transcripts import PostgresSessionStore

log = structlog.get_logger(__name__)

STOP_FLUSH_S = 5.0
CHECK_TIMEOUT_S = 2.0
PROBE_TIMEOUT_S = 1.0
HANDOVER_WAIT_S = 2.0  # how long a claimant waits for a draining owner's release
HANDOVER_POLL_S = 0.05


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


class PostgresStore(GroupCommitWriter):
    shared = True
    # A transient failure (or a bug): never let the writer die; keep everything and retry.
    retry_on: ClassVar[tuple[type[BaseException], ...]] = (Exception,)

    def __init__(self, config: StoreConfig, dsn: str, host: str, port: int) -> None:
        super().__init__(config)
        self._dsn = dsn
        self.node_id = f"{socket.gethostname()}:{port}:{uuid.uuid4().hex[:8]}"
        if host in ("", "0.0.0.0", "::"):
            host = socket.gethostname()
        self.url = config.advertise_url or f"http://{host}:{port}"
        self._pool: Any = None
        self._heartbeat_task: asyncio.Task[None] | None = None
        self._lease_until = 0.0  # monotonic: until then the lease surely holds
        self._renewing: asyncio.Future[None] | None = None

    # -- life ---------------------------------------------------------------------------

    async def start(self) -> None:
        self._pool = await asyncpg.create_pool(
            self._dsn,
            min_size=self.config.pool_min,
            max_size=self.config.pool_max,
            # Each host has its own pool and statements are few; keep server memory flat.
            max_inactive_connection_lifetime=300,
            reset=_nothing_to_reset,
            # A host frozen mid-transaction (SIGSTOP, a paused VM) would hold its row locks,
            # and every claim of its sessions would wait on them: PostgreSQL ends such a
            # transaction once the lease has run out anyway.
            server_settings={
                "idle_in_transaction_session_timeout": str(
                    max(1000, int(self.config.lease_s * 1000))
                )
            },
        )
        async with self._pool.acquire() as conn:
            applied = await migrate(conn)
            if applied:
                log.info("schema_migrated", versions=applied)
        await self._renew()
        log.info("store_started", backend="postgres", node_id=self.node_id)
        self.start_writer("pg-writer")
        self._heartbeat_task = asyncio.create_task(self._heartbeat(), name="pg-heartbeat")

    async def stop(self) -> None:
        """Commit what is pending (bounded), give up the lease, close the pool."""
        await self.stop_writer()
        if self._heartbeat_task is not None:
            self._heartbeat_task.cancel()
            await asyncio.gather(self._heartbeat_task, return_exceptions=True)
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

    # -- writes -------------------------------------------------------------------------

    async def session_opened(self, session_id: str, spec: dict[str, Any]) -> None:
        await self._pool.execute(
            "INSERT INTO awk_sessions (id, spec, owner) VALUES ($1, $2::jsonb, $3)",
            session_id,
            json.dumps(spec),
            self.node_id,
        )

    async def commit(self, batch: Batch) -> set[str]:
        try:
            return await commit(self._pool, self.node_id, batch)
        except TRANSIENT:
            raise
        except asyncpg.PostgresError as exc:
            log.error("store_batch_refused", error=str(exc), events=len(batch.events))
            return await commit_each_session(self._pool, self.node_id, batch)

    # -- reads --------------------------------------------------------------------------

    async def transcript_stored(self, project_key: str, sdk_session_id: str) -> bool:
        return bool(
            await self._pool.fetchval(
                "SELECT EXISTS (SELECT 1 FROM awk_transcripts"
                " WHERE project_key = $1 AND session_id = $2 AND subpath = '')",
                project_key,
                sdk_session_id,
            )
        )

    async def conversation(self, ref: str) -> Conversation | None:
        row = await self._pool.fetchrow(
            "SELECT sdk_session_id, spec::text AS spec,"
            " state = 'open' AND owner IS DISTINCT FROM $2 AS elsewhere FROM awk_sessions"
            " WHERE (id = $1 OR sdk_session_id = $1) AND sdk_session_id IS NOT NULL"
            " ORDER BY created_at DESC LIMIT 1",
            ref,
            self.node_id,
        )
        if row is None:
            return None
        return conversation_of(row["sdk_session_id"], json.loads(row["spec"]), row["elsewhere"])

    async def usage_days(self, principal: str | None, since: str, until: str) -> list[DayUsage]:
        rows = await self._pool.fetch(
            f"SELECT principal, day::text AS day, {USAGE_COLUMNS} FROM awk_usage_days"
            " WHERE ($1::text IS NULL OR principal = $1) AND day BETWEEN $2::date AND $3::date"
            " ORDER BY principal, day",
            principal,
            datetime.date.fromisoformat(since),
            datetime.date.fromisoformat(until),
        )
        return [DayUsage(r["principal"], r["day"], Usage.of_row(tuple(r)[2:])) for r in rows]

    async def open_sessions(
        self, ring_size: int, idle_timeout_s: float
    ) -> list[ClaimedSession | ShelvedSession]:
        return []  # claimed when a request for one arrives, since other hosts share them

    async def save_workspace(
        self, session_id: str, changed: list[FileRow], removed: list[str]
    ) -> bool:
        return await workspaces.save_workspace(
            self._pool, self.node_id, session_id, changed, removed
        )

    async def workspace_files(self, session_id: str) -> list[FileRow]:
        return await workspaces.workspace_files(self._pool, session_id)

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
                    await self._renew_once()
            except (asyncpg.PostgresError, *TRANSIENT) as exc:
                if not failing:  # once per outage, not once per beat
                    log.warning("store_heartbeat_failed", error=str(exc))
                failing = True
            else:
                if failing:
                    log.info("store_heartbeat_recovered")
                failing = False

    def lease_lapsed(self) -> bool:
        return time.monotonic() > self._lease_until

    async def confirm_lease(self) -> None:
        # With the database away nothing can be decided: serve on (every write stays
        # fenced by the commit's owner check) and let the heartbeat try again.
        try:
            async with asyncio.timeout(CHECK_TIMEOUT_S):
                await self._renew_once()
        except (asyncpg.PostgresError, *TRANSIENT) as exc:
            log.warning("store_lease_unconfirmed", error=str(exc))

    async def _renew_once(self) -> None:
        """One renewal at a time: requests and the heartbeat meanwhile share it."""
        if self._renewing is None:
            self._renewing = asyncio.ensure_future(self._renew())
            self._renewing.add_done_callback(self._renewed)
        await asyncio.shield(self._renewing)

    def _renewed(self, renewal: asyncio.Future[None]) -> None:
        self._renewing = None
        if not renewal.cancelled():
            renewal.exception()  # retrieved: whoever waited has been told

    async def _renew(self) -> None:
        """Extend the lease; after a lapse, stop every held session claimed meanwhile."""
        began = time.monotonic()
        lapsed = began > self._lease_until
        await self._pool.execute(
            "INSERT INTO awk_nodes (id, url, lease_until)"
            " VALUES ($1, $2, now() + make_interval(secs => $3))"
            " ON CONFLICT (id) DO UPDATE SET lease_until = EXCLUDED.lease_until",
            self.node_id,
            self.url,
            self.config.lease_s,
        )
        if lapsed and (held := list(self.held_sessions())):
            still = await self._pool.fetch(
                "SELECT id FROM awk_sessions WHERE id = ANY($1::text[]) AND owner = $2"
                " AND state = 'open'",
                held,
                self.node_id,
            )
            kept = {r["id"] for r in still}
            for session_id in held:
                if session_id not in kept:
                    log.warning("session_lost_while_away", session_id=session_id)
                    self.on_session_lost(session_id)
        self._lease_until = began + self.config.lease_s

    async def drain(self) -> None:
        try:
            async with asyncio.timeout(CHECK_TIMEOUT_S):
                await self._pool.execute(
                    "UPDATE awk_nodes SET draining = true WHERE id = $1", self.node_id
                )
        except (asyncpg.PostgresError, *TRANSIENT) as exc:  # then claimants wait out the lease
            log.warning("store_drain_mark_failed", error=str(exc))

    async def claim(
        self, session_id: str, ring_size: int, principal: str | None
    ) -> ClaimedSession | None:
        deadline = time.monotonic() + HANDOVER_WAIT_S
        while (row := await self._try_claim(session_id, principal)) is None:
            holder = await self._pool.fetchrow(
                "SELECT s.state, s.owner, n.url, n.draining FROM awk_sessions s"
                f" LEFT JOIN awk_nodes n ON n.id = s.owner WHERE s.id = $1 AND {_visible_to('$2')}",
                session_id,
                principal,
            )
            if holder is None or holder["state"] != "open":
                return None
            if holder["owner"] is not None and await owner_is_gone(holder["owner"], holder["url"]):
                row = await self._claim_from_dead(session_id, holder["owner"], principal)
                if row is not None:
                    break
            # Released since the claim was tried, or a draining owner that hands its
            # settled sessions over within moments: try again rather than refuse (a turn
            # still running there keeps it longer).
            waiting = holder["owner"] is None or holder["draining"]
            if not waiting or time.monotonic() >= deadline:
                raise SessionOwnedElsewhere(holder["owner"] or "", holder["url"] or "")
            await asyncio.sleep(HANDOVER_POLL_S)
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
            usage=await self._session_usage(session_id),
        )

    async def _try_claim(self, session_id: str, principal: str | None) -> Any:
        """Released (owner NULL), or its owner's lease has run out."""
        return await self._pool.fetchrow(
            _CLAIM.format(
                "s.owner IS NULL OR NOT EXISTS (SELECT 1 FROM awk_nodes n"
                " WHERE n.id = s.owner AND n.lease_until > now())"
            ),
            session_id,
            self.node_id,
            principal,
        )

    async def _session_usage(self, session_id: str) -> Usage | None:
        row = await self._pool.fetchrow(
            f"SELECT {USAGE_COLUMNS} FROM awk_session_usage WHERE session_id = $1", session_id
        )
        return None if row is None else Usage.of_row(tuple(row))

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


async def _nothing_to_reset(_: asyncpg.Connection) -> None:
    """The pool's reset on every release, without asyncpg's default query (a round trip of
    UNLISTEN, RESET ALL, CLOSE ALL, advisory unlock): this store never LISTENs, sets
    session settings, opens cursors outside a transaction or takes session-level locks.
    An open transaction is still rolled back by the pool itself."""


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
