"""Contract tests for the scripted CLI stand-in (tests/standin/scripted_cli.py).

They drive the stand-in through the real `ClaudeSDKClient`, check the behaviour the
daemon's tests rely on, and compare its frames with frames recorded between the real
SDK and the real Claude Code CLI (/work/shared/reference/real-cli-frames/).
"""

from __future__ import annotations

import asyncio
import gc
import json
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from claude_agent_sdk import (
    AssistantMessage,
    ClaudeAgentOptions,
    ClaudeSDKClient,
    CLIConnectionError,
    CLIJSONDecodeError,
    InMemorySessionStore,
    PermissionResultAllow,
    PermissionResultDeny,
    ProcessError,
    ResultError,
    ResultMessage,
    StreamEvent,
    SystemMessage,
    TextBlock,
    ToolPermissionContext,
    ToolResultBlock,
    ToolUseBlock,
    UserMessage,
    get_session_messages_from_store,
    project_key_for_directory,
)
from claude_agent_sdk.types import Message, PermissionUpdate, SessionKey, SessionStoreEntry

from tests.standin.scripted_cli import option

STAND_IN = Path(__file__).parent / "standin" / "scripted_cli.py"
# Real SDK<->CLI traffic recorded from claude-agent-sdk 0.2.189 and its bundled CLI 2.1.332
# (a copy of shared/reference/real-cli-frames, kept in the repo so CI always has it).
REAL_FRAMES = Path(__file__).parent / "reference" / "real-cli-frames"
TIMEOUT_S = 5

Frame = dict[str, Any]
T = TypeVar("T")
Connect = Callable[[ClaudeAgentOptions], Awaitable[ClaudeSDKClient]]
PermissionCallback = Callable[
    [str, dict[str, Any], ToolPermissionContext],
    Awaitable[PermissionResultAllow | PermissionResultDeny],
]

WRITE_INPUT = {"file_path": "out.txt", "content": "hello\n"}
WRITE = {"tool_use": {"name": "Write", "input": WRITE_INPUT}, "permission": True}
QUESTION = {
    "question": "Which color?",
    "header": "Color",
    "multiSelect": False,
    "options": [{"label": "Red"}, {"label": "Blue"}],
}
REJECTED_TEXT = (
    "The user doesn't want to proceed with this tool use. The tool use was rejected "
    "(eg. if it was a file edit, the new_string was NOT written to the file). STOP what "
    "you are doing and wait for the user to tell you how to proceed."
)


# --- a recording: what one side said, from the stand-in's log or a real recording -----


@dataclass
class Recording:
    """CLI->SDK frames, the SDK->CLI frames, and the CLI's exit codes."""

    frames: list[Frame] = field(default_factory=list)
    inbound: list[Frame] = field(default_factory=list)
    exit_codes: list[int] = field(default_factory=list)

    @classmethod
    def read(cls, path: Path, out_dir: str, in_dir: str) -> Recording:
        recording = cls()
        for line in path.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            if record["dir"] == out_dir:
                recording.frames.append(json.loads(record["line"]))
            elif record["dir"] == in_dir:
                recording.inbound.append(json.loads(record["line"]))
            elif record["dir"] == "exit":  # the stand-in logs `code`, the recordings `line`
                recording.exit_codes.append(int(record.get("code", record.get("line"))))
        return recording

    @classmethod
    def real(cls, name: str) -> Recording:
        return cls.read(REAL_FRAMES / name, out_dir="cli->sdk", in_dir="sdk->cli")

    def of_kind(self, kind: str) -> list[Frame]:
        return [f for f in self.frames if frame_kind(f, self.request_subtypes()) == kind]

    def request_subtypes(self) -> dict[str, str]:
        return {
            f["request_id"]: f["request"]["subtype"]
            for f in self.inbound
            if f.get("type") == "control_request"
        }

    def kinds(self) -> set[str]:
        subtypes = self.request_subtypes()
        return {frame_kind(f, subtypes) for f in self.frames}


def frame_kind(frame: Frame, request_subtypes: dict[str, str]) -> str:
    """Group frames the way their shapes differ: by type and subtype or content."""
    kind = str(frame.get("type"))
    if kind in ("system", "result"):
        return f"{kind}/{frame.get('subtype')}"
    if kind == "stream_event":
        event = frame["event"]
        inner = event.get("delta", {}).get("type") or event.get("content_block", {}).get("type")
        return f"stream_event/{event['type']}" + (f"/{inner}" if inner else "")
    if kind == "assistant":
        return f"assistant/{frame['message']['content'][0]['type']}"
    if kind == "user":
        content = frame["message"]["content"]
        if frame.get("isReplay"):
            return "user/replay"
        return f"user/{content[0]['type'] if isinstance(content, list) else 'string'}"
    if kind == "control_request":
        return f"control_request/{frame['request']['subtype']}"
    if kind == "control_response":
        return f"control_response/{request_subtypes.get(frame['response']['request_id'], '?')}"
    return kind


def key_paths(frame: Frame) -> set[str]:
    """Top-level keys, and the keys one level into the objects the SDK unpacks."""
    paths = set(frame)
    for name in ("message", "request", "event", "response"):
        inner = frame.get(name)
        if not isinstance(inner, dict):
            continue
        paths |= {f"{name}.{key}" for key in inner}
        for sub in ("delta", "content_block", "message"):
            if isinstance(inner.get(sub), dict):
                paths |= {f"{name}.{sub}.{key}" for key in inner[sub]}
        if isinstance(inner.get("content"), list):
            paths |= {
                f"{name}.content[].{key}"
                for block in inner["content"]
                if isinstance(block, dict)
                for key in block
            }
    return paths


