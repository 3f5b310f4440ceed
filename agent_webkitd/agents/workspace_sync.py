"""Workspaces that follow their session from host to host (DESIGN §14).

With the Postgres store each host has its own workspaces_dir, and a session may move
(a deploy, a dead or frozen host). So a session's workspace is checkpointed into the
store whenever it settles: at a turn's end, before the `result` is published (a client
that saw the result will find the turn's files on any host), and after each upload or
delete over HTTP. A checkpoint sends only what changed since the last one this host
stored (checkpoints.py compares scans) and is stored only while this host owns the
session. A host that claims the session restores the workspace before its CLI starts.
A SIGKILLed host loses the running turn's file changes, as it loses the turn.

A workspace over `[agent] max_workspace_bytes` is not checkpointed (logged, counted):
the store keeps the last checkpoint that fitted. Operators whose hosts share one
filesystem set `[agent] workspaces_shared` and skip all of this.
"""

from __future__ import annotations

import asyncio
import os
import time

import structlog

from ..metrics import Metrics
from ..stores.base import FileRow, WorkspaceStore
from . import checkpoints
from .checkpoints import Entry, Manifest

log = structlog.get_logger(__name__)


class WorkspaceSync:
    def __init__(self, store: WorkspaceStore, max_bytes: int, metrics: Metrics) -> None:
        self._store = store
        self._max_bytes = max_bytes or None  # 0: no limit
        self._metrics = metrics
        self._stored: dict[str, Manifest] = {}  # per session: what its last checkpoint holds
        self._locks: dict[str, asyncio.Lock] = {}

    async def checkpoint(self, session_id: str, root: str) -> None:
        """Store what changed in the workspace since the last checkpoint (never raises:
        a failed checkpoint is retried whole by the next one)."""
        async with self._locks.setdefault(session_id, asyncio.Lock()):
            started = time.monotonic()
            try:
                stored = await self._checkpoint(session_id, root)
            except checkpoints.TooLarge as exc:
                self._skipped(session_id, "too_large", str(exc))
                return
            except Exception as exc:  # the store refused or was away; next time, all again
                self._skipped(session_id, "failed", f"{type(exc).__name__}: {exc}")
                return
            if stored is None:
                return
            if not stored:
                self._skipped(session_id, "lost", "another host owns the session")
                return
            self._metrics.checkpoint_seconds.observe(
                {"kind": "checkpoint"}, time.monotonic() - started
            )

    async def _checkpoint(self, session_id: str, root: str) -> bool | None:
        """True: stored; False: the session is another host's; None: nothing changed."""
        before = self._stored.get(session_id, {})
        now = await asyncio.to_thread(_scan, root)
        if self._max_bytes is not None and checkpoints.total_bytes(now) > self._max_bytes:
            raise checkpoints.TooLarge(f"the workspace holds more than {self._max_bytes} bytes")
        changed, removed = checkpoints.changes(before, now)
        if not changed and not removed:
            return None
        rows, gone = await asyncio.to_thread(
            checkpoints.read, root, changed, max_bytes=self._max_bytes
        )
        removed = [*removed, *gone]
        if not await self._store.save_workspace(
            session_id, [_row(entry, data) for entry, data in rows], removed
        ):
            return False
        after = dict(before)
        for path in removed:
            after.pop(path, None)
        after.update((entry.path, entry) for entry, _ in rows)
        self._stored[session_id] = after
        self._metrics.checkpoint_bytes.add(
            {"kind": "checkpoint"}, sum(len(data or b"") for _, data in rows)
        )
        return True

    async def restore(self, session_id: str, root: str) -> None:
        """Make this host's workspace of the session hold its last checkpoint (before the
        CLI starts). A workspace the store cannot give back is logged; the session goes
        on without it rather than not at all."""
        async with self._locks.setdefault(session_id, asyncio.Lock()):
            started = time.monotonic()
            try:
                rows = await self._store.workspace_files(session_id)
                stored = await asyncio.to_thread(_restore, root, rows)
            except Exception as exc:
                log.error(
                    "workspace_restore_failed",
                    session_id=session_id,
                    error=f"{type(exc).__name__}: {exc}",
                )
                self._stored.pop(session_id, None)  # the next checkpoint sends everything
                return
            self._stored[session_id] = stored
            restored = sum(len(row.content or b"") for row in rows)
            self._metrics.checkpoint_seconds.observe(
                {"kind": "restore"}, time.monotonic() - started
            )
            self._metrics.checkpoint_bytes.add({"kind": "restore"}, restored)
            log.info("workspace_restored", session_id=session_id, files=len(rows), bytes=restored)

    def forget(self, session_id: str) -> None:
        """The session left this host (closed, released, lost)."""
        self._stored.pop(session_id, None)
        self._locks.pop(session_id, None)

    def _skipped(self, session_id: str, reason: str, why: str) -> None:
        self._metrics.checkpoints_skipped.inc({"reason": reason})
        log.warning("workspace_checkpoint_skipped", session_id=session_id, reason=reason, error=why)


def _scan(root: str) -> Manifest:
    try:
        return checkpoints.scan(root)
    except FileNotFoundError:  # never made: a session that has not started a CLI
        return {}


def _restore(root: str, rows: list[FileRow]) -> Manifest:
    os.makedirs(root, mode=0o700, exist_ok=True)
    return checkpoints.restore(
        root,
        [(Entry(r.path, r.kind, r.mode, r.size, r.mtime_ns, r.target), r.content) for r in rows],
    )


def _row(entry: Entry, data: bytes | None) -> FileRow:
    return FileRow(
        entry.path, entry.kind, entry.mode, entry.size, entry.mtime_ns, entry.target, data
    )
