"""The Supervisor: creates, finds and closes Sessions; enforces operator policy and capacity.

It also runs the one keepalive ticker that pulses every session's event log, so idle
SSE subscribers can write `: keepalive` without a timer of their own.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import structlog

from . import wire
from .config import Config
from .errors import ApiError, bad_request, not_found, unavailable
from .session import AgentStartFailed, Session, SessionSpec
from .store import Store

log = structlog.get_logger(__name__)

DRAIN_POLL_S = 0.2


class Supervisor:
    def __init__(self, config: Config, store: Store) -> None:
        self.config = config
        self.store = store
        self.sessions: dict[str, Session] = {}
        self._starting = 0  # creations in flight, reserved against the cap
        self._ticker: asyncio.Task[None] | None = None
        self.draining = False

    async def start(self) -> None:
        self._ticker = asyncio.create_task(self._tick(), name="keepalive-ticker")

    async def stop(self) -> None:
        """Close every session (each stream ends with `done`, each CLI process ends)."""
        if self._ticker is not None:
            self._ticker.cancel()
        await asyncio.gather(*(self.delete(s) for s in list(self.sessions)), return_exceptions=True)

    async def wait_until_quiet(self, timeout_s: float, abort: asyncio.Event) -> bool:
        """Wait until no session has a turn running or queued (True), or until the
        timeout or `abort` (False). Turns are short-lived, so a light poll is enough."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while any(s.busy for s in self.sessions.values()):
            if abort.is_set() or asyncio.get_running_loop().time() >= deadline:
                return False
            await asyncio.sleep(DRAIN_POLL_S)
        return True

    async def _tick(self) -> None:
        period = self.config.server.keepalive_s / 2
        while True:
            await asyncio.sleep(period)
            for session in list(self.sessions.values()):
                session.log.pulse()

    async def create(self, request: wire.CreateSession) -> Session:
        agent = self.config.agent
        mode = request.permission_mode or agent.permission_mode
        wire.check_mode_allowed(mode, agent.allowed_permission_modes)
        cwd = self._resolve_cwd(request.cwd)
        if self.draining:
            raise unavailable(
                "draining", "this server is shutting down; create the session elsewhere", 5
            )
        if len(self.sessions) + self._starting >= self.config.sessions.max_sessions:
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
        )
        session = Session(spec, self.store, self._forget)
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
        session.logger.info("session_created", model=spec.model, permission_mode=mode, cwd=cwd)
        return session

    def get(self, session_id: str) -> Session:
        session = self.sessions.get(session_id)
        if session is None:
            raise not_found(session_id)
        return session

    async def delete(self, session_id: str) -> None:
        session = self.sessions.pop(session_id, None)
        if session is None:
            raise not_found(session_id)
        await session.close()

    def _forget(self, session: Session) -> None:
        if self.sessions.get(session.id) is session:
            del self.sessions[session.id]

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
