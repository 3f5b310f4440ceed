"""Where events live beyond the ring: the seam between the EventLog and durable storage.

The memory store keeps nothing beyond each session's ring (the ring is the store), so a
cursor older than the ring gets 412. A durable store (Postgres) implements the same
surface so that seq continues after a restart and is never reused.
"""

from __future__ import annotations

from typing import Any, Protocol


class Store(Protocol):
    def last_seq(self, session_id: str) -> int:
        """The newest seq ever assigned to this session (0 for a new session)."""
        ...

    def first_seq(self, session_id: str) -> int:
        """The oldest seq this store can still replay (1 if it keeps everything)."""
        ...

    def append(self, session_id: str, seq: int, name: str, data: dict[str, Any]) -> None:
        """Record one event."""
        ...

    async def check(self) -> None:
        """Raise if the store cannot be used right now (for /readyz)."""
        ...


class MemoryStore:
    """Nothing survives the process; the ring is all the history there is."""

    def last_seq(self, session_id: str) -> int:
        return 0

    def first_seq(self, session_id: str) -> int:
        return 1

    def append(self, session_id: str, seq: int, name: str, data: dict[str, Any]) -> None:
        pass

    async def check(self) -> None:
        pass
