"""End-to-end: the real ClaudeSDKClient drives the real bundled Claude Code CLI.

Only the model is scripted (tests/standin/fake_model.py, reached through
ANTHROPIC_BASE_URL); the CLI really runs its tools in a temporary cwd.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from claude_agent_sdk import (
    AssistantMessage,
    ClaudeSDKClient,
    Message,
    PermissionResult,
    PermissionResultAllow,
    ResultMessage,
    StreamEvent,
    TextBlock,
    ToolPermissionContext,
)

from tests.standin.fake_model import fetch_requests
from tests.standin.fixtures import fake_model_url, real_cli_options

__all__ = ["fake_model_url"]  # imported for pytest: it is a fixture

pytestmark = pytest.mark.asyncio

# A test takes about a second; the bound only turns a hang into a failure. On
# timeout the SDK's close() adds up to 5 s (the CLI finishes its turn after stdin
# EOF), or 15 s if it must escalate to SIGTERM and SIGKILL.
TEST_TIMEOUT_S = 15


async def run_turn(client: ClaudeSDKClient, prompt: str) -> list[Message]:
    await client.query(prompt)
    return [message async for message in client.receive_response()]


def texts(messages: list[Message]) -> list[str]:
    return [
        block.text
        for message in messages
        if isinstance(message, AssistantMessage)
        for block in message.content
        if isinstance(block, TextBlock)
    ]


def result_of(messages: list[Message]) -> ResultMessage:
    assert isinstance(messages[-1], ResultMessage), messages[-1]
    return messages[-1]


async def test_write_tool_runs_after_permission_allow(fake_model_url: str, tmp_path: Path) -> None:
    asked: list[tuple[str, dict[str, Any]]] = []

    async def can_use_tool(
        name: str, tool_input: dict[str, Any], context: ToolPermissionContext
    ) -> PermissionResult:
        asked.append((name, tool_input))
        return PermissionResultAllow()

    options = real_cli_options(fake_model_url, tmp_path, can_use_tool)
    async with asyncio.timeout(TEST_TIMEOUT_S), ClaudeSDKClient(options) as client:
        messages = await run_turn(client, "please write hello to out.txt")

    out = tmp_path / "work" / "out.txt"
    assert asked == [("Write", {"file_path": str(out), "content": "hello\n"})]
    assert out.read_text() == "hello\n"
    assert texts(messages) == ["I'll write the file now.", "All done."]
    # include_partial_messages: the raw SSE events come through too.
    deltas = [
        m.event["delta"].get("text")
        for m in messages
        if isinstance(m, StreamEvent) and m.event["type"] == "content_block_delta"
    ]
    assert "".join(d for d in deltas if d) == "I'll write the file now.All done."
    result = result_of(messages)
    # An API failure also has subtype "success", but is_error True.
    assert (result.subtype, result.is_error, result.result) == ("success", False, "All done.")


async def test_ask_user_question_answer_reaches_model(fake_model_url: str, tmp_path: Path) -> None:
    asked: list[str] = []

    async def can_use_tool(
        name: str, tool_input: dict[str, Any], context: ToolPermissionContext
    ) -> PermissionResult:
        asked.append(name)
        # AskUserQuestion is answered by allowing it with the answers added.
        return PermissionResultAllow(
            updated_input={**tool_input, "answers": {"Which color?": "Blue"}}
        )

    options = real_cli_options(fake_model_url, tmp_path, can_use_tool)
    async with asyncio.timeout(TEST_TIMEOUT_S), ClaudeSDKClient(options) as client:
        messages = await run_turn(client, "ask me something")

    assert asked == ["AskUserQuestion"]
    assert texts(messages) == ["You chose: Blue."]
    result = result_of(messages)
    assert (result.subtype, result.is_error) == ("success", False)

    model_calls = [
        r for r in await fetch_requests(fake_model_url) if r["path"].startswith("/v1/messages")
    ]
    assert len(model_calls) == 2  # the question, then the answer
    last_user = [m for m in model_calls[-1]["body"]["messages"] if m["role"] == "user"][-1]
    [tool_result] = last_user["content"]
    assert tool_result["type"] == "tool_result"
    assert '"Which color?"="Blue"' in str(tool_result["content"])


async def test_interrupted_turn_then_history(fake_model_url: str, tmp_path: Path) -> None:
    async def can_use_tool(
        name: str, tool_input: dict[str, Any], context: ToolPermissionContext
    ) -> PermissionResult:
        raise AssertionError(f"no tool expected, got {name}")

    options = real_cli_options(fake_model_url, tmp_path, can_use_tool)
    async with asyncio.timeout(TEST_TIMEOUT_S), ClaudeSDKClient(options) as client:
        await client.query("slow please")
        messages: list[Message] = []
        interrupted_once = False
        async for message in client.receive_response():
            messages.append(message)
            is_delta = (
                isinstance(message, StreamEvent) and message.event["type"] == "content_block_delta"
            )
            if is_delta and not interrupted_once:
                interrupted_once = True
                await client.interrupt()  # ~4 s of the slow stream are still to come
        interrupted = result_of(messages)
        assert (interrupted.subtype, interrupted.terminal_reason) == (
            "error_during_execution",
            "aborted_streaming",
        )

        # The session stays usable and the model sees both user turns.
        later = await run_turn(client, "what history do you see")

    [reply] = texts(later)
    assert reply.startswith("I see 2 user messages: slow please | ")
    assert reply.endswith("what history do you see")
    assert result_of(later).subtype == "success"
