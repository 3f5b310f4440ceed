"""Warm CLIs (`[agent] warm_agents`): a few CLI processes started ahead of time with the
operator's defaults, so that POST /sessions hands one over at once instead of waiting
for a CLI to start.

A warm CLI holds an agent slot (slots.py) like any other, takes only a slot nobody
else wants, and is the first to go when room is needed: it has never been used. One that
exits while it waits is never handed out; it is replaced, after a pause that doubles
with every failure in a row (a CLI that cannot start is not restarted in a tight loop).
The pool refills one CLI at a time in the background.

A warm CLI already works in the workspace of the session it will serve (its id chosen
when the CLI is built, `Agent.reserved_for`); one that is never handed over has its
folders removed (`discard`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable

import structlog

from ..metrics import Metrics
from .agent import Agent, AgentStartFailed
from .slots import AgentSlots, Holder

log = structlog.get_logger(__name__)

ROOM_POLL_S = 1.0  # how often a pool short of CLIs looks for a free slot
MAX_BACKOFF_S = 60.0


class _Warm:
    """A warm CLI as the agent slots see it: always idle, never used, first to go."""

    last_used = float("-inf")
    owner = ""  # nobody's until a session takes it

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.taken = False
        self.watcher: asyncio.Task[None] | None = None

    def can_hibernate(self) -> bool:
        return not self.taken and not self.agent.stopping

    def stopping(self) -> bool:
        return self.agent.stopping

    def request_hibernation(self) -> bool:
        self.agent.stop()
        return True


class WarmPool:
    def __init__(
        self,
        size: int,
        slots: AgentSlots,
        build: Callable[[], Agent],
        discard: Callable[[Agent], None],
        start_timeout_s: float,
        metrics: Metrics,
    ) -> None:
        self.size = size
        self._slots = slots
        self._build = build  # an Agent with the operator's defaults, not started
        self._discard = discard  # a warm CLI gone unused: its folders go too
        self._start_timeout_s = start_timeout_s
        self._metrics = metrics
        self._ready: deque[_Warm] = deque()
        self._watchers: set[asyncio.Task[None]] = set()
        self._wanted = asyncio.Event()  # a CLI was taken or lost: refill
        self._failures = 0  # in a row; reset when a CLI is handed over
        self._retry_at = 0.0  # after a failure, no start before this (loop time)
        self._stopped = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def ready(self) -> int:
        """Warm CLIs that can be handed over now."""
        return sum(1 for warm in self._ready if not warm.agent.stopping)

    def start(self) -> None:
        if self.size:
            self._task = asyncio.create_task(self._refill(), name="warm-pool")

    def peek(self) -> Agent | None:
        """The warm CLI `take` would hand over now (its session id is the new session's)."""
        if self._stopped.is_set():
            return None
        return next((w.agent for w in self._ready if not w.agent.stopping), None)

    def take(self, to: Holder, agent: Agent) -> None:
        """Hand `agent` (what `peek` returned, with nothing awaited since) to a new
        session, its slot with it."""
        warm = next(w for w in self._ready if w.agent is agent)
        self._ready.remove(warm)
        warm.taken = True
        if warm.watcher is not None:  # the session watches its CLI from now on
            warm.watcher.cancel()
        self._slots.hand_over(warm, to)
        self._failures = 0
        self._wanted.set()

    async def stop(self) -> None:
        """Stop refilling and stop every warm CLI (the drain, the shutdown)."""
        self._stopped.set()
        self._wanted.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)  # a start in flight ends
        for warm in self._ready:
            warm.agent.stop()
        await asyncio.gather(*self._watchers, return_exceptions=True)

    async def _refill(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stopped.is_set():
            if len(self._ready) >= self.size:
                await self._wait(None)
                continue
            if (backoff := self._retry_at - loop.time()) > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(backoff):
                        await self._stopped.wait()
                continue
            if not self._slots.free:  # every slot is wanted by sessions
                await self._wait(ROOM_POLL_S)
                continue
            warm = _Warm(self._build())
            self._slots.try_acquire(warm)  # still free: nothing ran since the check
            try:
                async with self._slots.starting():
                    await warm.agent.start(self._start_timeout_s)
            except AgentStartFailed as exc:
                self._discard(warm.agent)
                self._slots.release(warm)
                self._metrics.agent_start_failures.inc({})
                self._failed("warm_agent_start_failed", str(exc))
                continue
            self._ready.append(warm)
            warm.watcher = asyncio.create_task(self._watch(warm), name="warm-agent")
            self._watchers.add(warm.watcher)
            warm.watcher.add_done_callback(self._watchers.discard)

    async def _watch(self, warm: _Warm) -> None:
        """Until it is handed over: if the CLI goes, give its slot back and replace it."""
        exit_ = await asyncio.shield(warm.agent.exited)  # cancelled at take: not the CLI
        with contextlib.suppress(ValueError):
            self._ready.remove(warm)
        await warm.agent.closed()
        self._discard(warm.agent)
        self._slots.release(warm)
        if exit_ is not None:  # it died on its own; stopped on request is no failure
            self._metrics.agent_exits.inc({})
            self._failed("warm_agent_exited", exit_.message)
        self._wanted.set()

    def _failed(self, event: str, error: str) -> None:
        self._failures += 1
        backoff = min(MAX_BACKOFF_S, 2.0 ** (self._failures - 1))
        self._retry_at = asyncio.get_running_loop().time() + backoff
        log.warning(event, error=error, failures_in_a_row=self._failures, retry_in_s=backoff)

    async def _wait(self, timeout_s: float | None) -> None:
        """Until a CLI is wanted (taken, lost, or the pool stops), at most `timeout_s`."""
        self._wanted.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._wanted.wait()
