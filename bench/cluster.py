"""`make bench` phase `cluster` (ours only; DESIGN.md §14): a deploy under load.

  cluster  Three daemons on one PostgreSQL (a throwaway database, bench/pgdb.py) behind a real
           nginx running conf/nginx-cluster.conf: the harness of the cluster tests
           (tests/cluster.py), with the fast scripted CLI. N sessions (default 300, quick 60)
           are created through nginx; each has a stream read through nginx (reconnecting with
           Last-Event-ID when it ends without `done`) and a user who sends a short message
           about every PERIOD s (default 10, quick 5; jittered) and waits for that turn's end.
           After two periods of that, the three hosts are restarted in turn (SIGTERM, wait
           for the exit, start on the same port, healthy, a pause), under the same traffic.
           Reported: how long the rolling restart took (each host's stop and start), how long
           until every session had a turn served after it (settled), every response the
           clients saw with a 5xx status or none at all (target 0), the turns started and how
           they ended (result, turn_lost, anything else, no end), streams with a gap or a
           repeated id, turn latency (POST -> its end) before and during the restart, and the
           daemons' exit codes.

Run it alone with `.venv/bin/python -m bench.run --only cluster`.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

import aiohttp

from bench import pgdb
from bench.hibernation import fast_launcher
from bench.sandbox import fmt_ms, log, percentile
from tests.cluster import Cluster, Follower, create, end_of_turn, send

if TYPE_CHECKING:
    from bench.run import Bench

CREATE_PARALLEL = 12
PAUSE_S = 2.0  # between one host's restart and the next one's
TURN_TIMEOUT_S = 60.0


class User:
    """One session's user: a message, its turn's end, a pause, the next message."""

    def __init__(self, follower: Follower, period_s: float) -> None:
        self.follower, self.period_s = follower, period_s
        self.turns: list[dict[str, Any]] = []  # {"t0", "t1", "outcome"}

    async def run(self, stop: asyncio.Event) -> None:
        client = self.follower.client
        await asyncio.sleep(random.uniform(0, self.period_s))
        n = 0
        while not stop.is_set():
            n += 1
            text, start, t0 = f"tick {n}", len(self.follower.events), time.monotonic()
            try:
                status = await send(client, self.follower.session_id, {"type": "user_message", "content": text},
                                    TURN_TIMEOUT_S)
            except (aiohttp.ClientError, TimeoutError) as exc:  # counted in client.seen as well
                self.turns.append({"t0": t0, "t1": time.monotonic(), "outcome": f"input failed: {exc!r}"})
                continue
            if status != 204:
                self.turns.append({"t0": t0, "t1": time.monotonic(), "outcome": f"input {status}"})
                continue
            try:
                end = await end_of_turn(self.follower, text, start, TURN_TIMEOUT_S)
                outcome = "result" if end.name == "result" else f"error {end.data.get('code')}"
            except TimeoutError:
                outcome = "no end"
            t1 = time.monotonic()
            self.turns.append({"t0": t0, "t1": t1, "outcome": outcome})
            await asyncio.sleep(max(0.0, self.period_s * random.uniform(0.8, 1.2) - (t1 - t0)))


async def phase_cluster(bench: Bench) -> dict[str, Any]:
    a = bench.args
    n, period = a.cluster_sessions, a.cluster_period
    log(f"\n== cluster (ours only): {n} sessions on 3 hosts behind nginx (conf/nginx-cluster.conf), "
        f"a message every ~{period:g} s each; then a rolling restart of the 3 hosts")
    out: dict[str, Any] = bench.results.setdefault("cluster", {"sessions": n, "period_s": period})
    overrides = {
        "agent": {"cli_path": str(fast_launcher(bench.tmp))},
        # With one host down the other two hold every session between them.
        "sessions": {"max_sessions": n},
        "server": {"drain_timeout_s": 60},
        "logging": {"level": "warning"},
    }
    started = time.monotonic()
    async with pgdb.scratch_database() as dsn:
        cluster = Cluster(bench.tmp / "cluster", dsn, overrides)
        followers: list[Follower] = []
        try:
            await cluster.start()
            client = cluster.client(connections=n + 100)
            gate = asyncio.Semaphore(CREATE_PARALLEL)

            async def one() -> str:
                async with gate:
                    return await create(client, timeout=120)

            t = time.monotonic()
            sessions = await asyncio.gather(*(one() for _ in range(n)))
            out["create_s"] = time.monotonic() - t
            followers = [Follower(client, s).start() for s in sessions]
            for follower in followers:
                await follower.until(lambda e: e.name == "session_ready", timeout=120)
            log(f"  {n} sessions created through nginx in {out['create_s']:.1f} s, streams open")

            users = [User(f, period) for f in followers]
            stop = asyncio.Event()
            running = [asyncio.create_task(u.run(stop)) for u in users]
            await asyncio.sleep(2 * period)
            restart_t0 = time.monotonic()
            for host in range(3):
                code = await cluster.restart(host)
                r = cluster.restarts[-1]
                log(f"  host {host}: SIGTERM -> exit {code} in {r['stop_s']:.1f} s, started again in {r['start_s']:.1f} s")
                await asyncio.sleep(PAUSE_S)
            restart_t1 = time.monotonic()
            await asyncio.sleep(2 * period)  # every user has a turn served after the deploy
            stop.set()
            await asyncio.wait_for(asyncio.gather(*running), TURN_TIMEOUT_S + 10)
            out.update(summarize(users, followers, client.failures(), cluster, restart_t0, restart_t1))
            out["seen_responses"] = len(client.seen)
            out.update(nginx_evidence(cluster))
        finally:
            for follower in followers:
                await follower.close()
            await cluster.close()
            out["exit_codes"] = cluster.exit_codes
            out["cli_left_after_stop"] = len(await cluster.left_behind())
    out["phase_s"] = time.monotonic() - started
    describe(out)
    return out


def summarize(users: list[User], followers: list[Follower], failures: list[Any], cluster: Cluster,
              restart_t0: float, restart_t1: float) -> dict[str, Any]:
    turns = [t for u in users for t in u.turns]
    outcomes = Counter(t["outcome"] for t in turns)
    steady = [(t["t1"] - t["t0"]) * 1000 for t in turns if t["t1"] < restart_t0 and t["outcome"] == "result"]
    during = [(t["t1"] - t["t0"]) * 1000 for t in turns
              if t["t0"] < restart_t1 and t["t1"] > restart_t0 and t["outcome"] == "result"]
    # Settled: every session has had a turn that started after the deploy served with a result.
    served_after = [min((t["t1"] for t in u.turns if t["t0"] >= restart_t1 and t["outcome"] == "result"),
                        default=None) for u in users]
    settled = None if None in served_after else max(s for s in served_after if s is not None) - restart_t0
    codes = Counter(f.status for f in failures)
    return {
        "restart_s": restart_t1 - restart_t0,
        "settled_s": settled,
        "restarts": cluster.restarts,
        "five_xx": sum(1 for f in failures if f.status >= 500),
        "no_response": codes.get(0, 0),
        "failures": [vars(f) for f in failures[:30]],
        "turns": len(turns),
        "outcomes": dict(outcomes),
        "streams_with_gap": sum(1 for f in followers if f.ids() != list(range(1, len(f.events) + 1))),
        "stream_connects": sum(f.connects for f in followers),
        "turn_ms_steady": {"p50": percentile(steady, 50), "p99": percentile(steady, 99), "n": len(steady)},
        "turn_ms_during": {"p50": percentile(during, 50), "p99": percentile(during, 99), "n": len(during)},
        "turns_per_s": len(turns) / max(1e-9, max(t["t1"] for t in turns) - min(t["t0"] for t in turns)) if turns else 0,
    }


def nginx_evidence(cluster: Cluster) -> dict[str, Any]:
    """What nginx saw of the 5xx: the hosts each such request was passed to and their
    answers (access log), and its error log's complaints by kind (refused connections
    during a restart are expected)."""
    passed = [vars(p) for p in cluster.nginx.passed() if p.status >= 500]
    kinds: Counter[str] = Counter()
    for line in cluster.nginx.errors().splitlines():
        if "[error]" in line or "[warn]" in line:
            message = re.sub(r"^.*?\*\d+ ", "", line).split(", client:")[0]
            kinds[re.sub(r"\d+", "N", message)] += 1
    slow = slow_requests(cluster)
    return {"nginx_5xx": passed[:50], "nginx_errors": dict(kinds.most_common(10)),
            "slow_requests": len(slow), "slowest": slow[:50]}


def slow_requests(cluster: Cluster) -> list[dict[str, Any]]:
    """Each host's own account of its slow requests (`http_request` at the warning level),
    slowest first: what a host nginx gave up on was doing."""
    fields = ("method", "path", "status", "duration_ms", "timestamp")
    slow = [{"host": host, **{k: entry.get(k) for k in fields}}
            for host in range(len(cluster.hosts))
            for line in cluster.logs(host).splitlines() if '"slow": true' in line
            for entry in [json.loads(line)]]
    return sorted(slow, key=lambda e: -e["duration_ms"])


def describe(out: dict[str, Any]) -> None:
    if "turns" not in out:
        return
    oc = out["outcomes"]
    other = sum(v for k, v in oc.items() if k not in ("result", "error turn_lost"))
    stops = ", ".join(f"{r['stop_s']:.1f}" for r in out["restarts"])
    starts = ", ".join(f"{r['start_s']:.1f}" for r in out["restarts"])
    log(f"  rolling restart {out['restart_s']:.1f} s, settled {fmt_s(out['settled_s'])} after the first SIGTERM;"
        f" each host's stop {stops} s, start {starts} s")
    log(f"  client-visible 5xx: {out['five_xx']}, no response: {out['no_response']} (target 0), of"
        f" {out['seen_responses']} responses")
    for p in out["nginx_5xx"][:8]:
        log(f"    {p['status']} {p['method']} {p['path']}: passed to {p['upstreams']}, answers {p['upstream_statuses']}")
    log(f"  requests a host logged as slow (>= 1 s, not streams): {out['slow_requests']}")
    for e in out["slowest"][:4]:
        log(f"    host {e['host']}: {e['method']} {e['path']} {e['status']} in {e['duration_ms']:.0f} ms at {e['timestamp']}")
    for message, count in out["nginx_errors"].items():
        log(f"    nginx error log: {count} x {message[:150]}")
    others = sorted(k for k in oc if k not in ("result", "error turn_lost"))
    log(f"  turns: {out['turns']} ({out['turns_per_s']:.1f}/s): {oc.get('result', 0)} result,"
        f" {oc.get('error turn_lost', 0)} turn_lost, {other} other {others}")
    log(f"  streams with a gap or repeat: {out['streams_with_gap']}; stream connects {out['stream_connects']}")
    s, d = out["turn_ms_steady"], out["turn_ms_during"]
    log(f"  turn latency p50/p99: steady {fmt_ms(s['p50'])}/{fmt_ms(s['p99'])} ms,"
        f" during the restart {fmt_ms(d['p50'])}/{fmt_ms(d['p99'])} ms")


def fmt_s(x: float | None) -> str:
    return "never" if x is None else f"{x:.1f} s"


def rows(results: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    c = results.get("cluster") or {}
    if "turns" not in c:
        return []
    oc = c["outcomes"]
    other = sum(v for k, v in oc.items() if k not in ("result", "error turn_lost"))
    bad_exits = sum(1 for _, code in c.get("exit_codes", []) if code != 0)
    s, d = c["turn_ms_steady"], c["turn_ms_during"]
    return [
        (f"cluster: {c['sessions']} sessions, 3 hosts, rolling restart: took / settled (s)",
         f"{c['restart_s']:.0f} / {fmt_s(c['settled_s'])}", "(not run)", ""),
        ("  client-visible 5xx / no response (target 0)", f"{c['five_xx']} / {c['no_response']}", "", ""),
        ("  turns: result / turn_lost / other", f"{oc.get('result', 0)} / {oc.get('error turn_lost', 0)} / {other}",
         "", ""),
        ("  streams with a gap / daemon exits != 0", f"{c['streams_with_gap']} / {bad_exits}", "", ""),
        ("  turn p50 (ms): steady / during the restart", f"{fmt_ms(s['p50'])} / {fmt_ms(d['p50'])}", "", ""),
    ]
