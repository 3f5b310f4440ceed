"""What a session is built from, and how its CLI starts.

A SessionSpec is the operator's agent config plus the client's choices at create
(model, permission mode, cwd, resume or fork) and the limits that apply to the session;
`cli_options` turns it, with the settings last set, into the ClaudeAgentOptions one CLI
process starts with.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from claude_agent_sdk import ClaudeAgentOptions

from ..agents.toolsets import Toolset
from ..config import AgentConfig, ArtefactsConfig
from ..stores.base import Store


@dataclass(frozen=True)
class SessionSpec:
    """What a session is built from: the operator's agent config plus the client's choices."""

    agent: AgentConfig
    owner: str  # the principal that created it (identity/principals.py)
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
    toolsets: tuple[Toolset, ...] = ()  # the daemon's own MCP servers (agents/toolsets.py)
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
