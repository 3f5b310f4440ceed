"""What a session is built from, and how its CLI starts.

A SessionSpec is the operator's agent config plus the client's choices at create
(model, permission mode, cwd, resume or fork) and the limits that apply to the session;
`cli_options` turns it, with the settings last set, into the ClaudeAgentOptions one CLI
process starts with.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from claude_agent_sdk import ClaudeAgentOptions

from ..agents.sandbox import Confinement
from ..agents.toolsets import Toolset
from ..agents.workspaces import Workspaces
from ..config import AgentConfig, ArtefactsConfig
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
