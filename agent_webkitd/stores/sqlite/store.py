"""The embedded store, the default: every session, its events and its CLI transcripts in
one SQLite file, so a single host keeps its conversations across restarts, SIGKILL and
power loss with no server to run. One file is the whole backup.

Writes are grouped: one writer task takes everything pending (events of every session,
session changes, transcript entries the SDK mirrors) and commits it in one transaction,
one fsync, on the database's writer thread. An event is published to subscribers only
after that commit. While the disk refuses writes (full, read-only, failing), everything
waits in memory and is retried; nothing is published meanwhile, past `max_pending_events`
the CLIs are paused, and /readyz and new sessions answer 503.

Start-up loads every open session (the Supervisor makes each a hibernated session, DESIGN
§10); one idle past `idle_timeout_s`, counted from its stored last activity, is closed
instead. There are no other hosts: nothing is claimed or handed over.
"""

from __future__ import annotations

import asyncio
import functools
import json
import sqlite3
import time
from pathlib import Path
from typing import Any, ClassVar

import structlog
from claude_agent_sdk.types import SessionKey, SessionStoreEntry

from ...artefacts.model import Artefact, Version
from ...config import StoreConfig
from ...protocol.frames import stored_frame
from ...usage.model import DayUsage, Usage, fold
from ..base import ClaimedSession, Conversation, NotShared, ShelvedSession, conversation_of
from ..transcript_keys import entry_text, fold_summary, subpath_of, uuid_of
from ..writer import ArtefactWrite, Batch, GroupCommitWriter
from .db import Database, connect, migrate, transaction
from .transcripts import SqliteSessionStore

log = structlog.get_logger(__name__)

CHECK_TIMEOUT_S = 2.0
SETTLED_STATES = ("idle", "hibernated", "closed")


