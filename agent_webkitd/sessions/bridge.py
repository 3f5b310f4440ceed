"""The Bridge: SDK messages -> wire events, and `can_use_tool` -> pending decisions.

It knows the SDK's message types and the wire protocol's event shapes, nothing about
HTTP. Facts it relies on (DESIGN.md §6): the CLI sends one `assistant` frame per content
block, all sharing one message id, so blocks accumulate per id (and a message is whole
once the next one of the same agent, main or subagent, starts); `total_cost_usd` is
cumulative; replayed user messages are not tool results; an interrupt while a permission
is pending cancels the callback (the CLI's `control_cancel_request`).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from typing import Any

import structlog
from claude_agent_sdk import (
    AssistantMessage,
    PermissionResultAllow,
    PermissionResultDeny,
    ResultMessage,
    ServerToolResultBlock,
    ServerToolUseBlock,
    StreamEvent,
    SystemMessage,
    TaskNotificationMessage,
    TaskStartedMessage,
    TaskUpdatedMessage,
    TextBlock,
    ThinkingBlock,
    ToolPermissionContext,
    ToolResultBlock,
    ToolUseBlock,
    UserMessage,
)
from claude_agent_sdk.types import TERMINAL_TASK_STATUSES, MirrorErrorMessage, PermissionResult

from ..errors import bad_request
from ..metrics import Metrics
from ..protocol import wire
from .decisions import Decisions

log = structlog.get_logger(__name__)

Emit = Callable[[str, dict[str, Any]], int]

ASK_USER_QUESTION = "AskUserQuestion"


def block_to_wire(block: Any) -> dict[str, Any]:
    """A content block as plain JSON that keeps its `type`."""
    match block:
        case TextBlock(text=text):
            return {"type": "text", "text": text}
        case ThinkingBlock(thinking=thinking, signature=signature):
            return {"type": "thinking", "thinking": thinking, "signature": signature}
        case ToolUseBlock(id=id_, name=name, input=input_):
            return {"type": "tool_use", "id": id_, "name": name, "input": input_}
        case ToolResultBlock(tool_use_id=tool_use_id, content=content, is_error=is_error):
            return {
                "type": "tool_result",
                "tool_use_id": tool_use_id,
                "content": content,
                "is_error": bool(is_error),
            }
        case ServerToolUseBlock(id=id_, name=name, input=input_):
            return {"type": "server_tool_use", "id": id_, "name": name, "input": input_}
        case ServerToolResultBlock(tool_use_id=tool_use_id, content=content):
            return {"type": "server_tool_result", "tool_use_id": tool_use_id, "content": content}
    if dataclasses.is_dataclass(block) and not isinstance(block, type):
        return {"type": type(block).__name__, **dataclasses.asdict(block)}
    return {"type": "unknown", "value": repr(block)}


class Bridge:
    def __init__(
        self,
        session_id: str,
        emit: Emit,
        on_decisions_changed: Callable[[], None],
        permission_timeout_s: float,
        metrics: Metrics,
        usage: Callable[[], dict[str, Any]],
    ) -> None:
        self.session_id = session_id
        self._usage = usage  # the session's usage totals (usage/ledger.py)
        self.emit = emit
        self.permission_timeout_s = permission_timeout_s or None  # 0 = wait forever
        self.metrics = metrics
        self.logger = log.bind(session_id=session_id)
        self.decisions = Decisions()
        self._on_decisions_changed = on_decisions_changed
        self._stream_message_id: dict[str | None, str] = {}  # parent_tool_use_id -> message id
        # parent_tool_use_id -> (the message id, its blocks so far): one message per agent
        # (the main one, or a subagent's), so a long turn keeps one message, not all of them.
        self._blocks: dict[str | None, tuple[str, list[dict[str, Any]]]] = {}
        self._open_tool_uses: set[str] = set()  # announced tool_use ids without a result yet
        self._mcp_status: dict[str, str] = {}
        self._total_cost: float = 0.0
        self.claude_session_id: str | None = None
        self.background_tasks: set[str] = set()  # started and not yet finished

    # -- SDK messages -> wire events -------------------------------------------------

    def handle(self, message: Any) -> bool:
        """Translate one SDK message. Returns True when it ended a turn (a result)."""
        match message:
            case StreamEvent():
                self._stream_event(message)
            case AssistantMessage():
                self._assistant(message)
            case UserMessage():
                self._user(message)
            case ResultMessage():
                self._result(message)
                return True
            case MirrorErrorMessage(error=error):
                # The SDK dropped a transcript batch the store would not take: a session
                # claimed by another host later would resume without it. Tell ops.
                self.metrics.transcript_mirror_errors.inc({})
                self.logger.error("transcript_not_stored", error=error)
            case TaskStartedMessage(task_id=task_id):
                self.background_tasks.add(task_id)
            case (
                TaskNotificationMessage(task_id=task_id, status=status)
                | TaskUpdatedMessage(task_id=task_id, status=status)
            ) if status in TERMINAL_TASK_STATUSES:
                self.background_tasks.discard(task_id)
            case SystemMessage(subtype="init", data=data):
                self.claude_session_id = data.get("session_id") or self.claude_session_id
                self._mcp_servers(data.get("mcp_servers"))
            case _:
                log.debug("sdk_message_skipped", kind=type(message).__name__)
        return False

    def _stream_event(self, message: StreamEvent) -> None:
        event = message.event
        kind = event.get("type")
        parent = message.parent_tool_use_id
        if kind == "message_start":
            msg_id = (event.get("message") or {}).get("id")
            if msg_id:
                self._stream_message_id[parent] = msg_id
            return
        if kind != "content_block_delta":
            return
        msg_id = self._stream_message_id.get(parent)
        if msg_id is None:
            return
        delta = event.get("delta") or {}
        index = event.get("index", 0)
        match delta.get("type"):
            case "text_delta":
                wire_delta = {"type": "text", "text": delta.get("text", ""), "index": index}
            case "input_json_delta":
                wire_delta = {
                    "type": "input_json_delta",
                    "partial_json": delta.get("partial_json", ""),
                    "index": index,
                }
            case "thinking_delta":
                wire_delta = {
                    "type": "thinking",
                    "thinking": delta.get("thinking", ""),
                    "index": index,
                }
            case _:
                return
        self.emit("message_delta", {"message_id": msg_id, "delta": wire_delta})

    def _assistant(self, message: AssistantMessage) -> None:
        msg_id = message.message_id or message.uuid or f"msg_{id(message):x}"
        new_blocks = [block_to_wire(b) for b in message.content]
        parent = message.parent_tool_use_id
        current = self._blocks.get(parent)
        if current is None or current[0] != msg_id:
            current = self._blocks[parent] = (msg_id, [])
        blocks = current[1]
        blocks.extend(new_blocks)
        self.emit(
            "message_complete",
            {
                "message_id": msg_id,
                "message": {
                    "id": msg_id,
                    "role": "assistant",
                    "content": list(blocks),
                    "model": message.model,
                    "stop_reason": message.stop_reason,
                },
            },
        )
        for block in new_blocks:
            if block["type"] == "tool_use":
                self._open_tool_uses.add(block["id"])
                self.emit(
                    "tool_use",
                    {
                        "message_id": msg_id,
                        "tool_use_id": block["id"],
                        "tool_name": block["name"],
                        "input": block["input"],
                    },
                )

    def _user(self, message: UserMessage) -> None:
        # Only results for tool uses this session announced count; replays and injected
        # turns (which carry an origin) never do.
        if isinstance(message.content, str) or message.origin is not None:
            return
        for block in message.content:
            if isinstance(block, ToolResultBlock) and block.tool_use_id in self._open_tool_uses:
                self._open_tool_uses.discard(block.tool_use_id)
                self.emit(
                    "tool_result",
                    {
                        "tool_use_id": block.tool_use_id,
                        "output": block.content,
                        "is_error": bool(block.is_error),
                    },
                )

    def _result(self, message: ResultMessage) -> None:
        total = message.total_cost_usd
        data: dict[str, Any] = {
            "session_id": self.session_id,
            "subtype": message.subtype,
            "is_error": bool(message.is_error),
            "duration_ms": message.duration_ms,
            "num_turns": message.num_turns,
            "stop_reason": message.stop_reason,
            "terminal_reason": message.terminal_reason,
            "usage": message.usage,
            "result": message.result,
        }
        if message.errors:
            data["errors"] = message.errors
        if total is not None:
            data["total_cost_usd"] = total
            data["turn_cost_usd"] = round(max(total - self._total_cost, 0.0), 10)
            self._total_cost = total
        self.emit("result", data)
        # Counted by the gateway before the CLI read the response: the totals include it.
        self.emit("usage", self._usage())
        self.forget_turn()

    def forget_turn(self) -> None:
        """A turn is over: its messages will not grow and its tools will not report."""
        self._blocks.clear()
        self._stream_message_id.clear()
        self._open_tool_uses.clear()

    def process_ended(self) -> None:
        """The CLI process is gone: so are its turn, its decisions and its tasks."""
        self.forget_turn()
        self.cancel_pending()
        self.background_tasks.clear()

    def restore_cost(self, total_cost_usd: float) -> None:
        """The session's cost so far, from its stored events (a session taken over)."""
        self._total_cost = total_cost_usd

    def _mcp_servers(self, servers: Any) -> None:
        if not isinstance(servers, list):
            return
        for server in servers:
            if not isinstance(server, dict):
                continue
            name, status = server.get("name"), server.get("status")
            if (
                isinstance(name, str)
                and isinstance(status, str)
                and self._mcp_status.get(name) != status
            ):
                self._mcp_status[name] = status
                self.emit("mcp_status_change", {"server_name": name, "status": status})

    # -- decisions ----------------------------------------------------------------------

    async def can_use_tool(
        self, tool_name: str, tool_input: dict[str, Any], context: ToolPermissionContext
    ) -> PermissionResult:
        correlation_id = context.tool_use_id or f"perm_{id(context):x}"
        if tool_name == ASK_USER_QUESTION:
            request = {"correlation_id": correlation_id, "questions": tool_input}
            decision = self.decisions.open(correlation_id, "question", request)
            seq = self.emit("ask_user_question", request)
        else:
            request = {
                "correlation_id": correlation_id,
                "tool_name": tool_name,
                "input": tool_input,
                "context": _context_to_wire(context),
            }
            decision = self.decisions.open(correlation_id, "permission", request)
            seq = self.emit("permission_request", request)
        decision_log = self.logger.bind(correlation_id=correlation_id, event_seq=seq)
        decision_log.info("decision_opened", kind=decision.kind, tool_name=tool_name)
        self._on_decisions_changed()
        try:
            # shield: a timeout must not cancel the future a late reply would still find.
            reply = await asyncio.wait_for(
                asyncio.shield(decision.future), self.permission_timeout_s
            )
        except TimeoutError:
            if not self.decisions.withdraw(correlation_id, "expired"):
                raise  # pragma: no cover - resolved in the same tick; nothing to deny
            self.emit("permission_expired", {"correlation_id": correlation_id})
            self.metrics.decisions_expired.inc({})
            decision_log.info("decision_expired", timeout_s=self.permission_timeout_s)
            return PermissionResultDeny(
                message=f"Nobody answered this request within {self.permission_timeout_s:g} s, "
                "so the tool use was denied."
            )
        except asyncio.CancelledError:
            # The CLI withdrew the request (an interrupt), or the session is closing.
            if self.decisions.withdraw(correlation_id, "cancelled"):
                self.emit("permission_cancelled", {"correlation_id": correlation_id})
                decision_log.info("decision_cancelled")
            raise
        finally:
            self._on_decisions_changed()
        return _to_permission_result(reply, tool_input)

    def reply(
        self, message: wire.PermissionResponse | wire.QuestionResponse, subscriber: str | None
    ) -> None:
        """Resolve a decision from a client's reply (raises ApiError 409/400)."""
        pending = self.decisions.peek(message.correlation_id)
        if (
            isinstance(message, wire.QuestionResponse)
            and pending is not None
            and pending.kind != "question"
        ):
            raise bad_request(
                "not_a_question",
                f"decision {message.correlation_id!r} is a tool permission; answer it with permission_response",
            )
        decision = self.decisions.resolve(message.correlation_id, message)
        if isinstance(message, wire.QuestionResponse):
            behavior = "answered"
        else:
            behavior = message.behavior
        event = "question_resolved" if decision.kind == "question" else "permission_resolved"
        self.emit(event, {"correlation_id": message.correlation_id, "behavior": behavior})
        label = self.metrics.subscriber_label(subscriber)
        self.metrics.first_reply_winner.inc({"subscriber_id": label})
        self.logger.info(
            "decision_resolved",
            correlation_id=message.correlation_id,
            behavior=behavior,
            subscriber_id=subscriber,
        )

    def cancel_pending(self) -> None:
        """The session is closing: withdraw every open decision."""
        for correlation_id in self.decisions.withdraw_all("withdrawn"):
            self.emit("permission_cancelled", {"correlation_id": correlation_id})


