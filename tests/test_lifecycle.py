"""Turns that end early and sessions that end: interrupt, CLI crash, bad output, shutdown."""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

import pytest

from tests.conftest import Daemon, api_for
from tests.wire_client import Api, StreamRefused

WRITE = {"tool_use": {"name": "Write", "input": {"file_path": "out.txt", "content": "hi"}}, "permission": True}


async def open_session(api: Api, daemon: Daemon, scenario: dict[str, Any]) -> tuple[str, Any]:
    session_id = await api.create(cwd=str(daemon.session_dir(scenario)))
    return session_id, await api.open_stream(session_id, 0)


async def test_interrupt_mid_stream_ends_the_turn_hands_back_what_waits_and_the_session_stays_usable(
    api: Api, daemon: Daemon,
) -> None:
    scenario = {"turns": [{"steps": [{"text": "a b c d e f g h i j k l m n o p", "delay": 0.1}, {"text": "never"}]}]}
    session_id, stream = await open_session(api, daemon, scenario)
    await api.say(session_id, "talk slowly")
    await stream.until("message_delta")
    await api.say(session_id, "queued behind the interrupted turn")
    status, _ = await api.send(session_id, {"type": "interrupt"})
    assert status == 204
    discarded = await stream.until("input_discarded")
    assert discarded.data == {"messages": [{"content": "queued behind the interrupted turn"}]}
    assert (await stream.until("session_state")).data["state"] == "cancelling"
    result = await stream.until("result")
    assert result.data["subtype"] == "error_during_execution"
    assert result.data["terminal_reason"] == "aborted_streaming"
    assert (await stream.until("session_state")).data["state"] == "idle"
    await api.say(session_id, "after the interrupt")
    nxt = await stream.until("result")
    assert nxt.data["subtype"] == "success" and nxt.data["result"] == "echo: after the interrupt"
    assert not any("never" in str(e.data) or "queued behind" in str(e.data)
                   for e in stream.events if e.name in ("message_complete", "result"))


async def test_interrupt_while_idle_is_harmless(api: Api, daemon: Daemon) -> None:
    session_id, stream = await open_session(api, daemon, {})
    status, _ = await api.send(session_id, {"type": "interrupt"})
    assert status == 204
    await api.say(session_id, "hello")
    assert (await stream.until("result")).data["result"] == "echo: hello"


async def test_interrupt_while_a_permission_is_pending_withdraws_it(api: Api, daemon: Daemon) -> None:
    session_id, stream = await open_session(api, daemon, {"turns": [{"steps": [WRITE]}]})
    await api.say(session_id, "go")
    request = await stream.until("permission_request")
    cid = request.data["correlation_id"]
    status, _ = await api.send(session_id, {"type": "interrupt"})
    assert status == 204
    cancelled = await stream.until("permission_cancelled")
    assert cancelled.data == {"correlation_id": cid}
    result = await stream.until("result")
    assert result.data["subtype"] == "error_during_execution" and result.data["terminal_reason"] == "aborted_tools"
    status, payload = await api.send(session_id, {"type": "permission_response", "correlation_id": cid, "behavior": "allow"})
    assert status == 409 and payload["error"]["code"] == "already_resolved"
    await api.say(session_id, "again")
    assert (await stream.until("result")).data["result"] == "echo: again"


async def until_state(stream: Any, state: str, timeout: float = 15) -> list[Any]:
    """Events up to and including session_state `state`."""
    seen = []
    async with asyncio.timeout(timeout):
        while True:
            event = await stream.next(timeout)
            seen.append(event)
            if event.name == "session_state" and event.data["state"] == state:
                return seen


