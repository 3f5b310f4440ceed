"""The Postgres store on a real PostgreSQL: durable events, replay from the database,
failover between two real daemon processes (the first killed with SIGKILL), the
ownership race, a database outage, migrations and pruning."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg

from agent_webkitd.stores.postgres.store import owner_is_gone
from tests.conftest import api_for
from tests.standin.fixtures import fake_model_url, offline_cli_env
from tests.test_conversation import WRITE
from tests.wire_client import Api, Event, Stream, StreamRefused

__all__ = ["fake_model_url"]  # imported for pytest: it is a fixture

LEASE_S = 1.0


def pg_overrides(dsn: str, tmp_path: Path, **extra: Any) -> dict[str, dict[str, Any]]:
    overrides: dict[str, dict[str, Any]] = {
        "store": {"backend": "postgres", "dsn": dsn, "lease_s": LEASE_S},
        # The CLI keeps its local transcript here (the SDK mirrors it to Postgres).
        "agent": {"env": {"CLAUDE_CONFIG_DIR": str(tmp_path / "claude-config")}},
    }
    for section, values in extra.items():
        overrides[section] = {**overrides.get(section, {}), **values}
    return overrides


def model_views(cwd: Path) -> list[list[dict[str, str]]]:
    """For every turn any CLI ran in `cwd`: the conversation its model was given."""
    log = cwd / "cli-log.jsonl"
    entries = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return [e["messages"] for e in entries if e.get("dir") == "model"]


async def stream_from(api: Api, session_id: str, last_event_id: int, timeout: float = 15) -> Stream:
    """Open the stream on a host that must first claim the session: while the dead
    owner's lease runs out it answers 503 session_elsewhere."""
    async with asyncio.timeout(timeout):
        while True:
            try:
                return await api.open_stream(session_id, last_event_id)
            except StreamRefused as exc:
                if exc.status != 503 or exc.body["error"]["code"] != "session_elsewhere":
                    raise
            await asyncio.sleep(0.1)


async def read_turn(stream: Stream) -> list[Event]:
    """Events up to and including the next session_state idle after a result."""
    seen: list[Event] = []
    while True:
        event = await stream.next()
        seen.append(event)
        if event.name == "session_state" and event.data["state"] == "idle" and any(
            e.name == "result" for e in seen
        ):
            return seen


async def test_a_killed_host_s_session_continues_on_another_host_without_gap_or_reused_id(
    pg_dsn: str, start_daemon: Any, tmp_path: Path
) -> None:
    # A long lease: the second host must see that the first is gone (its port refuses
    # connections) and claim at once, not wait the lease out.
    long_lease = {"lease_s": 60}
    first = await start_daemon(pg_overrides(pg_dsn, tmp_path, store=long_lease))
    second = await start_daemon(pg_overrides(pg_dsn, tmp_path, store=long_lease))
    cwd = first.session_dir()
    async with api_for(first) as api_a, api_for(second) as api_b:
        session_id = await api_a.create(cwd=str(cwd))
        stream = await api_a.open_stream(session_id, 0)
        await api_a.say(session_id, "remember the word teapot")
        seen = [await stream.next()] + await read_turn(stream)
        assert any(e.name == "result" for e in seen)
        last_id = seen[-1].id
        assert last_id is not None

        first.kill()
        resumed = await api_b.open_stream(session_id, last_id)  # no 503, no waiting
        await api_b.say(session_id, "what was the word?")
        after = await read_turn(resumed)
        ids = [e.id for e in seen + after]
        assert ids == list(range(1, len(ids) + 1)), "a gap or a reused id across the failover"
        reply = next(e for e in after if e.name == "message_complete")
        assert reply.data["message"]["content"][0]["text"] == "echo: what was the word?"
        # The second host's CLI resumed the conversation: its model saw the first turn.
        assert model_views(cwd)[-1] == [
            {"role": "user", "text": "remember the word teapot"},
            {"role": "assistant", "text": "echo: remember the word teapot"},
            {"role": "user", "text": "what was the word?"},
        ]
        status, described, _ = await api_b.request("GET", f"/sessions/{session_id}")
        assert status == 200 and described["last_seq"] == ids[-1]