def value_at(frame: Frame, path: str) -> Any:
    value: Any = frame
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


# Keys read by the SDK (message_parser.py, _internal/query.py, subprocess_cli.py), plus
# the stream-event keys a consumer of StreamEvent.event (the daemon's bridge) reads.
READ_KEYS = {
    "type",
    "subtype",
    "session_id",
    "uuid",
    "parent_tool_use_id",
    "tool_use_result",
    "origin",
    "error",
    "user_message_uuid",
    "user_message_uuids",
    "state",
    "sdk_host_only",
    "claude_code_version",
    "task_id",
    "isReplay",
    "message.content",
    "message.model",
    "message.usage",
    "message.id",
    "message.stop_reason",
    "message.content[].type",
    "message.content[].text",
    "message.content[].id",
    "message.content[].name",
    "message.content[].input",
    "message.content[].tool_use_id",
    "message.content[].content",
    "message.content[].is_error",
    "duration_ms",
    "duration_api_ms",
    "is_error",
    "num_turns",
    "stop_reason",
    "total_cost_usd",
    "usage",
    "result",
    "structured_output",
    "modelUsage",
    "permission_denials",
    "deferred_tool_use",
    "errors",
    "api_error_status",
    "terminal_reason",
    "event",
    "event.type",
    "event.index",
    "event.delta.type",
    "event.delta.text",
    "event.delta.partial_json",
    "event.delta.stop_reason",
    "event.content_block.type",
    "event.content_block.id",
    "event.content_block.name",
    "event.message.id",
    "event.message.model",
    "request_id",
    "request",
    "request.subtype",
    "request.tool_name",
    "request.input",
    "request.permission_suggestions",
    "request.tool_use_id",
    "request.agent_id",
    "request.blocked_path",
    "request.decision_reason",
    "request.title",
    "request.display_name",
    "request.description",
    "request.requires_user_interaction",
    "response",
    "response.subtype",
    "response.request_id",
    "response.response",
    "response.error",
}

# Fields whose values the stand-in must take only from the set the real CLI used.
FIXED_VALUES = (
    "sdk_host_only",
    "parent_tool_use_id",
    "state",
    "status",
    "is_error",
    "stop_reason",
    "terminal_reason",
    "message.type",
    "message.role",
    "message.stop_reason",
    "event.type",
    "event.delta.type",
    "event.delta.stop_reason",
    "response.subtype",
    "request.requires_user_interaction",
)


def assert_frames_match_the_real_cli(ours: Recording, real_file: str, kinds: set[str]) -> None:
    """For each kind, our frames carry every key the real CLI always sent and the SDK
    reads, no key the real CLI never sent, and real values for the fixed fields."""
    real = Recording.real(real_file)
    assert kinds <= real.kinds(), f"not in {real_file}: {kinds - real.kinds()}"
    assert kinds <= ours.kinds(), f"the stand-in never sent {kinds - ours.kinds()}"
    for kind in sorted(kinds):
        real_paths = [key_paths(f) for f in real.of_kind(kind)]
        always = set.intersection(*real_paths) & READ_KEYS
        ever = set.union(*real_paths)
        for frame in ours.of_kind(kind):
            paths = key_paths(frame)
            assert always <= paths, f"{kind}: missing {sorted(always - paths)} in {frame}"
            assert paths <= ever, f"{kind}: the real CLI never sends {sorted(paths - ever)}"
            for path in FIXED_VALUES:
                if path in paths:
                    real_values = {json.dumps(value_at(f, path)) for f in real.of_kind(kind)}
                    ours_value = json.dumps(value_at(frame, path))
                    assert ours_value in real_values, (
                        f"{kind}: {path}={ours_value}, real {real_values}"
                    )


def all_real_kinds() -> set[str]:
    return set().union(*(Recording.real(p.name).kinds() for p in REAL_FRAMES.glob("*.jsonl")))


# Transcript entry keys the SDK reads (sessions.py rebuilds the conversation from them,
# session_resume.py and the mirror batcher move them) or a resume needs.
ENTRY_READ_KEYS = {
    "type",
    "uuid",
    "parentUuid",
    "sessionId",
    "isSidechain",
    "timestamp",
    "cwd",
    "message",
    "message.id",
    "message.role",
    "message.content",
    "lastPrompt",
    "leafUuid",
}


def mirrored_entries(recording: Recording) -> list[Frame]:
    return [entry for f in recording.of_kind("transcript_mirror") for entry in f["entries"]]


def assert_transcript_matches_the_real_cli(ours: Recording, real_file: str) -> None:
    """Our transcript_mirror entries are of types the real CLI mirrors, carry every key the
    real ones always do and the SDK reads, and no key the real CLI never writes; and, as
    with the real CLI, they are sent at the same points of a turn and hold the conversation."""
    real = Recording.real(real_file)
    real_paths: dict[str, list[set[str]]] = {}
    for entry in mirrored_entries(real):
        real_paths.setdefault(entry["type"], []).append(key_paths(entry))
    assert mirrored_entries(ours), "the stand-in mirrored nothing"
    for entry in mirrored_entries(ours):
        kind, paths = entry["type"], key_paths(entry)
        assert kind in real_paths, f"the real CLI never mirrors a {kind} entry"
        always = set.intersection(*real_paths[kind]) & ENTRY_READ_KEYS
        assert always <= paths, f"{kind} entry: missing {sorted(always - paths)} in {entry}"
        ever = set.union(*real_paths[kind])
        assert paths <= ever, f"{kind} entry: the real CLI never writes {sorted(paths - ever)}"
    for recording in (real, ours):
        assert mirror_points(recording) == {("transcript_mirror", "transcript_mirror")}
        assert_the_conversation_is_mirrored(recording)


