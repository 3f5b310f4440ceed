"""Pytest fixtures and helpers for running the real bundled CLI against the stand-in.

Use in a test module with ``from tests.standin.fixtures import fake_model_url``
(pytest picks up fixtures imported into a test module).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest_asyncio
from claude_agent_sdk import CanUseTool, ClaudeAgentOptions

from tests.standin.fake_model import run_fake_model

# Env vars that would send the CLI to another provider (Bedrock, Vertex, ...)
# past ANTHROPIC_BASE_URL if a developer's shell has them; blanked (the CLI
# treats "" as unset) so the real CLI can only ever talk to the stand-in.
_PROVIDER_SWITCHES = (
    "CLAUDE_CODE_USE_BEDROCK",
    "CLAUDE_CODE_USE_VERTEX",
    "CLAUDE_CODE_USE_FOUNDRY",
    "CLAUDE_CODE_USE_MANTLE",
    "CLAUDE_CODE_USE_GATEWAY",
    "CLAUDE_CODE_USE_ANTHROPIC_AWS",
    "CLAUDE_CODE_USE_ANTHROPIC_GOOGLE_CLOUD",
    "ANTHROPIC_AUTH_TOKEN",
)


@pytest_asyncio.fixture
async def fake_model_url() -> AsyncIterator[str]:
    """A fresh stand-in Messages API (ids start at 1, no recorded requests)."""
    async with run_fake_model() as base_url:
        yield base_url


def offline_cli_env(base_url: str, config_dir: Path) -> dict[str, str]:
    """Environment that keeps the real CLI offline, quiet and fast."""
    return {
        **dict.fromkeys(_PROVIDER_SWITCHES, ""),
        "ANTHROPIC_BASE_URL": base_url,
        "ANTHROPIC_API_KEY": "test-key",
        # Keeps the developer's ~/.claude (settings, sessions) out of the test.
        "CLAUDE_CONFIG_DIR": str(config_dir),
        # No telemetry, feature flags, auto-update, error reports or preconnect:
        # without it the CLI looks up api.anthropic.com despite ANTHROPIC_BASE_URL.
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        # A broken stand-in fails the turn at once (API error result) instead of
        # retrying with exponential backoff for minutes.
        "CLAUDE_CODE_MAX_RETRIES": "0",
    }


def real_cli_options(base_url: str, tmp_path: Path, can_use_tool: CanUseTool) -> ClaudeAgentOptions:
    """Options for the real bundled CLI (no cli_path) working in ``tmp_path/work``."""
    cwd, config_dir = tmp_path / "work", tmp_path / "config"
    cwd.mkdir(exist_ok=True)
    config_dir.mkdir(exist_ok=True)
    return ClaudeAgentOptions(
        env=offline_cli_env(base_url, config_dir),
        cwd=cwd,
        include_partial_messages=True,
        can_use_tool=can_use_tool,
    )
