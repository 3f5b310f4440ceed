"""What our SDK SessionStores (Postgres, SQLite) share: how a key names a transcript, an
entry's uuid, an entry's stored JSON text, and the session summary folded from the entries
a store kept."""

from __future__ import annotations

import json
from typing import Any

import orjson
from claude_agent_sdk import fold_session_summary
from claude_agent_sdk.types import SessionKey, SessionStoreEntry, SessionSummaryEntry


def subpath_of(key: SessionKey) -> str:
    """'' for a main transcript, the subagent's path otherwise."""
    return key.get("subpath") or ""


def uuid_of(entry: SessionStoreEntry) -> str | None:
    uuid: Any = entry.get("uuid")
    return uuid if isinstance(uuid, str) else None


def entry_text(entry: SessionStoreEntry) -> str:
    """An entry as stored JSON text. orjson: a turn mirrors an entry per message, and the
    standard encoder took a tenth of the SQLite writer thread; json for what orjson refuses
    (integers past 64 bits, non-string keys)."""
    try:
        return orjson.dumps(entry).decode()
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        return json.dumps(entry)


def fold_summary(
    key: SessionKey, mtime: int, stored: str | None, added: list[SessionStoreEntry]
) -> str:
    """The stored summary data (JSON) with `added` folded in."""
    prev: SessionSummaryEntry | None = None
    if stored is not None:
        prev = {"session_id": key["session_id"], "mtime": mtime, "data": json.loads(stored)}
    return json.dumps(fold_session_summary(prev, key, added)["data"])
