"""One SQLite database file for the embedded store: its threads, its lock and its schema.

The file is opened twice: a writer connection on a thread of its own, through which every
write goes (so writes never contend and the event loop never blocks on SQLite), and a
reader connection on another thread (WAL lets reads run beside a write). `synchronous =
FULL`: a commit is on disk (fsynced) before it returns, so what was committed survives
SIGKILL and power loss; the store commits in bursts, so that costs one fsync per burst.

One daemon per file: an exclusive `flock` on `<file>.lock`, held for the process's life,
so a second daemon refuses to start instead of interleaving writes. The schema comes from
numbered migrations applied once each, like the Postgres store's; a file migrated by a
newer daemon is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
BUSY_TIMEOUT_MS = 10_000
# The writer connection's page cache, at most (SQLite's default, which the reader keeps,
# is 2 MiB). The transcript entries' index is keyed by random uuids, so every entry lands
# on its own page; once that index outgrew the cache, each entry cost a page read and
# evicted a page the next commit needed again (at 200 busy sessions: about 4 read(2)
# calls per event). Replaying 600,000 events' commits: 46.0 µs of writer CPU per event
# with 2 MiB, 37.2 with 16, 35.5 with 64. The cache fills as pages are read, so the
# daemon's memory grows by up to this much.
WRITER_CACHE_KIB = 32_768
# Pages the WAL may hold before a commit copies them into the database file (SQLite's
# default is 1,000, 4 MiB). A page rewritten by many commits in between (a session's row,
# its newest events) is copied once per checkpoint, not once per commit: at 200 busy
# sessions the writer's CPU per event fell by a fifth going to 16,000 (64 MiB of WAL).
WAL_CHECKPOINT_PAGES = 16_000

SESSIONS_AND_EVENTS = """
CREATE TABLE awk_sessions (
    id TEXT PRIMARY KEY,
    spec TEXT NOT NULL,                 -- JSON: model, permission_mode, cwd as last set
    sdk_session_id TEXT,                -- the Claude session a resume continues
    state TEXT NOT NULL DEFAULT 'open' CHECK (state IN ('open', 'closed')),
    last_state TEXT,                    -- the newest session_state event's state
    close_reason TEXT,
    last_seq INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,           -- unix time
    last_active REAL NOT NULL,          -- unix time of the last sign of life
    closed_at REAL
);
CREATE INDEX awk_sessions_closed_at ON awk_sessions (closed_at) WHERE state = 'closed';
CREATE TABLE awk_events (
    session_id TEXT NOT NULL REFERENCES awk_sessions (id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    name TEXT NOT NULL,
    data TEXT NOT NULL,                 -- the exact JSON text clients received
    PRIMARY KEY (session_id, seq)       -- a seq can never be stored twice
) WITHOUT ROWID;
CREATE TABLE awk_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)
"""

TRANSCRIPTS = """
CREATE TABLE awk_transcripts (
    id INTEGER PRIMARY KEY,
    project_key TEXT NOT NULL,
    session_id TEXT NOT NULL,
    subpath TEXT NOT NULL,              -- '' is the main transcript
    mtime INTEGER NOT NULL,             -- epoch ms, never going backwards
    summary TEXT,                       -- fold_session_summary data (JSON), main transcripts only
    UNIQUE (project_key, session_id, subpath)
);
CREATE TABLE awk_transcript_entries (
    id INTEGER PRIMARY KEY,             -- append order
    transcript_id INTEGER NOT NULL REFERENCES awk_transcripts (id) ON DELETE CASCADE,
    uuid TEXT,
    entry TEXT NOT NULL
);
CREATE INDEX awk_transcript_entries_order ON awk_transcript_entries (transcript_id, id);
CREATE UNIQUE INDEX awk_transcript_entries_uuid ON awk_transcript_entries (transcript_id, uuid)
    WHERE uuid IS NOT NULL
