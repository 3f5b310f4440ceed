"""Tools the daemon itself offers the model: in-process MCP servers (the SDK's
`create_sdk_mcp_server`) attached to every session's CLI.

A `Toolset` names its MCP server, builds it for one CLI (its tools may reach the session
that CLI serves, to emit events or keep state there: through a function, since a warm CLI
is started before its session exists), and lists the tools the CLI may run
without asking a person (`allowed_tools`). The artefacts server and the generative-UI
render tools are toolsets; the session knows nothing of what they do.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from claude_agent_sdk import CanUseToolShadowedWarning

from ..artefacts.versions import Artefacts

if TYPE_CHECKING:
    from claude_agent_sdk.types import McpSdkServerConfig


# A toolset's allowed tools skip can_use_tool on purpose (no prompt for rendering or
# writing an artefact); the SDK's warning about that would be a stray non-JSON log line.
warnings.filterwarnings("ignore", category=CanUseToolShadowedWarning)


class ToolHost(Protocol):
    """What a toolset's tools may reach of the session their CLI serves."""

    artefacts: Artefacts


class Toolset(Protocol):
    name: str  # the MCP server's name: its tools are mcp__<name>__<tool>

    def server(self, session: Callable[[], ToolHost]) -> McpSdkServerConfig:
        """A CLI's server (built when the CLI starts); `session()` is the session it
        serves at the time of a tool call."""
        ...

    def allowed_tools(self) -> list[str]:
        """Full tool names (mcp__<name>__<tool>) that run without a permission prompt."""
        ...