def mirror_points(recording: Recording) -> set[tuple[str, str | None]]:
    """For each result, the kind of the frame just before it and of the first frame after
    it that is not a session state change."""
    subtypes = recording.request_subtypes()
    kinds = [frame_kind(f, subtypes) for f in recording.frames]
    return {
        (
            kinds[i - 1],
            next((k for k in kinds[i + 1 :] if k != "system/session_state_changed"), None),
        )
        for i, kind in enumerate(kinds)
        if kind.startswith("result/")
    }


def assert_the_conversation_is_mirrored(recording: Recording) -> None:
    """Every user and assistant frame is mirrored as an entry with the same uuid, and the
    entries chain: each one's parentUuid was mirrored before it."""
    entries = mirrored_entries(recording)
    uuids = {entry.get("uuid") for entry in entries}
    sent = {
        f["uuid"]
        for f in recording.frames
        if f["type"] in ("user", "assistant") and not f.get("isReplay")
    }
    assert sent <= uuids, f"not mirrored: {sent - uuids}"
    seen: set[str] = set()
    for entry in entries:
        if entry["type"] in ("user", "assistant"):
            assert entry["parentUuid"] is None or entry["parentUuid"] in seen, entry
        if "uuid" in entry:
            seen.add(entry["uuid"])


# --- running the stand-in under the real SDK ------------------------------------------


@dataclass
class StandIn:
    """The stand-in for one test: its scenario, its log and options for the real SDK."""

    workdir: Path
    stderr_lines: list[str] = field(default_factory=list)
    stderr_seen: asyncio.Event = field(default_factory=asyncio.Event)

    def on_stderr(self, line: str) -> None:
        self.stderr_lines.append(line)
        self.stderr_seen.set()

    async def wait_for_stderr(self, line: str) -> None:
        while line not in self.stderr_lines:
            self.stderr_seen.clear()
            await self.stderr_seen.wait()

    @property
    def log_path(self) -> Path:
        return self.workdir / "scripted-cli.log"

    @property
    def config_dir(self) -> Path:
        """The CLI's CLAUDE_CONFIG_DIR: never the developer's ~/.claude."""
        return self.workdir / "config"

    def options(
        self,
        scenario: Frame | None = None,
        can_use_tool: PermissionCallback | None = None,
        **kwargs: Any,
    ) -> ClaudeAgentOptions:
        env = {"SCRIPTED_CLI_LOG": str(self.log_path), "CLAUDE_CONFIG_DIR": str(self.config_dir)}
        if scenario is not None:
            path = self.workdir / "scenario.json"
            path.write_text(json.dumps(scenario), encoding="utf-8")
            env["SCRIPTED_CLI_SCENARIO"] = str(path)
        return ClaudeAgentOptions(
            cli_path=STAND_IN,  # never the real bundled CLI
            cwd=self.workdir,
            env=env,
            include_partial_messages=kwargs.pop("include_partial_messages", True),
            can_use_tool=can_use_tool,
            stderr=self.on_stderr,
            **kwargs,
        )

    def recording(self) -> Recording:
        return Recording.read(self.log_path, out_dir="out", in_dir="in")

    def logged(self, direction: str) -> list[Frame]:
        records = [json.loads(line) for line in self.log_path.read_text().splitlines()]
        return [r for r in records if r["dir"] == direction]

    def model_inputs(self) -> list[list[Frame]]:
        """Per turn, the conversation the stand-in's model was given."""
        return [record["messages"] for record in self.logged("model")]


@pytest.fixture
def stand_in(tmp_path: Path) -> StandIn:
    return StandIn(workdir=tmp_path)


class MirroredStore(InMemorySessionStore):
    """The SDK's in-memory store, telling when a turn is wholly mirrored: the CLI sends a
    turn's last transcript_mirror frame (cost-state) after the result, so it can still be
    on its way when the caller has the result in hand."""

    def __init__(self) -> None:
        super().__init__()
        self.turns_mirrored = 0
        self._appended = asyncio.Event()

    async def append(self, key: SessionKey, entries: list[SessionStoreEntry]) -> None:
        await super().append(key, entries)
        self.turns_mirrored += sum(1 for entry in entries if entry.get("type") == "cost-state")
        self._appended.set()

    async def wait_for_turns(self, count: int) -> None:
        async with asyncio.timeout(TIMEOUT_S):
            while self.turns_mirrored < count:
                self._appended.clear()
                await self._appended.wait()


async def reply_to(client: ClaudeSDKClient, prompt: str) -> list[Message]:
    await client.query(prompt)
    return await collect_response(client)


async def collect_response(client: ClaudeSDKClient) -> list[Message]:
    async with asyncio.timeout(TIMEOUT_S):
        return [message async for message in client.receive_response()]


