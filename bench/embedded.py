"""`make bench` for the embedded SQLite store (ours only; DESIGN.md §10): what its file
takes on disk, and the `restart` phase.

  restart  N sessions (default 1,000) with a short turn each, all hibernated, on the
           SQLite store; then SIGTERM, a new daemon process on the same file, and the
           first stream served by it (a client resuming with Last-Event-ID). Reported:
           the old process's exit, the new one's start (healthy), the first stream's first
           event, the total; the file's size per session and per 1000 events.

The delivery rate and commit latency against the memory and Postgres stores are in the
`durable` phase (bench/run.py), which runs all three side by side.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp

from bench.hibernation import (
    CREATE_WAVE,
    SHORT_TURN,
    create,
    fast_launcher,
    turns_on,
    wait_all_hibernated,
)
from bench.servers import Ours

if TYPE_CHECKING:
    from bench.run import Bench


def log(*parts: Any) -> None:
    print(*parts, flush=True)


def sqlite_storage(path: Path) -> dict[str, Any]:
    """What a (closed, checkpointed) store file holds, and its size per event and session."""
    conn = sqlite3.connect(path)
    try:
        sizes = dict(conn.execute("SELECT name, sum(pgsize) FROM dbstat GROUP BY name").fetchall())
        events = conn.execute("SELECT count(*) FROM awk_events").fetchone()[0]
        sessions = conn.execute("SELECT count(*) FROM awk_sessions").fetchone()[0]
        entries = conn.execute("SELECT count(*) FROM awk_transcript_entries").fetchone()[0]
        data_mean = conn.execute("SELECT coalesce(avg(length(data)), 0) FROM awk_events").fetchone()[0]
    finally:
        conn.close()
    file_bytes = sum(p.stat().st_size for p in path.parent.glob(path.name + "*") if p.is_file())
    events_bytes = sizes.get("awk_events", 0)
    transcript_bytes = sum(v for k, v in sizes.items() if k.startswith("awk_transcript"))
    return {
        "file_bytes": file_bytes, "events": events, "sessions": sessions,
        "transcript_entries": entries, "data_bytes_mean": data_mean,
        "events_bytes": events_bytes, "transcript_bytes": transcript_bytes,
        "events_kib_per_1000": events_bytes / 1024 / events * 1000 if events else None,
        "kib_per_session": file_bytes / 1024 / sessions if sessions else None,
    }


def describe_storage(st: dict[str, Any]) -> str:
    per_1000 = st["events_kib_per_1000"]
    per_session = st["kib_per_session"]
    return (f"storage: file {st['file_bytes'] / 1024:,.0f} KiB for {st['sessions']:,} sessions and"
            f" {st['events']:,} events ({st['data_bytes_mean']:.0f} bytes of JSON each): events"
            f" {per_1000 or 0:.0f} KiB per 1000; {per_session or 0:.1f} KiB per session all told;"
            f" transcripts {st['transcript_bytes'] / 1024:,.0f} KiB ({st['transcript_entries']:,} entries)")


async def phase_restart(bench: Bench) -> dict[str, Any]:
    a = bench.args
    n = a.restart_sessions
    log(f"\n== restart (ours only, SQLite store): {n} hibernated sessions; SIGTERM, a new process on the"
        " same file, the first stream it serves")
    out: dict[str, Any] = bench.results.setdefault("restart", {"sessions": n})
    path = bench.tmp / "restart" / "sessions.db"

    def server(label: str) -> Ours:
        ours = Ours(bench.tmp, label, max_sessions=n + 10, sqlite_path=path,
                    sessions={"max_live_agents": 50, "hibernate_after_s": 1.0},
                    agent={"cli_path": str(fast_launcher(bench.tmp)),
                           "env": {"CLAUDE_CONFIG_DIR": str(bench.tmp / "restart-claude-config")}})
        (ours.default_cwd / "scenario.json").write_text(json.dumps(SHORT_TURN))
        return ours

    old = await bench.start(server("ours-restart-old"))
    new: Ours | None = None
    try:
        created: list[str] = []
        while len(created) < n:
            wave = [await create(old) for _ in range(min(CREATE_WAVE, n - len(created)))]
            failed = [r for r in await turns_on(bench, old, dict.fromkeys(wave, 0)) if not r["ok"]]
            if failed:
                raise RuntimeError(f"set-up turns failed: {failed[:2]}")
            created += wave
        now = await wait_all_hibernated(old, n, 120)
        _, listing = await old.call("GET", "/sessions", timeout=60)
        last = {s["session_id"]: s["last_seq"] for s in listing["sessions"]}
        probe = created[len(created) // 2]
        log(f"  {n} sessions created, {now['hibernated_sessions']} hibernated")

        assert old.proc is not None
        t0 = time.monotonic()
        old.proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(old.proc.wait, 60)
        out["stop_s"] = time.monotonic() - t0
        out["old_exit_code"] = code
        new = server("ours-restart-new")
        await bench.start(new)
        out["start_s"] = time.monotonic() - t0 - out["stop_s"]
        async with aiohttp.ClientSession() as http, http.get(
            f"http://{new.host}:{new.port}/sessions/{probe}/stream",
            headers={"Last-Event-ID": str(last[probe] - 1)},
        ) as resp:
            resp.raise_for_status()
            async for line in resp.content:
                if line.startswith(b"id: "):
                    first_id = int(line[4:])
                    break
        out["first_stream_s"] = time.monotonic() - t0 - out["stop_s"] - out["start_s"]
        out["total_s"] = time.monotonic() - t0
        out["first_id_ok"] = first_id == last[probe]
        _, listing = await new.call("GET", "/sessions", timeout=60)
        out["restored"] = len(listing["sessions"])
        out["restored_hibernated"] = sum(1 for s in listing["sessions"] if s["state"] == "hibernated")
        log(f"  restart: old process exited (code {code}) in {out['stop_s']:.2f} s, new one healthy in"
            f" {out['start_s']:.2f} s, first stream's first event {out['first_stream_s'] * 1000:.0f} ms later:"
            f" {out['total_s']:.2f} s in all (target < 5 s); {out['restored']} sessions restored"
            f" ({out['restored_hibernated']} hibernated), resumed at the right id: {out['first_id_ok']}")
    finally:
        out["stops"] = {s.label: await bench.stop(s) for s in (old, new) if s is not None}
    out["storage"] = sqlite_storage(path)
    log("  " + describe_storage(out["storage"]))
    return out


def rows(results: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    r = results.get("restart") or {}
    if "total_s" not in r:
        return []
    st = r["storage"]
    return [
        (f"restart, SQLite store, {r['sessions']} hibernated sessions: SIGTERM -> first stream (s)",
         f"{r['total_s']:.2f} (exit {r['stop_s']:.2f}, start {r['start_s']:.2f})", "", ""),
        ("  sessions restored / resumed at the right id", f"{r['restored']} / {r['first_id_ok']}", "", ""),
        ("  file per session, all told / events per 1000 (KiB)",
         f"{st['kib_per_session']:.1f} / {st['events_kib_per_1000']:.0f}", "", ""),
    ]
