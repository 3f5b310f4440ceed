"""Sessions outlive their CLI: hibernation with open streams, wake on input, crash recovery,
the cap on live CLI processes, and bounded wakes (scripted CLI, memory store).

The CLI processes are counted from outside (by the marker in their environment), and the
conversation each resumed CLI's model was given is read from the scripted CLI's log.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Daemon, api_for
from tests.test_lifecycle import until_state
from tests.test_operations import sample
from tests.wire_client import Api, Event, Stream

QUICK = {"sessions": {"hibernate_after_s": 0.5}}
SLEEPY = {"hibernate_after_s": 0}  # never on its own


async def open_session(api: Api, daemon: Daemon, scenario: dict[str, Any] | None = None) -> tuple[str, Path, Stream]:
    cwd = daemon.session_dir(scenario or {})
    session_id = await api.create(cwd=str(cwd))
    return session_id, cwd, await api.open_stream(session_id, 0)


async def turn(api: Api, session_id: str, stream: Stream, text: str) -> Event:
    await api.say(session_id, text)
    return await stream.until("result")


def model_views(cwd: Path) -> list[list[dict[str, str]]]:
    """For every turn any CLI ran in `cwd`: the conversation its model was given."""
    return [e["messages"] for e in cli_records(cwd, "model")]


def cli_records(cwd: Path, direction: str) -> list[dict[str, Any]]:
    log = cwd / "cli-log.jsonl"
    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return [r for r in records if r["dir"] == direction]


def set_scenario(cwd: Path, scenario: dict[str, Any]) -> None:
    """Read by the next CLI that starts in `cwd`."""
    (cwd / "scenario.json").write_text(json.dumps(scenario))


async def described(api: Api, session_id: str) -> dict[str, Any]:
    status, payload, _ = await api.request("GET", f"/sessions/{session_id}")
    assert status == 200, payload
    return payload  # type: ignore[no-any-return]


async def metric(api: Api, name: str, labels: str = "") -> float:
    _, text, _ = await api.request("GET", "/metrics")
    return sample(text, name, labels)


def assert_contiguous(events: list[Event]) -> None:
    ids = [e.id for e in events]
    assert ids == list(range(1, len(ids) + 1)), f"a gap or a repeat: {ids}"


def states(events: list[Event]) -> list[str]:
    return [e.data["state"] for e in events if e.name == "session_state"]


async def test_an_idle_session_hibernates_keeps_its_stream_and_wakes_with_its_history(start_daemon: Any) -> None:
    daemon = await start_daemon({"sessions": {"hibernate_after_s": 0.5}, "server": {"keepalive_s": 0.4}})
    async with api_for(daemon) as api:
        session_id, cwd, stream = await open_session(api, daemon)
        await turn(api, session_id, stream, "remember the teapot")
        await until_state(stream, "hibernated", timeout=5)
        assert daemon.orphans() == [], "the CLI of a hibernated session is stopped"
        status, listing, _ = await api.request("GET", "/sessions")
        assert status == 200
        assert [s["state"] for s in listing["sessions"]] == ["hibernated"]
        assert (listing["live_agents"], listing["hibernated_sessions"]) == (0, 1)
        # The stream stays open: keepalives go on, nothing else is sent.
        comments = len(stream.comments)
        with pytest.raises(TimeoutError):
            await stream.next(1.0)
        assert len(stream.comments) > comments

        started = time.monotonic()
        await api.say(session_id, "what was it?")
        assert time.monotonic() - started < 0.5, "the message is accepted at once, not after the wake"
        woken = await until_state(stream, "running")
        assert states(woken) == ["waking", "running"]
        result = await stream.until("result")
        assert result.data["result"] == "echo: what was it?"
        assert model_views(cwd)[-1] == [
            {"role": "user", "text": "remember the teapot"},
            {"role": "assistant", "text": "echo: remember the teapot"},
            {"role": "user", "text": "what was it?"},
        ]
        assert_contiguous(stream.events)
        first, resumed = cli_records(cwd, "argv")
        assert f"--resume={(await described(api, session_id))['claude_session_id']}" in resumed["argv"]
        assert not any(a.startswith("--resume") for a in first["argv"])

        assert await metric(api, "agent_webkit_hibernations_total") == 1
        assert await metric(api, "agent_webkit_wakes_total", 'outcome="ok"') == 1
        assert await metric(api, "agent_webkit_wake_seconds_count") == 1
        assert await metric(api, "agent_webkit_agents_live") == 1
        assert await metric(api, "agent_webkit_sessions_hibernated") == 0
        logs = daemon.logs()
        assert '"event": "session_hibernated"' in logs and '"event": "session_woken"' in logs


async def test_settings_changed_while_hibernated_are_applied_at_the_wake_without_waking_it(start_daemon: Any) -> None:
    daemon = await start_daemon(QUICK)
    async with api_for(daemon) as api:
        session_id, cwd, stream = await open_session(api, daemon)
        status, _ = await api.send(session_id, {"type": "set_permission_mode", "mode": "acceptEdits"})
        assert status == 204  # while live: sent to the CLI, and remembered
        await turn(api, session_id, stream, "hello")
        await until_state(stream, "hibernated", timeout=5)

        for message in (
            {"type": "set_model", "model": "claude-sonnet-test"},
            {"type": "interrupt"},
            {"type": "stop_task", "task_id": "nothing-runs"},
        ):
            status, payload = await api.send(session_id, message)
            assert status == 204, payload
        status, payload = await api.send(session_id, {"type": "set_permission_mode", "mode": "bypassPermissions"})
        assert status == 403 and payload["error"]["code"] == "mode_not_allowed"
        # Reads do not wake it either.
        await api.open_stream(session_id, 1)
        session = await described(api, session_id)
        assert (session["state"], session["model"], session["permission_mode"]) == (
            "hibernated", "claude-sonnet-test", "acceptEdits",
        )
        await asyncio.sleep(0.3)
        assert daemon.orphans() == [] and len(cli_records(cwd, "argv")) == 1

        await turn(api, session_id, stream, "again")
        argv = cli_records(cwd, "argv")[-1]["argv"]
        assert argv[argv.index("--model") + 1] == "claude-sonnet-test"
        assert argv[argv.index("--permission-mode") + 1] == "acceptEdits"


async def test_two_messages_sent_during_a_wake_both_run_in_order(start_daemon: Any) -> None:
    daemon = await start_daemon(QUICK)
    async with api_for(daemon) as api:
        session_id, cwd, stream = await open_session(api, daemon)
        await turn(api, session_id, stream, "one")
        await until_state(stream, "hibernated", timeout=5)
        set_scenario(cwd, {"turns": [], "on_start": {"delay": 0.5}})  # a slow wake
        await api.say(session_id, "two")
        await api.say(session_id, "three")
        first = await stream.until("result")
        second = await stream.until("result")
        assert [first.data["result"], second.data["result"]] == ["echo: two", "echo: three"]
        assert states(stream.events).count("waking") == 1
        assert model_views(cwd)[-1][-3:] == [
            {"role": "user", "text": "two"},
            {"role": "assistant", "text": "echo: two"},
            {"role": "user", "text": "three"},
        ]


async def test_deleting_a_hibernated_session_ends_its_streams_without_starting_a_cli(start_daemon: Any) -> None:
    daemon = await start_daemon({"sessions": {"hibernate_after_s": 0.3}})
    async with api_for(daemon) as api:
        session_id, cwd, stream = await open_session(api, daemon)
        await until_state(stream, "hibernated", timeout=5)  # never used: hibernates too
        assert await api.delete(session_id) == 204
        tail = await stream.rest()
        assert [e.name for e in tail][-2:] == ["session_state", "done"]
        assert len(cli_records(cwd, "argv")) == 1 and daemon.orphans() == []


async def test_a_hibernated_session_nobody_watches_still_idles_out(start_daemon: Any) -> None:
    daemon = await start_daemon({"sessions": {"hibernate_after_s": 0.3, "idle_timeout_s": 1.5}})
    async with api_for(daemon) as api:
        session_id, _, stream = await open_session(api, daemon)
        await until_state(stream, "hibernated", timeout=5)
        stream.close()
        for _ in range(60):
            status, _, _ = await api.request("GET", f"/sessions/{session_id}")
            if status == 404:
                break
            await asyncio.sleep(0.1)
        assert status == 404


async def test_sigkill_of_an_idle_cli_is_reported_and_the_next_message_resumes_the_conversation(start_daemon: Any) -> None:
    daemon = await start_daemon({"sessions": SLEEPY})
    async with api_for(daemon) as api:
        session_id, cwd, stream = await open_session(api, daemon)
        await turn(api, session_id, stream, "first")
        [pid] = daemon.orphans()
        os.kill(pid, signal.SIGKILL)
        tail = await until_state(stream, "hibernated")
        [error] = [e for e in tail if e.name == "error"]
        assert error.data["code"] == "agent_exited" and re.search(r"code (-9|137)\b", error.data["message"])
        assert await metric(api, "agent_webkit_agent_exits_total") == 1
        assert '"event": "agent_exited"' in daemon.logs()
        assert (await turn(api, session_id, stream, "second")).data["result"] == "echo: second"
        assert model_views(cwd)[-1] == [
            {"role": "user", "text": "first"},
            {"role": "assistant", "text": "echo: first"},
            {"role": "user", "text": "second"},
        ]
        assert_contiguous(stream.events)


async def test_sigkill_mid_turn_ends_the_turn_and_the_conversation_goes_on(start_daemon: Any) -> None:
    daemon = await start_daemon({"sessions": SLEEPY})
    async with api_for(daemon) as api:
        scenario = {"turns": [{"steps": [{"echo": True}]}, {"steps": [{"text": "working on it"}, {"sleep": 30}]}]}
        session_id, cwd, stream = await open_session(api, daemon, scenario)
        await turn(api, session_id, stream, "first")
        await api.say(session_id, "second")
        await stream.until("message_complete")
        [pid] = daemon.orphans()
        os.kill(pid, signal.SIGKILL)
        tail = await until_state(stream, "hibernated")
        assert [e.data["code"] for e in tail if e.name == "error"] == ["agent_exited"]
        assert "result" not in [e.name for e in tail]
        assert (await turn(api, session_id, stream, "third")).data["result"] == "echo: third"
        view = model_views(cwd)[-1]
        assert view[:2] == [{"role": "user", "text": "first"}, {"role": "assistant", "text": "echo: first"}]
        assert view[-1] == {"role": "user", "text": "third"}


async def test_a_wake_whose_transcript_was_deleted_fails_with_wake_failed_and_stays_hibernated(start_daemon: Any) -> None:
    daemon = await start_daemon(QUICK)
    async with api_for(daemon) as api:
        session_id, cwd, stream = await open_session(api, daemon)
        await turn(api, session_id, stream, "remember this")
        await until_state(stream, "hibernated", timeout=5)
        claude_id = (await described(api, session_id))["claude_session_id"]
        [transcript] = daemon.transcripts(session_id).glob(f"*/{claude_id}.jsonl")
        transcript.unlink()

        for _ in range(2):  # and again: never a fresh conversation in its place
            await api.say(session_id, "what was it?")
            tail = await until_state(stream, "hibernated")
            assert states(tail) == ["waking", "hibernated"]
            [error] = [e for e in tail if e.name == "error"]
            assert error.data["code"] == "wake_failed"
            assert "transcript" in error.data["message"] and "1 queued message(s) not sent" in error.data["message"]
            assert error.data["unsent_messages"] == 1
        assert len(cli_records(cwd, "argv")) == 1, "no CLI was started for it"
        assert await metric(api, "agent_webkit_wakes_total", 'outcome="failed"') == 2
        assert (await described(api, session_id))["state"] == "hibernated"


async def test_a_cli_that_fails_at_the_wake_gives_wake_failed_with_its_stderr_then_a_retry_works(start_daemon: Any) -> None:
    daemon = await start_daemon(QUICK)
    async with api_for(daemon) as api:
        session_id, cwd, stream = await open_session(api, daemon)
        await turn(api, session_id, stream, "first")
        await until_state(stream, "hibernated", timeout=5)
        set_scenario(cwd, {"turns": [], "on_start": {"delay": 0.3, "crash": {"exit_code": 7, "stderr": "licence expired"}}})
        await api.say(session_id, "second")
        await api.say(session_id, "and another")
        tail = await until_state(stream, "hibernated")
        [error] = [e for e in tail if e.name == "error"]
        assert error.data["code"] == "wake_failed"
        assert "licence expired" in error.data["message"] and "2 queued message(s) not sent" in error.data["message"]
        assert daemon.orphans() == []

        set_scenario(cwd, {"turns": []})
        assert (await turn(api, session_id, stream, "third")).data["result"] == "echo: third"
        assert model_views(cwd)[-1][:2] == [{"role": "user", "text": "first"}, {"role": "assistant", "text": "echo: first"}]


async def test_max_live_agents_hibernates_the_least_recently_used_idle_session(start_daemon: Any) -> None:
    daemon = await start_daemon({"sessions": {**SLEEPY, "max_live_agents": 2}})
    echo = {"steps": [{"echo": True}]}
    sleep = {"steps": [{"sleep": 1.5}, {"echo": True}]}
    async with api_for(daemon) as api:
        a, _, stream_a = await open_session(api, daemon, {"turns": [echo, echo, sleep]})
        b, _, stream_b = await open_session(api, daemon, {"turns": [echo, echo]})
        await turn(api, a, stream_a, "a1")
        await turn(api, b, stream_b, "b1")
        c, _, stream_c = await open_session(api, daemon, {"turns": [sleep]})
        await until_state(stream_a, "hibernated")  # the least recently used made room
        assert len(daemon.orphans()) == 2

        await turn(api, a, stream_a, "a2")  # a wakes; b is now the least recently used
        await until_state(stream_b, "hibernated")
        assert len(daemon.orphans()) == 2
        assert (await described(api, c))["state"] == "idle"

        # Every CLI busy: a create is refused, a wake waits its turn.
        await api.say(a, "a3")
        await api.say(c, "c1")
        await until_state(stream_a, "running")
        await until_state(stream_c, "running")
        status, payload, headers = await api.request("POST", "/sessions")
        assert status == 503 and payload["error"]["code"] == "agents_busy" and "Retry-After" in headers
        await api.say(b, "b2")
        await until_state(stream_b, "waking")
        await asyncio.sleep(0.5)
        assert (await described(api, b))["state"] == "waking" and len(daemon.orphans()) == 2
        assert (await stream_b.until("result", timeout=15)).data["result"] == "echo: b2"
        assert len(daemon.orphans()) == 2
        for stream in (stream_a, stream_c):
            assert (await stream.until("result")).data["subtype"] == "success"
        status, listing, _ = await api.request("GET", "/sessions")
        assert listing["live_agents"] <= 2 and listing["max_live_agents"] == 2
        assert await metric(api, "agent_webkit_capacity_rejections_total", 'reason="agents_busy"') == 1


async def test_a_background_task_keeps_the_cli_awake_until_it_finishes(start_daemon: Any) -> None:
    daemon = await start_daemon(QUICK)
    task = {"task_id": "bg-1", "uuid": "u-1", "session_id": "s"}
    started = {"raw": {"type": "system", "subtype": "task_started", "description": "npm test", **task}}
    finished = {"raw": {"type": "system", "subtype": "task_notification", "status": "completed",
                        "output_file": "out.txt", "summary": "tests passed", **task}}
    async with api_for(daemon) as api:
        scenario = {"turns": [{"steps": [started, {"echo": True}]}, {"steps": [finished, {"echo": True}]}]}
        session_id, _, stream = await open_session(api, daemon, scenario)
        await turn(api, session_id, stream, "start the tests in the background")
        with pytest.raises(TimeoutError):
            await until_state(stream, "hibernated", timeout=1.5)
        assert len(daemon.orphans()) == 1
        await turn(api, session_id, stream, "how did they go?")
        await until_state(stream, "hibernated", timeout=5)


async def test_concurrent_wakes_start_at_most_max_concurrent_starts_clis_at_a_time(start_daemon: Any) -> None:
    daemon = await start_daemon({"sessions": {"hibernate_after_s": 0.3, "max_concurrent_starts": 2}})
    async with api_for(daemon) as api:
        sessions = [await open_session(api, daemon) for _ in range(4)]
        for _, cwd, stream in sessions:
            await until_state(stream, "hibernated", timeout=5)
            set_scenario(cwd, {"turns": [], "on_start": {"delay": 0.6}})
        started = time.monotonic()
        for session_id, _, _ in sessions:
            await api.say(session_id, "wake up")
        for _, _, stream in sessions:
            await stream.until("result")
        # Four starts of 0.6 s, two at a time: two rounds, never all four at once.
        assert time.monotonic() - started >= 1.2