@pytest.fixture
async def connected() -> AsyncIterator[Connect]:
    clients: list[ClaudeSDKClient] = []

    async def connect(options: ClaudeAgentOptions) -> ClaudeSDKClient:
        assert options.cli_path == STAND_IN
        client = ClaudeSDKClient(options)
        async with asyncio.timeout(TIMEOUT_S):
            await client.connect()
        clients.append(client)
        return client

    yield connect
    for client in clients:
        await client.disconnect()


def of_type(messages: list[Message], cls: type[T]) -> list[T]:
    return [m for m in messages if isinstance(m, cls)]


def result_of(messages: list[Message]) -> ResultMessage:
    assert isinstance(messages[-1], ResultMessage), messages[-1]
    return messages[-1]


def blocks_of(messages: list[Message], cls: type[T]) -> list[T]:
    return [
        block
        for m in messages
        if isinstance(m, AssistantMessage | UserMessage) and isinstance(m.content, list)
        for block in m.content
        if isinstance(block, cls)
    ]


# --- behaviour, compared with the real CLI --------------------------------------------


async def test_stand_in_permission_frames_match_the_real_cli(
    stand_in: StandIn, connected: Connect
) -> None:
    asked: list[tuple[str, dict[str, Any], ToolPermissionContext]] = []

    async def allow(
        tool: str, input: dict[str, Any], ctx: ToolPermissionContext
    ) -> PermissionResultAllow:
        asked.append((tool, input, ctx))
        return PermissionResultAllow()

    scenario = {
        "turns": [
            {
                "steps": [
                    {"message": [{"text": "I'll write the file now."}, WRITE]},
                    {"text": "All done. The file is written."},
                ]
            }
        ]
    }
    client = await connected(stand_in.options(scenario, allow))
    messages = await reply_to(client, "please write hello to out.txt")

    [tool_use] = blocks_of(messages, ToolUseBlock)
    assert [(t, i) for t, i, _ in asked] == [("Write", WRITE_INPUT)]
    ctx = asked[0][2]
    assert ctx.tool_use_id == tool_use.id
    assert ctx.display_name == "Write" and ctx.description == "out.txt"
    assert ctx.suggestions == [
        PermissionUpdate(type="setMode", mode="acceptEdits", destination="session")
    ]

    first, second, last = of_type(messages, AssistantMessage)
    assert first.message_id == second.message_id != last.message_id
    assert first.content == [TextBlock("I'll write the file now.")]
    assert second.content == [ToolUseBlock(tool_use.id, "Write", WRITE_INPUT)]
    assert blocks_of(messages, ToolResultBlock) == [
        ToolResultBlock(tool_use.id, "ok: " + json.dumps(WRITE_INPUT), is_error=None)
    ]
    deltas = [
        m.event["delta"]
        for m in of_type(messages, StreamEvent)
        if m.event["type"] == "content_block_delta"
    ]
    assert (
        "".join(d.get("text", "") for d in deltas)
        == "I'll write the file now.All done. The file is written."
    )
    assert [json.loads(d["partial_json"]) for d in deltas if "partial_json" in d] == [WRITE_INPUT]

    [init] = [m for m in of_type(messages, SystemMessage) if m.subtype == "init"]
    result = result_of(messages)
    assert (result.subtype, result.is_error, result.terminal_reason) == (
        "success",
        False,
        "completed",
    )
    assert result.result == "All done. The file is written."
    assert result.total_cost_usd == 0.001
    assert result.session_id == init.data["session_id"] == first.session_id

    recording = stand_in.recording()
    [answer] = [f for f in recording.inbound if f["type"] == "control_response"]
    assert answer["response"]["response"] == {"behavior": "allow", "updatedInput": WRITE_INPUT}
    states = [f["state"] for f in recording.of_kind("system/session_state_changed")]
    assert states == ["running", "requires_action", "running", "idle"]
    assert_frames_match_the_real_cli(
        recording,
        "01-permission-allow-write.jsonl",
        {
            "control_response/initialize",
            "system/session_state_changed",
            "system/init",
            "system/status",
            "stream_event/message_start",
            "stream_event/content_block_start/text",
            "stream_event/content_block_delta/text_delta",
            "stream_event/content_block_stop",
            "stream_event/content_block_start/tool_use",
            "stream_event/content_block_delta/input_json_delta",
            "stream_event/message_delta",
            "stream_event/message_stop",
            "assistant/text",
            "assistant/tool_use",
            "control_request/can_use_tool",
            "user/tool_result",
            "result/success",
        },
    )
    assert recording.kinds() <= all_real_kinds()


