"""A session's artefacts: versioned documents, code and JSON that the model writes
through the `artefacts` MCP server (agents/artefact_tools.py) and clients read over REST.

An artefact has an id, a title, a kind, an optional language and its versions 1, 2, ...,
every one kept. The index (titles, kinds, each version's summary, size and time) lives
here, in the session, so version numbers are handed out without a race. The contents
live in the session store (memory, SQLite or Postgres). A version is stored in the same
commit as the event that announces it, and a write returns only once it is durable. So
a client that saw `artefact_created` or `artefact_updated` can always read that version.

Every change is an event on the session's stream, stored and replayed like any other:
`artefact_created`, `artefact_updated`, `artefact_deleted`. Bad input and the limits
(`[artefacts] max_bytes`, `max_per_session`) raise ArtefactError with a stable code. The
tools hand it to the model as an error result; the routes answer it as a 4xx.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from typing import Any, Protocol

from ..config import ArtefactsConfig
from ..metrics import Metrics
from .model import (
    KINDS,
    MAX_LANGUAGE_CHARS,
    MAX_SUMMARY_CHARS,
    MAX_TITLE_CHARS,
    Artefact,
    ArtefactError,
    StoredVersion,
    Version,
    iso,
    not_found,
)

Emit = Callable[[str, dict[str, Any]], int]


class ArtefactStore(Protocol):
    """Where a session's artefact contents live (every Store is one)."""

    async def save_artefact(self, session_id: str, record: StoredVersion) -> None:
        """Store one version (and, with version 1, the artefact); return once it is
        durable. Committed with the events appended before it."""
        ...

    async def delete_artefact(self, session_id: str, artefact_id: str) -> None:
        """Delete an artefact with every version; return once that is durable."""
        ...

    async def artefact_content(self, session_id: str, artefact_id: str, version: int) -> str | None:
        """One version's content (None if there is no such version)."""
        ...