async def test_with_the_real_cli_the_model_sees_the_earlier_turn_after_failover(
    pg_dsn: str, start_daemon: Any, fake_model_url: str, tmp_path: Path
) -> None:
    config_dir = tmp_path / "claude-config"
    config_dir.mkdir()
    real_cli = {"cli_path": "", "env": offline_cli_env(fake_model_url, config_dir)}
    first = await start_daemon(pg_overrides(pg_dsn, tmp_path, agent=real_cli))
    second = await start_daemon(pg_overrides(pg_dsn, tmp_path, agent=real_cli))
    async with asyncio.timeout(60), api_for(first) as api_a, api_for(second) as api_b:
        session_id = await api_a.create(cwd=str(first.session_dir()))
        stream = await api_a.open_stream(session_id, 0)
        await api_a.say(session_id, "remember the teapot")
        seen = [await stream.next()] + await read_turn(stream)
        first.kill()

        resumed = await stream_from(api_b, session_id, seen[-1].id or 0, timeout=30)
        await api_b.say(session_id, "what is in the history?")
        after = await read_turn(resumed)
        ids = [e.id for e in seen + after]
        assert ids == list(range(1, len(ids) + 1))
        reply = next(e for e in after if e.name == "message_complete")
        text = "".join(b["text"] for b in reply.data["message"]["content"] if b["type"] == "text")
        assert text == "I see 2 user messages: remember the teapot | what is in the history?"


async def test_a_turn_running_on_a_dead_host_ends_with_turn_lost_and_its_decision_is_withdrawn(
    pg_dsn: str, start_daemon: Any, tmp_path: Path
) -> None:
    first = await start_daemon(pg_overrides(pg_dsn, tmp_path))
    second = await start_daemon(pg_overrides(pg_dsn, tmp_path))
    cwd = first.session_dir({"turns": [{"steps": [WRITE]}], "then": "repeat_last"})
    async with api_for(first) as api_a, api_for(second) as api_b:
        session_id = await api_a.create(cwd=str(cwd))
        stream = await api_a.open_stream(session_id, 0)
        await api_a.say(session_id, "write it")
        request = await stream.until("permission_request")
        waiting = await stream.until("session_state")
        assert waiting.data == {"state": "awaiting_decision"}
        first.kill()

        resumed = await stream_from(api_b, session_id, waiting.id or 0)
        settled = [await resumed.next() for _ in range(3)]
        assert [(e.name, e.data) for e in settled] == [
            ("permission_cancelled", {"correlation_id": request.data["correlation_id"]}),
            ("error", {"code": "turn_lost", "message": settled[1].data["message"]}),
            ("session_state", {"state": "hibernated"}),  # until its next message wakes it here
        ]
        assert settled[0].id == (waiting.id or 0) + 1
        # The withdrawn decision cannot be answered any more; the session takes new turns.
        status, body = await api_b.send(session_id, {
            "type": "permission_response", "correlation_id": request.data["correlation_id"],
            "behavior": "allow"})
        assert status == 409, body
        # The resumed CLI's next turn asks for the same tool again.
        await api_b.say(session_id, "again")
        again = await resumed.until("permission_request")
        assert again.data["correlation_id"] != request.data["correlation_id"]
        status, body = await api_b.send(session_id, {
            "type": "permission_response", "correlation_id": again.data["correlation_id"],
            "behavior": "allow"})
        assert status == 204, body
        assert (await resumed.until("result")).data["subtype"] == "success"


async def test_a_live_owner_keeps_its_session_and_of_two_claimants_exactly_one_wins(
    pg_dsn: str, start_daemon: Any, tmp_path: Path
) -> None:
    owner = await start_daemon(pg_overrides(pg_dsn, tmp_path))
    hosts = [await start_daemon(pg_overrides(pg_dsn, tmp_path)) for _ in range(2)]
    async with api_for(owner) as api_a, api_for(hosts[0]) as api_b, api_for(hosts[1]) as api_c:
        session_id = await api_a.create(cwd=str(owner.session_dir()))
        # The owner is alive: other hosts say where the session is, and never copy it.
        status, body, headers = await api_b.request("GET", f"/sessions/{session_id}")
        assert status == 503 and body["error"]["code"] == "session_elsewhere"
        assert headers["Retry-After"] == "1" and body["error"]["owner"]
        status, _, _ = await api_b.request("GET", "/sessions/no-such-session")
        assert status == 404

        owner.kill()
        await asyncio.sleep(LEASE_S + 0.3)
        results = await asyncio.gather(
            api_b.request("GET", f"/sessions/{session_id}"),
            api_c.request("GET", f"/sessions/{session_id}"),
        )
        statuses = sorted(r[0] for r in results)
        assert statuses == [200, 503], results
        loser = next(r for r in results if r[0] == 503)
        assert loser[1]["error"]["code"] == "session_elsewhere"
        live = [len((await api.request("GET", "/sessions"))[1]["sessions"]) for api in (api_b, api_c)]
        assert sorted(live) == [0, 1]


