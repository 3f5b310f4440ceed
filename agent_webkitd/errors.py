"""Errors with stable machine-readable codes, turned into JSON bodies at the HTTP edge; and
the one error of a daemon that cannot start as configured (exit status 2)."""

from __future__ import annotations


class ConfigError(ValueError):
    """A config file or a secret that cannot be used; the message names the key, the
    variable or the file (never a secret's value)."""


class SandboxUnavailable(Exception):
    """bubblewrap is missing or cannot make namespaces here: the daemon does not start."""


class ApiError(Exception):
    """An error a client gets as `{"error": {"code", "message"}}` with an HTTP status."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        headers: dict[str, str] | None = None,
        extra: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}
        self.extra = extra or {}  # more machine-readable detail, beside code and message

    def body(self) -> dict[str, dict[str, str]]:
        return {"error": {"code": self.code, "message": self.message, **self.extra}}


def bad_request(code: str, message: str) -> ApiError:
    return ApiError(400, code, message)


def not_found(session_id: str) -> ApiError:
    return ApiError(404, "not_found", f"no session {session_id!r}")


def unavailable(code: str, message: str, retry_after_s: int = 1) -> ApiError:
    return ApiError(503, code, message, {"Retry-After": str(retry_after_s)})
