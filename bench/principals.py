"""`make bench` phase `auth` (ours only; DESIGN.md §9): what principals cost.

  auth  One daemon with [[auth.tokens]] and [auth.jwt] (keys from the stand-in identity
        provider, tests/standin/idp.py). First, POST /input latency (an `interrupt` to an
        idle session: the whole request path, no turn) over one keep-alive connection,
        alternating in blocks: a static token, a user's JWT (the keys cached, the token
        used before: the usual case), and a fresh JWT on every request (the full RS256
        check). Then GET /sessions as one user while 10, then 1,000 users each own a
        session (the CLIs hibernate; max_live_agents = 50), against an admin's listing of
        all of them.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import aiohttp

from bench.hibernation import CREATE_WAVE, fast_launcher, wait_all_hibernated
from bench.servers import Ours
from tests.standin.idp import jwt_config, run_idp

if TYPE_CHECKING:
    from bench.run import Bench

ADMIN_TOKEN = "bench-admin-token-0123456789"
BOT_TOKEN = "bench-bot-token-0123456789"
BLOCK = 100


def log(*parts: Any) -> None:
    print(*parts, flush=True)


def summary(xs: list[float]) -> dict[str, Any]:
    from bench.run import percentile

    return {"n": len(xs), "p50_us": percentile(xs, 50), "p99_us": percentile(xs, 99),
            "mean_us": sum(xs) / len(xs) if xs else None}


async def timed(http: aiohttp.ClientSession, method: str, url: str, token: str, body: Any = None) -> float:
    started = time.perf_counter()
    async with http.request(method, url, json=body, headers={"Authorization": f"Bearer {token}"}) as resp:
        await resp.read()
        if resp.status not in (200, 204):
            raise RuntimeError(f"{method} {url} -> {resp.status}")
    return (time.perf_counter() - started) * 1e6


async def phase_auth(bench: Bench) -> dict[str, Any]:
    a = bench.args
    n_input, n_users = a.auth_requests, a.auth_users
    log(f"\n== auth (ours only): POST /input latency, static token vs JWT ({n_input} each, blocks of"
        f" {BLOCK}); GET /sessions as one user with 10 and {n_users} users")
    out: dict[str, Any] = bench.results.setdefault("auth", {})
    async with run_idp() as idp:
        ours = Ours(
            bench.tmp, "ours-auth", max_sessions=n_users + 20,
            sessions={"max_live_agents": 50, "hibernate_after_s": 1.0},
            agent={"cli_path": str(fast_launcher(bench.tmp))},
            auth={"tokens": [{"name": "bot", "env": "BENCH_BOT_TOKEN"}], "jwt": jwt_config(idp)},
            env={"AGENT_WEBKIT_AUTH_TOKEN": ADMIN_TOKEN, "BENCH_BOT_TOKEN": BOT_TOKEN},
        )
        await bench.start(ours)
        base = f"http://{ours.host}:{ours.port}"
        try:
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=4)) as http:
                out["input"] = await input_latency(http, base, idp, n_input)
                out["listing"] = await listing(http, base, idp, n_users, ours)
        finally:
            out["stop"] = await bench.stop(ours)
    return out


async def create_as(http: aiohttp.ClientSession, base: str, token: str) -> str:
    async with http.post(f"{base}/sessions", json={}, headers={"Authorization": f"Bearer {token}"}) as resp:
        body = await resp.json()
        if resp.status != 200:
            raise RuntimeError(f"create -> {resp.status} {body}")
        return str(body["session_id"])


async def input_latency(http: aiohttp.ClientSession, base: str, idp: Any, n: int) -> dict[str, Any]:
    user = idp.token("bench-user")
    sid_bot = await create_as(http, base, BOT_TOKEN)
    sid_user = await create_as(http, base, user)
    fresh = [idp.token("bench-user", jti=str(i)) for i in range(n)]  # minted before timing
    interrupt = {"type": "interrupt"}
    variants = {
        "static": (sid_bot, lambda i: BOT_TOKEN),
        "jwt": (sid_user, lambda i: user),
        "jwt_fresh": (sid_user, lambda i: fresh[i]),
    }
    for sid, token_for in variants.values():  # warm up: connections, caches, the JWKS
        for i in range(20):
            await timed(http, "POST", f"{base}/sessions/{sid}/input", token_for(i), interrupt)
    lat: dict[str, list[float]] = {k: [] for k in variants}
    for start in range(0, n, BLOCK):
        for name, (sid, token_for) in variants.items():
            for i in range(start, min(n, start + BLOCK)):
                lat[name].append(await timed(http, "POST", f"{base}/sessions/{sid}/input", token_for(i), interrupt))
    out = {name: summary(xs) for name, xs in lat.items()}
    for name in ("jwt", "jwt_fresh"):
        out[f"{name}_over_static_p50"] = out[name]["p50_us"] / out["static"]["p50_us"]
        out[f"{name}_over_static_mean"] = out[name]["mean_us"] / out["static"]["mean_us"]
    for name, s in out.items():
        if isinstance(s, dict):
            log(f"  POST /input {name:<9}: p50 {s['p50_us']:.0f} µs, p99 {s['p99_us']:.0f} µs, mean {s['mean_us']:.0f} µs")
    log(f"  JWT (cached) / static: p50 {out['jwt_over_static_p50']:.3f}x, mean {out['jwt_over_static_mean']:.3f}x;"
        f" a fresh JWT each time: p50 {out['jwt_fresh_over_static_p50']:.3f}x")
    return out


async def listing(http: aiohttp.ClientSession, base: str, idp: Any, n_users: int, ours: Ours) -> dict[str, Any]:
    tokens = [idp.token(f"user-{i:04d}") for i in range(n_users)]
    out: dict[str, Any] = {}
    made = 0

    async def list_as(token: str, reps: int = 300) -> tuple[dict[str, Any], int]:
        xs = [await timed(http, "GET", f"{base}/sessions", token) for _ in range(reps)]
        async with http.get(f"{base}/sessions", headers={"Authorization": f"Bearer {token}"}) as resp:
            count = len((await resp.json())["sessions"])
        return summary(xs), count

    async def own_session(token: str, sid: str, reps: int = 300) -> dict[str, Any]:
        """A control: a request whose work cannot depend on other users' sessions."""
        return summary([await timed(http, "GET", f"{base}/sessions/{sid}", token) for _ in range(reps)])

    first_sid = ""
    for users in (10, n_users):
        started = time.monotonic()
        while made < users:
            wave = tokens[made : min(users, made + CREATE_WAVE)]
            sids = await asyncio.gather(*(create_as(http, base, t) for t in wave))
            first_sid = first_sid or sids[0]
            made += len(wave)
        created_s = time.monotonic() - started
        await wait_all_hibernated(ours, users, 120)  # measured at rest, not amid the creates
        user, user_count = await list_as(tokens[0])
        control = await own_session(tokens[0], first_sid)
        admin, admin_count = await list_as(ADMIN_TOKEN, reps=20)
        out[str(users)] = {"user": user, "user_sees": user_count, "admin": admin, "admin_sees": admin_count,
                           "control": control, "created_s": created_s}
        log(f"  {users:>5} users: GET /sessions as a user p50 {user['p50_us']:.0f} µs (sees {user_count});"
            f" GET /sessions/<own id> p50 {control['p50_us']:.0f} µs;"
            f" as an admin p50 {admin['p50_us'] / 1000:.1f} ms (sees {admin_count})")
    small, large = out["10"], out[str(n_users)]
    out["user_growth_p50"] = large["user"]["p50_us"] / small["user"]["p50_us"]
    out["control_growth_p50"] = large["control"]["p50_us"] / small["control"]["p50_us"]
    log(f"  at {n_users} users / at 10 users, p50: a user's listing {out['user_growth_p50']:.2f}x;"
        f" the control (GET of one own session) {out['control_growth_p50']:.2f}x")
    return out


