"""Shelved sessions (sessions/shelf.py), with the embedded SQLite store and real daemons: a
quiet hibernated session leaves memory for the store, is listed and guarded as before, and
comes back whole for the next request, with its ids continuing; a shelved one still idles
out; a restart shelves what it loads."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from agent_webkitd.sessions.supervisor import SHELVED_EVICTIONS_AT_ONCE
from tests.conftest import api_for
from tests.test_hibernation import metric, model_views
from tests.test_sqlite_store import contiguous, read_until, sigterm_and_wait, sqlite_overrides
from tests.wire_client import Api

SHELVING = {"sessions": {"hibernate_after_s": 0.3, "shelve_after_s": 0.5}, "server": {"keepalive_s": 0.4}}


async def healthz(api: Api) -> dict[str, Any]:
    status, body, _ = await api.request("GET", "/healthz")
    assert status == 200, body
    return body  # type: ignore[no-any-return]


async def until_shelved(api: Api, count: int, timeout: float = 15) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while (now := await healthz(api))["shelved_sessions"] != count:
        assert time.monotonic() < deadline, f"not {count} shelved: {now}"
        await asyncio.sleep(0.1)
    return now


async def test_a_quiet_hibernated_session_is_shelved_and_comes_back_whole(start_daemon: Any, tmp_path: Path) -> None:
    daemon = await start_daemon(sqlite_overrides(tmp_path / "sessions.db", **SHELVING))
    cwd = daemon.session_dir()
    async with api_for(daemon) as api:
        session_id = await api.create(cwd=str(cwd))
        stream = await api.open_stream(session_id, 0)
        await api.say(session_id, "remember the teapot")
        seen = await read_until(stream, "result")
        seen += await read_until(stream, "session_state", "hibernated")
        stream.close()  # an open stream keeps a session in memory
        counts = await until_shelved(api, 1)
        assert counts["hibernated_sessions"] == 1 and counts["live_sessions"] == 1
        assert await metric(api, "agent_webkit_session_shelvings_total") == 1

        status, listing, _ = await api.request("GET", "/sessions")
        assert status == 200
        [listed] = listing["sessions"]
        assert listed["session_id"] == session_id and listed["state"] == "hibernated"
        assert listed["last_seq"] == seen[-1].id, "the listing says what a client can have seen"

        resumed = await api.open_stream(session_id, seen[-1].id)  # loads it back
        assert (await healthz(api))["shelved_sessions"] == 0
        await api.say(session_id, "what was it?")
        after = await read_until(resumed, "result")
        assert contiguous(seen + after), "an id lost or reused across the shelf"
        assert [m["text"] for m in model_views(cwd)[-1]] == [
            "remember the teapot", "echo: remember the teapot", "what was it?",
        ]
        assert await metric(api, "agent_webkit_session_unshelvings_total") == 1
        replay = await api.open_stream(session_id, 0)
        assert [(e.id, e.name) for e in [await replay.next() for _ in seen]] == [(e.id, e.name) for e in seen]


async def test_a_get_loads_a_shelved_session_and_an_unknown_id_stays_404(start_daemon: Any, tmp_path: Path) -> None:
    daemon = await start_daemon(sqlite_overrides(tmp_path / "sessions.db", **SHELVING))
    async with api_for(daemon) as api:
        session_id = await api.create()
        await until_shelved(api, 1)
        status, body, _ = await api.request("GET", f"/sessions/{session_id}")
        assert status == 200 and body["state"] == "hibernated", body
        status, _, _ = await api.request("GET", "/sessions/not-a-session")
        assert status == 404
        await until_shelved(api, 1)  # quiet again: back on the shelf
        status, _, _ = await api.request("DELETE", f"/sessions/{session_id}")
        assert status == 204
        status, _, _ = await api.request("GET", f"/sessions/{session_id}")
        assert status == 404
        assert (await healthz(api))["live_sessions"] == 0


async def test_a_session_loaded_for_a_request_is_not_shelved_again_at_once(start_daemon: Any, tmp_path: Path) -> None:
    """Loaded from the shelf, a session was idle as long as it was shelved: unless the
    request that loaded it counts as activity, the next sweep shelves it again before the
    stream that asked for it attaches, and that stream ends with the old copy (seen in
    the hold bench: a stream closed before its turn's result, 3 in 1,000)."""
    overrides = sqlite_overrides(tmp_path / "sessions.db", **SHELVING)
    overrides["sessions"]["shelve_after_s"] = 3
    daemon = await start_daemon(overrides)
    async with api_for(daemon) as api:
        session_id = await api.create()
        await until_shelved(api, 1, timeout=20)
        await asyncio.sleep(1)  # shelved for a while: idle for longer than a sweep's period
        status, body, _ = await api.request("GET", f"/sessions/{session_id}")
        assert status == 200, body
        loaded = time.monotonic()
        while time.monotonic() - loaded < 2:
            assert (await healthz(api))["shelved_sessions"] == 0, "shelved again right after its load"
            await asyncio.sleep(0.1)
        await until_shelved(api, 1)  # quiet for shelve_after_s since the GET: shelved


async def test_shelved_sessions_still_idle_out_a_few_loaded_at_a_time(start_daemon: Any, tmp_path: Path) -> None:
    overrides = sqlite_overrides(tmp_path / "sessions.db", **SHELVING)
    overrides["sessions"]["idle_timeout_s"] = 4
    # Twelve warm CLIs: twelve creates within milliseconds, that idle out together.
    cwd = tmp_path / "default-cwd"
    cwd.mkdir()
    overrides["agent"] = {"warm_agents": 12, "warm_agents_max": 12, "cwd": str(cwd), "sandbox": "none"}
    daemon = await start_daemon(overrides)
    async with api_for(daemon) as api:
        deadline = time.monotonic() + 20
        while (await healthz(api))["warm_agents"] < 12:
            assert time.monotonic() < deadline, "the pool never filled"
            await asyncio.sleep(0.1)
        made = await asyncio.gather(*(api.create() for _ in range(12)))
        await until_shelved(api, 12)
        deadline = time.monotonic() + 20
        while (await healthz(api))["live_sessions"]:
            assert time.monotonic() < deadline, "the shelved sessions never idled out"
            await asyncio.sleep(0.2)
        for session_id in made:
            status, _, _ = await api.request("GET", f"/sessions/{session_id}")
            assert status == 404
    evictions = [line for line in daemon.logs().splitlines() if "session_idle_evicted" in line]
    assert len(evictions) == 12
    in_flight = [int(line.split('"evicting": ')[1].split(",")[0].rstrip("}")) for line in evictions]
    assert max(in_flight) <= SHELVED_EVICTIONS_AT_ONCE, in_flight  # never all twelve at once


async def test_a_restart_shelves_the_sessions_it_loads_and_they_work(start_daemon: Any, tmp_path: Path) -> None:
    db = tmp_path / "sessions.db"
    first = await start_daemon(sqlite_overrides(db, sessions={"shelve_after_s": 0}))
    cwd = first.session_dir()
    async with api_for(first) as api:
        session_id = await api.create(cwd=str(cwd))
        stream = await api.open_stream(session_id, 0)
        await api.say(session_id, "remember the teapot")
        seen = await read_until(stream, "result")
        await sigterm_and_wait(first)
        seen += await stream.rest(timeout=5)
    second = await start_daemon(sqlite_overrides(db, sessions={"shelve_after_s": 0}))
    async with api_for(second) as api:
        assert (await healthz(api))["shelved_sessions"] == 1, "loaded at start-up as an index entry"
        resumed = await api.open_stream(session_id, seen[-1].id)
        await api.say(session_id, "what was it?")
        after = await read_until(resumed, "result")
        assert contiguous(seen + after)
        assert [m["text"] for m in model_views(cwd)[-1]][-1] == "what was it?"