class SqliteStore(NotShared, GroupCommitWriter):
    retry_on: ClassVar[tuple[type[BaseException], ...]] = (
        sqlite3.Error,
    )  # full, read-only, failing

    def __init__(self, config: StoreConfig, path: Path) -> None:
        super().__init__(config)
        self.db = Database(path)
        self._transcripts: SqliteSessionStore | None = None

    # -- life ---------------------------------------------------------------------------

    async def start(self) -> None:
        applied = await self.db.open()
        if applied:
            log.info("schema_migrated", versions=applied)
        log.info("store_started", backend="sqlite", path=str(self.db.path))
        self.start_writer("sqlite-writer")

    async def stop(self) -> None:
        """Commit what is pending (bounded), then close the file and release its lock."""
        await self.stop_writer()
        await self.db.close()

    async def check(self) -> None:
        """Raise unless a write reaches the disk now (a full or read-only disk fails)."""
        if not self.healthy:
            raise RuntimeError("events are waiting: the database file cannot be written")
        async with asyncio.timeout(CHECK_TIMEOUT_S):
            await self.db.write(
                lambda conn: conn.execute(
                    "INSERT OR REPLACE INTO awk_meta (key, value) VALUES ('ready_probe', ?)",
                    (str(time.time()),),
                )
            )

    def sdk_session_store(self) -> SqliteSessionStore:
        if self._transcripts is None:
            self._transcripts = SqliteSessionStore(self.db, self.append_transcript)
        return self._transcripts

    # -- writes -------------------------------------------------------------------------

    async def session_opened(self, session_id: str, spec: dict[str, Any]) -> None:
        now = time.time()
        await self.db.write(
            lambda conn: conn.execute(
                "INSERT INTO awk_sessions (id, spec, created_at, last_active) VALUES (?, ?, ?, ?)",
                (session_id, json.dumps(spec), now, now),
            )
        )

    async def commit(self, batch: Batch) -> set[str]:
        await self.db.write(functools.partial(_commit, batch=batch, now=time.time()))
        return set()  # one host: it never loses a session

    # -- reads --------------------------------------------------------------------------

    async def frames(self, session_id: str, after: int, until: int, limit: int) -> list[bytes]:
        rows = await self.db.read(
            lambda conn: conn.execute(
                "SELECT seq, name, data FROM awk_events"
                " WHERE session_id = ? AND seq > ? AND seq <= ? ORDER BY seq LIMIT ?",
                (session_id, after, until, limit),
            ).fetchall()
        )
        return [stored_frame(seq, name, data) for seq, name, data in rows]

    async def artefact_content(self, session_id: str, artefact_id: str, version: int) -> str | None:
        row = await self.db.read(
            lambda conn: conn.execute(
                "SELECT content FROM awk_artefact_versions"
                " WHERE session_id = ? AND artefact_id = ? AND version = ?",
                (session_id, artefact_id, version),
            ).fetchone()
        )
        return None if row is None else str(row[0])

    async def transcript_stored(self, project_key: str, sdk_session_id: str) -> bool:
        row = await self.db.read(
            lambda conn: conn.execute(
                "SELECT 1 FROM awk_transcripts"
                " WHERE project_key = ? AND session_id = ? AND subpath = ''",
                (project_key, sdk_session_id),
            ).fetchone()
        )
        return row is not None

    async def usage_days(self, principal: str | None, since: str, until: str) -> list[DayUsage]:
        rows = await self.db.read(
            lambda conn: conn.execute(
                f"SELECT principal, day, {USAGE_COLUMNS} FROM awk_usage_days"
                " WHERE (? IS NULL OR principal = ?) AND day BETWEEN ? AND ?"
                " ORDER BY principal, day",
                (principal, principal, since, until),
            ).fetchall()
        )
        return [DayUsage(row[0], row[1], Usage.of_row(row[2:])) for row in rows]

    async def conversation(self, ref: str) -> Conversation | None:
        row = await self.db.read(
            lambda conn: conn.execute(
                "SELECT sdk_session_id, spec FROM awk_sessions"
                " WHERE (id = ? OR sdk_session_id = ?) AND sdk_session_id IS NOT NULL"
                " ORDER BY created_at DESC LIMIT 1",
                (ref, ref),
            ).fetchone()
        )
        # One host: every open session is this host's.
        return None if row is None else conversation_of(row[0], json.loads(row[1]), False)

    async def open_sessions(
        self, ring_size: int, idle_timeout_s: float
    ) -> list[ClaimedSession | ShelvedSession]:
        """Start-up: every open session, to be hibernated (or shelved) here; those idle past
        `idle_timeout_s` (from their stored last activity) are closed instead."""
        now = time.time()
        closed = await self.db.write(
            lambda conn: (
                conn.execute(
                    "UPDATE awk_sessions SET state = 'closed', close_reason = 'idle', closed_at = ?"
                    " WHERE state = 'open' AND last_active < ?",
                    (now, now - idle_timeout_s),
                ).rowcount
            )
        )
        if closed:
            log.info("sessions_idled_out_while_down", sessions=closed)
        return await self.db.read(functools.partial(_load_open, ring_size=ring_size, now=now))

    async def claim(
        self, session_id: str, ring_size: int, principal: str | None
    ) -> ClaimedSession | None:
        """A session this host shelved (one host: every open session is this host's)."""
        return await self.db.read(
            functools.partial(
                _load_one, session_id=session_id, principal=principal, ring_size=ring_size
            )
        )


