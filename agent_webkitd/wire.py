"""Wire protocol 1.0: validation of inbound messages and create-session bodies.

Everything a client sends is checked here, once, into small frozen dataclasses. Errors
are 400s whose code names the problem (`missing_field`, `invalid_field`, `unknown_type`,
...), and whose message names the field.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from claude_agent_sdk import PermissionUpdate

from .config import PERMISSION_MODES
from .errors import ApiError, bad_request

PROTOCOL_VERSION = "1.0"
# Deeper bodies are refused before anything walks them (tool inputs rarely pass 10).
MAX_DEPTH = 64


@dataclass(frozen=True)
class CreateSession:
    model: str | None = None
    permission_mode: str | None = None
    cwd: str | None = None


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


def os_text(name: str, value: str | None) -> str | None:
    """A string that becomes a path or a command-line argument: no NUL, valid Unicode."""
    if value is None:
        return None
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise bad_request("invalid_field", f"field '{name}' must not contain control characters")
    try:
        value.encode()
    except UnicodeEncodeError:
        raise bad_request("invalid_field", f"field '{name}' is not valid Unicode") from None
    return value


class _Fields:
    """Typed access to a JSON object's fields; every failure names the field."""

    def __init__(self, body: dict[str, Any]) -> None:
        self.body = body

    def _get(self, name: str, required: bool) -> Any:
        if name not in self.body or self.body[name] is None:
            if required:
                raise bad_request("missing_field", f"field '{name}' is required")
            return None
        return self.body[name]

    def text(self, name: str, *, required: bool = True, nonempty: bool = True) -> str | None:
        value = self._get(name, required)
        if value is None:
            return None
        if not isinstance(value, str) or (nonempty and not value):
            raise bad_request("invalid_field", f"field '{name}' must be a non-empty string")
        return value

    def required_text(self, name: str) -> str:
        value = self.text(name)
        assert value is not None
        return value

    def mapping(self, name: str, *, required: bool = False) -> dict[str, Any] | None:
        value = self._get(name, required)
        if value is not None and not isinstance(value, dict):
            raise bad_request("invalid_field", f"field '{name}' must be a JSON object")
        return value

    def flag(self, name: str) -> bool | None:
        value = self._get(name, False)
        if value is not None and not isinstance(value, bool):
            raise bad_request("invalid_field", f"field '{name}' must be a boolean")
        return value


def parse_create(body: Any) -> CreateSession:
    if body is None:
        return CreateSession()
    if not isinstance(body, dict):
        raise bad_request("invalid_body", "the request body must be a JSON object")
    fields = _Fields(body)
    mode = fields.text("permission_mode", required=False)
    if mode is not None and mode not in PERMISSION_MODES:
        raise bad_request(
            "invalid_field", f"field 'permission_mode' must be one of {', '.join(PERMISSION_MODES)}"
        )
    return CreateSession(
        model=os_text("model", fields.text("model", required=False)),
        permission_mode=mode,
        cwd=os_text("cwd", fields.text("cwd", required=False)),
    )


def parse_inbound(body: Any) -> Inbound:
    if not isinstance(body, dict):
        raise bad_request("invalid_body", "the request body must be a JSON object")
    kind = body.get("type")
    if kind is None:
        raise bad_request("missing_field", "field 'type' is required")
    if kind not in INBOUND_TYPES:
        raise bad_request(
            "unknown_type",
            f"unknown message type {kind!r}; expected one of {', '.join(INBOUND_TYPES)}",
        )
    f = _Fields(body)
    match kind:
        case "user_message":
            return UserMessage(content=_content(body.get("content")))
        case "interrupt":
            return Interrupt()
        case "permission_response":
            behavior = f.required_text("behavior")
            if behavior not in ("allow", "deny"):
                raise bad_request("invalid_field", "field 'behavior' must be 'allow' or 'deny'")
            interrupt = f.flag("interrupt")
            if interrupt is not None and behavior == "allow":
                raise bad_request(
                    "interrupt_with_allow", "field 'interrupt' is only valid with behavior 'deny'"
                )
            message = f.text("message", required=False, nonempty=False)
            return PermissionResponse(
                correlation_id=f.required_text("correlation_id"),
                behavior=behavior,
                updated_input=f.mapping("updated_input"),
                updated_permissions=_permission_updates(body.get("updated_permissions")),
                message=message,
                interrupt=bool(interrupt),
            )
        case "question_response":
            answers = f.mapping("answers", required=True)
            assert answers is not None
            return QuestionResponse(
                correlation_id=f.required_text("correlation_id"), answers=answers
            )
        case "set_permission_mode":
            mode = f.required_text("mode")
            if mode not in PERMISSION_MODES:
                raise bad_request(
                    "invalid_field", f"field 'mode' must be one of {', '.join(PERMISSION_MODES)}"
                )
            return SetPermissionMode(mode=mode)
        case "set_model":
            if "model" not in body:
                raise bad_request("missing_field", "field 'model' is required (a string or null)")
            return SetModel(model=os_text("model", f.text("model", required=False)))
        case _:  # "stop_task"
            return StopTask(task_id=f.required_text("task_id"))


def _content(content: Any) -> str | list[dict[str, Any]]:
    if content is None:
        raise bad_request("missing_field", "field 'content' is required")
    if isinstance(content, str):
        if not content:
            raise bad_request("invalid_field", "field 'content' must not be empty")
        return content
    if not isinstance(content, list) or not content:
        raise bad_request(
            "invalid_field",
            "field 'content' must be a string or a non-empty list of content blocks",
        )
    return [_block(i, block) for i, block in enumerate(content)]


def _block(i: int, block: Any) -> dict[str, Any]:
    where = f"content[{i}]"
    if not isinstance(block, dict):
        raise bad_request("invalid_field", f"field '{where}' must be a content block object")
    kind = block.get("type")
    if kind == "text":
        if not isinstance(block.get("text"), str):
            raise bad_request("invalid_field", f"field '{where}.text' must be a string")
        return {"type": "text", "text": block["text"]}
    if kind == "image":
        source = block.get("source")
        if (
            not isinstance(source, dict)
            or source.get("type") != "base64"
            or not isinstance(source.get("media_type"), str)
            or not isinstance(source.get("data"), str)
        ):
            raise bad_request(
                "invalid_field",
                f"field '{where}.source' must be {{type: 'base64', media_type, data}}",
            )
        return {
            "type": "image",
            "source": {
                "type": "base64",
                "media_type": source["media_type"],
                "data": source["data"],
            },
        }
    raise bad_request("invalid_field", f"field '{where}.type' must be 'text' or 'image'")


def _permission_updates(value: Any) -> list[PermissionUpdate] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise bad_request("invalid_field", "field 'updated_permissions' must be a list")
    updates = []
    for i, item in enumerate(value):
        where = f"updated_permissions[{i}]"
        if not isinstance(item, dict) or not isinstance(item.get("type"), str):
            raise bad_request("invalid_field", f"field '{where}' must be an object with a 'type'")
        try:
            update = PermissionUpdate.from_dict(item)
            update.to_dict()  # the SDK's own check that the CLI will accept it
        except (KeyError, TypeError, ValueError) as exc:
            raise bad_request(
                "invalid_field", f"field '{where}' is not a valid permission update: {exc}"
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