class Artefacts:
    def __init__(
        self,
        session_id: str,
        store: ArtefactStore,
        emit: Emit,
        limits: ArtefactsConfig,
        metrics: Metrics,
        restored: list[Artefact] | None = None,
    ) -> None:
        self.session_id = session_id
        self._store = store
        self._emit = emit
        self._limits = limits
        self._metrics = metrics
        self._items = {a.artefact_id: a for a in restored or ()}
        # Versions handed out whose write is not yet durable: read them from here.
        self._unsaved: dict[tuple[str, int], str] = {}

    def list(self) -> list[Artefact]:
        """Oldest first."""
        return list(self._items.values())

    def get(self, artefact_id: str) -> Artefact:
        artefact = self._items.get(artefact_id)
        if artefact is None:
            raise not_found(artefact_id)
        return artefact

    async def create(
        self,
        title: str,
        kind: str,
        content: str,
        language: str | None = None,
        summary: str | None = None,
    ) -> Artefact:
        title = _required_text("title", title, MAX_TITLE_CHARS)
        if kind not in KINDS:
            raise ArtefactError(
                "unknown_kind", f"unknown kind {kind!r}: use one of {', '.join(KINDS)}"
            )
        language = _text("language", language, MAX_LANGUAGE_CHARS)
        summary = _text("summary", summary, MAX_SUMMARY_CHARS)
        size = self._check_content(kind, content)
        if len(self._items) >= self._limits.max_per_session:
            self._metrics.limit_rejections.inc({"limit": "artefacts_per_session"})
            raise ArtefactError(
                "too_many_artefacts",
                f"this session holds {len(self._items)} artefacts, the most it may"
                f" ({self._limits.max_per_session}): update one instead",
            )
        now = time.time()
        version = Version(1, summary, now, size)
        artefact = Artefact(f"art_{uuid.uuid4().hex[:16]}", title, kind, language, now, [version])
        self._items[artefact.artefact_id] = artefact  # counted at once: no race past the cap
        self._emit(
            "artefact_created",
            {
                "artefact_id": artefact.artefact_id,
                "title": title,
                "kind": kind,
                "language": language,
                "version": 1,
                "content": content,
                "summary": summary,
                "session_id": self.session_id,
                "created_at": iso(now),
            },
        )
        await self._save(artefact, version, content)
        return artefact

    async def update(self, artefact_id: str, content: str, summary: str | None = None) -> Version:
        artefact = self.get(artefact_id)
        summary = _text("summary", summary, MAX_SUMMARY_CHARS)
        size = self._check_content(artefact.kind, content)
        now = time.time()
        version = Version(len(artefact.versions) + 1, summary, now, size)
        artefact.versions.append(version)  # numbered at once: parallel updates never clash
        self._emit(
            "artefact_updated",
            {
                "artefact_id": artefact_id,
                "version": version.version,
                "content": content,
                "summary": summary,
                "updated_at": iso(now),
            },
        )
        await self._save(artefact, version, content)
        return version

    async def read(
        self, artefact_id: str, number: int | None = None
    ) -> tuple[Artefact, Version, str]:
        """The artefact at version `number` (the latest if None), with its content."""
        artefact = self.get(artefact_id)
        version = artefact.version(number)
        content = self._unsaved.get((artefact_id, version.version))
        if content is None:
            content = await self._store.artefact_content(
                self.session_id, artefact_id, version.version
            )
        if content is None:  # deleted while we read
            raise not_found(artefact_id)
        return artefact, version, content

    async def delete(self, artefact_id: str) -> None:
        self.get(artefact_id)
        del self._items[artefact_id]
        self._emit("artefact_deleted", {"artefact_id": artefact_id})
        await self._store.delete_artefact(self.session_id, artefact_id)

    def _check_content(self, kind: str, content: str) -> int:
        """The content's size in bytes; raises if it is not storable text, too large, or
        not JSON for `application/json`."""
        if not isinstance(content, str):
            raise ArtefactError("invalid_field", "content must be a string")
        size = len(_utf8("content", content))
        if size > self._limits.max_bytes:
            self._metrics.limit_rejections.inc({"limit": "artefact_bytes"})
            raise ArtefactError(
                "artefact_too_large",
                f"the content is {size} bytes (UTF-8); at most {self._limits.max_bytes} are"
                " allowed: split it into several artefacts",
            )
        if kind == "application/json":
            try:
                json.loads(content)
            except ValueError as exc:
                raise ArtefactError(
                    "invalid_json",
                    f"the content of an application/json artefact must be JSON: {exc}",
                ) from None
        return size

    async def _save(self, artefact: Artefact, version: Version, content: str) -> None:
        key = (artefact.artefact_id, version.version)
        self._unsaved[key] = content
        record = StoredVersion(
            artefact.artefact_id,
            artefact.title,
            artefact.kind,
            artefact.language,
            artefact.created_at,
            version,
            content,
        )
        try:
            await self._store.save_artefact(self.session_id, record)
        finally:
            del self._unsaved[key]


def _text(name: str, value: Any, max_chars: int) -> str | None:
    """An optional short text field ("" is the same as none)."""
    return None if value is None or value == "" else _required_text(name, value, max_chars)


def _required_text(name: str, value: Any, max_chars: int) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ArtefactError("invalid_field", f"{name} must be a non-empty string")
    if len(value) > max_chars:
        raise ArtefactError(
            "invalid_field", f"{name} is {len(value)} characters; at most {max_chars} are allowed"
        )
    _utf8(name, value)
    return value


def _utf8(name: str, value: str) -> bytes:
    """The text as UTF-8; NUL characters and lone surrogates (which no store keeps as
    text) are refused."""
    if "\x00" in value:
        raise ArtefactError("invalid_field", f"{name} must not contain NUL characters")
    try:
        return value.encode()
    except UnicodeEncodeError:
        raise ArtefactError(
            "invalid_field", f"{name} is not valid Unicode (a lone surrogate)"
        ) from None
