"""Warm CLIs (`[agent] warm_agents`): CLIs started ahead of time with the operator's
defaults, handed to a new session at once; counted against max_live_agents, the first to
go when room is needed, replaced when they die, never handed out dead."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

from tests.conftest import Daemon, api_for
from tests.standin.fixtures import fake_model_url, offline_cli_env
from tests.test_artefacts import create as create_artefact
from tests.test_daemon_real_cli import events_until, named
from tests.test_operations import sample
from tests.wire_client import Api

__all__ = ["fake_model_url"]  # imported for pytest: it is a fixture

WRITE = {"tool_use": {"name": "Write", "input": {"file_path": "out.txt", "content": "hi\n"}}, "permission": True}


async def start_warm(start_daemon: Any, tmp_path: Path, scenario: dict[str, Any] | None = None,
                     warm: int = 1, **overrides: dict[str, Any]) -> Daemon:
    """A daemon with `warm` warm CLIs (a fixed pool, unless `agent` overrides warm_agents_max), all sessions sharing one default cwd (`[agent] cwd`,
    instead of a workspace each) where the scripted CLIs play `scenario` and log."""
    default_cwd = tmp_path / "daemon0" / "default-cwd"  # the first daemon a test starts
    default_cwd.mkdir(parents=True)
    if scenario is not None:
        (default_cwd / "scenario.json").write_text(json.dumps(scenario))
    # Unconfined: these tests match the pids the scripted CLIs log with the daemon's view
    # (a sandbox has a PID namespace of its own); the real-CLI test below is sandboxed.
    agent = {"warm_agents": warm, "warm_agents_max": warm, "cwd": str(default_cwd), "sandbox": "none",
             **overrides.pop("agent", {})}
    daemon: Daemon = await start_daemon({"agent": agent, **overrides})
    assert daemon.workdir == tmp_path / "daemon0"
    return daemon


async def health(api: Api) -> dict[str, Any]:
    status, body, _ = await api.request("GET", "/healthz")
    assert status == 200
    return dict(body)


async def until_warm(api: Api, count: int, timeout: float = 15.0, key: str = "warm_agents") -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while (body := await health(api))[key] != count:
        assert time.monotonic() < deadline, f"{key} stays {body[key]}, not {count}"
        await asyncio.sleep(0.05)
    return body


async def creates(api: Api, start: str) -> float:
    _, text, _ = await api.request("GET", "/metrics")
    return sample(text, "agent_webkit_creates_total", f'start="{start}"')


def cli_records(daemon: Daemon) -> list[dict[str, Any]]:
    """What the scripted CLIs in the default cwd logged (SCRIPTED_CLI_LOG)."""
    log = daemon.workdir / "default-cwd" / "cli-log.jsonl"
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def cli_starts(daemon: Daemon) -> list[dict[str, Any]]:
    """The argv record of every CLI started in the default cwd."""
    return [r for r in cli_records(daemon) if r["dir"] == "argv"]


def controls_received(daemon: Daemon, pid: int) -> list[dict[str, Any]]:
    records = cli_records(daemon)
    frames = [json.loads(r["line"]) for r in records if r["dir"] == "in" and r["pid"] == pid]
    return [f["request"] for f in frames if f.get("type") == "control_request"]


async def test_a_create_takes_the_warm_cli_and_a_new_one_starts(start_daemon: Any, tmp_path: Path) -> None:
    daemon = await start_warm(start_daemon, tmp_path, {"turns": [], "then": "echo"})
    async with api_for(daemon) as api:
        await until_warm(api, 1)
        [warm] = cli_starts(daemon)
        session_id = await api.create()
        assert await creates(api, "warm") == 1 and await creates(api, "cold") == 0
        stream = await api.open_stream(session_id, 0)
        await api.say(session_id, "hello")
        events = await events_until(stream, "result")
        assert "echo: hello" in json.dumps([e.data for e in named(events, "message_complete")])
        # The session runs on the CLI started before it was asked for...
        assert warm["pid"] in daemon.orphans()
        # ...and another is started for the next create.
        body = await until_warm(api, 1)
        assert body["live_agents"] == 2 and len(daemon.orphans()) == 2
        assert len(cli_starts(daemon)) == 2
        stream.close()


async def test_another_model_and_mode_take_the_warm_cli_and_are_applied_after_connect(
    start_daemon: Any, tmp_path: Path
) -> None:
    daemon = await start_warm(start_daemon, tmp_path, {"turns": [{"steps": [WRITE]}], "then": "echo"},
                              agent={"allowed_permission_modes": ["default", "plan", "acceptEdits"]})
    async with api_for(daemon) as api:
        await until_warm(api, 1)
        [warm] = cli_starts(daemon)
        session_id = await api.create(model="claude-other-test", permission_mode="acceptEdits")
        assert await creates(api, "warm") == 1
        asked = [(c["subtype"], c.get("model") or c.get("mode")) for c in controls_received(daemon, warm["pid"])]
        assert ("set_model", "claude-other-test") in asked and ("set_permission_mode", "acceptEdits") in asked
        status, described, _ = await api.request("GET", f"/sessions/{session_id}")
        assert status == 200
        assert (described["model"], described["permission_mode"]) == ("claude-other-test", "acceptEdits")
        # The CLI really is in acceptEdits: the Write runs without a permission prompt.
        stream = await api.open_stream(session_id, 0)
        await api.say(session_id, "write it")
        events = await events_until(stream, "result")
        assert named(events, "permission_request") == []
        stream.close()


async def test_a_warm_cli_asks_its_session_for_permission_and_runs_its_artefact_tools(
    start_daemon: Any, tmp_path: Path
) -> None:
    """The SDK's callbacks are bound when the CLI is handed over: the permission prompt and
    the in-process MCP server reach the session the warm CLI serves."""
    scenario = {"turns": [{"steps": [WRITE]}, {"steps": [create_artefact("Notes", "# warm")]}]}
    daemon = await start_warm(start_daemon, tmp_path, scenario)
    async with api_for(daemon) as api:
        await until_warm(api, 1)
        session_id = await api.create()
        assert await creates(api, "warm") == 1
        stream = await api.open_stream(session_id, 0)
        await api.say(session_id, "write it")
        request = await stream.until("permission_request")
        status, _ = await api.send(session_id, {"type": "permission_response",
                                                "correlation_id": request.data["correlation_id"],
                                                "behavior": "allow"})
        assert status == 204
        events = await events_until(stream, "result")
        [resolved] = named(events, "permission_resolved")
        assert resolved.data["behavior"] == "allow"
        await api.say(session_id, "make it")
        [created] = named(await events_until(stream, "result"), "artefact_created")
        assert created.data["session_id"] == session_id and created.data["content"] == "# warm"
        status, listed, _ = await api.request("GET", f"/sessions/{session_id}/artefacts")
        assert [a["title"] for a in listed["artefacts"]] == ["Notes"]
        stream.close()


async def test_another_cwd_or_partial_messages_setting_starts_cold(start_daemon: Any, tmp_path: Path) -> None:
    daemon = await start_warm(start_daemon, tmp_path)
    async with api_for(daemon) as api:
        await until_warm(api, 1)
        await api.create(cwd=str(daemon.session_dir()))
        await api.create(include_partial_messages=False)
        assert (await creates(api, "warm"), await creates(api, "cold")) == (0, 2)
        body = await health(api)
        assert body["warm_agents"] == 1 and body["live_agents"] == 3  # the warm one waits on
        assert len(cli_starts(daemon)) == 2  # the warm one, and the session without partials


async def test_a_burst_larger_than_the_pool_degrades_to_cold_starts(start_daemon: Any, tmp_path: Path) -> None:
    daemon = await start_warm(start_daemon, tmp_path, warm=2)
    async with api_for(daemon) as api:
        await until_warm(api, 2)
        made = await asyncio.gather(*(api.create() for _ in range(6)))
        assert len(set(made)) == 6
        warm, cold = await creates(api, "warm"), await creates(api, "cold")
        assert warm >= 2 and warm + cold == 6
        await until_warm(api, 2)
        for session_id in made:
            assert await api.delete(session_id) == 204


async def test_warm_clis_count_against_max_live_agents_and_go_first(start_daemon: Any, tmp_path: Path) -> None:
    daemon = await start_warm(start_daemon, tmp_path, sessions={"max_live_agents": 2, "hibernate_after_s": 0})
    async with api_for(daemon) as api:
        await until_warm(api, 1)
        first = await api.create()  # takes the warm CLI; a new one starts in the free slot
        body = await until_warm(api, 1)
        assert body["live_agents"] == 2
        # A session needing a CLI gets the warm one's slot: it is stopped, not handed out.
        second = await api.create(cwd=str(daemon.session_dir()))
        body = await health(api)
        assert (body["live_agents"], body["warm_agents"]) == (2, 0)
        assert await creates(api, "cold") == 1
        await asyncio.sleep(1.5)  # the pool finds no free slot and does not take one
        assert (await health(api))["live_agents"] == 2 and len(daemon.orphans()) == 2
        # A slot frees up: the pool fills it.
        assert await api.delete(second) == 204
        body = await until_warm(api, 1)
        assert body["live_agents"] == 2
        assert await api.delete(first) == 204


async def test_a_warm_cli_that_dies_is_replaced_and_never_handed_out(start_daemon: Any, tmp_path: Path) -> None:
    daemon = await start_warm(start_daemon, tmp_path, {"turns": [], "then": "echo"})
    async with api_for(daemon) as api:
        await until_warm(api, 1)
        [dead] = daemon.orphans()
        os.kill(dead, signal.SIGKILL)
        await until_warm(api, 0, timeout=5)
        await until_warm(api, 1, timeout=10)  # after a pause of 1 s (the first failure)
        [alive] = daemon.orphans()
        assert alive != dead
        _, text, _ = await api.request("GET", "/metrics")
        assert sample(text, "agent_webkit_agent_exits_total") == 1
        session_id = await api.create()
        assert await creates(api, "warm") == 1
        stream = await api.open_stream(session_id, 0)
        await api.say(session_id, "still there?")
        events = await events_until(stream, "result")
        assert named(events, "error") == [] and "echo: still there?" in json.dumps([e.data for e in events])
        stream.close()
    assert "warm_agent_exited" in daemon.logs()


async def test_a_warm_cli_that_cannot_start_is_retried_with_a_growing_pause(start_daemon: Any, tmp_path: Path) -> None:
    crash = {"turns": [], "on_start": {"crash": {"exit_code": 9, "stderr": "no licence"}}}
    daemon = await start_warm(start_daemon, tmp_path, crash)
    async with api_for(daemon) as api:
        await asyncio.sleep(4.5)
        # Starts at about 0, 1, 3 s (pauses of 1, 2, then 4 s): not a tight loop.
        assert 2 <= len(cli_starts(daemon)) <= 4
        assert (await health(api))["warm_agents"] == 0
        failures = [json.loads(line) for line in daemon.logs().splitlines()
                    if '"warm_agent_start_failed"' in line]
        assert [f["retry_in_s"] for f in failures][:3] == [1.0, 2.0, 4.0][: len(failures)]
        assert "no licence" in failures[0]["error"] or "exit" in failures[0]["error"]
        # Creates elsewhere are not held up by the failing pool.
        session_id = await api.create(cwd=str(daemon.session_dir()))
        assert await creates(api, "cold") == 1 and await api.delete(session_id) == 204


async def test_the_real_cli_started_warm_serves_a_session_and_its_artefact_tools(
    start_daemon: Any, fake_model_url: str, tmp_path: Path
) -> None:
    """The bundled CLI connects to the daemon's MCP servers when it starts, before any
    session exists; its tool calls must reach the session it is handed to."""
    config_dir = tmp_path / "claude-config"
    config_dir.mkdir()
    env = offline_cli_env(fake_model_url, config_dir)
    assert env["ANTHROPIC_BASE_URL"] == fake_model_url  # never let the real CLI go online
    daemon = await start_daemon({"agent": {"cli_path": "", "env": env, "warm_agents": 1, "warm_agents_max": 1}})
    async with api_for(daemon) as api:
        await until_warm(api, 1, timeout=60)
        session_id = await api.create()
        assert await creates(api, "warm") == 1
        stream = await api.open_stream(session_id, 0)
        await api.say(session_id, "make artefact Warm notes")
        events = await events_until(stream, "result")
        [created] = named(events, "artefact_created")
        assert created.data["session_id"] == session_id and created.data["title"] == "Warm notes"
        assert named(events, "permission_request") == []
        stream.close()


class Watch:
    """/healthz and the pool's target polled in the background: the most seen at any time."""

    def __init__(self, api: Api) -> None:
        self.api = api
        self.most_warm = self.most_live = self.most_target = 0
        self._task = asyncio.create_task(self._poll())

    async def _poll(self) -> None:
        while True:
            body = await health(self.api)
            self.most_warm = max(self.most_warm, body["warm_agents"])
            self.most_live = max(self.most_live, body["live_agents"])
            _, text, _ = await self.api.request("GET", "/metrics")
            self.most_target = max(self.most_target, int(sample(text, "agent_webkit_agents_warm_target")))
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


