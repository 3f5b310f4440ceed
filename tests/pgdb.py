"""A throwaway PostgreSQL database for a test, on the server the tests run against.

The admin DSN defaults to the local trust-auth server; AGENT_WEBKITD_TEST_PG points it
elsewhere. There is no skip: a test that needs Postgres fails when it is unreachable.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit, urlunsplit

import asyncpg

DEFAULT_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"


def admin_dsn() -> str:
    return os.environ.get("AGENT_WEBKITD_TEST_PG") or DEFAULT_ADMIN_DSN


@asynccontextmanager
async def temporary_database() -> AsyncIterator[str]:
    """Create a uniquely named database, yield its DSN, drop it afterwards."""
    admin = admin_dsn()
    name = f"awk_test_{uuid.uuid4().hex}"
    await _admin(admin, f'CREATE DATABASE "{name}"')
    try:
        yield _with_database(admin, name)
    finally:
        # A fresh connection: a test may have restarted the server meanwhile. FORCE: a
        # pool the test leaked must not keep the database alive.
        await _admin(admin, f'DROP DATABASE "{name}" WITH (FORCE)')


async def _admin(dsn: str, statement: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


def _with_database(dsn: str, name: str) -> str:
    """The same server and credentials, another database."""
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{name}"))