def rows(results: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    auth = results.get("auth") or {}
    out: list[tuple[str, str, str, str]] = []
    inp = auth.get("input")
    if inp:
        out.append(("POST /input p50 (µs): static token / user JWT / fresh JWT",
                    f"{inp['static']['p50_us']:.0f} / {inp['jwt']['p50_us']:.0f} / {inp['jwt_fresh']['p50_us']:.0f}",
                    "(not run)", ""))
        out.append(("  a user's JWT over a static token (p50, mean)",
                    f"{inp['jwt_over_static_p50']:.3f}x, {inp['jwt_over_static_mean']:.3f}x", "", ""))
    lst = auth.get("listing")
    if lst and "user_growth_p50" in lst:
        big = max(lst, key=lambda k: int(k) if k.isdigit() else -1)
        out.append((f"GET /sessions as a user p50 (µs): 10 users / {big} users",
                    f"{lst['10']['user']['p50_us']:.0f} / {lst[big]['user']['p50_us']:.0f}"
                    f" ({lst['user_growth_p50']:.2f}x)", "(not run)", ""))
        if "control_growth_p50" in lst:
            out.append(("  control, GET /sessions/<own id> p50 (µs): the same two points",
                        f"{lst['10']['control']['p50_us']:.0f} / {lst[big]['control']['p50_us']:.0f}"
                        f" ({lst['control_growth_p50']:.2f}x)", "", ""))
        out.append((f"  as an admin, all {lst[big]['admin_sees']} sessions (ms)",
                    f"{lst[big]['admin']['p50_us'] / 1000:.1f}", "", ""))
    return out