async def test_replay_reaches_past_the_ring_into_the_database(
    pg_dsn: str, start_daemon: Any, tmp_path: Path
) -> None:
    daemon = await start_daemon(pg_overrides(pg_dsn, tmp_path, sessions={"ring_size": 8}))
    cwd = daemon.session_dir({"turns": [{"steps": [{"events": 50, "text": "x"}]}]})
    async with api_for(daemon) as api:
        session_id = await api.create(cwd=str(cwd))
        live = await api.open_stream(session_id, 0)
        await api.say(session_id, "go")
        await read_turn(live)
        newest = live.events[-1].id
        assert newest is not None and newest > 50
        replay = await api.open_stream(session_id, 1)
        replayed = [await replay.next() for _ in range(newest - 1)]
        assert [e.id for e in replayed] == list(range(2, newest + 1))
        assert [(e.name, e.data) for e in replayed] == [(e.name, e.data) for e in live.events[1:]]
        # Without a cursor a new subscriber gets what the ring holds, as before.
        tail = await api.open_stream(session_id)
        assert (await tail.next()).id == newest - 7
    async with asyncpg.create_pool(pg_dsn, min_size=1, max_size=1) as pool:
        stored = await pool.fetchval("SELECT count(*) FROM awk_events WHERE session_id = $1", session_id)
    assert stored >= newest


async def test_a_database_outage_delays_events_but_loses_none(
    pg_dsn: str, start_daemon: Any, tmp_path: Path
) -> None:
    daemon = await start_daemon(pg_overrides(pg_dsn, tmp_path))
    cwd = daemon.session_dir({"turns": [{"steps": [{"events": 20, "text": "x"}]}]})
    async with api_for(daemon) as api:
        session_id = await api.create(cwd=str(cwd))
        stream = await api.open_stream(session_id, 0)
        await stream.until("session_state")
        before = list(stream.events)
        postgres("stop")
        try:
            status, body, _ = await api.request("GET", "/readyz")
            assert status == 503 and "store" in body["reason"]
            status, body, _ = await api.request("POST", "/sessions", {"cwd": str(daemon.session_dir())})
            assert status == 503 and body["error"]["code"] == "store_unavailable"
            await api.say(session_id, "during the outage")
            # The turn runs, but nothing is published before it is committed.
            await asyncio.sleep(1.5)
            assert stream._pending == [] and stream.events == before
        finally:
            postgres("start")
        events = before + await read_turn(stream)
        assert [e.id for e in events] == list(range(1, len(events) + 1))
        assert sum(1 for e in events if e.name == "message_complete") == 20
        async with asyncio.timeout(10):
            while (await api.request("GET", "/readyz"))[0] != 200:  # noqa: ASYNC110 - polling a remote server
                await asyncio.sleep(0.2)
    # The CLI's transcript of that turn reached the database too (a later resume needs it).
    async with asyncpg.create_pool(pg_dsn, min_size=1, max_size=1) as pool, asyncio.timeout(15):
        while not await pool.fetchval(  # noqa: ASYNC110 - polling the database
            "SELECT count(*) FROM awk_transcript_entries WHERE entry::text LIKE '%during the outage%'"
        ):
            await asyncio.sleep(0.2)


