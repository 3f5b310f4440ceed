"""What a client's inbound message does to a session (`POST /sessions/{id}/input`).

A user message is checked against the session's size limits (413) and its owner's
budget (429 `budget_exceeded`, nothing queued), queued behind the
running turn (503 `backpressure` when the queue is full), shown on the stream at once so
every tab sees what was typed, and wakes a hibernated session. Decision replies go to
the bridge (the first reply wins, later ones get 409). An interrupt ends the running
turn and takes back every user message that has not started, waking or not
(`input_discarded`). Control messages (interrupt, permission mode, model, stop_task) go
to the CLI at once, or are remembered for the next wake; a CLI that refuses one is a 502 `agent_error`. The operator's allowed permission
modes bind every mode a client names, the setMode rules of a permission reply included.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

from ..errors import ApiError
from ..metrics import Metrics
from ..protocol import wire
from .session import Session
from .spec import SessionSpec
from .spending import check_budget


async def handle_input(
    session: Session, message: wire.Inbound, allowed_modes: tuple[str, ...], subscriber: str | None
) -> None:
    if session.moving:  # nothing done: a proxy may send it to the host that takes it up
        raise ApiError(
            503,
            "session_elsewhere",
            f"session {session.id!r} is moving to another host; retry",
            {"Retry-After": "1"},
        )
    if session.closed:
        raise ApiError(404, "not_found", f"session {session.id!r} is closed")
    session.use()
    agent = session.agent
    match message:
        case wire.UserMessage(content=content):
            check_size(content, session.spec, session.metrics)
            check_budget(session.spec.ledger, session.owner, session.metrics)
            session.turns.queue(message)
            # Every tab, and a page reloaded later, sees what was typed, before the
            # turn it starts (queued messages run after the current turn's result).
            session.emit("user_message", {"content": content})
            session.wake()
        case wire.PermissionResponse(updated_permissions=updates):
            for update in updates or ():
                if update.type == "setMode" and update.mode is not None:
                    wire.check_mode_allowed(update.mode, allowed_modes)
            session.bridge.reply(message, subscriber)
        case wire.QuestionResponse():
            session.bridge.reply(message, subscriber)
        case wire.SetPermissionMode(mode=mode):
            wire.check_mode_allowed(mode, allowed_modes)
            if agent is not None:
                await _control(agent.client.set_permission_mode(mode))  # type: ignore[arg-type]
            session.settings_changed(session.model, mode)  # without a CLI: for the next wake
        case wire.SetModel(model=model):
            if agent is not None:
                await _control(agent.client.set_model(model))
            session.settings_changed(model, session.permission_mode)
        case wire.StopTask(task_id=task_id):
            if agent is not None:
                await _control(agent.client.stop_task(task_id))
        case wire.Interrupt():
            # Stop means stop: nothing sent before it starts afterwards, during a wake too.
            session.hand_back_waiting()
            if session.turns.running and agent is not None:
                session.turns.cancelling = True
                session.show_live_state()
                await _control(agent.client.interrupt())


def check_size(content: str | list[dict[str, Any]], spec: SessionSpec, metrics: Metrics) -> None:
    """413 for a user message whose text or any image is over the session's limits."""
    text, images = wire.content_sizes(content)
    if text > spec.max_message_bytes:
        metrics.limit_rejections.inc({"limit": "message_bytes"})
        raise ApiError(
            413,
            "message_too_large",
            f"the message's text is {text} bytes; at most {spec.max_message_bytes} are taken",
        )
    if images and max(images) > spec.max_image_bytes:
        metrics.limit_rejections.inc({"limit": "image_bytes"})
        raise ApiError(
            413,
            "image_too_large",
            f"an image is {max(images)} bytes; at most {spec.max_image_bytes} are taken",
        )


async def _control(request: Awaitable[None]) -> None:
    """Send a control request to the CLI; its failure is the agent's, not the client's."""
    try:
        await request
    except Exception as exc:
        raise ApiError(502, "agent_error", f"the agent did not accept the request: {exc}") from exc
