"""The Postgres schema, as numbered migrations applied once each, in order.

`migrate()` runs at start-up and from `agent-webkitd migrate`. It holds a transaction-level
advisory lock, so two daemons starting at once apply each migration exactly once; a
database migrated by a newer daemon is refused rather than misread.
"""

from __future__ import annotations

from typing import Any

from .transcripts import TRANSCRIPT_SCHEMA

LOCK_ID = 0x61776B64  # "awkd": serializes migrations across hosts

SESSIONS_AND_EVENTS = """
CREATE TABLE awk_nodes (
    id text PRIMARY KEY,                  -- one per daemon process (host:port:random)
    url text NOT NULL,                    -- where it listens (store.advertise_url, else host:port)
    started_at timestamptz NOT NULL DEFAULT now(),
    lease_until timestamptz NOT NULL      -- renewed by the heartbeat; past = the host is gone
);

CREATE TABLE awk_sessions (
    id text PRIMARY KEY,
    spec jsonb NOT NULL,                  -- what the client created it with
    sdk_session_id text,                  -- the Claude session a resume continues
    owner text,                           -- awk_nodes.id; NULL when closed or released
    state text NOT NULL DEFAULT 'open' CHECK (state IN ('open', 'closed')),
    close_reason text,
    last_seq bigint NOT NULL DEFAULT 0,   -- the newest committed event
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    closed_at timestamptz
);
CREATE INDEX awk_sessions_owner ON awk_sessions (owner) WHERE state = 'open';
CREATE INDEX awk_sessions_closed_at ON awk_sessions (closed_at) WHERE state = 'closed';

CREATE TABLE awk_events (
    session_id text NOT NULL REFERENCES awk_sessions (id) ON DELETE CASCADE,
    seq bigint NOT NULL,
    name text NOT NULL,
    data json NOT NULL,                   -- json, not jsonb: the exact text clients received
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (session_id, seq)         -- a seq can never be stored twice
);
"""

ARTEFACTS = """
CREATE TABLE awk_artefacts (
    session_id text NOT NULL REFERENCES awk_sessions (id) ON DELETE CASCADE,
    artefact_id text NOT NULL,
    title text NOT NULL,
    kind text NOT NULL,
    language text,
    created_at timestamptz NOT NULL,
    PRIMARY KEY (session_id, artefact_id)
);

CREATE TABLE awk_artefact_versions (
    session_id text NOT NULL,
    artefact_id text NOT NULL,
    version int NOT NULL,                 -- 1, 2, ...: every version is kept
    content text NOT NULL,
    summary text,
    bytes int NOT NULL,                   -- the content's size, UTF-8
    created_at timestamptz NOT NULL,
    PRIMARY KEY (session_id, artefact_id, version),
    FOREIGN KEY (session_id, artefact_id)
        REFERENCES awk_artefacts (session_id, artefact_id) ON DELETE CASCADE
);
"""

# A resume or fork finds a conversation by its Claude session id, closed sessions too.
CONVERSATIONS = """
CREATE INDEX awk_sessions_sdk_session_id ON awk_sessions (sdk_session_id);
"""

# What the model gateway counted (usage/): per session, and per principal per UTC day.
USAGE = """
CREATE TABLE awk_session_usage (
    session_id text PRIMARY KEY REFERENCES awk_sessions (id) ON DELETE CASCADE,
    input_tokens bigint NOT NULL,
    output_tokens bigint NOT NULL,
    cache_creation_input_tokens bigint NOT NULL,
    cache_read_input_tokens bigint NOT NULL,
    requests bigint NOT NULL,
    usd float8 NOT NULL
);
CREATE TABLE awk_usage_days (
    principal text NOT NULL,
    day date NOT NULL,                    -- UTC
    input_tokens bigint NOT NULL,
    output_tokens bigint NOT NULL,
    cache_creation_input_tokens bigint NOT NULL,
    cache_read_input_tokens bigint NOT NULL,
    requests bigint NOT NULL,
    usd float8 NOT NULL,
    PRIMARY KEY (principal, day)          -- kept when sessions are pruned: it is the bill
);
CREATE INDEX awk_usage_days_day ON awk_usage_days (day);
"""

# Several hosts (DESIGN §14): a host shutting down says so, and each session's workspace
# follows it from host to host: one row per file, directory or link, as of the last
# checkpoint (a turn's end, an upload), gone with the session.
HANDOVER = """
ALTER TABLE awk_nodes ADD COLUMN draining boolean NOT NULL DEFAULT false;
CREATE TABLE awk_workspace_files (
    session_id text NOT NULL REFERENCES awk_sessions (id) ON DELETE CASCADE,
    path text NOT NULL,                   -- relative, '/'-separated
    kind text NOT NULL CHECK (kind IN ('file', 'dir', 'link')),
    mode int NOT NULL,                    -- permission bits
    size bigint NOT NULL,
    mtime_ns bigint NOT NULL,
    target text,                          -- a link's target, never followed
    content bytea,                        -- a file's bytes
    PRIMARY KEY (session_id, path)
);
"""

MIGRATIONS: list[tuple[int, str, str]] = [
    (1, "sessions, events, nodes", SESSIONS_AND_EVENTS),
    (2, "SDK session transcripts", TRANSCRIPT_SCHEMA),
    (3, "artefacts", ARTEFACTS),
    (4, "conversations by Claude session id", CONVERSATIONS),
    (5, "usage", USAGE),
    (6, "draining hosts, workspace checkpoints", HANDOVER),
]


class SchemaTooNew(Exception):
    pass


async def migrate(conn: Any) -> list[int]:
    """Bring the schema up to date on an asyncpg connection; returns what was applied."""
    applied: list[int] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", LOCK_ID)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS awk_schema_migrations ("
            " version int PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM awk_schema_migrations")}
        newest = MIGRATIONS[-1][0]
        if done and max(done) > newest:
            raise SchemaTooNew(
                f"the database schema is at version {max(done)}, newer than this daemon's"
                f" {newest}: upgrade agent-webkitd"
            )
        for version, name, sql in MIGRATIONS:
            if version in done:
                continue
            await conn.execute(sql)
            await conn.execute(
                "INSERT INTO awk_schema_migrations (version, name) VALUES ($1, $2)", version, name
            )
            applied.append(version)
    return applied