async def test_migrate_and_prune_commands(pg_dsn: str, start_daemon: Any, tmp_path: Path) -> None:
    config = tmp_path / "migrate.toml"
    config.write_text(f'[store]\nbackend = "postgres"\ndsn = "{pg_dsn}"\n')
    # Two at once, as two hosts starting together: each migration is applied once.
    runs = await asyncio.gather(*(agent_webkitd("migrate", "--config", str(config)) for _ in range(2)))
    assert sorted(json.loads(out)["applied"] for _, out in runs) == [[], [1, 2, 3, 4, 5, 6]]
    assert json.loads((await agent_webkitd("migrate", "--config", str(config)))[1]) == {"applied": []}

    daemon = await start_daemon(pg_overrides(pg_dsn, tmp_path))
    async with api_for(daemon) as api:
        kept = await api.create(cwd=str(daemon.session_dir()))
        closed = await api.create(cwd=str(daemon.session_dir()))
        stream = await api.open_stream(closed, 0)
        await api.say(closed, "hello")
        await stream.until("result")
        assert await api.delete(closed) == 204
        await stream.until("done")
    async with asyncpg.create_pool(pg_dsn, min_size=1, max_size=1) as pool:
        async with asyncio.timeout(5):
            while await pool.fetchval("SELECT state FROM awk_sessions WHERE id = $1", closed) != "closed":  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        code, out = await agent_webkitd("prune", "--older-than", "1d", "--config", str(config))
        assert json.loads(out)["deleted"]["sessions"] == 0
        code, out = await agent_webkitd("prune", "--older-than", "0s", "--config", str(config))
        assert code == 0 and json.loads(out)["deleted"]["sessions"] == 1
        remaining = {r["id"] for r in await pool.fetch("SELECT id FROM awk_sessions")}
        assert remaining == {kept}
        assert await pool.fetchval("SELECT count(*) FROM awk_events WHERE session_id = $1", closed) == 0
    code, _ = await agent_webkitd("prune", "--older-than", "soon", "--config", str(config), check=False)
    assert code == 2


async def agent_webkitd(*args: str, check: bool = True) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent_webkitd", *args,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    out, err = await proc.communicate()
    if check:
        assert proc.returncode == 0, err.decode()
    return proc.returncode or 0, out.decode()


def postgres(action: str) -> None:
    """Really stop or start the PostgreSQL server the tests use."""
    versions = sorted(Path("/etc/postgresql").iterdir())
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", versions[-1].name, "main", action],
        check=True, capture_output=True, timeout=60,
    )


async def test_a_draining_host_hands_its_sessions_over_at_once(
    pg_dsn: str, start_daemon: Any, tmp_path: Path
) -> None:
    first = await start_daemon(pg_overrides(pg_dsn, tmp_path, server={"drain_timeout_s": 60}))
    second = await start_daemon(pg_overrides(pg_dsn, tmp_path))
    cwd = first.session_dir()
    async with api_for(first) as api_a, api_for(second) as api_b:
        session_id = await api_a.create(cwd=str(cwd))
        stream = await api_a.open_stream(session_id, 0)
        await api_a.say(session_id, "before the deploy")
        seen = [await stream.next()] + await read_turn(stream)
        assert first.proc is not None
        first.proc.send_signal(signal.SIGTERM)
        # The stream ends without `done`: the session is not over, it is moving.
        rest = await stream.rest(timeout=10)
        assert "done" not in [e.name for e in rest]
        async with asyncio.timeout(10):
            assert await asyncio.to_thread(first.proc.wait) == 0
        # Released, not abandoned: the next host claims it without waiting for a lease.
        resumed = await api_b.open_stream(session_id, (seen + rest)[-1].id)
        await api_b.say(session_id, "after the deploy")
        after = await read_turn(resumed)
        ids = [e.id for e in seen + rest + after]
        assert ids == list(range(1, len(ids) + 1))
        assert model_views(cwd)[-1][0] == {"role": "user", "text": "before the deploy"}


async def test_seq_continues_after_the_only_host_is_killed_and_restarted(
    pg_dsn: str, start_daemon: Any, tmp_path: Path
) -> None:
    before = await start_daemon(pg_overrides(pg_dsn, tmp_path))
    cwd = before.session_dir()
    async with api_for(before) as api:
        session_id = await api.create(cwd=str(cwd))
        stream = await api.open_stream(session_id, 0)
        await api.say(session_id, "one")
        seen = [await stream.next()] + await read_turn(stream)
    before.kill()
    after = await start_daemon(pg_overrides(pg_dsn, tmp_path))
    async with api_for(after) as api:
        # Resuming from an id already seen gives exactly what came after it.
        replay = await stream_from(api, session_id, 2)
        replayed = [await replay.next() for _ in range(len(seen) - 2)]
        assert [(e.id, e.name, e.data) for e in replayed] == [(e.id, e.name, e.data) for e in seen[2:]]
        await api.say(session_id, "two")
        more = await read_turn(replay)
        ids = [e.id for e in seen + more]
        assert ids == list(range(1, len(ids) + 1))
        assert [m["text"] for m in model_views(cwd)[-1]] == ["one", "echo: one", "two"]


