"""Per-session memory and task figures for sizing a host (README "Operating", the unit's
MemoryMax=/TasksMax=).

    .venv/bin/python bench/sizing.py [--sessions 100 200] [--ring-sessions 20] [--real-cli 3]

1. The daemon's own RSS (its CLI processes excluded) with 0 and then N live idle sessions,
   each after one echo turn, with the scripted CLI stand-in (tests/standin/scripted_cli.py);
   then with sessions whose ring is full of 1000 events of 100 characters of text.
2. The SDK's real bundled Claude Code CLI, offline against the stand-in model
   (tests/standin/fake_model.py): RSS, PSS and anonymous memory and the thread count of
   each CLI process tree, idle after one echo turn.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.standin.fake_model import run_fake_model  # noqa: E402
from tests.standin.fixtures import offline_cli_env  # noqa: E402
from tests.standin.toml_writer import dump_toml  # noqa: E402
from tests.wire_client import Api  # noqa: E402

SCRIPTED_CLI = ROOT / "tests" / "standin" / "scripted_cli.py"
RING_SCENARIO = {"turns": [{"steps": [{"events": 1000, "text": "x" * 100}]}]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def status_kib(pid: int, field: str) -> int:
    """A field of /proc/<pid>/status (VmRSS in KiB, Threads as a count)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def rollup_kib(pid: int) -> dict[str, int]:
    """Rss, Pss, Anonymous, ... of /proc/<pid>/smaps_rollup, in KiB."""
    out = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, value = line.split(":", 1)
        out[key] = int(value.split()[0])
    return out


