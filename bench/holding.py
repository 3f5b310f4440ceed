"""`make bench` phase `hold` (ours only): 100,000 sessions held on one host.

  hold  The default SQLite store, the scripted CLI, `max_live_agents = 50`, hibernation and
        shelving after a second of quiet. TEMPLATES sessions (default 1,000, quick 200) are
        created through the API, each with a short turn (the creation rate), and are
        shelved. The daemon stops (SIGTERM); the store file then gets copies of them up to
        HELD sessions (default 100,000, quick 5,000), each with its own ids, events and
        transcript (the way days of traffic would leave them; creating 100,000 CLIs here
        would take an hour). The daemon starts again on the file: how long until healthy,
        and its RSS per held session against the same daemon with none. Then a turn on
        WAKES sessions chosen at random (default 1,000, quick 100), 100 at a time, each read
        by a subscriber resuming from the session's last event id: POST -> `result`
        p50/p99, events lost or repeated (target 0), and a clean exit.

Run it alone with `.venv/bin/python -m bench.run --only hold`.
"""

from __future__ import annotations

import asyncio
import json
import random
import sqlite3
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.hibernation import (
    CREATE_WAVE,
    LIVE_CAP,
    SHORT_TURN,
    WAKE_WAVE,
    counts,
    create,
    fast_launcher,
    not_ok_note,
    turns_in_waves,
    turns_on,
)
from bench.sandbox import fmt_ms, log
from bench.servers import Ours

if TYPE_CHECKING:
    from bench.run import Bench

TARGET_KIB = 4.0


async def phase_hold(bench: Bench) -> dict[str, Any]:
    a = bench.args
    held, templates, wakes = a.hold_sessions, a.hold_templates, a.hold_wakes
    log(f"\n== hold (ours only): {held} sessions held on one host (SQLite store), {templates} created"
        f" through the API, the rest copied in the store; a turn on {wakes} at random")
    db = bench.tmp / "hold" / "sessions.db"
    db.parent.mkdir(parents=True, exist_ok=True)
    server = Ours(bench.tmp, "ours-hold", max_sessions=held + 100, sqlite_path=db,
                  sessions={"max_live_agents": LIVE_CAP, "hibernate_after_s": 1.0, "shelve_after_s": 1.0,
                            "idle_timeout_s": 86_400},
                  agent={"cli_path": str(fast_launcher(bench.tmp)), "warm_agents": 0,
                         "env": {"CLAUDE_CONFIG_DIR": str(bench.tmp / "hold-claude-config")}})
    (server.default_cwd / "scenario.json").write_text(json.dumps(SHORT_TURN))
    out: dict[str, Any] = bench.results.setdefault("hold", {"held": held, "templates": templates})
    await bench.start(server)
    try:
        await asyncio.sleep(1)
        out["base_rss_kib"] = server.rss_kib()
        t = time.monotonic()
        made: list[str] = []
        failed = 0
        while len(made) + failed < templates:
            wave = min(CREATE_WAVE, templates - len(made) - failed)
            results = await asyncio.gather(*(create(server) for _ in range(wave)), return_exceptions=True)
            ok = [s for s in results if isinstance(s, str)]
            failed += wave - len(ok)
            turns = await turns_on(bench, server, dict.fromkeys(ok, 0))
            failed += sum(not r["ok"] for r in turns)
            made += ok
        out["create_s"] = time.monotonic() - t
        out["create_failed"] = failed
        deadline = time.monotonic() + 120
        while (now := await counts(server))["shelved_sessions"] < len(made) and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.5)
        out["shelved_before_restart"] = now["shelved_sessions"]
        log(f"  {len(made)} sessions created through the API with a turn each in {out['create_s']:.1f} s"
            f" ({out['create_s'] / max(1, len(made)) * 1000:.1f} ms each), {failed} failed;"
            f" {now['shelved_sessions']} shelved")
        out["first_stop"] = await bench.stop(server)

        t = time.monotonic()
        last_seq = await asyncio.to_thread(copy_sessions, db, held)
        out["copy_s"] = time.monotonic() - t
        log(f"  the store now holds {len(last_seq)} open sessions (copied in {out['copy_s']:.1f} s)")

        t = time.monotonic()
        await bench.start(server)
        out["restart_healthy_s"] = time.monotonic() - t
        await asyncio.sleep(2)
        now = await counts(server)
        out["held_after_restart"] = now["live_sessions"]
        out["shelved_after_restart"] = now["shelved_sessions"]
        out["rss_kib"] = server.rss_kib()
        out["per_session_kib"] = (out["rss_kib"] - out["base_rss_kib"]) / max(1, now["live_sessions"])
        log(f"  restarted with {now['live_sessions']} held ({now['shelved_sessions']} shelved): healthy in"
            f" {out['restart_healthy_s']:.1f} s; daemon {out['rss_kib'] / 1024:.0f} MiB against"
            f" {out['base_rss_kib'] / 1024:.0f} MiB with none: {out['per_session_kib']:.2f} KiB per held session"
            f" (target <= {TARGET_KIB:g})")

        chosen = random.Random(11).sample(sorted(last_seq), min(wakes, len(last_seq)))
        out.update(await turns_in_waves(bench, server, {s: last_seq[s] for s in chosen}))
        log(f"  a turn on {out['woken']} at random ({WAKE_WAVE} at a time) in {out['wake_s']:.1f} s: ok"
            f" {out['wake_ok']}, events lost or repeated {out['wake_lost']}; POST -> result p50"
            f" {fmt_ms(out['wake_turn_p50_ms'])} ms, p99 {fmt_ms(out['wake_turn_p99_ms'])} ms"
            + not_ok_note(out))
    finally:
        out["stop"] = await bench.stop(server)
    return out