def _commit(conn: sqlite3.Connection, *, batch: Batch, now: float) -> None:
    """Store one batch (runs inside a transaction on the writer thread)."""
    conn.executemany(
        "INSERT OR IGNORE INTO awk_events (session_id, seq, name, data) VALUES (?, ?, ?, ?)",
        [(event_log.session_id, seq, name, text) for event_log, seq, name, text in batch.events],
    )
    last_seq: dict[str, int] = {}
    last_state: dict[str, str] = {}
    for event_log, seq, name, text in batch.events:
        last_seq[event_log.session_id] = seq
        if name == "session_state":
            last_state[event_log.session_id] = json.loads(text).get("state")
    touched = set(last_seq) | set(batch.meta)
    conn.executemany(
        "UPDATE awk_sessions SET last_seq = max(last_seq, coalesce(?, 0)),"
        " last_state = coalesce(?, last_state), last_active = coalesce(?, last_active),"
        " sdk_session_id = coalesce(?, sdk_session_id), spec = coalesce(?, spec) WHERE id = ?",
        [
            (
                last_seq.get(s),
                last_state.get(s),
                now if s in last_seq else None,
                batch.meta.get(s, {}).get("sdk_session_id"),
                batch.meta.get(s, {}).get("spec"),
                s,
            )
            for s in touched
        ],
    )
    conn.executemany(
        "UPDATE awk_sessions SET last_active = ? WHERE id = ?",
        [(last_active, s) for s, last_active in batch.releases.items()],
    )
    conn.executemany(
        "UPDATE awk_sessions SET state = 'closed', close_reason = ?, closed_at = ? WHERE id = ?",
        [(reason, now, s) for s, reason in batch.closes.items()],
    )
    for key, entries, _ in batch.transcripts:
        _append_transcript(conn, key, entries, int(now * 1000))
    for write in batch.artefacts:
        _write_artefact(conn, write)
    _add_usage(conn, batch)


USAGE_COLUMNS = (
    "input_tokens, output_tokens, cache_creation_input_tokens, cache_read_input_tokens,"
    " requests, usd"
)
_ADD_USAGE = ", ".join(
    f"{c} = {c} + excluded.{c}" for c in USAGE_COLUMNS.replace(" ", "").split(",")
)


def _add_usage(conn: sqlite3.Connection, batch: Batch) -> None:
    """Add the batch's usage to each session's totals and each principal's day."""
    if not batch.usage:
        return
    sessions, days = fold(batch.usage)
    conn.executemany(
        f"INSERT INTO awk_session_usage (session_id, {USAGE_COLUMNS})"
        " SELECT ?, ?, ?, ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM awk_sessions WHERE id = ?)"
        f" ON CONFLICT (session_id) DO UPDATE SET {_ADD_USAGE}",
        [(s, *usage.row(), s) for s, usage in sessions.items()],
    )
    conn.executemany(
        f"INSERT INTO awk_usage_days (principal, day, {USAGE_COLUMNS})"
        f" VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (principal, day) DO UPDATE SET {_ADD_USAGE}",
        [(principal, day, *usage.row()) for (principal, day), usage in days.items()],
    )


def _write_artefact(conn: sqlite3.Connection, write: ArtefactWrite) -> None:
    """In order: a retried batch finds its own rows already there and skips them."""
    record = write.record
    if record is None:  # its versions go with it (ON DELETE CASCADE)
        conn.execute(
            "DELETE FROM awk_artefacts WHERE session_id = ? AND artefact_id = ?",
            (write.session_id, write.artefact_id),
        )
        return
    if record.version.version == 1:
        conn.execute(
            "INSERT OR IGNORE INTO awk_artefacts"
            " (session_id, artefact_id, title, kind, language, created_at) VALUES (?, ?, ?, ?, ?, ?)",
            write.artefact_row(),
        )
    conn.execute(
        "INSERT OR IGNORE INTO awk_artefact_versions"
        " (session_id, artefact_id, version, content, summary, bytes, created_at)"
        " SELECT ?, ?, ?, ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM awk_artefacts"
        "  WHERE session_id = ? AND artefact_id = ?)",  # not for one deleted meanwhile
        (*write.version_row(), write.session_id, write.artefact_id),
    )


