"""The SQLite store's writer alone: its CPU per event for commits shaped like the `cost`
phase's at 200 busy sessions, without the daemon, the SDK or any CLI around it.

    .venv/bin/python -m bench.sqlite_writer [--commits 150] [--sessions 200] [--events 5]
                                            [--cache-kib K]

Each commit carries `--events` events and as many transcript entries (random uuids, as the
CLI's are) for each of `--sessions` sessions, through the store's own `_commit` in one
transaction on a connection opened as the daemon's writer opens it (`--cache-kib`: another
page cache than the writer's). Measured: the thread's CPU time (time.thread_time) across
the commits, per event. Repeatable enough to compare two versions of the writer or its
pragmas in one sitting; more commits make a bigger file (at 150 the indexes still fit a
small cache, at 600 they do not).
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from agent_webkitd.stores.sqlite import db
from agent_webkitd.stores.sqlite.store import _commit
from agent_webkitd.stores.writer import Batch

FRAME_TEXT = (
    '{"message_id":"msg_01","message":{"id":"msg_01","role":"assistant",'
    '"content":[{"type":"text","text":"x"}],"model":"m","stop_reason":null}}'
)


class Log:
    """What a Batch needs of an event's log: its session id."""

    def __init__(self, session_id: str) -> None:
        self.session_id = session_id


def entry() -> dict[str, Any]:
    """A transcript entry like the CLI's for an assistant message."""
    return {
        "type": "assistant", "uuid": str(uuid.uuid4()), "parentUuid": None,
        "timestamp": "2026-12-06T02:00:00.000Z", "sessionId": "x",
        "message": {"id": "msg_01", "role": "assistant", "content": [{"type": "text", "text": "x"}]},
    }


def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        conn = db.connect(Path(tmp) / "sessions.db", args.cache_kib or db.WRITER_CACHE_KIB)
        db.migrate(conn)
        logs = [Log(str(uuid.uuid4())) for _ in range(args.sessions)]
        for log in logs:
            conn.execute(
                "INSERT INTO awk_sessions (id, spec, created_at, last_active) VALUES (?, '{}', 0, 0)",
                (log.session_id,),
            )
        seq = 0
        cpu_s = 0.0
        for _ in range(args.commits):
            batch = Batch()
            seq += args.events
            for log in logs:
                for s in range(seq - args.events + 1, seq + 1):
                    batch.events.append((log, s, "message_complete", FRAME_TEXT))  # type: ignore[arg-type]
                key = {"project_key": "p", "session_id": log.session_id}
                batch.transcripts.append((key, [entry() for _ in range(args.events)], None))  # type: ignore[arg-type]
            started = time.thread_time()
            db.transaction(conn, lambda c, b=batch: _commit(c, batch=b, now=time.time()))
            cpu_s += time.thread_time() - started
        conn.close()
    events = args.commits * args.sessions * args.events
    print(f"{cpu_s / events * 1e6:.2f} µs of writer CPU per event ({events:,} events,"
          f" {args.commits} commits, page cache {args.cache_kib or db.WRITER_CACHE_KIB} KiB)")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--commits", type=int, default=150)
    p.add_argument("--sessions", type=int, default=200)
    p.add_argument("--events", type=int, default=5, help="events (and transcript entries) per session per commit")
    p.add_argument("--cache-kib", type=int, help="the writer's page cache (default db.WRITER_CACHE_KIB)")
    main(p.parse_args())
