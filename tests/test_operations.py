"""What an ops team relies on: idle eviction, decision deadlines, the ops endpoints,
Prometheus metrics, logs and secrets, tried on a real daemon process."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import TOKEN, Daemon, api_for
from tests.wire_client import Api

WRITE = {"tool_use": {"name": "Write", "input": {"file_path": "out.txt", "content": "hi"}}, "permission": True}


async def scrape(daemon: Daemon) -> str:
    async with aiohttp.ClientSession() as http, http.get(daemon.base_url + "/metrics") as resp:
        assert resp.status == 200  # no token needed
        assert resp.headers["Content-Type"].startswith("text/plain")
        return await resp.text()


def sample(text: str, name: str, labels: str = "") -> float:
    """The value of one series, e.g. sample(t, "agent_webkit_sessions_evicted_total", 'reason="idle"')."""
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        series, _, value = line.rpartition(" ")
        metric, _, label_text = series.partition("{")
        if metric == name and all(part in label_text for part in labels.split(",") if part):
            return float(value)
    return 0.0


async def wait_until(predicate: Any, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not await predicate():  # noqa: ASYNC110 - polling a remote server
            await asyncio.sleep(0.05)


async def test_an_abandoned_session_is_evicted_and_a_watched_one_is_kept(start_daemon: Any) -> None:
    daemon = await start_daemon({"sessions": {"idle_timeout_s": 1}})
    async with api_for(daemon) as api:
        watched = await api.create()
        stream = await api.open_stream(watched)
        abandoned = await api.create()
        await api.say(abandoned, "hello")

        async def gone() -> bool:
            status, _, _ = await api.request("GET", f"/sessions/{abandoned}")
            return status == 404

        loop = asyncio.get_running_loop()
        started = loop.time()
        await wait_until(gone, timeout=5)
        assert 0.9 <= loop.time() - started < 3.5, "evicted promptly after the deadline"
        await asyncio.sleep(1.5)
        status, payload, _ = await api.request("GET", f"/sessions/{watched}")
        assert status == 200 and payload["subscribers"] == 1 and payload["idle_for_s"] == 0
        metrics = await scrape(daemon)
        assert sample(metrics, "agent_webkit_sessions_evicted_total", 'reason="idle"') == 1
        assert sample(metrics, "agent_webkit_sessions_live") == 1
        # Once the tab closes, the watched session idles out too, and its CLI ends.
        stream.close()

        async def watched_gone() -> bool:
            status, _, _ = await api.request("GET", f"/sessions/{watched}")
            return status == 404

        await wait_until(watched_gone, timeout=5)
        assert daemon.orphans() == []


async def test_a_running_turn_or_a_pending_decision_keeps_a_session_alive(start_daemon: Any) -> None:
    daemon = await start_daemon({"sessions": {"idle_timeout_s": 1}})
    async with api_for(daemon) as api:
        running = await api.create(cwd=str(daemon.session_dir({"turns": [{"steps": [{"sleep": 2.5}]}]})))
        waiting = await api.create(cwd=str(daemon.session_dir({"turns": [{"steps": [WRITE]}]})))
        await api.say(running, "go")
        await api.say(waiting, "go")
        await asyncio.sleep(2.2)
        for session_id in (running, waiting):
            status, _, _ = await api.request("GET", f"/sessions/{session_id}")
            assert status == 200, f"{session_id} was evicted while busy"
        _, detail, _ = await api.request("GET", f"/sessions/{waiting}")
        assert detail["state"] == "awaiting_decision"
        [pending] = detail["pending_decisions"]
        assert pending["kind"] == "permission" and pending["tool_name"] == "Write"
        assert pending["input"] == {"file_path": "out.txt", "content": "hi"}
        # An answer from the listing alone (no ring position needed) works.
        status, _ = await api.send(waiting, {"type": "permission_response", "correlation_id": pending["correlation_id"],
                                             "behavior": "allow"})
        assert status == 204


async def test_an_unanswered_permission_expires_and_the_tool_is_denied(start_daemon: Any) -> None:
    daemon = await start_daemon({"sessions": {"permission_timeout_s": 0.5}})
    async with api_for(daemon) as api:
        session_id = await api.create(cwd=str(daemon.session_dir({"turns": [{"steps": [WRITE]}]})))
        stream = await api.open_stream(session_id, 0)
        await api.say(session_id, "go")
        request = await stream.until("permission_request")
        expired = await stream.until("permission_expired", timeout=5)
        assert expired.data == {"correlation_id": request.data["correlation_id"]}
        tool_result = await stream.until("tool_result")
        assert tool_result.data["is_error"] is True and "0.5 s" in str(tool_result.data["output"])
        await stream.until("result")
        status, payload = await api.send(session_id, {"type": "permission_response",
                                                      "correlation_id": request.data["correlation_id"], "behavior": "allow"})
        assert status == 409 and payload["error"]["code"] == "already_resolved"
        assert sample(await scrape(daemon), "agent_webkit_decisions_expired_total") == 1


async def test_the_sessions_listing_shows_every_live_session(api: Api, daemon: Daemon) -> None:
    first = await api.create()
    second = await api.create(model="claude-sonnet-5")
    status, payload, _ = await api.request("GET", "/sessions")
    assert status == 200
    listed = {s["session_id"]: s for s in payload["sessions"]}
    assert set(listed) == {first, second}
    entry = listed[second]
    assert entry["state"] == "idle" and entry["subscribers"] == 0 and entry["last_seq"] == 2
    assert entry["pending_decisions"] == 0 and entry["model"] == "claude-sonnet-5"
    assert re.match(r"\d{4}-\d\d-\d\dT", entry["created_at"]) and entry["idle_for_s"] >= 0
    async with api_for(daemon, token=None) as anon:
        status, _, _ = await anon.request("GET", "/sessions")
        assert status == 401


async def test_metrics_follow_what_happened(start_daemon: Any) -> None:
    daemon = await start_daemon({"sessions": {"max_sessions": 2, "ring_size": 5}})
    async with api_for(daemon) as api:
        session_id = await api.create(cwd=str(daemon.session_dir({"turns": [{"steps": [WRITE]}]})))
        other = await api.create()
        status, _, _ = await api.request("POST", "/sessions")
        assert status == 503
        stream = await api.open_stream(session_id, 0, headers={"X-Subscriber-ID": "tab-a"})
        await api.say(session_id, "go")
        request = await stream.until("permission_request")
        cid = request.data["correlation_id"]
        body = {"type": "permission_response", "correlation_id": cid, "behavior": "allow"}
        assert (await api.request("POST", f"/sessions/{session_id}/input", body, headers={"X-Subscriber-ID": "tab-b"}))[0] == 204
        assert (await api.request("POST", f"/sessions/{session_id}/input", body, headers={"X-Subscriber-ID": "tab-a"}))[0] == 409
        await stream.until("result")
        stream.close()
        try:
            await api.open_stream(session_id, 0)
        except Exception:  # 412: the ring of 5 no longer holds seq 1
            pass
        await api.delete(other)
        text = await scrape(daemon)
    assert sample(text, "agent_webkit_sessions_created_total") == 2
    assert sample(text, "agent_webkit_sessions_live") == 1
    assert sample(text, "agent_webkit_sessions_evicted_total", 'reason="closed"') == 1
    assert sample(text, "agent_webkit_capacity_rejections_total", 'reason="at_capacity"') == 1
    assert sample(text, "agent_webkit_permissions_first_reply_winner_total", 'subscriber_id="tab-b"') == 1
    assert sample(text, "agent_webkit_permissions_first_reply_winner_total", 'subscriber_id="tab-a"') == 0
    assert sample(text, "agent_webkit_decision_conflicts_total", 'code="already_resolved"') == 1
    assert sample(text, "agent_webkit_resume_412_total") == 1
    assert sample(text, "agent_webkit_events_appended_total") >= 10
    assert sample(text, "agent_webkit_turn_duration_seconds_count") == 1
    assert sample(text, "agent_webkit_cli_spawn_seconds_count") == 2
    assert sample(text, "agent_webkit_http_requests_total", 'route="/sessions",method="POST",status="503"') == 1
    assert sample(text, "agent_webkit_http_requests_total", 'route="/sessions/{session_id}/input",status="409"') == 1
    assert "agent_webkit_subscribers_live" in text and "agent_webkit_decisions_pending" in text
    assert TOKEN not in text


async def test_subscriber_ids_are_echoed_assigned_and_bounded(api: Api, daemon: Daemon) -> None:
    session_id = await api.create()
    given = await api.open_stream(session_id, headers={"X-Subscriber-ID": "  tab<script>-7 "})
    assert given.response.headers["X-Subscriber-ID"] == "tabscript-7"
    given.close()
    assigned = await api.open_stream(session_id)
    assert re.fullmatch(r"sub-[0-9a-f]{12}", assigned.response.headers["X-Subscriber-ID"])
    assigned.close()
    # A client inventing a new id per reply cannot grow the series without bound.
    scenario = {"turns": [{"steps": [WRITE]}], "then": "repeat_last"}
    busy = await api.create(cwd=str(daemon.session_dir(scenario)))
    stream = await api.open_stream(busy, 0)
    for i in range(210):
        await api.say(busy, "go")
        request = await stream.until("permission_request")
        status, _, _ = await api.request("POST", f"/sessions/{busy}/input",
                                         {"type": "permission_response", "correlation_id": request.data["correlation_id"],
                                          "behavior": "allow"}, headers={"X-Subscriber-ID": f"id-{i}"})
        assert status == 204
        await stream.until("result")
    text = await scrape(daemon)
    series = [line for line in text.splitlines() if line.startswith("agent_webkit_permissions_first_reply_winner_total{")]
    assert len(series) <= 201
    assert sample(text, "agent_webkit_permissions_first_reply_winner_total", 'subscriber_id="overflow"') == 10


async def test_logs_are_json_lines_with_context_and_without_secrets_or_contents(start_daemon: Any) -> None:
    daemon = await start_daemon({"logging": {"level": "info"}}, env={"ANTHROPIC_API_KEY": "sk-ant-very-secret"})
    async with api_for(daemon) as api:
        session_id = await api.create(cwd=str(daemon.session_dir({"turns": [{"steps": [WRITE]}]})))
        stream = await api.open_stream(session_id, 0)
        await api.say(session_id, "the password is hunter2")
        request = await stream.until("permission_request")
        await api.send(session_id, {"type": "permission_response", "correlation_id": request.data["correlation_id"],
                                    "behavior": "allow"})
        await stream.until("result")
        stream.close()
    await daemon.stop()
    lines = [json.loads(line) for line in daemon.logs().splitlines() if line.strip()]
    assert all({"event", "level", "timestamp"} <= set(line) for line in lines)
    assert any(line["event"] == "http_request" and line["status"] == 204 and "duration_ms" in line for line in lines)
    opened = next(line for line in lines if line["event"] == "decision_opened")
    assert opened["session_id"] == session_id and opened["correlation_id"] == request.data["correlation_id"]
    assert opened["event_seq"] == request.id
    assert any(line["event"] == "listening" and line["protocol_version"] == "1.0" for line in lines)
    text = daemon.logs()
    for secret in ("hunter2", TOKEN, "sk-ant-very-secret"):
        assert secret not in text


@pytest.mark.parametrize("sandbox", ["bwrap", "none"])
async def test_no_secret_reaches_the_cli_only_a_session_key(start_daemon: Any, sandbox: str) -> None:
    """The model credential stays with the gateway, tokens and the DSN with the daemon:
    sandboxed or not, the CLI holds a session key (DESIGN §12)."""
    daemon = await start_daemon({"agent": {"sandbox": sandbox}},
                                env={"ANTHROPIC_API_KEY": "sk-ant-real", "DATABASE_URL": "postgresql://x"})
    async with api_for(daemon) as api:
        await api.create()
        [pid] = daemon.orphans()  # the one live CLI process
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")  # noqa: ASYNC240
        assert any(v.startswith(b"ANTHROPIC_API_KEY=awk-session-") for v in environ)
        assert not any(b"sk-ant-real" in v for v in environ)
        assert not any(v.startswith((b"AGENT_WEBKIT_AUTH_TOKEN=", b"DATABASE_URL=")) for v in environ)


async def test_readyz_is_ready_while_serving(daemon: Daemon) -> None:
    async with aiohttp.ClientSession() as http, http.get(daemon.base_url + "/readyz") as resp:
        assert resp.status == 200 and (await resp.json()) == {"ready": True}


async def test_cli_processes_do_not_cost_the_daemon_a_thread_each(api: Api, daemon: Daemon) -> None:
    assert daemon.proc is not None
    tasks = f"/proc/{daemon.proc.pid}/task"
    await api.create()
    before = len(os.listdir(tasks))
    for _ in range(6):
        await api.create()
    # Python 3.11's default child watcher would add a waitpid() thread per CLI process.
    assert len(os.listdir(tasks)) < before + 3


# Secrets from files (credentials.py, DESIGN.md §12): a secret passed in the environment
# stays in /proc/<pid>/environ, the block the process started with, whatever the daemon
# removes from os.environ later; one read from a file never enters it.


async def opens(daemon: Daemon, token: str) -> bool:
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession() as http, http.get(daemon.base_url + "/sessions", headers=headers) as resp:
        assert resp.status in (200, 401)
        return resp.status == 200


def environment_blocks(daemon: Daemon) -> dict[int, bytes]:
    """The environment block of the daemon and of every process it started, as /proc shows it."""
    assert daemon.proc is not None
    blocks = {}
    for pid in [daemon.proc.pid, *daemon.orphans()]:
        with contextlib.suppress(OSError):  # a process that has just ended
            blocks[pid] = Path(f"/proc/{pid}/environ").read_bytes()
    return blocks


def secret_files(folder: Path, values: dict[str, str], *, names: str) -> dict[str, str]:
    """Each secret in a file of `folder` (named as systemd's credential, or as the variable);
    the environment that points at them with NAME_FILE, if `names` == "pointers"."""
    folder.mkdir()
    env = {}
    for name, value in values.items():
        (folder / name.lower()).write_text(value + "\n")
        env[f"{name}_FILE"] = str(folder / name.lower())
    return env if names == "pointers" else {"CREDENTIALS_DIRECTORY": str(folder)}


SECRETS = {
    "AGENT_WEBKIT_AUTH_TOKEN": "admin-token-from-a-file",
    "AGENT_WEBKIT_TICKET_KEY": "ticket-key-from-a-file",
    "ANTHROPIC_API_KEY": "sk-ant-from-a-file",
    "DATABASE_URL": "postgresql://u:password-from-a-file@h/db",
}


@pytest.mark.parametrize("names", ["pointers", "credentials-directory"])
async def test_a_daemon_reads_its_secrets_from_files_and_no_environment_block_holds_one(
    start_daemon: Any, tmp_path: Path, names: str
) -> None:
    env = secret_files(tmp_path / "secrets", SECRETS, names=names)
    # The fixture's own token, emptied: an empty variable is no value, the file's is used.
    daemon = await start_daemon(env={"AGENT_WEBKIT_AUTH_TOKEN": "", **env})
    assert await opens(daemon, SECRETS["AGENT_WEBKIT_AUTH_TOKEN"])
    assert not await opens(daemon, TOKEN)
    async with api_for(daemon, SECRETS["AGENT_WEBKIT_AUTH_TOKEN"]) as api:
        await api.create()  # a CLI starts: its environment too
        blocks = environment_blocks(daemon)
    assert len(blocks) > 1
    for pid, block in blocks.items():
        for name, value in SECRETS.items():
            assert value.encode() not in block, f"{name} is in /proc/{pid}/environ"


async def test_the_variable_wins_over_its_file_which_wins_over_the_systemd_credential(
    start_daemon: Any, tmp_path: Path
) -> None:
    credentials = secret_files(tmp_path / "credentials", {"AGENT_WEBKIT_AUTH_TOKEN": "from-credential"},
                               names="credentials-directory")
    (tmp_path / "token").write_text("from-file\n")
    pointer = {"AGENT_WEBKIT_AUTH_TOKEN_FILE": str(tmp_path / "token")}
    daemon = await start_daemon(env={**credentials, **pointer})  # the fixture sets the variable
    assert [await opens(daemon, t) for t in (TOKEN, "from-file", "from-credential")] == [True, False, False]
    daemon = await start_daemon(env={"AGENT_WEBKIT_AUTH_TOKEN": "", **credentials, **pointer})
    assert [await opens(daemon, t) for t in (TOKEN, "from-file", "from-credential")] == [False, True, False]
    daemon = await start_daemon(env={"AGENT_WEBKIT_AUTH_TOKEN": "", **credentials})
    assert [await opens(daemon, t) for t in (TOKEN, "from-file", "from-credential")] == [False, False, True]


async def test_a_slow_request_is_logged_as_a_warning_and_a_long_stream_is_not(start_daemon: Any) -> None:
    """A proxy gives up on a slow host after a few seconds; the host's log, at the warning
    level production runs with, must say which request was slow."""
    daemon = await start_daemon({"logging": {"level": "warning"}, "agent": {"warm_agents": 0}})
    async with api_for(daemon) as api:
        slow_start = daemon.session_dir({"turns": [{"steps": [{"text": "hi"}]}], "on_start": {"delay": 1.3}})
        session_id = await api.create(cwd=str(slow_start))
        stream = await api.open_stream(session_id, 0)
        await asyncio.sleep(1.2)  # a stream open longer than a slow request takes
        await api.say(session_id, "hello")
        await stream.until("result")
        stream.close()
    await daemon.stop()
    lines = [json.loads(line) for line in daemon.logs().splitlines() if line.strip()]
    requests = [line for line in lines if line["event"] == "http_request"]
    assert [(r["method"], r["path"], r["level"], r["slow"]) for r in requests] == [
        ("POST", "/sessions", "warning", True)
    ], requests
    assert requests[0]["duration_ms"] >= 1000
