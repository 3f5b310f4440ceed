"""Generative UI: operator-declared UI components, offered to the model as render tools.

`[genui] dir` names a folder of JSON Schemas, one `<name>.json` per component. Each is
loaded and checked once at start-up (`load_components`; a bad file is a `ConfigError`
naming it). Every session's CLI then gets the in-process MCP server `genui` with one
auto-allowed tool per component, `mcp__genui__render_<name>`, whose input schema is
the component's schema (`GenuiToolset`). A call does nothing but check its arguments:
clients render it from the session's `tool_use` event (and show progress from
`message_delta`). `schema_document` is what `GET /genui/schema` answers.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from claude_agent_sdk import SdkMcpTool, create_sdk_mcp_server
from jsonschema import Draft202012Validator, SchemaError
from jsonschema.exceptions import best_match
from referencing.exceptions import Unresolvable

from ..config import ConfigError, GenuiConfig
from .toolsets import ToolHost

if TYPE_CHECKING:
    from claude_agent_sdk.types import McpSdkServerConfig


SERVER_NAME = "genui"
RAW_PREFIX = "render_"
PREFIX = f"mcp__{SERVER_NAME}__{RAW_PREFIX}"
DOCUMENT_VERSION = "1.0"
DRAFT_2020_12 = "https://json-schema.org/draft/2020-12/schema"
# The Messages API takes tool names of at most 64 characters: the prefix leaves 45.
MAX_NAME = 64 - len(PREFIX)
NAME_RE = re.compile(rf"[A-Za-z0-9_-]{{1,{MAX_NAME}}}")

ToolResult = dict[str, Any]


@dataclass(frozen=True)
class Component:
    """One UI component: its name (the file's stem) and its JSON Schema, as the file holds it."""

    name: str
    schema: dict[str, Any]

    @property
    def raw_tool_name(self) -> str:
        return f"{RAW_PREFIX}{self.name}"

    @property
    def tool_name(self) -> str:
        return f"{PREFIX}{self.name}"

    @property
    def description(self) -> str:
        text = self.schema.get("description")
        if isinstance(text, str) and text.strip():
            return text
        return f"Render the {self.name} UI component for the user."


def load_components(config: GenuiConfig) -> tuple[Component, ...]:
    """Every component of `[genui] dir`, sorted by name; () when genui is off."""
    if not config.dir:
        return ()
    folder = Path(config.dir)
    if not folder.is_dir():
        raise ConfigError(f"genui.dir: {folder} is not a directory")
    paths = sorted(p for p in folder.iterdir() if p.suffix == ".json")
    if not paths:
        raise ConfigError(f"genui.dir: {folder} holds no component schemas (<name>.json files)")
    return tuple(load_component(path) for path in paths)


def load_component(path: Path) -> Component:
    """One `<name>.json`, checked: a safe name, valid JSON, a Draft 2020-12 JSON Schema
    of an object (a tool's input is always an object)."""
    name = path.stem
    if not NAME_RE.fullmatch(name):
        raise ConfigError(
            f"genui: {path}: the component name {name!r} must be 1 to {MAX_NAME}"
            " letters, digits, '_' or '-'"
        )
    try:
        schema = json.loads(path.read_bytes())
    except OSError as exc:
        raise ConfigError(f"genui: {path}: cannot read it: {exc.strerror}") from exc
    except ValueError as exc:  # bad JSON, bad UTF-8
        raise ConfigError(f"genui: {path}: not valid JSON: {exc}") from exc
    if not isinstance(schema, dict):
        raise ConfigError(f"genui: {path}: a component schema must be a JSON object")
    if schema.get("$schema", DRAFT_2020_12) != DRAFT_2020_12:
        raise ConfigError(f"genui: {path}: $schema must be {DRAFT_2020_12} (or absent)")
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        raise ConfigError(
            f"genui: {path}: not a valid JSON Schema (Draft 2020-12): {exc.message}"
            f" at {exc.json_path}"
        ) from exc
    if schema.get("type") != "object":
        raise ConfigError(
            f'genui: {path}: the schema must have "type": "object" at the top level'
            " (a tool's input is an object)"
        )
    return Component(name, schema)


def schema_document(components: tuple[Component, ...]) -> dict[str, Any]:
    """`GET /genui/schema`: every render tool with its component's schema, by name."""
    return {
        "version": DOCUMENT_VERSION,
        "server_name": SERVER_NAME,
        "prefix": PREFIX,
        "tools": [
            {
                "name": c.tool_name,
                "short_name": c.name,
                "raw_tool_name": c.raw_tool_name,
                "description": c.description,
                "schema": c.schema,
            }
            for c in sorted(components, key=lambda c: c.name)
        ],
    }


def check_arguments(component: Component, arguments: Any) -> ToolResult:
    """A render call's result: "rendered <name>", or an error naming the first problem
    with the arguments. (The SDK checks them against the same schema before a handler
    runs; this is the component's own word on them, whoever calls.)"""
    validator = Draft202012Validator(component.schema)
    try:
        problem = best_match(validator.iter_errors(arguments))
    except Unresolvable as exc:  # a $ref the schema cannot resolve (remote refs never are)
        return _error(f"cannot check {component.name}: its schema has an unresolvable $ref: {exc}")
    if problem is not None:
        return _error(
            f"invalid {component.name} arguments at {problem.json_path}: {problem.message}"
        )
    return {"content": [{"type": "text", "text": f"rendered {component.name}"}]}


def _error(text: str) -> ToolResult:
    return {"content": [{"type": "text", "text": text}], "is_error": True}


class GenuiToolset:
    """The `genui` MCP server: one auto-allowed render tool per component."""

    name = SERVER_NAME

    def __init__(self, components: tuple[Component, ...]) -> None:
        self.components = components

    def tools(self) -> list[SdkMcpTool[Any]]:
        return [_render_tool(c) for c in self.components]

    def server(self, session: Callable[[], ToolHost]) -> McpSdkServerConfig:
        return create_sdk_mcp_server(SERVER_NAME, tools=self.tools())

    def allowed_tools(self) -> list[str]:
        return [c.tool_name for c in self.components]


def _render_tool(component: Component) -> SdkMcpTool[Any]:
    async def render(arguments: Any) -> ToolResult:
        return check_arguments(component, arguments)

    # The SDK takes a dict as a JSON Schema only if it has "properties"; an empty one
    # constrains nothing, and keeps a component without properties from being misread.
    schema = {"properties": {}, **component.schema}
    return SdkMcpTool(component.raw_tool_name, component.description, schema, render)
