"""The SDK alone, the `cost` phase's baseline (bench/costs.py): what one bare
`ClaudeSDKClient` costs per message it yields, with no daemon around it.

    python bench/sdk_alone.py --sessions N --cli PATH --dir DIR [--turns T] [--mirror] [--profile OUT]

N clients on the same stand-in CLI, each in its own cwd under DIR holding the same
scenario.json the daemon's sessions get (the caller writes them: DIR/0, DIR/1, ...), with
`include_partial_messages` on as in the daemon's config; with --mirror, also with the
SDK's InMemorySessionStore as `session_store` (flush "eager"), as the daemon's SQLite and
Postgres stores give it theirs: the CLI then mirrors its transcript, and the SDK reads
those frames and hands the entries to the store. All connect, then one warm-up
query on every client together (not counted; its turn may be a shorter one); then T rounds of one query on every client
together, each read to its `ResultMessage` through `receive_response()`. Measured: this
process's own CPU (RUSAGE_SELF: the CLI processes are children and are not in it) across
the measured rounds, and every message received (frames), by type. One JSON object on
stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from claude_agent_sdk import ClaudeAgentOptions, ClaudeSDKClient, InMemorySessionStore


def own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def one_turn(client: ClaudeSDKClient, kinds: Counter[str]) -> int:
    """Send one user message and read to its result; the number of messages received."""
    await client.query("go")
    count = 0
    async for message in client.receive_response():
        count += 1
        kinds[type(message).__name__] += 1
    return count


async def profiled_round(clients: list[ClaudeSDKClient], args: argparse.Namespace) -> None:
    py_spy = Path(sys.executable).parent / "py-spy"
    spy = await asyncio.create_subprocess_exec(
        str(py_spy), "record", "--pid", str(os.getpid()), "--rate", str(args.rate), "--nonblocking",
        "--format", "raw", "--nolineno", "-o", args.profile,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        await asyncio.sleep(1.0)  # attached and sampling
        await asyncio.gather(*(one_turn(c, Counter()) for c in clients))
    finally:
        if spy.returncode is None:
            spy.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
        await asyncio.wait_for(spy.wait(), 30)


async def main(args: argparse.Namespace) -> dict[str, Any]:
    root = Path(args.dir)
    clients = [
        ClaudeSDKClient(
            ClaudeAgentOptions(
                cli_path=args.cli,
                cwd=str(root / str(i)),
                include_partial_messages=True,
                env={},  # the daemon passes its own environment and [agent.env] (empty)
                session_store=InMemorySessionStore() if args.mirror else None,
                session_store_flush="eager" if args.mirror else "batched",
            )
        )
        for i in range(args.sessions)
    ]
    gate = asyncio.Semaphore(16)

    async def connect(client: ClaudeSDKClient) -> None:
        async with gate:
            await client.connect()

    started = time.monotonic()
    await asyncio.gather(*(connect(c) for c in clients))
    connect_s = time.monotonic() - started
    try:
        warm: Counter[str] = Counter()
        await asyncio.gather(*(one_turn(c, warm) for c in clients))
        kinds: Counter[str] = Counter()
        rounds = []
        cpu0 = own_cpu_s()
        for _ in range(args.turns):
            t0 = time.monotonic()
            counts = await asyncio.gather(*(one_turn(c, kinds) for c in clients))
            rounds.append({"wall_s": time.monotonic() - t0, "frames": sum(counts),
                           "per_client_min": min(counts), "per_client_max": max(counts)})
        cpu_s = own_cpu_s() - cpu0
        if args.profile:
            await profiled_round(clients, args)
    finally:
        await asyncio.gather(*(c.disconnect() for c in clients), return_exceptions=True)
    frames = sum(r["frames"] for r in rounds)
    wall_s = sum(r["wall_s"] for r in rounds)
    return {
        "sessions": args.sessions, "turns": args.turns, "mirror": args.mirror, "connect_s": connect_s,
        "cpu_s": cpu_s, "frames": frames, "wall_s": wall_s,
        "us_per_frame": cpu_s / frames * 1e6 if frames else None,
        "frames_per_s": frames / wall_s if wall_s else None,
        "frames_per_turn": frames / (args.sessions * args.turns),
        "kinds_per_turn": {k: v / (args.sessions * args.turns) for k, v in sorted(kinds.items())},
        "warmup_kinds_per_turn": {k: v / args.sessions for k, v in sorted(warm.items())},
        "rounds": rounds,
    }


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sessions", type=int, required=True)
    p.add_argument("--turns", type=int, default=1)
    p.add_argument("--cli", required=True)
    p.add_argument("--dir", required=True)
    p.add_argument("--mirror", action="store_true", help="with an in-memory session_store (transcript mirror)")
    p.add_argument("--profile", help="py-spy's collapsed stacks of one more round go to this file")
    p.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    out = asyncio.run(main(p.parse_args()))
    json.dump(out, sys.stdout)
    print()
