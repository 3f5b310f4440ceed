"""agents/sdk_reader.py against the real SDK and the scripted CLI: it takes its fast path
with the pinned SDK, it reads what `receive_messages()` reads, raises what it raises, and
a CLI writing fast reaches it in batches (one task switch for many messages)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from claude_agent_sdk import ClaudeAgentOptions, ClaudeSDKClient, ProcessError, ResultMessage
from claude_agent_sdk.types import Message

from agent_webkitd.agents import sdk_reader

STAND_IN = Path(__file__).parent / "standin" / "scripted_cli.py"
TIMEOUT_S = 10

MIXED_TURN = {
    "steps": [
        {"text": "two words"},
        {"tool_use": {"name": "Write", "input": {"file_path": "a.txt", "content": "x"}}},
        {"message": [{"text": "one"}, {"text": "message"}]},
        {"events": 5, "text": "e"},
    ]
}


@pytest.fixture
async def connect(tmp_path: Path) -> AsyncIterator[Any]:
    clients: list[ClaudeSDKClient] = []

    async def connect(name: str, scenario: dict[str, Any]) -> ClaudeSDKClient:
        cwd = tmp_path / name
        cwd.mkdir()
        (cwd / "scenario.json").write_text(json.dumps(scenario))
        client = ClaudeSDKClient(
            ClaudeAgentOptions(
                cli_path=STAND_IN,  # never the real bundled CLI
                cwd=cwd,
                include_partial_messages=True,
                permission_mode="bypassPermissions",
            )
        )
        async with asyncio.timeout(TIMEOUT_S):
            await client.connect()
        clients.append(client)
        return client

    yield connect
    for client in clients:
        await client.disconnect()


async def one_turn(client: ClaudeSDKClient, read: Any) -> list[Message]:
    """One user message, read to its result with `read` (an async iterator of messages)."""
    await client.query("go")
    got: list[Message] = []
    async with asyncio.timeout(TIMEOUT_S):
        async for message in read:
            got.append(message)
            if isinstance(message, ResultMessage):
                return got
    raise AssertionError(f"the stream ended before the result: {got}")


RANDOM = {"id", "uuid", "session_id", "message_id", "tool_use_id", "duration_ms", "duration_api_ms", "data"}


def scrub(value: Any) -> Any:
    """Without what differs between two runs (ids, uuids, times, the init's data)."""
    if isinstance(value, dict):
        return {k: scrub(v) for k, v in value.items() if k not in RANDOM}
    if isinstance(value, list):
        return [scrub(v) for v in value]
    return value


def comparable(message: Message) -> tuple[str, Any]:
    return type(message).__name__, scrub(dataclasses.asdict(message))  # type: ignore[call-overload]


async def test_the_fast_path_holds_with_this_sdk(connect: Any) -> None:
    client = await connect("one", {"turns": [{"steps": [{"text": "hi"}]}]})
    stream = sdk_reader.message_stream(client)
    assert stream is not None, "the SDK no longer holds its message stream where sdk_reader expects"
    assert isinstance(client._query._message_send, sdk_reader.EagerSend)  # type: ignore[union-attr]
    assert sdk_reader.message_stream(client) is stream  # a second reader finds it as it is


async def test_it_reads_what_receive_messages_reads(connect: Any) -> None:
    scenario = {"turns": [MIXED_TURN], "then": "repeat_last"}
    ours, theirs = await connect("ours", scenario), await connect("theirs", scenario)
    got = await one_turn(ours, sdk_reader.messages(ours))
    expected = await one_turn(theirs, theirs.receive_messages())
    assert [kind for kind, _ in map(comparable, got)] == [kind for kind, _ in map(comparable, expected)]
    for (kind, ours_fields), (_, their_fields) in zip(map(comparable, got), map(comparable, expected), strict=True):
        differ = {k: (v, their_fields.get(k)) for k, v in ours_fields.items() if their_fields.get(k) != v}
        assert not differ, f"{kind}: {differ}"
    kinds = {type(m).__name__ for m in got}
    assert {"StreamEvent", "AssistantMessage", "UserMessage", "ResultMessage"} <= kinds
    # The stream goes on where it stopped: a second reader gets the next turn whole.
    again = await one_turn(ours, sdk_reader.messages(ours))
    expected = await one_turn(theirs, theirs.receive_messages())
    assert [comparable(m) for m in again] == [comparable(m) for m in expected]


async def test_a_fast_cli_reaches_the_reader_in_batches(connect: Any) -> None:
    """The SDK's reader no longer stops at every message: what the CLI wrote while the
    daemon was busy lands in the buffer in one go (with the SDK's own send, which yields
    after each message, the reader takes them one per pass and the buffer holds one)."""
    client = await connect("fast", {"turns": [{"steps": [{"events": 500, "text": "x"}]}]})
    stream = sdk_reader.message_stream(client)
    assert stream is not None
    buffered = []
    await client.query("go")
    async with asyncio.timeout(TIMEOUT_S):
        async for message in sdk_reader.messages(client):
            buffered.append(stream.statistics().current_buffer_used)
            if len(buffered) == 1:
                time.sleep(0.3)  # noqa: ASYNC251 - a busy event loop: the CLI writes on meanwhile
            if isinstance(message, ResultMessage):
                break
    assert len(buffered) == 502  # 500 assistant messages, system/init, the result
    assert max(buffered) >= 20, f"the reader took messages one at a time: {max(buffered)} at most waiting"


async def test_a_crash_raises_what_receive_messages_raises(connect: Any) -> None:
    client = await connect("crash", {"turns": [{"steps": [{"text": "first"}, {"crash": {"exit_code": 3, "stderr": "boom"}}]}]})
    await client.query("go")
    got: list[Message] = []
    with pytest.raises(ProcessError) as raised:
        async with asyncio.timeout(TIMEOUT_S):
            async for message in sdk_reader.messages(client):
                got.append(message)
    assert raised.value.exit_code == 3
    assert any(type(m).__name__ == "AssistantMessage" for m in got)  # what came before it
