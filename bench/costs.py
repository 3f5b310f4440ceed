"""`make bench` phase `cost` (ours only): the daemon's own CPU per delivered event, next to
the SDK's own CPU per frame, measured in the same run.

  cost  For each N in --cost-sessions (default 1,200) and each store in --cost-store
        (default memory,sqlite):
        - the SDK alone (bench/sdk_alone.py, a subprocess kept up for the pass): N bare
          ClaudeSDKClients on the stand-in CLI, each in a cwd with the same scenario.json
          as the daemon's sessions; its own CPU (RUSAGE_SELF: the CLIs excluded) per
          message received. Beside a durable store, a second one with the SDK's
          InMemorySessionStore as `session_store` (the transcript mirror that store turns on).
        - a daemon with that store and N sessions of that scenario, one raw-socket
          subscriber each; its utime + stime (/proc/<pid>/stat: its CLI processes are not
          in it) per event the subscribers received, and per SDK message (the SDK alone's
          count per turn); delivered events/s (first POST to the last subscriber's
          `result`); events lost (must be 0); events per subscriber read (how many events
          one SSE write carried); read(2) calls per event (its CLIs' pipes); its CPU while
          idle between turns.
        Each runs a 50-event warm-up turn on every session (not counted); then
        --cost-pairs (default 5) rounds of each, alternating (SDK alone, with a mirror,
        daemon, SDK alone, ...): the machine's load drifts over minutes, so a ratio of
        rounds taken far apart measures the drift. A round is T turns of K events
        (K = --cost-events, default 500) on all N together (the daemon's N POSTs
        gathered; each subscriber from the previous `result` to this one's); T is the
        fewest that make --cost-min-events events (default 10,000): N = 1 runs 20 turns
        a round, since /proc counts CPU in 10 ms ticks. Reported: medians over the
        rounds, and as the ratio the median of each round's own ratio (with its range).
        With --cost-profile, one more turn at the top N under `py-spy record --pid`, in
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
import statistics
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
    k, levels, stores, pairs = a.cost_events, a.cost_sessions, a.cost_stores, a.cost_pairs
    log(f"\n== cost (ours only): the daemon's CPU per delivered event vs the SDK alone's CPU per frame;"
        f" N sessions x 1 subscriber, K={k}-event turns started together"
        f"{f' (K text deltas {a.cost_stream_ms:g} ms apart)' if a.cost_stream_ms else ''}; N in {levels}, stores {stores};"
        f" {pairs} rounds of each, alternating; figures are medians, ratios the median of each round's ratio"
        f"{'; py-spy at N=' + str(max(levels)) if a.cost_profile else ''}")
    out: dict[str, Any] = bench.results.setdefault("cost", {"k": k, "pairs": pairs, "runs": [], "profiles": []})
    scenario = cost_scenario(k, a.cost_stream_ms)
    for n in levels:
        turns = rounds_for(n, k, a.cost_min_events)
        profile = a.cost_profile and n == max(levels)
        for i, store in enumerate(stores):
            run = await store_pass(bench, n, store, turns, pairs, scenario, profile=profile, profile_sdk=profile and i == 0)
            for p in run.pop("profiles", []):
                out["profiles"].append(p)
                log(describe_profile(p))
            out["runs"].append(run)
            log(f"  daemon {store:<7} N={n:<4} {pairs} x {turns} round(s): {run['us_per_event']:6.1f} µs/event"
                f" ({run['loop_us_per_event']:.1f} of them the event loop's thread),"
                f" {run['us_per_sdk_frame']:.1f} µs/SDK frame ({run['delivered']:,} events, {run['events_per_turn']:.0f} per turn);"
                f" {run['eps']:,.0f} events/s; lost {run['lost']}; {run['events_per_read']:.1f} events per subscriber read,"
                f" {run['pipe_reads_per_event']:.2f} pipe reads per event; idle {run['idle_cpu_per_s'] * 100:.1f}% CPU")
            log(f"    the SDK alone {run['sdk_us_per_frame']:.1f} µs/frame ({run['sdk_frames_per_s']:,.0f} frames/s):"
                f" {run['ratio']:.2f}x (rounds {fmt_range(run['ratios'])})"
                + (f"; with a transcript mirror {run['sdk_mirror_us_per_frame']:.1f} µs/frame: {run['ratio_mirror']:.2f}x"
                   f" (rounds {fmt_range(run['ratios_mirror'])})" if "ratio_mirror" in run else ""))
    return out


def fmt_range(values: list[float]) -> str:
    return f"{min(values):.2f}-{max(values):.2f}x"


async def store_pass(bench: Bench, n: int, store: str, turns: int, pairs: int, scenario: dict[str, Any],
                     *, profile: bool, profile_sdk: bool) -> dict[str, Any]:
    """One daemon with this store and the SDK alone beside it (and with a mirror, for a
    durable store), their rounds alternating: `pairs` of each."""
    sdks = {"plain": SdkAlone(bench, n, scenario, mirror=False)}
    if store != "memory":
        sdks["mirror"] = SdkAlone(bench, n, scenario, mirror=True)
    try:
        for sdk in sdks.values():
            await sdk.start()
        return await daemon_pass(bench, n, store, turns, pairs, scenario, sdks, profile=profile, profile_sdk=profile_sdk)
    finally:
        for sdk in sdks.values():
            await sdk.close()


# --- the SDK alone ------------------------------------------------------------------------


class SdkAlone:
    """bench/sdk_alone.py as a subprocess that runs a measured round when asked."""

    def __init__(self, bench: Bench, n: int, scenario: dict[str, Any], *, mirror: bool) -> None:
        self.bench, self.n, self.scenario, self.mirror = bench, n, scenario, mirror
        self.proc: asyncio.subprocess.Process | None = None
        self.label = f"sdk_alone N={n}{' with a mirror' if mirror else ''}"

    async def start(self) -> None:
        root = self.bench.tmp / f"cost-sdk-{self.n}{'-mirror' if self.mirror else ''}-{time.monotonic_ns()}"
        for i in range(self.n):
            (root / str(i)).mkdir(parents=True)
            (root / str(i) / "scenario.json").write_text(json.dumps(self.scenario))
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, str(SDK_ALONE), "--sessions", str(self.n), "--cli", str(cli_launcher(self.bench)),
            "--dir", str(root), *(["--mirror"] if self.mirror else []),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env={**os.environ, MARK_ENV: f"cost-sdk-{self.n}-{time.monotonic_ns()}"}, start_new_session=True,
            limit=2**20,
        )
        await self.answer()  # connected and warmed up

    async def answer(self) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdout is not None and self.proc.stderr is not None
        try:
            line = await asyncio.wait_for(self.proc.stdout.readline(), self.bench.args.cost_timeout)
        except TimeoutError:
            raise RuntimeError(f"{self.label} did not answer in {self.bench.args.cost_timeout:g} s") from None
        if not line:
            await self.proc.wait()
            err = (await self.proc.stderr.read()).decode(errors="replace")
            raise RuntimeError(f"{self.label} exited {self.proc.returncode}: {err[-2000:]}")
        answer: dict[str, Any] = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"{self.label}: {answer['error']}")
        return answer

    async def ask(self, command: str) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(f"{command}\n".encode())
        await self.proc.stdin.drain()
        return await self.answer()

    async def round(self, turns: int) -> dict[str, Any]:
        result = await self.ask(f"round {turns}")
        step = self.scenario["turns"][-1]["steps"][0]
        expected = step.get("events", 1)  # a streamed turn is one message of many deltas
        if result["kinds_per_turn"].get("AssistantMessage") != expected:
            raise RuntimeError(f"{self.label}: {result['kinds_per_turn']} per turn, expected {expected} assistant messages")
        return result

    async def profile(self) -> dict[str, Any]:
        from bench.run import RESULTS_DIR

        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        py_spy()  # installed, or say so now
        path = RESULTS_DIR / f"cost-profile-sdk-{self.n}.txt"
        await self.ask(f"profile {path} {PY_SPY_RATE}")
        summary = summarize_collapsed(path.read_text())
        summary.update(store="none (the SDK alone)", n=self.n, path=str(path.relative_to(RESULTS_DIR.parent.parent)))
        return summary

    async def close(self) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        assert self.proc.stdin is not None
        self.proc.stdin.close()  # it disconnects its clients and exits
        try:
            await asyncio.wait_for(self.proc.wait(), 60)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            await self.proc.wait()


# --- the daemon ---------------------------------------------------------------------------


async def daemon_pass(bench: Bench, n: int, store: str, turns: int, pairs: int, scenario: dict[str, Any],
                      sdks: dict[str, SdkAlone], *, profile: bool, profile_sdk: bool) -> dict[str, Any]:
    from bench.run import cpu_s, gather_limited

    label = f"ours-cost-{store}-{n}"
    sqlite_path = bench.tmp / label / "sessions.db" if store == "sqlite" else None
    ours = await bench.start(Ours(bench.tmp, label, max_sessions=n + 10, sqlite_path=sqlite_path,
                                  agent={"cli_path": str(cli_launcher(bench))}))
    run: dict[str, Any] = {"n": n, "store": store, "turns": turns, "pairs": pairs}
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
        run["idle_cpu_per_s"] = await idle_cpu(ours)
        measured, rounds = [], []
        for _ in range(pairs):
            sdk_rounds = {kind: await sdk.round(turns) for kind, sdk in sdks.items()}
            ours_turns = [await turn_on_all(bench, ours, sids, cursors) for _ in range(turns)]
            measured += ours_turns
            ours_round = sum_turns(ours_turns)
            rounds.append({"sdk": sdk_rounds, **{k: ours_round[k] for k in (
                "cpu_s", "us_per_event", "loop_us_per_event", "delivered", "lost", "eps")}})
        run.update(sum_turns(measured))
        run["rounds"] = rounds
        run.update(pair_figures(rounds, turns, n))
        if profile_sdk:
            run.setdefault("profiles", []).append(await sdks["plain"].profile())
        if profile:
            run.setdefault("profiles", []).append(await profiled_turn(bench, ours, sids, cursors, store))
        assert ours.proc is not None
        run["cpu_after_s"] = cpu_s(ours.proc.pid)
    finally:
        run["stop"] = await bench.stop(ours)
    return run


def pair_figures(rounds: list[dict[str, Any]], turns: int, n: int) -> dict[str, Any]:
    """Medians over the alternating rounds; a ratio is the median of each round's own."""
    plain = [r["sdk"]["plain"] for r in rounds]
    ours = [r["us_per_event"] for r in rounds]
    ratios = [o / s["us_per_frame"] for o, s in zip(ours, plain, strict=True)]
    frames_per_turn = plain[0]["frames_per_turn"]
    out: dict[str, Any] = {
        "us_per_event": statistics.median(ours),
        "loop_us_per_event": statistics.median([r["loop_us_per_event"] for r in rounds]),
        "sdk_us_per_frame": statistics.median([s["us_per_frame"] for s in plain]),
        "sdk_frames_per_s": statistics.median([s["frames_per_s"] for s in plain]),
        "sdk_pipe_reads_per_frame": statistics.median([s["pipe_reads_per_frame"] for s in plain]),
        "sdk_frames_per_turn": frames_per_turn,
        "ratios": ratios, "ratio": statistics.median(ratios),
    }
    # The daemon's CPU per message its SDK yielded (the SDK alone's count per turn).
    out["us_per_sdk_frame"] = statistics.median([r["cpu_s"] / (frames_per_turn * n * turns) * 1e6 for r in rounds])
    out["eps"] = statistics.median([r["eps"] for r in rounds])
    if all("mirror" in r["sdk"] for r in rounds):
        mirrored = [r["sdk"]["mirror"]["us_per_frame"] for r in rounds]
        out["ratios_mirror"] = [o / m for o, m in zip(ours, mirrored, strict=True)]
        out["ratio_mirror"] = statistics.median(out["ratios_mirror"])
        out["sdk_mirror_us_per_frame"] = statistics.median(mirrored)
    return out


