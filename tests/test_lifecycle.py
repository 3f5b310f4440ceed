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


async def test_interrupt_mid_stream_ends_the_turn_and_the_session_stays_usable(api: Api, daemon: Daemon) -> None:
    scenario = {"turns": [{"steps": [{"text": "a b c d e f g h i j k l m n o p", "delay": 0.1}, {"text": "never"}]}]}
    session_id, stream = await open_session(api, daemon, scenario)
    await api.say(session_id, "talk slowly")
    await stream.until("message_delta")
    await api.say(session_id, "queued behind the interrupted turn")
    status, _ = await api.send(session_id, {"type": "interrupt"})
    assert status == 204
    assert (await stream.until("session_state")).data["state"] == "cancelling"
    result = await stream.until("result")
    assert result.data["subtype"] == "error_during_execution"
    assert result.data["terminal_reason"] == "aborted_streaming"
    nxt = await stream.until("result")
    assert nxt.data["subtype"] == "success" and nxt.data["result"] == "echo: queued behind the interrupted turn"
    assert not any("never" in str(e.data) for e in stream.events if e.name == "message_complete")


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


async def test_a_crashing_cli_ends_the_session_with_agent_exited_and_its_stderr(api: Api, daemon: Daemon) -> None:
    scenario = {"turns": [{"steps": [{"text": "starting"}, {"crash": {"exit_code": 3, "stderr": "boom: the disk is on fire"}}]}]}
    session_id, stream = await open_session(api, daemon, scenario)
    await api.say(session_id, "go")
    error = await stream.until("error")
    assert error.data["code"] == "agent_exited"
    assert "3" in error.data["message"] and "the disk is on fire" in error.data["message"]
    tail = await stream.rest()
    assert tail[-1].name == "done"
    assert await api.delete(session_id) == 404
    status, _ = await api.send(session_id, {"type": "user_message", "content": "hello?"})
    assert status == 404


async def test_a_crash_while_a_permission_is_pending_withdraws_it(api: Api, daemon: Daemon) -> None:
    session_id, stream = await open_session(api, daemon, {"turns": [{"steps": [WRITE]}]})
    await api.say(session_id, "go")
    request = await stream.until("permission_request")
    # The CLI is killed from outside while it waits for the answer.
    for pid in daemon.orphans():
        os.kill(pid, signal.SIGKILL)
    tail = await stream.rest()
    assert [e.name for e in tail][-1] == "done"
    assert any(e.name == "error" and e.data["code"] == "agent_exited" for e in tail)
    assert {"correlation_id": request.data["correlation_id"]} in [e.data for e in tail if e.name == "permission_cancelled"]


async def test_a_cli_that_exits_quietly_mid_turn_does_not_leave_the_session_hanging(api: Api, daemon: Daemon) -> None:
    session_id, stream = await open_session(api, daemon, {"turns": [{"steps": [{"exit_quietly": True}]}]})
    await api.say(session_id, "go")
    error = await stream.until("error")
    assert error.data["code"] == "agent_exited"
    assert (await stream.rest())[-1].name == "done"


async def test_a_stdout_line_over_the_sdk_buffer_limit_ends_the_session_with_an_error(api: Api, daemon: Daemon) -> None:
    session_id, stream = await open_session(api, daemon, {"turns": [{"steps": [{"big_line": 2_000_000}, {"text": "after"}]}]})
    await api.say(session_id, "go")
    error = await stream.until("error", timeout=15)
    assert error.data["code"] == "agent_protocol_error"
    assert (await stream.rest(timeout=15))[-1].name == "done"


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
