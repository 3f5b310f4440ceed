"""`make soak`: the daemon under mixed load for a while (default 10 minutes), failing on
any 5xx, any lost or repeated event id, any CLI process left behind, or memory or file
descriptors growing after the warm-up by more than 5%.

    .venv/bin/python -m bench.soak [--duration 600] [--sessions 100] [--subscribers 3]

One daemon (the default SQLite store, the scripted CLI, `max_live_agents` below the
session count and a short `hibernate_after_s`, so sessions keep hibernating and waking)
and one worker per session. Each worker keeps several subscribers on its session's
stream; they reconnect now and then with Last-Event-ID and check that the ids they get
go on by one. The worker sends messages whose turns stream text, ask for a tool
permission or an AskUserQuestion answer (every subscriber races to answer: exactly one
wins, the others get 409), or run long enough to be interrupted; now and then it pauses
past hibernate_after_s (the next message wakes the session), or deletes the session and
creates another (its subscribers end on `done`). The daemon's RSS and open file
descriptors are sampled throughout. Growth is judged from the end of the warm-up (the
first 40% of the run: allocator arenas and SQLite's page caches fill up over the first
five minutes or so, then stay flat) to the last sample before the workers wind down, and
only for runs of 5 minutes or more; the short run in `make test` (tests/test_soak.py)
checks everything else.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.hibernation import fast_launcher  # noqa: E402
from bench.servers import Ours  # noqa: E402

HIBERNATE_AFTER_S = 3.0
GROWTH_MIN_RUN_S = 300.0
WARM_UP_SHARE = 0.4
SAMPLE_EVERY_S = 2.0
WRITE = {"tool_use": {"name": "Write", "input": {"file_path": "out.txt", "content": "hi"}}, "permission": True}
ASK = {"ask": {"questions": [{"question": "Which color?", "header": "Color", "multiSelect": False,
                              "options": [{"label": "Blue", "description": "b"}, {"label": "Red", "description": "r"}]}]}}
# The turns a session's CLI plays in order (a woken CLI carries on where it was).
TURN_KINDS = {
    "stream": {"steps": [{"events": 40, "text": "soak " * 10}, {"text": "done streaming", "delay": 0.01}]},
    "permission": {"steps": [{"text": "writing"}, WRITE, {"text": "written"}]},
    "question": {"steps": [ASK, {"text": "thanks"}]},
    "slow": {"steps": [{"text": "thinking"}, {"sleep": 3}, {"text": "finished"}]},
}
CYCLE = ["stream", "permission", "stream", "question", "slow", "stream", "permission", "stream"]


@dataclass
class Tally:
    server_errors: list[str] = field(default_factory=list)
    lost: int = 0
    repeated: int = 0
    created: int = 0
    deleted: int = 0
    turns: int = 0
    decisions_raced: int = 0
    races_won_twice: int = 0
    interrupts: int = 0
    reconnects: int = 0
    pauses: int = 0
    events: int = 0

    def http(self, what: str, status: int) -> None:
        if status >= 500 and status not in (503,):
            self.server_errors.append(f"{what} -> {status}")


class Subscriber:
    """One stream reader that reconnects with Last-Event-ID and checks ids go on by one."""

    def __init__(self, worker: Worker, index: int) -> None:
        self.worker, self.index = worker, index
        self.last_id = 0
        self.done = asyncio.Event()
        self.task = asyncio.create_task(self.run())

    async def run(self) -> None:
        w = self.worker
        while not self.done.is_set():
            headers = {"Last-Event-ID": str(self.last_id)}
            try:
                async with w.http.get(f"{w.base}/sessions/{w.session_id}/stream", headers=headers) as resp:
                    w.tally.http("stream", resp.status)
                    if resp.status != 200:  # deleted while this one was reconnecting
                        self.done.set()
                        return
                    deadline = time.monotonic() + random.uniform(5, 30)  # then reconnect
                    ident, name = 0, ""
                    async for raw in resp.content:
                        line = raw.decode().rstrip("\n")
                        if line.startswith("id: "):
                            ident = int(line[4:])
                        elif line.startswith("event: "):
                            name = line[7:]
                        elif line.startswith("data: ") and ident:
                            self.seen(ident, name, json.loads(line[6:]))
                            if name == "done":
                                self.done.set()
                                return
                            ident = 0
                        if time.monotonic() > deadline:
                            break
            except (TimeoutError, aiohttp.ClientError):
                pass
            if not self.done.is_set():
                w.tally.reconnects += 1

    def seen(self, ident: int, name: str, data: Any) -> None:
        tally = self.worker.tally
        if ident <= self.last_id:
            tally.repeated += 1
            return
        if ident != self.last_id + 1:
            tally.lost += ident - self.last_id - 1
        self.last_id = ident
        tally.events += 1
        if self.index == 0:  # one subscriber drives the worker
            self.worker.inbox.put_nowait((name, data))


class Worker:
    def __init__(self, base: str, http: aiohttp.ClientSession, tally: Tally, subscribers: int, cwd_of: Any) -> None:
        self.base, self.http, self.tally, self.n_subs, self.cwd_of = base, http, tally, subscribers, cwd_of
        self.session_id = ""
        self.subs: list[Subscriber] = []
        self.inbox: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

    async def post(self, path: str, body: Any) -> tuple[int, Any]:
        async with self.http.post(self.base + path, json=body) as resp:
            self.tally.http(path.rsplit("/", 1)[-1], resp.status)
            text = await resp.text()
            return resp.status, json.loads(text) if text else None

    async def open(self) -> None:
        while True:
            status, body = await self.post("/sessions", {"cwd": str(self.cwd_of())})
            if status == 200:
                break
            await asyncio.sleep(1)  # at capacity or agents_busy: try again
        self.session_id = body["session_id"]
        self.tally.created += 1
        self.inbox = asyncio.Queue()
        self.subs = [Subscriber(self, i) for i in range(self.n_subs)]

    async def close(self) -> None:
        async with self.http.delete(f"{self.base}/sessions/{self.session_id}") as resp:
            self.tally.http("delete", resp.status)
        for sub in self.subs:
            try:
                await asyncio.wait_for(sub.done.wait(), 15)
            except TimeoutError:
                sub.task.cancel()
        self.tally.deleted += 1

    async def turn(self) -> None:
        status, _ = await self.post(f"/sessions/{self.session_id}/input",
                                    {"type": "user_message", "content": "go on"})
        if status != 204:
            await asyncio.sleep(0.5)  # backpressure: the queue is full
            return
        deadline = time.monotonic() + 60
        interrupted = False
        while time.monotonic() < deadline:
            try:
                name, data = await asyncio.wait_for(self.inbox.get(), 5)
            except TimeoutError:
                continue
            if name in ("permission_request", "ask_user_question"):
                await self.race(name, data)
            elif name == "message_complete" and not interrupted and "thinking" in json.dumps(data):
                interrupted = True
                await asyncio.sleep(0.3)
                await self.post(f"/sessions/{self.session_id}/input", {"type": "interrupt"})
                self.tally.interrupts += 1
            elif name == "result":
                self.tally.turns += 1
                return
            elif name == "error" and data.get("code") in ("wake_failed", "agent_exited", "turn_stalled"):
                self.tally.server_errors.append(f"error event {data}")
                return

    async def race(self, name: str, request: dict[str, Any]) -> None:
        """Every subscriber answers at once: exactly one may win."""
        cid = request["correlation_id"]
        reply = ({"type": "permission_response", "correlation_id": cid, "behavior": "allow"}
                 if name == "permission_request"
                 else {"type": "question_response", "correlation_id": cid, "answers": {"Which color?": "Blue"}})
        statuses = await asyncio.gather(*(self.post(f"/sessions/{self.session_id}/input", reply)
                                          for _ in self.subs))
        wins = [s for s, _ in statuses if s == 204]
        self.tally.decisions_raced += 1
        if len(wins) != 1 or any(s not in (204, 409) for s, _ in statuses):
            self.tally.races_won_twice += 1

    async def run(self, until: float) -> None:
        await self.open()
        while time.monotonic() < until:
            roll = random.random()
            if roll < 0.05:
                await self.close()
                await self.open()
            elif roll < 0.12:
                self.tally.pauses += 1  # long enough to hibernate: the next turn wakes it
                await asyncio.sleep(HIBERNATE_AFTER_S + random.uniform(1, 3))
            else:
                await self.turn()
        await self.close()


def fds(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


async def run(duration_s: float, sessions: int, subscribers: int, workdir: Path) -> dict[str, Any]:
    scenario = {"turns": [TURN_KINDS[k] for k in CYCLE * 50]}
    server = Ours(workdir, "soak", max_sessions=sessions + 10, sqlite_path=workdir / "soak.db",
                  sessions={"max_live_agents": max(2, sessions * 3 // 10), "hibernate_after_s": HIBERNATE_AFTER_S,
                            "idle_timeout_s": 3600, "inbound_queue_size": 4},
                  agent={"cli_path": str(fast_launcher(workdir)), "permission_mode": "default"})
    await server.start()
    assert server.proc is not None
    tally = Tally()
    samples: list[tuple[float, int, int]] = []
    started = time.monotonic()
    until = started + duration_s
    try:
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as http:
            workers = [Worker(f"http://{server.host}:{server.port}", http, tally, subscribers,
                              lambda: server.session_dir(scenario)) for _ in range(sessions)]
            tasks = [asyncio.create_task(w.run(until)) for w in workers]
            while not all(t.done() for t in tasks):
                samples.append((time.monotonic() - started, server.rss_kib(), fds(server.proc.pid)))
                await asyncio.wait(tasks, timeout=SAMPLE_EVERY_S)
            for task in tasks:
                task.result()  # a worker that crashed is a bench bug: say so
            async with http.get(f"http://{server.host}:{server.port}/metrics") as resp:
                metrics = await resp.text()
    finally:
        stop = await server.stop()
    warm = [s for s in samples if duration_s * WARM_UP_SHARE <= s[0] <= duration_s]
    base_rss, base_fds = (warm[0][1], warm[0][2]) if warm else (0, 0)
    end_rss, end_fds = (warm[-1][1], warm[-1][2]) if warm else (0, 0)  # before the wind-down
    wakes = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                if line.startswith("agent_webkit_wakes_total{") and 'outcome="ok"' in line)
    result = {
        "duration_s": duration_s, "sessions": sessions, "subscribers": subscribers, **tally.__dict__,
        "server_errors": tally.server_errors[:10], "server_error_count": len(tally.server_errors),
        "wakes": wakes, "rss_kib_after_warmup": base_rss, "rss_kib_end": end_rss,
        "fds_after_warmup": base_fds, "fds_end": end_fds,
        "rss_growth": (end_rss - base_rss) / base_rss if base_rss else 0.0,
        "fds_growth": (end_fds - base_fds) / base_fds if base_fds else 0.0,
        "cli_left": stop.get("cli_left_after_stop", 0), "exit_code": stop.get("exit_code"),
        "samples": [{"t": round(t, 1), "rss_kib": rss, "fds": n} for t, rss, n in samples],
    }
    result["failures"] = failures(result, judge_growth=duration_s >= GROWTH_MIN_RUN_S)
    return result


def failures(r: dict[str, Any], *, judge_growth: bool) -> list[str]:
    out = []
    if r["server_error_count"]:
        out.append(f"{r['server_error_count']} server errors, e.g. {r['server_errors'][:3]}")
    if r["lost"] or r["repeated"]:
        out.append(f"events lost {r['lost']}, repeated {r['repeated']}")
    if r["races_won_twice"]:
        out.append(f"{r['races_won_twice']} decision races without exactly one winner")
    if r["cli_left"]:
        out.append(f"{r['cli_left']} CLI processes left behind")
    if r["exit_code"] not in (0, None):
        out.append(f"the daemon exited {r['exit_code']}")
    if judge_growth and r["rss_growth"] > 0.05:
        out.append(f"memory grew {r['rss_growth']:.1%} after the warm-up")
    if judge_growth and r["fds_growth"] > 0.05 and r["fds_end"] - r["fds_after_warmup"] > 5:
        out.append(f"file descriptors grew {r['fds_growth']:.1%} after the warm-up")
    if not r["turns"] or not r["decisions_raced"]:
        out.append("the soak did not get going (no turns or no decisions)")
    return out


def report(r: dict[str, Any]) -> str:
    return (
        f"soak: {r['duration_s']:.0f} s, {r['sessions']} sessions x {r['subscribers']} subscribers\n"
        f"  sessions created {r['created']}, deleted {r['deleted']}; turns {r['turns']}; events seen {r['events']:,}\n"
        f"  decisions raced {r['decisions_raced']} (exactly one winner each: {not r['races_won_twice']});"
        f" interrupts {r['interrupts']}; reconnects {r['reconnects']}; pauses {r['pauses']}; wakes {r['wakes']:.0f}\n"
        f"  5xx {r['server_error_count']}; events lost {r['lost']}, repeated {r['repeated']};"
        f" CLI processes left {r['cli_left']}; daemon exit {r['exit_code']}\n"
        f"  daemon RSS {r['rss_kib_after_warmup'] / 1024:.1f} -> {r['rss_kib_end'] / 1024:.1f} MiB ({r['rss_growth']:+.1%}),"
        f" open files {r['fds_after_warmup']} -> {r['fds_end']} ({r['fds_growth']:+.1%}) after the warm-up\n"
        + ("  FAILED: " + "; ".join(r["failures"]) if r["failures"] else "  OK")
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds (default 600)")
    parser.add_argument("--sessions", type=int, default=100)
    parser.add_argument("--subscribers", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="agent-webkitd-soak-") as tmp:
        result = asyncio.run(run(args.duration, args.sessions, args.subscribers, Path(tmp)))
    print(report(result), flush=True)
    out = ROOT / "bench" / "results" / f"soak-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    return 1 if result["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
