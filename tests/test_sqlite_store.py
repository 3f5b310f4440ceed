"""The embedded SQLite store with real files and real daemon processes: restarts after
SIGTERM and SIGKILL (idle and mid-turn), the transcript surviving (the real bundled CLI's
model sees the earlier turns), one daemon per file, a disk that fills up, idle sessions
across a restart, online backup, prune and migrations, and the SDK's SessionStore
conformance suite on the same file."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from claude_agent_sdk.testing import run_session_store_conformance

from agent_webkitd.config import StoreConfig
from agent_webkitd.sessions.eventlog import EventLog
from agent_webkitd.stores.sqlite.store import SqliteStore
from tests.conftest import Daemon, api_for
from tests.standin.fixtures import fake_model_url, offline_cli_env
from tests.test_conversation import WRITE
from tests.wire_client import Event, Stream

__all__ = ["fake_model_url"]  # imported for pytest: it is a fixture


def sqlite_overrides(db: Path, **extra: dict[str, Any]) -> dict[str, dict[str, Any]]:
    overrides: dict[str, dict[str, Any]] = {
        "store": {"backend": "sqlite", "path": str(db)},
        "server": {"drain_timeout_s": 10},
    }
    for section, values in extra.items():
        overrides[section] = {**overrides.get(section, {}), **values}
    return overrides


def model_views(cwd: Path) -> list[list[dict[str, str]]]:
    log = cwd / "cli-log.jsonl"
    entries = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return [e["messages"] for e in entries if e.get("dir") == "model"]


async def read_until(stream: Stream, name: str, state: str | None = None, timeout: float = 15) -> list[Event]:
    """Events up to and including the next `name` (a session_state of `state`, if given)."""
    seen = []
    async with asyncio.timeout(timeout):
        while True:
            event = await stream.next(timeout)
            seen.append(event)
            if event.name == name and (state is None or event.data.get("state") == state):
                return seen


async def sigterm_and_wait(daemon: Daemon, timeout: float = 15) -> float:
    """SIGTERM once (the drain), wait for exit 0; returns how long it took."""
    assert daemon.proc is not None
    started = time.monotonic()
    daemon.proc.send_signal(signal.SIGTERM)
    async with asyncio.timeout(timeout):
        assert await asyncio.to_thread(daemon.proc.wait) == 0, daemon.logs()[-3000:]
    return time.monotonic() - started


def contiguous(events: list[Event]) -> bool:
    ids = [e.id for e in events]
    return ids == list(range(1, len(ids) + 1))


async def test_a_sigterm_restart_keeps_every_session_with_its_ids_and_history(
    start_daemon: Any, tmp_path: Path
) -> None:
    db = tmp_path / "state" / "sessions.db"
    first = await start_daemon(sqlite_overrides(db))
    used_cwd = first.session_dir()
    async with api_for(first) as api:
        used = await api.create(cwd=str(used_cwd))
        unused = await api.create()
        stream = await api.open_stream(used, 0)
        await api.say(used, "remember the teapot")
        seen = await read_until(stream, "result")
        took = await sigterm_and_wait(first)
        assert took < 5, "nothing was running: the restart must not wait out the drain"
        rest = await stream.rest(timeout=5)
        assert "done" not in [e.name for e in rest], "the session is not over"
        assert (rest[-1].name, rest[-1].data) == ("session_state", {"state": "hibernated"})
        seen += rest

    second = await start_daemon(sqlite_overrides(db))
    async with api_for(second) as api:
        status, listing, _ = await api.request("GET", "/sessions")
        assert status == 200
        assert {s["session_id"]: s["state"] for s in listing["sessions"]} == {
            used: "hibernated", unused: "hibernated",
        }
        resumed = await api.open_stream(used, seen[-1].id)
        await api.say(used, "what was it?")
        after = await read_until(resumed, "result")
        assert contiguous(seen + after), "an id lost or reused across the restart"
        assert [m["text"] for m in model_views(used_cwd)[-1]] == [
            "remember the teapot", "echo: remember the teapot", "what was it?",
        ]
        replay = await api.open_stream(used, 0)  # the whole history, from the file
        assert [(e.id, e.name) for e in [await replay.next() for _ in seen]] == [(e.id, e.name) for e in seen]
        status, session, _ = await api.request("GET", f"/sessions/{unused}")
        assert status == 200 and session["state"] == "hibernated"


async def test_a_sigterm_restart_with_a_decision_pending_withdraws_it_after_the_drain_window(
    start_daemon: Any, tmp_path: Path
) -> None:
    db = tmp_path / "sessions.db"
    first = await start_daemon(sqlite_overrides(db, server={"drain_timeout_s": 1}))
    cwd = first.session_dir({"turns": [{"steps": [WRITE]}], "then": "repeat_last"})
    async with api_for(first) as api:
        session_id = await api.create(cwd=str(cwd))
        stream = await api.open_stream(session_id, 0)
        await api.say(session_id, "write it")
        seen = await read_until(stream, "permission_request")
        took = await sigterm_and_wait(first)
        assert 1 <= took < 6, "a running turn is waited for, for the drain window only"
        rest = await stream.rest(timeout=5)
        names = [e.name for e in rest]
        assert "permission_cancelled" in names and "done" not in names
        assert (rest[-1].name, rest[-1].data) == ("session_state", {"state": "hibernated"})
        seen += rest

    second = await start_daemon(sqlite_overrides(db))
    async with api_for(second) as api:
        resumed = await api.open_stream(session_id, seen[-1].id)
        await api.say(session_id, "again")
        again = await read_until(resumed, "permission_request")
        assert contiguous(seen + again)
        assert again[-1].data["correlation_id"] != seen[-len(rest) - 1].data["correlation_id"]


async def test_after_sigkill_committed_events_remain_a_running_turn_is_lost_and_its_decision_withdrawn(
    start_daemon: Any, tmp_path: Path
) -> None:
    db = tmp_path / "sessions.db"
    first = await start_daemon(sqlite_overrides(db))
    busy_cwd = first.session_dir({"turns": [{"steps": [WRITE]}], "then": "repeat_last"})
    async with api_for(first) as api:
        idle = await api.create()
        idle_stream = await api.open_stream(idle, 0)
        await api.say(idle, "hello")
        idle_seen = await read_until(idle_stream, "session_state", "idle")
        idle_seen += await read_until(idle_stream, "session_state", "idle")  # after the turn
        busy = await api.create(cwd=str(busy_cwd))
        stream = await api.open_stream(busy, 0)
        await api.say(busy, "write it")
        seen = await read_until(stream, "session_state", "awaiting_decision")
        request = next(e for e in seen if e.name == "permission_request")
        first.kill()

    second = await start_daemon(sqlite_overrides(db))
    async with api_for(second) as api:
        resumed = await api.open_stream(busy, seen[-1].id)
        settled = [await resumed.next() for _ in range(3)]
        assert [(e.name, e.data.get("code"), e.data.get("state")) for e in settled] == [
            ("permission_cancelled", None, None),
            ("error", "turn_lost", None),
            ("session_state", None, "hibernated"),
        ]
        assert settled[0].data == {"correlation_id": request.data["correlation_id"]}
        assert contiguous(seen + settled)
        status, body = await api.send(busy, {
            "type": "permission_response", "correlation_id": request.data["correlation_id"], "behavior": "allow"})
        assert status == 409, body
        await api.say(busy, "again")  # the conversation goes on: the tool asks again
        again = await read_until(resumed, "permission_request")
        assert again[-1].data["correlation_id"] != request.data["correlation_id"]

        idle_again = await api.open_stream(idle, idle_seen[-1].id)
        first_after = await idle_again.next()
        assert (first_after.id, first_after.data) == (idle_seen[-1].id + 1, {"state": "hibernated"})
        status, listing, _ = await api.request("GET", "/sessions")
        assert {s["session_id"] for s in listing["sessions"]} == {idle, busy}


async def test_with_the_real_cli_the_model_sees_the_earlier_turn_after_a_restart(
    start_daemon: Any, fake_model_url: str, tmp_path: Path
) -> None:
    config_dir = tmp_path / "claude-config"
    config_dir.mkdir()
    real_cli = {"cli_path": "", "env": offline_cli_env(fake_model_url, config_dir)}
    db = tmp_path / "sessions.db"
    first = await start_daemon(sqlite_overrides(db, agent=real_cli))
    async with asyncio.timeout(60), api_for(first) as api:
        session_id = await api.create(cwd=str(first.session_dir()))
        stream = await api.open_stream(session_id, 0)
        await api.say(session_id, "remember the teapot")
        seen = await read_until(stream, "result")
    first.kill()  # the hardest way: the transcript must have been committed already
    # The CLI's own files are gone too: only the database can restore the conversation.
    for transcript in (config_dir / "projects").glob("*/*.jsonl"):
        transcript.unlink()

    second = await start_daemon(sqlite_overrides(db, agent=real_cli))
    async with asyncio.timeout(60), api_for(second) as api:
        resumed = await api.open_stream(session_id, seen[-1].id)
        await api.say(session_id, "what is in the history?")
        after = await read_until(resumed, "result")
        reply = [e for e in after if e.name == "message_complete"][-1]
        text = "".join(b["text"] for b in reply.data["message"]["content"] if b["type"] == "text")
        assert text == "I see 2 user messages: remember the teapot | what is in the history?"
        assert contiguous(seen + after)


async def test_a_second_daemon_on_the_same_file_refuses_to_start(start_daemon: Any, tmp_path: Path) -> None:
    db = tmp_path / "sessions.db"
    first = await start_daemon(sqlite_overrides(db))
    config = first.config_path.read_text().replace(f"port = {first.port}", "port = 0")
    second_config = tmp_path / "second.toml"
    second_config.write_text(config)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent_webkitd", "--config", str(second_config),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=first.env,
    )
    async with asyncio.timeout(30):
        _, err = await proc.communicate()
    assert proc.returncode == 1
    message = err.decode()
    assert f"{db} is in use by another agent-webkitd (pid {first.proc.pid})" in message, message
    async with api_for(first) as api:  # the first one is untouched
        status, _, _ = await api.request("GET", "/readyz")
        assert status == 200


@contextlib.contextmanager
def small_disk(path: Path, size: str) -> Iterator[Path]:
    """A real filesystem of `size` mounted at `path` (tmpfs), unmounted afterwards."""
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(disk: Path) -> Path:
    """Use up every free byte of the filesystem; returns the file that does it."""
    filler = disk / "filler"
    # The suppress is outermost: closing the file flushes a partly written block, and
    # that fails too once the disk is full.
    with contextlib.suppress(OSError), open(filler, "wb") as out:
        while True:
            out.write(b"\0" * 65536)
            out.flush()
    return filler


async def test_a_full_disk_is_reported_and_loses_nothing(start_daemon: Any, tmp_path: Path) -> None:
    with small_disk(tmp_path / "disk", "4m") as disk:
        daemon = await start_daemon(sqlite_overrides(disk / "sessions.db"))
        async with api_for(daemon) as api:
            session_id = await api.create()
            stream = await api.open_stream(session_id, 0)
            await read_until(stream, "session_state", "idle")
            filler = fill(disk)
            await api.say(session_id, "written while the disk is full")
            with pytest.raises(TimeoutError):  # nothing uncommitted is published
                await stream.next(1.5)
            status, ready, _ = await api.request("GET", "/readyz")
            assert status == 503 and "store unavailable" in ready["reason"], ready
            status, payload, _ = await api.request("POST", "/sessions")
            assert status == 503 and payload["error"]["code"] == "store_unavailable", payload
            filler.unlink()  # room again: everything waiting is committed, then sent
            tail = await read_until(stream, "result")
            assert tail[-1].data["result"] == "echo: written while the disk is full"
            assert contiguous(stream.events)
            for _ in range(50):
                status, _, _ = await api.request("GET", "/readyz")
                if status == 200:
                    break
                await asyncio.sleep(0.1)
            assert status == 200
        await daemon.stop()  # before the disk goes away


async def test_a_session_idle_past_the_timeout_is_closed_across_a_restart(
    start_daemon: Any, tmp_path: Path
) -> None:
    db = tmp_path / "sessions.db"
    idle = {"sessions": {"idle_timeout_s": 5}}
    first = await start_daemon(sqlite_overrides(db, **idle))
    async with api_for(first) as api:
        stale = await api.create()
        await asyncio.sleep(4)
        fresh = await api.create()
    await sigterm_and_wait(first)
    await asyncio.sleep(1.5)  # stale: about 6 s idle by the next start, fresh: about 2 s
    second = await start_daemon(sqlite_overrides(db, **idle))
    async with api_for(second) as api:
        status, listing, _ = await api.request("GET", "/sessions")
        assert [s["session_id"] for s in listing["sessions"]] == [fresh]
        status, _, _ = await api.request("GET", f"/sessions/{stale}")
        assert status == 404


async def test_an_online_backup_is_a_working_copy(start_daemon: Any, tmp_path: Path) -> None:
    db = tmp_path / "sessions.db"
    daemon = await start_daemon(sqlite_overrides(db))
    async with api_for(daemon) as api:
        session_id = await api.create()
        stream = await api.open_stream(session_id, 0)
        await api.say(session_id, "keep me")
        seen = await read_until(stream, "result")
        copy = tmp_path / "backup" / "sessions.db"
        out = await agent_webkitd("backup", str(copy), "--config", str(daemon.config_path))
        assert json.loads(out) == {"backup": str(copy)}
    daemon.kill()
    db.unlink()  # the original is lost; restore the copy
    restored = await start_daemon(sqlite_overrides(copy))
    async with api_for(restored) as api:
        replay = await api.open_stream(session_id, 0)
        assert [(e.id, e.name) for e in [await replay.next() for _ in seen]] == [(e.id, e.name) for e in seen]


async def test_migrate_twice_and_prune_work_on_the_file(start_daemon: Any, tmp_path: Path) -> None:
    db = tmp_path / "sessions.db"
    config = tmp_path / "maintenance.toml"
    config.write_text(f'[store]\nbackend = "sqlite"\npath = "{db}"\n')
    runs = await asyncio.gather(*(agent_webkitd("migrate", "--config", str(config)) for _ in range(2)))
    assert sorted(json.loads(out)["applied"] for out in runs) == [[], [1, 2, 3, 4, 5]]
    daemon = await start_daemon(sqlite_overrides(db))
    # The daemon's own workspaces: prune removes a pruned session's folders from there.
    states = daemon.workdir / "workspaces" / ".cli"
    config.write_text(config.read_text() + f'[agent]\nworkspaces_dir = "{states.parent}"\n')
    async with api_for(daemon) as api:
        kept = await api.create()
        closed = await api.create()
        assert await api.delete(closed) == 204
        assert (states / closed).is_dir()  # a closed session's transcripts stay until prune
        await asyncio.sleep(0.3)  # the close is committed with the next burst
        out = await agent_webkitd("prune", "--older-than", "1d", "--config", str(config))
        assert json.loads(out)["deleted"]["sessions"] == 0
        out = await agent_webkitd("prune", "--older-than", "0s", "--config", str(config))
        deleted = json.loads(out)["deleted"]
        assert (deleted["sessions"], deleted["folders"]) == (1, 1)
        assert not (states / closed).exists() and (states / kept).is_dir()
        _, listing, _ = await api.request("GET", "/sessions")
        assert [s["session_id"] for s in listing["sessions"]] == [kept]


async def test_the_sqlite_session_store_passes_the_sdk_conformance_suite(tmp_path: Path) -> None:
    stores: list[SqliteStore] = []

    async def make_store() -> Any:
        store = SqliteStore(StoreConfig(), tmp_path / f"conformance-{len(stores)}.db")
        await store.start()
        stores.append(store)
        return store.sdk_session_store()

    try:
        await run_session_store_conformance(make_store)
    finally:
        for store in stores:
            await store.stop()


async def agent_webkitd(*args: str) -> str:
    """Run a command of the CLI; its stdout (it must exit 0)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent_webkitd", *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    return out.decode()


