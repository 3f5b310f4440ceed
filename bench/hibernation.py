"""`make bench` phases for hibernation (ours only; DESIGN.md §8).

  hibernate  N sessions (default 10,000) on this host with the scripted CLI and
             `max_live_agents = 50`: each is created and given a short turn (the cap makes
             the least recently used idle CLI hibernate as creation goes on); once all are
             hibernated, a turn on 1,000 chosen at random, 100 at a time (twice the cap, so
             wakes also wait in line). Reported: errors, events lost or duplicated (each
             turn is read by a subscriber resuming from the session's last event id), the
             wake-turn latency, and the daemon's RSS per hibernated session. Then the same
             at a smaller count with the Postgres store, which drops a hibernated
             session's ring.
  wake       the SDK's real bundled CLI with the stand-in model: sessions with a 20-turn
             conversation. From the POST to the first streamed model output of that turn,
             for a hibernated session (a wake), for the same kind of message to a live one,
             and a cold CLI start (POST /sessions), measured side by side; and the CLI
             memory that hibernating an idle session frees.

The scripted CLI is started as `python -S scripted_cli.py` here (a two-line launcher), which
skips the interpreter's site setup: 10,000 CLI starts is what this phase spends most of
its time on, and the stand-in is not what is measured.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import json
import random
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp

from bench import pgdb
from bench.servers import SCRIPTED_CLI, Ours, Server

if TYPE_CHECKING:
    from bench.run import Bench

LIVE_CAP = 50
SHORT_TURN = {"turns": [{"steps": [{"text": "done, nothing else to do"}]}], "then": "repeat_last"}
CREATE_WAVE = 25  # sessions created (and given their turn) together
WAKE_WAVE = 100  # woken together: twice the cap
HIBERNATE_AFTER_S = 1.0
REAL_HIBERNATE_AFTER_S = 3.0  # long enough for a live sample right after each wake
REAL_TURNS = 20


def log(*parts: Any) -> None:
    print(*parts, flush=True)


def percentile(values: list[float], q: float) -> float | None:
    from bench.run import percentile as p

    return p(values, q)


def fast_launcher(tmp: Path) -> Path:
    """The scripted CLI as one file run by the system's python3 without site packages:
    it starts faster, and a sandbox (which sees the CLI's file and /usr) can run it."""
    path = tmp / "scripted-cli"
    script = SCRIPTED_CLI.read_text().split("\n", 1)[1]  # its own shebang line replaced
    path.write_text("#!/usr/bin/python3 -S\n" + script)
    path.chmod(0o755)
    return path


async def counts(server: Server) -> dict[str, Any]:
    status, body = await server.call("GET", "/healthz", timeout=30)
    if status != 200:
        raise RuntimeError(f"/healthz -> {status}")
    return body  # type: ignore[no-any-return]


async def wait_all_hibernated(server: Server, n: int, timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        now = await counts(server)
        if now["hibernated_sessions"] >= n or time.monotonic() > deadline:
            return now
        await asyncio.sleep(0.5)


def turn_ok(sub: dict[str, Any]) -> bool:
    return sub.get("result_id") is not None and not sub.get("missing") and not sub.get("dups") \
        and not sub.get("errors")


async def turns_on(bench: Bench, server: Server, cursors: dict[str, int]) -> list[dict[str, Any]]:
    """One turn on each session, all at once, each read by a subscriber resuming from the
    session's last event id; per session: ok, events, POST -> result latency."""
    sids = list(cursors)
    subs = [{"path": f"/sessions/{s}/stream", "last_event_id": str(cursors[s]), "stop": "result"}
            for s in sids]
    job = bench.pool.job(server.host, server.port, subs, 120.0, connect_timeout_s=60)
    await job.ready()
    t0 = time.monotonic()
    job.mark_t0(t0)
    posted: dict[str, float] = {}

    async def say(sid: str) -> int:
        posted[sid] = time.monotonic()
        return await server.say(sid, timeout=120)

    codes = await asyncio.gather(*(say(s) for s in sids), return_exceptions=True)
    out = []
    for sid, code, sub in zip(sids, codes, await job.results(), strict=True):
        ok = code == 204 and turn_ok(sub)
        out.append({
            "sid": sid, "ok": ok, "post": code if isinstance(code, int) else repr(code),
            "missing": sub.get("missing", 0), "dups": sub.get("dups", 0), "errors": sub.get("errors", []),
            "result_id": sub.get("result_id"), "stopped": f"{sub.get('reason')} {sub.get('status')}",
            "ms": (sub["result_t"] - posted[sid]) * 1000 if sub.get("result_t") else None,
        })
    return out


async def turns_in_waves(bench: Bench, server: Server, cursors: dict[str, int]) -> dict[str, Any]:
    """A turn on each session, WAKE_WAVE at a time: how many, ok, lost or repeated, errors,
    the wall time and POST -> result p50/p99."""
    woken: list[dict[str, Any]] = []
    t = time.monotonic()
    sids = list(cursors)
    for start in range(0, len(sids), WAKE_WAVE):
        woken += await turns_on(bench, server, {s: cursors[s] for s in sids[start:start + WAKE_WAVE]})
    ms = [w["ms"] for w in woken if w["ms"] is not None]
    return {
        "wake_s": time.monotonic() - t, "woken": len(woken), "wake_ok": sum(w["ok"] for w in woken),
        "wake_lost": sum(w["missing"] + w["dups"] for w in woken),
        "wake_errors": sorted({str(e)[:200] for w in woken for e in w["errors"]})[:5],
        # Why the others were not ok: the POST's answer, and whether a `result` came.
        "wake_not_ok": dict(collections.Counter(
            f"POST {w['post']}, result {'seen' if w['result_id'] is not None else 'not seen'},"
            f" stream stopped: {w['stopped']}"
            for w in woken if not w["ok"])),
        "wake_not_ok_ids": [w["sid"] for w in woken if not w["ok"]][:10],
        "wake_turn_p50_ms": percentile(ms, 50), "wake_turn_p99_ms": percentile(ms, 99),
    }


def not_ok_note(out: dict[str, Any]) -> str:
    """For a log line: why turns were not ok, if any were not."""
    return f"; not ok: {out['wake_not_ok']}" if out["wake_not_ok"] else ""


async def hold_sessions(bench: Bench, label: str, n: int, store_dsn: str | None) -> dict[str, Any]:
    a = bench.args
    server = Ours(bench.tmp, label, max_sessions=n + 10, store_dsn=store_dsn,
                  sessions={"max_live_agents": LIVE_CAP, "hibernate_after_s": HIBERNATE_AFTER_S},
                  agent={"cli_path": str(fast_launcher(bench.tmp)),
                         "env": {"CLAUDE_CONFIG_DIR": str(bench.tmp / f"{label}-claude-config")}})
    # Every session works in the default cwd, so one scenario serves them all.
    (server.default_cwd / "scenario.json").write_text(json.dumps(SHORT_TURN))
    await bench.start(server)
    out: dict[str, Any] = {"sessions": n, "store": server.store, "max_live_agents": LIVE_CAP}
    try:
        await asyncio.sleep(1)
        out["base_rss_kib"] = server.rss_kib()
        created: list[str] = []
        cursors: dict[str, int] = {}
        create_failed = turn_failed = lost = 0
        t = time.monotonic()
        while len(created) + create_failed < n:
            wave = min(CREATE_WAVE, n - len(created) - create_failed)
            made = await asyncio.gather(*(create(server) for _ in range(wave)), return_exceptions=True)
            ok = [s for s in made if isinstance(s, str)]
            create_failed += wave - len(ok)
            created += ok
            for result in await turns_on(bench, server, dict.fromkeys(ok, 0)):
                turn_failed += not result["ok"]
                lost += result["missing"] + result["dups"]
                cursors[result["sid"]] = result["result_id"] or 0
            if len(created) % 1000 < CREATE_WAVE:
                log(f"  {label}: {len(created)} created, {server.rss_kib() / 1024:.0f} MiB,"
                    f" {(await counts(server))['live_agents']} CLIs live")
        out["create_s"] = time.monotonic() - t
        out.update(create_failed=create_failed, create_turn_failed=turn_failed, create_lost=lost)
        now = await wait_all_hibernated(server, len(created), 120)
        await asyncio.sleep(2)
        out["all_hibernated"] = now
        out["rss_kib"] = server.rss_kib()
        out["cli_processes"] = len(server.cli_pids())
        out["per_hibernated_session_kib"] = (out["rss_kib"] - out["base_rss_kib"]) / max(1, len(created))
        log(f"  {label}: {len(created)} sessions in {out['create_s']:.0f} s (failed {create_failed},"
            f" turns failed {turn_failed}, events lost or repeated {lost}); hibernated"
            f" {now['hibernated_sessions']}, CLIs {out['cli_processes']}; daemon {out['rss_kib'] / 1024:.0f} MiB,"
            f" {out['per_hibernated_session_kib']:.1f} KiB per hibernated session")

        # The last event id of each session now includes its `hibernated` state event.
        _, listing = await server.call("GET", "/sessions", timeout=120)
        last = {s["session_id"]: s["last_seq"] for s in listing["sessions"]}
        chosen = random.Random(7).sample(created, min(a.wake_sessions, len(created)))
        out.update(await turns_in_waves(bench, server, {s: last[s] for s in chosen}))
        log(f"  {label}: woke {out['woken']} ({WAKE_WAVE} at a time) in {out['wake_s']:.1f} s: ok {out['wake_ok']},"
            f" events lost or repeated {out['wake_lost']}; POST -> result p50 {out['wake_turn_p50_ms']:.0f} ms,"
            f" p99 {out['wake_turn_p99_ms']:.0f} ms"
            + not_ok_note(out))
    finally:
        out["stop"] = await bench.stop(server)
    return out


async def create(server: Server) -> str:
    status, body = await server.call("POST", "/sessions", {}, timeout=120)
    if status != 200:
        raise RuntimeError(f"create -> {status} {str(body)[:200]}")
    return str(body["session_id"])


async def phase_hibernate(bench: Bench) -> dict[str, Any]:
    a = bench.args
    log(f"\n== hibernate (ours only): {a.hibernate_sessions} sessions, max_live_agents {LIVE_CAP}, a short"
        f" turn each, all hibernated, then a turn on {a.wake_sessions} at random; the same with Postgres"
        f" at {a.hibernate_pg_sessions}")
    out: dict[str, Any] = bench.results.setdefault("hibernate", {})
    out["memory"] = await hold_sessions(bench, "ours-hibernate-memory", a.hibernate_sessions, None)
    async with pgdb.scratch_database() as dsn:
        out["postgres"] = await hold_sessions(bench, "ours-hibernate-postgres", a.hibernate_pg_sessions, dsn)
    return out


# --- wake latency and memory, real CLI ------------------------------------------------------


async def first_output(http: aiohttp.ClientSession, base: str, sid: str, after: int,
                       send: Any, expect_wake: bool | None = None) -> tuple[float, int]:
    """Open the stream after `after`, call `send()`, return the seconds from the send to the
    turn's first streamed model output, and the id of its `result`. `expect_wake`: check
    that the turn did (or did not) wake the session."""
    async with http.get(f"{base}/sessions/{sid}/stream", headers={"Last-Event-ID": str(after)}) as resp:
        resp.raise_for_status()
        t0 = time.monotonic()
        await send()
        first: float | None = None
        event = ""
        ident = 0
        woke = False
        async for raw in resp.content:
            line = raw.decode().rstrip("\n")
            if line.startswith("id: "):
                ident = int(line[4:])
            elif line.startswith("event: "):
                event = line[7:]
                if first is None and event in ("message_delta", "message_complete"):
                    first = time.monotonic() - t0
                if event == "result":
                    if first is None or (expect_wake is not None and woke != expect_wake):
                        raise RuntimeError(f"turn {ident}: output {first}, woke {woke}")
                    return first, ident
            elif line.startswith("data: ") and event == "error":
                raise RuntimeError(f"error event: {line[6:200]}")
            elif line == 'data: {"state":"waking"}':
                woke = True
    raise RuntimeError("the stream ended before the turn's result")


async def phase_wake(bench: Bench) -> dict[str, Any]:
    from tests.standin.fake_model import run_fake_model
    from tests.standin.fixtures import offline_cli_env

    a = bench.args
    n, rounds = a.wake_real_sessions, a.wake_real_rounds
    log(f"\n== wake (ours only, real CLI + stand-in model): {n} sessions with a {REAL_TURNS}-turn conversation;"
        f" {rounds} rounds of: a message to each session hibernated, then at once another to it live; and"
        f" {n} cold CLI starts")
    out: dict[str, Any] = bench.results.setdefault("wake", {})
    config_dir = Path(tempfile.mkdtemp(prefix="claude-config-", dir=bench.tmp))
    async with run_fake_model() as model_url:
        server = Ours(bench.tmp, "ours-wake", sessions={"hibernate_after_s": REAL_HIBERNATE_AFTER_S},
                      agent={"cli_path": "", "env": offline_cli_env(model_url, config_dir)})
        await bench.start(server)
        base = f"http://{server.host}:{server.port}"
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as http:
                cold: list[float] = []
                sids: list[str] = []
                for _ in range(n):
                    t = time.monotonic()
                    sids.append(await create(server))
                    cold.append((time.monotonic() - t) * 1000)
                cursors = dict.fromkeys(sids, 1)
                for sid in sids:  # one conversation at a time, so none hibernates midway
                    for i in range(REAL_TURNS):
                        _, cursors[sid] = await first_output(
                            http, base, sid, cursors[sid], functools.partial(say, server, sid, f"turn {i}"))
                out["daemon_rss_live_kib"] = server.rss_kib()
                clis, cli_kib = server.cli_rss_kib()
                out.update(live_idle_clis=clis, live_idle_cli_rss_kib=cli_kib,
                           cli_rss_per_session_kib=cli_kib / max(1, clis), cli_pss_kib=server.cli_pss_kib())
                live: list[float] = []
                wake: list[float] = []
                for r in range(rounds):
                    await wait_state(server, sids, "hibernated")
                    if r == 0:
                        out["clis_when_hibernated"] = len(server.cli_pids())
                        out["daemon_rss_hibernated_kib"] = server.rss_kib()
                    for sid in sids:  # woken, then at once the same again to the live CLI
                        s, cursors[sid] = await first_output(
                            http, base, sid, cursors[sid], functools.partial(say, server, sid, f"wake {r}"),
                            expect_wake=True)
                        wake.append(s * 1000)
                        s, cursors[sid] = await first_output(
                            http, base, sid, cursors[sid], functools.partial(say, server, sid, f"live {r}"),
                            expect_wake=False)
                        live.append(s * 1000)
            for name, xs in (("cold", cold), ("live", live), ("wake", wake)):
                out[f"{name}_ms"] = xs
                out[f"{name}_p50_ms"], out[f"{name}_p99_ms"] = percentile(xs, 50), percentile(xs, 99)
            for q, limit in (("p50", 1.5), ("p99", 2.0)):
                budget = out[f"live_{q}_ms"] + out[f"cold_{q}_ms"]
                out[f"wake_{q}_ratio"] = out[f"wake_{q}_ms"] / budget
                out[f"wake_{q}_target"] = limit
            log(f"  cold CLI start (POST /sessions): p50 {out['cold_p50_ms']:.0f} ms, p99 {out['cold_p99_ms']:.0f} ms")
            log(f"  live session, POST -> first output: p50 {out['live_p50_ms']:.0f} ms, p99 {out['live_p99_ms']:.0f} ms")
            log(f"  hibernated (wake), POST -> first output: p50 {out['wake_p50_ms']:.0f} ms,"
                f" p99 {out['wake_p99_ms']:.0f} ms: {out['wake_p50_ratio']:.2f}x and {out['wake_p99_ratio']:.2f}x"
                f" of live + cold (targets <= 1.5x, <= 2x)")
            log(f"  memory: {clis} idle live sessions' CLIs {cli_kib / 1024:.0f} MiB RSS"
                f" ({out['cli_rss_per_session_kib'] / 1024:.0f} MiB each, PSS {out['cli_pss_kib'] / 1024:.0f} MiB in all);"
                f" hibernated: {out['clis_when_hibernated']} CLI processes; daemon {out['daemon_rss_live_kib'] / 1024:.0f}"
                f" -> {out['daemon_rss_hibernated_kib'] / 1024:.0f} MiB")
        finally:
            out["stop"] = await bench.stop(server)
    return out


async def say(server: Server, sid: str, text: str) -> None:
    status = await server.say(sid, text, timeout=60)
    if status != 204:
        raise RuntimeError(f"input -> {status}")


async def wait_state(server: Server, sids: list[str], state: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    for sid in sids:
        while True:
            status, body = await server.call("GET", f"/sessions/{sid}")
            if status == 200 and body["state"] == state:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"session {sid} is {body.get('state')}, not {state}")
            await asyncio.sleep(0.1)


def rows(results: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """The summary table's rows for these phases."""
    out: list[tuple[str, str, str, str]] = []
    hib = results.get("hibernate") or {}
    for store in ("memory", "postgres"):
        h = hib.get(store)
        if not h or "per_hibernated_session_kib" not in h:
            continue
        out.append((f"hibernate ({store} store): {h['sessions']} sessions held, max_live_agents {LIVE_CAP}",
                    f"{h['sessions'] - h['create_failed']} created, {h['all_hibernated']['hibernated_sessions']}"
                    f" hibernated, {h['cli_processes']} CLIs", "", ""))
        out.append(("  daemon RSS / per hibernated session",
                    f"{h['rss_kib'] / 1024:.0f} MiB / {h['per_hibernated_session_kib']:.1f} KiB", "", ""))
        if "woken" in h:
            out.append((f"  turn on {h['woken']} random ones, {WAKE_WAVE} at a time: ok / lost or repeated events",
                        f"{h['wake_ok']} / {h['wake_lost']}", "", ""))
            out.append(("  POST -> result of a woken turn, p50 / p99 (ms)",
                        f"{h['wake_turn_p50_ms']:.0f} / {h['wake_turn_p99_ms']:.0f}", "", ""))
    w = results.get("wake") or {}
    if "wake_p50_ms" in w:
        for q in ("p50", "p99"):
            out.append((f"real CLI, POST -> first output {q}: wake / live / cold start (ms)",
                        f"{w[f'wake_{q}_ms']:.0f} / {w[f'live_{q}_ms']:.0f} / {w[f'cold_{q}_ms']:.0f}",
                        "", f"{w[f'wake_{q}_ratio']:.2f}x of live+cold"))
        out.append(("real CLI RSS freed per hibernated session (MiB)",
                    f"{w['cli_rss_per_session_kib'] / 1024:.0f}", "", ""))
    return out

