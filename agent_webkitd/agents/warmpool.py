"""Warm CLIs (`[agent] warm_agents`, `warm_agents_max`): CLI processes started ahead of time
with the operator's defaults, so that POST /sessions hands one over at once instead of
waiting for a CLI to start.

The pool sizes itself from demand. Users arrive in bursts (a class, a team's morning), and
creates closer together than a refill takes are served by what the pool already holds, so
it holds as many CLIs as the largest burst of creates it has seen lately: creates less
than BURST_S apart, remembered for `warm_agents_idle_s`; never fewer than `warm_agents`,
never more than `warm_agents_max` (each idle CLI is memory: ~185 MiB for the real one).
Once no remembered burst calls for them, the CLIs above the target are stopped. A new
host has seen nothing yet, and the first burst after a start or a deploy is the one users
notice: it starts as if it had just seen a burst of `warm_agents_max`.

A warm CLI holds an agent slot (slots.py) like any other, takes only a slot nobody
else wants, and is the first to go when room is needed: it has never been used. One that
exits while it waits is never handed out; it is replaced, after a pause that doubles
with every failure in a row (a CLI that cannot start is not restarted in a tight loop).
Short of its target, the pool starts several CLIs at once, leaving one of the slots'
concurrent starts to sessions (a wake never queues behind a refill); after a failure,
one at a time.

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
# Creates this close together are one burst: a real CLI takes 1-3 s to start, longer when
# several start at once on a busy host, so the pool cannot refill in between.
BURST_S = 10.0


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


class _Demand:
    """The largest burst of creates (creates less than BURST_S apart) in the last
    `remember_s`: a sliding maximum, O(1) per create, whatever the create rate."""

    def __init__(self, remember_s: float) -> None:
        self.remember_s = remember_s
        self._recent: deque[float] = deque()  # creates in the last BURST_S
        self._peaks: deque[tuple[float, int]] = deque()  # (when, burst): bursts decreasing

    def add(self, now: float, burst: int = 0) -> None:
        """A create at `now` (or, with `burst`, a burst of that size as if seen now)."""
        if not burst:
            self._recent.append(now)
            while self._recent[0] < now - BURST_S:
                self._recent.popleft()
            burst = len(self._recent)
        while self._peaks and self._peaks[-1][1] <= burst:  # smaller and older: never the max
            self._peaks.pop()
        self._peaks.append((now, burst))

    def largest(self, now: float) -> int:
        while self._peaks and self._peaks[0][0] < now - self.remember_s:
            self._peaks.popleft()
        return self._peaks[0][1] if self._peaks else 0

    def next_change_in(self, now: float) -> float | None:
        """Seconds until the largest burst is forgotten (None: nothing remembered)."""
        return max(0.0, self._peaks[0][0] + self.remember_s - now) if self._peaks else None


class WarmPool:
    def __init__(
        self,
        size: int,
        most: int,
        remember_s: float,
        slots: AgentSlots,
        build: Callable[[], Agent],
        discard: Callable[[Agent], None],
        start_timeout_s: float,
        metrics: Metrics,
    ) -> None:
        self.size = size  # the floor; 0 = no warm CLIs at all
        self.most = max(size, most) if size else 0  # the ceiling
        self._demand = _Demand(remember_s)
        self._slots = slots
        self._build = build  # an Agent with the operator's defaults, not started
        self._discard = discard  # a warm CLI gone unused: its folders go too
        self._start_timeout_s = start_timeout_s
        self._metrics = metrics
        self._ready: deque[_Warm] = deque()
        self._starting = 0  # CLIs being started for the pool
        self._starts: set[asyncio.Task[None]] = set()
        self._watchers: set[asyncio.Task[None]] = set()
        self._wanted = asyncio.Event()  # demand grew, a CLI was taken, lost or started
        self._failures = 0  # in a row; reset when a CLI is handed over
        self._retry_at = 0.0  # after a failure, no start before this (loop time)
        self._stopped = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def ready(self) -> int:
        """Warm CLIs that can be handed over now."""
        return sum(1 for warm in self._ready if not warm.agent.stopping)

    @property
    def target(self) -> int:
        """How many warm CLIs the pool wants now."""
        largest = self._demand.largest(asyncio.get_running_loop().time())
        return min(self.most, max(self.size, largest))

    def start(self) -> None:
        if self.size:
            self._demand.add(asyncio.get_running_loop().time(), burst=self.most)
            self._task = asyncio.create_task(self._refill(), name="warm-pool")

    def for_create(self) -> Agent | None:
        """A create that a warm CLI could serve: counted (the pool sizes itself from these);
        the warm CLI `take` would hand over now (its session id is the new session's)."""
        if self._stopped.is_set() or not self.size:
            return None
        self._demand.add(asyncio.get_running_loop().time())
        self._wanted.set()
        return next((w.agent for w in self._ready if not w.agent.stopping), None)

    def take(self, to: Holder, agent: Agent) -> None:
        """Hand `agent` (what `for_create` returned, with nothing awaited since) to a new
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
            await asyncio.gather(self._task, return_exceptions=True)
        await asyncio.gather(*self._starts, return_exceptions=True)  # starts in flight end
        for warm in self._ready:
            warm.agent.stop()
        await asyncio.gather(*self._watchers, return_exceptions=True)

    async def _refill(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stopped.is_set():
            target = self.target
            self._metrics.agents_warm_target.set({}, target)
            self._retire(target)
            if self._starting >= self._parallel() or len(self._ready) + self._starting >= target:
                await self._wait(self._demand.next_change_in(loop.time()))
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
            self._starting += 1
            task = asyncio.create_task(self._start(warm), name="warm-agent-start")
            self._starts.add(task)
            task.add_done_callback(self._starts.discard)

    def _parallel(self) -> int:
        """How many CLIs the pool starts at once: all the slots' concurrent starts but one,
        left to sessions; one at a time while starts fail."""
        return 1 if self._failures else max(1, self._slots.max_concurrent_starts - 1)

    async def _start(self, warm: _Warm) -> None:
        try:
            async with self._slots.starting():
                await warm.agent.start(self._start_timeout_s)
        except AgentStartFailed as exc:
            self._discard(warm.agent)
            self._slots.release(warm)
            self._metrics.agent_start_failures.inc({})
            self._failed("warm_agent_start_failed", str(exc))
        else:
            self._ready.append(warm)
            warm.watcher = asyncio.create_task(self._watch(warm), name="warm-agent")
            self._watchers.add(warm.watcher)
            warm.watcher.add_done_callback(self._watchers.discard)
        finally:
            self._starting -= 1  # here, not in a done callback: the refill loop wakes first
            self._wanted.set()

    def _retire(self, target: int) -> None:
        """Stop the warm CLIs above `target` (their watchers give the slots back); the
        newest go, the oldest are the next handed over."""
        waiting = [w for w in self._ready if not w.agent.stopping]
        for warm in waiting[target:]:
            warm.agent.stop()
        if len(waiting) > target:
            log.info("warm_agents_retired", retired=len(waiting) - target, target=target)

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
        """Until a CLI is wanted (demand, taken, lost, started, or the pool stops), at most
        `timeout_s`."""
        self._wanted.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._wanted.wait()