async def target(api: Api) -> float:
    _, text, _ = await api.request("GET", "/metrics")
    return sample(text, "agent_webkit_agents_warm_target")


async def test_the_pool_grows_to_a_burst_serves_the_next_one_warm_and_retires_the_extras(
    start_daemon: Any, tmp_path: Path
) -> None:
    daemon = await start_warm(start_daemon, tmp_path, agent={"warm_agents_max": 4, "warm_agents_idle_s": 4})
    async with api_for(daemon) as api:
        watch = Watch(api)
        # A new host holds warm_agents_max (it has seen no burst yet)...
        await until_warm(api, 4)
        # ...and, no burst calling for them, goes back to warm_agents: the extras stop.
        await until_warm(api, 1, timeout=15)
        await until_warm(api, 1, timeout=10, key="live_agents")
        assert await target(api) == 1
        assert "warm_agents_retired" in daemon.logs()
        # A burst of 6 bigger than the pool: mostly cold; the pool grows to its ceiling of
        # 4 (not 6).
        first = await asyncio.gather(*(api.create() for _ in range(6)))
        warm, cold = await creates(api, "warm"), await creates(api, "cold")
        assert warm + cold == 6 and cold >= 4
        await until_warm(api, 4)
        assert await target(api) == 4
        # The next burst is served warm, all of it.
        second = await asyncio.gather(*(api.create() for _ in range(4)))
        assert (await creates(api, "warm"), await creates(api, "cold")) == (warm + 4, cold)
        await until_warm(api, 4)
        assert watch.most_warm == 4 and watch.most_target == 4
        assert watch.most_live <= 10 + 4  # the sessions' CLIs and the pool's, never more
        # warm_agents_idle_s after the last burst, back to one warm CLI.
        await until_warm(api, 1, timeout=15)
        # A retired CLI counts as live until its process has exited: wait for that.
        await until_warm(api, 10 + 1, timeout=10, key="live_agents")
        assert len(daemon.orphans()) == 10 + 1
        await watch.stop()
        for session_id in (*first, *second):
            assert await api.delete(session_id) == 204