IDLE_S = 3.0


async def idle_cpu(server: Server) -> float:
    """The daemon's CPU per second of wall time while its sessions wait for input: what
    background work (timers, sweeps, keepalives) adds to a turn's figure."""
    from bench.run import cpu_s

    assert server.proc is not None
    cpu0 = cpu_s(server.proc.pid)
    await asyncio.sleep(IDLE_S)
    return (cpu_s(server.proc.pid) - cpu0) / IDLE_S


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
    switches0, pipe_reads0 = loop_switches(pid), read_calls(pid)
    cpu0, loop0 = cpu_s(pid), cpu_s(pid, thread=pid)  # the main thread runs the event loop
    t0 = time.monotonic()
    job.mark_t0(t0)
    codes = await asyncio.gather(*(server.say(sid, timeout=60) for sid in sids), return_exceptions=True)
    post_s = time.monotonic() - t0
    if any(c != 204 for c in codes):
        job.abort()
    results = await job.results()
    cpu, loop_cpu = cpu_s(pid) - cpu0, cpu_s(pid, thread=pid) - loop0
    switches, pipe_reads = loop_switches(pid) - switches0, read_calls(pid) - pipe_reads0
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
        "pipe_reads": pipe_reads,
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
        "pipe_reads_per_event": sum(t["pipe_reads"] for t in turns) / max(1, delivered),
    }