def _append_transcript(
    conn: sqlite3.Connection, key: SessionKey, entries: list[SessionStoreEntry], now_ms: int
) -> None:
    """Entries in append order; a uuid already stored for the transcript is skipped, and
    the main transcript's summary folds in exactly what was added."""
    subpath = subpath_of(key)
    row = conn.execute(
        "SELECT id, mtime, summary FROM awk_transcripts"
        " WHERE project_key = ? AND session_id = ? AND subpath = ?",
        (key["project_key"], key["session_id"], subpath),
    ).fetchone()
    if row is None:
        transcript_id = conn.execute(
            "INSERT INTO awk_transcripts (project_key, session_id, subpath, mtime) VALUES (?, ?, ?, ?)",
            (key["project_key"], key["session_id"], subpath, now_ms),
        ).lastrowid
        mtime, stored = now_ms, None
    else:
        transcript_id, previous, stored = row
        mtime = max(now_ms, previous + 1)  # never backwards, even if the clock is
        conn.execute("UPDATE awk_transcripts SET mtime = ? WHERE id = ?", (mtime, transcript_id))
    # One lookup and one executemany for the whole append, not a statement per entry: the
    # SDK hands in hundreds at a time, and each statement is a GIL hand-off with the loop.
    uuids = [uuid_of(entry) for entry in entries]
    known = _stored_uuids(conn, row[0], uuids) if row is not None else set()
    added, rows = [], []
    for entry, uuid in zip(entries, uuids, strict=True):
        if uuid is not None:
            if uuid in known:
                continue
            known.add(uuid)
        added.append(entry)
        rows.append((transcript_id, uuid, entry_text(entry)))
    conn.executemany(
        "INSERT INTO awk_transcript_entries (transcript_id, uuid, entry) VALUES (?, ?, ?)", rows
    )
    if not subpath:
        conn.execute(
            "UPDATE awk_transcripts SET summary = ? WHERE id = ?",
            (fold_summary(key, mtime, stored, added), transcript_id),
        )


def _stored_uuids(
    conn: sqlite3.Connection, transcript_id: int, uuids: list[str | None]
) -> set[str]:
    """Which of `uuids` the transcript already has (a retried batch finds its own)."""
    wanted = [uuid for uuid in uuids if uuid is not None]
    if not wanted:
        return set()
    rows = conn.execute(
        "SELECT uuid FROM awk_transcript_entries"
        " WHERE transcript_id = ? AND uuid IN (SELECT value FROM json_each(?))",
        (transcript_id, json.dumps(wanted)),
    )
    return {uuid for (uuid,) in rows}


def _load_open(
    conn: sqlite3.Connection, *, ring_size: int, now: float
) -> list[ClaimedSession | ShelvedSession]:
    """Every open session: shelved if it was released hibernated (nothing to settle, so
    nothing of it needs to be in memory), else loaded whole."""
    sessions: list[ClaimedSession | ShelvedSession] = []
    for row in conn.execute(
        f"SELECT {_SESSION_COLUMNS} FROM awk_sessions LEFT JOIN awk_session_usage"
        " ON session_id = id WHERE state = 'open' ORDER BY created_at"
    ).fetchall():
        if row[4] == "hibernated":
            sessions.append(_shelved(row))
        else:
            sessions.append(_loaded(conn, row, ring_size=ring_size, now=now))
    return sessions


def _load_one(
    conn: sqlite3.Connection, session_id: str, principal: str | None, *, ring_size: int
) -> ClaimedSession | None:
    """One open session, whole (a shelved one that a request needs), if `principal` may
    see it (None: an admin)."""
    row = conn.execute(
        f"SELECT {_SESSION_COLUMNS} FROM awk_sessions LEFT JOIN awk_session_usage"
        " ON session_id = id WHERE id = ? AND state = 'open'",
        (session_id,),
    ).fetchone()
    if row is None or (principal is not None and _owner(json.loads(row[1])) != principal):
        return None
    return _loaded(conn, row, ring_size=ring_size, now=time.time())


_SESSION_COLUMNS = (
    "id, spec, sdk_session_id, last_seq, last_state, created_at, last_active, " + USAGE_COLUMNS
)


def _owner(spec: dict[str, Any]) -> str:
    return str(spec.get("owner") or "token:default")  # from before principals: the admin's


