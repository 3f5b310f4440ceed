"""`make bench` phase `cost` (ours only): the daemon's own CPU per delivered event, next to
the SDK's own CPU per frame, measured in the same run.

  cost  For each N in --cost-sessions (default 1,200):
        - the SDK alone (bench/sdk_alone.py, a subprocess): N bare ClaudeSDKClients on the
          stand-in CLI, each in a cwd with the same scenario.json as the daemon's
          sessions; its own CPU (RUSAGE_SELF: the CLIs excluded) per message received.
          When a durable store is measured, again with the SDK's InMemorySessionStore as
          `session_store` (the transcript mirror that store turns on).
        - per store in --cost-store (default memory,sqlite), a daemon with N sessions of
          that scenario, one raw-socket subscriber each; its utime + stime
          (/proc/<pid>/stat: its CLI processes are not in it) per event the subscribers
          received, and per SDK message (the SDK alone's count per turn); delivered
          events/s (first POST to the last subscriber's `result`); events lost (must be
          0); events per subscriber read (how many events one SSE write carried).
        Both run a 50-event warm-up turn on every session (not counted), then T rounds of
        one K-event turn (K = --cost-events, default 500) on all N together (the daemon's
        N POSTs gathered; each subscriber from the previous `result` to this one's). T is
        the fewest rounds that make --cost-min-events events (default 10,000): N = 1 runs
        20 rounds, since /proc counts CPU in 10 ms ticks.
        With --cost-profile, one more round at the top N under `py-spy record --pid`, in
        the SDK alone and in each daemon (not counted: py-spy takes CPU of its own); the
        collapsed stacks go to bench/results/cost-profile-<sdk|store>-<N>.txt, and the
        top functions by self and by inclusive time, the self time by area (the daemon's
        modules, the SDK, asyncio, aiohttp, json, ...) and by outermost frame to the log.

A turn of K events is K+4 events on the wire (user_message, session_state running, K
message_complete, result, session_state idle after it; a subscriber from the previous
`result` gets the previous idle instead of this turn's) and K+2 SDK messages (K
AssistantMessage, one SystemMessage, the ResultMessage).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import re
import signal
import sys
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.hibernation import fast_launcher
from bench.servers import MARK_ENV, Ours, Server

if TYPE_CHECKING:
    from bench.run import Bench

SDK_ALONE = Path(__file__).resolve().parent / "sdk_alone.py"
CREATE_PARALLEL = 8
TOP_SELF, TOP_INCLUSIVE = 15, 10
PY_SPY_RATE = 200
WARMUP_EVENTS = 50  # the first turn of every session and client: warms the paths, not counted


def log(*parts: Any) -> None:
    print(*parts, flush=True)


def cli_launcher(bench: Bench) -> Path:
    """The stand-in CLI started as `python -S` (bench/hibernation.py): 2 x 200 CLI starts
    are most of this phase's time otherwise. The daemon and the SDK alone both use it."""
    path = bench.tmp / "scripted-cli"
    return path if path.exists() else fast_launcher(bench.tmp)


def cost_scenario(k: int, stream_ms: float = 0.0) -> dict[str, Any]:
    """A short warm-up turn (WARMUP_EVENTS), then every turn K one-block assistant frames
    (bench/run.py's events_scenario after the first turn); with `stream_ms`, every turn one
    text block of K words streamed as deltas that many ms apart, as a model streams tokens."""
    from bench.run import events_scenario

    warm_up = {"steps": [{"events": min(k, WARMUP_EVENTS), "text": "x"}]}
    if stream_ms:
        streamed = {"steps": [{"text": " ".join(["tok"] * k), "delay": stream_ms / 1000}]}
        return {"turns": [warm_up, streamed], "then": "repeat_last"}
    measured = events_scenario(k, "x")
    return {**measured, "turns": [warm_up, *measured["turns"]]}


def rounds_for(n: int, k: int, min_events: int) -> int:
    return max(1, math.ceil(min_events / (n * k)))


