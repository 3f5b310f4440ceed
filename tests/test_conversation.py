"""Conversations through the daemon: the bridge's events and the decisions' first-reply-wins,
with the real SDK talking to the scripted CLI."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.conftest import Daemon
from tests.wire_client import Api, Event, Stream


@pytest.fixture
def daemon(warm_daemon: Daemon) -> Daemon:
    """These tests run against a daemon with a warm CLI, as in production."""
    return warm_daemon


WRITE = {"tool_use": {"name": "Write", "input": {"file_path": "out.txt", "content": "hello\n"}}, "permission": True}
QUESTION = {"questions": [{"question": "Which color?", "header": "Color", "multiSelect": False,
                           "options": [{"label": "Red"}, {"label": "Blue"}]}]}


async def session_with(api: Api, daemon: Daemon, scenario: dict[str, Any] | None = None) -> tuple[str, Stream, Any]:
    cwd = daemon.session_dir(scenario)
    session_id = await api.create(cwd=str(cwd))
    stream = await api.open_stream(session_id, 0)
    return session_id, stream, cwd


def names(events: list[Event]) -> list[str]:
    return [e.name for e in events]


async def test_an_echo_turn_streams_deltas_then_the_complete_message_then_the_result(api: Api, daemon: Daemon) -> None:
    session_id, stream, _ = await session_with(api, daemon)
    ready = await stream.next()
    assert ready.id == 1 and ready.name == "session_ready"
    assert ready.data == {"session_id": session_id, "protocol_version": "1.0"}
    await api.say(session_id, "hi there")
    result = await stream.until("result")
    events = stream.events
    deltas = [e for e in events if e.name == "message_delta"]
    complete = next(e for e in events if e.name == "message_complete")
    assert "".join(d.data["delta"]["text"] for d in deltas) == "echo: hi there"
    assert all(d.data["message_id"] == complete.data["message_id"] for d in deltas)
    assert complete.data["message"]["content"] == [{"type": "text", "text": "echo: hi there"}]
    assert complete.data["message"]["role"] == "assistant" and complete.data["message"]["id"] == complete.data["message_id"]
    assert result.data["session_id"] == session_id and result.data["subtype"] == "success"
    assert result.data["is_error"] is False
    assert [e.id for e in events] == list(range(1, len(events) + 1))
    states = [e.data["state"] for e in events if e.name == "session_state"]
    assert states == ["idle", "running"]
    assert (await stream.until("session_state")).data == {"state": "idle"}


async def test_blocks_of_one_message_accumulate_in_each_message_complete(api: Api, daemon: Daemon) -> None:
    scenario = {"turns": [{"steps": [{"message": [{"text": "I'll write it."}, {"tool_use": {"name": "Write", "input": {"file_path": "a"}}}]}]}]}
    session_id, stream, _ = await session_with(api, daemon, scenario)
    await api.say(session_id, "go")
    await stream.until("result")
    completes = [e for e in stream.events if e.name == "message_complete"]
    assert len(completes) == 2 and completes[0].data["message_id"] == completes[1].data["message_id"]
    assert [b["type"] for b in completes[0].data["message"]["content"]] == ["text"]
    assert [b["type"] for b in completes[1].data["message"]["content"]] == ["text", "tool_use"]
    tool_use = next(e for e in stream.events if e.name == "tool_use")
    assert tool_use.data["message_id"] == completes[0].data["message_id"]
    assert tool_use.data["tool_name"] == "Write" and tool_use.data["input"] == {"file_path": "a"}
    tool_result = next(e for e in stream.events if e.name == "tool_result")
    assert tool_result.data["tool_use_id"] == tool_use.data["tool_use_id"]
    assert tool_result.data["is_error"] is False  # absent in the CLI's frame, a boolean on the wire


async def test_tool_input_deltas_are_streamed(api: Api, daemon: Daemon) -> None:
    session_id, stream, _ = await session_with(api, daemon, {"turns": [{"steps": [WRITE]}]})
    await api.say(session_id, "go")
    await stream.until("permission_request")
    partial = [e.data["delta"] for e in stream.events if e.name == "message_delta"]
    assert any(d["type"] == "input_json_delta" for d in partial)
    assert "".join(d["partial_json"] for d in partial if d["type"] == "input_json_delta").startswith("{")


async def test_allowing_a_permission_runs_the_tool_with_the_clients_input(api: Api, daemon: Daemon) -> None:
    session_id, stream, cwd = await session_with(api, daemon, {"turns": [{"steps": [WRITE]}]})
    await api.say(session_id, "write please")
    request = await stream.until("permission_request")
    tool_use = next(e for e in stream.events if e.name == "tool_use")
    assert request.data["correlation_id"] == tool_use.data["tool_use_id"]
    assert request.data["tool_name"] == "Write"
    assert request.data["input"] == {"file_path": "out.txt", "content": "hello\n"}
    assert request.data["context"]["suggestions"] == [{"type": "setMode", "mode": "acceptEdits", "destination": "session"}]
    assert (await stream.until("session_state")).data["state"] == "awaiting_decision"
    status, _ = await api.send(session_id, {"type": "permission_response", "correlation_id": request.data["correlation_id"],
                                            "behavior": "allow", "updated_input": {"file_path": "other.txt", "content": "x"}})
    assert status == 204
    resolved = await stream.until("permission_resolved")
    assert resolved.data == {"correlation_id": request.data["correlation_id"], "behavior": "allow"}
    result = await stream.until("tool_result")
    assert result.data["is_error"] is False and "other.txt" in result.data["output"]
    await stream.until("result")
    sent = [m for m in daemon.cli_log(cwd) if m.get("type") == "control_response"]
    assert sent[-1]["response"]["response"]["updatedInput"] == {"file_path": "other.txt", "content": "x"}


async def test_allow_with_updated_permissions_reaches_the_cli(api: Api, daemon: Daemon) -> None:
    session_id, stream, cwd = await session_with(api, daemon, {"turns": [{"steps": [WRITE]}]})
    await api.say(session_id, "go")
    request = await stream.until("permission_request")
    rules = [{"type": "addRules", "rules": [{"toolName": "Write"}], "behavior": "allow", "destination": "session"}]
    status, _ = await api.send(session_id, {"type": "permission_response", "correlation_id": request.data["correlation_id"],
                                            "behavior": "allow", "updated_permissions": rules})
    assert status == 204
    await stream.until("result")
    sent = [m for m in daemon.cli_log(cwd) if m.get("type") == "control_response"]
    assert sent[-1]["response"]["response"]["updatedPermissions"] == rules
    assert sent[-1]["response"]["response"]["updatedInput"] == {"file_path": "out.txt", "content": "hello\n"}


async def test_denying_a_permission_gives_the_model_an_error_result_with_the_message(api: Api, daemon: Daemon) -> None:
    session_id, stream, _ = await session_with(api, daemon, {"turns": [{"steps": [WRITE, {"text": "ok, not writing"}]}]})
    await api.say(session_id, "go")
    request = await stream.until("permission_request")
    status, _ = await api.send(session_id, {"type": "permission_response", "correlation_id": request.data["correlation_id"],
                                            "behavior": "deny", "message": "not in prod"})
    assert status == 204
    tool_result = await stream.until("tool_result")
    assert tool_result.data["is_error"] is True and "not in prod" in str(tool_result.data["output"])
    result = await stream.until("result")
    assert result.data["subtype"] == "success"


async def test_deny_with_interrupt_ends_the_turn(api: Api, daemon: Daemon) -> None:
    session_id, stream, _ = await session_with(api, daemon, {"turns": [{"steps": [WRITE, {"text": "never said"}]}]})
    await api.say(session_id, "go")
    request = await stream.until("permission_request")
    status, _ = await api.send(session_id, {"type": "permission_response", "correlation_id": request.data["correlation_id"],
                                            "behavior": "deny", "interrupt": True})
    assert status == 204
    result = await stream.until("result")
    assert result.data["subtype"] == "error_during_execution" and result.data["is_error"] is True
    assert not any(e.name == "message_complete" and "never said" in str(e.data) for e in stream.events)


async def test_two_clients_race_to_answer_and_exactly_one_wins(api: Api, daemon: Daemon) -> None:
    session_id, stream, _ = await session_with(api, daemon, {"turns": [{"steps": [WRITE]}]})
    await api.say(session_id, "go")
    request = await stream.until("permission_request")
    cid = request.data["correlation_id"]
    replies = await asyncio.gather(*(
        api.send(session_id, {"type": "permission_response", "correlation_id": cid, "behavior": behavior})
        for behavior in ("allow", "deny", "allow", "deny")
    ))
    statuses = sorted(status for status, _ in replies)
    assert statuses == [204, 409, 409, 409]
    assert {payload["error"]["code"] for status, payload in replies if status == 409} == {"already_resolved"}
    await stream.until("result")
    status, payload = await api.send(session_id, {"type": "permission_response", "correlation_id": cid, "behavior": "allow"})
    assert status == 409 and payload["error"]["code"] == "already_resolved"


async def test_a_reply_to_an_unknown_correlation_id_gets_409_unknown(api: Api, daemon: Daemon) -> None:
    session_id, _, _ = await session_with(api, daemon)
    for message in ({"type": "permission_response", "correlation_id": "toolu_nope", "behavior": "allow"},
                    {"type": "question_response", "correlation_id": "toolu_nope", "answers": {"q": "a"}}):
        status, payload = await api.send(session_id, message)
        assert status == 409 and payload["error"]["code"] == "unknown_correlation_id"


async def test_an_answered_question_reaches_the_cli_as_allow_with_answers(api: Api, daemon: Daemon) -> None:
    session_id, stream, cwd = await session_with(api, daemon, {"turns": [{"steps": [{"ask": QUESTION}]}]})
    await api.say(session_id, "ask me")
    question = await stream.until("ask_user_question")
    assert question.data["questions"] == QUESTION
    status, _ = await api.send(session_id, {"type": "question_response", "correlation_id": question.data["correlation_id"],
                                            "answers": {"Which color?": "Blue"}})
    assert status == 204
    assert (await stream.until("question_resolved")).data == {"correlation_id": question.data["correlation_id"], "behavior": "answered"}
    tool_result = await stream.until("tool_result")
    assert '"Which color?"="Blue"' in tool_result.data["output"]
    await stream.until("result")
    sent = [m for m in daemon.cli_log(cwd) if m.get("type") == "control_response"]
    assert sent[-1]["response"]["response"] == {"behavior": "allow", "updatedInput": {**QUESTION, "answers": {"Which color?": "Blue"}}}
    status, payload = await api.send(session_id, {"type": "question_response", "correlation_id": question.data["correlation_id"],
                                                  "answers": {"Which color?": "Red"}})
    assert status == 409 and payload["error"]["code"] == "already_resolved"


async def test_a_question_response_to_a_tool_permission_gets_400(api: Api, daemon: Daemon) -> None:
    session_id, stream, _ = await session_with(api, daemon, {"turns": [{"steps": [WRITE]}]})
    await api.say(session_id, "go")
    request = await stream.until("permission_request")
    status, payload = await api.send(session_id, {"type": "question_response", "correlation_id": request.data["correlation_id"], "answers": {}})
    assert status == 400 and payload["error"]["code"] == "not_a_question"
    status, _ = await api.send(session_id, {"type": "permission_response", "correlation_id": request.data["correlation_id"], "behavior": "allow"})
    assert status == 204


async def test_queued_messages_wait_for_the_previous_turns_result(api: Api, daemon: Daemon) -> None:
    scenario = {"turns": [{"steps": [{"sleep": 0.3}, {"text": "first"}]}, {"steps": [{"text": "second"}]}, {"steps": [{"echo": True}]}]}
    session_id, stream, cwd = await session_with(api, daemon, scenario)
    for text in ("one", "two", "three"):
        await api.say(session_id, text)
    results = []
    while len(results) < 3:
        event = await stream.next()
        if event.name == "result":
            results.append(event)
    order = [(e.name, e.data.get("message", {}).get("content", [{}])[0].get("text")) for e in stream.events
             if e.name in ("message_complete", "result")]
    assert order == [("message_complete", "first"), ("result", None), ("message_complete", "second"), ("result", None),
                     ("message_complete", "echo: three"), ("result", None)]
    user_turns = [m["message"]["content"] for m in daemon.cli_log(cwd) if m.get("type") == "user"]
    assert user_turns == ["one", "two", "three"]
    costs = [r.data["total_cost_usd"] for r in results]
    turn_costs = [r.data["turn_cost_usd"] for r in results]
    assert costs == sorted(costs) and all(abs(c - 0.001) < 1e-9 for c in turn_costs)


async def test_content_blocks_with_images_reach_the_cli(api: Api, daemon: Daemon) -> None:
    session_id, stream, cwd = await session_with(api, daemon)
    blocks = [{"type": "text", "text": "what is this?"},
              {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}]
    status, _ = await api.send(session_id, {"type": "user_message", "content": blocks})
    assert status == 204
    await stream.until("result")
    sent = [m for m in daemon.cli_log(cwd) if m.get("type") == "user"]
    assert sent[-1]["message"]["content"] == blocks


async def test_mode_model_and_stop_task_go_to_the_cli(api: Api, daemon: Daemon) -> None:
    session_id, _, cwd = await session_with(api, daemon)
    for message in ({"type": "set_permission_mode", "mode": "acceptEdits"},
                    {"type": "set_model", "model": "claude-sonnet-5"},
                    {"type": "set_model", "model": None},
                    {"type": "stop_task", "task_id": "task-1"}):
        status, payload = await api.send(session_id, message)
        assert status == 204, payload
    requests = [m["request"] for m in daemon.cli_log(cwd) if m.get("type") == "control_request"]
    assert {"subtype": "set_permission_mode", "mode": "acceptEdits"} in requests
    assert any(r["subtype"] == "set_model" and r.get("model") == "claude-sonnet-5" for r in requests)
    assert any(r["subtype"] == "stop_task" and r.get("task_id") == "task-1" for r in requests)


async def test_a_mode_the_operator_did_not_allow_gets_403_and_never_reaches_the_cli(api: Api, daemon: Daemon) -> None:
    session_id, _, cwd = await session_with(api, daemon)
    status, payload = await api.send(session_id, {"type": "set_permission_mode", "mode": "bypassPermissions"})
    assert status == 403 and payload["error"]["code"] == "mode_not_allowed"
    requests = [m["request"] for m in daemon.cli_log(cwd) if m.get("type") == "control_request"]
    assert not any(r["subtype"] == "set_permission_mode" for r in requests)


async def test_mcp_server_status_changes_become_events(api: Api, daemon: Daemon) -> None:
    scenario = {"mcp": [{"name": "files", "status": "pending"}],
                "turns": [{"steps": [{"text": "a"}]}, {"steps": [{"mcp": [{"name": "files", "status": "connected"}]}, {"text": "b"}]},
                          {"steps": [{"text": "c"}]}]}
    session_id, stream, _ = await session_with(api, daemon, scenario)
    for text in ("1", "2", "3"):
        await api.say(session_id, text)
    for _ in range(3):
        await stream.until("result")
    changes = [e.data for e in stream.events if e.name == "mcp_status_change"]
    assert changes == [{"server_name": "files", "status": "pending"}, {"server_name": "files", "status": "connected"}]
