"""The durable phase's PostgreSQL: a throwaway database per run, and the on-disk size of
what the daemon stored in it.

The admin DSN defaults to the local trust-auth server; AGENT_WEBKITD_BENCH_PG points it
elsewhere. The database is named `awk_bench_<hex>` and dropped WITH (FORCE) afterwards,
so a daemon that is still connected cannot keep it alive.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

DEFAULT_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
ADMIN_ENV = "AGENT_WEBKITD_BENCH_PG"
DROP_RETRY_S = 30.0  # the server may be restarting (the project's tests restart it)

# Sizes include indexes and TOAST; `data` is the event's JSON text as clients received it.
STORAGE = """
SELECT pg_total_relation_size('awk_events') AS events_bytes,
       (SELECT count(*) FROM awk_events) AS events,
       (SELECT coalesce(avg(octet_length(data::text)), 0)::float8 FROM awk_events) AS data_bytes_mean,
       pg_total_relation_size('awk_transcripts')
         + pg_total_relation_size('awk_transcript_entries') AS transcript_bytes,
       (SELECT count(*) FROM awk_transcripts) AS transcripts,
       (SELECT count(*) FROM awk_transcript_entries) AS transcript_entries
"""


def admin_dsn() -> str:
    return os.environ.get(ADMIN_ENV) or DEFAULT_ADMIN_DSN


@asynccontextmanager
async def scratch_database() -> AsyncIterator[str]:
    """Create a uniquely named database, yield its DSN, drop it afterwards."""
    admin = admin_dsn()
    name = f"awk_bench_{uuid.uuid4().hex}"
    try:
        await _admin(admin, f'CREATE DATABASE "{name}"')
    except (OSError, asyncpg.PostgresError) as exc:
        where = urlsplit(admin)
        raise RuntimeError(f"cannot create the bench database on {where.hostname}:{where.port}"
                           f" (admin DSN from {ADMIN_ENV} or the default): {exc}") from exc
    try:
        yield urlunsplit(urlsplit(admin)._replace(path=f"/{name}"))
    finally:
        await _drop(admin, name)


async def _drop(admin: str, name: str) -> None:
    deadline = time.monotonic() + DROP_RETRY_S
    while True:
        try:
            await _admin(admin, f'DROP DATABASE "{name}" WITH (FORCE)')
            return
        except (OSError, asyncpg.CannotConnectNowError) as exc:
            if time.monotonic() > deadline:
                raise RuntimeError(f"could not drop the bench database {name}, drop it by hand: {exc}") from exc
            await asyncio.sleep(1.0)


async def storage(dsn: str) -> dict[str, Any]:
    """What the daemon's tables take on disk, and how many rows they hold."""
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow(STORAGE)
    finally:
        await conn.close()
    assert row is not None
    return dict(row)


async def _admin(dsn: str, statement: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()
