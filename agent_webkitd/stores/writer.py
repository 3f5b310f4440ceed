"""The group-commit writer both durable stores (SQLite, Postgres) are built on.

Sessions hand in events, notes about their settings, closes, releases, transcript
entries and artefact versions; nothing is written at once. One writer task takes
everything pending, for every session, and hands it to the store's `commit` as one
Batch (one transaction, one fsync or round trip). Under load a commit carries many
events; when idle it carries one.

An event is published to its subscribers only after the commit that stores it, so a
client never sees an event the store could lose. While the backend refuses (database
away, disk full or read-only), the batch is kept in front of what arrived since, in
order, and retried with a backoff doubling from RETRY_MIN_S to RETRY_MAX_S; nothing is
published or dropped meanwhile, `healthy` is False (/readyz and new sessions answer
503) and, past `max_pending_events`, the store is `full`: sessions stop reading their
CLI until there is room.
"""

from __future__ import annotations

import asyncio
import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import structlog
from claude_agent_sdk.types import SessionKey, SessionStoreEntry

from ..artefacts.model import StoredVersion
from ..config import StoreConfig
from ..usage.model import UsageRecord
from .base import Publisher

log = structlog.get_logger(__name__)

RETRY_MIN_S = 0.1
RETRY_MAX_S = 2.0
STOP_FLUSH_S = 5.0
RELEASE_WAIT_S = 5.0  # a release waits this long for its commit

# One event to store: the log that publishes it, its seq, name and JSON text.
Event = tuple[Publisher, int, str, str]
TranscriptWrite = tuple[SessionKey, list[SessionStoreEntry], "asyncio.Future[None]"]


@dataclass
class ArtefactWrite:
    """Save one version (`record`), or delete an artefact (`record` None)."""

    session_id: str
    artefact_id: str
    record: StoredVersion | None
    done: asyncio.Future[None]

    def artefact_row(self) -> tuple[str, str, str, str, str | None, float]:
        """(session_id, artefact_id, title, kind, language, created_at) of a version 1."""
        record = self.record
        assert record is not None
        return (
            self.session_id,
            record.artefact_id,
            record.title,
            record.kind,
            record.language,
            record.artefact_created_at,
        )

    def version_row(self) -> tuple[str, str, int, str, str | None, int, float]:
        """(session_id, artefact_id, version, content, summary, bytes, created_at)."""
        record = self.record
        assert record is not None
        version = record.version
        return (
            self.session_id,
            record.artefact_id,
            version.version,
            record.content,
            version.summary,
            version.bytes,
            version.created_at,
        )


@dataclass
class Batch:
    """What one commit stores."""

    events: list[Event] = field(default_factory=list)
    meta: dict[str, dict[str, str]] = field(default_factory=dict)  # sdk_session_id, spec (JSON)
    closes: dict[str, str] = field(default_factory=dict)  # session id -> reason
    releases: dict[str, float] = field(default_factory=dict)  # session id -> last active
    transcripts: list[TranscriptWrite] = field(default_factory=list)
    artefacts: list[ArtefactWrite] = field(default_factory=list)
    usage: list[UsageRecord] = field(default_factory=list)
    waiters: list[asyncio.Future[None]] = field(default_factory=list)  # told once committed

    def __bool__(self) -> bool:
        return bool(
            self.events
            or self.meta
            or self.closes
            or self.releases
            or self.transcripts
            or self.artefacts
            or self.usage
        )

    def put_back(self, later: Batch) -> None:
        """Keep this failed batch in front of what arrived since (`later`), in order;
        a note made since wins over this batch's."""
        later.events[:0] = self.events
        for session_id, fields in self.meta.items():
            later.meta[session_id] = {**fields, **later.meta.get(session_id, {})}
        later.closes = {**self.closes, **later.closes}
        later.releases = {**self.releases, **later.releases}
        later.transcripts[:0] = self.transcripts
        later.artefacts[:0] = self.artefacts
        later.usage[:0] = self.usage
        later.waiters[:0] = self.waiters

    def by_session(self) -> dict[str, Batch]:
        """This batch split into one batch per session, each in order."""
        shares: dict[str, Batch] = {}

        def share(session_id: str) -> Batch:
            return shares.setdefault(session_id, Batch())

        for event in self.events:
            share(event[0].session_id).events.append(event)
        for session_id, fields in self.meta.items():
            share(session_id).meta[session_id] = fields
        for session_id, reason in self.closes.items():
            share(session_id).closes[session_id] = reason
        for session_id, last_active in self.releases.items():
            share(session_id).releases[session_id] = last_active
        for write in self.artefacts:
            share(write.session_id).artefacts.append(write)
        for record in self.usage:
            share(record.session_id).usage.append(record)
        return shares  # transcripts are not a session's: the SQLite store never splits

    def written(self) -> list[asyncio.Future[None]]:
        """What waits for this batch's commit."""
        return [
            *(done for _, _, done in self.transcripts),
            *(a.done for a in self.artefacts),
            *self.waiters,
        ]


