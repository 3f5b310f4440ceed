"""The two servers under test, as processes on loopback: agent-webkitd ("ours") and
agent-webkit-server 0.2.0 under uvicorn ("peer"), both with the scripted stand-in CLI.

Every server is started in its own process group with a unique marker in its
environment, which its CLI processes inherit; that is how the bench finds (and, at the
end, proves it has ended) exactly the CLI processes it caused, and nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from bench import httpc

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
SCRIPTED_CLI = ROOT / "tests" / "standin" / "scripted_cli.py"
PEER_VENV = BENCH / ".peer-venv"
PEER_PYTHON = PEER_VENV / "bin" / "python"
PEER_STAMP = PEER_VENV / ".bench-stamp"
# The peer pins claude-agent-sdk<0.2.0; it is installed without its dependencies and then
# given the same SDK as ours, so both drive the stand-in CLI through one SDK version.
PEER_PACKAGE = "agent-webkit-server==0.2.0"
PEER_DEPS = ["claude-agent-sdk==0.2.189", "pydantic>=2,<3", "fastapi", "uvicorn"]
MARK_ENV = "AGENT_WEBKITD_BENCH_MARK"


def ensure_peer_venv(log: Any = print) -> dict[str, str]:
    """Create bench/.peer-venv with the peer (once); return its package versions."""
    wanted = json.dumps([PEER_PACKAGE, *PEER_DEPS])
    if not (PEER_PYTHON.exists() and PEER_STAMP.exists() and PEER_STAMP.read_text() == wanted):
        log(f"installing {PEER_PACKAGE} into {PEER_VENV.relative_to(ROOT)} ...")
        if not PEER_PYTHON.exists():
            subprocess.run([sys.executable, "-m", "venv", str(PEER_VENV)], check=True, timeout=120)
        pip = [str(PEER_PYTHON), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        subprocess.run([*pip, *PEER_DEPS], check=True, timeout=900)
        subprocess.run([*pip, "--no-deps", PEER_PACKAGE], check=True, timeout=300)
        PEER_STAMP.write_text(wanted)
    out = subprocess.run(
        [str(PEER_PYTHON), "-c",
         "import importlib.metadata as m, json; print(json.dumps({p: m.version(p) for p in "
         "['agent-webkit-server', 'claude-agent-sdk', 'fastapi', 'starlette', 'uvicorn', 'h11']}))"],
        check=True, capture_output=True, text=True, timeout=60,
    )
    versions: dict[str, str] = json.loads(out.stdout)
    return versions


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def proc_status(pid: int, field: str) -> int:
    """A numeric field of /proc/<pid>/status (VmRSS in KiB, Threads as a count)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def marked_pids(mark: str) -> list[int]:
    """Live (non-zombie) processes whose environment carries this bench marker."""
    needle = f"{MARK_ENV}={mark}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            if "State:\tZ" in (entry / "status").read_text():
                continue
        except OSError:
            continue
        found.append(int(entry.name))
    return found