def _shelved(row: Any) -> ShelvedSession:
    session_id, spec, sdk_id, last_seq, _, created_at, last_active = row[:7]
    settings = json.loads(spec)
    folders = tuple(Path(p).name for p in (settings.get("cwd"), settings.get("state_dir")) if p)
    return ShelvedSession(
        session_id,
        _owner(settings),
        created_at,
        last_active,
        last_seq,
        settings.get("model"),
        settings.get("permission_mode") or "default",
        sdk_id,
        folders,
    )


def _loaded(conn: sqlite3.Connection, row: Any, *, ring_size: int, now: float) -> ClaimedSession:
    session_id, spec, sdk_id, last_seq, last_state, created_at, last_active = row[:7]
    if last_state in SETTLED_STATES:  # its last result is enough (the cost so far)
        query = (
            "SELECT name, data FROM (SELECT seq, name, data FROM awk_events"
            " WHERE session_id = ? AND name = 'result' AND seq > ? ORDER BY seq DESC LIMIT 1)"
        )
    else:  # cut off mid-turn: its decisions and its turn are settled from its events
        query = "SELECT name, data FROM awk_events WHERE session_id = ? AND seq > ? ORDER BY seq"
    events = [
        (name, json.loads(data))
        for name, data in conn.execute(query, (session_id, last_seq - ring_size))
    ]
    return ClaimedSession(
        session_id=session_id,
        spec=json.loads(spec),
        sdk_session_id=sdk_id,
        last_seq=last_seq,
        events=events,
        last_state=last_state,
        created_at=created_at,
        idle_s=max(0.0, now - last_active),
        artefacts=_load_artefacts(conn, session_id),
        usage=None if row[7] is None else Usage.of_row(row[7:]),
    )


def _load_artefacts(conn: sqlite3.Connection, session_id: str) -> list[Artefact]:
    """A session's artefact index (no contents), oldest first."""
    index: dict[str, Artefact] = {}
    for artefact_id, title, kind, language, created_at, version, summary, size, at in conn.execute(
        "SELECT a.artefact_id, a.title, a.kind, a.language, a.created_at,"
        " v.version, v.summary, v.bytes, v.created_at"
        " FROM awk_artefacts a JOIN awk_artefact_versions v USING (session_id, artefact_id)"
        " WHERE a.session_id = ? ORDER BY a.created_at, a.artefact_id, v.version",
        (session_id,),
    ):
        artefact = index.setdefault(
            artefact_id, Artefact(artefact_id, title, kind, language, created_at)
        )
        artefact.versions.append(Version(version, summary, at, size))
    return list(index.values())


def migrate_file(path: Path) -> list[int]:
    """`agent-webkitd migrate` on the embedded store's file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = connect(path)
    try:
        return migrate(conn)
    finally:
        conn.close()


def prune_file(path: Path, older_than_s: float) -> dict[str, Any]:
    """`agent-webkitd prune`: delete sessions closed longer ago than `older_than_s`, their
    events and their transcripts. Safe while the daemon runs (SQLite locks the writes)."""

    def prune(conn: sqlite3.Connection) -> dict[str, Any]:
        gone = conn.execute(
            "SELECT id, sdk_session_id FROM awk_sessions WHERE state = 'closed' AND closed_at < ?",
            (time.time() - older_than_s,),
        ).fetchall()
        conn.executemany("DELETE FROM awk_sessions WHERE id = ?", [(s,) for s, _ in gone])
        # Events, transcript entries and subagent transcripts go with their rows (CASCADE).
        transcripts = conn.executemany(
            "DELETE FROM awk_transcripts WHERE session_id = ?", [(c,) for _, c in gone if c]
        ).rowcount
        return {
            "sessions": len(gone),
            "transcripts": max(transcripts, 0),
            "ids": [i for i, _ in gone],
        }

    conn = connect(path)
    try:
        migrate(conn)
        return transaction(conn, prune)
    finally:
        conn.close()
