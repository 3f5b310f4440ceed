"""The shelf: hibernated sessions that live in a durable store alone.

A hibernated session still holds its event log, bridge, artefact index, turn queue and
logger in memory, some 15 KiB. Once it has also been quiet for `[sessions]
shelve_after_s`, with no stream open and nothing pending, the Supervisor releases it to
the store (as a shutdown would) and keeps only a ShelvedSession here: owner, state and
settings for listings and the 404 rule, its last activity for idle eviction. The next
request that needs the session loads it back whole (Store.claim), with its event ids
continuing from the store's, exactly as a restart or another host would take it up.

The memory store keeps nothing beyond memory: nothing is shelved there.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ..stores.base import ShelvedSession

if TYPE_CHECKING:
    from .session import Session


class Shelf:
    def __init__(self) -> None:
        self._entries: dict[str, ShelvedSession] = {}
        self._by_owner: dict[str, dict[str, ShelvedSession]] = {}
        # Owner names, model names and modes repeat across thousands of sessions: one
        # string each instead of one per entry.
        self._names: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, session_id: str) -> ShelvedSession | None:
        return self._entries.get(session_id)

    def add(self, entry: ShelvedSession) -> None:
        entry.owner = self._name(entry.owner)
        entry.permission_mode = self._name(entry.permission_mode)
        if entry.model is not None:
            entry.model = self._name(entry.model)
        entry.folders = ()
        self._entries[entry.session_id] = entry
        self._by_owner.setdefault(entry.owner, {})[entry.session_id] = entry

    def remove(self, session_id: str) -> None:
        entry = self._entries.pop(session_id, None)
        if entry is None:
            return
        owned = self._by_owner.get(entry.owner)
        if owned is not None:
            owned.pop(session_id, None)
            if not owned:
                del self._by_owner[entry.owner]

    def owned_by(self, owner: str) -> list[ShelvedSession]:
        return list(self._by_owner.get(owner, {}).values())

    def count(self, owner: str) -> int:
        return len(self._by_owner.get(owner, ()))

    def all(self) -> list[ShelvedSession]:
        return list(self._entries.values())

    def holding(self, ref: str) -> ShelvedSession | None:
        """The shelved session with this id, or holding this Claude conversation (a
        resume must find its holder; a scan, as resumes are rare)."""
        if (entry := self._entries.get(ref)) is not None:
            return entry
        return next((e for e in self._entries.values() if e.claude_session_id == ref), None)

    def idle_past(self, timeout_s: float) -> Iterator[ShelvedSession]:
        """The entries idle for `timeout_s` or longer (to be evicted)."""
        cutoff = time.time() - timeout_s
        return (e for e in list(self._entries.values()) if e.last_active <= cutoff)

    def _name(self, name: str) -> str:
        return self._names.setdefault(name, name)

    @staticmethod
    def entry_of(session: Session) -> ShelvedSession:
        return ShelvedSession(
            session.id,
            session.owner,
            session.created_at,
            time.time() - session.idle_seconds(),
            session.log.published_seq,
            session.model,
            session.permission_mode,
            session.claude_session_id,
        )


def describe(entry: ShelvedSession) -> dict[str, Any]:
    """What GET /sessions shows of a shelved session (history.describe's shape)."""
    return {
        "session_id": entry.session_id,
        "owner": entry.owner,
        "state": "hibernated",
        "created_at": datetime.fromtimestamp(entry.created_at, UTC).isoformat(),
        "idle_for_s": round(max(0.0, time.time() - entry.last_active), 1),
        "subscribers": 0,
        "last_seq": entry.last_seq,
        "model": entry.model,
        "permission_mode": entry.permission_mode,
        "claude_session_id": entry.claude_session_id,
        "pending_decisions": 0,
    }
