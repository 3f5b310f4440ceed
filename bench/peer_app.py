"""Serve agent-webkit-server 0.2.0 (the peer) for the benchmark: its FastAPI app under
uvicorn, auth disabled, with an `sdk_factory` that starts a real `ClaudeSDKClient` on the
scripted stand-in CLI, exactly like the peer's own default factory except for `cli_path`.

Runs in bench/.peer-venv (agent-webkit-server, fastapi, uvicorn, claude-agent-sdk), not in
the project's venv:

    bench/.peer-venv/bin/python bench/peer_app.py --port 8123 --cli tests/standin/scripted_cli.py
"""

from __future__ import annotations

import argparse
from typing import Any

import uvicorn
from agent_webkit_server.adapters.fastapi import create_app
from agent_webkit_server.auth import AuthConfig
from agent_webkit_server.session import SessionConfig
from claude_agent_sdk import ClaudeAgentOptions, ClaudeSDKClient


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cli", required=True, help="cli_path for every session")
    args = parser.parse_args()

    async def sdk_factory(config: SessionConfig, can_use_tool: Any) -> ClaudeSDKClient:
        options: dict[str, Any] = {"cli_path": args.cli, "can_use_tool": can_use_tool}
        if config.model:
            options["model"] = config.model
        if config.permission_mode:
            options["permission_mode"] = config.permission_mode
        if config.cwd:
            options["cwd"] = config.cwd
        client = ClaudeSDKClient(options=ClaudeAgentOptions(**options))
        await client.connect()
        return client

    app = create_app(auth=AuthConfig(disabled=True), sdk_factory=sdk_factory)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
