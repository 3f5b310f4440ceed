"""The HTTP API as an OpenAPI 3.1 document: every route, body, status and error code,
and the SSE stream's events and their `data`.

This module is the one description of the API's shapes. The daemon serves it at
`GET /openapi.json`, wire.py validates every inbound body against its schemas, and a copy
for integrators is kept at conf/openapi.json (`make openapi` rewrites it; a test checks it
is current). Schemas are JSON Schema 2020-12, as OpenAPI 3.1 uses.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from .. import __version__
from ..artefacts.model import KINDS
from ..config import PERMISSION_MODES

Schema = dict[str, Any]

SCHEMA_PREFIX = "#/components/schemas/"
# No control characters: these strings become paths or command-line arguments.
PLAIN_TEXT = "^[^\\u0000-\\u001f\\u007f]*$"


def ref(name: str) -> Schema:
    return {"$ref": SCHEMA_PREFIX + name}


def obj(properties: dict[str, Schema], required: tuple[str, ...] = (), **extra: Any) -> Schema:
    """An object; unknown fields are allowed (the protocol grows additively)."""
    schema: Schema = {"type": "object", "properties": properties, **extra}
    if required:
        schema["required"] = list(required)
    return schema


def nullable(schema: Schema) -> Schema:
    return {"oneOf": [schema, {"type": "null"}]}


TEXT: Schema = {"type": "string", "minLength": 1}
ANY_TEXT: Schema = {"type": "string"}
MODE: Schema = {"enum": list(PERMISSION_MODES)}
ID: Schema = {"type": "integer", "minimum": 1}

# -- what clients send ---------------------------------------------------------------------

DESTINATION: Schema = nullable(
    {"enum": ["userSettings", "projectSettings", "localSettings", "session"]}
)
# The SDK's PermissionUpdate, in the control protocol's form (what can_use_tool suggests).
PERMISSION_UPDATE: Schema = {
    "oneOf": [
        obj(
            {
                "type": {"enum": ["addRules", "replaceRules", "removeRules"]},
                "rules": {
                    "type": "array",
                    "items": obj(
                        {"toolName": TEXT, "ruleContent": nullable(ANY_TEXT)}, ("toolName",)
                    ),
                },
                "behavior": {"enum": ["allow", "deny", "ask"]},
                "destination": DESTINATION,
            },
            ("type", "rules", "behavior"),
        ),
        obj(
            {"type": {"const": "setMode"}, "mode": MODE, "destination": DESTINATION},
            ("type", "mode"),
        ),
        obj(
            {
                "type": {"enum": ["addDirectories", "removeDirectories"]},
                "directories": {"type": "array", "items": ANY_TEXT},
                "destination": DESTINATION,
            },
            ("type", "directories"),
        ),
    ]
}

INBOUND: dict[str, Schema] = {
    "UserMessage": obj(
        {
            "type": {"const": "user_message"},
            "content": {
                "oneOf": [TEXT, {"type": "array", "minItems": 1, "items": ref("ContentBlock")}]
            },
        },
        ("type", "content"),
    ),
    "Interrupt": obj({"type": {"const": "interrupt"}}, ("type",)),
    "PermissionResponse": obj(
        {
            "type": {"const": "permission_response"},
            "correlation_id": TEXT,
            "behavior": {"enum": ["allow", "deny"]},
            "updated_input": nullable({"type": "object"}),
            "updated_permissions": nullable({"type": "array", "items": PERMISSION_UPDATE}),
            "message": nullable(ANY_TEXT),
            "interrupt": nullable({"type": "boolean", "description": "true only with deny"}),
        },
        ("type", "correlation_id", "behavior"),
        # interrupt_with_allow: stopping the turn is part of a denial only
        **{
            "if": {"properties": {"behavior": {"const": "allow"}}, "required": ["behavior"]},
            "then": {"properties": {"interrupt": {"not": {"const": True}}}},
        },
    ),
    "QuestionResponse": obj(
        {
            "type": {"const": "question_response"},
            "correlation_id": TEXT,
            "answers": {"type": "object", "description": "question text -> chosen label"},
        },
        ("type", "correlation_id", "answers"),
    ),
    "SetPermissionMode": obj(
        {"type": {"const": "set_permission_mode"}, "mode": MODE}, ("type", "mode")
    ),
    "SetModel": obj(
        {
            "type": {"const": "set_model"},
            "model": nullable({**TEXT, "pattern": PLAIN_TEXT}),
        },
        ("type", "model"),
    ),
    "StopTask": obj({"type": {"const": "stop_task"}, "task_id": TEXT}, ("type", "task_id")),
}
# The inbound message schema for each `type` value.
INBOUND_BY_TYPE = {schema["properties"]["type"]["const"]: name for name, schema in INBOUND.items()}

SCHEMAS: dict[str, Schema] = {
    "CreateSession": obj(
        {
            "model": nullable({**TEXT, "pattern": PLAIN_TEXT}),
            "permission_mode": nullable(MODE),
            "cwd": nullable({**TEXT, "pattern": PLAIN_TEXT}),
            "include_partial_messages": nullable(
                {"type": "boolean", "description": "message_delta events (default: the operator's)"}
            ),
            "resume": nullable(
                {
                    **TEXT,
                    "pattern": PLAIN_TEXT,
                    "description": "Continue a past conversation: one of your session ids, or"
                    " its claude_session_id. It must be yours (admins: any).",
                }
            ),
            "fork": nullable(
                {
                    "type": "boolean",
                    "description": "With resume: a new branch of the conversation; the original"
                    " goes on untouched (even while live)",
                }
            ),
        },
        description="May be empty, or the body absent.",
    ),
    "ContentBlock": {
        "oneOf": [
            obj({"type": {"const": "text"}, "text": ANY_TEXT}, ("type", "text")),
            obj(
                {
                    "type": {"const": "image"},
                    "source": obj(
                        {"type": {"const": "base64"}, "media_type": ANY_TEXT, "data": ANY_TEXT},
                        ("type", "media_type", "data"),
                    ),
                },
                ("type", "source"),
            ),
        ]
    },
    **INBOUND,
    "InboundMessage": {
        "oneOf": [ref(name) for name in INBOUND],
        "discriminator": {
            "propertyName": "type",
            "mapping": {kind: SCHEMA_PREFIX + name for kind, name in INBOUND_BY_TYPE.items()},
        },
    },
    # -- what the daemon answers -----------------------------------------------------------
    "Error": obj(
        {
            "error": obj(
                {"code": ANY_TEXT, "message": ANY_TEXT},
                ("code", "message"),
                description="`code` is stable and machine-readable; more fields may accompany it"
                " (`owner`, `owner_url` with session_elsewhere).",
            )
        },
        ("error",),
    ),
    "SessionCreated": obj(
        {"session_id": ANY_TEXT, "protocol_version": {"const": "1.0"}},
        ("session_id", "protocol_version"),
    ),
    "Session": obj(
        {
            "session_id": ANY_TEXT,
            "owner": {
                "type": "string",
                "description": "The principal that created it: token:default (the admin"
                " token), token:<name> ([[auth.tokens]]) or jwt:<sub>",
            },
            "state": {
                "enum": [
                    "starting",
                    "idle",
                    "running",
                    "awaiting_decision",
                    "cancelling",
                    "hibernated",
                    "waking",
                    "closed",
                ]
            },
            "created_at": {"type": "string", "format": "date-time"},
            "idle_for_s": {"type": "number"},
            "subscribers": {"type": "integer"},
            "last_seq": {"type": "integer"},
            "model": nullable(ANY_TEXT),
            "permission_mode": ANY_TEXT,
            "claude_session_id": nullable(ANY_TEXT),
            "pending_decisions": {
                "description": "a count in GET /sessions; the full requests in GET /sessions/{id}",
                "oneOf": [{"type": "integer"}, {"type": "array", "items": {"type": "object"}}],
            },
            "usage": {**ref("Usage"), "description": "GET /sessions/{id} only: its totals"},
        },
        ("session_id", "owner", "state", "created_at", "last_seq", "pending_decisions"),
    ),
    "Usage": obj(
        {
            "input_tokens": {"type": "integer"},
            "output_tokens": {"type": "integer"},
            "cache_creation_input_tokens": {"type": "integer"},
            "cache_read_input_tokens": {"type": "integer"},
            "requests": {"type": "integer", "description": "model requests answered"},
            "usd": {"type": "number", "description": "only with [usage.prices]"},
        },
        (
            "input_tokens",
            "output_tokens",
            "cache_creation_input_tokens",
            "cache_read_input_tokens",
            "requests",
        ),
        description="What model requests consumed, as the gateway counted it (the Messages"
        " API's names).",
    ),
    "UsageDays": obj(
        {
            "usage": {
                "type": "array",
                "items": {
                    "allOf": [
                        obj(
                            {
                                "principal": ANY_TEXT,
                                "day": {"type": "string", "format": "date", "description": "UTC"},
                            },
                            ("principal", "day"),
                        ),
                        ref("Usage"),
                    ]
                },
                "description": "by principal, then day",
            }
        },
        ("usage",),
    ),
    "Message": obj(
        {
            "id": ANY_TEXT,
            "role": {"enum": ["user", "assistant"]},
            "content": {
                "type": "array",
                "items": {"type": "object"},
                "description": "Anthropic content blocks: text, image, thinking, tool_use,"
                " tool_result",
            },
            "message_id": ANY_TEXT,
            "model": ANY_TEXT,
        },
        ("id", "role", "content"),
    ),
    "Messages": obj(
        {
            "session_id": ANY_TEXT,
            "last_event_id": {"type": "integer"},
            "messages": {"type": "array", "items": ref("Message")},
        },
        ("session_id", "last_event_id", "messages"),
    ),
    "Snapshot": obj(
        {
            "session_id": ANY_TEXT,
            "protocol_version": {"const": "1.0"},
            "state": ANY_TEXT,
            "last_event_id": {"type": "integer"},
            "pending_decisions": {"type": "array", "items": {"type": "object"}},
            "messages": {"type": "array", "items": ref("Message")},
            "artefacts": {"type": "array", "items": {"type": "object"}},
        },
        (
            "session_id",
            "protocol_version",
            "state",
            "last_event_id",
            "pending_decisions",
            "messages",
            "artefacts",
        ),
    ),
    "StreamTicket": obj(
        {
            "ticket": {"type": "string"},
            "expires_in": {"type": "integer", "description": "seconds"},
        },
        ("ticket", "expires_in"),
    ),
    "Counts": obj(
        {
            "live_sessions": {"type": "integer"},
            "hibernated_sessions": {"type": "integer"},
            "live_agents": {"type": "integer", "description": "CLI processes now"},
            "max_live_agents": {"type": "integer"},
            "waiting_for_agent": {"type": "integer"},
            "warm_agents": {
                "type": "integer",
                "description": "warm CLIs ready for a new session ([agent] warm_agents)",
            },
        }
    ),
    "SessionList": {
        "description": "The counts (of the whole host) are shown to admins only.",
        "allOf": [
            ref("Counts"),
            obj(
                {
                    "sessions": {"type": "array", "items": ref("Session")},
                    "agents_by_principal": {
                        "type": "object",
                        "description": "admins: each principal's live CLIs and wakes"
                        " waiting for one (its share: max_live_agents_per_principal)",
                        "additionalProperties": obj(
                            {
                                "live_agents": {"type": "integer"},
                                "waiting_for_agent": {"type": "integer"},
                            },
                            ("live_agents", "waiting_for_agent"),
                        ),
                    },
                },
                ("sessions",),
            ),
        ],
    },
    "Health": {
        "allOf": [
            ref("Counts"),
            obj(
                {
                    "ok": {"const": True},
                    "sandbox": {
                        "enum": ["bwrap", "none"],
                        "description": "how agents run: in a bubblewrap sandbox, or unconfined",
                    },
                    "network": {
                        "enum": ["none", "host"],
                        "description": "what a sandboxed agent reaches: the model only, or the host's network",
                    },
                },
                ("ok", "sandbox", "network"),
            ),
        ]
    },
    "Artefact": obj(
        {
            "artefact_id": ANY_TEXT,
            "title": ANY_TEXT,
            "kind": {"enum": list(KINDS)},
            "language": nullable(ANY_TEXT),
            "version": {**ID, "description": "the latest version, or the one asked for"},
            "summary": nullable(ANY_TEXT),
            "created_at": {"type": "string", "format": "date-time"},
            "updated_at": {
                "type": "string",
                "format": "date-time",
                "description": "when `version` was written",
            },
        },
        (
            "artefact_id",
            "title",
            "kind",
            "language",
            "version",
            "summary",
            "created_at",
            "updated_at",
        ),
    ),
    "ArtefactList": obj(
        {
            "session_id": ANY_TEXT,
            "artefacts": {"type": "array", "items": ref("Artefact"), "description": "oldest first"},
        },
        ("session_id", "artefacts"),
    ),
    "FileList": obj(
        {
            "session_id": ANY_TEXT,
            "path": {**ANY_TEXT, "description": "the folder listed; empty = the workspace"},
            "files": {
                "type": "array",
                "items": obj(
                    {
                        "path": {**ANY_TEXT, "description": "relative to the workspace"},
                        "type": {"enum": ["file", "dir", "symlink", "other"]},
                        "bytes": {"type": "integer"},
                        "mtime": {"type": "number", "description": "seconds since the epoch"},
                    },
                    ("path", "type", "bytes", "mtime"),
                ),
                "description": "everything under the folder, links not followed",
            },
            "truncated": {"type": "boolean", "description": "cut at 10,000 entries"},
        },
        ("session_id", "path", "files", "truncated"),
    ),
    "FileWritten": obj({"path": ANY_TEXT, "bytes": {"type": "integer"}}, ("path", "bytes")),
    "ArtefactContent": {
        "allOf": [
            ref("Artefact"),
            obj(
                {"latest_version": ID, "content": ANY_TEXT},
                ("latest_version", "content"),
            ),
        ]
    },
    "ArtefactVersions": obj(
        {
            "artefact_id": ANY_TEXT,
            "versions": {
                "type": "array",
                "items": obj(
                    {
                        "version": ID,
                        "summary": nullable(ANY_TEXT),
                        "created_at": {"type": "string", "format": "date-time"},
                        "bytes": {"type": "integer", "description": "the content's size, UTF-8"},
                    },
                    ("version", "summary", "created_at", "bytes"),
                ),
            },
        },
        ("artefact_id", "versions"),
    ),
    "Ready": obj({"ready": {"type": "boolean"}, "reason": ANY_TEXT}, ("ready",)),
    "GenuiSchema": obj(
        {
            "version": {"const": "1.0"},
            "server_name": {"const": "genui"},
            "prefix": {"const": "mcp__genui__render_"},
            "tools": {
                "type": "array",
                "description": "Sorted by name; empty when `[genui] dir` is not set.",
                "items": obj(
                    {
                        "name": {
                            "type": "string",
                            "description": "The tool_name a session's `tool_use` event carries:"
                            " mcp__genui__render_<short_name>",
                        },
                        "short_name": {
                            "type": "string",
                            "description": "The component: its file is <short_name>.json",
                        },
                        "raw_tool_name": {
                            "type": "string",
                            "description": "render_<short_name>, the tool's name in its MCP server",
                        },
                        "description": ANY_TEXT,
                        "schema": {
                            "type": "object",
                            "description": "The component's JSON Schema (2020-12), as the file"
                            " holds it: the tool's input schema",
                        },
                    },
                    ("name", "short_name", "raw_tool_name", "description", "schema"),
                ),
            },
        },
        ("version", "server_name", "prefix", "tools"),
    ),
}

# -- the SSE stream: each event's name and the schema of its `data` --------------------------

DECISION = obj({"correlation_id": ANY_TEXT}, ("correlation_id",))
EVENTS: dict[str, Schema] = {
    "session_ready": obj(
        {"session_id": ANY_TEXT, "protocol_version": {"const": "1.0"}},
        ("session_id", "protocol_version"),
        description="Always seq 1.",
    ),
    "session_state": obj({"state": SCHEMAS["Session"]["properties"]["state"]}, ("state",)),
    "user_message": obj(
        {"content": {"oneOf": [ANY_TEXT, {"type": "array", "items": ref("ContentBlock")}]}},
        ("content",),
        description="An accepted user message, echoed before the turn it starts.",
    ),
    "input_discarded": obj(
        {
            "messages": {
                "type": "array",
                "items": obj(
                    {
                        "content": {
                            "oneOf": [ANY_TEXT, {"type": "array", "items": ref("ContentBlock")}]
                        }
                    },
                    ("content",),
                ),
            }
        },
        ("messages",),
        description="An interrupt took back these user messages, in the order sent: they had"
        " not started and never reach the model (a UI may put them back in its input box).",
    ),
    "replay_truncated": obj(
        {
            "requested_event_id": {"type": "integer"},
            "oldest_available_id": {"type": "integer"},
            "last_event_id": {"type": "integer"},
        },
        ("requested_event_id", "oldest_available_id", "last_event_id"),
        description="?graceful=1 only, no id, not stored: the cursor had left the ring;"
        " the stream goes on from the oldest event kept.",
    ),
    "message_delta": obj(
        {"message_id": ANY_TEXT, "delta": obj({"type": ANY_TEXT, "index": {"type": "integer"}})},
        ("message_id", "delta"),
        description="delta: {type: text, text} | {type: input_json_delta, partial_json}"
        " | {type: thinking, thinking}",
    ),
    "message_complete": obj(
        {
            "message_id": ANY_TEXT,
            "message": obj(
                {
                    "id": ANY_TEXT,
                    "role": {"const": "assistant"},
                    "content": {"type": "array", "items": {"type": "object"}},
                    "model": nullable(ANY_TEXT),
                    "stop_reason": nullable(ANY_TEXT),
                },
                ("id", "role", "content"),
            ),
        },
        ("message_id", "message"),
    ),
    "tool_use": obj(
        {"message_id": ANY_TEXT, "tool_use_id": ANY_TEXT, "tool_name": ANY_TEXT, "input": {}},
        ("tool_use_id", "tool_name", "input"),
    ),
    "tool_result": obj(
        {"tool_use_id": ANY_TEXT, "output": {}, "is_error": {"type": "boolean"}},
        ("tool_use_id", "is_error"),
    ),
    "permission_request": obj(
        {
            "correlation_id": ANY_TEXT,
            "tool_name": ANY_TEXT,
            "input": {"type": "object"},
            "context": {"type": "object"},
        },
        ("correlation_id", "tool_name", "input"),
    ),
    "ask_user_question": obj(
        {"correlation_id": ANY_TEXT, "questions": {"type": "object"}},
        ("correlation_id", "questions"),
    ),
    "permission_resolved": obj(
        {"correlation_id": ANY_TEXT, "behavior": {"enum": ["allow", "deny"]}},
        ("correlation_id", "behavior"),
    ),
    "question_resolved": obj(
        {"correlation_id": ANY_TEXT, "behavior": {"const": "answered"}},
        ("correlation_id", "behavior"),
    ),
    "permission_cancelled": DECISION,
    "permission_expired": DECISION,
    "result": obj(
        {
            "session_id": ANY_TEXT,
            "subtype": ANY_TEXT,
            "is_error": {"type": "boolean"},
            "total_cost_usd": {"type": "number", "description": "cumulative for the session"},
            "turn_cost_usd": {"type": "number"},
            "duration_ms": {"type": "integer"},
            "num_turns": {"type": "integer"},
            "stop_reason": nullable(ANY_TEXT),
            "terminal_reason": nullable(ANY_TEXT),
            "usage": nullable({"type": "object"}),
            "result": nullable(ANY_TEXT),
        },
        ("session_id", "subtype"),
    ),
    "error": obj(
        {
            "code": {
                "type": "string",
                "examples": [
                    "agent_exited",
                    "agent_protocol_error",
                    "wake_failed",
                    "crash_loop",
                    "turn_stalled",
                    "turn_lost",
                    "evicted",
                    "encode_failed",
                    "budget_exceeded",
                ],
            },
            "message": ANY_TEXT,
            "unsent_messages": {"type": "integer", "description": "with wake_failed"},
            "resets_at": {
                "type": "string",
                "format": "date-time",
                "description": "with budget_exceeded: when the budget's window ends (UTC)",
            },
            "limit": {
                "enum": ["tokens_per_day", "tokens_per_month", "usd_per_day", "usd_per_month"],
                "description": "with budget_exceeded: the limit reached",
            },
        },
        ("code", "message"),
    ),
    "usage": {
        **ref("Usage"),
        "description": "After each `result`: the session's usage totals so far (additive).",
    },
    "mcp_status_change": obj(
        {"server_name": ANY_TEXT, "status": ANY_TEXT}, ("server_name", "status")
    ),
    "hook_decision_request": obj(
        {"correlation_id": ANY_TEXT, "hook_event": ANY_TEXT, "hook_input": {}},
        description="Part of protocol 1.0; this daemon registers no hooks and never sends it.",
    ),
    "done": obj({}, description="The last event; the stream ends after it."),
    "artefact_created": obj(
        {
            "artefact_id": ANY_TEXT,
            "title": ANY_TEXT,
            "kind": {"enum": list(KINDS)},
            "language": nullable(ANY_TEXT),
            "version": {"const": 1},
            "content": ANY_TEXT,
            "summary": nullable(ANY_TEXT),
            "session_id": ANY_TEXT,
            "created_at": {"type": "string", "format": "date-time"},
        },
        (
            "artefact_id",
            "title",
            "kind",
            "language",
            "version",
            "content",
            "summary",
            "session_id",
            "created_at",
        ),
        description="The model created an artefact (its `create_artefact` tool).",
    ),
    "artefact_updated": obj(
        {
            "artefact_id": ANY_TEXT,
            "version": ID,
            "content": ANY_TEXT,
            "summary": nullable(ANY_TEXT),
            "updated_at": {"type": "string", "format": "date-time"},
        },
        ("artefact_id", "version", "content", "summary", "updated_at"),
        description="A new version, with the whole content (every version is kept).",
    ),
    "artefact_deleted": obj(
        {"artefact_id": ANY_TEXT},
        ("artefact_id",),
        description="Deleted with every version (DELETE /sessions/{id}/artefacts/{aid}).",
    ),
}

# -- routes ---------------------------------------------------------------------------------

ERRORS = {
    400: "Bad request",
    401: "Missing or invalid bearer token",
    403: "Not allowed by the operator's policy",
    404: "No such session (or it is closed), or no such artefact, version or file",
    409: "The decision was already made, or never issued",
    412: "The Last-Event-ID cursor is no longer (or not yet) available",
    413: "Request body too large, or more than the workspace may hold",
    429: "Too many at once on this session, or for this principal: retry after Retry-After seconds",
    502: "The agent process failed",
    503: "Unavailable now: retry after Retry-After seconds",
}


def errors(codes: dict[int, list[str]]) -> dict[str, Any]:
    """Error responses by status, each listing its stable `error.code` values."""
    return {
        str(status): {
            "description": f"{ERRORS[status]}: `{'`, `'.join(names)}`",
            "x-error-codes": names,
            "content": {"application/json": {"schema": ref("Error")}},
        }
        for status, names in codes.items()
    }


def ok(description: str, schema: Schema | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {"description": description}
    if schema is not None:
        response["content"] = {"application/json": {"schema": schema}}
    return response


BODY_ERRORS = ["invalid_body", "invalid_json", "json_too_deep", "missing_field", "invalid_field"]
AUTH = {401: ["unauthorized"]}
SESSION_ID = {
    "name": "session_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
}
# A shared store: another host owns the session, the store is away, or this host is
# draining and has handed the session over (a proxy retries each on another host).
DURABLE_ERRORS = ["session_elsewhere", "store_unavailable", "draining"]
FILE_PATH = {
    "name": "path",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
    "description": "relative to the workspace; no `..`, `.`, empty parts or"
    " control characters; never through a symlink",
}
DAY = {"type": "string", "format": "date", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"}
ARTEFACT_ID = {
    "name": "artefact_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
}


def paths() -> dict[str, Any]:
    return {
        "/sessions": {
            "post": {
                "operationId": "createSession",
                "summary": "Create a session (starts its CLI)",
                "requestBody": {
                    "required": False,
                    "content": {"application/json": {"schema": ref("CreateSession")}},
                },
                "responses": {
                    "200": ok("Created", ref("SessionCreated")),
                    **errors(
                        {
                            400: [*BODY_ERRORS, "cwd_not_found", "unknown_conversation"],
                            **AUTH,
                            403: ["mode_not_allowed", "cwd_not_allowed"],
                            409: ["conversation_in_use"],
                            413: ["payload_too_large"],
                            429: ["principal_at_capacity"],
                            502: ["agent_start_failed"],
                            503: ["at_capacity", "agents_busy", "draining", "store_unavailable"],
                        }
                    ),
                },
            },
            "get": {
                "operationId": "listSessions",
                "summary": "The caller's sessions on this host; an admin's: every one, and"
                " how many CLIs run",
                "parameters": [
                    {
                        "name": "owner",
                        "in": "query",
                        "required": False,
                        "description": "Admins only: just this principal's sessions"
                        " (ignored for anyone else)",
                        "schema": {"type": "string"},
                    }
                ],
                "responses": {"200": ok("The sessions", ref("SessionList")), **errors(AUTH)},
            },
        },
        "/sessions/{session_id}": {
            "parameters": [SESSION_ID],
            "get": {
                "operationId": "getSession",
                "summary": "One session, with its pending decisions in full",
                "responses": {
                    "200": ok("The session", ref("Session")),
                    **errors({**AUTH, 404: ["not_found"], 503: DURABLE_ERRORS}),
                },
            },
            "delete": {
                "operationId": "deleteSession",
                "summary": "End a session: its streams get `done`, its CLI ends",
                "responses": {
                    "204": ok("Deleted"),
                    **errors({**AUTH, 404: ["not_found"], 503: DURABLE_ERRORS}),
                },
            },
        },
        "/sessions/{session_id}/stream": {
            "parameters": [SESSION_ID],
            "get": {
                "operationId": "streamSession",
                "summary": "The session's events as Server-Sent Events",
                "description": "Frames `id: <seq>`, `event: <name>`, `data: <one-line JSON>`;"
                " `: keepalive` comments when idle. Resume with `Last-Event-ID: N` (or"
                " `?last_event_id=N`; the header wins): every event after N, then live. No cursor:"
                " the history still kept, then live (`X-Replay-From` says where it starts). The"
                " event names and their `data` schemas are in `x-sse-events`.",
                "parameters": [
                    {
                        "name": "Last-Event-ID",
                        "in": "header",
                        "required": False,
                        "schema": {"type": "string", "pattern": "^[0-9]{1,18}$"},
                    },
                    {
                        "name": "last_event_id",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string", "pattern": "^[0-9]{1,18}$"},
                    },
                    {
                        "name": "X-Subscriber-ID",
                        "in": "header",
                        "required": False,
                        "schema": {"type": "string"},
                    },
                    {
                        "name": "graceful",
                        "in": "query",
                        "required": False,
                        "description": "1: a cursor that left the ring gets `replay_truncated`,"
                        " then the oldest events kept, instead of 412",
                        "schema": {"enum": ["1", "true", "0", "false"]},
                    },
                    {
                        "name": "ticket",
                        "in": "query",
                        "required": False,
                        "description": "A stream ticket (POST .../stream-ticket) instead of a"
                        " bearer token, for the browser's native EventSource",
                        "schema": {"type": "string"},
                    },
                ],
                "responses": {
                    "200": {
                        "description": "The stream",
                        "headers": {
                            "X-Replay-From": {"schema": {"type": "string"}},
                            "X-Subscriber-ID": {"schema": {"type": "string"}},
                        },
                        "content": {"text/event-stream": {"schema": {"type": "string"}}},
                        "x-sse-events": {name: ref(f"Event_{name}") for name in EVENTS},
                    },
                    **errors(
                        {
                            400: ["invalid_last_event_id"],
                            **AUTH,
                            404: ["not_found"],
                            412: ["cursor_unavailable"],
                            429: ["too_many_streams"],
                            503: ["stream_capacity", *DURABLE_ERRORS],
                        }
                    ),
                },
            },
        },
        "/sessions/{session_id}/stream-ticket": {
            "parameters": [SESSION_ID],
            "post": {
                "operationId": "createStreamTicket",
                "summary": "A read-only pass to this session's stream, for EventSource",
                "description": "Use it as `GET /sessions/{id}/stream?ticket=...`: for this"
                " session's stream only, as often as needed until it expires. Sent with"
                " `Cache-Control: no-store` and `Referrer-Policy: no-referrer`.",
                "responses": {
                    "200": ok("The ticket", ref("StreamTicket")),
                    **errors({**AUTH, 404: ["not_found"], 503: DURABLE_ERRORS}),
                },
            },
        },
        "/sessions/{session_id}/messages": {
            "parameters": [SESSION_ID],
            "get": {
                "operationId": "getMessages",
                "summary": "The conversation as messages, from its transcript",
                "responses": {
                    "200": ok("The messages", ref("Messages")),
                    **errors({**AUTH, 404: ["not_found"], 503: DURABLE_ERRORS}),
                },
            },
        },
        "/sessions/{session_id}/snapshot": {
            "parameters": [SESSION_ID],
            "get": {
                "operationId": "getSnapshot",
                "summary": "Everything a client needs to rebuild its view, then stream from"
                " `last_event_id`",
                "responses": {
                    "200": ok("The snapshot", ref("Snapshot")),
                    **errors({**AUTH, 404: ["not_found"], 503: DURABLE_ERRORS}),
                },
            },
        },
        "/sessions/{session_id}/input": {
            "parameters": [SESSION_ID],
            "post": {
                "operationId": "sendInput",
                "summary": "Send one inbound message (user_message, a decision, a control)",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": ref("InboundMessage")}},
                },
                "responses": {
                    "204": ok("Accepted"),
                    **errors(
                        {
                            400: [
                                *BODY_ERRORS,
                                "unknown_type",
                                "interrupt_with_allow",
                                "not_a_question",
                            ],
                            **AUTH,
                            403: ["mode_not_allowed"],
                            404: ["not_found"],
                            409: ["already_resolved", "unknown_correlation_id"],
                            413: ["payload_too_large", "message_too_large", "image_too_large"],
                            429: ["budget_exceeded"],
                            502: ["agent_error"],
                            503: ["backpressure", *DURABLE_ERRORS],
                        }
                    ),
                },
            },
        },
        "/genui/schema": {
            "get": {
                "operationId": "genuiSchema",
                "summary": "Generative UI: the render tools the model may call, with their"
                " components' schemas",
                "description": "Each operator-declared component (`[genui] dir`, one"
                " `<name>.json` JSON Schema per component) is an auto-allowed tool"
                " `mcp__genui__render_<name>`. A client renders its calls from the stream:"
                " `tool_use` (tool_name, input) and the `tool_result` that says whether the"
                " input was valid; `message_delta` `input_json_delta` shows the input as it is"
                " written. Any principal may read it.",
                "responses": {"200": ok("The render tools", ref("GenuiSchema")), **errors(AUTH)},
            }
        },
        "/sessions/{session_id}/artefacts": {
            "parameters": [SESSION_ID],
            "get": {
                "operationId": "listArtefacts",
                "summary": "The session's artefacts, each at its latest version (no contents)",
                "responses": {
                    "200": ok("The artefacts", ref("ArtefactList")),
                    **errors({**AUTH, 404: ["not_found"], 503: DURABLE_ERRORS}),
                },
            },
        },
        "/sessions/{session_id}/artefacts/{artefact_id}": {
            "parameters": [SESSION_ID, ARTEFACT_ID],
            "get": {
                "operationId": "getArtefact",
                "summary": "One artefact with its content, at its latest version or `version`",
                "parameters": [
                    {
                        "name": "version",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "integer", "minimum": 1},
                    }
                ],
                "responses": {
                    "200": ok("The artefact", ref("ArtefactContent")),
                    **errors(
                        {
                            400: ["invalid_version"],
                            **AUTH,
                            404: ["not_found", "artefact_not_found", "version_not_found"],
                            503: DURABLE_ERRORS,
                        }
                    ),
                },
            },
            "delete": {
                "operationId": "deleteArtefact",
                "summary": "Delete an artefact with every version; the stream gets"
                " `artefact_deleted`",
                "responses": {
                    "204": ok("Deleted"),
                    **errors(
                        {**AUTH, 404: ["not_found", "artefact_not_found"], 503: DURABLE_ERRORS}
                    ),
                },
            },
        },
        "/sessions/{session_id}/artefacts/{artefact_id}/versions": {
            "parameters": [SESSION_ID, ARTEFACT_ID],
            "get": {
                "operationId": "listArtefactVersions",
                "summary": "Every version of an artefact (no contents)",
                "responses": {
                    "200": ok("The versions", ref("ArtefactVersions")),
                    **errors(
                        {**AUTH, 404: ["not_found", "artefact_not_found"], 503: DURABLE_ERRORS}
                    ),
                },
            },
        },
        "/sessions/{session_id}/files": {
            "parameters": [SESSION_ID],
            "get": {
                "operationId": "listFiles",
                "summary": "Everything in the session's workspace, or under one folder of it"
                " (a hibernated session is not woken)",
                "parameters": [
                    {"name": "path", "in": "query", "required": False, "schema": {"type": "string"}}
                ],
                "responses": {
                    "200": ok("The files", ref("FileList")),
                    **errors(
                        {
                            400: ["bad_path"],
                            **AUTH,
                            404: ["not_found", "file_not_found"],
                            503: DURABLE_ERRORS,
                        }
                    ),
                },
            },
        },
        "/sessions/{session_id}/files/{path}": {
            "parameters": [SESSION_ID, FILE_PATH],
            "get": {
                "operationId": "downloadFile",
                "summary": "A regular file of the workspace, as an attachment with an ETag"
                " (If-None-Match: 304)",
                "responses": {
                    "200": {
                        "description": "The file's bytes",
                        "content": {
                            "application/octet-stream": {
                                "schema": {"type": "string", "format": "binary"}
                            }
                        },
                    },
                    "304": ok("Not modified since the ETag given"),
                    **errors(
                        {
                            400: ["bad_path"],
                            **AUTH,
                            404: ["not_found", "file_not_found"],
                            503: DURABLE_ERRORS,
                        }
                    ),
                },
            },
            "put": {
                "operationId": "uploadFile",
                "summary": "Write the raw body to a file of the workspace (folders made as"
                " needed); nothing is left of an upload that fails",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/octet-stream": {
                            "schema": {"type": "string", "format": "binary"}
                        }
                    },
                },
                "responses": {
                    "200": ok("Replaced", ref("FileWritten")),
                    "201": ok("Created", ref("FileWritten")),
                    **errors(
                        {
                            400: ["bad_path"],
                            **AUTH,
                            404: ["not_found", "file_not_found"],
                            413: ["upload_too_large", "workspace_full"],
                            503: DURABLE_ERRORS,
                        }
                    ),
                },
            },
            "delete": {
                "operationId": "deleteFile",
                "summary": "Delete a file, a link (not its target) or a folder with its contents",
                "responses": {
                    "204": ok("Deleted"),
                    **errors(
                        {
                            400: ["bad_path"],
                            **AUTH,
                            404: ["not_found", "file_not_found"],
                            503: DURABLE_ERRORS,
                        }
                    ),
                },
            },
        },
        "/usage": {
            "get": {
                "operationId": "getUsage",
                "summary": "Model usage per principal per UTC day: your own; an admin's:"
                " everyone's",
                "parameters": [
                    {
                        "name": name,
                        "in": "query",
                        "required": False,
                        "description": description,
                        "schema": schema,
                    }
                    for name, description, schema in (
                        (
                            "principal",
                            "admins: just this principal's (anyone else: only their own)",
                            {"type": "string"},
                        ),
                        ("since", "first day, UTC (default: this month's first)", DAY),
                        ("until", "last day, UTC, included (default: today)", DAY),
                    )
                ],
                "responses": {
                    "200": ok("The days", ref("UsageDays")),
                    **errors({400: ["bad_date"], **AUTH, 403: ["forbidden"]}),
                },
            }
        },
        "/healthz": {
            "get": {
                "operationId": "health",
                "summary": "Liveness, with session and CLI counts (no token)",
                "security": [],
                "responses": {"200": ok("Alive", ref("Health"))},
            }
        },
        "/readyz": {
            "get": {
                "operationId": "ready",
                "summary": "Readiness: accepting sessions and the store writes (no token)",
                "security": [],
                "responses": {
                    "200": ok("Ready", ref("Ready")),
                    "503": ok("Not ready: draining, or the store cannot be used", ref("Ready")),
                },
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus metrics (no token; keep it off the public edge)",
                "security": [],
                "responses": {
                    "200": {
                        "description": "Prometheus text format",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document (no token)",
                "security": [],
                "responses": {"200": ok("The OpenAPI document", {"type": "object"})},
            }
        },
    }


def document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "agent-webkitd",
            "version": __version__,
            "description": "Claude agent sessions over HTTP and Server-Sent Events: the"
            " agent-webkit wire protocol 1.0, with additive extensions.",
        },
        "security": [{"bearer": []}],
        "paths": paths(),
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                **SCHEMAS,
                **{f"Event_{name}": schema for name, schema in EVENTS.items()},
            },
        },
    }


def render() -> str:
    return json.dumps(document(), indent=2, ensure_ascii=False) + "\n"


if __name__ == "__main__":  # `make openapi`
    sys.stdout.write(render())