class Server:
    name = "server"

    def __init__(self, tmp: Path, label: str) -> None:
        self.label = label
        self.tmp = tmp / label
        self.sessions_root = self.tmp / "sessions"
        self.sessions_root.mkdir(parents=True)
        self.host, self.port = "127.0.0.1", free_port()
        self.mark = uuid.uuid4().hex
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.tmp / "server.log"
        self.env: dict[str, str] = {}  # more environment for the server

    # --- process --------------------------------------------------------------------

    def command(self) -> list[str]:
        raise NotImplementedError

    async def healthy(self) -> bool:
        raise NotImplementedError

    async def start(self) -> None:
        env = {**os.environ, MARK_ENV: self.mark}
        env.pop("AGENT_WEBKIT_AUTH_TOKEN", None)
        env.update(self.env)
        self._log = open(self.log_path, "wb")  # noqa: ASYNC230 - closed in stop()
        self.proc = subprocess.Popen(  # noqa: ASYNC220 - a long-lived child
            self.command(), stdout=self._log, stderr=subprocess.STDOUT, env=env,
            cwd=self.tmp, start_new_session=True,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.label} exited at start:\n{self.log_tail()}")
            with contextlib.suppress(OSError, httpc.HttpError, TimeoutError):
                if await self.healthy():
                    return
            await asyncio.sleep(0.05)
        raise RuntimeError(f"{self.label} did not become ready:\n{self.log_tail()}")

    def log_tail(self, n: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    async def stop(self, timeout: float = 30.0) -> dict[str, Any]:
        """Stop the server, then make sure none of its CLI processes is left."""
        info: dict[str, Any] = {}
        if self.proc is not None and self.proc.poll() is None:
            started = time.monotonic()
            self.signal_stop()
            while self.proc.poll() is None and time.monotonic() - started < timeout:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            if self.proc.poll() is None:
                info["killed"] = True
                self.kill_group()
                self.proc.wait(timeout=10)
            info["stop_s"] = round(time.monotonic() - started, 2)
            info["exit_code"] = self.proc.returncode
        deadline = time.monotonic() + 15
        while (left := marked_pids(self.mark)) and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.1)
        info["cli_left_after_stop"] = len(left)
        if left:
            self.kill_marked()
        with contextlib.suppress(Exception):
            self._log.close()
        return info

    def signal_stop(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)

    def kill_group(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)

    def kill_marked(self) -> None:
        for pid in marked_pids(self.mark):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)

    def emergency_stop(self) -> None:
        """Synchronous last resort (exit paths): kill the server and every CLI it started."""
        if self.proc is not None and self.proc.poll() is None:
            self.kill_group()
            with contextlib.suppress(Exception):
                self.proc.wait(timeout=5)
        self.kill_marked()

    # --- measurements ---------------------------------------------------------------

    def rss_kib(self) -> int:
        assert self.proc is not None
        return proc_status(self.proc.pid, "VmRSS")

    def cli_pids(self) -> list[int]:
        own = self.proc.pid if self.proc is not None else -1
        return [p for p in marked_pids(self.mark) if p != own]

    def cli_pss_kib(self) -> int:
        """Summed PSS of the CLI processes (shared pages split between them), in KiB."""
        total = 0
        for pid in self.cli_pids():
            with contextlib.suppress(OSError, ValueError, IndexError):
                for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
                        break
        return total

    def cli_rss_kib(self) -> tuple[int, int]:
        """(number of CLI processes, their summed VmRSS in KiB)."""
        total = n = 0
        for pid in self.cli_pids():
            with contextlib.suppress(OSError, KeyError):
                total += proc_status(pid, "VmRSS")
                n += 1
        return n, total

    # --- API ------------------------------------------------------------------------

    def session_dir(self, scenario: dict[str, Any]) -> Path:
        path = self.sessions_root / uuid.uuid4().hex[:12]
        path.mkdir()
        (path / "scenario.json").write_text(json.dumps(scenario))
        return path

    async def call(self, method: str, path: str, body: Any = None, timeout: float = 60.0) -> tuple[int, Any]:
        return await httpc.request(self.host, self.port, method, path, body, timeout=timeout)

    async def create(self, scenario: dict[str, Any] | None, timeout: float = 60.0) -> str:
        """A session working in a new folder holding `scenario`; with None, in the server's
        default cwd (where a warm CLI can serve it)."""
        body = {} if scenario is None else {"cwd": str(self.session_dir(scenario))}
        status, body = await self.call("POST", "/sessions", body, timeout)
        if status != 200:
            raise RuntimeError(f"{self.label}: create -> {status} {str(body)[:300]}")
        sid: str = body["session_id"]
        return sid

    async def say(self, sid: str, text: str = "go", timeout: float = 30.0) -> int:
        status, _ = await self.call(
            "POST", f"/sessions/{sid}/input", {"type": "user_message", "content": text}, timeout
        )
        return status

    async def delete(self, sid: str, timeout: float = 60.0) -> int:
        status, _ = await self.call("DELETE", f"/sessions/{sid}", None, timeout)
        return status


