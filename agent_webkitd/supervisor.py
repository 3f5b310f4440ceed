"""The Supervisor: creates, finds, evicts and closes Sessions; enforces operator policy,
capacity and the drain.

It runs two small periodic tasks: the keepalive ticker that pulses every session's
event log (so idle SSE subscribers write `: keepalive` without a timer of their own),
and the idle sweep that evicts sessions idle past `idle_timeout_s`.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import structlog

from . import wire
from .config import Config
from .errors import ApiError, bad_request, not_found, unavailable
from .metrics import Metrics
from .session import AgentStartFailed, Session, SessionSpec
from .store import Store

log = structlog.get_logger(__name__)

# The idle sweep runs this often (or four times per idle timeout, if that is shorter),
# so a session is evicted within about a second of its deadline.
IDLE_SWEEP_S = 1.0
# How often the drain checks whether every session is gone.
DRAIN_POLL_S = 0.2


class Supervisor:
    def __init__(self, config: Config, store: Store, metrics: Metrics) -> None:
        self.config = config
        self.store = store
        self.metrics = metrics
        self.sessions: dict[str, Session] = {}
        self.draining = False
        self._starting = 0  # creations in flight, reserved against the cap
        self._tasks: list[asyncio.Task[None]] = []
        self._closing: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._keepalive_ticker(), name="keepalive-ticker"),
            asyncio.create_task(self._idle_sweep(), name="idle-sweep"),
        ]

    async def stop(self) -> None:
        """Close every session left (each stream ends with `done`, each CLI process ends)."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(
            *(self.close(s, "drain") for s in list(self.sessions.values())), *self._closing
        )

    async def wait_until_empty(self, timeout_s: float, abort: asyncio.Event) -> bool:
        """Drain: wait until every session has idled out or been deleted (True), or until
        the timeout or `abort` (False)."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while self.sessions or self._starting:
            if abort.is_set() or asyncio.get_running_loop().time() >= deadline:
                return False
            await asyncio.sleep(DRAIN_POLL_S)
        return True

    async def _keepalive_ticker(self) -> None:
        period = self.config.server.keepalive_s / 2
        while True:
            await asyncio.sleep(period)
            for session in list(self.sessions.values()):
                session.log.pulse()

    async def _idle_sweep(self) -> None:
        timeout = self.config.sessions.idle_timeout_s
        period = min(IDLE_SWEEP_S, timeout / 4)
        while True:
            await asyncio.sleep(period)
            for session in list(self.sessions.values()):
                idle = session.idle_for()
                if idle >= timeout:
                    session.logger.info("session_idle_evicted", idle_for_s=round(idle, 1))
                    task = asyncio.create_task(self.close(session, "idle"))
                    self._closing.add(task)
                    task.add_done_callback(self._closing.discard)

    async def create(self, request: wire.CreateSession) -> Session:
        agent = self.config.agent
        mode = request.permission_mode or agent.permission_mode
        wire.check_mode_allowed(mode, agent.allowed_permission_modes)
        cwd = self._resolve_cwd(request.cwd)
        if self.draining:
            self.metrics.capacity_rejections.inc({"reason": "draining"})
            raise unavailable(
                "draining", "this server is shutting down; create the session elsewhere", 5
            )
        if len(self.sessions) + self._starting >= self.config.sessions.max_sessions:
            self.metrics.capacity_rejections.inc({"reason": "at_capacity"})
            raise unavailable(
                "at_capacity",
                f"this server hosts at most {self.config.sessions.max_sessions} sessions",
                5,
            )
        spec = SessionSpec(
            agent=agent,
            model=request.model or agent.model or None,
            permission_mode=mode,
            cwd=cwd,
            ring_size=self.config.sessions.ring_size,
            inbound_queue_size=self.config.sessions.inbound_queue_size,
            permission_timeout_s=self.config.sessions.permission_timeout_s,
        )
        session = Session(spec, self.store, self.metrics, self._forget)
        self._starting += 1
        try:
            await session.start()
        except AgentStartFailed as exc:
            session.logger.warning("agent_start_failed", error=str(exc))
            tail = f"; stderr: {exc.stderr_tail[-2000:]}" if exc.stderr_tail else ""
            raise ApiError(
                502, "agent_start_failed", f"the agent could not start: {exc}{tail}"
            ) from exc
        finally:
            self._starting -= 1
        self.sessions[session.id] = session
        self.metrics.sessions_created.inc({})
        session.logger.info("session_created", model=spec.model, permission_mode=mode, cwd=cwd)
        return session

    def get(self, session_id: str) -> Session:
        session = self.sessions.get(session_id)
        if session is None:
            raise not_found(session_id)
        return session

    async def delete(self, session_id: str) -> None:
        await self.close(self.get(session_id), "closed")

    async def close(self, session: Session, reason: str) -> None:
        # Gone from the registry at once: the id answers 404 while the CLI shuts down.
        self.sessions.pop(session.id, None)
        await session.close(reason)

    def _forget(self, session: Session) -> None:
        """Called by every session as it ends, whatever ended it."""
        self.sessions.pop(session.id, None)
        self.metrics.sessions_evicted.inc({"reason": session.close_reason or "error"})

    def _resolve_cwd(self, requested: str | None) -> str | None:
        agent = self.config.agent
        if requested is None:
            return agent.cwd or None
        real = os.path.realpath(requested)
        roots = [os.path.realpath(r) for r in agent.allowed_cwd_roots]
        if not any(real == root or real.startswith(root.rstrip(os.sep) + os.sep) for root in roots):
            raise ApiError(
                403, "cwd_not_allowed", f"cwd {requested!r} is not inside an allowed root"
            )
        if not Path(real).is_dir():
            raise bad_request("cwd_not_found", f"cwd {requested!r} is not a directory")
        return real

    def refresh_gauges(self) -> None:
        """Set the point-in-time gauges just before a scrape."""
        sessions = list(self.sessions.values())
        self.metrics.sessions_live.set({}, len(sessions))
        self.metrics.subscribers_live.set({}, sum(s.subscribers for s in sessions))
        self.metrics.decisions_pending.set(
            {}, sum(len(s.bridge.decisions.pending) for s in sessions)
        )