def _context_to_wire(context: ToolPermissionContext) -> dict[str, Any]:
    data: dict[str, Any] = {
        "tool_use_id": context.tool_use_id,
        "suggestions": [_suggestion_to_wire(s) for s in context.suggestions],
        "title": context.title,
        "display_name": context.display_name,
        "description": context.description,
        "blocked_path": context.blocked_path,
        "decision_reason": context.decision_reason,
        "agent_id": context.agent_id,
    }
    return {k: v for k, v in data.items() if v is not None}


def _suggestion_to_wire(suggestion: Any) -> dict[str, Any]:
    try:
        wire_form: dict[str, Any] = suggestion.to_dict()
    except ValueError:  # a kind this SDK cannot send back; still show it as plain data
        wire_form = dataclasses.asdict(suggestion)
    return wire_form


def _to_permission_result(reply: Any, tool_input: dict[str, Any]) -> PermissionResult:
    if isinstance(reply, wire.QuestionResponse):
        return PermissionResultAllow(updated_input={**tool_input, "answers": reply.answers})
    assert isinstance(reply, wire.PermissionResponse)
    if reply.behavior == "allow":
        return PermissionResultAllow(
            updated_input=reply.updated_input, updated_permissions=reply.updated_permissions
        )
    return PermissionResultDeny(
        message=reply.message or "The user denied this tool use.", interrupt=reply.interrupt
    )