def copy_sessions(db: Path, total: int) -> dict[str, int]:
    """Copies of the open sessions in `db` until it holds `total`, each with its own session
    id, Claude session id, events, usage and transcript; returns every open session's
    last event id. Each original is read once (the transcript table has no index by
    Claude session id alone), the copies written in bulk."""
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        originals = conn.execute(
            "SELECT id, spec, sdk_session_id, last_state, last_seq, created_at FROM awk_sessions"
            " WHERE state = 'open'"
        ).fetchall()
        last_seq = {row[0]: row[4] for row in originals}
        events = {o[0]: conn.execute("SELECT seq, name, data FROM awk_events WHERE session_id = ?",
                                     (o[0],)).fetchall() for o in originals}
        usage = {row[0]: row[1:] for row in conn.execute("SELECT * FROM awk_session_usage")}
        transcripts: dict[str, list[tuple[Any, ...]]] = {}
        for tid, project_key, sdk_id, subpath, mtime, summary in conn.execute(
                "SELECT id, project_key, session_id, subpath, mtime, summary FROM awk_transcripts").fetchall():
            entries = conn.execute("SELECT uuid, entry FROM awk_transcript_entries WHERE transcript_id = ?"
                                   " ORDER BY id", (tid,)).fetchall()
            transcripts.setdefault(sdk_id, []).append((project_key, subpath, mtime, summary, entries))
        now = time.time()
        i = 0
        conn.execute("BEGIN")
        while len(last_seq) < total:
            source, spec, sdk_id, last_state, seq, created_at = originals[i % len(originals)]
            i += 1
            new, new_sdk = str(uuid.uuid4()), str(uuid.uuid4())
            conn.execute(
                "INSERT INTO awk_sessions (id, spec, sdk_session_id, state, last_state, last_seq,"
                " created_at, last_active) VALUES (?, ?, ?, 'open', ?, ?, ?, ?)",
                (new, spec.replace(source, new), new_sdk, last_state, seq, created_at, now),
            )
            conn.executemany("INSERT INTO awk_events (session_id, seq, name, data) VALUES (?, ?, ?, ?)",
                             [(new, *row) for row in events[source]])
            if source in usage:
                conn.execute("INSERT INTO awk_session_usage VALUES (?, ?, ?, ?, ?, ?, ?)", (new, *usage[source]))
            for project_key, subpath, mtime, summary, entries in transcripts.get(sdk_id or "", []):
                copied = conn.execute(
                    "INSERT INTO awk_transcripts (project_key, session_id, subpath, mtime, summary)"
                    " VALUES (?, ?, ?, ?, ?)", (project_key, new_sdk, subpath, mtime, summary)).lastrowid
                conn.executemany(
                    "INSERT INTO awk_transcript_entries (transcript_id, uuid, entry) VALUES (?, ?, ?)",
                    [(copied, u, entry.replace(sdk_id, new_sdk)) for u, entry in entries])
            last_seq[new] = seq
            if i % 10_000 == 0:
                conn.execute("COMMIT")
                conn.execute("BEGIN")
        conn.execute("COMMIT")
        return last_seq
    finally:
        conn.close()


def rows(results: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    h = results.get("hold") or {}
    if "per_session_kib" not in h:
        return []
    out = [
        (f"hold: {h.get('held_after_restart', 0):,} sessions held, daemon RAM per session (KiB)",
         f"{h['per_session_kib']:.2f}", "(not run)", f"target <= {TARGET_KIB:g}"),
        (f"  {h['templates']} created through the API with a turn each: ms per session",
         f"{h['create_s'] / max(1, h['templates']) * 1000:.1f}", "", ""),
        ("  restart with them all: healthy after (s)", f"{h['restart_healthy_s']:.1f}", "", ""),
    ]
    if "wake_ok" in h:
        out.append((f"  a turn on {h['woken']} at random: ok / lost or repeated / p50 / p99 (ms)",
                    f"{h['wake_ok']} / {h['wake_lost']} / {fmt_ms(h['wake_turn_p50_ms'])} /"
                    f" {fmt_ms(h['wake_turn_p99_ms'])}", "", ""))
    return out
