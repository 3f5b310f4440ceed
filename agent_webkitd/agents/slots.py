"""The cap on live CLI processes (`sessions.max_live_agents`) and on how many start at once.

A slot is held from just before a CLI is spawned until its process has exited, so the
cap is on processes, not on sessions. When a session needs a CLI and every slot is
taken, the least recently used session whose CLI sits idle hibernates to make room; if
none is idle, a wake waits in line (first come, first served) and takes the next slot
that frees up, while a create is refused with 503 `agents_busy`. Starting a CLI is
CPU-heavy, so at most `max_concurrent_starts` start at a time (no spawn storm when many
sessions wake together). Warm CLIs (warmpool.py) hold slots too, only ones nobody else
wants, and are the first to go when room is needed.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Protocol

from ..errors import unavailable

AGENTS_BUSY_RETRY_S = 2


class Holder(Protocol):
    """A session, as far as the slots care."""

    @property
    def last_used(self) -> float: ...

    def can_hibernate(self) -> bool: ...

    def stopping(self) -> bool: ...

    def request_hibernation(self) -> bool: ...


class AgentSlots:
    def __init__(self, limit: int, max_concurrent_starts: int) -> None:
        self.limit = limit
        self._holders: dict[Holder, None] = {}  # who holds a slot, at most `limit`
        self._queue: deque[tuple[asyncio.Future[None], Holder]] = deque()
        self._starts = asyncio.Semaphore(max_concurrent_starts)

    @property
    def live(self) -> int:
        """CLI processes starting, running or stopping."""
        return len(self._holders)

    @property
    def waiting(self) -> int:
        return len(self._queue)

    async def acquire(self, holder: Holder, *, wait: bool) -> None:
        """Take a slot, hibernating the least recently used idle CLI if none is free.
        Without `wait`, 503 `agents_busy` when nothing can make room."""
        if self.try_acquire(holder):
            return
        if not self._make_room(len(self._queue) + 1) and not wait:
            raise unavailable(
                "agents_busy",
                f"all {self.limit} agent processes are busy; retry shortly",
                AGENTS_BUSY_RETRY_S,
            )
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (granted, holder)
        self._queue.append(entry)
        try:
            await granted
        except asyncio.CancelledError:
            if granted.done() and not granted.cancelled():
                self.release(holder)  # handed over just as we gave up: pass it on
            else:
                self._queue.remove(entry)
            raise

    @property
    def free(self) -> bool:
        """A slot is free and nobody waits for one."""
        return len(self._holders) < self.limit and not self._queue

    def try_acquire(self, holder: Holder) -> bool:
        """Take a free slot if there is one and nobody waits; never makes room."""
        if self.free:
            self._holders[holder] = None
            return True
        return False

    def hand_over(self, holder: Holder, to: Holder) -> None:
        """A running CLI changes hands (a warm CLI to its session): so does its slot."""
        del self._holders[holder]
        self._holders[to] = None

    def release(self, holder: Holder) -> None:
        """The holder's CLI is gone: hand its slot to the next in line."""
        if holder not in self._holders:
            return
        del self._holders[holder]
        while self._queue:
            granted, waiter = self._queue.popleft()
            if not granted.done():
                self._holders[waiter] = None
                granted.set_result(None)
                return

    def offer(self) -> None:
        """A CLI has just gone idle: hibernate idle CLIs for whoever waits in line."""
        if self._queue:
            self._make_room(len(self._queue))

    @asynccontextmanager
    async def starting(self) -> AsyncIterator[None]:
        async with self._starts:
            yield

    def _make_room(self, wanted: int) -> bool:
        """Have `wanted` slots on their way to free (counting CLIs already stopping),
        hibernating the least recently used idle CLIs; False if that many cannot be."""
        on_the_way = sum(1 for h in self._holders if h.stopping())
        while on_the_way < wanted:
            idle = [h for h in self._holders if h.can_hibernate()]
            if not idle or not min(idle, key=lambda h: h.last_used).request_hibernation():
                return False
            on_the_way += 1
        return True