"""

ARTEFACTS = """
CREATE TABLE awk_artefacts (
    session_id TEXT NOT NULL REFERENCES awk_sessions (id) ON DELETE CASCADE,
    artefact_id TEXT NOT NULL,
    title TEXT NOT NULL,
    kind TEXT NOT NULL,
    language TEXT,
    created_at REAL NOT NULL,           -- unix time
    PRIMARY KEY (session_id, artefact_id)
) WITHOUT ROWID;
CREATE TABLE awk_artefact_versions (
    session_id TEXT NOT NULL,
    artefact_id TEXT NOT NULL,
    version INTEGER NOT NULL,           -- 1, 2, ...: every version is kept
    content TEXT NOT NULL,
    summary TEXT,
    bytes INTEGER NOT NULL,             -- the content's size, UTF-8
    created_at REAL NOT NULL,
    PRIMARY KEY (session_id, artefact_id, version),
    FOREIGN KEY (session_id, artefact_id)
        REFERENCES awk_artefacts (session_id, artefact_id) ON DELETE CASCADE
)                                       -- a rowid table: contents may be large
"""

# A resume or fork finds a conversation by its Claude session id, closed sessions too.
CONVERSATIONS = """
CREATE INDEX awk_sessions_sdk_session_id ON awk_sessions (sdk_session_id);
"""

# What the model gateway counted (usage/): per session, and per principal per UTC day.
USAGE = """
CREATE TABLE awk_session_usage (
    session_id TEXT PRIMARY KEY REFERENCES awk_sessions (id) ON DELETE CASCADE,
    input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    cache_creation_input_tokens INTEGER NOT NULL,
    cache_read_input_tokens INTEGER NOT NULL,
    requests INTEGER NOT NULL,
    usd REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE awk_usage_days (
    principal TEXT NOT NULL,
    day TEXT NOT NULL,                  -- UTC, YYYY-MM-DD
    input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    cache_creation_input_tokens INTEGER NOT NULL,
    cache_read_input_tokens INTEGER NOT NULL,
    requests INTEGER NOT NULL,
    usd REAL NOT NULL,
    PRIMARY KEY (principal, day)        -- kept when sessions are pruned: it is the bill
) WITHOUT ROWID;
CREATE INDEX awk_usage_days_day ON awk_usage_days (day)
"""

MIGRATIONS: list[tuple[int, str, str]] = [
    (1, "sessions, events", SESSIONS_AND_EVENTS),
    (2, "SDK session transcripts", TRANSCRIPTS),
    (3, "artefacts", ARTEFACTS),
    (4, "conversations by Claude session id", CONVERSATIONS),
    (5, "usage", USAGE),
]


def _enable_wal(conn: sqlite3.Connection) -> None:
    """Switching a new file to WAL takes an exclusive lock without waiting on busy_timeout,
    so two processes opening it at once (two `migrate`s) retry here instead of failing."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


class StoreLocked(Exception):
    """Another daemon has this database file."""


class SchemaTooNew(Exception):
    pass


def connect(path: Path, cache_kib: int | None = None) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit), WAL, fsync on commit;
    `cache_kib`: its page cache (default SQLite's)."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=True)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    _enable_wal(conn)
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA foreign_keys = ON")
    if cache_kib is not None:
        conn.execute(f"PRAGMA cache_size = -{cache_kib}")
    conn.execute(f"PRAGMA wal_autocheckpoint = {WAL_CHECKPOINT_PAGES}")
    return conn


def transaction(conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T]) -> T:
    """fn inside BEGIN IMMEDIATE ... COMMIT (rolled back if it raises)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = fn(conn)
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return result


def migrate(conn: sqlite3.Connection) -> list[int]:
    """Bring the schema up to date; returns the versions applied. The write lock of
    BEGIN IMMEDIATE makes two processes migrating at once apply each version once."""

    def apply(conn: sqlite3.Connection) -> list[int]:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS awk_schema_migrations"
            " (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)"
        )
        done = {row[0] for row in conn.execute("SELECT version FROM awk_schema_migrations")}
        newest = MIGRATIONS[-1][0]
        if done and max(done) > newest:
            raise SchemaTooNew(
                f"the database schema is at version {max(done)}, newer than this daemon's"
                f" {newest}: upgrade agent-webkitd"
            )
        applied = []
        for version, name, sql in MIGRATIONS:
            if version in done:
                continue
            for statement in sql.split(";\n"):  # executescript() would commit midway
                conn.execute(statement)
            conn.execute(
                "INSERT INTO awk_schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                (version, name, time.time()),
            )
            applied.append(version)
        return applied

    return transaction(conn, apply)


def take_lock(path: Path) -> int:
    """Hold `<path>.lock` exclusively for this process's life; StoreLocked if another has it."""
    lock_path = path.with_name(path.name + ".lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise StoreLocked(
            f"{path} is in use by another agent-webkitd (pid {holder}): one daemon per"
            " database file; stop that one, or give this one another [store] path"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


def backup(path: Path, destination: Path) -> None:
    """A consistent copy of a database that may be in use (SQLite's online backup API)."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    source, target = connect(path), sqlite3.connect(destination)
    try:
        source.backup(target)
    finally:
        target.close()
        source.close()


class Database:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="sqlite-writer")
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="sqlite-reader")
        self._wconn: sqlite3.Connection | None = None
        self._rconn: sqlite3.Connection | None = None
        self._lock_fd: int | None = None

    async def open(self, *, lock: bool = True) -> list[int]:
        """Take the file's lock (if `lock`), open both connections, migrate; returns the
        migrations applied."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if lock:
            self._lock_fd = take_lock(self.path)
        self._wconn = await self._on(self._writer, connect, self.path, WRITER_CACHE_KIB)
        applied = await self._on(self._writer, migrate, self._wconn)
        self._rconn = await self._on(self._reader, connect, self.path)
        return applied

    async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """fn in one transaction on the writer connection."""
        assert self._wconn is not None
        return await self._on(self._writer, transaction, self._wconn, fn)

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        assert self._rconn is not None
        return await self._on(self._reader, fn, self._rconn)

    async def close(self) -> None:
        for executor, conn in ((self._reader, self._rconn), (self._writer, self._wconn)):
            if conn is not None:
                with contextlib.suppress(sqlite3.Error):
                    await self._on(executor, conn.close)
            executor.shutdown(wait=True)
        self._wconn = self._rconn = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    @staticmethod
    async def _on(executor: ThreadPoolExecutor, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(executor, fn, *args)