async def test_only_a_refused_connection_on_the_owners_machine_proves_it_gone() -> None:
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    here = f"{socket.gethostname()}:{port}:abc"
    assert not await owner_is_gone(here, f"http://127.0.0.1:{port}")  # listening: alive
    server.close()
    await server.wait_closed()
    assert await owner_is_gone(here, f"http://127.0.0.1:{port}")  # refused: gone
    # Another machine's loopback address says nothing about that machine.
    assert not await owner_is_gone(f"elsewhere:{port}:abc", f"http://127.0.0.1:{port}")
    assert not await owner_is_gone(here, "")


async def test_events_postgres_refuses_stop_their_session_only(
    pg_dsn: str, start_daemon: Any, tmp_path: Path
) -> None:
    daemon = await start_daemon(pg_overrides(pg_dsn, tmp_path))
    async with asyncpg.create_pool(pg_dsn, min_size=1, max_size=1) as pool:
        # A real refusal from the server, for one session's events only.
        await pool.execute("""
            CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF NEW.data::text LIKE '%poison%' THEN RAISE EXCEPTION 'refused: poison'; END IF;
                RETURN NEW;
            END $$;
            CREATE TRIGGER refuse_poison BEFORE INSERT ON awk_events
                FOR EACH ROW EXECUTE FUNCTION refuse_poison();
        """)
        async with api_for(daemon) as api:
            bad = await api.create(cwd=str(daemon.session_dir({"turns": [{"steps": [{"sleep": 0.3}, {"text": "poison"}]}]})))
            good = await api.create(cwd=str(daemon.session_dir({"turns": [{"steps": [{"sleep": 0.3}, {"text": "fine"}]}]})))
            bad_stream = await api.open_stream(bad, 0)
            good_stream = await api.open_stream(good, 0)
            await asyncio.gather(api.say(bad, "go"), api.say(good, "go"))
            # The other session is not held up by the refused one.
            assert (await good_stream.until("result")).data["result"] == "fine"
            rest = await bad_stream.rest(timeout=10)
            assert "poison" not in json.dumps([e.data for e in rest]) and "done" not in [e.name for e in rest]
            last = (bad_stream.events or [None])[-1]
            assert last is not None and last.id is not None
            stored = await pool.fetchval("SELECT max(seq) FROM awk_events WHERE session_id = $1", bad)
            assert stored == last.id  # nothing published that was not stored
            # Its session carries on from the last stored event, on a fresh CLI.
            await pool.execute("DROP TRIGGER refuse_poison ON awk_events")
            resumed = await stream_from(api, bad, last.id)
            assert (await resumed.next()).id == last.id + 1


async def test_a_deploy_with_hibernated_sessions_loses_no_conversation(
    pg_dsn: str, start_daemon: Any, tmp_path: Path
) -> None:
    # The README's deploy sequence: SIGTERM the old daemon, start the new one.
    overrides = pg_overrides(
        pg_dsn, tmp_path, sessions={"hibernate_after_s": 0.5}, server={"drain_timeout_s": 60}
    )
    old = await start_daemon(overrides)
    cwd = old.session_dir()
    async with api_for(old) as api:
        session_id = await api.create(cwd=str(cwd))
        stream = await api.open_stream(session_id, 0)
        await api.say(session_id, "remember the teapot")
        seen = [await stream.next()] + await read_turn(stream)
        hibernated = await stream.next(timeout=5)
        assert (hibernated.name, hibernated.data) == ("session_state", {"state": "hibernated"})
        seen.append(hibernated)
        assert old.orphans() == []
        # Its ring is dropped: a late reader is served from the database.
        replay = await api.open_stream(session_id, 0)
        replayed = [await replay.next() for _ in seen]
        assert [(e.id, e.name, e.data) for e in replayed] == [(e.id, e.name, e.data) for e in seen]

        assert old.proc is not None
        old.proc.send_signal(signal.SIGTERM)
        # Nothing to wait for: a hibernated session is released at once.
        async with asyncio.timeout(5):
            assert await asyncio.to_thread(old.proc.wait) == 0
        assert "done" not in [e.name for e in await stream.rest(timeout=5)]

    new = await start_daemon(overrides)
    async with api_for(new) as api:
        resumed = await api.open_stream(session_id, seen[-1].id)
        await api.say(session_id, "what was it?")  # a claim is a wake
        after = await read_turn(resumed)
        assert [e.data["state"] for e in after if e.name == "session_state"][:2] == ["waking", "running"]
        ids = [e.id for e in seen + after]
        assert ids == list(range(1, len(ids) + 1))
        assert [m["text"] for m in model_views(cwd)[-1]] == [
            "remember the teapot", "echo: remember the teapot", "what was it?",
        ]
        _, listing, _ = await api.request("GET", "/sessions")
        assert [s["session_id"] for s in listing["sessions"]] == [session_id]


