"""A session's turns: the inbound queue, one query at a time, and the turn watchdog.

User messages wait in a bounded queue (full: 503 `backpressure`) and go to the CLI one at
a time, each after the previous turn's `result`; an interrupt takes back every one that
has not started (`discard_waiting`). The turn task (`serve`) runs while the
session has a CLI; the session cancels it when the CLI stops, and messages that arrive
meanwhile wait for the next CLI. A turn whose CLI goes silent for too long (not waiting
for a person) is interrupted, and if that does not end it, the CLI is killed
(`watch`; the session reports `turn_stalled`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from ..agents.agent import Agent
from ..errors import unavailable
from ..metrics import Metrics
from ..protocol import wire

INTERRUPT_TIMEOUT_S = 5.0


class Turns:
    def __init__(
        self,
        queue_size: int,
        metrics: Metrics,
        logger: Any,
        on_change: Callable[[], None],
        on_turn_end: Callable[[], None],
    ) -> None:
        self._inbox: asyncio.Queue[wire.UserMessage] = asyncio.Queue(queue_size)
        self._metrics = metrics
        self._logger = logger
        self._on_change = on_change  # the live state may have changed (running, cancelling)
        self._on_turn_end = on_turn_end  # a turn's result is in
        self._done = asyncio.Event()
        self.running = False  # a turn is under way
        self.cancelling = False  # ...and an interrupt was sent
        self._last_output = time.monotonic()  # the CLI's last message
        self._stalled_since: float | None = None  # interrupted for silence at this time
        self.stall_killed = False
        self._chores: set[asyncio.Future[Any]] = set()

    @property
    def waiting(self) -> int:
        """User messages queued behind the running turn (or for the next wake)."""
        return self._inbox.qsize()

    @property
    def busy(self) -> bool:
        """A turn is running or waiting in the queue."""
        return self.running or not self._inbox.empty()

    def queue(self, message: wire.UserMessage) -> None:
        try:
            self._inbox.put_nowait(message)
        except asyncio.QueueFull:
            self._metrics.limit_rejections.inc({"limit": "inbound_queue"})
            raise unavailable(
                "backpressure", "too many queued messages for this session; retry later", 2
            ) from None

    def discard_waiting(self) -> list[wire.UserMessage]:
        """Take back every message that has not started (an interrupt, a wake that
        failed), in the order sent: none of them will reach the CLI."""
        dropped = []
        while not self._inbox.empty():
            dropped.append(self._inbox.get_nowait())
        return dropped

    def heard(self) -> None:
        """The CLI said something: the turn is alive."""
        self._last_output = time.monotonic()
        self._stalled_since = None

    def ended(self) -> None:
        """The running turn's `result` is in."""
        self._done.set()

    async def serve(self, agent: Agent) -> None:
        """The turn task: send each queued message to this CLI, one turn at a time."""
        while True:
            message = await self._inbox.get()
            self._done.clear()
            self.running = True
            self._last_output = time.monotonic()
            self._on_change()
            started = time.monotonic()
            try:
                await agent.client.query(_prompt(message.content))
            except Exception as exc:  # the CLI is gone; its exit is reported
                self._logger.warning("query_failed", error=str(exc))
                return
            await self._done.wait()
            self._metrics.turn_duration.observe({}, time.monotonic() - started)
            self.running = False
            self.cancelling = False
            self._on_turn_end()

    def reset(self) -> bool:
        """The CLI is gone: no turn runs any more. True if one was cut short."""
        aborted = self.running
        self.running = self.cancelling = self.stall_killed = False
        self._stalled_since = None
        return aborted

    def watch(self, agent: Agent, silence_limit_s: float, kill_grace_s: float) -> None:
        """A running turn whose CLI has sent nothing for `silence_limit_s` is interrupted;
        if that does not end it within `kill_grace_s`, the CLI is killed."""
        if not self.running:
            return
        now = time.monotonic()
        if self._stalled_since is None:
            if now - self._last_output >= silence_limit_s:
                self._stalled_since = now
                self._logger.warning("turn_stalled", silent_s=round(now - self._last_output, 1))
                self.cancelling = True
                self._on_change()
                self._background(self._interrupt_quietly(agent))
        elif now - self._stalled_since >= kill_grace_s and not agent.stopping:
            self.stall_killed = True
            self._logger.error("turn_stalled_kill", grace_s=kill_grace_s)
            self._background(agent.kill())

    async def _interrupt_quietly(self, agent: Agent) -> None:
        try:
            async with asyncio.timeout(INTERRUPT_TIMEOUT_S):
                await agent.client.interrupt()
        except Exception as exc:  # a hung CLI does not answer; the kill follows
            self._logger.warning("stall_interrupt_failed", error=str(exc))

    def _background(self, work: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(work)
        self._chores.add(task)
        task.add_done_callback(self._chores.discard)


def _prompt(content: str | list[dict[str, Any]]) -> str | AsyncIterator[dict[str, Any]]:
    if isinstance(content, str):
        return content

    async def one_message() -> AsyncIterator[dict[str, Any]]:
        yield {
            "type": "user",
            "message": {"role": "user", "content": content},
            "parent_tool_use_id": None,
        }

    return one_message()
