"""What an artefact is: its kinds, its limits, and the records a session's index and the
stores keep (an artefact and its versions; a stored version with its content).

An artefact has an id, a title, a kind, an optional language and its versions 1, 2, ...,
every one kept. `Artefact` and `Version` are the index (everything but contents);
`StoredVersion` is what a store writes for one version. Bad input and the limits raise
ArtefactError with a stable code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ..config import ArtefactsConfig
from ..errors import ApiError

KINDS = ("text/markdown", "text/plain", "application/json", "text/code")
# Fixed bounds on the small fields, so the index a session keeps stays small.
MAX_TITLE_CHARS = 200
MAX_LANGUAGE_CHARS = 50
MAX_SUMMARY_CHARS = 2000

# The SDK's default for the longest line it reads from the CLI (max_buffer_size).
SDK_LINE_BYTES = 1_048_576


def cli_line_bytes(limits: ArtefactsConfig) -> int:
    """The longest CLI stdout line the SDK must read while the model may write artefacts of
    `max_bytes`: its tool call carries the content on one line (the assistant frame, then
    the mcp_message request), JSON-escaped. A longer line would stop the SDK's reader
    (agent_protocol_error) before the limit could answer with an error result."""
    return SDK_LINE_BYTES + 2 * limits.max_bytes


class ArtefactError(ApiError):
    """A request about artefacts that cannot be carried out; `code` names why."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(status, code, message)


def not_found(artefact_id: str) -> ArtefactError:
    return ArtefactError("artefact_not_found", f"no artefact {artefact_id!r}", 404)


@dataclass(frozen=True)
class Version:
    version: int
    summary: str | None
    created_at: float  # unix time
    bytes: int  # the content's size, UTF-8

    def describe(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "summary": self.summary,
            "created_at": iso(self.created_at),
            "bytes": self.bytes,
        }


@dataclass
class Artefact:
    """One artefact in the index: everything but the contents."""

    artefact_id: str
    title: str
    kind: str
    language: str | None
    created_at: float
    versions: list[Version] = field(default_factory=list)

    @property
    def latest(self) -> Version:
        return self.versions[-1]

    def describe(self, version: Version | None = None) -> dict[str, Any]:
        """As listed (the latest version), or at `version`."""
        shown = version or self.latest
        return {
            "artefact_id": self.artefact_id,
            "title": self.title,
            "kind": self.kind,
            "language": self.language,
            "version": shown.version,
            "summary": shown.summary,
            "created_at": iso(self.created_at),
            "updated_at": iso(shown.created_at),
        }

    def version(self, number: int | None) -> Version:
        if number is None:
            return self.latest
        if not 1 <= number <= len(self.versions):
            raise ArtefactError(
                "version_not_found",
                f"artefact {self.artefact_id!r} has versions 1 to {len(self.versions)},"
                f" not {number}",
                404,
            )
        return self.versions[number - 1]


@dataclass(frozen=True)
class StoredVersion:
    """What a store keeps of one version (with its artefact's fields, for version 1)."""

    artefact_id: str
    title: str
    kind: str
    language: str | None
    artefact_created_at: float
    version: Version
    content: str


def iso(unix_time: float) -> str:
    return datetime.fromtimestamp(unix_time, UTC).isoformat()