async def owner_port(dsn: str, session_id: str) -> int | None:
    """The port of the host that owns the session in the store (node ids are host:port:x)."""
    async with asyncpg.create_pool(dsn, min_size=1, max_size=1) as pool:
        owner = await pool.fetchval("SELECT owner FROM awk_sessions WHERE id = $1", session_id)
    return None if owner is None else int(owner.split(":")[1])


async def test_during_a_hand_over_no_host_refuses_the_session(
    pg_dsn: str, start_daemon: Any, tmp_path: Path
) -> None:
    # A turn is running when the owner is told to stop: it finishes there, then the
    # session is released. Meanwhile the draining owner keeps serving it, and another
    # host asked for it waits for the release instead of answering session_elsewhere.
    long_lease = {"lease_s": 60}  # nothing may ride on a lease running out
    first = await start_daemon(pg_overrides(pg_dsn, tmp_path, store=long_lease))
    second = await start_daemon(pg_overrides(pg_dsn, tmp_path, store=long_lease))
    cwd = first.session_dir({"turns": [{"steps": [{"sleep": 1.0}, {"text": "done here"}]}]})
    async with api_for(first) as api_a, api_for(second) as api_b:
        session_id = await api_a.create(cwd=str(cwd))
        stream = await api_a.open_stream(session_id, 0)
        await api_a.say(session_id, "a slow turn")
        assert first.proc is not None
        first.proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.2)
        # The draining owner still serves its session while the turn runs.
        status, described, _ = await api_a.request("GET", f"/sessions/{session_id}")
        assert status == 200 and described["state"] == "running", (status, described)
        # The other host waits for the hand-over (the turn ends within a second).
        status, described, _ = await api_b.request("GET", f"/sessions/{session_id}")
        assert status == 200, (status, described)
        seen = await stream.rest(timeout=10)
        assert "result" in [e.name for e in seen] and "done" not in [e.name for e in seen]
        # The released owner now says "not here" with a 503 a proxy retries, never 404.
        status, refused, _ = await api_a.request("GET", f"/sessions/{session_id}")
        assert status == 503 and refused["error"]["code"] == "draining", (status, refused)
        async with asyncio.timeout(10):
            assert await asyncio.to_thread(first.proc.wait) == 0
        assert await owner_port(pg_dsn, session_id) == second.port


async def test_a_frozen_host_serves_nothing_it_lost_once_it_wakes(
    pg_dsn: str, start_daemon: Any, tmp_path: Path
) -> None:
    first = await start_daemon(pg_overrides(pg_dsn, tmp_path))
    second = await start_daemon(pg_overrides(pg_dsn, tmp_path))
    cwd = first.session_dir()
    async with api_for(first) as api_a, api_for(second) as api_b:
        session_id = await api_a.create(cwd=str(cwd))
        stream = await api_a.open_stream(session_id, 0)
        await api_a.say(session_id, "before the freeze")
        seen = [await stream.next()] + await read_turn(stream)
        assert first.orphans(), "the session's CLI runs on the first host"
        assert first.proc is not None
        first.proc.send_signal(signal.SIGSTOP)
        try:
            resumed = await stream_from(api_b, session_id, seen[-1].id, timeout=LEASE_S + 10)
            await api_b.say(session_id, "after the freeze")
            after = await read_turn(resumed)
        finally:
            first.proc.send_signal(signal.SIGCONT)
        ids = [e.id for e in seen + after]
        assert ids == list(range(1, len(ids) + 1))
        # Awake again, the first host asks the store before serving: not its session now.
        status, refused, _ = await api_a.request("GET", f"/sessions/{session_id}")
        assert status == 503 and refused["error"]["code"] == "session_elsewhere", (status, refused)
        for _ in range(100):  # its CLI for the session is stopped: one CLI, not two
            if not first.orphans():
                break
            await asyncio.sleep(0.1)
        assert first.orphans() == []
        _, listing, _ = await api_a.request("GET", "/sessions")
        assert listing["sessions"] == []
    # Its shutdown gives back nothing of the new owner's.
    assert await first.stop() == 0
    assert await owner_port(pg_dsn, session_id) == second.port


