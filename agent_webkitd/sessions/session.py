"""A Session: the conversation (event log, inbound queue, settings, Claude session id)
and, while it has one, the CLI process serving it (an Agent, agent.py).

The CLI is a cache of the conversation. A session idle for `hibernate_after_s`
hibernates: its CLI stops cleanly and its streams stay open. The next user message wakes
it: a new CLI resumes the conversation (`resume=<claude session id>`, same cwd, the
model and permission mode last set) and the queued turns run. A CLI that dies on its
own is reported (`error agent_exited`) and the session hibernates, so the next message
resumes the conversation up to the last completed turn; more than three such exits in
ten minutes close the session as a crash loop.

One lifecycle task runs while the session has (or is getting) a CLI: wake, serve turns,
stop; it loops while messages wait. Beside it a turn task sends queued user messages one
at a time, each after the previous turn's `result`. Control inputs (interrupt, decisions,
mode and model changes) bypass the queue and go to the CLI at once, or are remembered
for the next wake.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog
from claude_agent_sdk import ClaudeAgentOptions, project_key_for_directory

from ..agents.agent import (
    Agent,
    AgentExit,
    AgentStartFailed,
    RestartIntensity,
    cli_config_dir,
    cli_transcript_exists,
)
from ..agents.slots import AgentSlots
from ..agents.toolsets import Toolset
from ..artefacts.versions import Artefacts
from ..config import AgentConfig, ArtefactsConfig
from ..errors import ApiError, unavailable
from ..metrics import Metrics
from ..protocol import wire
from ..stores.base import ClaimedSession, Store
from .bridge import Bridge
from .eventlog import EventLog

# Events that settle a permission_request or ask_user_question.
DECISION_ENDINGS = (
    "permission_resolved",
    "question_resolved",
    "permission_expired",
    "permission_cancelled",
)
INTERRUPT_TIMEOUT_S = 5.0
# States in which no turn was under way.
SETTLED_STATES = ("idle", "hibernated", "closed")


@dataclass(frozen=True)
class SessionSpec:
    """What a session is built from: the operator's agent config plus the client's choices."""

    agent: AgentConfig
    owner: str  # the principal that created it (principals.py)
    model: str | None
    permission_mode: str
    cwd: str | None
    ring_size: int
    inbound_queue_size: int
    permission_timeout_s: float
    max_message_bytes: int
    max_image_bytes: int
    include_partial_messages: bool  # message_delta events for this session
    resume: str | None = None  # the Claude conversation this session continues
    fork: bool = False  # ...on a branch of its own (until the CLI names the new one)
    toolsets: tuple[Toolset, ...] = ()  # the daemon's own MCP servers (toolsets.py)
    artefact_limits: ArtefactsConfig = field(default_factory=ArtefactsConfig)
    max_line_bytes: int | None = None  # the SDK's max_buffer_size (None: its default)

    def cli_options(
        self,
        store: Store,
        *,
        model: str | None,
        permission_mode: str,
        resume: str | None = None,
        fork: bool = False,
    ) -> ClaudeAgentOptions:
        """How a CLI for this spec starts (the Agent adds its callbacks and the toolsets)."""
        agent = self.agent
        transcripts = store.sdk_session_store()
        return ClaudeAgentOptions(
            # With a durable store the CLI mirrors its transcript there, so any host can
            # resume the conversation; "eager" keeps a dying host's loss to the last moment
            # ("batched" would lose a first turn cut short, and with it the conversation).
            session_store=transcripts,
            session_store_flush="eager" if transcripts else "batched",
            resume=resume,
            fork_session=fork,
            cli_path=agent.cli_path or None,
            model=model or None,
            permission_mode=permission_mode,  # type: ignore[arg-type]
            cwd=self.cwd or None,
            include_partial_messages=self.include_partial_messages,
            env=dict(agent.env),
            max_buffer_size=self.max_line_bytes,
        )


class WakeFailed(Exception):
    """The conversation cannot be restored (the CLI fails, or its transcript is gone)."""


class Session:
    def __init__(
        self,
        spec: SessionSpec,
        store: Store,
        metrics: Metrics,
        slots: AgentSlots,
        on_closed: Callable[[Session], None],
        claimed: ClaimedSession | None = None,
    ) -> None:
        self.id = claimed.session_id if claimed else str(uuid.uuid4())
        self.spec = spec
        self.store = store
        self.metrics = metrics
        self._slots = slots
        self._on_closed = on_closed
        self.claimed = claimed
        self.log = EventLog(self.id, spec.ring_size, store, claimed.last_seq if claimed else 0)
        self.bridge = Bridge(
            self.id, self.emit, self._emit_live_state, spec.permission_timeout_s, metrics
        )
        # Part of the conversation, like its events: kept across wakes, restarts, failovers.
        self.artefacts = Artefacts(
            self.id,
            store,
            self.emit,
            spec.artefact_limits,
            metrics,
            claimed.artefacts if claimed else None,
        )
        self.state = "starting"
        # The settings a (re)started CLI gets: as created, then as last set.
        self.model = spec.model
        self.permission_mode = spec.permission_mode
        self.claude_session_id = (claimed.sdk_session_id if claimed else None) or spec.resume
        # A fork starts from the original's id; every start forks until the CLI names the
        # new conversation, so the original's transcript is never appended to.
        self._fork_pending = spec.fork
        self.created_at = claimed.created_at if claimed and claimed.created_at else time.time()
        # Any sign of life, streams included (a session taken up from a store keeps its clock).
        self.last_activity = time.monotonic() - (claimed.idle_s if claimed else 0.0)
        self.last_used = self.last_activity  # inputs, turns, decisions: what hibernation counts
        self.subscribers = 0
        self.close_reason: str | None = None
        self.owner = spec.owner
        self.logger = structlog.get_logger(__name__).bind(session_id=self.id, owner=spec.owner)
        self._inbox: asyncio.Queue[wire.UserMessage] = asyncio.Queue(spec.inbound_queue_size)
        self._agent: Agent | None = None  # the CLI serving turns
        self._starting: Agent | None = None  # a CLI being started
        self._lifecycle: asyncio.Task[None] | None = None
        self._turns: asyncio.Task[None] | None = None
        self._turn_done = asyncio.Event()
        self._in_turn = False
        self._cancelling = False
        self._hibernating = False  # this CLI is stopping to hibernate
        self._closing = False
        self._closed = False
        self._release = False  # closing hands the session to another host instead
        self._exits = RestartIntensity()
        self._last_output = time.monotonic()  # the CLI's last message (the turn watchdog)
        self._stalled_since: float | None = None  # interrupted for silence at this time
        self._stall_killed = False
        self._chores: set[asyncio.Future[Any]] = set()

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self, warm: Agent | None = None) -> bool:
        """Create: take over a warm CLI (its agent slot already handed to this session),
        or start one and connect (raises AgentStartFailed, or 503 agents_busy); True if
        the warm CLI serves it. A session taken over from another host starts hibernated
        instead."""
        if self.claimed:
            self._settle_claimed(self.claimed)
            return False
        if warm is None:
            await self._slots.acquire(self, wait=False)
        try:
            agent = await self._adopt(warm) if warm else None
            if agent is None:
                agent = await self._launch(resume=self.spec.resume)
        except (AgentStartFailed, WakeFailed):
            self._slots.release(self)
            self.log.close()
            raise
        self.emit(
            "session_ready", {"session_id": self.id, "protocol_version": wire.PROTOCOL_VERSION}
        )
        self._agent = agent  # close() finds it before the lifecycle task runs
        self._lifecycle = asyncio.create_task(self._live(agent), name=f"session-{self.id}")
        return agent is warm

    async def _adopt(self, agent: Agent) -> Agent | None:
        """A warm CLI, given this session's model and permission mode; None (the CLI
        stopped, its slot kept for a cold start) if it will not take them."""
        await agent.serve(self)
        if not agent.stopping and await self._apply_settings(agent):
            return agent
        agent.stop()
        await agent.closed()
        return None

    def _settle_claimed(self, claimed: ClaimedSession) -> None:
        """The host that died may have left a turn running and decisions open: their CLI
        is gone, so withdraw each decision and end the turn, in the stream, for everyone.
        The session then sleeps here until its next message wakes it."""
        pending: dict[str, None] = {}
        state = "idle"
        for name, data in claimed.events:
            if name in ("permission_request", "ask_user_question"):
                pending[data.get("correlation_id", "")] = None
            elif name in DECISION_ENDINGS:
                pending.pop(data.get("correlation_id", ""), None)
            elif name == "session_state":
                state = data.get("state", state)
            elif name == "result" and isinstance(data.get("total_cost_usd"), int | float):
                self.bridge.restore_cost(data["total_cost_usd"])
        state = claimed.last_state or state
        for correlation_id in pending:
            self.emit("permission_cancelled", {"correlation_id": correlation_id})
        turn_lost = state not in SETTLED_STATES
        if turn_lost:
            self.emit(
                "error",
                {
                    "code": "turn_lost",
                    "message": "the host running this turn went away; the turn did not finish."
                    " The conversation up to the last completed turn is kept: send the message again",
                },
            )
        self.state = state
        self._set_state("hibernated")
        self.last_activity = self.last_used = time.monotonic() - claimed.idle_s
        self.logger.info(
            "session_claimed",
            last_seq=claimed.last_seq,
            turn_lost=turn_lost,
            decisions_withdrawn=len(pending),
            resumed=claimed.sdk_session_id is not None,
        )

    async def close(self, reason: str, *, release: bool = False) -> None:
        """End the session: stop its CLI, end every stream with `done`. `release`: leave
        it open, hibernated, in the store for the next start or another host to take up;
        its streams end without `done` so clients reconnect."""
        if self.close_reason is None:
            self.close_reason = reason
        self._release = release
        self._closing = True
        task = self._lifecycle
        if task is None:
            await self._finish_close()
            return
        agent = self._agent or self._starting
        if agent is not None:
            agent.stop(interrupt=self._in_turn)
        else:  # waiting for a slot: nothing to stop yet
            task.cancel()
        await asyncio.wait({task})
        await self._finish_close()  # if the task was cancelled before it could

    async def _finish_close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.bridge.cancel_pending()
        if self._release:  # it sleeps in the store until the next start or another host
            last_active = time.time() - (0 if self.subscribers else self.idle_seconds())
            self._set_state("hibernated")
            await self.store.release(self.id, last_active)
            self.log.close()  # streams end once that is committed and sent, without `done`
            ended = "session_released"
        else:
            self.emit("session_state", {"state": "closed"})
            self.emit("done", {})
            await self.store.session_closed(self.id, self.close_reason or "closed")
            self.log.close()
            ended = "session_closed"
        self.state = "closed"
        self._on_closed(self)
        self.logger.info(ended, reason=self.close_reason)

    async def _live(self, agent: Agent | None) -> None:
        """The lifecycle task: serve with this CLI (or wake one), until it stops; again
        while messages wait."""
        try:
            while not self._closing:
                if agent is None:
                    agent = await self._wake()
                    if agent is None:
                        break
                await self._serve(agent)
                agent = None
                if self._inbox.empty():
                    break
        finally:
            self._lifecycle = None
            if self._closing:
                await self._finish_close()

    async def _wake(self) -> Agent | None:
        """Start a CLI that resumes the conversation; None if it cannot be restored
        (reported as `error wake_failed`; the queued messages are dropped)."""
        self._set_state("waking")
        started = time.monotonic()
        await self._slots.acquire(self, wait=True)  # close() may cancel this wait
        try:
            agent = await self._launch(resume=self.claude_session_id)
        except (AgentStartFailed, WakeFailed) as exc:
            self._slots.release(self)
            self._wake_failed(exc)
            return None
        except BaseException:  # cancelled by close() before the CLI started
            self._slots.release(self)
            raise
        wake_s = time.monotonic() - started
        self.metrics.wakes.inc({"outcome": "ok"})
        self.metrics.wake_seconds.observe({}, wake_s)
        self.logger.info("session_woken", wake_s=round(wake_s, 3), queued=self._inbox.qsize())
        return agent

    def _wake_failed(self, exc: Exception) -> None:
        unsent = self._inbox.qsize()
        while not self._inbox.empty():
            self._inbox.get_nowait()
        tail = getattr(exc, "stderr_tail", "")
        message = (
            f"the conversation could not be resumed: {exc}"
            f"{f'; stderr: {tail[-2000:]}' if tail else ''}"
            f"; {unsent} queued message(s) not sent"
        )
        self.metrics.wakes.inc({"outcome": "failed"})
        self.logger.warning("wake_failed", error=str(exc), unsent=unsent)
        self.emit("error", {"code": "wake_failed", "message": message, "unsent_messages": unsent})
        self._set_state("hibernated")

    async def _launch(self, resume: str | None) -> Agent:
        """Start a CLI process (at most a few at a time); raises AgentStartFailed, or
        WakeFailed when the transcript to resume is gone: never a silent fresh start."""
        if resume is not None and not await self._transcript_exists(resume):
            raise WakeFailed(f"the transcript of conversation {resume} is gone")
        options = self.spec.cli_options(
            self.store,
            model=self.model,
            permission_mode=self.permission_mode,
            resume=resume,
            fork=resume is not None and self._fork_pending,
        )
        agent = Agent(options, self.spec.toolsets, self.logger, session=self)
        async with self._slots.starting():
            self._starting = agent  # from here close() stops the agent instead of cancelling
            try:
                spawn_s = await agent.start(self.spec.agent.start_timeout_s)
                await self._apply_settings(agent)
            finally:
                self._starting = None
        self.metrics.cli_spawn.observe({}, spawn_s)
        self.logger.info("agent_started", spawn_s=round(spawn_s, 3), resumed=resume is not None)
        return agent

    async def _transcript_exists(self, claude_session_id: str) -> bool:
        cwd = self.spec.cwd
        if await self.store.transcript_stored(project_key_for_directory(cwd), claude_session_id):
            return True
        config_dir = cli_config_dir(self.spec.agent.env)
        return await asyncio.to_thread(cli_transcript_exists, config_dir, cwd, claude_session_id)

    async def _serve(self, agent: Agent) -> None:
        """Run turns on this CLI until it stops (hibernation, close) or exits."""
        self._agent = agent
        self._turns = asyncio.create_task(self._serve_turns(agent), name=f"turns-{self.id}")
        if self._inbox.empty():  # else a woken session goes from waking to running
            self._emit_live_state()
        exit_ = await agent.exited
        if exit_ is not None and self._stall_killed:
            exit_ = AgentExit(
                "turn_stalled",
                "the agent sent nothing for too long; it was interrupted, then killed"
                f" ({exit_.message})",
                exit_.exit_code,
            )
        if exit_ is not None:  # reported before the decisions it takes with it
            self.emit("error", {"code": exit_.code, "message": exit_.message})
        self._turns.cancel()
        await asyncio.gather(self._turns, return_exceptions=True)
        await agent.closed()  # the process is reaped; its callbacks are cancelled
        self._agent = self._turns = None
        self._slots.release(self)
        aborted_turn = self._in_turn
        self._in_turn = self._cancelling = self._stall_killed = False
        self._stalled_since = None
        self.bridge.process_ended()
        if exit_ is not None:
            self._agent_exited(exit_, aborted_turn)
        if not self._closing:
            self._hibernated()

    async def _apply_settings(self, agent: Agent) -> bool:
        """The model and mode this session has now, if the CLI started with others (set
        while it was starting, or a warm CLI): give them to the CLI. False if it refused
        (it keeps what it started with; logged)."""
        options = agent.client.options
        model, mode = options.model, str(options.permission_mode)
        while (self.model, self.permission_mode) != (model, mode):
            try:
                if self.model != model:
                    model = self.model
                    await agent.client.set_model(model)
                if self.permission_mode != mode:
                    mode = self.permission_mode
                    await agent.client.set_permission_mode(mode)  # type: ignore[arg-type]
            except Exception as exc:  # the CLI keeps what it started with; say so
                self.logger.warning("settings_not_applied", error=str(exc))
                return False
        return True

    def _agent_exited(self, exit_: AgentExit, mid_turn: bool) -> None:
        self.metrics.agent_exits.inc({})
        self.logger.warning(
            "agent_exited",
            code=exit_.code,
            exit_code=exit_.exit_code,
            mid_turn=mid_turn,
            message=exit_.message,
        )
        if self._exits.record():
            self.logger.error("agent_crash_loop")
            self.emit(
                "error",
                {
                    "code": "crash_loop",
                    "message": "the agent process exited more than 3 times in 10 minutes;"
                    " the session is closed",
                },
            )
            self.close_reason = "crash_loop"
            self._closing = True

    def _hibernated(self) -> None:
        if self._hibernating:
            self._hibernating = False
            self.metrics.hibernations.inc({})
            self.logger.info("session_hibernated", last_seq=self.log.last_seq)
        self._set_state("hibernated")
        if self.store.durable:
            self.log.drop_ring()  # replay comes from the database meanwhile

    # -- hibernation, as the Supervisor and the agent slots see it -----------------------

    def can_hibernate(self) -> bool:
        """Idle with a CLI: no turn running or queued, no decision, no background task."""
        agent = self._agent
        return (
            agent is not None
            and self._turns is not None
            and not agent.stopping
            and not self.busy
            and not self.bridge.decisions.pending
            and not self.bridge.background_tasks
            and not self._closing
        )

    def stopping(self) -> bool:
        agent = self._agent
        return agent is not None and agent.stopping

    def request_hibernation(self) -> bool:
        """Stop the CLI; the streams stay open. False if it is not idle."""
        if not self.can_hibernate():
            return False
        assert self._agent is not None and self._turns is not None
        # The turn task waits for the queue: stop it now, so a message that arrives
        # while the CLI stops waits for the next wake instead of going to this CLI.
        self._turns.cancel()
        self._hibernating = True
        self._agent.stop()
        return True

    def quiet_for(self) -> float:
        """Seconds since it was last used, while it could hibernate (else 0)."""
        return time.monotonic() - self.last_used if self.can_hibernate() else 0.0

    def watch_turn(self, silence_limit_s: float, kill_grace_s: float) -> None:
        """The turn watchdog (called by the Supervisor's sweep): a turn whose CLI has sent
        nothing for `silence_limit_s` (not waiting for a person) is interrupted; if that
        does not end it within `kill_grace_s`, the CLI is killed (`error turn_stalled`)."""
        agent = self._agent
        if agent is None or not self._in_turn or self.bridge.decisions.pending:
            return
        now = time.monotonic()
        if self._stalled_since is None:
            if now - self._last_output >= silence_limit_s:
                self._stalled_since = now
                self.logger.warning("turn_stalled", silent_s=round(now - self._last_output, 1))
                self._cancelling = True
                self._emit_live_state()
                self._background(self._interrupt_quietly(agent))
        elif now - self._stalled_since >= kill_grace_s and not agent.stopping:
            self._stall_killed = True
            self.logger.error("turn_stalled_kill", grace_s=kill_grace_s)
            self._background(agent.kill())

    async def _interrupt_quietly(self, agent: Agent) -> None:
        try:
            async with asyncio.timeout(INTERRUPT_TIMEOUT_S):
                await agent.client.interrupt()
        except Exception as exc:  # a hung CLI does not answer; the kill follows
            self.logger.warning("stall_interrupt_failed", error=str(exc))

    def _background(self, work: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(work)
        self._chores.add(task)
        task.add_done_callback(self._chores.discard)

    @property
    def busy(self) -> bool:
        """A turn is running or waiting in the queue."""
        return self._in_turn or not self._inbox.empty()

    # -- activity, for idle eviction ------------------------------------------------------

    def touch(self) -> None:
        self.last_activity = time.monotonic()

    def use(self) -> None:
        self.last_used = self.last_activity = time.monotonic()

    def attach(self) -> None:
        self.subscribers += 1
        self.touch()

    def detach(self) -> None:
        self.subscribers -= 1
        self.touch()

    def idle_seconds(self) -> float:
        """Seconds since the last sign of life, whatever keeps the session warm."""
        return time.monotonic() - self.last_activity

    def idle_for(self) -> float:
        """Seconds since the last sign of life; 0 while anything keeps the session warm
        (a running or queued turn, a pending decision, an open stream)."""
        if self.busy or self.subscribers or self.bridge.decisions.pending:
            return 0.0
        return self.idle_seconds()

    def describe(self, *, full: bool) -> dict[str, Any]:
        """What GET /sessions shows of this session (`full`: each pending request too)."""
        pending = list(self.bridge.decisions.pending.values())
        return {
            "session_id": self.id,
            "owner": self.owner,
            "state": self.state,
            "created_at": datetime.fromtimestamp(self.created_at, UTC).isoformat(),
            "idle_for_s": round(self.idle_for(), 1),
            "subscribers": self.subscribers,
            "last_seq": self.log.published_seq,  # what a client can have seen
            "model": self.model,
            "permission_mode": self.permission_mode,
            "claude_session_id": self.claude_session_id,
            "pending_decisions": (
                [{"kind": d.kind, **d.request} for d in pending] if full else len(pending)
            ),
        }

    @property
    def closed(self) -> bool:
        return self._closing or self.log.closed

    # -- turns ------------------------------------------------------------------------

    async def on_agent_message(self, message: Any) -> None:
        """One SDK message from the CLI."""
        self._last_output = time.monotonic()
        self._stalled_since = None
        if self.store.full:  # a database that lags pauses the CLI
            await self.store.room()
        if self.bridge.handle(message):
            self._turn_done.set()
        claude_session_id = self.bridge.claude_session_id
        if claude_session_id and claude_session_id != self.claude_session_id:
            self.claude_session_id = claude_session_id  # a resume may change it
            self._fork_pending = False  # the fork has its own conversation now
            self.store.note_sdk_session(self.id, claude_session_id)
            self.store.note_spec(self.id, self.spec_record())

    async def _serve_turns(self, agent: Agent) -> None:
        while True:
            message = await self._inbox.get()
            self._turn_done.clear()
            self._in_turn = True
            self._last_output = time.monotonic()
            self._emit_live_state()
            started = time.monotonic()
            try:
                await agent.client.query(_prompt(message.content))
            except Exception as exc:  # the CLI is gone; its exit is reported
                self.logger.warning("query_failed", error=str(exc))
                return
            await self._turn_done.wait()
            self.metrics.turn_duration.observe({}, time.monotonic() - started)
            self._in_turn = False
            self._cancelling = False
            self.use()
            if self._inbox.empty():
                self._emit_live_state()
                self._slots.offer()  # a wake waiting for a CLI may have this one

    # -- inputs -----------------------------------------------------------------------

    async def handle_input(
        self, message: wire.Inbound, allowed_modes: tuple[str, ...], subscriber: str | None
    ) -> None:
        if self.closed:
            raise ApiError(404, "not_found", f"session {self.id!r} is closed")
        self.use()
        agent = self._agent
        match message:
            case wire.UserMessage(content=content):
                self._check_size(content)
                try:
                    self._inbox.put_nowait(message)
                except asyncio.QueueFull:
                    self.metrics.limit_rejections.inc({"limit": "inbound_queue"})
                    raise unavailable(
                        "backpressure", "too many queued messages for this session; retry later", 2
                    ) from None
                # Every tab, and a page reloaded later, sees what was typed, before the
                # turn it starts (queued messages run after the current turn's result).
                self.emit("user_message", {"content": content})
                if self._lifecycle is None:  # hibernated: wake up
                    self._lifecycle = asyncio.create_task(self._live(None), name=f"wake-{self.id}")
            case wire.PermissionResponse(updated_permissions=updates):
                for update in updates or ():  # a setMode rule obeys the operator's policy too
                    if update.type == "setMode" and update.mode is not None:
                        wire.check_mode_allowed(update.mode, allowed_modes)
                self.bridge.reply(message, subscriber)
            case wire.QuestionResponse():
                self.bridge.reply(message, subscriber)
            case wire.SetPermissionMode(mode=mode):
                wire.check_mode_allowed(mode, allowed_modes)
                if agent is not None:
                    await _control(agent.client.set_permission_mode(mode))  # type: ignore[arg-type]
                self.permission_mode = mode  # without a CLI: for the next wake
                self.store.note_spec(self.id, self.spec_record())
            case wire.SetModel(model=model):
                if agent is not None:
                    await _control(agent.client.set_model(model))
                self.model = model
                self.store.note_spec(self.id, self.spec_record())
            case wire.StopTask(task_id=task_id):
                if agent is not None:
                    await _control(agent.client.stop_task(task_id))
            case wire.Interrupt():
                if self._in_turn and agent is not None:
                    self._cancelling = True
                    self._emit_live_state()
                    await _control(agent.client.interrupt())

    def _check_size(self, content: str | list[dict[str, Any]]) -> None:
        """413 for a user message whose text or any image is over the session's limits."""
        text, images = wire.content_sizes(content)
        spec = self.spec
        if text > spec.max_message_bytes:
            self.metrics.limit_rejections.inc({"limit": "message_bytes"})
            raise ApiError(
                413,
                "message_too_large",
                f"the message's text is {text} bytes; at most {spec.max_message_bytes} are taken",
            )
        if images and max(images) > spec.max_image_bytes:
            self.metrics.limit_rejections.inc({"limit": "image_bytes"})
            raise ApiError(
                413,
                "image_too_large",
                f"an image is {max(images)} bytes; at most {spec.max_image_bytes} are taken",
            )

    def spec_record(self) -> dict[str, Any]:
        """What the store keeps of the session's settings (another host wakes it with them)."""
        return {
            "model": self.model,
            "permission_mode": self.permission_mode,
            "cwd": self.spec.cwd,
            "owner": self.owner,
            "include_partial_messages": self.spec.include_partial_messages,
            "resume": self.spec.resume,
            "fork": self._fork_pending,
        }

    # -- events and state -------------------------------------------------------------

    def emit(self, name: str, data: dict[str, Any]) -> int:
        if self.log.closed:
            return self.log.last_seq
        self.metrics.events_appended.inc({})
        return self.log.append(name, data)

    def _set_state(self, state: str) -> None:
        if state != self.state:
            self.use()
            self.state = state
            self.emit("session_state", {"state": state})

    def _emit_live_state(self) -> None:
        """The state of a session with a CLI, from its turn and decisions."""
        if self._agent is None or self._closing:
            return
        if not self._in_turn:
            state = "idle"
        elif self._cancelling:
            state = "cancelling"
        elif self.bridge.decisions.pending:
            state = "awaiting_decision"
        else:
            state = "running"
        self._set_state(state)


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
