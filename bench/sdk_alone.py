"""The SDK alone, the `cost` phase's baseline (bench/costs.py): what one bare
`ClaudeSDKClient` costs per message it yields, with no daemon around it.

    python bench/sdk_alone.py --sessions N --cli PATH --dir DIR [--mirror]

N clients on the same stand-in CLI, each in its own cwd under DIR holding the same
scenario.json the daemon's sessions get (the caller writes them: DIR/0, DIR/1, ...), with
`include_partial_messages` on as in the daemon's config; with --mirror, also with the
SDK's InMemorySessionStore as `session_store` (flush "eager"), as the daemon's SQLite and
Postgres stores give it theirs: the CLI then mirrors its transcript, and the SDK reads
those frames and hands the entries to the store. All connect, then one warm-up query on
every client together (not counted; its turn may be a shorter one), and one JSON line
`{"ready": ...}` on stdout. Then it serves the caller, one command per stdin line, one
JSON line out for each, so that its rounds can alternate with the daemon's in one run
(the machine's load drifts; a ratio of two rounds taken minutes apart measures that):

    round T             T turns of one query on every client together, each read to its
                        `ResultMessage` through `receive_response()`; this process's own
                        CPU across them (RUSAGE_SELF: the CLI processes are children and are
                        not in it), the messages received (frames) by type, read(2) calls
    profile PATH RATE   one more such turn under `py-spy record` (collapsed stacks to PATH)

It disconnects and exits at the end of stdin.
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


def read_calls() -> int:
    """read(2) calls this process has made (its CLIs' pipes; /proc/self/io `syscr`)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("syscr:"):
            return int(line.split()[1])
    return 0


async def one_turn(client: ClaudeSDKClient, kinds: Counter[str]) -> int:
    """Send one user message and read to its result; the number of messages received."""
    await client.query("go")
    count = 0
    async for message in client.receive_response():
        count += 1
        kinds[type(message).__name__] += 1
    return count


async def measured_round(clients: list[ClaudeSDKClient], turns: int) -> dict[str, Any]:
    kinds: Counter[str] = Counter()
    frames, wall_s = 0, 0.0
    cpu0, reads0 = own_cpu_s(), read_calls()
    for _ in range(turns):
        t0 = time.monotonic()
        frames += sum(await asyncio.gather(*(one_turn(c, kinds) for c in clients)))
        wall_s += time.monotonic() - t0
    cpu_s, reads = own_cpu_s() - cpu0, read_calls() - reads0
    return {
        "cpu_s": cpu_s, "frames": frames, "wall_s": wall_s,
        "us_per_frame": cpu_s / frames * 1e6 if frames else None,
        "frames_per_s": frames / wall_s if wall_s else None,
        "pipe_reads_per_frame": reads / frames if frames else None,
        "frames_per_turn": frames / (len(clients) * turns),
        "kinds_per_turn": {k: v / (len(clients) * turns) for k, v in sorted(kinds.items())},
    }


async def profiled_round(clients: list[ClaudeSDKClient], path: str, rate: str) -> dict[str, Any]:
    py_spy = Path(sys.executable).parent / "py-spy"
    spy = await asyncio.create_subprocess_exec(
        str(py_spy), "record", "--pid", str(os.getpid()), "--rate", rate, "--nonblocking",
        "--format", "raw", "--nolineno", "-o", path,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        await asyncio.sleep(1.0)  # attached and sampling
        await asyncio.gather(*(one_turn(c, Counter()) for c in clients))
    finally:
        if spy.returncode is None:
            spy.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
        await asyncio.wait_for(spy.wait(), 30)
    return {"profile": path}


def say(out: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()


async def main(args: argparse.Namespace) -> None:
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
        say({"ready": True, "sessions": args.sessions, "mirror": args.mirror, "connect_s": connect_s,
             "warmup_kinds_per_turn": {k: v / args.sessions for k, v in sorted(warm.items())}})
        while line := await asyncio.to_thread(sys.stdin.readline):
            command, *rest = line.split()
            if command == "round":
                say(await measured_round(clients, int(rest[0])))
            elif command == "profile":
                say(await profiled_round(clients, rest[0], rest[1]))
            else:
                say({"error": f"unknown command {command!r}"})
    finally:
        await asyncio.gather(*(c.disconnect() for c in clients), return_exceptions=True)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sessions", type=int, required=True)
    p.add_argument("--cli", required=True)
    p.add_argument("--dir", required=True)
    p.add_argument("--mirror", action="store_true", help="with an in-memory session_store (transcript mirror)")
    asyncio.run(main(p.parse_args()))