def read_calls(pid: int) -> int:
    """read(2) calls the process has made (/proc/<pid>/io `syscr`): its CLIs' pipes and
    files, not its sockets (recv is not counted there)."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("syscr:"):
            return int(line.split()[1])
    return 0


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
    for run in cost.get("runs", []):
        if "ratio" not in run:
            continue
        out.append((f"cost: {run['n']} session(s) x 1 sub, K={cost['k']}, {run['store']} store: daemon µs/event"
                    f" / SDK-alone µs/frame (medians of {run['pairs']} alternating rounds)",
                    f"{run['us_per_event']:.1f} / {run['sdk_us_per_frame']:.1f} ({run['ratio']:.2f}x;"
                    f" rounds {fmt_range(run['ratios'])})", "(not run)", ""))
        if "ratio_mirror" in run:
            out.append(("  SDK alone with a transcript mirror (InMemorySessionStore): µs/frame",
                        f"{run['sdk_mirror_us_per_frame']:.1f} ({run['ratio_mirror']:.2f}x;"
                        f" rounds {fmt_range(run['ratios_mirror'])})", "", ""))
        out.append(("  daemon µs per SDK frame; delivered events/s; events lost; events per SSE read",
                    f"{run['us_per_sdk_frame']:.1f}; {run['eps']:,.0f}; {run['lost']}; {run['events_per_read']:.1f}",
                    "", ""))
    with contextlib.suppress(KeyError, IndexError):
        for p in cost.get("profiles", []):
            areas = ", ".join(f"{a['function']} {a['pct']:.0f}%" for a in p["by_area"][:4])
            who = "the SDK alone" if p["store"].startswith("none") else f"daemon, {p['store']}"
            out.append((f"  profile, {who}, N={p['n']}: self time by area (top 4)", areas, "", ""))
    return out
