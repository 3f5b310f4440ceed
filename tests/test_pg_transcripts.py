"""PostgresSessionStore against a real PostgreSQL: the SDK's own conformance suite, a
real CLI transcript replayed through the SDK, and the guarantees the store adds
(idempotent uuids, summaries serialized per session).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from claude_agent_sdk import (
    fold_session_summary,
    get_session_messages,
    get_session_messages_from_store,
    import_session_to_store,
    list_sessions,
    list_sessions_from_store,
    project_key_for_directory,
)
from claude_agent_sdk.testing import run_session_store_conformance
from claude_agent_sdk.types import SessionKey

from agent_webkitd.stores.postgres.transcripts import TRANSCRIPT_SCHEMA, PostgresSessionStore
from tests.pgdb import temporary_database

RECORDED_FRAMES = (
    Path(__file__).parent
    / "reference"
    / "real-cli-frames"
    / "04-interrupt-while-permission-pending-and-store-resume.jsonl"
)
KEY: SessionKey = {"project_key": "proj", "session_id": "sess"}


@pytest.fixture
async def pool() -> AsyncIterator[asyncpg.Pool]:
    async with temporary_database() as dsn:
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=8)
        try:
            await pool.execute(TRANSCRIPT_SCHEMA)
            yield pool
        finally:
            await pool.close()


def entry(**fields: Any) -> Any:
    return {"type": "user", **fields}


async def test_store_passes_the_sdk_conformance_suite(pool: asyncpg.Pool) -> None:
    async def make_store() -> PostgresSessionStore:
        await pool.execute("TRUNCATE awk_transcript_entries, awk_transcripts")
        return PostgresSessionStore(pool)

    await run_session_store_conformance(make_store)


async def test_a_duplicate_uuid_is_stored_once_and_entries_without_uuid_always(
    pool: asyncpg.Pool,
) -> None:
    store = PostgresSessionStore(pool)
    await store.append(KEY, [entry(uuid="a", n=1), entry(n=2), entry(uuid="a", n=3)])
    await store.append(KEY, [entry(uuid="a", n=4), entry(n=2), entry(uuid="b", n=5)])

    assert await store.load(KEY) == [
        entry(uuid="a", n=1),
        entry(n=2),
        entry(n=2),
        entry(uuid="b", n=5),
    ]


async def test_tool_output_with_nul_characters_round_trips(pool: asyncpg.Pool) -> None:
    store = PostgresSessionStore(pool)
    key: SessionKey = {"project_key": "p", "session_id": "nul"}
    await store.append(key, [entry(uuid="a", content="binary\x00output")])
    assert await store.load(key) == [entry(uuid="a", content="binary\x00output")]


async def test_replayed_entries_do_not_rewind_the_summary(pool: asyncpg.Pool) -> None:
    store = PostgresSessionStore(pool)
    await store.append(KEY, [entry(uuid="a", customTitle="first")])
    await store.append(KEY, [entry(uuid="b", customTitle="second")])
    await store.append(KEY, [entry(uuid="a", customTitle="first")])  # e.g. a re-import

    [summary] = await store.list_session_summaries("proj")
    assert summary["data"]["custom_title"] == "second"


async def test_concurrent_appends_leave_the_summary_of_the_stored_order(
    pool: asyncpg.Pool,
) -> None:
    store = PostgresSessionStore(pool)
    # cwd and created_at are set once by the first stored entry: a fold that read a stale
    # summary would take them from a later one.
    batches = [
        [entry(uuid=f"u{i}", cwd=f"/c{i}", timestamp=f"2024-01-01T00:00:{i:02}Z")]
        for i in range(40)
    ]
    await asyncio.gather(*(store.append(KEY, batch) for batch in batches))

    stored = await store.load(KEY)
    assert stored is not None and len(stored) == 40
    [summary] = await store.list_session_summaries("proj")
    assert summary["data"] == fold_session_summary(None, KEY, stored)["data"]
    [listed] = await store.list_sessions("proj")
    assert summary["mtime"] == listed["mtime"]


async def test_a_real_cli_transcript_imported_through_the_sdk_reads_back_as_from_disk(
    pool: asyncpg.Pool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    session_id, lines = recorded_transcript()
    cwd = tmp_path / "project"
    cwd.mkdir()
    transcript = tmp_path / "config" / "projects" / project_key_for_directory(cwd)
    transcript.mkdir(parents=True)
    (transcript / f"{session_id}.jsonl").write_text("".join(f"{line}\n" for line in lines))
    monkeypatch.setenv("CLAUDE_CONFIG_DIR", str(tmp_path / "config"))
    store = PostgresSessionStore(pool)

    await import_session_to_store(session_id, store, directory=str(cwd))

    key: SessionKey = {"project_key": project_key_for_directory(cwd), "session_id": session_id}
    assert await store.load(key) == [json.loads(line) for line in lines]
    from_disk = get_session_messages(session_id, directory=str(cwd))
    assert len(from_disk) > 2
    assert await get_session_messages_from_store(store, session_id, directory=str(cwd)) == from_disk
    [disk_info] = list_sessions(directory=str(cwd))
    [store_info] = await list_sessions_from_store(store, directory=str(cwd))
    assert (store_info.summary, store_info.first_prompt, store_info.created_at) == (
        disk_info.summary,
        disk_info.first_prompt,
        disk_info.created_at,
    )


def recorded_transcript() -> tuple[str, list[str]]:
    """The session id and the transcript lines the real CLI mirrored for it, in order."""
    lines: list[str] = []
    session_ids = set()
    for raw in RECORDED_FRAMES.read_text().splitlines():
        frame = json.loads(raw)
        message = json.loads(frame["line"]) if frame["dir"] == "cli->sdk" else {}
        if message.get("type") == "transcript_mirror":
            session_ids.add(Path(message["filePath"]).stem)
            lines += [json.dumps(e) for e in message["entries"]]
    [session_id] = session_ids
    return session_id, lines