async def test_a_workspace_follows_its_session_to_the_next_host(
    pg_dsn: str, start_daemon: Any, tmp_path: Path
) -> None:
    first = await start_daemon(pg_overrides(pg_dsn, tmp_path, store={"lease_s": 60}))
    second = await start_daemon(pg_overrides(pg_dsn, tmp_path, store={"lease_s": 60}))
    async with api_for(first) as api_a, api_for(second) as api_b:
        session_id = await api_a.create()  # its own workspace, first's folder
        for path, body in (("notes.txt", b"kept"), ("deep/er/data.bin", bytes(range(256)) * 40),
                           ("gone.txt", b"deleted later")):
            status, _, _ = await api_a.request("PUT", f"/sessions/{session_id}/files/{path}", raw=body)
            assert status == 201
        assert (await api_a.request("DELETE", f"/sessions/{session_id}/files/gone.txt"))[0] == 204
        # A turn's end checkpoints what the agent changed itself (here: beside the API).
        (first.workspace(session_id) / "by-agent.txt").write_text("written in the turn")
        stream = await api_a.open_stream(session_id, 0)
        await api_a.say(session_id, "hello")
        await read_turn(stream)
        first.kill()

        status, listing, _ = await api_b.request("GET", f"/sessions/{session_id}/files?path=")
        assert status == 200, listing
        resp = await api_b.http.get(f"{second.base_url}/sessions/{session_id}/files/deep/er/data.bin",
                                    headers=api_b.headers())
        assert resp.status == 200 and await resp.read() == bytes(range(256)) * 40
        # Restored into the second host's own folder, not read from the first's.
        here = second.workspace(session_id)
        assert (here / "notes.txt").read_bytes() == b"kept"
        assert (here / "by-agent.txt").read_text() == "written in the turn"
        assert not (here / "gone.txt").exists()
        # (cli-log.jsonl: the scripted CLI's own record, in its cwd, checkpointed like any file)
        names = sorted(p.name for p in here.iterdir())
        assert names == ["by-agent.txt", "cli-log.jsonl", "deep", "notes.txt"]


async def test_a_shelved_session_is_released_to_the_store_and_comes_back_whole(
    pg_dsn: str, start_daemon: Any, tmp_path: Path
) -> None:
    # Shelving with Postgres releases the session (no owner): the next request, here or on
    # another host, claims it back with its ids continuing.
    shelving = {"hibernate_after_s": 0.3, "shelve_after_s": 0.5}
    daemon = await start_daemon(pg_overrides(pg_dsn, tmp_path, store={"lease_s": 60}, sessions=shelving))
    cwd = daemon.session_dir()
    async with api_for(daemon) as api:
        session_id = await api.create(cwd=str(cwd))
        stream = await stream_from(api, session_id, 0)
        await api.say(session_id, "remember the teapot")
        seen = await read_turn(stream)
        stream.close()
        for _ in range(150):
            status, health, _ = await api.request("GET", "/healthz")
            if health["shelved_sessions"] == 1:
                break
            await asyncio.sleep(0.1)
        assert health["shelved_sessions"] == 1, health
        assert await owner_port(pg_dsn, session_id) is None, "released to the store"
        status, listing, _ = await api.request("GET", "/sessions")
        assert status == 200 and [s["session_id"] for s in listing["sessions"]] == [session_id]
        last = listing["sessions"][0]["last_seq"]
        resumed = await stream_from(api, session_id, last)
        assert await owner_port(pg_dsn, session_id) == daemon.port, "claimed back by this host"
        await api.say(session_id, "what was it?")
        after = await read_turn(resumed)
        ids = [e.id for e in seen] + [e.id for e in after]
        assert ids == sorted(set(ids)) and after[0].id == last + 1, (ids, last)
        assert [m["text"] for m in model_views(cwd)[-1]] == [
            "remember the teapot", "echo: remember the teapot", "what was it?",
        ]