class Ours(Server):
    name = "ours"

    def __init__(self, tmp: Path, label: str, *, ring_size: int = 1000, max_sessions: int = 1100,
                 store_dsn: str | None = None, sqlite_path: Path | None = None,
                 sessions: dict[str, Any] | None = None, agent: dict[str, Any] | None = None,
                 auth: dict[str, Any] | None = None, env: dict[str, str] | None = None) -> None:
        """`store_dsn`: keep events in that PostgreSQL database; `sqlite_path`: in that SQLite
        file (the embedded store); neither: in memory. `sessions`, `agent`: more keys for
        those tables; `auth`: the [auth] table (default: auth disabled), its secrets in `env`."""
        super().__init__(tmp, label)
        self.env = dict(env or {})
        self.ring_size = ring_size
        self.store = "postgres" if store_dsn else "sqlite" if sqlite_path else "memory"
        self.sqlite_path = sqlite_path
        default_cwd = self.default_cwd = self.tmp / "default-cwd"
        default_cwd.mkdir()
        from tests.standin.toml_writer import dump_toml

        config = {
            "server": {"host": self.host, "port": self.port, "drain_timeout_s": 5},
            "auth": auth or {"disabled": True},
            "sessions": {
                "max_sessions": max_sessions,
                "ring_size": ring_size,
                "idle_timeout_s": 3600,
                "hibernate_after_s": 0,  # the other phases measure live sessions
                "max_streams_per_session": 1000,  # fan-out: 100 subscribers on one session
                **(sessions or {}),
            },
            "agent": {
                "cli_path": str(SCRIPTED_CLI),
                "cwd": str(default_cwd),
                "allowed_cwd_roots": [str(self.sessions_root)],
                "include_partial_messages": True,
                # A fixed pool, as before warm_agents_max, unless a phase sizes it: a pool that
                # starts at its ceiling would add CLIs to every phase's numbers.
                "warm_agents_max": (agent or {}).get("warm_agents", 1),
                **(agent or {}),
                # Sandboxed CLIs get only [agent.env]: the marker must be there to find them.
                "env": {**(agent or {}).get("env", {}), MARK_ENV: self.mark},
            },
            "logging": {"level": "warning"},
        }
        config["store"] = (
            {"backend": "postgres", "dsn": store_dsn} if store_dsn
            else {"backend": "sqlite", "path": str(sqlite_path)} if sqlite_path
            else {"backend": "memory"}
        )
        self.config_path = self.tmp / "daemon.toml"
        self.config_path.write_text(dump_toml(config))

    def command(self) -> list[str]:
        return [sys.executable, "-m", "agent_webkitd", "--config", str(self.config_path)]

    async def healthy(self) -> bool:
        status, _ = await self.call("GET", "/healthz", timeout=2)
        return status == 200

    async def until_warm(self, count: int, timeout: float = 30.0) -> float:
        """Wait until `count` warm CLIs are ready; returns the seconds waited."""
        started = time.monotonic()
        while True:
            status, body = await self.call("GET", "/healthz", timeout=2)
            if status == 200 and body.get("warm_agents", 0) >= count:
                return time.monotonic() - started
            if time.monotonic() - started > timeout:
                raise RuntimeError(f"{self.label}: {count} warm CLI(s) not ready within {timeout:g} s")
            await asyncio.sleep(0.01)

    def signal_stop(self) -> None:
        # The first SIGTERM starts the drain, a second one ends it (README "Drain").
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)


class Peer(Server):
    name = "peer"

    def command(self) -> list[str]:
        return [str(PEER_PYTHON), str(BENCH / "peer_app.py"), "--host", self.host,
                "--port", str(self.port), "--cli", str(SCRIPTED_CLI)]

    async def healthy(self) -> bool:
        status, _ = await self.call("GET", "/openapi.json", timeout=2)
        return status == 200


class Bare(Server):
    """The fan-out ceiling (bench/bare_fanout.py): aiohttp streaming pre-encoded frames."""

    name = "bare"
    store = "bare"

    def command(self) -> list[str]:
        return [sys.executable, str(BENCH / "bare_fanout.py"), "--host", self.host, "--port", str(self.port)]

    async def healthy(self) -> bool:
        status, _ = await self.call("GET", "/healthz", timeout=2)
        return status == 200
