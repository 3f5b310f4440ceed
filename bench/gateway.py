"""The `gateway` phase: what usage accounting costs the model gateway, per proxied response.

Two gateways run in this process, the same code: one with a ledger (usage metered from
each streamed response, counted per session and principal, budgets checked, a price
applied), one without. An upstream stand-in in another process streams Messages API
responses of RESPONSE_DELTAS text deltas, each written on its own as the API does; a
client in a third process sends ROUNDS x REQUESTS requests, CONCURRENCY at a time,
alternating between the two gateways. This process's CPU time per response (the two
gateways are all it runs meanwhile) is compared: target <= 1.05x. Requests carry
REQUEST_BYTES, the size of the real CLI's first request (measured with the stand-in).
Responses come as fast as loopback allows, so the gateway reads a response in two or three
large chunks: the least the plain gateway can spend on one, so the ratio's worst case.
A second comparison paces the upstream as a model streams (PACE_MS between events, each
read on its own), as real responses arrive. With two or more CPUs this process runs on one and the upstream and client on the others,
so their work does not land in the gateways' samples (an A/A run of two plain gateways
spreads 0.90-1.10 per pair unpinned, about half that pinned).

    .venv/bin/python -m bench.run --only gateway
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import structlog
from aiohttp import web

from agent_webkitd.agents.gateway import ModelGateway
from agent_webkitd.config import BudgetConfig, PriceConfig
from agent_webkitd.metrics import Metrics
from agent_webkitd.stores.memory import MemoryStore
from agent_webkitd.usage.budgets import Budgets
from agent_webkitd.usage.ledger import Ledger
from agent_webkitd.usage.prices import Prices

if TYPE_CHECKING:
    from bench.run import Bench

RESPONSE_DELTAS = 200  # a few hundred tokens of text, one SSE event each
REQUEST_BYTES = 50_000  # the real CLI's first request of a session (system prompt, tools)
REQUESTS = 200
CONCURRENCY = 8
ROUNDS = 30  # pairs; the median of their ratios (the noise here is about +-5% per pair)
TARGET = 1.05
# The paced comparison: fewer, slower responses (about 0.25 s each), more at once.
PACE_MS = 1.0
PACED_REQUESTS = 64
PACED_CONCURRENCY = 32
PACED_ROUNDS = 8
SESSION = "bench-session"
ROOT = Path(__file__).resolve().parent.parent


def _event(kind: str, **fields: Any) -> bytes:
    return f"event: {kind}\ndata: {json.dumps({'type': kind, **fields})}\n\n".encode()


def response_events() -> list[bytes]:
    usage = {"input_tokens": 5000, "output_tokens": 1, "cache_creation_input_tokens": 200,
             "cache_read_input_tokens": 40000}
    message = {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
               "content": [], "stop_reason": None, "usage": usage}
    return [
        _event("message_start", message=message),
        _event("content_block_start", index=0, content_block={"type": "text", "text": ""}),
        *(_event("content_block_delta", index=0, delta={"type": "text_delta", "text": f"word{i} "})
          for i in range(RESPONSE_DELTAS)),
        _event("content_block_stop", index=0),
        _event("message_delta", delta={"stop_reason": "end_turn"}, usage={"output_tokens": 300}),
        _event("message_stop"),
    ]


async def upstream_main(port: int) -> None:
    events = response_events()

    async def messages(request: web.Request) -> web.StreamResponse:
        await request.read()
        pace = float(request.query.get("pace_ms", "0")) / 1000
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for event in events:
            await response.write(event)
            if pace:
                await asyncio.sleep(pace)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/v1/messages", messages)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    print("ready", flush=True)
    await asyncio.Event().wait()


async def client_main(url: str, key: str, requests: int, concurrency: int, pace_ms: float) -> None:
    body = json.dumps({"model": "claude-sonnet-4-5", "stream": True, "max_tokens": 1000,
                       "messages": [{"role": "user", "content": "x" * REQUEST_BYTES}]}).encode()
    headers = {"x-api-key": key, "content-type": "application/json"}
    left = requests
    async with aiohttp.ClientSession() as http:
        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                path = f"/v1/messages?beta=true&pace_ms={pace_ms}"
                async with http.post(url + path, data=body, headers=headers) as resp:
                    assert resp.status == 200, resp.status
                    await resp.read()

        await asyncio.gather(*(worker() for _ in range(concurrency)))


async def _child(cpus: set[int], *args: str) -> asyncio.subprocess.Process:
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.gateway", *args, stdout=asyncio.subprocess.PIPE,
        cwd=ROOT)
    os.sched_setaffinity(child.pid, cpus)
    return child


def _split_cpus() -> tuple[set[int], set[int]]:
    """(the gateways' CPU, the children's CPUs): apart when there are two or more."""
    cpus = sorted(os.sched_getaffinity(0))
    return ({cpus[0]}, set(cpus[1:])) if len(cpus) > 1 else (set(cpus), set(cpus))


async def _round(gateway: ModelGateway, key: str, cpus: set[int], requests: int, concurrency: int,
                 pace_ms: float) -> tuple[float, float]:
    """(CPU seconds of this process, wall seconds) for `requests` responses."""
    assert gateway.tcp_url is not None
    cpu, wall = time.process_time(), time.monotonic()
    client = await _child(cpus, "client", gateway.tcp_url, key, str(requests), str(concurrency), str(pace_ms))
    assert await client.wait() == 0, "the gateway client failed"
    return time.process_time() - cpu, time.monotonic() - wall


async def phase_gateway(bench: Bench | None = None) -> dict[str, Any]:
    # No per-request log lines: they cost both gateways alike and would hide the difference.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    port = 20000 + int(time.time() * 1000) % 20000
    mine, theirs = _split_cpus()
    everywhere = os.sched_getaffinity(0)
    upstream = await _child(theirs, "upstream", str(port))
    assert upstream.stdout is not None
    await upstream.stdout.readline()
    metrics = Metrics()
    ledger = Ledger(MemoryStore(), Prices({"claude": PriceConfig(3, 15, 3.75, 0.3)}),
                    Budgets([BudgetConfig(principal="*", tokens_per_day=10**15)]), metrics, shared=False)
    ledger.adopt(SESSION, "token:bench", None)
    with tempfile.TemporaryDirectory() as tmp:
        gateways = {
            "metered": ModelGateway(f"http://127.0.0.1:{port}", None, Path(tmp) / "a.sock", tcp=True,
                                    ledger=ledger, metrics=metrics, logger=structlog.get_logger()),
            "plain": ModelGateway(f"http://127.0.0.1:{port}", None, Path(tmp) / "b.sock", tcp=True,
                                  metrics=metrics, logger=structlog.get_logger()),
        }
        keys = {}
        for name, gateway in gateways.items():
            await gateway.start()
            keys[name] = gateway.issue_key(SESSION)
        os.sched_setaffinity(0, mine)
        try:
            for name in gateways:  # warm-up, not counted
                await _round(gateways[name], keys[name], theirs, REQUESTS, CONCURRENCY, 0)
            burst = await _compare(gateways, keys, theirs, ROUNDS, REQUESTS, CONCURRENCY, 0)
            paced = await _compare(gateways, keys, theirs, PACED_ROUNDS, PACED_REQUESTS,
                                   PACED_CONCURRENCY, PACE_MS)
        finally:
            os.sched_setaffinity(0, everywhere)
            for gateway in gateways.values():
                await gateway.stop()
            upstream.terminate()
            await upstream.wait()
    counted = ledger.session_usage(SESSION)
    expected = (ROUNDS + 1) * REQUESTS + PACED_ROUNDS * PACED_REQUESTS
    if not os.environ.get("BENCH_GATEWAY_NO_CHECK"):
        assert counted["requests"] == expected, (counted, expected)
    return {
        "responses_per_round": REQUESTS,
        "rounds": ROUNDS,
        "deltas_per_response": RESPONSE_DELTAS,
        **burst,
        "paced": {"pace_ms": PACE_MS, "responses_per_round": PACED_REQUESTS, "rounds": PACED_ROUNDS,
                  **paced},
        "counted_requests": counted["requests"],
    }


async def _compare(gateways: dict[str, ModelGateway], keys: dict[str, str], cpus: set[int], rounds: int,
                   requests: int, concurrency: int, pace_ms: float) -> dict[str, Any]:
    """`rounds` pairs of rounds, alternating which gateway goes first: CPU per response."""
    samples: dict[str, list[float]] = {name: [] for name in gateways}
    walls: dict[str, list[float]] = {name: [] for name in gateways}
    for i in range(rounds):
        order = list(gateways) if i % 2 == 0 else list(reversed(gateways))
        for name in order:
            cpu, wall = await _round(gateways[name], keys[name], cpus, requests, concurrency, pace_ms)
            samples[name].append(cpu / requests * 1e6)
            walls[name].append(wall)
    return {
        "cpu_us_per_response": {name: statistics.median(values) for name, values in samples.items()},
        "cpu_us_samples": samples,
        "wall_s": {name: statistics.median(values) for name, values in walls.items()},
        # Each round's pair ran back to back: the median of their ratios resists the noise
        # of a shared machine better than a ratio of medians.
        "ratio": statistics.median(m / p for m, p in zip(samples["metered"], samples["plain"], strict=True)),
    }


def rows(results: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    g = results.get("gateway")
    if not g:
        return []
    us = g["cpu_us_per_response"]
    out = [(
        f"gateway: CPU per proxied response ({g['deltas_per_response']} deltas, as fast as loopback), metered / plain",
        f"{us['metered']:.0f} / {us['plain']:.0f} us",
        "(not run)",
        f"{g['ratio']:.3f}x (<= {TARGET})",
    )]
    if paced := g.get("paced"):
        us = paced["cpu_us_per_response"]
        out.append((
            f"  the same paced as a model streams ({paced['pace_ms']:g} ms between events)",
            f"{us['metered']:.0f} / {us['plain']:.0f} us",
            "(not run)",
            f"{paced['ratio']:.3f}x",
        ))
    return out


def main() -> None:
    command = sys.argv[1]
    if command == "upstream":
        asyncio.run(upstream_main(int(sys.argv[2])))
    elif command == "client":
        asyncio.run(client_main(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6])))
    else:
        print(json.dumps(asyncio.run(phase_gateway()), indent=1))


if __name__ == "__main__":
    main()