async def test_stand_in_ask_user_question_frames_match_the_real_cli(
    stand_in: StandIn, connected: Connect
) -> None:
    async def answer(
        tool: str, input: dict[str, Any], ctx: ToolPermissionContext
    ) -> PermissionResultAllow:
        assert tool == "AskUserQuestion"
        return PermissionResultAllow(updated_input={**input, "answers": {"Which color?": "Blue"}})

    scenario = {"turns": [{"steps": [{"ask": {"questions": [QUESTION]}}, {"text": "Blue it is."}]}]}
    client = await connected(stand_in.options(scenario, answer))
    messages = await reply_to(client, "ASK me something")

    [tool_use] = blocks_of(messages, ToolUseBlock)
    assert (tool_use.name, tool_use.input) == ("AskUserQuestion", {"questions": [QUESTION]})
    [tool_result] = blocks_of(messages, ToolResultBlock)
    assert tool_result.content == (
        'Your questions have been answered: "Which color?"="Blue". '
        "You can now continue with these answers in mind."
    )
    assert tool_result.is_error is None
    [user] = [m for m in of_type(messages, UserMessage) if m.tool_use_result]
    assert user.tool_use_result == {"questions": [QUESTION], "answers": {"Which color?": "Blue"}}
    assert result_of(messages).result == "Blue it is."

    recording = stand_in.recording()
    [request] = recording.of_kind("control_request/can_use_tool")
    assert request["request"]["requires_user_interaction"] is True
    [answer_frame] = [f for f in recording.inbound if f["type"] == "control_response"]
    assert answer_frame["response"]["response"]["updatedInput"]["answers"] == {
        "Which color?": "Blue"
    }
    assert_frames_match_the_real_cli(
        recording,
        "02-ask-question-mode-model-interrupt.jsonl",
        {
            "assistant/tool_use",
            "control_request/can_use_tool",
            "user/tool_result",
            "stream_event/content_block_start/tool_use",
            "result/success",
        },
    )


async def test_stand_in_interrupt_while_a_permission_is_pending_matches_the_real_cli(
    stand_in: StandIn, connected: Connect
) -> None:
    entered, cancelled = asyncio.Event(), asyncio.Event()

    async def never_answers(
        tool: str, input: dict[str, Any], ctx: ToolPermissionContext
    ) -> PermissionResultAllow:
        entered.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        raise AssertionError("unreachable")

    client = await connected(stand_in.options({"turns": [{"steps": [WRITE]}]}, never_answers))
    await client.query("please write hello")
    response = asyncio.create_task(collect_response(client))
    async with asyncio.timeout(TIMEOUT_S):
        await entered.wait()
        await client.interrupt()
        messages = await response
        await cancelled.wait()

    result = result_of(messages)
    assert (result.subtype, result.is_error, result.terminal_reason) == (
        "error_during_execution",
        True,
        "aborted_tools",
    )
    [tool_use] = blocks_of(messages, ToolUseBlock)
    assert blocks_of(messages, ToolResultBlock) == [
        ToolResultBlock(tool_use.id, REJECTED_TEXT, is_error=True)
    ]
    assert TextBlock("[Request interrupted by user for tool use]") in blocks_of(messages, TextBlock)

    recording = stand_in.recording()
    [request] = recording.of_kind("control_request/can_use_tool")
    [cancel] = recording.of_kind("control_cancel_request")
    assert cancel["request_id"] == request["request_id"]
    answered = {
        f["response"]["request_id"] for f in recording.inbound if f["type"] == "control_response"
    }
    assert request["request_id"] not in answered  # the SDK dropped the cancelled callback

    # The session stays usable; the cost keeps adding up.
    messages = await reply_to(client, "hello again")
    assert blocks_of(messages, TextBlock) == [TextBlock("echo: hello again")]
    assert (result_of(messages).subtype, result_of(messages).total_cost_usd) == ("success", 0.002)

    assert_frames_match_the_real_cli(
        stand_in.recording(),
        "04-interrupt-while-permission-pending-and-store-resume.jsonl",
        {
            "control_cancel_request",
            "control_response/interrupt",
            "user/tool_result",
            "user/text",
            "result/error_during_execution",
            "result/success",
        },
    )


async def test_stand_in_interrupt_while_streaming_matches_the_real_cli(
    stand_in: StandIn, connected: Connect
) -> None:
    scenario = {"turns": [{"steps": [{"text": "word " * 40, "delay": 0.02}]}]}
    client = await connected(stand_in.options(scenario))
    await client.query("SLOW please")
    messages: list[Message] = []
    async with asyncio.timeout(TIMEOUT_S):
        async for message in client.receive_response():
            messages.append(message)
            if isinstance(message, StreamEvent) and message.event["type"] == "content_block_delta":
                if len(of_type(messages, StreamEvent)) == 5:
                    await client.interrupt()

    result = result_of(messages)
    assert (result.subtype, result.terminal_reason) == (
        "error_during_execution",
        "aborted_streaming",
    )
    [partial] = of_type(messages, AssistantMessage)
    [text] = partial.content
    assert (
        isinstance(text, TextBlock) and text.text.startswith("word word ") and len(text.text) < 200
    )
    assert TextBlock("[Request interrupted by user]") in blocks_of(messages, TextBlock)

    recording = stand_in.recording()
    [aborted] = recording.of_kind("assistant/text")
    assert aborted["aborted"] is True
    assert_frames_match_the_real_cli(
        recording,
        "02-ask-question-mode-model-interrupt.jsonl",
        {
            "control_response/interrupt",
            "assistant/text",
            "user/text",
            "stream_event/content_block_stop",
            "stream_event/message_delta",
            "stream_event/message_stop",
            "result/error_during_execution",
        },
    )


