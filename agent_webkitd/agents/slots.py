"""The cap on live CLI processes (`sessions.max_live_agents`) and on how many start at once.

A slot is held from just before a CLI is spawned until its process has exited, so the
cap is on processes, not on sessions. When a session needs a CLI and every slot is
taken, the least recently used session whose CLI sits idle hibernates to make room; if
none is idle, a wake waits in line (first come, first served) and takes the next slot
that frees up, while a create is refused with 503 `agents_busy`. Starting a CLI is
CPU-heavy, so at most `max_concurrent_starts` start at a time (no spawn storm when many
sessions wake together). Warm CLIs (warmpool.py) hold slots too, only ones nobody else
wants, and are the first to go when room is needed.

Fair shares (`sessions.max_live_agents_per_principal`): one principal's CLIs count
against its share too. A principal at its share makes room among its own sessions only
(its least recently used idle CLI hibernates, never another principal's), its wakes wait
for its own share, and its create is 429 `principal_at_capacity` when none of its CLIs
is idle; while it waits, others go ahead of it.
"""

from __future__ import annotations

import asyncio
from collections import Counter, deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Protocol

from ..errors import ApiError, unavailable

AGENTS_BUSY_RETRY_S = 2


class Holder(Protocol):
    """A session, as far as the slots care."""

    @property
    def owner(self) -> str:
        """Its principal ("" for a warm CLI, nobody's yet)."""
        ...

    @property
    def last_used(self) -> float: ...

    def can_hibernate(self) -> bool: ...

    def stopping(self) -> bool: ...

    def request_hibernation(self) -> bool: ...


class AgentSlots:
    def __init__(self, limit: int, max_concurrent_starts: int, share: int = 0) -> None:
        self.limit = limit
        self.share = share  # one principal's CLIs at most; 0 = no share of its own
        self.max_concurrent_starts = max_concurrent_starts
        self._holders: dict[Holder, None] = {}  # who holds a slot, at most `limit`
        self._owned: Counter[str] = Counter()  # slots held, by principal
        self._queue: deque[tuple[asyncio.Future[None], Holder]] = deque()
        self._starts = asyncio.Semaphore(max_concurrent_starts)

    @property
    def live(self) -> int:
        """CLI processes starting, running or stopping."""
        return len(self._holders)

    @property
    def waiting(self) -> int:
        return len(self._queue)

    def by_principal(self) -> dict[str, dict[str, int]]:
        """Live and waiting CLIs of each principal that has any (admin listings)."""
        waiting = Counter(h.owner for _, h in self._queue)
        return {
            owner: {"live_agents": self._owned[owner], "waiting_for_agent": waiting[owner]}
            for owner in sorted((set(self._owned) | set(waiting)) - {""})
        }

    async def acquire(self, holder: Holder, *, wait: bool) -> None:
        """Take a slot, hibernating the least recently used idle CLI if none is free (the
        holder's own, when its principal is at its share). Without `wait`, 503
        `agents_busy` (429 `principal_at_capacity` at the share) when nothing can make room."""
        if self.try_acquire(holder):
            return
        if self._at_share(holder.owner):
            own_waiting = sum(1 for _, h in self._queue if h.owner == holder.owner)
            if not self._make_room(own_waiting + 1, holder.owner) and not wait:
                raise ApiError(
                    429,
                    "principal_at_capacity",
                    f"all {self.share} of your agent processes are busy; retry shortly",
                    {"Retry-After": str(AGENTS_BUSY_RETRY_S)},
                )
        elif not self._make_room(self._eligible_waiting() + 1) and not wait:
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
            elif entry in self._queue:  # (a release may have swept it out already)
                self._queue.remove(entry)
            raise

    @property
    def free(self) -> bool:
        """A slot is free and nobody who could take it waits for one."""
        return len(self._holders) < self.limit and not self._eligible_waiting()

    def try_acquire(self, holder: Holder) -> bool:
        """Take a free slot if there is one, nobody waits and the holder's principal is
        within its share; never makes room."""
        if self.free and not self._at_share(holder.owner):
            self._hold(holder)
            return True
        return False

    def hand_over(self, holder: Holder, to: Holder) -> None:
        """A running CLI changes hands (a warm CLI to its session): so does its slot.
        (A principal at its share may go one over with a warm CLI: it is there already.)"""
        self._drop(holder)
        self._hold(to)

    def release(self, holder: Holder) -> None:
        """The holder's CLI is gone: hand its slot to the next in line who may take it."""
        if holder not in self._holders:
            return
        self._drop(holder)
        for entry in list(self._queue):
            granted, waiter = entry
            if granted.done():
                self._queue.remove(entry)
            elif len(self._holders) >= self.limit:
                return
            elif not self._at_share(waiter.owner):  # one at its share waits for its own
                self._queue.remove(entry)
                self._hold(waiter)
                granted.set_result(None)

    def offer(self) -> None:
        """A CLI has just gone idle: hibernate idle CLIs for whoever waits in line (for
        one waiting on its principal's share, that principal's own)."""
        if not self._queue:
            return
        self._make_room(self._eligible_waiting())
        for owner, waiting in Counter(h.owner for _, h in self._queue).items():
            if self._at_share(owner):
                self._make_room(waiting, owner)

    def _at_share(self, owner: str) -> bool:
        return bool(self.share and owner and self._owned[owner] >= self.share)

    def _eligible_waiting(self) -> int:
        return sum(1 for _, h in self._queue if not self._at_share(h.owner))

    def _hold(self, holder: Holder) -> None:
        self._holders[holder] = None
        self._owned[holder.owner] += 1

    def _drop(self, holder: Holder) -> None:
        del self._holders[holder]
        self._owned[holder.owner] -= 1
        if not self._owned[holder.owner]:
            del self._owned[holder.owner]

    @asynccontextmanager
    async def starting(self) -> AsyncIterator[None]:
        async with self._starts:
            yield

    def _make_room(self, wanted: int, owner: str | None = None) -> bool:
        """Have `wanted` slots on their way to free (counting CLIs already stopping),
        hibernating the least recently used idle CLIs (only `owner`'s, if given); False
        if that many cannot be."""
        mine = [h for h in self._holders if owner is None or h.owner == owner]
        on_the_way = sum(1 for h in mine if h.stopping())
        while on_the_way < wanted:
            idle = [h for h in mine if h.can_hibernate()]
            if not idle or not min(idle, key=lambda h: h.last_used).request_hibernation():
                return False
            on_the_way += 1
        return True
