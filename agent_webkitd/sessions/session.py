"""A Session: the conversation (event log, inbound queue, settings, Claude session id)
and, while it has one, the CLI process serving it (an Agent, agents/agent.py).

The CLI is a cache of the conversation. A session idle for `hibernate_after_s`
hibernates: its CLI stops cleanly and its streams stay open. The next user message wakes
it: a new CLI resumes the conversation (`resume=<claude session id>`, same cwd, the
model and permission mode last set) and the queued turns run. A CLI that dies on its
own is reported (`error agent_exited`) and the session hibernates, so the next message
resumes the conversation up to the last completed turn; more than three such exits in
ten minutes close the session as a crash loop.

One lifecycle task runs while the session has (or is getting) a CLI: wake, serve turns,
stop; it loops while messages wait. Beside it the turn task (turns.py) sends queued user
messages one at a time, each after the previous turn's `result`. What each client input
does is inputs.py: control inputs (interrupt, decisions, mode and model changes) bypass
the queue and go to the CLI at once, or are remembered for the next wake. A session
taken up from a store first settles what its last host left open (leftovers.py).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any

import structlog
from claude_agent_sdk import PermissionResult, ResultMessage, ToolPermissionContext

from ..agents.agent import Agent, AgentExit, AgentStartFailed, RestartIntensity
from ..agents.slots import AgentSlots
from ..artefacts.versions import Artefacts
from ..metrics import Metrics
from ..protocol import wire
from ..stores.base import ClaimedSession, Store
from .bridge import Bridge
from .eventlog import EventLog
from .leftovers import leftovers
from .spec import SessionSpec
from .transcripts import find_or_file
from .turns import Turns


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
        session_id: str | None = None,
    ) -> None:
        self.id = claimed.session_id if claimed else session_id or str(uuid.uuid4())
        self.spec = spec
        self.store = store
        self.metrics = metrics
        self._slots = slots
        self._on_closed = on_closed
        self.claimed = claimed
        self.log = EventLog(self.id, spec.ring_size, store, claimed.last_seq if claimed else 0)
        self.bridge = Bridge(
            self.id,
            self.emit,
            self.show_live_state,
            spec.permission_timeout_s,
            metrics,
            lambda: spec.ledger.session_usage(self.id),
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
        self._wakes_held = False  # a resume elsewhere is starting on this conversation
        self._wake_pending = False
        self.created_at = claimed.created_at if claimed and claimed.created_at else time.time()
        # Any sign of life, streams included (a session taken up from a store keeps its clock).
        self.last_activity = time.monotonic() - (claimed.idle_s if claimed else 0.0)
        self.last_used = self.last_activity  # inputs, turns, decisions: what hibernation counts
        self.subscribers = 0
        self.close_reason: str | None = None
        self.owner = spec.owner
        self.logger = structlog.get_logger(__name__).bind(session_id=self.id, owner=spec.owner)
        self.turns = Turns(
            spec.inbound_queue_size,
            metrics,
            self.logger,
            on_change=self.show_live_state,
            on_turn_end=self._turn_ended,
        )
        self._agent: Agent | None = None  # the CLI serving turns
        self._starting: Agent | None = None  # a CLI being started
        self._lifecycle: asyncio.Task[None] | None = None
        self._turn_task: asyncio.Task[None] | None = None  # Turns.serve on the CLI
        self._hibernating = False  # this CLI is stopping to hibernate
        self._closing = False
        self._closed = False
        self._release = False  # closing hands the session to another host instead
        self._exits = RestartIntensity()

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
        left = leftovers(claimed)
        if left.total_cost_usd is not None:
            self.bridge.restore_cost(left.total_cost_usd)
        for correlation_id in left.open_decisions:
            self.emit("permission_cancelled", {"correlation_id": correlation_id})
        if left.turn_lost:
            self.emit(
                "error",
                {
                    "code": "turn_lost",
                    "message": "the host running this turn went away; the turn did not finish."
                    " The conversation up to the last completed turn is kept: send the message again",
                },
            )
        self.state = left.state
        self._set_state("hibernated")
        self.last_activity = self.last_used = time.monotonic() - claimed.idle_s
        self.logger.info(
            "session_claimed",
            last_seq=claimed.last_seq,
            turn_lost=left.turn_lost,
            decisions_withdrawn=len(left.open_decisions),
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
            agent.stop(interrupt=self.turns.running)
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
            # Owner-checked: a session another host has claimed is left as it is there.
            await self.store.release(self.id, last_active)  # returns once committed
            self.log.close()  # streams end once that is sent, without `done`
            ended = "session_released"
        else:
            self.emit("session_state", {"state": "closed"})
            self.emit("done", {})
            await self.store.session_closed(self.id, self.close_reason or "closed")
            if self.close_reason != "resumed":  # else the session that resumed it has it
                await asyncio.to_thread(self.spec.workspaces.remove, self.spec.cwd)
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
                if not self.turns.waiting:
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
        self.logger.info("session_woken", wake_s=round(wake_s, 3), queued=self.turns.waiting)
        return agent

    def _wake_failed(self, exc: Exception) -> None:
        unsent = len(self.turns.discard_waiting())
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
        spec = self.spec
        await asyncio.to_thread(spec.workspaces.make, spec.cwd, spec.state_dir)
        async with self._slots.starting():
            agent = Agent(
                options, spec.toolsets, self.logger, self, spec.confinement, spec.state_dir
            )
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
        return await find_or_file(self.spec, self.store, claude_session_id)

    async def _serve(self, agent: Agent) -> None:
        """Run turns on this CLI until it stops (hibernation, close) or exits."""
        self._agent = agent
        self._turn_task = asyncio.create_task(self.turns.serve(agent), name=f"turns-{self.id}")
        if not self.turns.waiting:  # else a woken session goes from waking to running
            self.show_live_state()
        exit_ = await agent.exited
        if exit_ is not None and self.turns.stall_killed:
            exit_ = AgentExit(
                "turn_stalled",
                "the agent sent nothing for too long; it was interrupted, then killed"
                f" ({exit_.message})",
                exit_.exit_code,
            )
        if exit_ is not None:  # reported before the decisions it takes with it
            self.emit("error", {"code": exit_.code, "message": exit_.message})
        self._turn_task.cancel()
        await asyncio.gather(self._turn_task, return_exceptions=True)
        await agent.closed()  # the process is reaped; its callbacks are cancelled
        self._agent = self._turn_task = None
        self._slots.release(self)
        aborted_turn = self.turns.reset()
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
            and self._turn_task is not None
            and not agent.stopping
            and not self.busy
            and not self.bridge.decisions.pending
            and not self.bridge.background_tasks
            and not self._closing
        )

    def can_shelve(self) -> bool:
        """Hibernated, nothing in memory the store lacks: no stream, turn, decision, wake
        or close in progress (sessions/shelf.py)."""
        quiet = not (self.subscribers or self.busy or self.bridge.decisions.pending)
        held = self._lifecycle is not None or self._wakes_held or self._closing
        return quiet and not held and self.state == "hibernated"

    def stopping(self) -> bool:
        agent = self._agent
        return agent is not None and agent.stopping

    def request_hibernation(self) -> bool:
        """Stop the CLI; the streams stay open. False if it is not idle."""
        if not self.can_hibernate():
            return False
        assert self._agent is not None and self._turn_task is not None
        # The turn task waits for the queue: stop it now, so a message that arrives
        # while the CLI stops waits for the next wake instead of going to this CLI.
        self._turn_task.cancel()
        self._hibernating = True
        self._agent.stop()
        return True

    def quiet_for(self) -> float:
        """Seconds since it was last used, while it could hibernate (else 0)."""
        return time.monotonic() - self.last_used if self.can_hibernate() else 0.0

    def watch_turn(self, silence_limit_s: float, kill_grace_s: float) -> None:
        """The turn watchdog (called by the Supervisor's sweep), while no person is asked."""
        agent = self._agent
        if agent is not None and not self.bridge.decisions.pending:
            self.turns.watch(agent, silence_limit_s, kill_grace_s)

    @property
    def busy(self) -> bool:
        """A turn is running or waiting in the queue."""
        return self.turns.busy

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

    @property
    def closed(self) -> bool:
        return self._closing or self.log.closed

    @property
    def moving(self) -> bool:
        """Closing to be taken up by another host (or this one's next start), not ended."""
        return self._closing and self._release

    # -- turns ------------------------------------------------------------------------

    async def can_use_tool(
        self, tool_name: str, tool_input: dict[str, Any], context: ToolPermissionContext
    ) -> PermissionResult:
        """The CLI asks before running a tool: a pending decision (bridge.py)."""
        return await self.bridge.can_use_tool(tool_name, tool_input, context)

    async def on_agent_message(self, message: Any) -> None:
        """One SDK message from the CLI."""
        self.turns.heard()
        if self.store.full:  # a database that lags pauses the CLI
            await self.store.room()
        if isinstance(message, ResultMessage) and self.spec.sync and self.spec.cwd:
            await self.spec.sync.checkpoint(self.id, self.spec.cwd)  # before the result shows
        if self.bridge.handle(message):
            self.turns.ended()
        if self.log.crowded():
            await asyncio.sleep(0)
        claude_session_id = self.bridge.claude_session_id
        if claude_session_id and claude_session_id != self.claude_session_id:
            self.claude_session_id = claude_session_id  # a resume may change it
            self._fork_pending = False  # the fork has its own conversation now
            self.store.note_sdk_session(self.id, claude_session_id)
            self.store.note_spec(self.id, self.spec_record())

    def _turn_ended(self) -> None:
        self.use()
        if not self.turns.waiting:
            self.show_live_state()
            self._slots.offer()  # a wake waiting for a CLI may have this one

    # -- what a client's input does (inputs.py) ----------------------------------------

    @property
    def agent(self) -> Agent | None:
        """The CLI serving turns now, if any."""
        return self._agent

    def wake(self) -> None:
        """A message waits: wake the CLI if the session is hibernated."""
        if self._wakes_held:
            self._wake_pending = True
        elif self._lifecycle is None:
            self._lifecycle = asyncio.create_task(self._live(None), name=f"wake-{self.id}")

    def hold_wakes(self) -> None:
        """Another session is starting a CLI on this conversation's transcript: a message
        waits instead of waking this one meanwhile (it closes once that CLI is up)."""
        self._wakes_held = True

    def allow_wakes(self) -> None:
        self._wakes_held = False
        if self._wake_pending:
            self._wake_pending = False
            self.wake()

    @property
    def forking(self) -> bool:
        """A fork that has not spoken yet: it holds no conversation of its own."""
        return self._fork_pending

    def hand_back_waiting(self) -> None:
        """Take back every user message that has not started (they never run) and give
        them to the client, in the order sent, to restore in its UI."""
        discarded = self.turns.discard_waiting()
        if discarded:
            self.emit("input_discarded", {"messages": [{"content": m.content} for m in discarded]})
            self.logger.info("input_discarded", messages=len(discarded))

    def settings_changed(self, model: str | None, permission_mode: str) -> None:
        """The model and permission mode the CLI now has, kept for the next wake too."""
        self.model, self.permission_mode = model, permission_mode
        self.store.note_spec(self.id, self.spec_record())

    def spec_record(self) -> dict[str, Any]:
        """What the store keeps of the session's settings (another host wakes it with them)."""
        return {
            "model": self.model,
            "permission_mode": self.permission_mode,
            "cwd": self.spec.cwd,
            "workspace": self.spec.workspaces.owns(self.spec.cwd),  # this host's folder for it
            "state_dir": self.spec.state_dir,
            "source_state_dir": self.spec.source_state_dir,
            "source_cwd": self.spec.source_cwd,
            "owner": self.owner,
            "include_partial_messages": self.spec.include_partial_messages,
            "resume": self.spec.resume,
            "fork": self._fork_pending,
        }

    # -- events and state -------------------------------------------------------------

    def emit(self, name: str, data: dict[str, Any]) -> int:
        if self.log.closed:
            return self.log.last_seq
        self.metrics.events_appended_n += 1
        return self.log.append(name, data)

    def _set_state(self, state: str) -> None:
        if state != self.state:
            self.use()
            self.state = state
            self.emit("session_state", {"state": state})

    def show_live_state(self) -> None:
        """The state of a session with a CLI, from its turn and decisions."""
        if self._agent is None or self._closing:
            return
        if not self.turns.running:
            state = "idle"
        elif self.turns.cancelling:
            state = "cancelling"
        elif self.bridge.decisions.pending:
            state = "awaiting_decision"
        else:
            state = "running"
        self._set_state(state)
