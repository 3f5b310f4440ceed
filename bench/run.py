"""`make bench`: agent-webkitd against agent-webkit-server 0.2.0, side by side, in one run.

    .venv/bin/python -m bench.run [--quick] [--no-scale] [--only PHASE[,PHASE]] [--reps N]

Both servers run on loopback with the scripted stand-in CLI (tests/standin/scripted_cli.py)
as the agent: a turn is `{"events": K, "text": ...}`, K one-block assistant frames written
as fast as the CLI can, so the server is what is measured. Subscribers are raw-socket SSE
clients in two worker processes (bench/subscribers.py), the same code for both servers.
Measurements alternate between the servers (ours, peer, ours, peer, ...).

Phases (all by default; `--only` picks some, `--no-scale` drops scale and hibernate):
  fanout   1, 10, 100 subscribers on one session, one turn of K events: delivered
           events/s, turn-end latency p50/p99 (user message POST -> that subscriber's
           `result`), missing events, stalls; then the same with one subscriber that
           stops reading for a few seconds mid-turn
  replay   a new subscriber receiving a full 1000-event ring (Last-Event-ID and no header)
  create   POST /sessions latency p50/p99: sequential creates in the default cwd (ours with
           --warm-agents warm CLIs, each create once the pool has refilled), ours cold for
           reference, then bursts larger than the pool; failures counted; then, on fresh
           servers, bursts of 8 and 32 after an idle spell and again 3 s later: ours with a
           pool that sizes itself, ours cold, the peer (bench/bursts.py)
  memory   server RSS (CLI processes excluded) per idle session and per 1000 ring events
  durable  ours only, the memory store against the SQLite and the Postgres store (a throwaway database,
           `awk_bench_<hex>` on AGENT_WEBKITD_BENCH_PG, default the local server): the
           fan-out turn with 1 and 100 subscribers, each store's events/s also as a share of
           a bare aiohttp fan-out of the same frames in the same run (bench/bare_fanout.py,
           the ceiling), and server CPU per delivered event; 30 short turns (one streamed text block each) with one subscriber
           (user message POST -> its `result`); the events table's on-disk size per 1000
           events, and the transcript tables' size
  restart  ours only: 1,000 hibernated sessions on the SQLite store, SIGTERM, a new process,
           the first stream served (bench/embedded.py)
  auth     ours only: POST /input latency with a static token and with a user's JWT; GET
           /sessions as one user among 10 and among 1,000 users (bench/principals.py)
  scale    ours only: 1000 live sessions, one subscriber each, a short turn on every one
  hibernate  ours only: 10,000 sessions with max_live_agents = 50, all hibernated, then a turn
           on 1,000 random ones (bench/hibernation.py); the same with Postgres at 2,000
  hold     ours only: 100,000 sessions held on one host (quick 5,000) with the SQLite store: 1,000
           created through the API with a turn each, the rest copied in the store, a restart:
           daemon RAM per held session (target <= 4 KiB), then a turn on 1,000 at random,
           0 lost (bench/holding.py)
  wake     ours only, the real bundled CLI + stand-in model: wake latency against a live
           session plus a cold CLI start, and the CLI memory hibernation frees
  cost     ours only: the daemon's own CPU per delivered event at 1 and 200 sessions streaming
           together, next to the SDK alone's CPU per frame in the same run; with
           --cost-profile, where the daemon's time goes (py-spy) (bench/costs.py)
  sandbox  ours only, the real bundled CLI + stand-in model: [agent] sandbox = "bwrap" against
           "none", samples interleaved: cold create and wake latency (ratios), warm creates,
           the sandbox's memory per live CLI, and the model gateway's added time to a
           response's first byte (bench/sandbox.py)
  files    ours only: a 10 MiB file up (PUT) and down (GET) through the workspace files routes
           with curl, against a plain aiohttp app (web.static; a naive streaming upload), rounds
           interleaved: MiB/s p50 and ours / plain (target >= 0.8); the daemon's longest event
           loop stall during a transfer (target <= 20 ms), from a /healthz probe in another
           process, against the probe idle (bench/files.py)
  gateway  ours only: the model gateway's CPU per proxied streamed response with usage accounting
           (meter, ledger, budget check, prices) against without, rounds interleaved; target
           <= 1.05x; responses as fast as loopback allows (the worst case), then paced as a
           model streams (bench/gateway.py)
  cluster  ours only: three daemons on one PostgreSQL behind a real nginx with
           conf/nginx-cluster.conf, 300 sessions (quick 60) each with a stream and a message every
           ~10 s (quick 5), then a rolling restart of the three hosts: how long it took, the
           client-visible 5xx count (target 0), how every turn ended, stream gaps (bench/cluster.py)
  checkpoint  ours only, Postgres: what a workspace that follows its session adds to a turn's
           end: a 10 MiB workspace with one file changed, p50 (target <= 50 ms); the first
           checkpoint and a restore (bench/checkpoint.py)

Raw results: bench/results/<timestamp>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import platform
import shlex
import shutil
import signal
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import (  # noqa: E402
    bursts,
    checkpoint,
    cluster,
    costs,
    embedded,
    files,
    gateway,
    hibernation,
    holding,
    pgdb,
    principals,
    sandbox,
)
from bench.servers import Bare, Ours, Peer, Server, ensure_peer_venv  # noqa: E402
from bench.subscribers import Job, JobError, Pool  # noqa: E402

PHASES = ("fanout", "replay", "create", "memory", "durable", "restart", "auth", "scale", "hibernate", "hold",
          "wake", "cost", "sandbox", "files", "gateway", "checkpoint", "cluster")
OURS_ONLY = ("durable", "restart", "auth", "scale", "hibernate", "hold", "wake", "cost", "sandbox", "files",
             "gateway", "checkpoint", "cluster")  # need no peer installed
LARGE = ("scale", "hibernate", "hold")  # skipped by --no-scale
STALL_S = 2.0  # a subscriber this much later than the first `result`, or silent this long mid-turn
MIN_FREE_GIB = 2.0  # the scale phase stops creating sessions below this much available memory
RESULTS_DIR = ROOT / "bench" / "results"
T = TypeVar("T")


def log(*parts: Any) -> None:
    print(*parts, flush=True)


def events_scenario(k: int, text: str, burst: int = 0) -> dict[str, Any]:
    """Every turn K one-block assistant frames; with `burst`, in runs of at most that many,
    separated by a one-word text message."""
    steps: list[dict[str, Any]] = []
    for start in range(0, k, burst or k):
        if steps:
            steps.append({"text": "x"})
        steps.append({"events": min(burst or k, k - start), "text": text})
    return {"turns": [{"steps": steps}], "then": "repeat_last"}


# Every turn one assistant message with one short text block, streamed word by word.
SHORT_TURN = {"turns": [{"steps": [{"text": "done, nothing else to do"}]}], "then": "repeat_last"}


def metric_value(text: str, name: str, labels: str = "") -> float:
    """One series of a Prometheus text page (0 if absent)."""
    for line in text.splitlines():
        series, _, value = line.rpartition(" ")
        metric, _, label_text = series.partition("{")
        if not line.startswith("#") and metric == name and labels in label_text:
            return float(value)
    return 0.0


def percentile(values: list[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return None
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def cpu_s(pid: int, thread: int | None = None) -> float:
    """utime + stime of a process (or of one of its threads), in seconds."""
    stat = Path(f"/proc/{pid}/task/{thread}/stat" if thread else f"/proc/{pid}/stat")
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def gather_limited(limit: int, items: Iterable[T], fn: Callable[[T], Awaitable[Any]]) -> list[Any]:
    """fn over items, at most `limit` at a time; exceptions are returned, not raised."""
    gate = asyncio.Semaphore(limit)

    async def one(item: T) -> Any:
        async with gate:
            return await fn(item)

    return await asyncio.gather(*(one(i) for i in items), return_exceptions=True)


def stream_sub(sid: str, **extra: Any) -> dict[str, Any]:
    """A subscriber from the start of a fresh session to its turn's `result`; like EventSource
    it reconnects (with Last-Event-ID) if the server ends the stream early."""
    return {"path": f"/sessions/{sid}/stream", "last_event_id": "0", "stop": "result", "reconnect": 3, **extra}


class Bench:
    def __init__(self, args: argparse.Namespace, tmp: Path, pool: Pool) -> None:
        self.args, self.tmp, self.pool = args, tmp, pool
        self.servers: list[Server] = []
        self.results: dict[str, dict[str, Any]] = {}  # filled as it goes: an interrupted run keeps its part

    async def start(self, server: Server) -> Server:
        self.servers.append(server)
        await server.start()
        return server

    async def stop(self, server: Server) -> dict[str, Any]:
        info = await server.stop()
        if info.get("cli_left_after_stop"):
            log(f"  !! {server.label}: {info['cli_left_after_stop']} CLI process(es) left after stop; killed")
        return info

    # --- one turn watched by subscribers ------------------------------------------

    async def turn(self, server: Server, sid: str, subs: list[dict[str, Any]], timeout_s: float) -> dict[str, Any]:
        """Open the subscribers, send one user message, wait for every subscriber."""
        job: Job = self.pool.job(server.host, server.port, subs, timeout_s)
        ready = await job.ready()
        assert server.proc is not None
        cpu0 = cpu_s(server.proc.pid)
        t0 = time.monotonic()
        job.mark_t0(t0)
        try:
            status = await server.say(sid)
        except Exception as exc:
            job.abort()
            await job.results()
            raise RuntimeError(f"{server.label}: input failed: {exc}") from exc
        post_s = time.monotonic() - t0
        if status != 204:
            job.abort()
        results = await job.results()
        cpu1 = cpu_s(server.proc.pid)
        return {"t0": t0, "post_status": status, "post_ms": post_s * 1000, "ready": ready,
                "server_cpu_s": cpu1 - cpu0, "client_cpu_s": job.cpu_s, "subs": results}

    async def last_event_id(self, server: Server, sid: str, linger_s: float = 0.0) -> tuple[int | None, int]:
        """The id of the turn's `result` as the session's ring has it now (a subscriber
        with no cursor reads the whole ring, then lingers a while for what follows), and
        the newest id seen: the truth for counting undelivered events, independent of
        whether the live subscribers were woken."""
        spec = {"path": f"/sessions/{sid}/stream", "last_event_id": None, "stop": "result", "linger_s": linger_s}
        job = self.pool.job(server.host, server.port, [spec], 1.0 + linger_s)
        await job.ready()
        sub = (await job.results())[0]
        rid: int | None = sub.get("result_id")
        return rid, int(sub.get("max_id") or 0)

    async def wait_turn_end(self, server: Server, sid: str, timeout_s: float,
                            linger_s: float = 0.0) -> tuple[int | None, int]:
        """Poll the ring until the turn's `result` is in it (or the timeout passes)."""
        deadline = time.monotonic() + timeout_s
        while True:
            rid, newest = await self.last_event_id(server, sid, linger_s)
            if rid is not None or time.monotonic() > deadline:
                return rid, newest
            await asyncio.sleep(0.2)

    # --- fan-out --------------------------------------------------------------------

    async def fanout_run(self, server: Server, n: int, k: int, *, text: str = "x", burst: int = 0,
                         pause: dict[str, Any] | None = None) -> dict[str, Any]:
        sid = await server.create(events_scenario(k, text, burst))
        subs = [stream_sub(sid) for _ in range(n)]
        if pause is not None:
            subs.append(stream_sub(sid, **pause))
        timeout_s = self.args.turn_timeout + (pause or {}).get("pause_s", 0)
        try:
            run = await self.turn(server, sid, subs, timeout_s)
            # Some subscriber never saw the result: ask the ring where the turn ended.
            if any(s.get("result_id") is None for s in run["subs"]):
                with contextlib.suppress(Exception):
                    run["true_result_id"] = (await self.last_event_id(server, sid))[0]
        finally:
            with contextlib.suppress(Exception):
                await server.delete(sid)
        run.update(summarize_turn(run, paused=pause is not None, timeout_s=timeout_s))
        run.update(server=server.name, n=n, k=k, text_len=len(text))
        return run

    async def phase_fanout(self) -> dict[str, Any]:
        a = self.args
        log(f"\n== fan-out: one session, one turn of K={a.k} events; subscribers {a.subs}; "
            f"{a.reps} rep(s), ours ring_size {a.fanout_ring}, peer ring 1000 (fixed)")
        ours = await self.start(Ours(self.tmp, "ours-fanout", ring_size=a.fanout_ring))
        peer = await self.start(Peer(self.tmp, "peer-fanout"))
        runs: list[dict[str, Any]] = []
        pause_runs: list[dict[str, Any]] = []
        out = self.results["fanout"] = {"runs": runs, "pause_runs": pause_runs}
        try:
            if not a.quick:  # warm-up (imports, caches, first-turn costs); not counted
                for server in (ours, peer):
                    await self.fanout_run(server, 1, min(a.k, 500))
            for rep in range(a.reps):
                for n in a.subs:
                    for server in (ours, peer):
                        run = await self.fanout_run(server, n, a.k)
                        run["rep"] = rep
                        runs.append(run)
                        log("  " + describe_run(run))
            pause = {"pause_after": a.pause_after, "pause_s": a.pause_s, "rcvbuf": a.pause_rcvbuf}
            text = "x" * a.pause_text
            log(f"-- slow subscriber: {a.pause_subs} normal + 1 that stops reading for {a.pause_s:g} s "
                f"after {a.pause_after} events (SO_RCVBUF {a.pause_rcvbuf or 'default'}); K={a.k}, text {a.pause_text} chars")
            for server in (ours, peer):
                run = await self.fanout_run(server, a.pause_subs, a.k, text=text, pause=pause)
                pause_runs.append(run)
                log("  " + describe_run(run))
                log("    slow one: " + describe_paused(run))
        finally:
            out["stops"] = {s.label: await self.stop(s) for s in (ours, peer)}
        return out

    # --- replay ---------------------------------------------------------------------

    async def phase_replay(self) -> dict[str, Any]:
        a = self.args
        log(f"\n== replay: a session with a full ring (turn of {a.replay_events} events), a new "
            f"subscriber reads 1000 events; {a.replay_tries} tries each")
        ours = await self.start(Ours(self.tmp, "ours-replay", ring_size=1000))
        peer = await self.start(Peer(self.tmp, "peer-replay"))
        out: dict[str, Any] = self.results.setdefault("replay", {"tries": []})
        try:
            last: dict[str, int] = {}
            sids: dict[str, str] = {}
            for server in (ours, peer):
                sid = await server.create(events_scenario(a.replay_events, "x" * 100))
                sids[server.name] = sid
                status = await server.say(sid)
                rid, newest = await self.wait_turn_end(server, sid, a.turn_timeout, linger_s=0.5)
                if status != 204 or rid is None:
                    raise RuntimeError(f"{server.label}: replay set-up turn did not finish (input -> {status})")
                last[server.name] = newest
            for i in range(a.replay_tries):
                for server in (ours, peer):
                    for mode in ("cursor", "no_header"):
                        cursor = str(last[server.name] - 1000) if mode == "cursor" else None
                        spec = {"path": f"/sessions/{sids[server.name]}/stream",
                                "last_event_id": cursor, "stop": 1000}
                        job = self.pool.job(server.host, server.port, [spec], 10.0)
                        await job.ready()
                        sub = (await job.results())[0]
                        ok = sub.get("count") == 1000 and sub.get("missing") == 0
                        t = (sub["stop_t"] - sub["connect_t"]) * 1000 if sub.get("stop_t") else None
                        out["tries"].append({"server": server.name, "mode": mode, "try": i,
                                             "ms": t, "ok": ok, "sub": sub})
            for server in (ours, peer):
                for mode in ("cursor", "no_header"):
                    tries = [x for x in out["tries"] if x["server"] == server.name and x["mode"] == mode]
                    times = [x["ms"] for x in tries if x["ok"] and x["ms"] is not None]
                    out[f"{server.name}_{mode}_ms"] = statistics.mean(times) if times else None
                    out[f"{server.name}_{mode}_failed"] = sum(1 for x in tries if not x["ok"])
                    log(f"  {server.name:<4} {mode:<9}: mean {fmt_ms(out[f'{server.name}_{mode}_ms'])} ms"
                        f" over {len(times)} tries (min {fmt_ms(min(times) if times else None)}),"
                        f" failed {out[f'{server.name}_{mode}_failed']}")
            for server in (ours, peer):
                with contextlib.suppress(Exception):
                    await server.delete(sids[server.name])
        finally:
            out["stops"] = {s.label: await self.stop(s) for s in (ours, peer)}
        return out

    # --- create ---------------------------------------------------------------------

    async def timed_create(self, server: Server, scenario: dict[str, Any] | None, lat: list[float],
                           sids: list[str], failures: list[str]) -> None:
        t = time.monotonic()
        try:
            sids.append(await server.create(scenario))
            lat.append((time.monotonic() - t) * 1000)
        except Exception as exc:
            failures.append(str(exc)[:300])

    async def phase_create(self) -> dict[str, Any]:
        a = self.args
        log(f"\n== create: {a.creates} sequential POST /sessions per server, in the default cwd (ours with"
            f" warm_agents = {a.warm_agents}: each create once the pool has refilled), alternating in blocks of 5;"
            f" ours cold (a cwd of its own) for reference; then {a.create_bursts} bursts of {a.create_burst} at once")
        ours = await self.start(Ours(self.tmp, "ours-create", agent={"warm_agents": a.warm_agents}))
        peer = await self.start(Peer(self.tmp, "peer-create"))
        scenario = events_scenario(5, "x")
        for cwd in (ours.default_cwd, peer.tmp):  # where sessions without a cwd of their own work
            (cwd / "scenario.json").write_text(json.dumps(scenario))
        out: dict[str, Any] = self.results.setdefault("create", {"warm_agents": a.warm_agents})
        series = ("ours", "ours_cold", "peer", "ours_burst", "peer_burst")
        lat: dict[str, list[float]] = {k: [] for k in series}
        sids: dict[str, list[str]] = {"ours": [], "peer": []}
        failures: dict[str, list[str]] = {k: [] for k in series}
        refill_s: list[float] = []
        try:
            done = 0
            while done < a.creates:
                block = min(5, a.creates - done)
                for _ in range(block):
                    refill_s.append(await ours.until_warm(a.warm_agents))
                    await self.timed_create(ours, None, lat["ours"], sids["ours"], failures["ours"])
                for _ in range(block):
                    await self.timed_create(ours, scenario, lat["ours_cold"], sids["ours"], failures["ours_cold"])
                for _ in range(block):
                    await self.timed_create(peer, None, lat["peer"], sids["peer"], failures["peer"])
                done += block
            for _ in range(a.create_bursts):
                for server in (ours, peer):
                    if server is ours:
                        await ours.until_warm(a.warm_agents)
                    name = f"{server.name}_burst"
                    await asyncio.gather(*(self.timed_create(server, None, lat[name], sids[server.name], failures[name])
                                           for _ in range(a.create_burst)))
            for server in (ours, peer):
                t = time.monotonic()
                codes = await gather_limited(10, sids[server.name], server.delete)
                out[f"{server.name}_delete_s"] = time.monotonic() - t
                out[f"{server.name}_delete_codes"] = sorted({str(c) for c in codes})
            _, metrics_text = await ours.call("GET", "/metrics")
            out["ours_creates"] = {start: metric_value(str(metrics_text), "agent_webkit_creates_total", f'start="{start}"')
                                   for start in ("warm", "cold")}
            out["refill_wait_ms_p50"] = percentile([x * 1000 for x in refill_s], 50)
            for name in series:
                xs = lat[name]
                out[f"{name}_p50_ms"] = percentile(xs, 50)
                out[f"{name}_p99_ms"] = percentile(xs, 99)
                out[f"{name}_failures"] = failures[name]
                out[f"{name}_ms"] = xs
                log(f"  {name:<10}: p50 {fmt_ms(percentile(xs, 50))} ms, p99 {fmt_ms(percentile(xs, 99))} ms,"
                    f" max {fmt_ms(max(xs) if xs else None)} ms, {len(xs)} ok, failed {len(failures[name])}")
            log(f"  ours: creates served warm {out['ours_creates']['warm']:.0f}, cold {out['ours_creates']['cold']:.0f};"
                f" waited p50 {fmt_ms(out['refill_wait_ms_p50'])} ms for the pool to refill before a sequential create")
        finally:
            out["stops"] = {s.label: await self.stop(s) for s in (ours, peer)}
        out["bursts"] = await bursts.run(self, a.burst_sizes, scenario)
        return out

    # --- memory ---------------------------------------------------------------------

    async def add_sessions(self, server: Server, count: int, k: int) -> dict[str, Any]:
        """`count` sessions, each after one turn of k events (100-char text), left idle."""
        sids: list[str] = []
        events: list[int] = []
        failed = 0
        for start in range(0, count, 10):
            batch = min(10, count - start)
            made = await asyncio.gather(*(server.create(events_scenario(k, "x" * 100)) for _ in range(batch)),
                                        return_exceptions=True)
            ok = [s for s in made if isinstance(s, str)]
            failed += batch - len(ok)
            sids += ok
            if not ok:
                continue
            job = self.pool.job(server.host, server.port, [stream_sub(s) for s in ok], self.args.turn_timeout)
            await job.ready()
            job.mark_t0(time.monotonic())
            await asyncio.gather(*(server.say(s) for s in ok), return_exceptions=True)
            for sid, sub in zip(ok, await job.results(), strict=True):
                rid = sub.get("result_id")
                if rid is None:  # the subscriber was not told (the peer's stall): ask the ring
                    rid = (await self.wait_turn_end(server, sid, 5.0))[0]
                if rid is None:
                    failed += 1
                else:
                    events.append(rid)
        await asyncio.sleep(2)  # let the dust settle
        return {"sids": sids, "failed": failed, "events_mean": statistics.mean(events) if events else 0}

    async def phase_memory(self) -> dict[str, Any]:
        a = self.args
        log(f"\n== memory: server VmRSS (CLI processes excluded); +{a.idle_sessions} idle sessions after a "
            f"{a.idle_events}-event turn, then +{a.ring_sessions} sessions with a full 1000-event ring")
        ours = await self.start(Ours(self.tmp, "ours-memory", ring_size=1000))
        peer = await self.start(Peer(self.tmp, "peer-memory"))
        out: dict[str, Any] = self.results.setdefault("memory", {})
        try:
            await asyncio.sleep(2)
            base = {s.name: s.rss_kib() for s in (ours, peer)}
            idle: dict[str, dict[str, Any]] = {}
            for server in (ours, peer):
                idle[server.name] = await self.add_sessions(server, a.idle_sessions, a.idle_events)
            after_idle = {s.name: s.rss_kib() for s in (ours, peer)}
            ring: dict[str, dict[str, Any]] = {}
            for server in (ours, peer):
                ring[server.name] = await self.add_sessions(server, a.ring_sessions, 1100)
            after_ring = {s.name: s.rss_kib() for s in (ours, peer)}
            for server in (ours, peer):
                name = server.name
                n_idle = len(idle[name]["sids"])
                n_ring = len(ring[name]["sids"])
                per_idle = (after_idle[name] - base[name]) / max(1, n_idle)
                per_ring_session = (after_ring[name] - after_idle[name]) / max(1, n_ring)
                extra_events = 1000 - min(1000, idle[name]["events_mean"])
                per_1000 = (per_ring_session - per_idle) * 1000 / extra_events if extra_events else None
                clis, cli_kib = server.cli_rss_kib()
                out[name] = {
                    "base_kib": base[name], "after_idle_kib": after_idle[name],
                    "after_ring_kib": after_ring[name], "idle_sessions": n_idle, "ring_sessions": n_ring,
                    "idle_events_per_session": idle[name]["events_mean"],
                    "failed": idle[name]["failed"] + ring[name]["failed"],
                    "per_idle_session_kib": per_idle, "per_ring_session_kib": per_ring_session,
                    "per_1000_ring_events_kib": per_1000, "cli_processes": clis, "cli_rss_kib": cli_kib,
                    "cli_rss_per_process_kib": cli_kib / clis if clis else None,
                }
                log(f"  {name:<4}: base {base[name] / 1024:.1f} MiB; {per_idle:.0f} KiB per idle session"
                    f" ({n_idle}, ~{idle[name]['events_mean']:.0f} events each); "
                    f"{fmt_num(per_1000, 0)} KiB per 1000 ring events ({n_ring} full-ring sessions);"
                    f" {clis} CLIs, {cli_kib / 1024:.0f} MiB RSS total, failed {out[name]['failed']}")
            for server in (ours, peer):
                await gather_limited(10, idle[server.name]["sids"] + ring[server.name]["sids"], server.delete)
        finally:
            out["stops"] = {s.label: await self.stop(s) for s in (ours, peer)}
        return out

    # --- durable --------------------------------------------------------------------

    async def short_turn(self, server: Server, sid: str, cursor: int) -> dict[str, Any]:
        """One turn watched by one live subscriber that starts after `cursor` (the previous
        turn's `result`): user message POST -> that subscriber's `result`."""
        spec = {"path": f"/sessions/{sid}/stream", "last_event_id": str(cursor), "stop": "result"}
        run = await self.turn(server, sid, [spec], self.args.turn_timeout)
        sub = run["subs"][0]
        if run["post_status"] != 204 or sub.get("result_t") is None:
            raise RuntimeError(f"{server.label}: short turn without a result (input -> {run['post_status']},"
                               f" subscriber stopped: {sub.get('reason')} {sub.get('http_error') or ''})")
        return {"ms": (sub["result_t"] - run["t0"]) * 1000, "post_ms": run["post_ms"],
                "result_id": sub["result_id"], "events": sub.get("count", 0), "missing": sub.get("missing", 0)}

    async def phase_durable(self) -> dict[str, Any]:
        a = self.args
        log(f"\n== durable (ours only): memory store vs SQLite vs Postgres store; fan-out turn of K={a.k} events,"
            f" subscribers {a.durable_subs}, {a.reps} rep(s); then {a.short_turns} short turns, one subscriber")
        out: dict[str, Any] = self.results.setdefault("durable", {"runs": [], "short": {}})
        async with pgdb.scratch_database() as dsn:
            out["database"] = dsn.rsplit("/", 1)[1]
            sqlite_path = self.tmp / "durable-sqlite" / "sessions.db"
            servers = (Ours(self.tmp, "ours-durable-memory", ring_size=a.fanout_ring),
                       Ours(self.tmp, "ours-durable-sqlite", ring_size=a.fanout_ring, sqlite_path=sqlite_path),
                       Ours(self.tmp, "ours-durable-postgres", ring_size=a.fanout_ring, store_dsn=dsn),
                       Bare(self.tmp, "bare-fanout"))
            ours = [s for s in servers if isinstance(s, Ours)]
            try:
                for server in servers:
                    await self.start(server)
                if not a.quick:  # warm-up, not counted
                    for server in servers:
                        await self.fanout_run(server, 1, min(a.k, 500))
                for rep in range(a.reps):
                    for n in a.durable_subs:
                        for server in servers:
                            run = await self.fanout_run(server, n, a.k)
                            run.update(rep=rep, store=server.store)
                            out["runs"].append(run)
                            log("  " + describe_run(run, who=f"{server.store:<8}"))
                out["fanout"] = [
                    {"n": n, **{s.store: summarize_runs([r for r in out["runs"] if r["store"] == s.store and r["n"] == n])
                                for s in servers}}
                    for n in a.durable_subs
                ]
                for by in out["fanout"]:
                    bare = by["bare"]
                    log(f"  n={by['n']}: events/s as a share of the bare fan-out (median of {a.reps}): " + ", ".join(
                        f"{s.store} {share(by[s.store]['eps'], bare['eps'])}" for s in ours)
                        + "; server CPU per delivered event (us): " + ", ".join(
                        f"{s.store} {fmt_num(by[s.store]['cpu_us_per_event'], 2)}" for s in servers))

                log("-- short turns: one text block each, one live subscriber from the previous `result`;"
                    " the first turn of each session is not counted")
                short: dict[str, list[dict[str, Any]]] = {s.store: [] for s in ours}
                sids = {s.store: await s.create(SHORT_TURN) for s in ours}
                cursors = dict.fromkeys(sids, 0)
                for i in range(a.short_turns + 1):
                    for server in ours:
                        turn = await self.short_turn(server, sids[server.store], cursors[server.store])
                        cursors[server.store] = turn["result_id"]
                        if i:
                            short[server.store].append(turn)
                for server in ours:
                    turns = short[server.store]
                    ms, post = [t["ms"] for t in turns], [t["post_ms"] for t in turns]
                    part = out["short"][server.store] = {
                        "turns": turns, "p50_ms": percentile(ms, 50), "p99_ms": percentile(ms, 99),
                        "post_p50_ms": percentile(post, 50), "events_mean": statistics.mean(t["events"] for t in turns),
                        "missing": sum(t["missing"] for t in turns),
                    }
                    log(f"  {server.store:<8}: result p50 {fmt_ms(part['p50_ms'])} ms, p99 {fmt_ms(part['p99_ms'])} ms"
                        f" (POST p50 {fmt_ms(part['post_p50_ms'])} ms); {len(turns)} turns of"
                        f" {part['events_mean']:.0f} events, missing {part['missing']}")
                    with contextlib.suppress(Exception):
                        await server.delete(sids[server.store])
                mem = out["short"]["memory"]
                for store in ("sqlite", "postgres"):
                    added = out["short"].setdefault("added", {})[store] = {
                        f"p{q}_ms": out["short"][store][f"p{q}_ms"] - mem[f"p{q}_ms"] for q in (50, 99)}
                    log(f"  the {store} commit adds per turn: p50 {added['p50_ms']:+.1f} ms,"
                        f" p99 {added['p99_ms']:+.1f} ms")
            finally:
                out["stops"] = {s.label: await self.stop(s) for s in servers}
            out["sqlite_storage"] = embedded.sqlite_storage(sqlite_path)
            log("  sqlite " + embedded.describe_storage(out["sqlite_storage"]))
            st = out["storage"] = await pgdb.storage(dsn)
            st["events_kib_per_1000"] = st["events_bytes"] / 1024 / st["events"] * 1000 if st["events"] else None
            log(f"  storage: awk_events {st['events_bytes'] / 1024:,.0f} KiB for {st['events']:,} events"
                f" ({st['data_bytes_mean']:.0f} bytes of JSON each): {fmt_num(st['events_kib_per_1000'])} KiB"
                f" per 1000 events; transcript tables {st['transcript_bytes'] / 1024:,.0f} KiB"
                f" ({st['transcripts']} transcripts, {st['transcript_entries']:,} entries)")
        return out

    # --- scale ----------------------------------------------------------------------

    async def phase_restart(self) -> dict[str, Any]:
        return await embedded.phase_restart(self)

    async def phase_auth(self) -> dict[str, Any]:
        return await principals.phase_auth(self)

    async def phase_hibernate(self) -> dict[str, Any]:
        return await hibernation.phase_hibernate(self)

    async def phase_hold(self) -> dict[str, Any]:
        return await holding.phase_hold(self)

    async def phase_wake(self) -> dict[str, Any]:
        return await hibernation.phase_wake(self)

    async def phase_cost(self) -> dict[str, Any]:
        return await costs.phase_cost(self)

    async def phase_sandbox(self) -> dict[str, Any]:
        return await sandbox.phase_sandbox(self)

    async def phase_files(self) -> dict[str, Any]:
        return await files.phase_files(self)

    async def phase_gateway(self) -> dict[str, Any]:
        return await gateway.phase_gateway(self)

    async def phase_cluster(self) -> dict[str, Any]:
        return await cluster.phase_cluster(self)

    async def phase_checkpoint(self) -> dict[str, Any]:
        return await checkpoint.phase_checkpoint(self)

    async def phase_scale(self) -> dict[str, Any]:
        a = self.args
        n = a.scale_sessions
        log(f"\n== scale (ours only): {n} live sessions, one subscriber each, one {a.scale_events}-event turn on every one")
        ours = await self.start(Ours(self.tmp, "ours-scale", ring_size=1000, max_sessions=n + 10))
        out: dict[str, Any] = self.results.setdefault("scale", {"sessions": n})
        sids: list[str] = []
        try:
            out["mem_available_gib_before"] = mem_available_gib()
            t = time.monotonic()
            low_memory: list[int] = []

            async def create(i: int) -> str:
                # A guard for the machine, not a measurement: stop short of exhausting memory.
                if mem_available_gib() < MIN_FREE_GIB:
                    low_memory.append(i)
                    raise RuntimeError(f"not created: less than {MIN_FREE_GIB} GiB of memory available")
                return await ours.create(events_scenario(a.scale_events, "x" * 100), timeout=120)

            made = await gather_limited(a.scale_create_parallel, range(n), create)
            sids = [s for s in made if isinstance(s, str)]
            out["not_created_low_memory"] = len(low_memory)
            if low_memory:
                log(f"  !! stopped creating: less than {MIN_FREE_GIB} GiB of memory available")
            out["create_s"] = time.monotonic() - t
            out["create_failed"] = n - len(sids)
            out["create_errors"] = sorted({str(e)[:200] for e in made if not isinstance(e, str)})[:5]
            clis, cli_kib = ours.cli_rss_kib()
            out["after_create"] = {"daemon_rss_kib": ours.rss_kib(), "cli_processes": clis, "cli_rss_kib": cli_kib}
            log(f"  created {len(sids)} in {out['create_s']:.1f} s (failed {out['create_failed']});"
                f" daemon {ours.rss_kib() / 1024:.0f} MiB, {clis} CLIs {cli_kib / 1024:.0f} MiB")

            job = self.pool.job(ours.host, ours.port, [stream_sub(s) for s in sids], a.scale_timeout,
                                connect_timeout_s=120)
            t = time.monotonic()
            ready = await job.ready()
            out["subscribe_s"] = time.monotonic() - t
            out["subscribers_ok"], out["subscribers_failed"] = ready["ok"], ready["failed"]
            t0 = time.monotonic()
            job.mark_t0(t0)
            posted: dict[str, float] = {}

            async def say(sid: str) -> int:
                posted[sid] = time.monotonic()
                return await ours.say(sid, timeout=60)

            codes = await gather_limited(50, sids, say)
            out["post_s"] = time.monotonic() - t0
            out["post_failed"] = sum(1 for c in codes if c != 204)
            subs = await job.results()
            out["turns_s"] = max((s["result_t"] for s in subs if s.get("result_t")), default=t0) - t0
            lat = [(s["result_t"] - posted[sid]) * 1000 for sid, s in zip(sids, subs, strict=True)
                   if s.get("result_t") and sid in posted]
            out["turn_ok"] = sum(1 for s in subs if s.get("result_id") is not None and not s.get("missing"))
            out["turn_failed"] = len(sids) - out["turn_ok"]
            out["missing"] = sum(s.get("missing", 0) for s in subs)
            out["reasons"] = count_by(s.get("reason", "?") for s in subs)
            out["latency_p50_ms"], out["latency_p99_ms"] = percentile(lat, 50), percentile(lat, 99)
            clis, cli_kib = ours.cli_rss_kib()
            out["after_turns"] = {"daemon_rss_kib": ours.rss_kib(), "cli_processes": clis, "cli_rss_kib": cli_kib,
                                  "cli_pss_kib": ours.cli_pss_kib(), "daemon_threads": _threads(ours),
                                  "mem_available_gib": mem_available_gib()}
            log(f"  subscribed {ready['ok']} in {out['subscribe_s']:.1f} s; posted in {out['post_s']:.1f} s;"
                f" all turns done in {out['turns_s']:.1f} s: ok {out['turn_ok']}, failed {out['turn_failed']},"
                f" missing {out['missing']}; turn-end p50 {fmt_ms(out['latency_p50_ms'])} ms,"
                f" p99 {fmt_ms(out['latency_p99_ms'])} ms")
            at = out["after_turns"]
            log(f"  daemon {at['daemon_rss_kib'] / 1024:.0f} MiB RSS, {at['daemon_threads']} threads; {clis} CLI"
                f" processes, {cli_kib / 1024 / 1024:.2f} GiB RSS total ({at['cli_pss_kib'] / 1024 / 1024:.2f} GiB PSS);"
                f" memory available {out['mem_available_gib_before']:.1f} -> {at['mem_available_gib']:.1f} GiB")
            t = time.monotonic()
            codes = await gather_limited(20, sids, lambda s: ours.delete(s, timeout=120))
            out["delete_s"] = time.monotonic() - t
            out["delete_failed"] = sum(1 for c in codes if c != 204)
            sids = []
        finally:
            if sids:  # interrupted: delete what we can, quickly
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(gather_limited(20, sids, lambda s: ours.delete(s, timeout=20)), 60)
            out["stop"] = await self.stop(ours)
            out["cli_left"] = out["stop"].get("cli_left_after_stop")
        log(f"  deleted in {out.get('delete_s', 0):.1f} s (failed {out.get('delete_failed')}); daemon stopped"
            f" (exit {out['stop'].get('exit_code')}); CLI processes left: {out['cli_left']}")
        return out


