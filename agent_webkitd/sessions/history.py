"""What a client reads of a session: its description (GET /sessions), and its history
as messages, read from its transcript with the SDK's own transcript reader (never a
second journal): the CLI's file in the session's own state folder, and with the
embedded and Postgres stores the store's copy too (the newer of the two), so a live,
hibernated or restarted session reads the same.

Messages are `{id, role, content}` with `content` a list of Anthropic content blocks:
user text and images, assistant text, thinking and `tool_use`, and the `tool_result`
blocks the CLI sends back as user messages. The CLI writes one transcript entry per
content block of a streamed assistant message; entries of one message are joined.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from claude_agent_sdk import SessionMessage, get_session_messages_from_store
from claude_agent_sdk.types import SessionStore

from ..protocol.wire import PROTOCOL_VERSION
from ..stores.base import ShelvedSession
from . import shelf
from .transcripts import file_messages

if TYPE_CHECKING:
    from .session import Session


def listed(held: Session | ShelvedSession) -> dict[str, Any]:
    """GET /sessions's entry for a session, in memory or shelved."""
    if isinstance(held, ShelvedSession):
        return shelf.describe(held)
    return describe(held, full=False)


def describe(session: Session, *, full: bool) -> dict[str, Any]:
    """What GET /sessions shows of this session (`full`: each pending request too)."""
    pending = list(session.bridge.decisions.pending.values())
    return {
        "session_id": session.id,
        "owner": session.owner,
        "state": session.state,
        "created_at": datetime.fromtimestamp(session.created_at, UTC).isoformat(),
        "idle_for_s": round(session.idle_for(), 1),
        "subscribers": session.subscribers,
        "last_seq": session.log.published_seq,  # what a client can have seen
        "model": session.model,
        "permission_mode": session.permission_mode,
        "claude_session_id": session.claude_session_id,
        "pending_decisions": (
            [{"kind": d.kind, **d.request} for d in pending] if full else len(pending)
        ),
    }


async def messages(session: Session) -> dict[str, Any]:
    """GET /sessions/{id}/messages. `last_event_id` is read first: a message may show both
    here and on a stream resumed from it, never in neither."""
    last_event_id = session.log.published_seq
    return {
        "session_id": session.id,
        "last_event_id": last_event_id,
        "messages": await _conversation(session),
    }


async def snapshot(session: Session) -> dict[str, Any]:
    """GET /sessions/{id}/snapshot: what a client needs to rebuild its view (after a 412,
    a reload) and then stream from `last_event_id`."""
    last_event_id = session.log.published_seq
    described = describe(session, full=True)
    return {
        "session_id": session.id,
        "protocol_version": PROTOCOL_VERSION,
        "state": described["state"],
        "last_event_id": last_event_id,
        "pending_decisions": described["pending_decisions"],
        "messages": await _conversation(session),
        "artefacts": [a.describe() for a in session.artefacts.list()],
    }


async def _conversation(session: Session) -> list[dict[str, Any]]:
    spec = session.spec
    return await transcript_messages(
        session.claude_session_id, spec.state_dir, spec.cwd, session.store.sdk_session_store()
    )


async def transcript_messages(
    claude_session_id: str | None,
    state_dir: str,
    cwd: str | None,
    transcripts: SessionStore | None,
) -> list[dict[str, Any]]:
    """The conversation so far (empty before the first turn)."""
    if not claude_session_id:
        return []
    # Two copies of one conversation may exist, each possibly behind: the CLI's own file
    # (written before a turn's result is sent, but left behind when a later CLI resumed
    # from the store into a folder of its own) and the store's (which may land a moment
    # after the result). Each is a prefix of the conversation: the longer is the newer.
    entries = await file_messages(state_dir, cwd, claude_session_id)
    if transcripts is not None:
        stored = await get_session_messages_from_store(transcripts, claude_session_id, cwd)
        entries = max(entries, stored, key=len)
    return join_entries(entries)


def join_entries(entries: list[SessionMessage]) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    for entry in entries:
        raw = entry.message if isinstance(entry.message, dict) else {}
        content = _blocks(raw.get("content"))
        message_id = raw.get("id") if entry.type == "assistant" else None
        last = messages[-1] if messages else None
        if (
            last is not None
            and message_id is not None
            and last["role"] == "assistant"
            and last.get("message_id") == message_id
        ):
            last["content"].extend(content)
            continue
        message: dict[str, Any] = {"id": entry.uuid, "role": entry.type, "content": content}
        if message_id is not None:
            message["message_id"] = message_id
            if raw.get("model"):
                message["model"] = raw["model"]
        messages.append(message)
    return messages


def _blocks(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if isinstance(content, list):
        return [b for b in content if isinstance(b, dict)]
    return []