async def phase_cost(bench: Bench) -> dict[str, Any]:
    a = bench.args
    k, levels, stores = a.cost_events, a.cost_sessions, a.cost_stores
    log(f"\n== cost (ours only): the daemon's CPU per delivered event vs the SDK alone's CPU per frame;"
        f" N sessions x 1 subscriber, K={k}-event turns started together"
        f"{f' (K text deltas {a.cost_stream_ms:g} ms apart)' if a.cost_stream_ms else ''}; N in {levels}, stores {stores}"
        f"{'; py-spy at N=' + str(max(levels)) if a.cost_profile else ''}")
    out: dict[str, Any] = bench.results.setdefault("cost", {"k": k, "sdk": [], "runs": [], "profiles": []})
    scenario = cost_scenario(k, a.cost_stream_ms)
    for n in levels:
        turns = rounds_for(n, k, a.cost_min_events)
        profile = a.cost_profile and n == max(levels)
        sdk = await sdk_alone(bench, n, turns, scenario, profile=profile)
        out["sdk"].append(sdk)
        log(f"  sdk alone  N={n:<4} {turns:>2} round(s): {sdk['us_per_frame']:6.1f} µs/frame"
            f" ({sdk['cpu_s']:.2f} s CPU, {sdk['frames']:,} frames, {sdk['frames_per_turn']:.0f} per turn),"
            f" {sdk['frames_per_s']:,.0f} frames/s")
        if sdk.get("profile"):
            out["profiles"].append(sdk.pop("profile"))
            log(describe_profile(out["profiles"][-1]))
        mirrored = None
        if any(s != "memory" for s in stores):
            mirrored = await sdk_alone(bench, n, turns, scenario, profile=False, mirror=True)
            out.setdefault("sdk_mirror", []).append(mirrored)
            log(f"  sdk alone, transcript mirror  N={n:<4}: {mirrored['us_per_frame']:6.1f} µs/frame"
                f" ({mirrored['cpu_s']:.2f} s CPU), {mirrored['frames_per_s']:,.0f} frames/s")
        for store in stores:
            run = await daemon_pass(bench, n, store, turns, scenario, profile=profile)
            if mirrored is not None and store != "memory":
                run["sdk_mirror_us_per_frame"] = mirrored["us_per_frame"]
                run["ratio_mirror"] = run["us_per_event"] / mirrored["us_per_frame"]
            run["sdk_us_per_frame"] = sdk["us_per_frame"]
            run["us_per_sdk_frame"] = run["cpu_s"] / (sdk["frames_per_turn"] * n * turns) * 1e6
            run["ratio"] = run["us_per_event"] / sdk["us_per_frame"]
            run["ratio_per_frame"] = run["us_per_sdk_frame"] / sdk["us_per_frame"]
            out["runs"].append(run)
            log(f"  daemon {store:<7} N={n:<4} {turns:>2} round(s): {run['us_per_event']:6.1f} µs/event"
                f" ({run['loop_us_per_event']:.1f} of them the event loop's thread),"
                f" {run['us_per_sdk_frame']:.1f} µs/SDK frame ({run['cpu_s']:.2f} s CPU,"
                f" {run['delivered']:,} events, {run['events_per_turn']:.0f} per turn);"
                f" {run['eps']:,.0f} events/s; lost {run['lost']}; wall {run['wall_s']:.2f} s;"
                f" {run['events_per_read']:.1f} events per subscriber read,"
                f" {run['loop_switches_per_event']:.2f} loop context switches per event;"
                f" {run['ratio']:.2f}x the SDK alone"
                + (f", {run['ratio_mirror']:.2f}x the SDK alone with a mirror" if "ratio_mirror" in run else ""))
            if run.get("profile"):
                out["profiles"].append(run.pop("profile"))
                log(describe_profile(out["profiles"][-1]))
    return out


# --- the SDK alone ------------------------------------------------------------------------