class GroupCommitWriter(ABC):
    """The hand-in half of a durable Store and its writer task. A store subclasses it
    and writes a batch in `commit`."""

    durable = True
    # Failures of `commit` that are retried (anything else is a bug and ends the writer).
    retry_on: ClassVar[tuple[type[BaseException], ...]]

    def __init__(self, config: StoreConfig) -> None:
        self.config = config
        # Called with a session id when another host has taken it (shared stores).
        self.on_session_lost: Callable[[str], None] = lambda session_id: None
        self.held_sessions: Callable[[], Iterable[str]] = tuple
        self.healthy = True
        self._pending = Batch()
        self._work = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._idle = asyncio.Event()  # nothing waiting to be committed
        self._idle.set()
        self._writer_task: asyncio.Task[None] | None = None

    @abstractmethod
    async def commit(self, batch: Batch) -> set[str]:
        """Store `batch` (raises one of `retry_on` to have it retried); returns the
        sessions this host no longer owns, whose events must not be published."""

    # -- life ---------------------------------------------------------------------------

    def start_writer(self, name: str) -> None:
        self._writer_task = asyncio.create_task(self._write(), name=name)

    async def stop_writer(self) -> None:
        """Commit what is pending (for at most STOP_FLUSH_S), then stop the task."""
        try:
            async with asyncio.timeout(STOP_FLUSH_S):
                await self._idle.wait()
        except TimeoutError:
            log.error("store_stop_unflushed", pending_events=len(self._pending.events))
        if self._writer_task is not None:
            self._writer_task.cancel()
            await asyncio.gather(self._writer_task, return_exceptions=True)

    # -- what sessions hand in ----------------------------------------------------------

    def append(self, log: Publisher, seq: int, name: str, text: str) -> None:
        """Record one event (`text` is its JSON) and publish it on the log once durable."""
        self._pending.events.append((log, seq, name, text))
        self._wake_writer()
        if len(self._pending.events) >= self.config.max_pending_events:
            self._room.clear()

    @property
    def full(self) -> bool:
        return not self._room.is_set()

    async def room(self) -> None:
        await self._room.wait()

    def note_sdk_session(self, session_id: str, sdk_session_id: str) -> None:
        self._pending.meta.setdefault(session_id, {})["sdk_session_id"] = sdk_session_id
        self._wake_writer()

    def note_spec(self, session_id: str, spec: dict[str, Any]) -> None:
        self._pending.meta.setdefault(session_id, {})["spec"] = json.dumps(spec)
        self._wake_writer()

    async def session_closed(self, session_id: str, reason: str) -> None:
        """Closed for good once its last events are committed (same transaction)."""
        self._pending.closes[session_id] = reason
        self._wake_writer()

    async def release(self, session_id: str, last_active: float) -> None:
        """Shutdown or hand-over: the session stays open for the next start or another
        host. Returns once that is committed (or after RELEASE_WAIT_S with the database
        away: then the lease decides), so a host that answers "not here" after a release
        is never ahead of the store."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.releases[session_id] = last_active
        self._pending.waiters.append(done)
        self._wake_writer()
        try:
            await asyncio.wait_for(asyncio.shield(done), RELEASE_WAIT_S)
        except TimeoutError:
            log.warning("session_release_uncommitted", session_id=session_id)

    def add_usage(self, record: UsageRecord) -> None:
        """Committed with the next batch (money spent is never dropped: a failed batch
        keeps it for the retry)."""
        self._pending.usage.append(record)
        self._wake_writer()

    async def append_transcript(self, key: SessionKey, entries: list[SessionStoreEntry]) -> None:
        """The SDK's transcript mirror: committed with the next burst of events."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.transcripts.append((key, entries, done))
        self._wake_writer()
        await done

    async def save_artefact(self, session_id: str, record: StoredVersion) -> None:
        """Committed with the event that announces it (appended just before)."""
        await self._write_artefact(session_id, record.artefact_id, record)

    async def delete_artefact(self, session_id: str, artefact_id: str) -> None:
        await self._write_artefact(session_id, artefact_id, None)

    async def _write_artefact(
        self, session_id: str, artefact_id: str, record: StoredVersion | None
    ) -> None:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.artefacts.append(ArtefactWrite(session_id, artefact_id, record, done))
        self._wake_writer()
        await done

    def _wake_writer(self) -> None:
        self._idle.clear()
        self._work.set()

    # -- the writer ---------------------------------------------------------------------

    async def _write(self) -> None:
        delay = RETRY_MIN_S
        while True:
            await self._work.wait()
            self._work.clear()
            batch, self._pending = self._pending, Batch()
            if not batch:
                self._idle.set()
                continue
            try:
                lost = await self.commit(batch)
            except self.retry_on as exc:
                batch.put_back(self._pending)
                if self.healthy:
                    log.error(
                        "store_commit_failed", error=str(exc), pending_events=len(batch.events)
                    )
                self.healthy = False
                self._work.set()
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
                continue
            if not self.healthy:
                log.info("store_recovered", committed_events=len(batch.events))
            self.healthy = True
            delay = RETRY_MIN_S
            self._publish(batch, lost)
            if len(self._pending.events) < self.config.max_pending_events:
                self._room.set()
            if not self._pending:
                self._idle.set()

    def _publish(self, batch: Batch, lost: set[str]) -> None:
        """Committed: each log publishes up to its newest event (but for sessions this
        host lost), and whoever waited for the commit goes on."""
        newest: dict[Publisher, int] = {}
        for event_log, seq, _, _ in batch.events:
            newest[event_log] = seq
        for event_log, seq in newest.items():
            if event_log.session_id not in lost:
                event_log.publish(seq)
        for session_id in lost:
            log.error("session_stopped_here", session_id=session_id)
            self.on_session_lost(session_id)
        for done in batch.written():  # stored, or void with a session this host lost
            if not done.done():
                done.set_result(None)