async def test_stand_in_deny_frames_match_the_real_cli(
    stand_in: StandIn, connected: Connect
) -> None:
    denials = iter(
        [
            PermissionResultDeny(message="user said no"),
            PermissionResultDeny(message="user said no", interrupt=True),
        ]
    )

    async def deny(
        tool: str, input: dict[str, Any], ctx: ToolPermissionContext
    ) -> PermissionResultDeny:
        return next(denials)

    scenario = {"turns": [{"steps": [WRITE, {"text": "All done."}]}], "then": "repeat_last"}
    client = await connected(stand_in.options(scenario, deny, include_partial_messages=False))

    messages = await reply_to(client, "please write hello")
    assert [(b.content, b.is_error) for b in blocks_of(messages, ToolResultBlock)] == [
        ("user said no", True)
    ]
    result = result_of(messages)
    assert (result.subtype, result.result) == ("success", "All done.")
    assert result.permission_denials == [
        {
            "tool_name": "Write",
            "tool_use_id": blocks_of(messages, ToolUseBlock)[0].id,
            "tool_input": WRITE_INPUT,
        }
    ]
    assert not of_type(messages, StreamEvent)  # no --include-partial-messages

    messages = await reply_to(client, "please write hello")
    assert [(b.content, b.is_error) for b in blocks_of(messages, ToolResultBlock)] == [
        (REJECTED_TEXT, True)
    ]
    result = result_of(messages)
    assert (result.subtype, result.terminal_reason, result.stop_reason) == (
        "error_during_execution",
        "aborted_tools",
        "tool_use",
    )
    assert "All done." not in [b.text for b in blocks_of(messages, TextBlock)]

    assert_frames_match_the_real_cli(
        stand_in.recording(),
        "03-deny-and-deny-interrupt.jsonl",
        {
            "system/init",
            "assistant/text",
            "assistant/tool_use",
            "control_request/can_use_tool",
            "user/tool_result",
            "user/text",
            "result/success",
            "result/error_during_execution",
        },
    )


async def test_stand_in_mode_and_model_changes_match_the_real_cli(
    stand_in: StandIn, connected: Connect
) -> None:
    client = await connected(stand_in.options({"turns": [], "then": "echo"}))
    await client.set_permission_mode("acceptEdits")
    await client.set_model("claude-sonnet-5")
    messages = await reply_to(client, "hi")
    [init] = [m for m in of_type(messages, SystemMessage) if m.subtype == "init"]
    assert (init.data["permissionMode"], init.data["model"]) == ("acceptEdits", "claude-sonnet-5")
    assert of_type(messages, AssistantMessage)[0].model == "claude-sonnet-5"

    recording = stand_in.recording()
    requests = [f["request"] for f in recording.inbound if f["type"] == "control_request"]
    assert {"subtype": "set_model", "model": "claude-sonnet-5"} in requests
    assert_frames_match_the_real_cli(
        recording,
        "02-ask-question-mode-model-interrupt.jsonl",
        {
            "control_response/set_permission_mode",
            "control_response/set_model",
            "system/status",
            "user/replay",
        },
    )


async def test_accept_edits_mode_skips_the_permission_prompt_for_edit_tools(
    stand_in: StandIn, connected: Connect
) -> None:
    asked: list[str] = []

    async def allow(
        tool: str, input: dict[str, Any], ctx: ToolPermissionContext
    ) -> PermissionResultAllow:
        asked.append(tool)
        return PermissionResultAllow()

    client = await connected(
        stand_in.options({"turns": [{"steps": [WRITE]}], "then": "repeat_last"}, allow)
    )
    await reply_to(client, "write it")
    await client.set_permission_mode("acceptEdits")
    messages = await reply_to(client, "write it again")
    assert asked == ["Write"]  # only the first turn asked
    assert [b.is_error for b in blocks_of(messages, ToolResultBlock)] == [None]


# --- the transcript: session store, resume --------------------------------------------


async def test_stand_in_transcript_mirror_frames_match_the_real_cli(
    stand_in: StandIn, connected: Connect
) -> None:
    async def allow(
        tool: str, input: dict[str, Any], ctx: ToolPermissionContext
    ) -> PermissionResultAllow:
        return PermissionResultAllow()

    store = MirroredStore()
    scenario = {
        "turns": [
            {
                "steps": [
                    {"message": [{"text": "I'll write the file now."}, WRITE]},
                    {"text": "Done."},
                ]
            }
        ]
    }
    client = await connected(
        stand_in.options(scenario, allow, session_store=store, session_store_flush="eager")
    )
    session_id = result_of(await reply_to(client, "please write hello")).session_id
    await store.wait_for_turns(1)

    recording = stand_in.recording()
    key: SessionKey = {
        "project_key": project_key_for_directory(stand_in.workdir),
        "session_id": session_id,
    }
    transcript = stand_in.config_dir / "projects" / key["project_key"] / f"{session_id}.jsonl"
    assert {f["filePath"] for f in recording.of_kind("transcript_mirror")} == {str(transcript)}
    entries = mirrored_entries(recording)
    on_disk = [json.loads(line) for line in transcript.read_text().splitlines()]
    assert await store.load(key) == on_disk == entries
    assert [e["type"] for e in entries] == [
        "user",
        "assistant",
        "assistant",
        "user",
        "assistant",
        "last-prompt",
        "cost-state",
    ]
    assert entries[-2]["leafUuid"] == entries[-3]["uuid"]
    history = await get_session_messages_from_store(
        store, session_id, directory=str(stand_in.workdir)
    )
    assert [(m.type, m.message["content"][0]["type"]) for m in history[1:]] == [
        ("assistant", "text"),
        ("assistant", "tool_use"),
        ("user", "tool_result"),
        ("assistant", "text"),
    ]
    assert history[0].message == {"role": "user", "content": "please write hello"}

    assert_frames_match_the_real_cli(
        recording,
        "04-interrupt-while-permission-pending-and-store-resume.jsonl",
        {"transcript_mirror"},
    )
    assert_transcript_matches_the_real_cli(
        recording, "04-interrupt-while-permission-pending-and-store-resume.jsonl"
    )


