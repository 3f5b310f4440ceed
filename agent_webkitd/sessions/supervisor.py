"""The Supervisor: creates, finds, evicts and closes Sessions; enforces operator policy,
capacity and the drain.

It runs two small periodic tasks: the keepalive ticker that pulses every session's
event log (so idle SSE subscribers write `: keepalive` without a timer of their own),
and the idle sweep that hibernates sessions quiet past `hibernate_after_s` and evicts
those idle past `idle_timeout_s`. The cap on CLI processes is the AgentSlots'.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import structlog

from ..agents.agent import Agent, AgentStartFailed
from ..agents.sandbox import Confinement
from ..agents.slots import AgentSlots
from ..agents.toolsets import Toolset
from ..agents.warmpool import WarmPool
from ..agents.workspace_sync import WorkspaceSync
from ..agents.workspaces import Workspaces
from ..config import Config
from ..errors import ApiError, bad_request, not_found, unavailable
from ..identity.principals import DEFAULT_ADMIN, Principal, may_see
from ..metrics import Metrics
from ..protocol import wire
from ..stores.base import (
    ClaimedSession,
    SessionOwnedElsewhere,
    ShelvedSession,
    Store,
    WorkspaceStore,
)
from ..usage.budgets import OverBudget
from ..usage.ledger import Ledger
from .cwds import resolve_cwd
from .resumes import Source, take_conversation
from .session import Session, WakeFailed
from .shares import SessionShares
from .shelf import Shelf
from .spec import Specs
from .spending import turn_refused
from .transcripts import refile

log = structlog.get_logger(__name__)

# The idle sweep runs this often (or four times per idle timeout, if that is shorter),
# so a session is evicted within about a second of its deadline.
IDLE_SWEEP_S = 1.0
# Shelved sessions idled out are loaded to be closed a few at a time, not 100,000 at once.
SHELVED_EVICTIONS_AT_ONCE = 4
# How often the drain checks whether every session is gone.
DRAIN_POLL_S = 0.2


class Supervisor:
    def __init__(
        self,
        config: Config,
        store: Store,
        metrics: Metrics,
        confinement: Confinement,
        workspaces: Workspaces,
        ledger: Ledger,
        toolsets: tuple[Toolset, ...] = (),
    ) -> None:
        self.config = config
        self.ledger = ledger
        ledger.on_refused = self._turn_refused
        self.confinement = confinement
        self.workspaces = workspaces
        sync = None
        if isinstance(store, WorkspaceStore) and not config.agent.workspaces_shared:
            sync = WorkspaceSync(store, config.agent.max_workspace_bytes, metrics)
        self.specs = Specs(config, workspaces, confinement, ledger, toolsets, sync)
        self.store = store
        self.metrics = metrics
        self.sessions: dict[str, Session] = {}
        self.shelf = Shelf()  # quiet hibernated sessions that live in the store alone
        self._evicting: set[str] = set()  # shelved sessions being loaded to be closed
        self._by_owner: dict[str, dict[str, Session]] = {}  # GET /sessions as one principal
        self.slots = AgentSlots(
            config.sessions.live_agents_cap,
            config.sessions.max_concurrent_starts,
            config.sessions.max_live_agents_per_principal,
        )
        self.draining = False
        self.streams = 0  # open SSE streams on this host
        self._starting = 0  # creations in flight, reserved against the cap
        self.shares = SessionShares(config.sessions.max_sessions_per_principal, metrics)
        self._tasks: list[asyncio.Task[None]] = []
        self._closing: set[asyncio.Task[None]] = set()
        # Sessions being handed over, until the store says they are free (find waits).
        self._leaving: dict[str, asyncio.Task[None]] = {}
        # Claims in flight, by id and the owner they are limited to (None: an admin's).
        self._claims: dict[tuple[str, str | None], asyncio.Future[Session]] = {}
        store.on_session_lost = self._lost
        store.held_sessions = self.sessions.keys
        self.warm = WarmPool(
            config.agent.warm_agents,
            config.agent.warm_agents_max,
            config.agent.warm_agents_idle_s,
            self.slots,
            self._warm_agent,
            self._discard_warm,
            config.agent.start_timeout_s,
            metrics,
        )

    async def start(self) -> None:
        """Take up the sessions the store kept (each hibernated), then start the tickers."""
        sessions = self.config.sessions
        keep: set[str] = set()  # the folders of the sessions this host holds
        for opened in await self.store.open_sessions(sessions.ring_size, sessions.idle_timeout_s):
            if isinstance(opened, ShelvedSession):
                keep.update(opened.folders)
                self.shelf.add(opened)
            else:
                await self._start(self._session(opened))
        if self.sessions or self.shelf:
            log.info("sessions_restored", sessions=len(self.sessions), shelved=len(self.shelf))
        if not self.store.shared:  # every folder of this host's is one of these sessions'
            # (A resumed session works in the workspace of the session it took over.)
            folders = [(s.spec.cwd or "", s.spec.state_dir) for s in self.sessions.values()]
            keep |= {Path(p).name for pair in folders for p in pair if p}
            swept = await asyncio.to_thread(self.workspaces.sweep, keep)
            if swept:
                log.info("workspaces_swept", folders=swept)
        self.warm.start()
        self._tasks = [
            asyncio.create_task(self._keepalive_ticker(), name="keepalive-ticker"),
            asyncio.create_task(self._idle_sweep(), name="idle-sweep"),
        ]

    async def drain(self) -> None:
        """Refuse new sessions from now on; the warm CLIs, of no more use, stop. A shared
        store is told, so other hosts wait for this one's sessions rather than refuse."""
        self.draining = True
        await self.store.drain()
        await self.warm.stop()

    async def stop(self) -> None:
        """Close every session left (each CLI process ends). With a durable store each is
        hibernated and released instead, for the next start (or another host) to take up;
        its streams end without `done`, so clients reconnect and carry on. Otherwise each
        stream ends with `done`."""
        for task in self._tasks:
            task.cancel()
        await self.warm.stop()
        release = self.store.durable
        await asyncio.gather(
            *(self.close(s, "drain", release=release) for s in list(self.sessions.values())),
            *self._closing,
        )

    async def wait_until_drained(self, timeout_s: float, abort: asyncio.Event) -> bool:
        """Drain: wait until nothing is left that a shutdown would cut short (True), or
        until the timeout or `abort` (False). Memory store: every session has idled out or
        been deleted. Durable store: no turn is running or queued (the rest sleeps in the
        store until the next start). Shared store: each session is handed over as it
        settles."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while self._starting or self._left_to_drain():
            if abort.is_set() or asyncio.get_running_loop().time() >= deadline:
                return False
            await asyncio.sleep(DRAIN_POLL_S)
        return True

    def _left_to_drain(self) -> bool:
        if self.store.shared:
            self._hand_off_settled_sessions()
        elif self.store.durable:
            return any(s.busy for s in self.sessions.values())
        return bool(self.sessions)

    def _hand_off_settled_sessions(self) -> None:
        """Durable store: a session between turns loses nothing by moving to another
        host, so release it now instead of waiting for it to idle out. Its streams end
        without `done`; clients reconnect and the next host claims it."""
        for session in list(self.sessions.values()):
            if not session.busy and not session.bridge.decisions.pending:
                self._close_in_background(session, "drain", release=True)

    async def _keepalive_ticker(self) -> None:
        period = self.config.server.keepalive_s / 2
        while True:
            await asyncio.sleep(period)
            for session in list(self.sessions.values()):
                session.log.pulse()

    async def _idle_sweep(self) -> None:
        timeout = self.config.sessions.idle_timeout_s
        hibernate_after = self.config.sessions.hibernate_after_s
        # Loading a shelved session back costs milliseconds: only quiet ones go.
        shelve_after = self.config.sessions.shelve_after_s if self.store.durable else 0.0
        watchdog = self.config.sessions
        period = min(IDLE_SWEEP_S, timeout / 4, (hibernate_after or IDLE_SWEEP_S) / 4)
        while True:
            await asyncio.sleep(period)
            for session in list(self.sessions.values()):
                idle = session.idle_for()
                if idle >= timeout:
                    session.logger.info("session_idle_evicted", idle_for_s=round(idle, 1))
                    self._close_in_background(session, "idle")
                elif hibernate_after and session.quiet_for() >= hibernate_after:
                    session.request_hibernation()
                elif shelve_after and idle >= shelve_after and session.can_shelve():
                    self._shelve(session)
                if watchdog.turn_idle_timeout_s:
                    session.watch_turn(watchdog.turn_idle_timeout_s, watchdog.turn_kill_grace_s)
            for entry in self.shelf.idle_past(timeout):
                if len(self._evicting) >= SHELVED_EVICTIONS_AT_ONCE:
                    break
                if entry.session_id in self._evicting:  # loading it takes a moment
                    continue
                self._evicting.add(entry.session_id)
                task = asyncio.create_task(self._evict_shelved(entry))
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)

    def _admit(self, shelved: bool = False) -> None:
        """Raise 503 unless this host can take one more session (a `shelved` one is
        counted already)."""
        if self.draining:
            self.metrics.capacity_rejections.inc({"reason": "draining"})
            raise unavailable(
                "draining", "this server is shutting down; create the session elsewhere", 5
            )
        held = len(self.sessions) + len(self.shelf) + self._starting
        if not shelved and held >= self.config.sessions.max_sessions:
            self.metrics.capacity_rejections.inc({"reason": "at_capacity"})
            raise unavailable(
                "at_capacity",
                f"this server hosts at most {self.config.sessions.max_sessions} sessions",
                5,
            )

    async def create(self, request: wire.CreateSession, owner: Principal) -> Session:
        agent = self.config.agent
        mode = request.permission_mode or agent.permission_mode
        wire.check_mode_allowed(mode, agent.allowed_permission_modes)
        cwd = self._resolve_cwd(request.cwd)  # None: the session's own workspace
        self._admit()
        if request.resume is None:
            return await self._open(request, owner, mode, cwd)
        if (shelved := self.shelf.holding(request.resume)) is not None:
            await self._claimed_once(shelved.session_id, None)  # its holder, here again
        source = await take_conversation(self.sessions, self.store, request, owner, cwd)
        if not request.fork or not self.workspaces.owns(source.cwd):
            cwd = (
                source.cwd
            )  # a resume takes over its workspace; a fork of a chosen folder shares it
        holder = source.holder
        if holder is None:
            return await self._open(request, owner, mode, cwd, source)
        # The hibernated holder gets no CLI of its own while another starts on its
        # transcript, and keeps the conversation if that start fails.
        holder.hold_wakes()
        try:
            session = await self._open(request, owner, mode, cwd, source)
        except BaseException:
            holder.allow_wakes()
            raise
        holder.logger.info("session_resumed_elsewhere", by=session.id)
        holder.hand_back_waiting()  # sent to it meanwhile: never run there
        await self.close(holder, "resumed")
        return session

    async def _open(
        self,
        request: wire.CreateSession,
        owner: Principal,
        mode: str,
        cwd: str | None,
        source: Source | None = None,
    ) -> Session:
        """Store a new session and start its CLI (a warm one if it fits: it already works
        in the workspace of the session id it was started for)."""
        held = len(self._by_owner.get(owner.name, {})) + self.shelf.count(owner.name)
        with self.shares.opening(owner.name, held):
            return await self._open_within_share(request, owner, mode, cwd, source)

    async def _open_within_share(
        self,
        request: wire.CreateSession,
        owner: Principal,
        mode: str,
        cwd: str | None,
        source: Source | None,
    ) -> Session:
        warm_agent = None
        if source is None and request.cwd is None and self._warm_fits(request):
            warm_agent = self.warm.for_create()
        session_id = warm_agent.reserved_for if warm_agent else None
        session_id = session_id or str(uuid.uuid4())
        spec = self.specs.new(
            session_id,
            owner.name,
            request.model,
            mode,
            cwd,
            request.include_partial_messages,
            resume=source.claude_session_id if source else None,
            source_cwd=source.cwd if source else None,
            source_state_dir=source.state_dir if source else None,
            fork=request.fork,
        )
        session = Session(
            spec, self.store, self.metrics, self.slots, self._forget, session_id=session_id
        )
        if warm_agent is not None:  # nothing awaited since for_create(): still the pool's
            self.warm.take(session, warm_agent)
        elif request.fork and source is not None and cwd is None and spec.cwd:
            await asyncio.to_thread(self.workspaces.copy_files, source.cwd, spec.cwd)
        self._starting += 1
        try:
            try:
                await self.store.session_opened(session.id, session.spec_record())
                if source is not None and not request.fork:  # the newest holder from now on
                    self.store.note_sdk_session(session.id, source.claude_session_id)
            except Exception as exc:  # the database is away: refuse rather than lose it
                session.logger.warning("store_unavailable", error=str(exc))
                await self._discard(session, warm_agent)
                raise unavailable(
                    "store_unavailable", "the session store cannot be reached; retry later", 5
                ) from exc
            warm = await self._start(session, warm_agent)
        finally:
            self._starting -= 1
        self.metrics.creates.inc({"start": "warm" if warm else "cold"})
        self.metrics.sessions_created.inc({"principal": self.metrics.principal_label(owner.name)})
        session.logger.info("session_created", model=spec.model, permission_mode=mode, cwd=cwd)
        return session

    def _warm_fits(self, request: wire.CreateSession) -> bool:
        """Whether a warm CLI can serve this create: the model and permission mode can be
        changed after the start; the cwd and partial messages cannot."""
        partial = request.include_partial_messages
        return partial is None or partial == self.config.agent.include_partial_messages

    def _warm_agent(self) -> Agent:
        """A CLI with the operator's defaults, already in its future session's workspace."""
        session_id = str(uuid.uuid4())
        agent = self.config.agent
        spec = self.specs.new(
            session_id, DEFAULT_ADMIN.name, None, agent.permission_mode, agent.cwd or None, None
        )
        self.workspaces.make(spec.cwd, spec.state_dir)
        options = spec.cli_options(
            self.store, model=spec.model, permission_mode=spec.permission_mode
        )
        return Agent(
            options,
            spec.toolsets,
            log.bind(warm=True),
            None,
            self.confinement,
            spec.state_dir,
            reserved_for=session_id,
        )

    def _discard_warm(self, agent: Agent) -> None:
        """A warm CLI that served no session: its folders go with it."""
        if agent.reserved_for is not None:
            own = self.workspaces.workspace(agent.reserved_for)
            self.workspaces.remove(own)
            self.workspaces.remove_state(self.workspaces.state_dir(agent.reserved_for))

    async def _discard(self, session: Session, warm: Agent | None) -> None:
        """A create that failed before its CLI served it: the CLI stops, the session's
        own folders go (never a workspace it took over)."""
        if warm is not None:
            warm.stop()
            await warm.closed()
            self.slots.release(session)
        if session.spec.cwd == self.workspaces.workspace(session.id):
            await asyncio.to_thread(self.workspaces.remove, session.spec.cwd)
        await asyncio.to_thread(self.workspaces.remove_state, session.spec.state_dir)

    async def _start(self, session: Session, warm: Agent | None = None) -> bool:
        """Start a new session's CLI, or take over `warm` (a claimed one starts
        hibernated), and register it; True if the warm CLI serves it."""
        try:
            served_warm = await session.start(warm)
        except ApiError as exc:  # no CLI can be had now (agents_busy)
            self.metrics.capacity_rejections.inc({"reason": exc.code})
            await self.store.session_closed(session.id, "error")
            await self._discard(session, None)
            raise
        except WakeFailed as exc:  # the conversation to resume has no transcript
            await self.store.session_closed(session.id, "error")
            await self._discard(session, None)
            raise bad_request("unknown_conversation", str(exc)) from exc
        except AgentStartFailed as exc:
            self.metrics.agent_start_failures.inc({})
            session.logger.warning("agent_start_failed", error=str(exc))
            await self.store.session_closed(session.id, "error")
            await self._discard(session, None)
            tail = f"; stderr: {exc.stderr_tail[-2000:]}" if exc.stderr_tail else ""
            raise ApiError(
                502, "agent_start_failed", f"the agent could not start: {exc}{tail}"
            ) from exc
        self.sessions[session.id] = session
        self._by_owner.setdefault(session.owner, {})[session.id] = session
        self.ledger.adopt(
            session.id, session.owner, session.claimed.usage if session.claimed else None
        )
        return served_warm

    def _unregister(self, session: Session) -> None:
        """Gone from the registry at once: the id answers 404 from now on."""
        if self.sessions.pop(session.id, None) is None:
            return
        owned = self._by_owner.get(session.owner)
        if owned is not None:
            owned.pop(session.id, None)
            if not owned:
                del self._by_owner[session.owner]

    def visible(
        self, principal: Principal, owner: str | None = None
    ) -> list[Session | ShelvedSession]:
        """The sessions GET /sessions lists: the caller's own; an admin's, every one (or
        one owner's). Looked up by owner, so the time does not grow with other users'."""
        if principal.admin and owner is None:
            return [*self.sessions.values(), *self.shelf.all()]
        if not principal.admin:
            owner = principal.name
        held = self._by_owner.get(owner or "", {}).values()
        return [*held, *self.shelf.owned_by(owner or "")]

    async def find(self, session_id: str, principal: Principal) -> Session:
        """The session with this id, if `principal` may see it: this host's, or one
        claimed from a host that is gone (durable store). 404 if there is none or it is
        not theirs (the same answer, decided before anything that could tell it exists);
        503 while another live host holds it."""
        if self.store.lease_lapsed():  # this host was frozen: it may have lost sessions
            await self.store.confirm_lease()
        session = self.sessions.get(session_id)
        if session is not None:
            if not may_see(principal, session.owner):
                raise not_found(session_id)
            return session
        if (leaving := self._leaving.get(session_id)) is not None:
            await asyncio.wait({leaving})  # released: from now on another host's to claim
        shelved = self.shelf.get(session_id)
        if shelved is not None and not may_see(principal, shelved.owner):
            raise not_found(session_id)  # decided before anything is loaded
        if shelved is not None or (session_id, None) in self._claims:  # (off the shelf now)
            session = await self._claimed_once(session_id, None)
            if not may_see(principal, session.owner):
                raise not_found(session_id)
            return session
        if not self.store.shared:
            raise not_found(session_id)
        return await self._claimed_once(session_id, None if principal.admin else principal.name)

    async def _claimed_once(self, session_id: str, owner: str | None) -> Session:
        """One claim per id at a time: concurrent requests share it."""
        key = (session_id, owner)
        claim = self._claims.get(key)
        if claim is None:
            claim = asyncio.ensure_future(self._claim(session_id, owner))
            self._claims[key] = claim
            claim.add_done_callback(lambda _: self._claims.pop(key, None))
        return await asyncio.shield(claim)

    async def _claim(self, session_id: str, owner: str | None) -> Session:
        """Take up a session from the store: one of a host that is gone, or one of this
        host's shelf (loaded again; its entry goes once it is back, or gone)."""
        shelved = self.shelf.get(session_id) is not None
        self._admit(shelved)
        self._starting += 1
        try:
            try:
                claimed = await self.store.claim(session_id, self.config.sessions.ring_size, owner)
            except SessionOwnedElsewhere as exc:
                self.shelf.remove(session_id)  # released to the store, and taken meanwhile
                raise ApiError(
                    503,
                    "session_elsewhere",
                    f"session {session_id!r} is live on another host ({exc.owner})",
                    {"Retry-After": "1"},
                    extra={"owner": exc.owner, "owner_url": exc.advertise_url},
                ) from exc
            except Exception as exc:
                raise unavailable(
                    "store_unavailable", "the session store cannot be reached; retry later", 5
                ) from exc
            if claimed is None:
                self.shelf.remove(session_id)
                raise not_found(session_id)
            session = self._session(claimed)
            if session.spec.sync is not None and session.spec.cwd:  # before any CLI runs there
                await session.spec.sync.restore(session.id, session.spec.cwd)
            if session.spec.moved_from_cwd:  # its folders are this host's from now on
                self.store.note_spec(session.id, session.spec_record())
                if claimed.sdk_session_id:  # for history now, and for every wake
                    await refile(session.spec, self.store, claimed.sdk_session_id)
            self.shelf.remove(session_id)  # nothing awaited from here to its registration
            await self._start(session)
            session.touch()  # the request that loads it: not idle, not shelved again at once
        finally:
            self._starting -= 1
        (self.metrics.unshelvings if shelved else self.metrics.sessions_claimed).inc({})
        return session

    def _shelve(self, session: Session) -> None:
        """A quiet hibernated session: released to the store, an index entry kept here."""
        self._unregister(session)
        self.shelf.add(Shelf.entry_of(session))
        self._close_in_background(session, "shelved", release=True)

    async def _evict_shelved(self, entry: ShelvedSession) -> None:
        """A shelved session idle past idle_timeout_s: loaded, to be closed like any other."""
        in_flight = len(self._evicting)
        log.info("session_idle_evicted", session_id=entry.session_id, evicting=in_flight)
        try:
            session = await self._claimed_once(entry.session_id, None)
        except ApiError as exc:  # gone meanwhile, or the store is away: the next sweep
            log.warning("shelved_eviction_failed", session_id=entry.session_id, error=exc.code)
            return
        finally:
            self._evicting.discard(entry.session_id)
        await self.close(session, "idle")

    def _session(self, claimed: ClaimedSession) -> Session:
        """A session taken up from the store, with its settings as last set."""
        spec = self.specs.stored(claimed.session_id, claimed.spec)
        return Session(spec, self.store, self.metrics, self.slots, self._forget, claimed)

    def _lost(self, session_id: str) -> None:
        """Another host claimed a session of ours (our lease ran out): stop it here
        without publishing anything more."""
        session = self.sessions.get(session_id)
        if session is None:
            return
        self._unregister(session)
        session.log.fence()
        self._close_in_background(session, "lost", release=True)

    def _close_in_background(self, session: Session, reason: str, *, release: bool = False) -> None:
        """Close from a sweep or callback; stop() waits for these before exiting."""
        task = asyncio.create_task(self.close(session, reason, release=release))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)
        if release:
            self._leaving[session.id] = task
            task.add_done_callback(lambda _: self._leaving.pop(session.id, None))

    async def close(self, session: Session, reason: str, *, release: bool = False) -> None:
        self._unregister(session)  # the id answers 404 while the CLI shuts down
        await session.close(reason, release=release)

    def _forget(self, session: Session) -> None:
        """Called by every session as it ends (or is shelved), whatever ended it."""
        self._unregister(session)
        self.ledger.forget(session.id)
        if session.spec.sync is not None:
            session.spec.sync.forget(session.id)
        if session.close_reason == "shelved":
            self.metrics.shelvings.inc({})
        else:
            self.metrics.sessions_evicted.inc({"reason": session.close_reason or "error"})

    def _turn_refused(self, session_id: str, over: OverBudget) -> None:
        if (session := self.sessions.get(session_id)) is not None:
            turn_refused(session, over)

    def _resolve_cwd(self, requested: str | None) -> str | None:
        own = (*self.confinement.hidden, str(self.workspaces.root))
        return resolve_cwd(requested, self.config.agent, own, str(self.workspaces.root))

    def open_stream(self, session: Session) -> None:
        """Count a new subscriber in, within the per-session and per-host stream limits."""
        if session.subscribers >= self.config.sessions.max_streams_per_session:
            self.metrics.limit_rejections.inc({"limit": "streams_per_session"})
            raise ApiError(
                429,
                "too_many_streams",
                f"this session has {session.subscribers} open streams, the most it takes",
                {"Retry-After": "5"},
            )
        if self.streams >= self.config.server.max_streams:
            self.metrics.limit_rejections.inc({"limit": "streams"})
            raise unavailable(
                "stream_capacity", f"this server has {self.streams} open streams, its limit", 5
            )
        self.streams += 1
        session.attach()

    def close_stream(self, session: Session) -> None:
        self.streams -= 1
        session.detach()
