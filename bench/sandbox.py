"""`make bench` phase `sandbox` (ours only; DESIGN.md §12): what confining every CLI costs.

  sandbox  the SDK's real bundled CLI and the stand-in model (tests/standin/fake_model.py, in
           a process of its own), daemons side by side in one run, one with
           `[agent] sandbox = "bwrap"` (network "none": the model through socat and the
           gateway's Unix socket), one with `sandbox = "none"`; their samples interleaved
           (bwrap, none, none, bwrap, ...: the order flips every pair, so drift cancels), and
           every ratio bwrap / none from this run:
           - cold create: POST /sessions with warm_agents = 0, until it returns (the CLI
             connected, `session_ready` out); p50 and p99, target ratio <= 1.15
           - wake: a hibernated session's next message -> the turn's first streamed model
             output, as the `wake` phase measures it; target ratio <= 1.15; and the same for
             a message to it right after, live (its CLI's model connection kept alive)
           - warm create: warm_agents = 1, sequential creates, each once both pools have
             refilled; target (sandboxed) p50 <= 10 ms, p99 <= 50 ms
           - memory: the PSS of each sandbox's own processes (the two bwrap, socat and its
             per-connection children), per live CLI after a turn each; the CLI's own PSS in
             and out of the sandbox, for scale
           - gateway: POST /v1/messages?beta=true, a streamed reply from the stand-in, time to
             the response's first body byte: directly, and through a ModelGateway in this
             process over TCP (how an unconfined CLI reaches it), over its Unix socket, and
             over its Unix socket behind a socat bridge started with the very addresses and
             options of agents/sandbox.py's BRIDGE (how a sandboxed CLI reaches it); on
             kept-alive connections (as the CLI sends its requests) and on a new connection
             per request; target +2 ms p50

Every daemon keeps the CLI offline: `[agent] env` holds the stand-in's offline switches,
`[model] upstream_url` is the stand-in, the daemon's ANTHROPIC_API_KEY is a placeholder.
The bench's process marker is in `[agent] env` too, so the CLI carries it inside the sandbox
(whose environment is otherwise the daemon's explicit list) and the leftover check finds it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
import sys
import time
import tomllib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import structlog

from bench.hibernation import REAL_TURNS, create, first_output, say, wait_state
from bench.servers import MARK_ENV, ROOT, Ours, free_port

if TYPE_CHECKING:
    from bench.run import Bench

MODES = ("bwrap", "none")
MODEL_KEY = "bench-placeholder-key"  # the daemon's "real" credential; the stand-in takes any
# Dropped from the stand-in's offline switches: the daemon sets these for each CLI itself.
DAEMONS_OWN = ("ANTHROPIC_BASE_URL", "ANTHROPIC_API_KEY", "CLAUDE_CONFIG_DIR")
COLD_SETTLE_S = 0.3  # after a delete, before the next sample: the stopped CLI is gone
WARM_SETTLE_S = 0.5  # after both pools refilled: a new CLI's start-up work has ended
HIBERNATE_AFTER_S = 1.5  # longer than one wake, so none hibernates during another's wake
SANDBOX_COMMS = ("bwrap", "socat")  # a sandbox's own processes; anything else is the agent
TARGET_RATIO = 1.15
TARGET_WARM_P50_MS, TARGET_WARM_P99_MS = 10.0, 50.0
TARGET_GATEWAY_MS = 2.0
GATEWAY_BODY = {
    "model": "claude-bench",
    "max_tokens": 64,
    "stream": True,
    "messages": [{"role": "user", "content": "hello from the bench"}],
}
GATEWAY_PATHS = ("direct", "gateway_tcp", "gateway_unix", "gateway_socat")


def log(*parts: Any) -> None:
    print(*parts, flush=True)


def percentile(values: list[float], q: float) -> float | None:
    from bench.run import percentile as p

    return p(values, q)


def fmt_ms(x: float | None) -> str:
    from bench.run import fmt_ms as f

    return f(x)


def summary(xs: list[float]) -> dict[str, Any]:
    return {"ms": xs, "n": len(xs), "p50_ms": percentile(xs, 50), "p99_ms": percentile(xs, 99)}


def ratios(out: dict[str, Any]) -> None:
    """bwrap / none for p50 and p99, in place."""
    for q in ("p50", "p99"):
        a, b = out["bwrap"][f"{q}_ms"], out["none"][f"{q}_ms"]
        out[f"{q}_ratio"] = a / b if a and b else None


def pairs(n: int) -> list[tuple[str, str]]:
    """n rounds of both modes, the order flipped every round (bwrap none, none bwrap, ...)."""
    return [MODES if i % 2 == 0 else MODES[::-1] for i in range(n)]


# --- the stand-in model and the daemons --------------------------------------------------


@contextlib.asynccontextmanager
async def fake_model(tmp: Path) -> AsyncIterator[str]:
    """The stand-in Messages API in a process of its own (so its work is not on the bench's
    event loop, which times the gateway); yields its base URL."""
    with open(tmp / "fake-model.log", "wb") as errors:  # noqa: ASYNC230 - once per phase
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.standin.fake_model", "--port", "0",
            cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=errors,
        )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        if not line.startswith("listening on "):
            raise RuntimeError(f"the stand-in model did not start: {line!r}")
        yield line.split()[-1]
    finally:
        if proc.returncode is None:
            proc.terminate()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 10)
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def offline_env(model_url: str) -> dict[str, str]:
    from tests.standin.fixtures import offline_cli_env

    env = offline_cli_env(model_url, Path("/nonexistent"))
    return {k: v for k, v in env.items() if k not in DAEMONS_OWN}


def daemon(bench: Bench, label: str, model_url: str, *, sandbox: str, warm_agents: int,
           hibernate_after_s: float = 0) -> Ours:
    """Ours with the real bundled CLI, kept offline, in `sandbox` mode; sessions in their own
    workspaces (no [agent] cwd)."""
    from tests.standin.toml_writer import dump_toml

    server = Ours(bench.tmp, label, sessions={"hibernate_after_s": hibernate_after_s},
                  agent={"cli_path": "", "cwd": "", "warm_agents": warm_agents, "sandbox": sandbox,
                         "network": "none"},
                  env={"ANTHROPIC_API_KEY": MODEL_KEY})
    config = tomllib.loads(server.config_path.read_text())
    config["agent"]["env"] = {**offline_env(model_url), MARK_ENV: server.mark}
    config["model"] = {"upstream_url": model_url}
    server.config_path.write_text(dump_toml(config))
    return server


async def delete(server: Ours, sid: str) -> None:
    status = await server.delete(sid, timeout=60)
    if status != 204:
        raise RuntimeError(f"{server.label}: delete -> {status}")


async def until_all_warm(servers: dict[str, Ours]) -> None:
    for server in servers.values():
        await server.until_warm(1, timeout=60)


# --- processes -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    comm: str


def processes() -> dict[int, Proc]:
    found: dict[int, Proc] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = (entry / "stat").read_text()
            comm = stat[stat.index("(") + 1 : stat.rindex(")")]
            fields = stat[stat.rindex(")") + 2 :].split()
            if fields[0] != "Z":
                found[int(entry.name)] = Proc(int(entry.name), int(fields[1]), comm)
    return found


def descendants(root: int) -> list[Proc]:
    every = processes()
    children: dict[int, list[Proc]] = {}
    for p in every.values():
        children.setdefault(p.ppid, []).append(p)
    out: list[Proc] = []
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child.pid)
    return out


def memory_kib(pid: int) -> tuple[int, int]:
    """(PSS, RSS) of one process from /proc/<pid>/smaps_rollup, in KiB; 0s if it is gone."""
    pss = rss = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                pss = int(line.split()[1])
            elif line.startswith("Rss:"):
                rss = int(line.split()[1])
    return pss, rss


def agent_memory(server: Ours) -> dict[str, Any]:
    """The daemon's process tree, split into the sandboxes' own processes and the agents
    (a CLI is an agent process whose parent is not one: the daemon's child unconfined, the
    inner bwrap's child in a sandbox)."""
    assert server.proc is not None
    tree = descendants(server.proc.pid)
    by_pid = {p.pid: p for p in tree}
    sandbox = [p for p in tree if p.comm in SANDBOX_COMMS]
    agents = [p for p in tree if p.comm not in SANDBOX_COMMS]
    clis = [p for p in agents if p.ppid not in by_pid or by_pid[p.ppid].comm in SANDBOX_COMMS]
    mem = {p.pid: memory_kib(p.pid) for p in tree}
    n = max(1, len(clis))
    return {
        "clis": len(clis), "cli_comms": sorted({p.comm for p in clis}),
        "sandbox_processes": {c: sum(1 for p in sandbox if p.comm == c) for c in SANDBOX_COMMS},
        "agent_processes": len(agents),
        "sandbox_pss_kib": sum(mem[p.pid][0] for p in sandbox),
        "sandbox_rss_kib": sum(mem[p.pid][1] for p in sandbox),
        "agent_pss_kib": sum(mem[p.pid][0] for p in agents),
        "agent_rss_kib": sum(mem[p.pid][1] for p in agents),
        "sandbox_pss_per_cli_kib": sum(mem[p.pid][0] for p in sandbox) / n,
        "sandbox_rss_per_cli_kib": sum(mem[p.pid][1] for p in sandbox) / n,
        "agent_pss_per_cli_kib": sum(mem[p.pid][0] for p in agents) / n,
    }


# --- the measurements ----------------------------------------------------------------------


async def timed_create(server: Ours) -> float:
    """One POST /sessions, in ms; the session is deleted again."""
    t = time.monotonic()
    sid = await create(server)
    ms = (time.monotonic() - t) * 1000
    await delete(server, sid)
    return ms


async def cold_creates(servers: dict[str, Ours], n: int) -> dict[str, Any]:
    """POST /sessions with no warm CLI, interleaved; a first pair not counted (page cache)."""
    lat: dict[str, list[float]] = {m: [] for m in MODES}
    for i, order in enumerate(pairs(n + 1)):
        for mode in order:
            ms = await timed_create(servers[mode])
            if i:
                lat[mode].append(ms)
            await asyncio.sleep(COLD_SETTLE_S)
    out: dict[str, Any] = {m: summary(lat[m]) for m in MODES}
    ratios(out)
    return out


async def wakes(servers: dict[str, Ours], sessions: int, rounds: int, turns: int) -> dict[str, Any]:
    """`sessions` sessions per daemon with a `turns`-turn conversation; then `rounds` times,
    session by session, the pair (bwrap's i-th, none's i-th) woken one after the other, each
    given another message at once (live: the CLI's model connection kept alive), and both left
    to hibernate again before the next pair: no CLI stops during a wake."""
    base = {m: f"http://{s.host}:{s.port}" for m, s in servers.items()}
    sids: dict[str, list[str]] = {m: [] for m in MODES}
    cursors: dict[str, int] = {}
    lat: dict[str, list[float]] = {m: [] for m in MODES}
    live: dict[str, list[float]] = {m: [] for m in MODES}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as http:

        async def turn(mode: str, sid: str, text: str, expect_wake: bool | None = None) -> float:
            server = servers[mode]
            s, cursors[sid] = await first_output(http, base[mode], sid, cursors[sid],
                                                 functools.partial(say, server, sid, text), expect_wake)
            return s * 1000

        for mode in MODES:
            for _ in range(sessions):
                sid = await create(servers[mode])
                sids[mode].append(sid)
                cursors[sid] = 1
                for i in range(turns):
                    await turn(mode, sid, f"turn {i}")
        for mode in MODES:
            await wait_state(servers[mode], sids[mode], "hibernated", timeout_s=60)
        for r in range(rounds * sessions):
            i = r % sessions  # session by session; the order flips every pair and every round
            order = MODES if (r + r // sessions) % 2 == 0 else MODES[::-1]
            for mode in order:
                lat[mode].append(await turn(mode, sids[mode][i], f"wake {r}", expect_wake=True))
                live[mode].append(await turn(mode, sids[mode][i], f"live {r}", expect_wake=False))
            for mode in MODES:
                await wait_state(servers[mode], [sids[mode][i]], "hibernated", timeout_s=60)
    for mode in MODES:
        for sid in sids[mode]:
            await delete(servers[mode], sid)
    out: dict[str, Any] = {m: summary(lat[m]) for m in MODES}
    out.update(sessions=sessions, rounds=rounds, turns=turns)
    ratios(out)
    out["live"] = {m: summary(live[m]) for m in MODES}
    ratios(out["live"])
    return out


async def warm_creates(servers: dict[str, Ours], n: int) -> dict[str, Any]:
    """Sequential creates served by the warm CLI, each once both daemons' pools have
    refilled and settled; a first pair not counted."""
    lat: dict[str, list[float]] = {m: [] for m in MODES}
    for i, order in enumerate(pairs(n + 1)):
        for mode in order:
            await until_all_warm(servers)
            await asyncio.sleep(WARM_SETTLE_S)
            ms = await timed_create(servers[mode])
            if i:
                lat[mode].append(ms)
    from bench.run import metric_value

    out: dict[str, Any] = {m: summary(lat[m]) for m in MODES}
    for mode in MODES:
        _, metrics = await servers[mode].call("GET", "/metrics")
        out[mode]["served_warm"] = metric_value(str(metrics), "agent_webkit_creates_total", 'start="warm"')
        out[mode]["served_cold"] = metric_value(str(metrics), "agent_webkit_creates_total", 'start="cold"')
    ratios(out)
    return out


async def live_memory(servers: dict[str, Ours], sessions: int) -> dict[str, Any]:
    """`sessions` live sessions per daemon after one turn each (so every CLI holds its model
    connection, and with it a socat child), plus the warm CLI: the process trees' memory."""
    out: dict[str, Any] = {}
    sids: dict[str, list[str]] = {m: [] for m in MODES}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as http:
        for mode in MODES:
            server = servers[mode]
            base = f"http://{server.host}:{server.port}"
            for _ in range(sessions):
                sid = await create(server)
                sids[mode].append(sid)
                await first_output(http, base, sid, 1, functools.partial(say, server, sid, "hello"))
    await until_all_warm(servers)
    await asyncio.sleep(1.0)
    for mode in MODES:
        out[mode] = agent_memory(servers[mode])
    for mode in MODES:
        for sid in sids[mode]:
            await delete(servers[mode], sid)
    return out


async def timed_request(http: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> tuple[float, float]:
    """(ms to the first body byte, ms to the end) of one streamed reply."""
    t = time.monotonic()
    async with http.post(url, json=GATEWAY_BODY, headers=headers) as resp:
        if resp.status != 200:
            raise RuntimeError(f"{url}: {resp.status} {(await resp.text())[:200]}")
        first = await resp.content.readany()
        ttfb = time.monotonic() - t
        rest = await resp.read()
    if b"message_start" not in first + rest or b"message_stop" not in first + rest:
        raise RuntimeError(f"{url}: not a streamed reply: {(first + rest)[:200]!r}")
    return ttfb * 1000, (time.monotonic() - t) * 1000


def connector(path: str, sock: Path, force_close: bool) -> aiohttp.BaseConnector:
    if path == "gateway_unix":
        return aiohttp.UnixConnector(str(sock), force_close=force_close)
    return aiohttp.TCPConnector(force_close=force_close)


def bridge_addresses(port: int, socket_path: Path) -> tuple[str, str]:
    """socat's two addresses as agents/sandbox.py's BRIDGE has them (its options included),
    on another port and socket."""
    from agent_webkitd.agents import sandbox

    found = re.search(r"socat (TCP-LISTEN:\S+) (UNIX-CONNECT:\S+)", sandbox.BRIDGE)
    if found is None:
        raise RuntimeError(f"no socat command in agents/sandbox.py's BRIDGE: {sandbox.BRIDGE!r}")
    listen, connect = found.groups()
    return (listen.replace(f"TCP-LISTEN:{sandbox.BRIDGE_PORT}", f"TCP-LISTEN:{port}", 1),
            connect.replace(sandbox.SOCKET_INSIDE, str(socket_path), 1))


@contextlib.asynccontextmanager
async def socat_bridge(socket_path: Path) -> AsyncIterator[int]:
    """The bridge a sandboxed CLI reaches the gateway through (agents/sandbox.py's BRIDGE),
    here on a free loopback port; yields the port."""
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        "socat", *bridge_addresses(port, socket_path),
        env={}, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                if time.monotonic() > deadline or proc.returncode is not None:
                    raise RuntimeError("socat did not listen") from None
                await asyncio.sleep(0.02)
                continue
            writer.close()
            break
        yield port
    finally:
        if proc.returncode is None:
            proc.terminate()
            await proc.wait()


async def gateway_latency(tmp: Path, model_url: str, n: int) -> dict[str, Any]:
    """A ModelGateway in this process against the stand-in: first body byte and whole reply,
    directly and through the gateway three ways, interleaved request by request."""
    from agent_webkitd.agents.gateway import Credential, ModelGateway

    # The bench daemons log at warning; at the default level (info) the gateway adds one
    # `model_request` log line per request.
    quiet = structlog.wrap_logger(
        structlog.PrintLogger(sys.stderr),
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
    )
    sock = tmp / "gateway-bench.sock"
    gateway = ModelGateway(model_url, Credential("x-api-key", MODEL_KEY), sock, tcp=True, logger=quiet)
    await gateway.start()
    key = gateway.issue_key()
    out: dict[str, Any] = {"requests": n}
    try:
        async with socat_bridge(sock) as bridge_port:
            assert gateway.tcp_url is not None
            urls = {
                "direct": model_url, "gateway_tcp": gateway.tcp_url,
                "gateway_unix": "http://gateway", "gateway_socat": f"http://127.0.0.1:{bridge_port}",
            }
            headers = {"anthropic-version": "2023-06-01", "x-api-key": key}
            for mode, force_close in (("keepalive", False), ("new_connection", True)):
                clients = {p: aiohttp.ClientSession(connector=connector(p, sock, force_close))
                           for p in GATEWAY_PATHS}
                ttfb: dict[str, list[float]] = {p: [] for p in GATEWAY_PATHS}
                total: dict[str, list[float]] = {p: [] for p in GATEWAY_PATHS}
                try:
                    for i in range(n + 10):  # 10 rounds of warm-up, not counted
                        k = i % len(GATEWAY_PATHS)  # rotate who goes first
                        for path in GATEWAY_PATHS[k:] + GATEWAY_PATHS[:k]:
                            url = urls[path] + "/v1/messages?beta=true"
                            first, whole = await timed_request(clients[path], url, headers)
                            if i >= 10:
                                ttfb[path].append(first)
                                total[path].append(whole)
                finally:
                    for client in clients.values():
                        await client.close()
                part = out[mode] = {}
                for path in GATEWAY_PATHS:
                    part[path] = {"ttfb": summary(ttfb[path]), "total": summary(total[path])}
                direct = part["direct"]["ttfb"]["p50_ms"]
                for path in GATEWAY_PATHS[1:]:
                    part[path]["added_p50_ms"] = part[path]["ttfb"]["p50_ms"] - direct
                    part[path]["added_total_p50_ms"] = (part[path]["total"]["p50_ms"]
                                                        - part["direct"]["total"]["p50_ms"])
    finally:
        gateway.revoke(key)
        await gateway.stop()
    return out


# --- the phase -----------------------------------------------------------------------------


async def started(bench: Bench, servers: dict[str, Ours]) -> dict[str, Ours]:
    for server in servers.values():
        await bench.start(server)
    return servers


async def with_daemons(bench: Bench, servers: dict[str, Ours], out: dict[str, Any],
                       body: Callable[[dict[str, Ours]], Awaitable[None]]) -> None:
    try:
        await body(await started(bench, servers))
    finally:
        for mode, server in servers.items():
            if server.proc is not None:
                out.setdefault("stops", {})[server.label] = await bench.stop(server)
                if out["stops"][server.label].get("cli_left_after_stop"):
                    log(f"  !! {mode}: CLI processes left after stop")


async def phase_sandbox(bench: Bench) -> dict[str, Any]:
    a = bench.args
    n = a.sandbox_samples
    wake_sessions = 2 if a.quick else 4
    wake_rounds = max(1, -(-n // wake_sessions))
    turns = 5 if a.quick else REAL_TURNS
    live = 2 if a.quick else 4
    requests = 50 if a.quick else 300
    log(f"\n== sandbox (ours only, real CLI + stand-in model): bwrap vs none, interleaved: {n} cold creates each;"
        f" {wake_sessions * wake_rounds} wakes each ({wake_sessions} sessions with a {turns}-turn conversation);"
        f" {n} warm creates each; the sandbox's memory per live CLI ({live} sessions + the warm CLI);"
        f" the gateway's first byte, {requests} requests each way")
    out: dict[str, Any] = bench.results.setdefault("sandbox", {})
    async with fake_model(bench.tmp) as model_url:

        async def cold_and_wake(servers: dict[str, Ours]) -> None:
            out["cold"] = cold = await cold_creates(servers, n)
            log(f"  cold create: {describe(cold)}")
            out["wake"] = wake = await wakes(servers, wake_sessions, wake_rounds, turns)
            log(f"  wake, POST -> first output: {describe(wake)}")
            log(f"  the same session live at once after, POST -> first output: {describe(wake['live'])}")

        await with_daemons(bench, {
            mode: daemon(bench, f"ours-sandbox-{mode}", model_url, sandbox=mode, warm_agents=0,
                         hibernate_after_s=HIBERNATE_AFTER_S)
            for mode in MODES}, out, cold_and_wake)

        async def warm_and_memory(servers: dict[str, Ours]) -> None:
            out["warm"] = warm = await warm_creates(servers, n)
            log(f"  warm create: {describe(warm)}; served warm {warm['bwrap']['served_warm']:.0f} /"
                f" {warm['none']['served_warm']:.0f}, cold {warm['bwrap']['served_cold']:.0f} /"
                f" {warm['none']['served_cold']:.0f} (bwrap / none)")
            out["memory"] = mem = await live_memory(servers, live)
            b, u = mem["bwrap"], mem["none"]
            log(f"  memory, {b['clis']} live CLIs each: the sandbox's own processes"
                f" ({', '.join(f'{c} {k}' for c, k in b['sandbox_processes'].items())})"
                f" PSS {b['sandbox_pss_per_cli_kib'] / 1024:.1f} MiB (RSS {b['sandbox_rss_per_cli_kib'] / 1024:.1f} MiB)"
                f" per live CLI; the CLI itself PSS {b['agent_pss_per_cli_kib'] / 1024:.0f} MiB sandboxed,"
                f" {u['agent_pss_per_cli_kib'] / 1024:.0f} MiB unconfined ({u['clis']} CLIs)")

        await with_daemons(bench, {
            mode: daemon(bench, f"ours-sandbox-warm-{mode}", model_url, sandbox=mode, warm_agents=1)
            for mode in MODES}, out, warm_and_memory)

        out["gateway"] = gw = await gateway_latency(bench.tmp, model_url, requests)
        for mode in ("keepalive", "new_connection"):
            part = gw[mode]
            log(f"  gateway, {mode.replace('_', ' ')}: first byte p50 (p99) direct"
                f" {fmt_ms(part['direct']['ttfb']['p50_ms'])} ({fmt_ms(part['direct']['ttfb']['p99_ms'])}) ms; "
                + "; ".join(f"{p.removeprefix('gateway_')} {fmt_ms(part[p]['ttfb']['p50_ms'])}"
                            f" ({fmt_ms(part[p]['ttfb']['p99_ms'])}) ms, {part[p]['added_p50_ms']:+.2f}"
                            for p in GATEWAY_PATHS[1:])
                + f" (target +{TARGET_GATEWAY_MS:g}); whole reply p50 added: "
                + ", ".join(f"{p.removeprefix('gateway_')} {part[p]['added_total_p50_ms']:+.2f}"
                            for p in GATEWAY_PATHS[1:]))
    return out


def describe(part: dict[str, Any]) -> str:
    b, u = part["bwrap"], part["none"]
    text = (f"bwrap p50 {fmt_ms(b['p50_ms'])} ms, p99 {fmt_ms(b['p99_ms'])} ms; none p50 {fmt_ms(u['p50_ms'])} ms,"
            f" p99 {fmt_ms(u['p99_ms'])} ms ({b['n']} each)")
    if "p50_ratio" in part and part["p50_ratio"] is not None:
        text += f": bwrap/none {part['p50_ratio']:.2f}x p50, {part['p99_ratio']:.2f}x p99"
    return text


def rows(results: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """The summary table's rows: bwrap / none in our column, the ratio against its target."""
    s = results.get("sandbox") or {}
    out: list[tuple[str, str, str, str]] = []

    def ratio_cell(r: float | None, target: bool) -> str:
        return "-" if r is None else f"{r:.2f}x" + (f" (<= {TARGET_RATIO})" if target else "")

    for key, label in (("cold", "cold create, POST /sessions"), ("wake", "wake, POST -> first output"),
                       ("live", "live turn (right after a wake), POST -> first output")):
        part = (s.get("wake") or {}).get("live") if key == "live" else s.get(key)
        if not part:
            continue
        for q in ("p50", "p99"):
            out.append((f"sandbox: {label} {q} (ms), bwrap / none" if q == "p50" else f"  {q}",
                        f"{fmt_ms(part['bwrap'][f'{q}_ms'])} / {fmt_ms(part['none'][f'{q}_ms'])}", "",
                        ratio_cell(part[f"{q}_ratio"], key != "live")))
    warm = s.get("warm")
    if warm:
        out.append(("sandbox: warm create p50 / p99 (ms), bwrap; none",
                    f"{fmt_ms(warm['bwrap']['p50_ms'])} / {fmt_ms(warm['bwrap']['p99_ms'])};"
                    f" {fmt_ms(warm['none']['p50_ms'])} / {fmt_ms(warm['none']['p99_ms'])}", "",
                    f"<= {TARGET_WARM_P50_MS:g} / <= {TARGET_WARM_P99_MS:g}"))
    mem = s.get("memory")
    if mem:
        b = mem["bwrap"]
        out.append(("sandbox: its processes' PSS per live CLI (MiB); CLI PSS bwrap / none",
                    f"{b['sandbox_pss_per_cli_kib'] / 1024:.1f}; {b['agent_pss_per_cli_kib'] / 1024:.0f} /"
                    f" {mem['none']['agent_pss_per_cli_kib'] / 1024:.0f}", "", ""))
    gw = s.get("gateway")
    if gw:
        for mode in ("keepalive", "new_connection"):
            part = gw[mode]
            out.append((f"sandbox: gateway first byte p50 (ms), {mode.replace('_', ' ')}: direct / tcp / unix / socat",
                        " / ".join(fmt_ms(part[p]["ttfb"]["p50_ms"]) for p in GATEWAY_PATHS), "",
                        " ".join(f"{part[p]['added_p50_ms']:+.2f}" for p in GATEWAY_PATHS[1:])
                        + f" (<= +{TARGET_GATEWAY_MS:g})"))
    return out
