"""Where sessions and their events live beyond one process: the seam between the
Supervisor/EventLog and durable storage.

The memory store keeps nothing beyond each session's ring (the ring is the store): it
publishes every event at once, a cursor older than the ring gets 412, and a session
dies with its process. Transcripts are then the CLI's own files under its config dir.
The embedded store (sqlite/, the default) and the Postgres store (postgres/) are
`durable`: they commit events before publishing them, replay from disk, and keep a
session across a restart (released at shutdown, loaded as hibernated at start-up). The
Postgres store is also `shared`: another host may claim a session whose owner is gone.

Each backend also keeps every version of every artefact (artefacts/): the memory store
until the session closes, the durable ones in the same commit as the event announcing it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, runtime_checkable

from ..artefacts.model import Artefact
from ..artefacts.versions import ArtefactStore
from ..usage.model import DayUsage, Usage, UsageRecord

if TYPE_CHECKING:
    from claude_agent_sdk.types import SessionStore


@dataclass
class ClaimedSession:
    """A session this host has just taken over from a host that is gone."""

    session_id: str
    spec: dict[str, Any]  # its settings as last set (model, permission_mode, cwd)
    sdk_session_id: str | None  # the Claude session to resume, if a turn ever started
    last_seq: int
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # the newest ones
    last_state: str | None = None  # its last session_state, when the store knows it
    created_at: float | None = None  # unix time
    idle_s: float = 0.0  # how long since its last sign of life
    artefacts: list[Artefact] = field(default_factory=list)  # its artefacts' index, oldest first
    usage: Usage | None = None  # what its model requests have consumed so far


@dataclass(slots=True)
class ShelvedSession:
    """A hibernated session that lives in the store alone (sessions/shelf.py): what
    listings, ownership checks and idle eviction need, a few hundred bytes. Everything else
    (its events, artefacts, settings) is loaded again when a request needs the session."""

    session_id: str
    owner: str
    created_at: float  # unix time
    last_active: float  # unix time of its last sign of life
    last_seq: int
    model: str | None
    permission_mode: str
    claude_session_id: str | None
    # Only while the store is opened: the names of its workspace and CLI state folders
    # (the start-up sweep keeps them), then dropped.
    folders: tuple[str, ...] = ()


class FileRow(NamedTuple):
    """One file, directory or link of a workspace checkpoint (shared stores)."""

    path: str  # relative, '/'-separated
    kind: str  # file | dir | link
    mode: int  # permission bits
    size: int
    mtime_ns: int
    target: str | None  # a link's target
    content: bytes | None  # a file's bytes


@runtime_checkable
class WorkspaceStore(Protocol):
    """Where workspaces that follow their session are kept (the Postgres store)."""

    async def save_workspace(
        self, session_id: str, changed: list[FileRow], removed: list[str]
    ) -> bool:
        """Apply one checkpoint's changes, if this host still owns the session (False:
        nothing stored)."""
        ...

    async def workspace_files(self, session_id: str) -> list[FileRow]: ...


@dataclass(frozen=True)
class Conversation:
    """A Claude conversation as the store knows it from the newest session that had it:
    who may resume or fork it, and where its transcript is filed."""

    claude_session_id: str
    owner: str  # that session's principal
    cwd: str | None
    live_elsewhere: bool  # an open session of another host holds it
    state_dir: str | None = None  # that session's CLI state folder (its transcripts)


def conversation_of(
    claude_session_id: str, spec: dict[str, Any], live_elsewhere: bool
) -> Conversation:
    # Sessions from before principals existed are the admin's.
    return Conversation(
        claude_session_id,
        spec.get("owner") or "token:default",
        spec.get("cwd"),
        live_elsewhere,
        spec.get("state_dir"),
    )


class NotShared:
    """Ownership in a store of this host's alone: every session in it is this host's."""

    shared = False

    def lease_lapsed(self) -> bool:
        return False

    async def confirm_lease(self) -> None:
        pass

    async def drain(self) -> None:
        pass


class SessionOwnedElsewhere(Exception):
    def __init__(self, owner: str, advertise_url: str) -> None:
        super().__init__(owner)
        self.owner = owner
        self.advertise_url = advertise_url


class Publisher(Protocol):
    """What a store needs of a session's event log: to publish up to a seq once the
    events are durable (the EventLog, sessions/eventlog.py)."""

    session_id: str

    def publish(self, seq: int) -> None: ...


class Store(ArtefactStore, Protocol):
    durable: bool  # events outlive the process: replay from the store, release at shutdown
    shared: bool  # other hosts use the same store and may claim a session
    healthy: bool  # False while events wait for the store (database down, disk full)
    # Set by the Supervisor: called with a session id when another host has taken it...
    on_session_lost: Callable[[str], None]
    # ...and the ids of the sessions this host holds (checked after a lapsed lease).
    held_sessions: Callable[[], Iterable[str]]

    def lease_lapsed(self) -> bool:
        """Shared store: this host's lease may have run out (the process was frozen, or
        the database away, for longer than the lease): sessions may have been claimed."""
        ...

    async def confirm_lease(self) -> None:
        """Renew the lease now and stop (on_session_lost) every held session another
        host has claimed meanwhile (with the database away: nothing is decided)."""
        ...

    async def drain(self) -> None:
        """This host is shutting down: other hosts asked for its sessions wait for their
        hand-over instead of refusing."""
        ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def append(self, log: Publisher, seq: int, name: str, text: str) -> None:
        """Record one event (`text` is its JSON) and publish it on the log once durable."""
        ...

    @property
    def full(self) -> bool:
        """True while producers must wait for `room()` before the next event (checked per
        SDK message, so a store with room costs no await)."""
        ...

    async def room(self) -> None:
        """Return when the store can take more events (backpressure for producers)."""
        ...

    async def check(self) -> None:
        """Raise if the store cannot be used right now (for /readyz)."""
        ...

    async def frames(self, session_id: str, after: int, until: int, limit: int) -> list[bytes]:
        """Up to `limit` frames with after < seq <= until, from durable storage."""
        ...

    async def session_opened(self, session_id: str, spec: dict[str, Any]) -> None: ...

    def note_sdk_session(self, session_id: str, sdk_session_id: str) -> None:
        """The Claude session id a later resume needs."""
        ...

    def note_spec(self, session_id: str, spec: dict[str, Any]) -> None:
        """The session's settings as last set (model, permission_mode, cwd)."""
        ...

    async def transcript_stored(self, project_key: str, sdk_session_id: str) -> bool:
        """Whether this store holds the transcript of that Claude session."""
        ...

    async def session_closed(self, session_id: str, reason: str) -> None: ...

    async def release(self, session_id: str, last_active: float) -> None:
        """Give up the session without closing it (shutdown): the next start, or another
        host, takes it up. `last_active`: unix time of its last sign of life."""
        ...

    async def open_sessions(
        self, ring_size: int, idle_timeout_s: float
    ) -> list[ClaimedSession | ShelvedSession]:
        """Start-up: the sessions this host takes up at once (closing any idle too long):
        loaded whole if a turn was cut off (it has to be settled), else shelved."""
        ...

    async def claim(
        self, session_id: str, ring_size: int, principal: str | None
    ) -> ClaimedSession | None:
        """Take up a session: one whose host is gone, or one this host shelved, if
        `principal` may see it (None: an admin, who sees every one). None: no such open
        session for them. Raises SessionOwnedElsewhere while another owner is alive."""
        ...

    def sdk_session_store(self) -> SessionStore | None: ...

    async def conversation(self, ref: str) -> Conversation | None:
        """The conversation of the newest session whose id or Claude session id is `ref`
        (one that started a turn), open or closed: a closed session's owner may resume it
        until `prune` removes the session. None if no session had it."""
        ...

    def add_usage(self, record: UsageRecord) -> None:
        """Add one model response's usage to its session's totals and its principal's
        day (committed with the next batch; usage/ledger.py)."""
        ...

    async def usage_days(self, principal: str | None, since: str, until: str) -> list[DayUsage]:
        """Usage per principal (or of one) per UTC day, since <= day <= until."""
        ...

    # Artefacts (artefacts/versions.py, ArtefactStore): every version's content. The index
    # comes back with the session (ClaimedSession.artefacts).