async def test_a_store_that_cannot_commit_is_full_until_it_can_and_publishes_nothing_meanwhile(
    tmp_path: Path,
) -> None:
    """Backpressure: while another process holds the database's write lock, events wait;
    past max_pending_events the store is `full` (sessions stop reading their CLI) until
    the commits go through, and only committed events reach subscribers."""
    path = tmp_path / "sessions.db"
    store = SqliteStore(StoreConfig(max_pending_events=5), path)
    await store.start()
    try:
        await store.session_opened("s1", {"owner": "token:default"})
        log = EventLog("s1", 100, store)
        blocker = sqlite3.connect(path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # the writer's next commit waits for this lock
        log.append("e", {"i": 0})
        await asyncio.sleep(0.2)  # the writer is stuck committing the first event
        for i in range(1, 10):
            log.append("e", {"i": i})
        assert store.full and log.published_seq == 0
        room = asyncio.create_task(store.room())
        await asyncio.sleep(0.2)
        assert not room.done()
        blocker.execute("ROLLBACK")
        await asyncio.wait_for(room, 15)
        assert not store.full
        deadline = time.monotonic() + 15
        while log.published_seq < 10:
            assert time.monotonic() < deadline, log.published_seq
            await asyncio.sleep(0.05)
        blocker.close()
    finally:
        await store.stop()


async def test_a_restart_sweeps_the_folders_no_session_holds(start_daemon: Any, tmp_path: Path) -> None:
    """A killed daemon leaves its warm CLIs' workspaces; the next start keeps the folders
    of the sessions it restores and removes the rest."""
    daemon = await start_daemon({**sqlite_overrides(tmp_path / "sessions.db"), "agent": {"warm_agents": 1, "warm_agents_max": 1}})
    root = daemon.workdir / "workspaces"
    async with api_for(daemon) as api:
        kept = await api.create()  # takes the warm CLI (and its workspace)
        for _ in range(200):  # the pool starts another, in a workspace of its own
            _, health, _ = await api.request("GET", "/healthz")
            if health["warm_agents"] == 1:  # started: none is starting when the host dies
                break
            await asyncio.sleep(0.05)
        [orphan] = [p.name for p in root.iterdir() if p.name not in (".cli", kept)]
    daemon.kill()
    await daemon.start()
    assert '"event": "workspaces_swept"' in daemon.logs()
    assert not (root / orphan).exists() and not (root / ".cli" / orphan).exists()
    assert (root / kept).is_dir() and (root / ".cli" / kept).is_dir()


async def test_a_transcript_entry_is_stored_once_per_uuid_and_round_trips_what_orjson_refuses(
    tmp_path: Path,
) -> None:
    """Entries are written in bulk (one uuid lookup per append): a uuid already stored, or
    earlier in the same append, is skipped; entries without a uuid are always kept; what
    orjson cannot encode (an integer past 64 bits) falls back to json."""
    store = SqliteStore(StoreConfig(), tmp_path / "entries.db")
    await store.start()
    key: Any = {"project_key": "p", "session_id": "s"}

    def entry(**fields: Any) -> Any:
        return {"type": "user", **fields}

    try:
        transcripts = store.sdk_session_store()
        await transcripts.append(key, [entry(uuid="a", n=1), entry(n=2), entry(uuid="a", n=3)])
        await transcripts.append(key, [entry(uuid="a", n=4), entry(n=2), entry(uuid="b", n=2**70)])
        await transcripts.append(key, [entry(uuid="c", text="é ✓ \u2028")])
        assert await transcripts.load(key) == [
            entry(uuid="a", n=1),
            entry(n=2),
            entry(n=2),
            entry(uuid="b", n=2**70),
            entry(uuid="c", text="é ✓ \u2028"),
        ]
    finally:
        await store.stop()
