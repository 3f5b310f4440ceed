"""What a session is built from, and how its CLI starts.

A SessionSpec is the operator's agent config plus the client's choices at create
(model, permission mode, cwd, resume or fork) and the limits that apply to the session;
`cli_options` turns it, with the settings last set, into the ClaudeAgentOptions one CLI
process starts with.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from claude_agent_sdk import ClaudeAgentOptions

from ..agents.sandbox import Confinement
from ..agents.toolsets import Toolset
from ..agents.workspace_sync import WorkspaceSync
from ..agents.workspaces import STATE_FOLDER, Workspaces
from ..artefacts.model import cli_line_bytes
from ..config import AgentConfig, ArtefactsConfig, Config
from ..identity.principals import DEFAULT_ADMIN
from ..stores.base import Store
from ..usage.ledger import Ledger


@dataclass(frozen=True)
class SessionSpec:
    """What a session is built from: the operator's agent config plus the client's choices."""

    agent: AgentConfig
    owner: str  # the principal that created it (identity/principals.py)
    model: str | None
    permission_mode: str
    cwd: str | None  # the session's own workspace, or the folder the client chose
    state_dir: str  # the CLI's own CLAUDE_CONFIG_DIR (agents/workspaces.py)
    workspaces: Workspaces
    confinement: Confinement  # how its CLIs start: sandboxed or not (agents/sandbox.py)
    ledger: Ledger  # what it spends, and whether its owner may (usage/ledger.py)
    ring_size: int
    inbound_queue_size: int
    permission_timeout_s: float
    max_message_bytes: int
    max_image_bytes: int
    include_partial_messages: bool  # message_delta events for this session
    resume: str | None = None  # the Claude conversation this session continues
    fork: bool = False  # ...on a branch of its own (until the CLI names the new one)
    toolsets: tuple[Toolset, ...] = ()  # the daemon's own MCP servers (agents/toolsets.py)
    artefact_limits: ArtefactsConfig = field(default_factory=ArtefactsConfig)
    max_line_bytes: int | None = None  # the SDK's max_buffer_size (None: its default)
    # Where a resumed or forked conversation's transcript was: the state folder and cwd of
    # the session that had it (copied into this session's state folder at its first start).
    source_state_dir: str | None = None
    source_cwd: str | None = None
    # Its own workspace follows it to other hosts (agents/workspace_sync.py), or None.
    sync: WorkspaceSync | None = None
    # Taken up from a host that kept its workspace elsewhere: the cwd its transcript is
    # filed under in the store until it is filed under this host's (sessions/transcripts.py).
    moved_from_cwd: str | None = None

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
            max_buffer_size=self.max_line_bytes,
        )


@dataclass(frozen=True)
class Specs:
    """How this host builds a session's spec: the operator's config, and this host's
    folders, sandbox, ledger and toolsets."""

    config: Config
    workspaces: Workspaces
    confinement: Confinement
    ledger: Ledger
    toolsets: tuple[Toolset, ...]
    sync: WorkspaceSync | None  # with a shared store: workspaces follow their session

    def new(
        self,
        session_id: str,
        owner: str,
        model: str | None,
        mode: str,
        cwd: str | None,
        partial: bool | None,
        *,
        resume: str | None = None,
        source_cwd: str | None = None,
        source_state_dir: str | None = None,
        fork: bool = False,
        state_dir: str | None = None,
        moved_from_cwd: str | None = None,
    ) -> SessionSpec:
        """With no `cwd` the session works in its own workspace."""
        agent, sessions = self.config.agent, self.config.sessions
        cwd = cwd or self.workspaces.workspace(session_id)
        return SessionSpec(
            agent=agent,
            owner=owner,
            resume=resume,
            fork=fork,
            source_state_dir=source_state_dir,
            source_cwd=source_cwd,
            state_dir=state_dir or self.workspaces.state_dir(session_id),
            workspaces=self.workspaces,
            confinement=self.confinement,
            ledger=self.ledger,
            include_partial_messages=agent.include_partial_messages if partial is None else partial,
            model=model or agent.model or None,
            permission_mode=mode,
            cwd=cwd,
            ring_size=sessions.ring_size,
            inbound_queue_size=sessions.inbound_queue_size,
            permission_timeout_s=sessions.permission_timeout_s,
            max_message_bytes=sessions.max_message_bytes,
            max_image_bytes=sessions.max_image_bytes,
            toolsets=self.toolsets,
            artefact_limits=self.config.artefacts,
            max_line_bytes=cli_line_bytes(self.config.artefacts) if agent.artefacts else None,
            sync=self.sync if self.workspaces.owns(cwd) else None,
            moved_from_cwd=moved_from_cwd,
        )

    def stored(self, session_id: str, spec: dict[str, Any]) -> SessionSpec:
        """A session taken up from the store, with its settings as last set. Its own
        workspace and CLI state folder are this host's (hosts may keep them elsewhere)."""
        stored_cwd = cwd = spec.get("cwd")
        state_dir = spec.get("state_dir")
        if spec.get("workspace") and cwd:
            cwd = self.workspaces.workspace(Path(cwd).name)
        if state_dir and Path(state_dir).parent.name == STATE_FOLDER:
            state_dir = self.workspaces.state_dir(Path(state_dir).name)
        return self.new(
            session_id,
            spec.get("owner") or DEFAULT_ADMIN.name,  # sessions from before owners: the admin's
            spec.get("model"),
            spec.get("permission_mode") or "default",
            cwd,
            spec.get("include_partial_messages"),
            resume=spec.get("resume"),
            source_cwd=spec.get("source_cwd"),
            source_state_dir=spec.get("source_state_dir"),
            fork=spec.get("fork") is True,
            state_dir=state_dir,
            moved_from_cwd=stored_cwd if stored_cwd != cwd else None,
        )