def children_map() -> dict[int, list[int]]:
    """Parent pid -> child pids, from /proc/*/stat."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text() if entry.name.isdigit() else ""
        except OSError:
            continue
        if stat:
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    return children


def tree(pid: int, children: dict[int, list[int]]) -> list[int]:
    """pid and all its descendants."""
    return [pid, *(p for kid in children.get(pid, []) for p in tree(kid, children))]


class Daemon:
    def __init__(self, tmp: Path, agent: dict[str, Any]) -> None:
        self.tmp, self.port = tmp, free_port()
        (tmp / "work").mkdir(parents=True)
        config = {
            "server": {"host": "127.0.0.1", "port": self.port},
            "auth": {"disabled": True},
            "sessions": {"max_sessions": 1000, "idle_timeout_s": 3600},
            "agent": {"cwd": str(tmp / "work"), "allowed_cwd_roots": [str(tmp / "work")], **agent},
            "logging": {"level": "warning"},
        }
        (tmp / "daemon.toml").write_text(dump_toml(config))
        self.api = Api(f"http://127.0.0.1:{self.port}", None)

    async def __aenter__(self) -> Daemon:
        self.log = open(self.tmp / "daemon.log", "wb")  # noqa: ASYNC230
        self.proc = subprocess.Popen(  # noqa: ASYNC220
            [sys.executable, "-m", "agent_webkitd", "--config", str(self.tmp / "daemon.toml")],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=self.tmp,
        )
        for _ in range(200):
            with contextlib.suppress(OSError):
                if (await self.api.request("GET", "/healthz"))[0] == 200:
                    return self
            await asyncio.sleep(0.05)
        raise RuntimeError(f"daemon did not start; see {self.tmp / 'daemon.log'}")

    async def __aexit__(self, *exc: object) -> None:
        await self.api.close()
        for _ in range(2):  # the second SIGTERM skips the drain
            self.proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(1)
        self.proc.wait(timeout=30)
        self.log.close()

    async def echo_session(self, scenario: dict[str, Any] | None = None) -> str:
        """A session that has done one turn (an echo, or the scenario's) and is idle."""
        body = {}
        if scenario is not None:
            cwd = Path(tempfile.mkdtemp(dir=self.tmp / "work"))
            (cwd / "scenario.json").write_text(json.dumps(scenario))
            body = {"cwd": str(cwd)}
        sid = await self.api.create(body)
        stream = await self.api.open_stream(sid)
        await self.api.say(sid, "hello")
        await stream.until("result", timeout=120)
        stream.close()
        return sid

    async def add_sessions(self, n: int, scenario: dict[str, Any] | None = None) -> None:
        for start in range(0, n, 10):  # ten at a time
            await asyncio.gather(*(self.echo_session(scenario) for _ in range(min(10, n - start))))
        await asyncio.sleep(2)  # let the dust settle

    def rss(self) -> int:
        return status_kib(self.proc.pid, "VmRSS")


async def daemon_memory(tmp: Path, counts: list[int], ring_sessions: int) -> None:
    async with Daemon(tmp, {"cli_path": str(SCRIPTED_CLI)}) as daemon:
        await asyncio.sleep(1)
        rows, live = [(0, daemon.rss())], 0
        for n in counts:
            await daemon.add_sessions(n - live)
            live = n
            rows.append((n, daemon.rss()))
        print("daemon RSS (CLI processes excluded), idle sessions after one echo turn:")
        print(f"  {'sessions':>8} {'VmRSS MiB':>10} {'KiB/session since previous':>28}")
        for (n0, r0), (n, r) in zip([(None, None), *rows], rows, strict=False):
            per = f"{(r - r0) / (n - n0):.0f}" if n0 is not None else ""
            print(f"  {n:>8} {r / 1024:>10.1f} {per:>28}")
        per_session = (rows[-1][1] - rows[-2][1]) / (rows[-1][0] - rows[-2][0])
        before = daemon.rss()
        await daemon.add_sessions(ring_sessions, RING_SCENARIO)
        grown = (daemon.rss() - before) / ring_sessions
        print(
            f"  + {ring_sessions} sessions with 1000 ring events (100 chars of text each):"
            f" {grown:.0f} KiB/session, {grown - per_session:.0f} KiB per 1000 events"
        )


async def cli_memory(tmp: Path, n: int) -> None:
    async with run_fake_model() as model_url:
        (tmp / "claude-config").mkdir(parents=True)
        env = offline_cli_env(model_url, tmp / "claude-config")
        async with Daemon(tmp, {"cli_path": "", "env": env}) as daemon:
            peak = [0]
            sampler = asyncio.create_task(sample_tasks(daemon.proc.pid, peak))
            await daemon.add_sessions(n)
            sampler.cancel()
            print(
                f"real bundled CLI: {n} session(s), idle after one echo turn; one row per CLI process tree:"
            )
            print(
                f"  {'pid':>8} {'procs':>5} {'RSS MiB':>8} {'PSS MiB':>8} {'anon MiB':>8} {'threads':>7}"
            )
            children = children_map()
            for cli in children.get(daemon.proc.pid, []):  # one row per CLI process tree
                procs = tree(cli, children)
                mem = [rollup_kib(p) for p in procs]
                total = {k: sum(m[k] for m in mem) / 1024 for k in ("Rss", "Pss", "Anonymous")}
                threads = sum(status_kib(p, "Threads") for p in procs)
                print(
                    f"  {cli:>8} {len(procs):>5} {total['Rss']:>8.1f} {total['Pss']:>8.1f}"
                    f" {total['Anonymous']:>8.1f} {threads:>7}"
                )
            print(
                f"  daemon: {daemon.rss() / 1024:.1f} MiB RSS, {status_kib(daemon.proc.pid, 'Threads')} threads;"
                f" peak tasks of daemon + all CLIs while the turns ran: {peak[0]}"
            )


async def sample_tasks(pid: int, peak: list[int]) -> None:
    """Keep peak[0] at the most threads the whole process tree had (what TasksMax= counts)."""
    while True:
        total = 0
        for p in tree(pid, children_map()):
            try:
                total += status_kib(p, "Threads")
            except OSError:
                pass
        peak[0] = max(peak[0], total)
        await asyncio.sleep(0.05)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, nargs="+", default=[100, 200])
    parser.add_argument("--ring-sessions", type=int, default=20)
    parser.add_argument(
        "--real-cli", type=int, default=3, help="CLI processes to measure (0: skip)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="agent-webkitd-sizing-") as tmp:
        await daemon_memory(Path(tmp) / "scripted", args.sessions, args.ring_sessions)
        if args.real_cli:
            await cli_memory(Path(tmp) / "real", args.real_cli)


if __name__ == "__main__":
    asyncio.run(main())
