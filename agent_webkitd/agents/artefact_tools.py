"""The `artefacts` MCP server: the model's tools for a session's artefacts (artefacts/).

`create_artefact`, `update_artefact`, `read_artefact` and `list_artefacts`, run in the
daemon's process (the SDK's `create_sdk_mcp_server`) and allowed without a permission
prompt. A call that cannot be carried out (an unknown kind, id or version, content that is
not JSON for `application/json`, a limit) is an error result whose text starts with the
error's code, so the model can read what went wrong and try otherwise; never an exception.

The real CLI offers MCP tools to the model as deferred tools: the model finds them with its
`ToolSearch` tool first (README, "Artefacts").
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from claude_agent_sdk import SdkMcpTool, ToolAnnotations, create_sdk_mcp_server, tool

from .. import __version__
from ..artefacts.model import KINDS, Artefact, ArtefactError
from ..artefacts.versions import Artefacts
from .toolsets import ToolHost

if TYPE_CHECKING:
    from claude_agent_sdk.types import McpSdkServerConfig


SERVER_NAME = "artefacts"
Result = dict[str, Any]
# The CLI keeps an MCP result inline up to about 50,000 characters; a longer one reaches
# the model as a 2 KB preview and the path of a file holding it. Artefacts are meant to be
# read whole, so read_artefact keeps up to this many inline (about 50k tokens); a longer
# one still gets the CLI's preview, not a context the model cannot hold.
READ_INLINE_CHARS = 200_000
READ_ONLY = ToolAnnotations(readOnlyHint=True)

CREATE_SCHEMA = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "description": "A short title for the reader"},
        "kind": {"type": "string", "description": f"One of: {', '.join(KINDS)}"},
        "content": {"type": "string", "description": "The whole content"},
        "language": {
            "type": "string",
            "description": "For text/code: the programming language (python, sql, ...)",
        },
        "summary": {"type": "string", "description": "What this version is, in a sentence"},
    },
    "required": ["title", "kind", "content"],
}
UPDATE_SCHEMA = {
    "type": "object",
    "properties": {
        "artefact_id": {"type": "string"},
        "content": {"type": "string", "description": "The whole new content (not a diff)"},
        "summary": {"type": "string", "description": "What changed, in a sentence"},
    },
    "required": ["artefact_id", "content"],
}
READ_SCHEMA = {
    "type": "object",
    "properties": {
        "artefact_id": {"type": "string"},
        "version": {"type": "integer", "description": "Omit for the latest version"},
    },
    "required": ["artefact_id"],
}
LIST_SCHEMA: dict[str, Any] = {"type": "object", "properties": {}}


class ArtefactTools:
    """The Toolset (toolsets.py) that gives every session's CLI the `artefacts` server."""

    name = SERVER_NAME

    def server(self, session: Callable[[], ToolHost]) -> McpSdkServerConfig:
        return create_sdk_mcp_server(SERVER_NAME, __version__, tools(lambda: session().artefacts))

    def allowed_tools(self) -> list[str]:
        return [f"mcp__{SERVER_NAME}__{name}" for name in TOOL_NAMES]


TOOL_NAMES = ("create_artefact", "update_artefact", "read_artefact", "list_artefacts")


def tools(artefacts: Callable[[], Artefacts]) -> list[SdkMcpTool[Any]]:
    """The four tools, working on the artefacts of the session the CLI serves."""

    async def create(args: dict[str, Any]) -> Result:
        artefact = await artefacts().create(
            args["title"], args["kind"], args["content"], args.get("language"), args.get("summary")
        )
        return _text({"artefact_id": artefact.artefact_id, "version": 1, "title": artefact.title})

    async def update(args: dict[str, Any]) -> Result:
        version = await artefacts().update(
            args["artefact_id"], args["content"], args.get("summary")
        )
        return _text({"artefact_id": args["artefact_id"], "version": version.version})

    async def read(args: dict[str, Any]) -> Result:
        artefact, version, content = await artefacts().read(
            args["artefact_id"], args.get("version")
        )
        about = {**artefact.describe(version), "latest_version": artefact.latest.version}
        # The content as it is, not inside JSON, where every quote and newline is escaped.
        return {"content": [_block(about), {"type": "text", "text": content}]}

    async def listed(args: dict[str, Any]) -> Result:
        return _text({"artefacts": [_listed(a) for a in artefacts().list()]})

    return [
        tool(
            "create_artefact",
            "Create an artefact: a document, code or JSON the user sees beside the"
            " conversation and can come back to. Returns its artefact_id.",
            CREATE_SCHEMA,
        )(_answering(create)),
        tool(
            "update_artefact",
            "Replace an artefact's content with a new version (every version is kept).",
            UPDATE_SCHEMA,
        )(_answering(update)),
        tool(
            "read_artefact",
            "Read an artefact's content, at its latest version or at `version`.",
            READ_SCHEMA,
            ToolAnnotations(readOnlyHint=True, maxResultSizeChars=READ_INLINE_CHARS),
        )(_answering(read)),
        tool("list_artefacts", "List this conversation's artefacts.", LIST_SCHEMA, READ_ONLY)(
            _answering(listed)
        ),
    ]


def _answering(
    handler: Callable[[dict[str, Any]], Awaitable[Result]],
) -> Callable[[dict[str, Any]], Awaitable[Result]]:
    """An ArtefactError becomes an error result the model reads, starting with its code."""

    async def answer(args: dict[str, Any]) -> Result:
        try:
            return await handler(args)
        except ArtefactError as exc:
            return {
                "content": [{"type": "text", "text": f"{exc.code}: {exc.message}"}],
                "is_error": True,
            }

    return answer


def _listed(artefact: Artefact) -> dict[str, Any]:
    return {**artefact.describe(), "bytes": artefact.latest.bytes}


def _block(data: dict[str, Any]) -> dict[str, Any]:
    return {"type": "text", "text": json.dumps(data, ensure_ascii=False)}


def _text(data: dict[str, Any]) -> Result:
    return {"content": [_block(data)]}
