"""The `checkpoint` phase: what a workspace that follows its session adds to a turn's end.

With the Postgres store a session's workspace is checkpointed before its `result` is
published (agents/workspace_sync.py), so the checkpoint's time is added to every turn.
This phase builds a 10 MiB workspace (FILES files of FILE_BYTES), stores it once, then
ROUNDS times rewrites one file and times `WorkspaceSync.checkpoint` against a real
PostgreSQL (a scratch database): scan, compare, read, one transaction. Target: p50 <= 50
ms. Also timed: the first checkpoint (everything) and a restore on another folder (what a
host claiming the session pays before the CLI starts).

    .venv/bin/python -m bench.run --only checkpoint
"""

from __future__ import annotations

import logging
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from agent_webkitd.agents.workspace_sync import WorkspaceSync
from agent_webkitd.config import StoreConfig
from agent_webkitd.metrics import Metrics
from agent_webkitd.stores.postgres.store import PostgresStore
from bench import pgdb

if TYPE_CHECKING:
    from bench.run import Bench

FILES = 100
FILE_BYTES = 100 * 1024  # 100 x 100 KiB = 10 MiB, 10 folders of 10
ROUNDS = 40
TARGET_MS = 50.0
SESSION = "bench-checkpoint"


def _workspace(root: Path) -> None:
    for i in range(FILES):
        folder = root / f"dir{i // 10}"
        folder.mkdir(exist_ok=True)
        (folder / f"file{i}.bin").write_bytes(os.urandom(FILE_BYTES))


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def phase_checkpoint(bench: Bench | None = None) -> dict[str, Any]:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    async with pgdb.scratch_database() as dsn:
        store = PostgresStore(StoreConfig(backend="postgres", dsn=dsn), dsn, "127.0.0.1", 0)
        await store.start()
        try:
            await store.session_opened(SESSION, {"owner": "token:bench"})
            sync = WorkspaceSync(store, 0, Metrics())
            with tempfile.TemporaryDirectory() as tmp:
                root = Path(tmp) / "workspace"
                root.mkdir()
                _workspace(root)
                started = time.perf_counter()
                await sync.checkpoint(SESSION, str(root))
                first_ms = (time.perf_counter() - started) * 1000
                times: list[float] = []
                for i in range(ROUNDS):
                    changed = root / f"dir{i % 10}" / f"file{i % FILES}.bin"
                    changed.write_bytes(os.urandom(FILE_BYTES))
                    started = time.perf_counter()
                    await sync.checkpoint(SESSION, str(root))
                    times.append((time.perf_counter() - started) * 1000)
                other = Path(tmp) / "restored"
                started = time.perf_counter()
                await WorkspaceSync(store, 0, Metrics()).restore(SESSION, str(other))
                restore_ms = (time.perf_counter() - started) * 1000
                same = all(
                    (other / p.relative_to(root)).read_bytes() == p.read_bytes()
                    for p in root.rglob("*.bin")
                )
                assert same, "the restored workspace differs from the original"
        finally:
            await store.stop()
    return {
        "files": FILES,
        "workspace_bytes": FILES * FILE_BYTES,
        "rounds": ROUNDS,
        "one_changed_ms_p50": statistics.median(times),
        "one_changed_ms_p95": _percentile(times, 0.95),
        "first_checkpoint_ms": first_ms,
        "restore_ms": restore_ms,
    }


def rows(results: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    c = results.get("checkpoint")
    if not c:
        return []
    mib = c["workspace_bytes"] / 2**20
    return [
        (
            f"checkpoint: {mib:.0f} MiB workspace, one file changed, added to a turn's end p50 / p95",
            f"{c['one_changed_ms_p50']:.1f} / {c['one_changed_ms_p95']:.1f} ms",
            "(not run)",
            f"<= {TARGET_MS:.0f} ms p50",
        ),
        (
            "checkpoint: first (everything) / restore on another host's folder",
            f"{c['first_checkpoint_ms']:.0f} / {c['restore_ms']:.0f} ms",
            "(not run)",
            "",
        ),
    ]