async def test_a_crashing_cli_reports_agent_exited_with_its_stderr_and_the_session_lives_on(api: Api, daemon: Daemon) -> None:
    scenario = {"turns": [{"steps": [{"text": "starting"}, {"crash": {"exit_code": 3, "stderr": "boom: the disk is on fire"}}]}]}
    session_id, stream = await open_session(api, daemon, scenario)
    await api.say(session_id, "go")
    tail = await until_state(stream, "hibernated")
    [error] = [e for e in tail if e.name == "error"]
    assert error.data["code"] == "agent_exited"
    assert "code 3" in error.data["message"] and "the disk is on fire" in error.data["message"]
    assert "done" not in [e.name for e in tail] and daemon.orphans() == []
    # The next message starts a CLI that resumes the conversation.
    await api.say(session_id, "hello?")
    assert (await stream.until("result")).data["result"] == "echo: hello?"


async def test_a_crash_while_a_permission_is_pending_withdraws_it(api: Api, daemon: Daemon) -> None:
    session_id, stream = await open_session(api, daemon, {"turns": [{"steps": [WRITE]}]})
    await api.say(session_id, "go")
    request = await stream.until("permission_request")
    # The CLI is killed from outside while it waits for the answer.
    for pid in daemon.orphans():
        os.kill(pid, signal.SIGKILL)
    tail = await until_state(stream, "hibernated")
    names = [e.name for e in tail]
    assert names.index("error") < names.index("permission_cancelled")
    assert [e.data["code"] for e in tail if e.name == "error"] == ["agent_exited"]
    assert {"correlation_id": request.data["correlation_id"]} in [e.data for e in tail if e.name == "permission_cancelled"]
    status, payload = await api.send(
        session_id, {"type": "permission_response", "correlation_id": request.data["correlation_id"], "behavior": "allow"}
    )
    assert status == 409 and payload["error"]["code"] == "already_resolved"


async def test_a_cli_that_exits_quietly_mid_turn_does_not_leave_the_session_hanging(api: Api, daemon: Daemon) -> None:
    session_id, stream = await open_session(api, daemon, {"turns": [{"steps": [{"exit_quietly": True}]}]})
    await api.say(session_id, "go")
    tail = await until_state(stream, "hibernated")
    assert [e.data["code"] for e in tail if e.name == "error"] == ["agent_exited"]


async def test_a_stdout_line_over_the_sdk_buffer_limit_is_an_error_and_the_cli_is_replaced(api: Api, daemon: Daemon) -> None:
    # Over the SDK's buffer: 1 MiB, plus twice artefacts.max_bytes (1 MiB) while artefacts are on.
    session_id, stream = await open_session(api, daemon, {"turns": [{"steps": [{"big_line": 4_000_000}, {"text": "after"}]}]})
    await api.say(session_id, "go")
    tail = await until_state(stream, "hibernated")
    assert [e.data["code"] for e in tail if e.name == "error"] == ["agent_protocol_error"]
    assert daemon.orphans() == [], "the CLI that wrote the line is stopped"
    await api.say(session_id, "still there?")
    assert (await stream.until("result")).data["result"] == "echo: still there?"


async def test_a_cli_that_keeps_crashing_closes_the_session_as_a_crash_loop(api: Api, daemon: Daemon) -> None:
    scenario = {"turns": [{"steps": [{"crash": {"exit_code": 9, "stderr": "again"}}]}], "then": "repeat_last"}
    session_id, stream = await open_session(api, daemon, scenario)
    for _ in range(3):  # three exits in ten minutes are tolerated...
        await api.say(session_id, "go")
        await until_state(stream, "hibernated")
    await api.say(session_id, "go")  # ...the fourth is a crash loop
    tail = await stream.rest()
    assert [e.data["code"] for e in tail if e.name == "error"] == ["agent_exited", "crash_loop"]
    assert [e.name for e in tail][-2:] == ["session_state", "done"] and tail[-2].data == {"state": "closed"}
    assert await api.delete(session_id) == 404


