"""The Bridge on its own, fed the SDK's own message types."""

from __future__ import annotations

from typing import Any

from claude_agent_sdk import AssistantMessage, TextBlock

from agent_webkitd.metrics import Metrics
from agent_webkitd.sessions.bridge import Bridge


def bridge_and_events() -> tuple[Bridge, list[tuple[str, dict[str, Any]]]]:
    events: list[tuple[str, dict[str, Any]]] = []

    def emit(name: str, data: dict[str, Any]) -> int:
        events.append((name, data))
        return len(events)

    return Bridge("s1", emit, lambda: None, 0, Metrics(), dict), events


def block(msg_id: str, text: str, parent: str | None = None) -> AssistantMessage:
    return AssistantMessage(
        content=[TextBlock(text=text)], model="m", parent_tool_use_id=parent, message_id=msg_id
    )


def contents(events: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, list[str]]]:
    return [
        (data["message_id"], [b["text"] for b in data["message"]["content"]])
        for name, data in events
        if name == "message_complete"
    ]


def test_a_subagents_message_does_not_interrupt_the_main_agents_message() -> None:
    bridge, events = bridge_and_events()
    for message in (block("m1", "a"), block("s1", "x", parent="toolu_1"), block("m1", "b")):
        bridge.handle(message)
    assert contents(events) == [("m1", ["a"]), ("s1", ["x"]), ("m1", ["a", "b"])]


def test_a_long_turn_keeps_only_the_messages_still_being_written() -> None:
    bridge, events = bridge_and_events()
    for i in range(1000):
        bridge.handle(block(f"m{i}", "t"))
    bridge.handle(block("s1", "x", parent="toolu_1"))
    assert contents(events)[-2] == ("m999", ["t"])
    assert len(bridge._blocks) == 2  # the main agent's last message and the subagent's
