"""`make bench` phase `create`, its bursts (issue 24): creates arriving together after a quiet
spell, as users do (a class, a team's morning).

For each burst size B (8 and 32; quick: 8), one server at a time, each started fresh:
  - ours warm: `warm_agents = 1`, `warm_agents_max = 2B` (the pool sizes itself from the
    bursts it sees, and a new host starts at its ceiling); once the pool is full,
  - ours cold: `warm_agents = 0` (every create starts its CLI),
  - the peer (agent-webkit-server 0.2.0, every create starts its CLI),
each: IDLE_S with nothing happening, then B concurrent POST /sessions in the default cwd,
and AGAIN_S after they all returned, B more. Latency of every create (p50, p99, max; and
per burst), failures, and for ours warm how many creates a warm CLI served. Target (issue
24): ours warm, B = 8, p99 <= 50 ms over both bursts.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import TYPE_CHECKING, Any

from bench.servers import Ours, Peer, Server

if TYPE_CHECKING:
    from bench.run import Bench

IDLE_S = 5.0
AGAIN_S = 3.0
TARGET_P99_MS = 50.0
SERIES = ("ours_warm", "ours_cold", "peer")


def log(*parts: Any) -> None:
    print(*parts, flush=True)


def percentile(values: list[float], q: float) -> float | None:
    from bench.run import percentile as p

    return p(values, q)


def fmt_ms(x: float | None) -> str:
    from bench.run import fmt_ms as f

    return f(x)


async def burst(server: Server, size: int) -> tuple[list[float], list[str], list[str]]:
    """`size` creates at once: each one's latency (ms), the sessions, the failures."""

    async def one() -> tuple[float, str | None, str | None]:
        t = time.monotonic()
        try:
            sid = await server.create(None)
        except Exception as exc:
            return 0.0, None, str(exc)[:300]
        return (time.monotonic() - t) * 1000, sid, None

    results = await asyncio.gather(*(one() for _ in range(size)))
    return ([ms for ms, sid, _ in results if sid], [sid for _, sid, _ in results if sid],
            [err for _, _, err in results if err])


async def measure(bench: Bench, server: Server, size: int, pool: int, scenario: dict[str, Any]) -> dict[str, Any]:
    """Start `server`, wait for `pool` warm CLIs, idle, two bursts of `size`; stop it."""
    from bench.run import gather_limited, metric_value

    cwd = server.default_cwd if isinstance(server, Ours) else server.tmp
    (cwd / "scenario.json").write_text(json.dumps(scenario))
    await bench.start(server)
    out: dict[str, Any] = {}
    sids: list[str] = []
    try:
        if isinstance(server, Ours) and pool:
            out["pool_full_s"] = await server.until_warm(pool, timeout=120)
        await asyncio.sleep(IDLE_S)
        first, made, failed = await burst(server, size)
        sids += made
        await asyncio.sleep(AGAIN_S)
        again, made, failed_again = await burst(server, size)
        sids += made
        both = first + again
        out.update({
            "first_ms": first, "again_ms": again, "failures": failed + failed_again,
            "p50_ms": percentile(both, 50), "p99_ms": percentile(both, 99), "max_ms": max(both, default=None),
            "first_p99_ms": percentile(first, 99), "again_p99_ms": percentile(again, 99),
        })
        if isinstance(server, Ours):
            _, text = await server.call("GET", "/metrics")
            out["served"] = {start: metric_value(str(text), "agent_webkit_creates_total", f'start="{start}"')
                             for start in ("warm", "cold")}
        await gather_limited(10, sids, server.delete)
    finally:
        out["stop"] = await bench.stop(server)
    return out


async def run(bench: Bench, sizes: list[int], scenario: dict[str, Any]) -> dict[str, Any]:
    log(f"-- bursts: after {IDLE_S:g} s idle, B creates at once, and {AGAIN_S:g} s later B more; ours warm"
        " (warm_agents = 1, warm_agents_max = 2B), ours cold (warm_agents = 0), the peer; each fresh")
    out: dict[str, Any] = {"idle_s": IDLE_S, "again_s": AGAIN_S}
    for size in sizes:
        servers: dict[str, tuple[Server, int]] = {
            "ours_warm": (Ours(bench.tmp, f"ours-burst{size}-warm",
                               agent={"warm_agents": 1, "warm_agents_max": 2 * size}), 2 * size),
            "ours_cold": (Ours(bench.tmp, f"ours-burst{size}-cold", agent={"warm_agents": 0}), 0),
            "peer": (Peer(bench.tmp, f"peer-burst{size}"), 0),
        }
        by = out[str(size)] = {}
        for key, (server, pool) in servers.items():
            r = by[key] = await measure(bench, server, size, pool, scenario)
            served = f"; served warm {r['served']['warm']:.0f}, cold {r['served']['cold']:.0f}" if "served" in r else ""
            log(f"  B={size:<3} {key:<9}: p50 {fmt_ms(r['p50_ms'])} ms, p99 {fmt_ms(r['p99_ms'])} ms"
                f" (first burst {fmt_ms(r['first_p99_ms'])}, again {fmt_ms(r['again_p99_ms'])}),"
                f" max {fmt_ms(r['max_ms'])} ms, failed {len(r['failures'])}{served}")
    return out


def rows(results: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """Summary rows: (figure, ours, peer, ratio)."""
    from bench.run import ratio

    out = []
    for size, by in results.items():
        if not isinstance(by, dict):
            continue
        warm, cold, peer = (by.get(k, {}) for k in SERIES)
        for q in ("p50", "p99"):
            o, c, p = warm.get(f"{q}_ms"), cold.get(f"{q}_ms"), peer.get(f"{q}_ms")
            out.append((f"create {q} (ms), {size} at once after {IDLE_S:g} s idle and {AGAIN_S:g} s later:"
                        f" ours warm; ours cold", f"{fmt_ms(o)}; {fmt_ms(c)}", fmt_ms(p), ratio(o, p, False)))
        failed = sum(len(by.get(k, {}).get("failures", [])) for k in ("ours_warm", "ours_cold"))
        out.append((f"  failures, bursts of {size} (ours warm + cold)", str(failed),
                    str(len(peer.get("failures", []))), ""))
    return out