async def test_delete_while_a_turn_runs_ends_the_cli_process(api: Api, daemon: Daemon) -> None:
    session_id, stream = await open_session(api, daemon, {"turns": [{"steps": [{"sleep": 30}]}]})
    await api.say(session_id, "go")
    await stream.until("session_state")
    assert daemon.orphans(), "the CLI should be running"
    assert await api.delete(session_id) == 204
    assert daemon.orphans() == []
    assert (await stream.rest())[-1].name == "done"


async def test_sigterm_closes_every_session_and_exits_zero(start_daemon: Any) -> None:
    daemon = await start_daemon()
    async with api_for(daemon) as api:
        ids = [await api.create() for _ in range(3)]
        streams = [await api.open_stream(i, 0) for i in ids]
        assert await daemon.stop() == 0
        for stream in streams:
            assert (await stream.rest())[-1].name == "done"
    assert daemon.orphans() == []


async def test_a_session_survives_a_client_that_disconnects_mid_stream(api: Api, daemon: Daemon) -> None:
    session_id, stream = await open_session(api, daemon, {"turns": [{"steps": [{"events": 200, "text": "q"}]}]})
    await api.say(session_id, "go")
    await stream.until("message_complete")
    stream.close()
    await asyncio.sleep(0.2)
    again = await api.open_stream(session_id, 0)
    assert (await again.until("result")).name == "result"


async def test_a_closed_session_refuses_new_streams(api: Api, daemon: Daemon) -> None:
    session_id, _ = await open_session(api, daemon, {})
    await api.delete(session_id)
    with pytest.raises(StreamRefused):
        await api.open_stream(session_id)


async def test_sigterm_drains_a_running_turn_then_exits_zero(start_daemon: Any) -> None:
    daemon = await start_daemon({"server": {"drain_timeout_s": 30}, "sessions": {"idle_timeout_s": 1}})
    async with api_for(daemon) as api:
        session_id, stream = await open_session(api, daemon, {"turns": [{"steps": [{"sleep": 1.0}, {"text": "finished"}]}]})
        await api.say(session_id, "go")
        await stream.until("session_state")
        assert daemon.proc is not None
        daemon.proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.3)
        status, payload, headers = await api.request("POST", "/sessions")
        assert status == 503 and payload["error"]["code"] == "draining" and "Retry-After" in headers
        status, payload, _ = await api.request("GET", "/readyz")
        assert status == 503 and payload["reason"] == "draining"
        # The running turn goes on to its result, and the open stream keeps the session.
        result = await stream.until("result")
        assert result.data["result"] == "finished"
        await asyncio.sleep(1.5)
        assert daemon.proc.poll() is None, "a session with a live stream must survive the drain"
        status, _ = await api.send(session_id, {"type": "user_message", "content": "during the drain"})
        assert status == 204
        assert (await stream.until("result")).data["result"] == "echo: during the drain"
        # Once the client leaves, the session idles out and the daemon exits cleanly.
        stream.close()
        for _ in range(100):
            if daemon.proc.poll() is not None:
                break
            await asyncio.sleep(0.05)
        assert daemon.proc.poll() == 0
        assert "session_idle_evicted" in daemon.logs()


async def test_drain_timeout_and_a_second_signal_cut_the_drain_short(start_daemon: Any) -> None:
    for hurry in (False, True):
        daemon = await start_daemon({"server": {"drain_timeout_s": 1.0 if not hurry else 60}})
        async with api_for(daemon) as api:
            session_id, stream = await open_session(api, daemon, {"turns": [{"steps": [{"sleep": 60}]}]})
            await api.say(session_id, "go")
            await stream.until("session_state")
            assert daemon.proc is not None
            daemon.proc.send_signal(signal.SIGTERM)
            if hurry:
                await asyncio.sleep(0.3)
                daemon.proc.send_signal(signal.SIGTERM)
            tail = await stream.rest(timeout=8)
            assert tail[-1].name == "done"
            assert await daemon.stop() == 0
        assert daemon.orphans() == []