async def test_without_a_config_dir_the_transcript_is_mirrored_but_never_saved(
    stand_in: StandIn, connected: Connect, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = stand_in.workdir / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("CLAUDE_CONFIG_DIR", raising=False)
    store = MirroredStore()
    options = stand_in.options(session_store=store, session_store_flush="eager")
    del options.env["CLAUDE_CONFIG_DIR"]
    client = await connected(options)
    session_id = result_of(await reply_to(client, "hi")).session_id
    await store.wait_for_turns(1)

    key: SessionKey = {
        "project_key": project_key_for_directory(stand_in.workdir),
        "session_id": session_id,
    }
    assert await store.load(key) == mirrored_entries(stand_in.recording())
    assert not list(home.iterdir())


async def test_a_session_resumed_from_the_store_shows_the_model_the_earlier_turns(
    stand_in: StandIn, connected: Connect
) -> None:
    store = MirroredStore()
    first = await connected(stand_in.options(session_store=store, session_store_flush="eager"))
    session_id = result_of(await reply_to(first, "my name is Ada")).session_id
    await store.wait_for_turns(1)
    await first.disconnect()

    second = await connected(
        stand_in.options(session_store=store, session_store_flush="eager", resume=session_id)
    )
    messages = await reply_to(second, "what is my name?")
    await store.wait_for_turns(2)

    [init] = [m for m in of_type(messages, SystemMessage) if m.subtype == "init"]
    assert init.data["session_id"] == result_of(messages).session_id == session_id
    assert stand_in.model_inputs() == [
        [{"role": "user", "text": "my name is Ada"}],
        [
            {"role": "user", "text": "my name is Ada"},
            {"role": "assistant", "text": "echo: my name is Ada"},
            {"role": "user", "text": "what is my name?"},
        ],
    ]
    # The SDK loaded the store into a temporary CLAUDE_CONFIG_DIR for the second CLI,
    # which mirrored its turn back under the same session.
    _, resumed_argv = (record["argv"] for record in stand_in.logged("argv"))
    assert f"--resume={session_id}" in resumed_argv and "--session-mirror" in resumed_argv
    files = {f["filePath"] for f in stand_in.recording().of_kind("transcript_mirror")}
    assert len(files) == 2 and {Path(f).name for f in files} == {f"{session_id}.jsonl"}
    history = await get_session_messages_from_store(
        store, session_id, directory=str(stand_in.workdir)
    )
    assert [m.message["content"] for m in history] == [
        "my name is Ada",
        [{"type": "text", "text": "echo: my name is Ada"}],
        "what is my name?",
        [{"type": "text", "text": "echo: what is my name?"}],
    ]
    assert_transcript_matches_the_real_cli(
        stand_in.recording(), "04-interrupt-while-permission-pending-and-store-resume.jsonl"
    )


async def test_resuming_an_unknown_session_fails_to_connect_like_the_real_cli(
    stand_in: StandIn,
) -> None:
    # The store has no such session, so the SDK hands the id to the CLI as it is.
    unknown = str(uuid.uuid4())
    client = ClaudeSDKClient(stand_in.options(session_store=InMemorySessionStore(), resume=unknown))
    with pytest.raises(ResultError) as raised:  # raised by connect(), from `initialize`
        async with asyncio.timeout(TIMEOUT_S):
            await client.connect()

    error = raised.value
    assert str(error) == (
        f"Claude Code returned an error result: No conversation found with session ID: {unknown}"
        " (exit code: 1)"
    )
    assert (error.exit_code, error.subtype, error.session_id, error.errors) == (
        1,
        "error_during_execution",
        unknown,
        [f"No conversation found with session ID: {unknown}"],
    )
    recording, real = stand_in.recording(), Recording.real("05-bad-resume-id.jsonl")
    # No control_response to initialize: only the error result, then exit 1.
    assert recording.kinds() == real.kinds() == {"result/error_during_execution"}
    assert recording.exit_codes == real.exit_codes == [1]
    assert_frames_match_the_real_cli(
        recording, "05-bad-resume-id.jsonl", {"result/error_during_execution"}
    )


@pytest.mark.parametrize(
    ("argv", "name", "value"),
    [
        (["--resume=abc", "--session-mirror"], "--resume", "abc"),  # as the SDK writes it
        (["--resume", "abc", "--session-mirror"], "--resume", "abc"),
        (["--resume", "--session-mirror"], "--resume", None),  # the value is optional
        (["--setting-sources=", "--input-format", "stream-json"], "--setting-sources", ""),
    ],
)
def test_options_are_read_in_both_argv_forms(argv: list[str], name: str, value: str | None) -> None:
    assert option(argv, name) == value


# --- the CLI process itself -----------------------------------------------------------


async def test_a_crashing_cli_raises_process_error_with_its_exit_code(
    stand_in: StandIn, connected: Connect
) -> None:
    scenario = {
        "turns": [
            {
                "steps": [
                    {"text": "starting"},
                    {"crash": {"exit_code": 3, "stderr": "boom: something broke"}},
                ]
            }
        ]
    }
    client = await connected(stand_in.options(scenario))
    await client.query("go")
    messages: list[Message] = []
    with pytest.raises(ProcessError) as raised:
        async with asyncio.timeout(TIMEOUT_S):
            async for message in client.receive_messages():
                messages.append(message)
    assert raised.value.exit_code == 3
    assert blocks_of(messages, TextBlock) == [TextBlock("starting")]
    with pytest.raises(CLIConnectionError):
        await client.query("anyone there?")
    async with asyncio.timeout(TIMEOUT_S):
        await stand_in.wait_for_stderr("boom: something broke")
    assert stand_in.stderr_lines[0].startswith("scripted-cli: started pid=")


async def test_echo_is_the_default_and_the_cost_adds_up(
    stand_in: StandIn, connected: Connect
) -> None:
    client = await connected(stand_in.options(include_partial_messages=False))

    async def look() -> AsyncIterator[dict[str, Any]]:
        image = {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}
        content = [{"type": "text", "text": "look"}, {"type": "image", "source": image}]
        yield {
            "type": "user",
            "message": {"role": "user", "content": content},
            "parent_tool_use_id": None,
        }

    await client.query(look())
    first = await collect_response(client)
    second = await reply_to(client, "and again")
    assert blocks_of(first, TextBlock) == [TextBlock("echo: look [image]")]
    assert blocks_of(second, TextBlock) == [TextBlock("echo: and again")]
    assert [result_of(r).total_cost_usd for r in (first, second)] == [0.001, 0.002]
    for reply in (first, second):  # system/init starts every turn
        assert [m.subtype for m in of_type(reply, SystemMessage)] == ["init"]
    user_turns = [f for f in stand_in.recording().inbound if f["type"] == "user"]
    assert user_turns[0]["message"]["content"][1]["source"]["media_type"] == "image/png"


async def test_exiting_quietly_ends_the_stream_without_an_error(
    stand_in: StandIn, connected: Connect
) -> None:
    client = await connected(
        stand_in.options({"turns": [{"steps": [{"text": "bye"}, {"exit_quietly": True}]}]})
    )
    await client.query("go")
    async with asyncio.timeout(TIMEOUT_S):
        messages = [m async for m in client.receive_messages()]
    assert blocks_of(messages, TextBlock) == [TextBlock("bye")]
    assert not of_type(messages, ResultMessage)


async def test_an_event_burst_arrives_whole_and_fast(stand_in: StandIn, connected: Connect) -> None:
    client = await connected(
        stand_in.options({"turns": [{"steps": [{"events": 2000, "text": "x"}]}]})
    )
    started = time.monotonic()
    messages = await reply_to(client, "go")
    assistants = of_type(messages, AssistantMessage)
    assert len(assistants) == 2000 and len({m.message_id for m in assistants}) == 2000
    assert not of_type(messages, StreamEvent)
    assert time.monotonic() - started < 3


async def test_a_line_over_the_sdk_buffer_limit_fails_the_reader(
    stand_in: StandIn, connected: Connect
) -> None:
    client = await connected(stand_in.options({"turns": [{"steps": [{"big_line": 2_000_000}]}]}))
    await client.query("go")
    with pytest.raises(CLIJSONDecodeError):
        async with asyncio.timeout(TIMEOUT_S):
            async for _ in client.receive_messages():
                pass
    started = time.monotonic()
    await client.disconnect()  # the stand-in exits soon after stdin closes
    assert time.monotonic() - started < 4
    # The SDK stopped reading mid-line and drops its stdout stream without closing it;
    # collect the leaked pipe transport while the event loop is still open.
    gc.collect()


def test_a_hanging_cli_ignores_stdin_eof(tmp_path: Path) -> None:
    (tmp_path / "scenario.json").write_text(json.dumps({"turns": [{"steps": [{"hang": True}]}]}))
    process = subprocess.Popen(
        [str(STAND_IN)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        cwd=tmp_path,
    )
    try:
        assert process.stdin is not None and process.stdout is not None
        initialize = {
            "type": "control_request",
            "request_id": "req_1",
            "request": {"subtype": "initialize"},
        }
        user = {
            "type": "user",
            "message": {"role": "user", "content": "hi"},
            "parent_tool_use_id": None,
        }
        process.stdin.write(f"{json.dumps(initialize)}\n{json.dumps(user)}\n".encode())
        process.stdin.close()
        assert json.loads(process.stdout.readline())["response"]["request_id"] == "req_1"
        with pytest.raises(subprocess.TimeoutExpired):  # longer than the stand-in's EOF grace
            process.wait(timeout=2.5)
    finally:
        process.kill()
        process.wait()


def test_version_prints_the_real_cli_version() -> None:
    out = subprocess.run(
        [str(STAND_IN), "--version"], capture_output=True, text=True, timeout=TIMEOUT_S
    )
    assert (out.returncode, out.stdout) == (0, "2.1.332 (Claude Code)\n")


def test_a_bad_scenario_fails_at_startup_naming_the_step(tmp_path: Path) -> None:
    path = tmp_path / "scenario.json"
    path.write_text(json.dumps({"turns": [{"steps": [{"txt": "typo"}]}]}), encoding="utf-8")
    out = subprocess.run(
        [str(STAND_IN)], input="", capture_output=True, text=True, timeout=TIMEOUT_S, cwd=tmp_path
    )
    assert out.returncode == 2
    assert "turns[0].steps[0]" in out.stderr