def _threads(server: Server) -> int | None:
    from bench.servers import proc_status

    assert server.proc is not None
    with contextlib.suppress(OSError, KeyError):
        return proc_status(server.proc.pid, "Threads")
    return None


def mem_available_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024 / 1024
    return float("inf")


def count_by(items: Iterable[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in items:
        out[item] = out.get(item, 0) + 1
    return out


# --- summaries -------------------------------------------------------------------------


def summarize_turn(run: dict[str, Any], *, paused: bool, timeout_s: float) -> dict[str, Any]:
    t0 = run["t0"]
    subs = run["subs"]
    normal = subs[:-1] if paused else subs
    result_ts = [s["result_t"] for s in subs if s.get("result_t")]
    first_result = min(result_ts) if result_ts else None
    # a subscriber that never got its result counts until the cap (the turn never ended for it)
    ends = [s.get("result_t") or (t0 + timeout_s) for s in subs]
    t_end = max(ends) if ends else t0
    delivered = sum(s.get("count", 0) for s in subs)
    stalls, reasons = 0, []
    for i, s in enumerate(subs):
        why = []
        if s.get("result_t") is None:
            why.append(f"no result ({s.get('reason')})")
        else:
            is_paused = paused and i == len(subs) - 1
            if not is_paused and first_result is not None and s["result_t"] - first_result > STALL_S:
                why.append(f"result {s['result_t'] - first_result:.1f} s after the first")
        if s.get("max_gap_s", 0) > STALL_S:
            why.append(f"silent {s['max_gap_s']:.1f} s mid-turn after {s.get('gap_at_count')} events")
        if s.get("reconnects"):
            why.append(f"server ended the stream {(s['reconnects'][0] - t0):.1f} s into the turn, "
                       f"reconnected {len(s['reconnects'])}x")
        if why:
            stalls += 1
            reasons.append("; ".join(why))
    # delivered events/s up to the start of the first stall (when there is one)
    burst_end = []
    for s in subs:
        if s.get("max_gap_s", 0) > STALL_S and s.get("gap_start_t"):
            burst_end.append(s["gap_start_t"])
        else:
            burst_end.append(s.get("result_t") or s.get("last_t") or t0)
    burst_delivered = sum(
        (s.get("gap_at_count", 0) if s.get("max_gap_s", 0) > STALL_S else s.get("count", 0)) for s in subs
    )
    lat = [((s["result_t"] - t0) if s.get("result_t") else timeout_s) * 1000 for s in normal]
    result_ids = sorted({s["result_id"] for s in subs if s.get("result_id") is not None})
    true_id = run.get("true_result_id") or (max(result_ids) if result_ids else None)
    undelivered = 0
    if true_id is not None:
        for s in subs:
            if s.get("result_id") is None:
                undelivered += max(0, true_id - max(s.get("max_id") or 0, 0))
    reads = sum(s.get("reads", 0) for s in subs)
    return {
        "true_result_id": true_id,
        "undelivered": undelivered,
        "events_per_read": delivered / reads if reads else None,
        "delivered": delivered,
        "elapsed_s": t_end - t0,
        "eps": delivered / (t_end - t0) if t_end > t0 else None,
        "eps_before_stall": burst_delivered / (max(burst_end) - t0) if burst_end and max(burst_end) > t0 else None,
        "latency_ms": lat,
        "lat_p50_ms": percentile(lat, 50),
        "lat_p99_ms": percentile(lat, 99),
        "censored": sum(1 for s in normal if not s.get("result_t")),
        "missing": sum(s.get("missing", 0) for s in subs),
        "dups": sum(s.get("dups", 0) for s in subs),
        "stalls": stalls,
        "stall_reasons": reasons,
        "result_ids": result_ids,
        "evicted": sum(1 for s in subs if s.get("evicted")),
        "http_errors": [s.get("http_error") for s in subs if s.get("http_error")],
        "errors": sorted({e for s in subs for e in s.get("errors", [])})[:5],
    }


def summarize_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Repetitions of one fan-out setting: the median of events/s, latency percentiles over
    every subscriber of every run, and what was lost."""

    def med(key: str) -> float | None:
        xs = [r[key] for r in runs if r.get(key) is not None]
        return statistics.median(xs) if xs else None

    lat = [x for r in runs for x in r["latency_ms"]]
    cpu = [r["server_cpu_s"] / r["delivered"] * 1e6 for r in runs if r.get("delivered")]
    return {
        "runs": len(runs),
        "cpu_us_per_event": statistics.median(cpu) if cpu else None,
        "subscribers": sum(r["n"] for r in runs),
        "eps": med("eps"),
        "eps_before_stall": med("eps_before_stall"),
        "lat_p50_ms": percentile(lat, 50),
        "lat_p99_ms": percentile(lat, 99),
        "censored": any(r["censored"] for r in runs),
        "lost": sum(r["missing"] + r["undelivered"] for r in runs),
        "stalls": sum(r["stalls"] for r in runs),
    }


def fmt_ms(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.0f}" if x >= 100 else f"{x:.1f}" if x >= 10 else f"{x:.2f}"


def share(ours: float | None, ceiling: float | None) -> str:
    """`ours` as a fraction of `ceiling` (1.00: as fast as the ceiling)."""
    return "-" if not ours or not ceiling else f"{ours / ceiling:.2f}"


def fmt_num(x: float | None, digits: int = 0) -> str:
    return "-" if x is None else f"{x:,.{digits}f}"


def describe_run(run: dict[str, Any], who: str = "") -> str:
    """One run on one line; `who` names the server (default: ours or peer)."""
    extra = ""
    if run["stalls"]:
        extra = f" [{run['stall_reasons'][0]}]"
        if run.get("eps_before_stall"):
            extra += f" (before the stall {fmt_num(run['eps_before_stall'])} ev/s)"
    if run["post_status"] != 204:
        extra += f" [input -> {run['post_status']}]"
    if run["http_errors"]:
        extra += f" [{run['http_errors'][:3]}]"
    lost = f"missing {run['missing']}" + (f" + {run['undelivered']} never delivered" if run["undelivered"] else "")
    return (f"{who or run['server']:<4} n={run['n']:<3}: {fmt_num(run['eps']):>9} ev/s, turn-end p50 "
            f"{fmt_ms(run['lat_p50_ms'])} ms p99 {fmt_ms(run['lat_p99_ms'])} ms, {lost},"
            f" stalls {run['stalls']}, {run['elapsed_s']:.2f} s; CPU server {run['server_cpu_s']:.2f} s,"
            f" clients {run['client_cpu_s']:.2f} s; {fmt_num(run['events_per_read'], 1)} events/read{extra}")


def describe_paused(run: dict[str, Any]) -> str:
    s = run["subs"][-1]
    got = "yes" if s.get("result_t") else f"no ({s.get('reason')}{', ' + s['http_error'] if s.get('http_error') else ''})"
    lat = (s["result_t"] - run["t0"]) * 1000 if s.get("result_t") else None
    return (f"paused after {s.get('pause_count')} events; received {s.get('count')} of {run['true_result_id']},"
            f" skipped {s.get('missing')}, evicted {'yes' if s.get('evicted') else 'no'}, got result {got}"
            f" at {fmt_ms(lat)} ms, longest silence after resuming {s.get('max_gap_s', 0):.1f} s,"
            f" reconnects {len(s.get('reconnects') or [])}")


# --- the table -------------------------------------------------------------------------


def ratio(ours: float | None, peer: float | None, higher_is_better: bool) -> str:
    if ours is None or peer is None or ours <= 0 or peer <= 0:
        return "-"
    r = ours / peer if higher_is_better else peer / ours
    return f"{r:.1f}x" if r < 100 else f"{r:.0f}x"


def build_table(results: dict[str, Any], args: argparse.Namespace) -> list[tuple[str, str, str, str]]:
    rows: list[tuple[str, str, str, str]] = []
    fan = results.get("fanout")
    if fan:
        for n in args.subs:
            o, p = (summarize_runs([r for r in fan["runs"] if r["server"] == name and r["n"] == n])
                    for name in ("ours", "peer"))
            rows.append((f"fan-out {subs_label(n)}, K={args.k}: delivered events/s", fmt_num(o["eps"]),
                         fmt_num(p["eps"]), ratio(o["eps"], p["eps"], True)))
            for q in (50, 99):
                lo, lp = o[f"lat_p{q}_ms"], p[f"lat_p{q}_ms"]
                rows.append((f"  turn-end latency p{q} (ms)", censored(o) + fmt_ms(lo), censored(p) + fmt_ms(lp),
                             ratio(lo, lp, False)))
            rows.append((f"  events lost / subscribers stalled (of {o['subscribers']})",
                         f"{o['lost']} / {o['stalls']}", f"{p['lost']} / {p['stalls']}", ""))
            if o["stalls"] or p["stalls"]:
                bo, bp = o["eps_before_stall"], p["eps_before_stall"]
                rows.append(("  delivered events/s before the stall", fmt_num(bo), fmt_num(bp), ratio(bo, bp, True)))
        pr = {r["server"]: r for r in fan.get("pause_runs", [])}
        if pr:
            def paused(r: dict[str, Any] | None) -> str:
                if r is None:
                    return "-"
                s = r["subs"][-1]
                lost = (r["true_result_id"] or 0) - s.get("count", 0)
                got = "result" if s.get("result_t") else "NO result"
                ev = ", evicted" if s.get("evicted") else ""
                return f"{lost} lost{ev}, {got}"

            def others(r: dict[str, Any] | None) -> str:
                return "-" if r is None else f"{r['missing'] + r['undelivered']} / {r['stalls']}"

            rows.append((f"slow subscriber ({args.pause_s:g} s pause mid-turn): its events", paused(pr.get("ours")),
                         paused(pr.get("peer")), ""))
            n_all = args.pause_subs + 1
            rows.append((f"  all {n_all} subscribers: events lost / stalled", others(pr.get("ours")),
                         others(pr.get("peer")), ""))
    rep = results.get("replay")
    if rep:
        for mode, text in (("cursor", "Last-Event-ID"), ("no_header", "no Last-Event-ID")):
            o, p = rep.get(f"ours_{mode}_ms"), rep.get(f"peer_{mode}_ms")
            rows.append((f"replay of a full ring, 1000 events, {text} (ms)", fmt_ms(o), fmt_ms(p), ratio(o, p, False)))
    cr = results.get("create")
    if cr:
        for q in ("p50", "p99"):
            o, p = cr.get(f"ours_{q}_ms"), cr.get(f"peer_{q}_ms")
            rows.append((f"create session {q} (ms, {args.creates} sequential, warm CLI)", fmt_ms(o), fmt_ms(p),
                         ratio(o, p, False)))
        for q in ("p50", "p99"):
            o, p = cr.get(f"ours_cold_{q}_ms"), cr.get(f"peer_{q}_ms")
            rows.append((f"create session {q} (ms, ours cold: a cwd of its own)", fmt_ms(o), fmt_ms(p),
                         ratio(o, p, False)))
        for q in ("p50", "p99"):
            o, p = cr.get(f"ours_burst_{q}_ms"), cr.get(f"peer_burst_{q}_ms")
            rows.append((f"create session {q} (ms, bursts of {args.create_burst})", fmt_ms(o), fmt_ms(p),
                         ratio(o, p, False)))
        rows.append(("create failures (sequential + bursts)",
                     str(sum(len(cr.get(f"{k}_failures", [])) for k in ("ours", "ours_cold", "ours_burst"))),
                     str(sum(len(cr.get(f"{k}_failures", [])) for k in ("peer", "peer_burst"))), ""))
        rows.extend(bursts.rows(cr.get("bursts", {})))
    mem = results.get("memory")
    if mem and "ours" in mem and "peer" in mem:
        o, p = mem["ours"], mem["peer"]
        rows.append(("server RSS, no sessions (MiB)", f"{o['base_kib'] / 1024:.1f}", f"{p['base_kib'] / 1024:.1f}",
                     ratio(o["base_kib"], p["base_kib"], False)))
        rows.append((f"server RSS per idle session (KiB, {o['idle_sessions']} sessions)",
                     fmt_num(o["per_idle_session_kib"]), fmt_num(p["per_idle_session_kib"]),
                     ratio(o["per_idle_session_kib"], p["per_idle_session_kib"], False)))
        rows.append(("server RSS per 1000 ring events (KiB, 100-char text)",
                     fmt_num(o["per_1000_ring_events_kib"]), fmt_num(p["per_1000_ring_events_kib"]),
                     ratio(o["per_1000_ring_events_kib"], p["per_1000_ring_events_kib"], False)))
        cpo, cpp = o.get("cli_rss_per_process_kib"), p.get("cli_rss_per_process_kib")
        rows.append(("CLI stand-in RSS per session (MiB, not the server's)",
                     "-" if cpo is None else f"{cpo / 1024:.1f}", "-" if cpp is None else f"{cpp / 1024:.1f}", ""))
    rows += durable_rows(results.get("durable") or {}, args)
    rows += embedded.rows(results)
    rows += principals.rows(results)
    rows += hibernation.rows(results)
    rows += holding.rows(results)
    rows += costs.rows(results)
    rows += sandbox.rows(results)
    rows += files.rows(results)
    rows += gateway.rows(results)
    rows += cluster.rows(results)
    rows += checkpoint.rows(results)
    sc = results.get("scale")
    if sc:
        n = sc["sessions"]
        ok = sc.get("turn_ok", 0)
        rows.append((f"scale: {n} sessions, 1 sub each, 1 turn each: ok / failed",
                     f"{ok} / {n - ok}", "(not run)", ""))
        if "turns_s" in sc:
            rows.append(("  create all / all turns / delete all (s)",
                         f"{sc['create_s']:.0f} / {sc['turns_s']:.1f} / {sc.get('delete_s', 0):.0f}", "", ""))
            rows.append(("  turn-end latency p50 / p99 (ms)",
                         f"{fmt_ms(sc['latency_p50_ms'])} / {fmt_ms(sc['latency_p99_ms'])}", "", ""))
            at = sc["after_turns"]
            rows.append(("  daemon RSS (MiB) / all CLIs RSS, PSS (GiB)",
                         f"{at['daemon_rss_kib'] / 1024:.0f} / {at['cli_rss_kib'] / 1024 / 1024:.1f},"
                         f" {at['cli_pss_kib'] / 1024 / 1024:.1f}", "", ""))
            rows.append(("  CLI processes left after stop", str(sc.get("cli_left")), "", ""))
    return rows


def subs_label(n: int) -> str:
    return f"{n} sub{'s' if n > 1 else ''}"


def censored(summary: dict[str, Any]) -> str:
    return ">=" if summary["censored"] else ""


def durable_rows(dur: dict[str, Any], args: argparse.Namespace) -> list[tuple[str, str, str, str]]:
    """Ours with the memory / SQLite / Postgres store, in the `agent-webkitd` column; the
    ratios are each durable store against memory (below 1: what durability costs)."""
    rows: list[tuple[str, str, str, str]] = []
    stores = ("memory", "sqlite", "postgres")

    def triple(values: list[str]) -> str:
        return " / ".join(values)

    def ratios(values: dict[str, float | None], higher_is_better: bool) -> str:
        m = values["memory"]
        return ", ".join(
            f"{s[:2]} {ratio(values[s], m, True) if higher_is_better else ratio(m, values[s], True)}"
            for s in ("sqlite", "postgres"))

    first = "(not run)"
    for by in dur.get("fanout") or []:
        if not all(s in by for s in stores):
            continue
        n = by["n"]
        rows.append((f"durable: fan-out {subs_label(n)}, K={args.k}, events/s (memory / sqlite / postgres)",
                     triple([fmt_num(by[s]["eps"]) for s in stores]), first,
                     ratios({s: by[s]["eps"] for s in stores}, True)))
        first = ""
        for q in (50, 99):
            lat = {s: by[s][f"lat_p{q}_ms"] for s in stores}
            rows.append((f"  turn-end latency p{q} (ms)", triple([censored(by[s]) + fmt_ms(lat[s]) for s in stores]),
                         "", ratios(lat, False)))
        if "bare" in by:
            rows.append((f"  share of a bare aiohttp fan-out ({fmt_num(by['bare']['eps'])} ev/s, same run)",
                         triple([share(by[s]["eps"], by["bare"]["eps"]) for s in stores]), "", ""))
            rows.append(("  server CPU per delivered event (us); bare "
                         + fmt_num(by["bare"]["cpu_us_per_event"], 2),
                         triple([fmt_num(by[s]["cpu_us_per_event"], 2) for s in stores]), "", ""))
        rows.append(("  events lost", triple([str(by[s]["lost"]) for s in stores]), "", ""))
        rows.append((f"  subscribers stalled (of {by['memory']['subscribers']})",
                     triple([str(by[s]["stalls"]) for s in stores]), "", ""))
    short = dur.get("short") or {}
    if "added" in short:
        for q in (50, 99):
            lat = {s: short[s][f"p{q}_ms"] for s in stores}
            label = f"durable: short turns, 1 sub, {len(short['memory']['turns'])} each: POST -> result" if q == 50 else " "
            rows.append((f"{label} p{q} (ms)", triple([fmt_ms(lat[s]) for s in stores]), first, ratios(lat, False)))
            first = ""
        rows.append(("  added by the commit, p50 / p99 (ms): sqlite; postgres",
                     "; ".join(f"{short['added'][s]['p50_ms']:+.1f} / {short['added'][s]['p99_ms']:+.1f}"
                               for s in ("sqlite", "postgres")), "", ""))
    sq = dur.get("sqlite_storage")
    if sq:
        rows.append((f"durable: sqlite file per 1000 events / per session (KiB; {sq['events']:,} events)",
                     f"{fmt_num(sq['events_kib_per_1000'])} / {fmt_num(sq['kib_per_session'], 1)}", first, ""))
    st = dur.get("storage")
    if st:
        rows.append((f"durable: awk_events on disk per 1000 events (KiB; {st['events']:,} events,"
                     f" {st['data_bytes_mean']:.0f} B JSON each)", fmt_num(st["events_kib_per_1000"]), first, ""))
        rows.append((f"  transcript tables, total (KiB; {st['transcript_entries']:,} entries)",
                     fmt_num(st["transcript_bytes"] / 1024), "", ""))
    return rows


def render_table(rows: list[tuple[str, str, str, str]]) -> str:
    head = ("figure", "agent-webkitd", "agent-webkit-server 0.2.0", "ratio")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(4)]
    lines = [
        "  ".join([head[0].ljust(widths[0]), *(h.rjust(w) for h, w in zip(head[1:], widths[1:], strict=True))]),
        "  ".join("-" * w for w in widths),
    ]
    for r in rows:
        lines.append("  ".join([r[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True))]))
    lines.append("ratio: ours/peer for events/s, peer/ours for times and memory; above 1 = ours better."
                 " >=: some subscriber never got its result (counted at the timeout).")
    if any(r[0].startswith("durable:") for r in rows):
        lines.append("durable: ours with the memory store / with the Postgres store; ratio postgres/memory for"
                     " events/s, memory/postgres for times: below 1 = what the commit costs.")
    return "\n".join(lines)


# --- main ------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    mem_kib = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kib = int(line.split()[1])
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": os.cpu_count(), "cpu": cpu, "mem_gib": round(mem_kib / 1024 / 1024, 1),
        "python": platform.python_version(), "kernel": platform.release(),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[2:]))
    p.add_argument("--quick", action="store_true", help="a smoke run in about a minute: smaller everything, turns capped at 5 s")
    p.add_argument("--only", default="", help=f"comma-separated phases: {', '.join(PHASES)}")
    p.add_argument("--no-scale", action="store_true", help="skip the large phases (scale, hibernate)")
    p.add_argument("--reps", type=int, help="fan-out repetitions (default 3, quick 1)")
    p.add_argument("--k", type=int, help="events per fan-out turn (default 2000, quick 300)")
    p.add_argument("--subs", type=lambda s: [int(x) for x in s.split(",")], help="subscriber counts (default 1,10,100)")
    p.add_argument("--turn-timeout", type=float, help="cap on waiting for one turn, s (default 30, quick 5)")
    p.add_argument("--scale-sessions", type=int, help="sessions in the scale phase (default 1000, quick 30)")
    p.add_argument("--hold-sessions", type=int, help="sessions held in the hold phase (default 100000, quick 5000)")
    p.add_argument("--hibernate-sessions", type=int, help="sessions in the hibernate phase (default 10000, quick 300)")
    p.add_argument("--workers", type=int, default=2, help="subscriber worker processes")
    p.add_argument("--warm-agents", type=int, default=1, help="ours' [agent] warm_agents in the create phase")
    p.add_argument("--pause-rcvbuf", type=int, default=0, help="SO_RCVBUF of the slow subscriber (0: the default)")
    p.add_argument("--pause-text", type=int, default=4000, help="characters of text per event in the slow-subscriber turn")
    p.add_argument("--cost-sessions", type=lambda s: [int(x) for x in s.split(",")],
                   help="concurrently streaming sessions in the cost phase (default 1,200, quick 1,20)")
    p.add_argument("--cost-events", type=int, help="events per turn in the cost phase (default 500, quick 200)")
    p.add_argument("--cost-pairs", type=int,
                   help="cost phase: alternating rounds of the SDK alone and the daemon (default 5, quick 2)")
    p.add_argument("--cost-store", default="memory,sqlite", help="stores for the cost phase (memory, sqlite)")
    p.add_argument("--cost-min-events", type=int,
                   help="rounds in the cost phase: enough for this many events (default 10000, quick 2000)")
    p.add_argument("--cost-stream-ms", type=float, default=0.0,
                   help="cost phase: stream each turn as K text deltas this many ms apart (paced by"
                        " the CLIs, so the daemon and the SDK alone run at the same rate), instead"
                        " of K assistant frames as fast as the CLI can")
    p.add_argument("--cost-profile", action="store_true",
                   help="the cost phase also profiles one turn at the top session count with py-spy")
    p.add_argument("--sandbox-samples", type=int,
                   help="sandbox phase: cold creates, wakes and warm creates per mode (default 20, quick 6)")
    p.add_argument("--cluster-sessions", type=int, help="sessions in the cluster phase (default 300, quick 60)")
    p.add_argument("--cluster-period", type=float, help="cluster phase: seconds between one user's messages (default 10, quick 5)")
    args = p.parse_args(argv)
    q = args.quick
    args.reps = args.reps or (1 if q else 3)
    args.turn_timeout = args.turn_timeout or (5.0 if q else 30.0)
    args.k = args.k or (300 if q else 2000)
    args.subs = args.subs or ([1, 10] if q else [1, 10, 100])
    args.fanout_ring = max(5000, args.k * 2 + 100)
    args.pause_subs = 2 if q else 10
    args.pause_after = 100
    args.pause_s = 2.0 if q else 5.0
    args.replay_events = 1500
    args.replay_tries = 3 if q else 5
    args.creates = 10 if q else 30
    args.create_burst = 4 if q else 8
    args.create_bursts = 1 if q else 3
    args.burst_sizes = [8] if q else [8, 32]
    args.idle_sessions = 10 if q else 100
    args.idle_events = 50
    args.ring_sessions = 3 if q else 20
    args.scale_sessions = args.scale_sessions or (30 if q else 1000)
    args.durable_subs = [1, 100]
    args.short_turns = 10 if q else 30
    args.scale_events = 5
    args.scale_timeout = 180.0
    args.scale_create_parallel = 8
    args.hibernate_sessions = args.hibernate_sessions or (300 if q else 10_000)
    args.hibernate_pg_sessions = min(args.hibernate_sessions, 100 if q else 2000)
    args.wake_sessions = min(args.hibernate_sessions, 100 if q else 1000)
    args.hold_sessions = args.hold_sessions or (5000 if q else 100_000)
    args.hold_templates = min(args.hold_sessions, 200 if q else 1000)
    args.hold_wakes = min(args.hold_sessions, 100 if q else 1000)
    args.wake_real_sessions = 2 if q else 5
    args.wake_real_rounds = 2 if q else 4
    args.restart_sessions = 100 if q else 1000
    args.auth_requests = 300 if q else 3000
    args.auth_users = 100 if q else 1000
    args.cost_sessions = args.cost_sessions or ([1, 20] if q else [1, 200])
    args.cost_events = args.cost_events or (200 if q else 500)
    args.cost_stores = [x.strip() for x in args.cost_store.split(",") if x.strip()]
    if bad_stores := [x for x in args.cost_stores if x not in ("memory", "sqlite")]:
        p.error(f"unknown --cost-store {bad_stores}; choose from memory, sqlite")
    args.cost_min_events = args.cost_min_events or (2000 if q else 10_000)
    args.cost_pairs = args.cost_pairs or (2 if q else 5)
    args.cost_timeout = 120.0
    args.sandbox_samples = args.sandbox_samples or (6 if q else 20)
    args.cluster_sessions = args.cluster_sessions or (60 if q else 300)
    args.cluster_period = args.cluster_period or (5.0 if q else 10.0)
    phases = [x.strip() for x in args.only.split(",") if x.strip()] or list(PHASES)
    bad = [x for x in phases if x not in PHASES]
    if bad:
        p.error(f"unknown phase(s) {bad}; choose from {', '.join(PHASES)}")
    if args.no_scale:
        phases = [x for x in phases if x not in LARGE]
    args.phases = phases
    return args


async def amain(args: argparse.Namespace) -> int:
    started = time.monotonic()
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    info = machine()
    command = shlex.join([Path(sys.executable).name, "-m", "bench.run", *sys.argv[1:]])
    log(f"agent-webkitd bench  {datetime.datetime.now().isoformat(timespec='seconds')}")
    log(f"machine: {info['nproc']} CPUs ({info['cpu']}), {info['mem_gib']} GiB, Python {info['python']},"
        f" Linux {info['kernel']}")
    log(f"command: {command}")
    log(f"phases: {', '.join(args.phases)}")
    results: dict[str, Any] = {"machine": info, "command": command, "argv": sys.argv, "phases": args.phases,
                               "settings": {k: v for k, v in vars(args).items() if k != "phases"}}
    if any(p not in OURS_ONLY for p in args.phases):
        results["peer_versions"] = ensure_peer_venv(log)
        log(f"peer: {results['peer_versions']}")

    tmp = Path(tempfile.mkdtemp(prefix="agent-webkitd-bench-"))
    pool = Pool(args.workers)
    pool.start()
    bench = Bench(args, tmp, pool)
    main_task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    assert main_task is not None
    loop.add_signal_handler(signal.SIGTERM, main_task.cancel)
    interrupted = False
    try:
        for phase in args.phases:
            try:
                results[phase] = await getattr(bench, f"phase_{phase}")()
            except (JobError, RuntimeError, OSError, TimeoutError) as exc:
                results[phase] = bench.results.get(phase, {})
                log(f"  !! phase {phase} failed: {exc!r}")
                results.setdefault("failures", []).append({"phase": phase, "error": repr(exc)})
            except Exception as exc:  # a bug in the bench: keep going, keep the traceback
                results[phase] = bench.results.get(phase, {})
                log(f"  !! phase {phase} crashed:\n{traceback.format_exc()}")
                results.setdefault("failures", []).append({"phase": phase, "error": repr(exc)})
    except (asyncio.CancelledError, KeyboardInterrupt):
        interrupted = True
        log("\ninterrupted: cleaning up")
        for phase, part in bench.results.items():
            results.setdefault(phase, part)
    finally:
        for server in bench.servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.stop(timeout=10), 40)
            server.emergency_stop()
        pool.close()
        shutil.rmtree(tmp, ignore_errors=True)
    results["duration_s"] = time.monotonic() - started
    table = render_table(build_table(results, args))
    results["table"] = table
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / f"{stamp}{'-quick' if args.quick else ''}.json"
    out.write_text(json.dumps(results, indent=1, default=str))
    log(f"\n{table}\n")
    log(f"machine: {info['nproc']} CPUs, {info['mem_gib']} GiB, Python {info['python']}; command: {command}")
    log(f"took {results['duration_s']:.0f} s; raw results: {out.relative_to(ROOT)}")
    if interrupted:
        return 130
    return 1 if results.get("failures") else 0


def main() -> None:
    args = parse_args()
    try:
        code = asyncio.run(amain(args))
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    main()