async def sdk_alone(bench: Bench, n: int, turns: int, scenario: dict[str, Any],
                    *, profile: bool, mirror: bool = False) -> dict[str, Any]:
    from bench.run import RESULTS_DIR

    root = bench.tmp / f"cost-sdk-{n}{'-mirror' if mirror else ''}"
    spy_out = RESULTS_DIR / f"cost-profile-sdk-{n}.txt"
    if profile:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        py_spy()  # installed, or say so now
    for i in range(n):
        (root / str(i)).mkdir(parents=True)
        (root / str(i) / "scenario.json").write_text(json.dumps(scenario))
    mark = f"cost-sdk-{n}-{time.monotonic_ns()}"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(SDK_ALONE), "--sessions", str(n), "--turns", str(turns),
        "--cli", str(cli_launcher(bench)), "--dir", str(root),
        *(["--profile", str(spy_out), "--rate", str(PY_SPY_RATE)] if profile else []),
        *(["--mirror"] if mirror else []),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, MARK_ENV: mark}, start_new_session=True,
    )
    try:
        stdout, stderr = await asyncio.wait_for(proc.communicate(), bench.args.cost_timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise RuntimeError(f"sdk_alone N={n} did not finish in {bench.args.cost_timeout:g} s") from None
    if proc.returncode != 0:
        raise RuntimeError(f"sdk_alone N={n} exited {proc.returncode}: {stderr.decode(errors='replace')[-2000:]}")
    result: dict[str, Any] = json.loads(stdout.decode().strip().splitlines()[-1])
    step = scenario["turns"][-1]["steps"][0]
    expected = step.get("events", 1)  # a streamed turn is one message of many deltas
    if result["kinds_per_turn"].get("AssistantMessage") != expected:
        raise RuntimeError(f"sdk_alone N={n}: {result['kinds_per_turn']} per turn, expected {expected} assistant messages")
    if profile:
        result["profile"] = summarize_collapsed(spy_out.read_text())
        result["profile"].update(store="none (the SDK alone)", n=n, path=str(spy_out.relative_to(RESULTS_DIR.parent.parent)))
    return result


# --- the daemon ---------------------------------------------------------------------------


async def daemon_pass(bench: Bench, n: int, store: str, turns: int, scenario: dict[str, Any],
                      *, profile: bool) -> dict[str, Any]:
    from bench.run import cpu_s, gather_limited

    label = f"ours-cost-{store}-{n}"
    sqlite_path = bench.tmp / label / "sessions.db" if store == "sqlite" else None
    ours = await bench.start(Ours(bench.tmp, label, max_sessions=n + 10, sqlite_path=sqlite_path,
                                  agent={"cli_path": str(cli_launcher(bench))}))
    run: dict[str, Any] = {"n": n, "store": store, "turns": turns}
    try:
        t = time.monotonic()
        made = await gather_limited(CREATE_PARALLEL, range(n), lambda _: ours.create(scenario, timeout=120))
        sids = [s for s in made if isinstance(s, str)]
        if len(sids) != n:
            errors = sorted({str(e)[:200] for e in made if not isinstance(e, str)})
            raise RuntimeError(f"{label}: created {len(sids)} of {n} sessions: {errors[:3]}")
        run["create_s"] = time.monotonic() - t
        cursors = dict.fromkeys(sids, 0)
        await turn_on_all(bench, ours, sids, cursors)  # warm-up, not counted
        measured = [await turn_on_all(bench, ours, sids, cursors) for _ in range(turns)]
        run.update(sum_turns(measured))
        run["rounds"] = [{k: v for k, v in m.items() if k != "subs"} for m in measured]
        if profile:
            run["profile"] = await profiled_turn(bench, ours, sids, cursors, store)
        assert ours.proc is not None
        run["cpu_after_s"] = cpu_s(ours.proc.pid)
    finally:
        run["stop"] = await bench.stop(ours)
    return run


async def turn_on_all(bench: Bench, server: Server, sids: list[str], cursors: dict[str, int]) -> dict[str, Any]:
    """One turn on every session together, one subscriber each from the session's previous
    `result`; the daemon's CPU across it. Moves `cursors` on to this turn's results."""
    from bench.run import cpu_s

    subs = [{"path": f"/sessions/{sid}/stream", "last_event_id": str(cursors[sid]), "stop": "result"}
            for sid in sids]
    job = bench.pool.job(server.host, server.port, subs, bench.args.cost_timeout, connect_timeout_s=120)
    ready = await job.ready()
    if ready["failed"]:
        job.abort()
        await job.results()
        raise RuntimeError(f"{server.label}: {ready['failed']} of {len(sids)} subscribers failed to connect")
    assert server.proc is not None
    pid = server.proc.pid
    switches0 = loop_switches(pid)
    cpu0, loop0 = cpu_s(pid), cpu_s(pid, thread=pid)  # the main thread runs the event loop
    t0 = time.monotonic()
    job.mark_t0(t0)
    codes = await asyncio.gather(*(server.say(sid, timeout=60) for sid in sids), return_exceptions=True)
    post_s = time.monotonic() - t0
    if any(c != 204 for c in codes):
        job.abort()
    results = await job.results()
    cpu, loop_cpu = cpu_s(pid) - cpu0, cpu_s(pid, thread=pid) - loop0
    switches = loop_switches(pid) - switches0
    delivered = sum(s.get("count", 0) for s in results)
    expected = lost = no_result = 0
    for sid, s in zip(sids, results, strict=True):
        rid = s.get("result_id")
        if rid is None:
            no_result += 1
            continue
        expected += rid - cursors[sid]
        lost += rid - cursors[sid] - s.get("count", 0)
        cursors[sid] = rid
    ends = [s["result_t"] for s in results if s.get("result_t")]
    return {
        "cpu_s": cpu, "loop_cpu_s": loop_cpu, "client_cpu_s": job.cpu_s, "post_s": post_s,
        "wall_s": (max(ends) - t0) if ends else None,
        "delivered": delivered, "expected": expected, "lost": lost, "no_result": no_result,
        "missing": sum(s.get("missing", 0) for s in results), "dups": sum(s.get("dups", 0) for s in results),
        "post_failed": sum(1 for c in codes if c != 204),
        "reads": sum(s.get("reads", 0) for s in results), "loop_switches": switches,
        "subs": results,
    }


def sum_turns(turns: list[dict[str, Any]]) -> dict[str, Any]:
    cpu = sum(t["cpu_s"] for t in turns)
    delivered = sum(t["delivered"] for t in turns)
    wall = sum(t["wall_s"] or 0.0 for t in turns)
    n = len(turns[0]["subs"])
    return {
        "cpu_s": cpu, "delivered": delivered, "wall_s": wall,
        "us_per_event": cpu / delivered * 1e6 if delivered else float("nan"),
        # The event loop's thread alone; the rest is the store's threads (SQLite writer, reader).
        "loop_us_per_event": sum(t["loop_cpu_s"] for t in turns) / delivered * 1e6 if delivered else float("nan"),
        "eps": delivered / wall if wall else 0.0,
        "events_per_turn": delivered / (n * len(turns)),
        "lost": sum(t["lost"] for t in turns),
        "missing": sum(t["missing"] for t in turns),
        "no_result": sum(t["no_result"] for t in turns),
        "post_failed": sum(t["post_failed"] for t in turns),
        "client_cpu_s": sum(t["client_cpu_s"] for t in turns),
        "events_per_read": delivered / max(1, sum(t["reads"] for t in turns)),
        "loop_switches_per_event": sum(t["loop_switches"] for t in turns) / max(1, delivered),
    }


def loop_switches(pid: int) -> int:
    """Context switches of the daemon's main thread (its event loop): roughly how often
    the loop went to sleep and was woken."""
    total = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:")):
            total += int(line.split()[1])
    return total


# --- py-spy -------------------------------------------------------------------------------


def py_spy() -> str:
    path = Path(sys.executable).parent / "py-spy"
    if not path.exists():
        raise RuntimeError("py-spy is not installed in this venv: `make install` (it is a dev extra)")
    return str(path)


async def profiled_turn(bench: Bench, server: Server, sids: list[str], cursors: dict[str, int],
                        store: str) -> dict[str, Any]:
    from bench.run import RESULTS_DIR

    assert server.proc is not None
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"cost-profile-{store}-{len(sids)}.txt"
    spy = await asyncio.create_subprocess_exec(
        py_spy(), "record", "--pid", str(server.proc.pid), "--rate", str(PY_SPY_RATE), "--nonblocking",
        "--format", "raw", "--nolineno", "-o", str(path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    try:
        await asyncio.sleep(1.0)  # attached and sampling
        if spy.returncode is not None:
            raise RuntimeError(f"py-spy exited at once: {(await spy.stdout.read()).decode()[-500:]}")  # type: ignore[union-attr]
        turn = await turn_on_all(bench, server, sids, cursors)
    finally:
        if spy.returncode is None:
            spy.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
        try:
            output, _ = await asyncio.wait_for(spy.communicate(), 30)
        except TimeoutError:
            spy.kill()
            output = b""
    summary = summarize_collapsed(path.read_text())
    summary.update(store=store, n=len(sids), path=str(path.relative_to(RESULTS_DIR.parent.parent)),
                   turn_cpu_s=turn["cpu_s"], turn_delivered=turn["delivered"], turn_lost=turn["lost"],
                   py_spy_output=output.decode(errors="replace")[-400:])
    return summary


# Frames on (nearly) every stack, left out of the inclusive list: the interpreter's and the
# event loop's own (their time is in the self list, under asyncio).
PLUMBING = ("(<frozen runpy>)", "(asyncio/", "(threading.py)", "(agent_webkitd/__main__.py)",
            "main (agent_webkitd/cli.py)", "(concurrent/futures/thread.py)", "<module> (bench/sdk_alone.py)")

FRAME_RE = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*)\)$")

# Self time is put in the first area whose pattern its leaf frame's file matches.
AREAS = (
    ("daemon: bridge", "agent_webkitd/sessions/bridge.py"),
    ("daemon: event log", "agent_webkitd/sessions/eventlog.py"),
    ("daemon: SSE", "agent_webkitd/http/sse.py"),
    ("daemon: session", "agent_webkitd/sessions/"),
    ("daemon: agent", "agent_webkitd/agents/"),
    ("daemon: sqlite", "agent_webkitd/stores/sqlite/"),
    ("daemon: store", "agent_webkitd/stores/"),
    ("daemon: metrics", "agent_webkitd/metrics.py"),
    ("daemon: logging", "agent_webkitd/logs.py"),
    ("daemon: other", "agent_webkitd/"),
    ("SDK", "claude_agent_sdk/"),
    ("anyio", "anyio/"),
    ("aiohttp", "aiohttp/"),
    ("metrics lib", "aioprometheus/"),
    ("structlog", "structlog/"),
    ("json", "json/"),
    ("asyncio", "asyncio/"),
)


def area_of(file: str) -> str:
    for name, pattern in AREAS:
        if pattern in file:
            return name
    return f"other ({file.rsplit('/', 1)[-1]})" if file else "other"


def summarize_collapsed(text: str) -> dict[str, Any]:
    """py-spy's raw output (`frame;frame;... count` per line, root first) summed: the
    samples by their leaf function (self), by every function on the stack (inclusive,
    counted once per sample), and the self samples by area."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    areas: Counter[str] = Counter()
    entries: Counter[str] = Counter()
    total = 0
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        total += n
        own[frames[-1]] += n
        for frame in set(frames):
            if not any(p in frame for p in PLUMBING):
                inclusive[frame] += n
        m = FRAME_RE.match(frames[-1])
        areas[area_of(m.group("file") if m else "")] += n
        entries[next((f for f in frames if not any(p in f for p in PLUMBING)), "(the event loop itself)")] += n

    def top(counter: Counter[str], k: int) -> list[dict[str, Any]]:
        return [{"function": f, "samples": c, "pct": 100 * c / total} for f, c in counter.most_common(k)]

    return {"samples": total, "top_self": top(own, TOP_SELF), "top_inclusive": top(inclusive, TOP_INCLUSIVE),
            "by_area": top(areas, len(areas)), "by_entry": top(entries, TOP_INCLUSIVE)}


def describe_profile(p: dict[str, Any]) -> str:
    who = "the SDK alone" if p["store"].startswith("none") else f"the daemon, {p['store']} store"
    lines = [f"  -- where the time goes: {who}, N={p['n']} (py-spy, {p['samples']:,} samples"
             f" at {PY_SPY_RATE}/s while running; {p['path']}):"]
    lines.append("     self time by area: " + ", ".join(f"{a['function']} {a['pct']:.0f}%" for a in p["by_area"]
                                                     if a["pct"] >= 1))
    lines.append("     by the outermost frame above the event loop (a task, a callback; stacks through"
                 " C calls are cut there): " + ", ".join(f"{e['function']} {e['pct']:.0f}%"
                                                         for e in p.get("by_entry", [])[:6]))
    lines.append("     top self time:")
    lines += [f"       {f['pct']:5.1f}%  {f['function']}" for f in p["top_self"]]
    lines.append("     top inclusive time:")
    lines += [f"       {f['pct']:5.1f}%  {f['function']}" for f in p["top_inclusive"]]
    return "\n".join(lines)


# --- the table ----------------------------------------------------------------------------


def rows(results: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    cost = results.get("cost") or {}
    out: list[tuple[str, str, str, str]] = []
    sdk = {s["sessions"]: s for s in cost.get("sdk", [])}
    for run in cost.get("runs", []):
        n, s = run["n"], sdk.get(run["n"])
        if s is None or "us_per_event" not in run:
            continue
        out.append((f"cost: {n} session(s) x 1 sub, K={cost['k']}, {run['store']} store: daemon µs/event"
                    f" / SDK-alone µs/frame",
                    f"{run['us_per_event']:.1f} / {s['us_per_frame']:.1f} ({run['ratio']:.2f}x)", "(not run)", ""))
        if "ratio_mirror" in run:
            out.append(("  SDK alone with a transcript mirror (InMemorySessionStore): µs/frame",
                        f"{run['sdk_mirror_us_per_frame']:.1f} ({run['ratio_mirror']:.2f}x)", "", ""))
        out.append(("  daemon µs per SDK frame; delivered events/s; events lost; events per SSE read",
                    f"{run['us_per_sdk_frame']:.1f}; {run['eps']:,.0f}; {run['lost']}; {run['events_per_read']:.1f}",
                    "", ""))
    with contextlib.suppress(KeyError, IndexError):
        for p in cost.get("profiles", []):
            areas = ", ".join(f"{a['function']} {a['pct']:.0f}%" for a in p["by_area"][:4])
            who = "the SDK alone" if p["store"].startswith("none") else f"daemon, {p['store']}"
            out.append((f"  profile, {who}, N={p['n']}: self time by area (top 4)", areas, "", ""))
    return out
