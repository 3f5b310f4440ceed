"""The memory store: nothing survives the process.

It keeps nothing beyond each session's ring (the ring is the store): it publishes every
event at once, a cursor older than the ring gets 412, and a session dies with its
process. Transcripts are then the CLI's own files under its config dir; artefact
contents live here until their session closes.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

from claude_agent_sdk.types import SessionStore

from ..artefacts.model import StoredVersion
from ..usage.model import DayUsage, Usage, UsageRecord
from .base import (
    ClaimedSession,
    Conversation,
    NotShared,
    Publisher,
    ShelvedSession,
    conversation_of,
)

# Closed sessions whose conversations stay resumable by their owners (~300 bytes each);
# past this the oldest are forgotten, as `prune` would.
MAX_CLOSED_KEPT = 100_000


class MemoryStore(NotShared):
    """Nothing survives the process; the ring is all the history there is."""

    durable = False
    healthy = True
    full = False

    def __init__(self) -> None:
        self.on_session_lost: Callable[[str], None] = lambda session_id: None
        self.held_sessions: Callable[[], Iterable[str]] = tuple
        # Artefact contents by session, then by (artefact id, version); gone with the session.
        self._artefacts: dict[str, dict[tuple[str, int], str]] = {}
        # Who may resume which conversation, kept past a session's close.
        self._specs: dict[str, dict[str, Any]] = {}  # session id -> {owner, cwd, state_dir}
        self._claude_ids: dict[str, str] = {}  # session id -> its Claude session id
        self._newest: dict[str, str] = {}  # Claude session id -> the newest session with it
        self._closed: OrderedDict[str, None] = OrderedDict()
        self._usage: dict[tuple[str, str], Usage] = {}  # (principal, day) -> usage

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def append(self, log: Publisher, seq: int, name: str, text: str) -> None:
        log.publish(seq)

    async def room(self) -> None:
        pass

    async def check(self) -> None:
        pass

    async def frames(self, session_id: str, after: int, until: int, limit: int) -> list[bytes]:
        return []

    async def session_opened(self, session_id: str, spec: dict[str, Any]) -> None:
        self.note_spec(session_id, spec)

    def note_sdk_session(self, session_id: str, sdk_session_id: str) -> None:
        self._claude_ids[session_id] = sdk_session_id
        self._newest[sdk_session_id] = session_id

    def note_spec(self, session_id: str, spec: dict[str, Any]) -> None:
        self._specs[session_id] = {key: spec.get(key) for key in ("owner", "cwd", "state_dir")}

    async def conversation(self, ref: str) -> Conversation | None:
        session_id = ref if ref in self._claude_ids else self._newest.get(ref)
        if session_id is None:
            return None
        return conversation_of(self._claude_ids[session_id], self._specs.get(session_id, {}), False)

    async def transcript_stored(self, project_key: str, sdk_session_id: str) -> bool:
        return False  # the CLI keeps its own files

    async def session_closed(self, session_id: str, reason: str) -> None:
        self._artefacts.pop(session_id, None)
        if session_id not in self._claude_ids:  # it never had a conversation
            self._forget(session_id)
            return
        self._closed[session_id] = None
        if len(self._closed) > MAX_CLOSED_KEPT:
            self._forget(self._closed.popitem(last=False)[0])

    def _forget(self, session_id: str) -> None:
        self._specs.pop(session_id, None)
        claude_id = self._claude_ids.pop(session_id, None)
        if claude_id is not None and self._newest.get(claude_id) == session_id:
            del self._newest[claude_id]

    async def release(self, session_id: str, last_active: float) -> None:
        pass

    async def open_sessions(
        self, ring_size: int, idle_timeout_s: float
    ) -> list[ClaimedSession | ShelvedSession]:
        return []

    async def claim(
        self, session_id: str, ring_size: int, principal: str | None
    ) -> ClaimedSession | None:
        return None

    def sdk_session_store(self) -> SessionStore | None:
        return None

    def add_usage(self, record: UsageRecord) -> None:
        self._usage.setdefault((record.principal, record.day), Usage()).add(record.usage)

    async def usage_days(self, principal: str | None, since: str, until: str) -> list[DayUsage]:
        return [
            DayUsage(who, day, usage.copy())
            for (who, day), usage in sorted(self._usage.items())
            if (principal is None or who == principal) and since <= day <= until
        ]

    async def save_artefact(self, session_id: str, record: StoredVersion) -> None:
        contents = self._artefacts.setdefault(session_id, {})
        contents[(record.artefact_id, record.version.version)] = record.content

    async def delete_artefact(self, session_id: str, artefact_id: str) -> None:
        contents = self._artefacts.get(session_id, {})
        for key in [k for k in contents if k[0] == artefact_id]:
            del contents[key]

    async def artefact_content(self, session_id: str, artefact_id: str, version: int) -> str | None:
        return self._artefacts.get(session_id, {}).get((artefact_id, version))
