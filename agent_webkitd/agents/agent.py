"""One Claude Code CLI process behind a ClaudeSDKClient: its life from start (fresh or
resumed) to exit, and nothing else.

A Session is the conversation; an Agent is a replaceable cache of it. The SDK's anyio
task group must be entered and left in the same task, so one task owns the client from
connect() to disconnect(). It hands every SDK message to the session and reports how the
process ended: stopped on request (None), or on its own (crash, kill, unreadable output)
as an AgentExit with the exit code and the stderr tail.

A CLI that hangs is killed from outside: every CLI process carries a marker in its
environment, so `kill()` finds it (and anything it started) without reaching into the
SDK; the SDK then sees the process end and cleans up as after a crash. Cancelling the
SDK mid-connect instead could skip its kill escalation and orphan the process.

Every CLI starts confined (sandbox.py): in a sandbox or not, it reaches the model through
the daemon's gateway with a session key that is revoked once the process is gone.

Also here: the restart intensity that turns repeated crashes into a crash loop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import time
import uuid
from collections import deque
from pathlib import Path
from typing import Any, Protocol

from claude_agent_sdk import (
    ClaudeAgentOptions,
    ClaudeSDKClient,
    CLIJSONDecodeError,
    PermissionResult,
    PermissionResultDeny,
    ProcessError,
    ToolPermissionContext,
)
from claude_agent_sdk._errors import MessageParseError

from . import sdk_reader
from .sandbox import Confinement
from .toolsets import ToolHost, Toolset

STDERR_TAIL_LINES = 40
INTERRUPT_ON_STOP_TIMEOUT_S = 2.0
MARKER_ENV = "AGENT_WEBKITD_AGENT"  # in every CLI's environment: how kill() finds it
KILLED_GRACE_S = 10.0  # after a kill, how long the SDK may take to notice


class AgentStartFailed(Exception):
    def __init__(self, message: str, stderr_tail: str) -> None:
        super().__init__(message)
        self.stderr_tail = stderr_tail


@dataclasses.dataclass(frozen=True)
class AgentExit:
    """A CLI process that ended without being asked to."""

    code: str  # the wire error code: agent_exited | agent_protocol_error
    message: str  # what happened, with the exit code and the stderr tail
    exit_code: int | None


class Host(ToolHost, Protocol):
    """What an Agent needs of the session it serves (sessions/session.py): where the
    CLI's messages and permission prompts go, and what the daemon's tools reach."""

    id: str
    logger: Any

    async def on_agent_message(self, message: Any) -> None: ...

    async def can_use_tool(
        self, tool_name: str, tool_input: dict[str, Any], context: ToolPermissionContext
    ) -> PermissionResult: ...


class Agent:
    """One CLI process. It serves one session, named when it is built or, for a warm CLI
    started before its session exists, when it is handed over (`serve`): everything the
    SDK calls back (messages, permission prompts, the daemon's MCP tools) goes there."""

    def __init__(
        self,
        options: ClaudeAgentOptions,
        toolsets: tuple[Toolset, ...],
        logger: Any,
        session: Host | None,
        confinement: Confinement,
        state_dir: str,
        reserved_for: str | None = None,
    ) -> None:
        self._stderr: deque[str] = deque(maxlen=STDERR_TAIL_LINES)
        self.marker = uuid.uuid4().hex
        self.session = session
        self.reserved_for = reserved_for  # a warm CLI: the id of the session it will serve
        self._early: list[Any] = []  # what a warm CLI said before it had a session
        confined = confinement.confine(
            options,
            session_id=reserved_for or (session.id if session else None),
            state_dir=state_dir,
            marker_env={MARKER_ENV: self.marker},
        )
        self._release = confined.release  # the session key, the sandbox's arguments
        self.client = ClaudeSDKClient(
            dataclasses.replace(
                confined.options,
                stderr=self._stderr.append,
                can_use_tool=self._can_use_tool,
                mcp_servers={t.name: t.server(self._served) for t in toolsets},
                allowed_tools=[name for t in toolsets for name in t.allowed_tools()],
            )
        )
        self._logger = logger
        loop = asyncio.get_running_loop()
        self._connected: asyncio.Future[None] = loop.create_future()
        # How it ended, as soon as that is known (before the process is reaped).
        self.exited: asyncio.Future[AgentExit | None] = loop.create_future()
        self._stop = asyncio.Event()
        self._interrupt_on_stop = False
        self._task: asyncio.Task[None] | None = None

    async def serve(self, session: Host) -> None:
        """Hand a warm CLI to its session (with anything it said while it waited)."""
        self._logger = session.logger
        while self._early:
            await session.on_agent_message(self._early.pop(0))
        self.session = session

    def _served(self) -> Host:
        if self.session is None:  # the CLI has no turn before it is handed over
            raise RuntimeError("this agent serves no session yet")
        return self.session

    async def _can_use_tool(
        self, tool_name: str, tool_input: dict[str, Any], context: ToolPermissionContext
    ) -> PermissionResult:
        if self.session is None:
            return PermissionResultDeny(message="this agent serves no session yet")
        return await self.session.can_use_tool(tool_name, tool_input, context)

    async def start(self, timeout_s: float) -> float:
        """Start the process and connect; returns the seconds it took. Raises
        AgentStartFailed (with the stderr tail) if it cannot, or not within `timeout_s`
        (then the process is killed: nothing is left running)."""
        started = time.monotonic()
        self._task = asyncio.create_task(self._main(), name="agent")
        try:
            async with asyncio.timeout(timeout_s):
                await asyncio.shield(self._connected)
        except TimeoutError:
            await self.kill()
            try:
                async with asyncio.timeout(KILLED_GRACE_S):
                    await asyncio.shield(self._connected)
            except (AgentStartFailed, TimeoutError):
                pass
            raise AgentStartFailed(
                f"the agent did not start within {timeout_s:g} s", self.stderr_tail()
            ) from None
        return time.monotonic() - started

    async def kill(self) -> int:
        """SIGKILL the CLI process and whatever it started; returns how many were found."""
        pids = await asyncio.to_thread(processes_marked, self.marker)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return len(pids)

    def stop(self, *, interrupt: bool = False) -> None:
        """Disconnect cleanly (the SDK flushes the transcript; the CLI exits); with
        `interrupt`, stop a running turn first. `exited` then resolves with None."""
        self._interrupt_on_stop = self._interrupt_on_stop or interrupt
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set() or self.exited.done()

    async def closed(self) -> None:
        """Return once the process is gone and the client is disconnected."""
        if self._task is not None:
            await asyncio.shield(self._task)

    def stderr_tail(self) -> str:
        return "\n".join(self._stderr)

    async def _main(self) -> None:
        try:
            await self._run()
        finally:
            self._release()  # its session key stops working once the process is gone

    async def _run(self) -> None:
        try:
            await self.client.connect()  # disconnects by itself if it fails
        except Exception as exc:  # any failure to start is the starter's to report
            self._connected.set_exception(AgentStartFailed(str(exc), self.stderr_tail()))
            self.exited.set_result(None)
            return
        self._connected.set_result(None)
        reader = asyncio.create_task(self._read(), name="agent-reader")
        stop = asyncio.create_task(self._stop.wait())
        await asyncio.wait({reader, stop}, return_when=asyncio.FIRST_COMPLETED)
        if reader.done():
            self.exited.set_result(reader.result())
        elif self._interrupt_on_stop:
            await self._interrupt_before_stop()
        for task in (reader, stop):
            task.cancel()
        await asyncio.gather(reader, stop, return_exceptions=True)
        # Bounded inside the SDK (stdin close, then SIGTERM, then SIGKILL); an asyncio
        # timeout here could cut its kill escalation short and orphan the CLI.
        await self.client.disconnect()
        if not self.exited.done():
            self.exited.set_result(None)

    async def _interrupt_before_stop(self) -> None:
        """A CLI mid-turn would finish the turn (the model still generating) before it
        notices stdin closing, so stop the turn first, while the reader still drains."""
        try:
            async with asyncio.timeout(INTERRUPT_ON_STOP_TIMEOUT_S):
                await self.client.interrupt()
        except Exception as exc:  # the CLI may already be gone; disconnect copes
            self._logger.debug("interrupt_on_stop_failed", error=str(exc))

    async def _read(self) -> AgentExit:
        """Hand every message to the session until the process goes away."""
        while True:
            try:
                async for message in sdk_reader.messages(self.client):
                    if self.session is None:
                        self._early.append(message)
                    else:
                        await self.session.on_agent_message(message)
                return self._exit("agent_exited", "the agent process exited (code 0)", 0)
            except MessageParseError as exc:  # one odd message; the stream goes on
                self._logger.warning("sdk_message_unparseable", error=str(exc))
            except ProcessError as exc:
                code = exc.exit_code
                return self._exit("agent_exited", f"the agent process exited (code {code})", code)
            except CLIJSONDecodeError as exc:
                return self._exit(
                    "agent_protocol_error", f"unreadable output from the agent: {str(exc)[:300]}"
                )
            except Exception as exc:  # the SDK's reader failed: this process is done
                return self._exit("agent_exited", f"{type(exc).__name__}: {exc}")

    def _exit(self, code: str, head: str, exit_code: int | None = None) -> AgentExit:
        tail = self.stderr_tail()
        message = f"{head}; stderr: {tail[-2000:]}" if tail else head
        return AgentExit(code, message, exit_code)


def processes_marked(marker: str) -> list[int]:
    """Live processes whose environment carries this agent's marker."""
    needle = f"{MARKER_ENV}={marker}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if needle in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except OSError:  # gone, or not ours to read
                continue
    return found


class RestartIntensity:
    """OTP's restart intensity: more than `max_exits` within `period_s` is a crash loop."""

    def __init__(self, max_exits: int = 3, period_s: float = 600.0) -> None:
        self._max = max_exits
        self._period = period_s
        self._exits: deque[float] = deque()

    def record(self) -> bool:
        """Count one unexpected exit; True if that makes a crash loop."""
        now = time.monotonic()
        self._exits.append(now)
        while self._exits and self._exits[0] < now - self._period:
            self._exits.popleft()
        return len(self._exits) > self._max
