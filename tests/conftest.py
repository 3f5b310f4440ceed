"""Fixtures that start real things: the daemon as a process on a real port, with the
scripted CLI stand-in as its `cli_path` (or the real bundled CLI plus a stand-in model).

Every daemon a test starts tags its CLI processes with a unique environment marker, so
the fixture can prove on shutdown that no CLI process was left behind.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.pgdb import temporary_database
from tests.standin.toml_writer import dump_toml
from tests.wire_client import Api

ROOT = Path(__file__).resolve().parent.parent
SCRIPTED_CLI = ROOT / "tests" / "standin" / "scripted_cli.py"
TOKEN = "test-token-0123456789"
MARK_ENV = "AGENT_WEBKITD_TEST_MARK"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def processes_with_mark(mark: str) -> list[int]:
    """PIDs of live processes whose environment carries this test marker."""
    found = []
    needle = f"{MARK_ENV}={mark}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            status = (entry / "status").read_text()
        except OSError:
            continue
        if needle in environ.split(b"\0") and "State:\tZ" not in status:
            found.append(int(entry.name))
    return found


class Daemon:
    """A real agent-webkitd process."""

    def __init__(self, workdir: Path, overrides: dict[str, dict[str, Any]], env: dict[str, str] | None) -> None:
        self.workdir = workdir
        self.mark = uuid.uuid4().hex
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.sessions_root = workdir / "sessions"
        self.sessions_root.mkdir(parents=True, exist_ok=True)
        config: dict[str, dict[str, Any]] = {
            "server": {"host": "127.0.0.1", "port": self.port, "keepalive_s": 15},
            "sessions": {"ring_size": 1000},
            "agent": {
                "cli_path": str(SCRIPTED_CLI),
                "allowed_cwd_roots": [str(self.sessions_root)],
                # Tests count their sessions' CLI processes, so no warm ones unless a test
                # asks (test_warm.py; the HTTP, streaming and conversation tests run with one).
                "warm_agents": 0,
                # Each session works in workspaces/<id>/, its CLI's state (transcripts, which a
                # wake resumes from) in workspaces/.cli/<id>/, all in the test's folder.
                "env": {"SCRIPTED_CLI_LOG": "cli-log.jsonl"},
            },
            "logging": {"format": "json", "level": "debug"},
            "store": {"backend": "memory"},  # tests of the durable stores say so
        }
        for section, values in overrides.items():
            if not isinstance(values, dict):  # an array of tables ([[budgets]])
                config[section] = values
                continue
            merged = {**config.get(section, {}), **values}
            if section == "agent" and "env" in values:
                merged["env"] = {**config["agent"]["env"], **values["env"]}
            config[section] = merged
        config["agent"]["env"] = {**config["agent"]["env"], MARK_ENV: self.mark}
        self.config_path = workdir / "daemon.toml"
        self.config_path.write_text(dump_toml(config))
        self.log_path = workdir / "daemon.log"
        self.env = {**os.environ, "AGENT_WEBKIT_AUTH_TOKEN": TOKEN, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.killed = False

    async def start(self) -> None:
        self.killed = False  # started again after a kill(): stop() must stop this one
        self._log = open(self.log_path, "wb")  # noqa: ASYNC230 - closed in stop()
        self.proc = subprocess.Popen(  # noqa: ASYNC220 - a long-lived child, never awaited
            [sys.executable, "-m", "agent_webkitd", "--config", str(self.config_path)],
            stdout=self._log, stderr=subprocess.STDOUT, env=self.env, cwd=self.workdir,
        )
        async with aiohttp.ClientSession() as http:
            for _ in range(300):
                if self.proc.poll() is not None:
                    raise RuntimeError(f"daemon exited early:\n{self.log_path.read_text()}")
                try:
                    async with http.get(self.base_url + "/healthz") as resp:
                        if resp.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.05)
        raise RuntimeError("daemon did not become healthy")

    def session_dir(self, scenario: dict[str, Any] | None = None) -> Path:
        """A fresh working directory for one session, optionally with a scenario file."""
        path = self.sessions_root / uuid.uuid4().hex[:12]
        path.mkdir()
        if scenario is not None:
            (path / "scenario.json").write_text(json.dumps(scenario))
        return path

    def cli_log(self, cwd: Path) -> list[dict[str, Any]]:
        """What the scripted CLI running in `cwd` received on stdin, parsed."""
        log = cwd / "cli-log.jsonl"
        if not log.exists():
            return []
        entries = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        return [json.loads(e["line"]) for e in entries if e.get("dir") == "in"]

    def workspace(self, session_id: str) -> Path:
        return self.workdir / "workspaces" / session_id

    def transcripts(self, session_id: str) -> Path:
        """The projects/ folder of a session's own CLI state."""
        return self.workdir / "workspaces" / ".cli" / session_id / "projects"

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL, as a host that dies: nothing is flushed, nothing is released."""
        assert self.proc is not None
        self.killed = True
        self.proc.kill()
        self.proc.wait()

    async def stop(self) -> int:
        assert self.proc is not None
        if self.killed:
            self._log.close()
            return 0
        # SIGTERM starts the drain (sessions may live on); a second SIGTERM a moment
        # later ends it, as an impatient operator would. Drain tests signal on their own.
        for grace_s in (0.1, 20.0):
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
            for _ in range(int(grace_s / 0.05)):
                if self.proc.poll() is not None:
                    break
                await asyncio.sleep(0.05)
        if self.proc.poll() is None:
            self.proc.kill()
        self._log.close()
        return self.proc.wait()

    def orphans(self) -> list[int]:
        return processes_with_mark(self.mark)


@pytest.fixture
async def start_daemon(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """Start daemons with config overrides; each is stopped and checked for orphans after the test."""
    started: list[Daemon] = []

    async def start(overrides: dict[str, dict[str, Any]] | None = None, env: dict[str, str] | None = None) -> Daemon:
        daemon = Daemon(tmp_path / f"daemon{len(started)}", overrides or {}, env)
        daemon.workdir.mkdir(parents=True, exist_ok=True)
        started.append(daemon)
        await daemon.start()
        return daemon

    yield start
    for daemon in started:
        code = await daemon.stop()
        assert code == 0, f"daemon exited with {code}:\n{daemon.logs()[-5000:]}"
        for _ in range(100):
            if not daemon.orphans():
                break
            await asyncio.sleep(0.05)
        assert daemon.orphans() == [], "CLI processes left behind after shutdown"


@pytest.fixture
async def pg_dsn() -> AsyncIterator[str]:
    """A fresh PostgreSQL database for this test, dropped afterwards."""
    async with temporary_database() as dsn:
        yield dsn


@pytest.fixture
async def daemon(start_daemon: Callable[..., Any]) -> Daemon:
    d: Daemon = await start_daemon()
    return d


@pytest.fixture
async def warm_daemon(start_daemon: Callable[..., Any]) -> Daemon:
    """A daemon with a warm CLI, as in production: creates without a cwd of their own take it.
    A fixed pool of one: a pool that starts at warm_agents_max would start eight CLIs with every
    daemon here (test_warm.py tests the pool's growth)."""
    d: Daemon = await start_daemon({"agent": {"warm_agents": 1, "warm_agents_max": 1}})
    return d


@pytest.fixture
async def api(daemon: Daemon) -> AsyncIterator[Api]:
    client = Api(daemon.base_url, TOKEN)
    yield client
    await client.close()


@asynccontextmanager
async def api_for(daemon: Daemon, token: str | None = TOKEN) -> AsyncIterator[Api]:
    client = Api(daemon.base_url, token)
    try:
        yield client
    finally:
        await client.close()
