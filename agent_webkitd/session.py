"""A Session: one ClaudeSDKClient (one CLI process), its inbound queue and its event log.

One runner task owns the client from `connect()` to `disconnect()` (the SDK's anyio task
group must be entered and left in the same task). Beside it, a reader task translates
SDK messages through the Bridge, and a turn task sends queued user messages one at a
time, each only after the previous turn's `result`. Control inputs (interrupt, decisions,
mode and model changes) bypass the queue and go to the SDK at once.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog
from claude_agent_sdk import (
    ClaudeAgentOptions,
    ClaudeSDKClient,
    CLIJSONDecodeError,
    ProcessError,
)
from claude_agent_sdk._errors import MessageParseError

from . import wire
from .bridge import Bridge
from .config import AgentConfig
from .errors import ApiError, unavailable
from .eventlog import EventLog
from .metrics import Metrics
from .store import ClaimedSession, Store

STDERR_TAIL_LINES = 40
# Events that settle a permission_request or ask_user_question.
DECISION_ENDINGS = (
    "permission_resolved",
    "question_resolved",
    "permission_expired",
    "permission_cancelled",
)
INTERRUPT_ON_CLOSE_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class SessionSpec:
    """What a session is built from: the operator's agent config plus the client's choices."""

    agent: AgentConfig
    model: str | None
    permission_mode: str
    cwd: str | None
    ring_size: int
    inbound_queue_size: int
    permission_timeout_s: float


class AgentStartFailed(Exception):
    def __init__(self, message: str, stderr_tail: str) -> None:
        super().__init__(message)
        self.stderr_tail = stderr_tail


class Session:
    def __init__(
        self,
        spec: SessionSpec,
        store: Store,
        metrics: Metrics,
        on_closed: Callable[[Session], None],
        claimed: ClaimedSession | None = None,
    ) -> None:
        self.id = claimed.session_id if claimed else str(uuid.uuid4())
        self._on_closed = on_closed
        self.spec = spec
        self.metrics = metrics
        self.store = store
        self.claimed = claimed
        self.log = EventLog(self.id, spec.ring_size, store, claimed.last_seq if claimed else 0)
        if claimed:
            self.log.load(claimed.frames)
        self.bridge = Bridge(
            self.id, self.emit, self._emit_state, spec.permission_timeout_s, metrics
        )
        self.state = "starting"
        self.created_at = time.time()
        self.last_activity = time.monotonic()
        self.subscribers = 0
        self.close_reason: str | None = None
        self.logger = structlog.get_logger(__name__).bind(session_id=self.id)
        self._inbox: asyncio.Queue[wire.UserMessage] = asyncio.Queue(spec.inbound_queue_size)
        self._stderr: deque[str] = deque(maxlen=STDERR_TAIL_LINES)
        self._client: ClaudeSDKClient | None = None
        self._connected: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._stop = asyncio.Event()
        self._turn_done = asyncio.Event()
        self._in_turn = False
        self._cancelling = False
        self._runner: asyncio.Task[None] | None = None
        self._release = False  # closing hands the session to another host instead
        self._sdk_session_id = claimed.sdk_session_id if claimed else None

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the CLI and connect; raises AgentStartFailed if it cannot."""
        self._runner = asyncio.create_task(self._run(), name=f"session-{self.id}")
        await self._connected
        if self.claimed:
            self._settle_claimed(self.claimed)
        else:
            self.emit(
                "session_ready", {"session_id": self.id, "protocol_version": wire.PROTOCOL_VERSION}
            )
        self._emit_state()

    def _settle_claimed(self, claimed: ClaimedSession) -> None:
        """The host that died may have left a turn running and decisions open: their CLI
        is gone, so withdraw each decision and end the turn, in the stream, for everyone."""
        pending: dict[str, None] = {}
        state = "idle"
        for name, data in claimed.events:
            if name in ("permission_request", "ask_user_question"):
                pending[data.get("correlation_id", "")] = None
            elif name in DECISION_ENDINGS:
                pending.pop(data.get("correlation_id", ""), None)
            elif name == "session_state":
                state = data.get("state", state)
        for correlation_id in pending:
            self.emit("permission_cancelled", {"correlation_id": correlation_id})
        if state not in ("idle", "closed"):
            self.emit(
                "error",
                {
                    "code": "turn_lost",
                    "message": "the host running this turn went away; the turn did not finish."
                    " The conversation up to the last completed turn is kept: send the message again",
                },
            )
        self.state = "starting"  # so _emit_state announces idle
        self.logger.info(
            "session_claimed",
            last_seq=claimed.last_seq,
            turn_lost=state not in ("idle", "closed"),
            decisions_withdrawn=len(pending),
            resumed=claimed.sdk_session_id is not None,
        )

    async def close(self, reason: str, *, release: bool = False) -> None:
        """Disconnect the client (the CLI process ends), end every stream with `done`.
        `release`: leave the session open in the store for another host to claim; its
        streams end without `done` so clients reconnect."""
        self._release = release
        self._stop_because(reason)
        if self._runner is not None:
            await asyncio.shield(self._runner)

    def _stop_because(self, reason: str) -> None:
        if self.close_reason is None:
            self.close_reason = reason
        self._stop.set()

    @property
    def busy(self) -> bool:
        """A turn is running or waiting in the queue."""
        return self._in_turn or not self._inbox.empty()

    # -- activity, for idle eviction ------------------------------------------------------

    def touch(self) -> None:
        self.last_activity = time.monotonic()

    def attach(self) -> None:
        self.subscribers += 1
        self.touch()

    def detach(self) -> None:
        self.subscribers -= 1
        self.touch()

    def idle_for(self) -> float:
        """Seconds since the last sign of life; 0 while anything keeps the session warm
        (a running or queued turn, a pending decision, an open stream)."""
        if self.busy or self.subscribers or self.bridge.decisions.pending:
            return 0.0
        return time.monotonic() - self.last_activity

    def describe(self, *, full: bool) -> dict[str, Any]:
        """What GET /sessions shows of this session (`full`: each pending request too)."""
        pending = list(self.bridge.decisions.pending.values())
        return {
            "session_id": self.id,
            "state": self.state,
            "created_at": datetime.fromtimestamp(self.created_at, UTC).isoformat(),
            "idle_for_s": round(self.idle_for(), 1),
            "subscribers": self.subscribers,
            "last_seq": self.log.published_seq,  # what a client can have seen
            "model": self.spec.model,
            "permission_mode": self.spec.permission_mode,
            "pending_decisions": (
                [{"kind": d.kind, **d.request} for d in pending] if full else len(pending)
            ),
        }

    @property
    def closed(self) -> bool:
        return self.log.closed

    def _options(self) -> ClaudeAgentOptions:
        agent = self.spec.agent
        transcripts = self.store.sdk_session_store()
        return ClaudeAgentOptions(
            # With a durable store the CLI mirrors its transcript there, so any host can
            # resume the conversation; "eager" keeps a dying host's loss to the last moment.
            session_store=transcripts,
            session_store_flush="eager" if transcripts else "batched",
            resume=self.claimed.sdk_session_id if self.claimed else None,
            cli_path=agent.cli_path or None,
            model=self.spec.model or None,
            permission_mode=self.spec.permission_mode,  # type: ignore[arg-type]
            cwd=self.spec.cwd or None,
            include_partial_messages=agent.include_partial_messages,
            env=dict(agent.env),
            can_use_tool=self.bridge.can_use_tool,
            stderr=self._stderr.append,
        )

    async def _run(self) -> None:
        client = ClaudeSDKClient(self._options())
        started = time.monotonic()
        try:
            await client.connect()
        except Exception as exc:  # any failure to start is reported to the creator
            self._connected.set_exception(AgentStartFailed(str(exc), self.stderr_tail()))
            self.log.close()
            return
        self._client = client
        spawn_s = time.monotonic() - started
        self.metrics.cli_spawn.add({}, spawn_s)
        self.logger.info("session_connected", spawn_s=round(spawn_s, 3))
        self.touch()  # the idle clock starts once the CLI is up
        self._connected.set_result(None)
        reader = asyncio.create_task(self._read(client))
        turns = asyncio.create_task(self._serve_turns(client))
        try:
            await self._stop.wait()
        finally:
            if self._in_turn and not reader.done():
                await self._interrupt_before_close(client)
            for task in (turns, reader):
                task.cancel()
            await asyncio.gather(turns, reader, return_exceptions=True)
            self.bridge.cancel_pending()
            # Bounded inside the SDK (stdin close, then SIGTERM, then SIGKILL); an asyncio
            # timeout here could cut its kill escalation short and orphan the CLI.
            await client.disconnect()
            self._client = None
            self._in_turn = False
            self.state = "closed"
            if self._release:
                await self.store.release(self.id)
                self.log.fence()
            else:
                self.emit("session_state", {"state": "closed"})
                self.emit("done", {})
                await self.store.session_closed(self.id, self.close_reason or "closed")
                self.log.close()
            self._on_closed(self)
            self.logger.info("session_closed", reason=self.close_reason, released=self._release)

    async def _interrupt_before_close(self, client: ClaudeSDKClient) -> None:
        """A CLI mid-turn would finish the turn (the model still generating) before it
        notices stdin closing, so stop the turn first, while the reader still drains."""
        try:
            async with asyncio.timeout(INTERRUPT_ON_CLOSE_TIMEOUT_S):
                await client.interrupt()
        except Exception as exc:  # the CLI may already be gone; disconnect copes
            self.logger.debug("interrupt_on_close_failed", error=str(exc))

    async def _read(self, client: ClaudeSDKClient) -> None:
        """Translate SDK messages until the CLI goes away; then close the session."""
        error: dict[str, str] | None = None
        while error is None:
            try:
                async for message in client.receive_messages():
                    await self.store.room()  # a database that lags pauses the CLI
                    if self.bridge.handle(message):
                        self._turn_done.set()
                    if self.bridge.claude_session_id != self._sdk_session_id:
                        self._sdk_session_id = self.bridge.claude_session_id
                        if self._sdk_session_id:
                            self.store.note_sdk_session(self.id, self._sdk_session_id)
                error = {
                    "code": "agent_exited",
                    "message": self._exit_message("the agent process exited (code 0)"),
                }
            except MessageParseError as exc:
                self.logger.warning("sdk_message_unparseable", error=str(exc))
            except ProcessError as exc:
                error = {
                    "code": "agent_exited",
                    "message": self._exit_message(
                        f"the agent process exited (code {exc.exit_code})"
                    ),
                }
            except CLIJSONDecodeError as exc:
                error = {
                    "code": "agent_protocol_error",
                    "message": self._exit_message(
                        f"unreadable output from the agent: {str(exc)[:300]}"
                    ),
                }
            except Exception as exc:  # the SDK's reader failed: the session cannot go on
                error = {
                    "code": "agent_exited",
                    "message": self._exit_message(f"{type(exc).__name__}: {exc}"),
                }
        self.logger.warning("agent_failed", code=error["code"], message=error["message"])
        self.emit("error", error)
        self._stop_because("error")

    async def _serve_turns(self, client: ClaudeSDKClient) -> None:
        while True:
            message = await self._inbox.get()
            self._turn_done.clear()
            self._in_turn = True
            self._emit_state()
            started = time.monotonic()
            try:
                await client.query(_prompt(message.content))
            except Exception as exc:  # the CLI is gone; the reader reports why
                self.logger.warning("query_failed", error=str(exc))
                return
            await self._turn_done.wait()
            self.metrics.turn_duration.add({}, time.monotonic() - started)
            self._in_turn = False
            self._cancelling = False
            if self._inbox.empty():
                self._emit_state()

    # -- inputs -----------------------------------------------------------------------

    async def handle_input(
        self, message: wire.Inbound, allowed_modes: tuple[str, ...], subscriber: str | None
    ) -> None:
        if self.closed or self._client is None:
            raise ApiError(404, "not_found", f"session {self.id!r} is closed")
        self.touch()
        client = self._client
        match message:
            case wire.UserMessage():
                try:
                    self._inbox.put_nowait(message)
                except asyncio.QueueFull:
                    raise unavailable(
                        "backpressure", "too many queued messages for this session; retry later", 2
                    ) from None
            case wire.PermissionResponse() | wire.QuestionResponse():
                self.bridge.reply(message, subscriber)
            case wire.SetPermissionMode(mode=mode):
                wire.check_mode_allowed(mode, allowed_modes)
                await _control(client.set_permission_mode(mode))  # type: ignore[arg-type]
            case wire.SetModel(model=model):
                await _control(client.set_model(model))
            case wire.StopTask(task_id=task_id):
                await _control(client.stop_task(task_id))
            case wire.Interrupt():
                if self._in_turn:
                    self._cancelling = True
                    self._emit_state()
                    await _control(client.interrupt())

    # -- events and state -------------------------------------------------------------

    def emit(self, name: str, data: dict[str, Any]) -> int:
        if self.log.closed:
            return self.log.last_seq
        self.metrics.events_appended.inc({})
        return self.log.append(name, data)

    def _emit_state(self) -> None:
        if not self._connected.done() or self.log.closed:
            return
        if not self._in_turn:
            state = "idle"
        elif self._cancelling:
            state = "cancelling"
        elif self.bridge.decisions.pending:
            state = "awaiting_decision"
        else:
            state = "running"
        if state != self.state:
            self.touch()
            self.state = state
            self.emit("session_state", {"state": state})

    def stderr_tail(self) -> str:
        return "\n".join(self._stderr)

    def _exit_message(self, head: str) -> str:
        tail = self.stderr_tail()
        return f"{head}; stderr: {tail[-2000:]}" if tail else head


async def _control(request: Awaitable[None]) -> None:
    """Send a control request to the CLI; its failure is the agent's, not the client's."""
    try:
        await request
    except Exception as exc:
        raise ApiError(502, "agent_error", f"the agent did not accept the request: {exc}") from exc


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