async def test_the_pool_starts_several_clis_at_once_leaving_a_start_to_sessions(
    start_daemon: Any, tmp_path: Path
) -> None:
    """max_concurrent_starts = 4: the pool starts 3 at once, not one after the other."""
    slow = {"turns": [], "on_start": {"delay": 1.5}}
    daemon = await start_warm(start_daemon, tmp_path, slow, agent={"warm_agents_max": 4},
                              sessions={"max_concurrent_starts": 4})
    async with api_for(daemon) as api:
        await until_warm(api, 4, timeout=20)
        started = sorted(r["t"] for r in cli_starts(daemon))
        assert len(started) == 4
        assert started[2] - started[0] < 1.0  # three at once
        assert started[3] - started[0] > 1.2  # the fourth when one of them is done


async def test_a_growing_pool_takes_only_free_slots_and_its_clis_go_first(start_daemon: Any, tmp_path: Path) -> None:
    daemon = await start_warm(start_daemon, tmp_path, agent={"warm_agents_max": 8},
                              sessions={"max_live_agents": 3, "hibernate_after_s": 0})
    async with api_for(daemon) as api:
        watch = Watch(api)
        await until_warm(api, 3)  # its target is 8: it holds what max_live_agents leaves
        await asyncio.sleep(1.5)  # and finds no more room
        assert await target(api) == 8 and watch.most_live == 3
        # Sessions that need a CLI of their own get the warm CLIs' slots.
        made = [await api.create(cwd=str(daemon.session_dir())) for _ in range(2)]
        body = await health(api)
        assert (body["live_agents"], body["warm_agents"]) == (3, 1)
        assert await creates(api, "cold") == 2
        await asyncio.sleep(1.5)
        assert watch.most_live == 3 and len(daemon.orphans()) == 3
        await watch.stop()
        for session_id in made:
            assert await api.delete(session_id) == 204
        await until_warm(api, 3)  # the slots are free again: the pool takes them
