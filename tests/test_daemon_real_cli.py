"""End-to-end: the daemon hosts the SDK's REAL bundled Claude Code CLI, driven over HTTP
and SSE exactly as a wire-protocol 1.0 client drives it.

Only the model is scripted: the CLI's ANTHROPIC_BASE_URL points at the stand-in Messages
API (tests/standin/fake_model.py), which replies by keywords ("write", "ask", "slow",
"history"). Tools really run in the session's cwd.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import Daemon, api_for
from tests.standin.fake_model import ASK_INPUT, SLOW_DELTAS, fetch_requests
from tests.standin.fixtures import fake_model_url, offline_cli_env
from tests.wire_client import Api, Event, Stream, StreamRefused

__all__ = ["fake_model_url"]  # imported for pytest: it is a fixture

# A test takes a few seconds; the bound only turns a hang into a failure.
TEST_TIMEOUT_S = 30
EVENT_TIMEOUT_S = 30


async def start_real_daemon(
    start_daemon: Callable[..., Any], model_url: str, tmp_path: Path,
    overrides: dict[str, dict[str, Any]] | None = None,
) -> Daemon:
    """A daemon whose sessions run the bundled CLI, kept offline against the stand-in model."""
    config_dir = tmp_path / "claude-config"
    config_dir.mkdir()
    env = offline_cli_env(model_url, config_dir)
    assert env["ANTHROPIC_BASE_URL"] == model_url  # never let the real CLI go online
    daemon: Daemon = await start_daemon({**(overrides or {}), "agent": {"cli_path": "", "env": env}})
    return daemon


@pytest.fixture
async def real_daemon(start_daemon: Callable[..., Any], fake_model_url: str, tmp_path: Path) -> Daemon:
    return await start_real_daemon(start_daemon, fake_model_url, tmp_path)


@asynccontextmanager
async def client_for(daemon: Daemon) -> AsyncIterator[Api]:
    """A wire client, with the whole test body under one hard timeout."""
    async with asyncio.timeout(TEST_TIMEOUT_S), api_for(daemon) as api:
        yield api


async def open_session(api: Api, cwd: Path) -> tuple[str, Stream]:
    """Create a session working in `cwd` and attach to its stream (first event: session_ready)."""
    session_id = await api.create(cwd=str(cwd))
    stream = await api.open_stream(session_id)
    ready = await stream.next(EVENT_TIMEOUT_S)
    assert (ready.id, ready.name) == (1, "session_ready")
    assert ready.data == {"session_id": session_id, "protocol_version": "1.0"}
    return session_id, stream


async def events_until(stream: Stream, name: str) -> list[Event]:
    """Every event up to and including the next one named `name`."""
    start = len(stream.events)
    await stream.until(name, EVENT_TIMEOUT_S)
    return stream.events[start:]


def named(events: list[Event], name: str) -> list[Event]:
    return [e for e in events if e.name == name]


def text_of(message_complete: Event) -> str:
    blocks = message_complete.data["message"]["content"]
    return "".join(b["text"] for b in blocks if b["type"] == "text")


def streamed_text(events: list[Event]) -> str:
    return "".join(e.data["delta"].get("text", "") for e in named(events, "message_delta"))


def assert_turn_succeeded(result: Event, session_id: str) -> None:
    assert result.name == "result"
    assert result.data["session_id"] == session_id
    assert (result.data["subtype"], result.data["is_error"]) == ("success", False), result.data
    assert isinstance(result.data["total_cost_usd"], int | float)


async def model_calls(base_url: str) -> list[dict[str, Any]]:
    """The Messages API calls the CLI made to the stand-in, oldest first."""
    return [
        r for r in await fetch_requests(base_url)
        if r["path"].startswith("/v1/messages") and "count_tokens" not in r["path"]
    ]


def last_user_message(call: dict[str, Any]) -> dict[str, Any]:
    users: list[dict[str, Any]] = [m for m in call["body"]["messages"] if m["role"] == "user"]
    return users[-1]


def error_code(payload: Any) -> str:
    code: str = payload["error"]["code"]
    return code


async def test_write_runs_after_the_client_allows_it(real_daemon: Daemon) -> None:
    cwd = real_daemon.session_dir().resolve()
    async with client_for(real_daemon) as api:
        session_id, stream = await open_session(api, cwd)
        await api.say(session_id, "please write hello to out.txt")

        before = await events_until(stream, "permission_request")
        [tool_use] = named(before, "tool_use")
        request = before[-1]
        write_input = {"file_path": str(cwd / "out.txt"), "content": "hello\n"}
        assert (tool_use.data["tool_name"], tool_use.data["input"]) == ("Write", write_input)
        assert request.data["correlation_id"] == tool_use.data["tool_use_id"]
        assert (request.data["tool_name"], request.data["input"]) == ("Write", write_input)
        assert isinstance(request.data["context"], dict)
        assert "I'll write the file now." in streamed_text(before)
        assert not (cwd / "out.txt").exists()  # nothing runs before the client decides

        allow = {"type": "permission_response", "correlation_id": request.data["correlation_id"],
                 "behavior": "allow"}
        assert await api.send(session_id, allow) == (204, "")
        status, payload = await api.send(session_id, allow)
        assert (status, error_code(payload)) == (409, "already_resolved")

        after = await events_until(stream, "result")
        [tool_result] = named(after, "tool_result")
        assert tool_result.data["tool_use_id"] == tool_use.data["tool_use_id"]
        assert tool_result.data["is_error"] is False
        assert text_of(named(after, "message_complete")[-1]) == "All done."
        assert_turn_succeeded(after[-1], session_id)
        assert after[-1].data["result"] == "All done."
        stream.close()

    assert (cwd / "out.txt").read_text() == "hello\n"


async def test_a_denied_write_reaches_the_model_as_an_error_and_writes_nothing(
    real_daemon: Daemon, fake_model_url: str
) -> None:
    cwd = real_daemon.session_dir().resolve()
    async with client_for(real_daemon) as api:
        session_id, stream = await open_session(api, cwd)
        await api.say(session_id, "please write hello to out.txt")
        request = await stream.until("permission_request", EVENT_TIMEOUT_S)

        deny = {"type": "permission_response", "correlation_id": request.data["correlation_id"],
                "behavior": "deny", "message": "not in this folder"}
        assert await api.send(session_id, deny) == (204, "")

        after = await events_until(stream, "result")
        [tool_result] = named(after, "tool_result")
        assert tool_result.data["tool_use_id"] == request.data["correlation_id"]
        assert tool_result.data["is_error"] is True
        assert "not in this folder" in str(tool_result.data["output"])
        assert_turn_succeeded(after[-1], session_id)
        stream.close()

    calls = await model_calls(fake_model_url)
    [seen] = [b for b in last_user_message(calls[-1])["content"] if b.get("type") == "tool_result"]
    assert seen["tool_use_id"] == request.data["correlation_id"]
    assert seen["is_error"] is True
    assert "not in this folder" in str(seen["content"])
    assert not (cwd / "out.txt").exists()


async def test_ask_user_question_answer_reaches_the_model(real_daemon: Daemon, fake_model_url: str) -> None:
    async with client_for(real_daemon) as api:
        session_id, stream = await open_session(api, real_daemon.session_dir())
        await api.say(session_id, "ask me something")

        before = await events_until(stream, "ask_user_question")
        [tool_use] = named(before, "tool_use")
        question = before[-1]
        assert tool_use.data["tool_name"] == "AskUserQuestion"
        assert question.data == {"correlation_id": tool_use.data["tool_use_id"], "questions": ASK_INPUT}

        answer = {"type": "question_response", "correlation_id": question.data["correlation_id"],
                  "answers": {"Which color?": "Blue"}}
        assert await api.send(session_id, answer) == (204, "")

        after = await events_until(stream, "result")
        assert named(before + after, "permission_request") == []  # a question is not a permission
        assert text_of(named(after, "message_complete")[-1]) == "You chose: Blue."
        assert_turn_succeeded(after[-1], session_id)
        stream.close()

    calls = await model_calls(fake_model_url)
    assert len(calls) == 2  # the question, then the answer
    [seen] = last_user_message(calls[-1])["content"]
    assert seen["type"] == "tool_result"
    assert '"Which color?"="Blue"' in str(seen["content"])


async def test_an_interrupted_turn_ends_with_a_result_and_the_session_goes_on(real_daemon: Daemon) -> None:
    async with client_for(real_daemon) as api:
        session_id, stream = await open_session(api, real_daemon.session_dir())
        await api.say(session_id, "slow please")
        await stream.until("message_delta", EVENT_TIMEOUT_S)

        assert await api.send(session_id, {"type": "interrupt"}) == (204, "")
        interrupted = await events_until(stream, "result")
        result = interrupted[-1]
        assert result.data["session_id"] == session_id
        assert result.data["subtype"] == "error_during_execution", result.data
        # The slow reply (SLOW_DELTAS words, 0.1 s apart) was cut short.
        assert len(named(stream.events, "message_delta")) < SLOW_DELTAS

        await api.say(session_id, "history please")
        later = await events_until(stream, "result")
        assert_turn_succeeded(later[-1], session_id)
        reply = text_of(named(later, "message_complete")[-1])
        assert reply.startswith("I see 2 user messages: slow please | "), reply
        assert reply.endswith("history please"), reply
        stream.close()


async def test_a_stream_resumed_with_last_event_id_has_no_gap_and_no_duplicate(real_daemon: Daemon) -> None:
    async with client_for(real_daemon) as api:
        session_id, first = await open_session(api, real_daemon.session_dir())
        await api.say(session_id, "please write hello to out.txt")
        for _ in range(2):
            await first.until("message_delta", EVENT_TIMEOUT_S)
        last_seen = first.events[-1].id
        assert last_seen is not None
        first.close()
        await asyncio.sleep(0.5)  # the turn goes on while nobody is attached

        # Replay (everything up to the pending permission), then the live tail.
        second = await api.open_stream(session_id, last_event_id=last_seen)
        assert second.response.headers["X-Replay-From"] == str(last_seen + 1)
        request = await second.until("permission_request", EVENT_TIMEOUT_S)
        allow = {"type": "permission_response", "correlation_id": request.data["correlation_id"],
                 "behavior": "allow"}
        assert await api.send(session_id, allow) == (204, "")
        await second.until("result", EVENT_TIMEOUT_S)
        second.close()

    seen = first.events + second.events
    assert [e.id for e in seen] == list(range(1, len(seen) + 1))
    assert streamed_text(seen) == "I'll write the file now.All done."
    assert len(named(seen, "tool_use")) == len(named(seen, "tool_result")) == 1
    assert_turn_succeeded(seen[-1], session_id)


async def test_delete_ends_the_open_stream_with_done_and_the_id_is_gone(real_daemon: Daemon) -> None:
    async with client_for(real_daemon) as api:
        session_id, stream = await open_session(api, real_daemon.session_dir())
        await api.say(session_id, "slow please")
        await stream.until("message_delta", EVENT_TIMEOUT_S)

        assert await api.delete(session_id) == 204  # mid-turn
        rest = await stream.rest(EVENT_TIMEOUT_S)
        assert rest and rest[-1].name == "done" and rest[-1].data == {}
        assert stream.ended

        assert await api.delete(session_id) == 404
        status, payload = await api.send(session_id, {"type": "user_message", "content": "hi"})
        assert (status, error_code(payload)) == (404, "not_found")
        with pytest.raises(StreamRefused) as refused:
            await api.open_stream(session_id, last_event_id=0)
        assert refused.value.status == 404

    # The session's CLI process is gone after DELETE, not only at daemon shutdown.
    for _ in range(100):
        if not real_daemon.orphans():
            break
        await asyncio.sleep(0.05)
    assert real_daemon.orphans() == []


# -- SIGTERM drains (DESIGN.md §4 drain_timeout_s, §7) ------------------------------------
# "A turn that is running when SIGTERM arrives keeps running to its `result`; drain only
# stops new sessions", and POST /sessions answers 503 `draining` meanwhile (§2).

@pytest.fixture
async def draining_daemon(start_daemon: Callable[..., Any], fake_model_url: str, tmp_path: Path) -> Daemon:
    # Long enough for the slow turn (about 4 s) to finish before a forced close.
    overrides = {"server": {"drain_timeout_s": 8}}
    return await start_real_daemon(start_daemon, fake_model_url, tmp_path, overrides)


@asynccontextmanager
async def sigterm(daemon: Daemon, exit_timeout_s: float = 20) -> AsyncIterator[None]:
    """Send the daemon SIGTERM; after the body (even a failing one) wait for it to exit 0.
    Waiting here keeps the fixture from sending a second SIGTERM to a daemon mid-exit."""
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGTERM)
    try:
        yield
    finally:
        code = await asyncio.to_thread(daemon.proc.wait, exit_timeout_s)
    assert code == 0


async def test_sigterm_lets_a_running_turn_finish_with_its_result(draining_daemon: Daemon) -> None:
    async with client_for(draining_daemon) as api:
        session_id, stream = await open_session(api, draining_daemon.session_dir())
        await api.say(session_id, "slow please")
        await stream.until("message_delta", EVENT_TIMEOUT_S)

        async with sigterm(draining_daemon):
            rest = await stream.rest(20)
            names = [e.name for e in rest]
            assert "result" in names, f"the running turn was cut off by SIGTERM: {names}"
            assert_turn_succeeded(named(rest, "result")[0], session_id)
            assert streamed_text(stream.events) == "word " * SLOW_DELTAS
            assert names[-1] == "done"


async def test_sigterm_refuses_new_sessions_with_503_draining_while_a_turn_runs(
    draining_daemon: Daemon,
) -> None:
    async with client_for(draining_daemon) as api:
        session_id, stream = await open_session(api, draining_daemon.session_dir())
        await api.say(session_id, "slow please")
        await stream.until("message_delta", EVENT_TIMEOUT_S)

        async with sigterm(draining_daemon):
            await asyncio.sleep(0.3)  # let the daemon take the signal
            try:
                status, payload, headers = await api.request("POST", "/sessions")
            except aiohttp.ClientConnectionError as exc:
                pytest.fail(f"the daemon stopped listening at once instead of draining: {exc!r}")
            finally:
                stream.close()
            assert (status, error_code(payload)) == (503, "draining"), (status, payload)
            assert int(headers["Retry-After"]) >= 1


# -- Hibernation with the real CLI (DESIGN.md §8) -------------------------------------------

@pytest.fixture
async def hibernating_daemon(start_daemon: Callable[..., Any], fake_model_url: str, tmp_path: Path) -> Daemon:
    overrides = {"sessions": {"hibernate_after_s": 1}, "server": {"keepalive_s": 0.5}}
    return await start_real_daemon(start_daemon, fake_model_url, tmp_path, overrides)


async def until_state(stream: Stream, state: str, timeout: float = EVENT_TIMEOUT_S) -> list[Event]:
    start = len(stream.events)
    async with asyncio.timeout(timeout):
        while not ((e := await stream.next(timeout)).name == "session_state" and e.data["state"] == state):
            pass
    return stream.events[start:]


def history_reply(events: list[Event]) -> str:
    return text_of(named(events, "message_complete")[-1])


async def test_a_hibernated_session_wakes_with_the_real_cli_and_the_model_sees_the_earlier_turns(
    hibernating_daemon: Daemon, fake_model_url: str
) -> None:
    daemon = hibernating_daemon
    async with client_for(daemon) as api:
        session_id, stream = await open_session(api, daemon.session_dir())
        await api.say(session_id, "remember the teapot")
        await events_until(stream, "result")
        await until_state(stream, "hibernated", timeout=5)
        assert daemon.orphans() == [], "the CLI process of a hibernated session is gone"
        keepalives = len(stream.comments)
        with pytest.raises(TimeoutError):  # the stream stays open, with keepalives
            await stream.next(1.2)
        assert daemon.orphans() == [] and len(stream.comments) > keepalives

        await api.say(session_id, "what is in the history?")
        woken = await events_until(stream, "result")
        assert [e.data["state"] for e in named(woken, "session_state")][:3] == ["waking", "running"]
        assert history_reply(woken) == "I see 2 user messages: remember the teapot | what is in the history?"
        assert_turn_succeeded(woken[-1], session_id)
        assert [e.id for e in stream.events] == list(range(1, len(stream.events) + 1))
    calls = await model_calls(fake_model_url)
    turns = [m for m in calls[-1]["body"]["messages"] if m["role"] in ("user", "assistant")]
    assert [m["role"] for m in turns] == ["user", "assistant", "user"]
    assert "echo: remember the teapot" in json.dumps(turns[1])  # the earlier reply, too


async def test_a_real_cli_killed_idle_or_mid_turn_is_replaced_and_the_conversation_goes_on(
    real_daemon: Daemon,
) -> None:
    async with client_for(real_daemon) as api:
        session_id, stream = await open_session(api, real_daemon.session_dir())
        await api.say(session_id, "remember the teapot")
        await events_until(stream, "result")
        for pid in real_daemon.orphans():  # idle
            os.kill(pid, signal.SIGKILL)
        assert named(await until_state(stream, "hibernated"), "error")[0].data["code"] == "agent_exited"

        await api.say(session_id, "slow please")
        await stream.until("message_delta", EVENT_TIMEOUT_S)
        for pid in real_daemon.orphans():  # mid-turn
            os.kill(pid, signal.SIGKILL)
        cut = await until_state(stream, "hibernated")
        assert [e.data["code"] for e in named(cut, "error")] == ["agent_exited"]
        assert named(cut, "result") == []

        await api.say(session_id, "what is in the history?")
        after = await events_until(stream, "result")
        assert history_reply(after).startswith("I see 3 user messages: remember the teapot | slow please")
        assert_turn_succeeded(after[-1], session_id)


async def test_a_real_cli_wake_whose_transcript_was_removed_is_wake_failed_not_a_fresh_start(
    hibernating_daemon: Daemon, fake_model_url: str, tmp_path: Path
) -> None:
    daemon = hibernating_daemon
    async with client_for(daemon) as api:
        session_id, stream = await open_session(api, daemon.session_dir())
        await api.say(session_id, "remember the teapot")
        await events_until(stream, "result")
        await until_state(stream, "hibernated", timeout=5)
        calls_before = len(await model_calls(fake_model_url))
        _, session, _ = await api.request("GET", f"/sessions/{session_id}")
        for path in daemon.transcripts(session_id).glob(f"*/{session['claude_session_id']}.jsonl"):
            path.unlink()

        await api.say(session_id, "what is in the history?")
        failed = await until_state(stream, "hibernated")
        [error] = named(failed, "error")
        assert error.data["code"] == "wake_failed" and error.data["unsent_messages"] == 1
        assert len(await model_calls(fake_model_url)) == calls_before, "the model never saw a fresh start"
