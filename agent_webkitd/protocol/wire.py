"""Wire protocol 1.0: validation of inbound messages and create-session bodies.

Everything a client sends is checked here, once, against the schemas of the OpenAPI
document (openapi.py, the one description of the API), then turned into small frozen
dataclasses. Errors are 400s whose code names the problem (`missing_field`,
`invalid_field`, `unknown_type`, ...) and whose message names the field. What a schema
cannot say is checked in code: `interrupt` only with deny, permission updates the SDK
can send back, strings that must be valid Unicode.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from claude_agent_sdk import PermissionUpdate
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match

from ..errors import ApiError, bad_request
from .openapi import INBOUND_BY_TYPE, SCHEMA_PREFIX, SCHEMAS

PROTOCOL_VERSION = "1.0"
# Deeper bodies are refused before anything walks them (tool inputs rarely pass 10).
MAX_DEPTH = 64


@dataclass(frozen=True)
class CreateSession:
    model: str | None = None
    permission_mode: str | None = None
    cwd: str | None = None
    include_partial_messages: bool | None = None  # None: the operator's default
    resume: str | None = None  # continue this conversation (a session id or a claude one)
    fork: bool = False  # ...as a new branch, leaving the original as it is


@dataclass(frozen=True)
class UserMessage:
    content: str | list[dict[str, Any]]


@dataclass(frozen=True)
class Interrupt:
    pass


@dataclass(frozen=True)
class PermissionResponse:
    correlation_id: str
    behavior: str  # "allow" | "deny"
    updated_input: dict[str, Any] | None = None
    updated_permissions: list[PermissionUpdate] | None = None
    message: str | None = None
    interrupt: bool = False


@dataclass(frozen=True)
class QuestionResponse:
    correlation_id: str
    answers: dict[str, Any]


@dataclass(frozen=True)
class SetPermissionMode:
    mode: str


@dataclass(frozen=True)
class SetModel:
    model: str | None


@dataclass(frozen=True)
class StopTask:
    task_id: str


Inbound = (
    UserMessage
    | Interrupt
    | PermissionResponse
    | QuestionResponse
    | SetPermissionMode
    | SetModel
    | StopTask
)

INBOUND_TYPES = (
    "user_message",
    "interrupt",
    "permission_response",
    "question_response",
    "set_permission_mode",
    "set_model",
    "stop_task",
)


def within_depth(value: Any, limit: int = MAX_DEPTH) -> bool:
    """Whether a parsed JSON value nests at most `limit` arrays and objects deep."""
    level: list[Any] = [value]
    for _ in range(limit):
        level = [
            child
            for item in level
            if isinstance(item, dict | list)
            for child in (item.values() if isinstance(item, dict) else item)
        ]
        if not level:
            return True
    return not any(isinstance(item, dict | list) for item in level)


def content_sizes(content: str | list[dict[str, Any]]) -> tuple[int, list[int]]:
    """A user message's text in UTF-8 bytes, and each image's decoded size in bytes."""
    if isinstance(content, str):
        return len(content.encode(errors="surrogatepass")), []
    text = sum(
        len(b["text"].encode(errors="surrogatepass")) for b in content if b["type"] == "text"
    )
    images = [len(b["source"]["data"]) * 3 // 4 for b in content if b["type"] == "image"]
    return text, images


def parse_create(body: Any) -> CreateSession:
    _check("CreateSession", body)
    return CreateSession(
        model=_unicode("model", body.get("model")),
        permission_mode=body.get("permission_mode"),
        cwd=_unicode("cwd", body.get("cwd")),
        include_partial_messages=body.get("include_partial_messages"),
        resume=_unicode("resume", body.get("resume")),
        fork=body.get("fork") is True,
    )


def parse_inbound(body: Any) -> Inbound:
    if not isinstance(body, dict):
        raise bad_request("invalid_body", "the request body must be a JSON object")
    kind = body.get("type")
    if kind is None:
        raise bad_request("missing_field", "field 'type' is required")
    if not isinstance(kind, str) or kind not in INBOUND_BY_TYPE:
        raise bad_request(
            "unknown_type",
            f"unknown message type {kind!r}; expected one of {', '.join(INBOUND_BY_TYPE)}",
        )
    if (
        kind == "permission_response"
        and body.get("interrupt") is True
        and body.get("behavior") == "allow"
    ):
        raise bad_request(
            "interrupt_with_allow", "field 'interrupt' can be true only with behavior 'deny'"
        )
    _check(INBOUND_BY_TYPE[kind], body)
    match kind:
        case "user_message":
            return UserMessage(content=_content(body["content"]))
        case "interrupt":
            return Interrupt()
        case "permission_response":
            return PermissionResponse(
                correlation_id=body["correlation_id"],
                behavior=body["behavior"],
                updated_input=body.get("updated_input"),
                updated_permissions=_permission_updates(body.get("updated_permissions")),
                message=body.get("message"),
                interrupt=bool(body.get("interrupt")),
            )
        case "question_response":
            return QuestionResponse(correlation_id=body["correlation_id"], answers=body["answers"])
        case "set_permission_mode":
            return SetPermissionMode(mode=body["mode"])
        case "set_model":
            return SetModel(model=_unicode("model", body["model"]))
        case _:  # "stop_task"
            return StopTask(task_id=body["task_id"])


@functools.cache
def _validator(name: str) -> Draft202012Validator:
    return Draft202012Validator({"$ref": SCHEMA_PREFIX + name, "components": {"schemas": SCHEMAS}})


def _check(name: str, body: Any) -> None:
    """400 with the code and field of the most relevant way `body` fails schema `name`."""
    error = best_match(_validator(name).iter_errors(body))
    if error is None:
        return
    if not error.absolute_path and error.validator == "type":
        raise bad_request("invalid_body", "the request body must be a JSON object")
    if error.validator == "required" and not error.absolute_path:
        missing = next(f for f in error.validator_value if f not in error.instance)
        raise bad_request("missing_field", f"field '{missing}' is required")
    raise bad_request("invalid_field", f"field '{_field(error)}' {_reason(error)}")


def _field(error: ValidationError) -> str:
    field = ""
    for part in error.absolute_path:
        field += f"[{part}]" if isinstance(part, int) else f".{part}" if field else str(part)
    return field


def _reason(error: ValidationError) -> str:
    match error.validator:
        case "required" | "enum" | "const":
            value = error.validator_value
            listed = ", ".join(map(repr, value if isinstance(value, list) else [value]))
            return (
                f"needs {listed}" if error.validator == "required" else f"must be one of {listed}"
            )
        case "type":
            return f"must be of type {error.validator_value}"
        case "minLength" | "minItems":
            return "must not be empty"
        case "pattern":
            return "must not contain control characters"
        case "oneOf" if isinstance(error.validator_value, list):
            kinds = [alt.get("type", "object") for alt in error.validator_value]
            if _json_type(error.instance) not in kinds:
                return f"must be {' or '.join(dict.fromkeys(map(str, kinds)))}"
    return "does not have an allowed form (see GET /openapi.json)"


def _json_type(value: Any) -> str:
    names = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array"}
    return "null" if value is None else names.get(type(value), "object")


def _unicode(name: str, value: str | None) -> str | None:
    """A string that becomes a path or a command-line argument: no lone surrogates."""
    if value is not None:
        try:
            value.encode()
        except UnicodeEncodeError:
            raise bad_request("invalid_field", f"field '{name}' is not valid Unicode") from None
    return value


def _content(content: str | list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """Content blocks with just the fields the CLI takes (the schema checked the rest)."""
    if isinstance(content, str):
        return content
    return [
        {"type": "text", "text": block["text"]}
        if block["type"] == "text"
        else {
            "type": "image",
            "source": {k: block["source"][k] for k in ("type", "media_type", "data")},
        }
        for block in content
    ]


def _permission_updates(value: list[dict[str, Any]] | None) -> list[PermissionUpdate] | None:
    if value is None:
        return None
    updates = []
    for i, item in enumerate(value):
        try:
            update = PermissionUpdate.from_dict(item)
            update.to_dict()  # the SDK's own check that the CLI will accept it
        except (KeyError, TypeError, ValueError) as exc:
            raise bad_request(
                "invalid_field",
                f"field 'updated_permissions[{i}]' is not a valid permission update: {exc}",
            ) from exc
        updates.append(update)
    return updates


def check_mode_allowed(mode: str, allowed: tuple[str, ...]) -> None:
    if mode not in allowed:
        raise ApiError(
            403,
            "mode_not_allowed",
            f"permission mode {mode!r} is not allowed by this server (allowed: {', '.join(allowed)})",
        )
