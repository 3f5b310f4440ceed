"""`make demo`: the daemon with the SDK's real bundled Claude Code CLI, offline.

It starts the stand-in Messages API (tests/standin/fake_model.py) on a free port, writes
a temporary daemon config that points every session's CLI at it (loopback only, auth
off), runs `python -m agent_webkitd --config <that file>` in the foreground and prints
the curl walkthrough. Ctrl-C or SIGTERM stops the daemon (one SIGTERM: it closes its
sessions and their CLI processes), then the stand-in. A second Ctrl-C kills the daemon's
process group at once.

    python -m tests.standin.demo [--port 8765] [--workdir demo-work]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any

import aiohttp

from tests.standin.fake_model import run_fake_model
from tests.standin.fixtures import offline_cli_env
from tests.standin.toml_writer import dump_toml

HOST = "127.0.0.1"
STARTUP_TIMEOUT_S = 30
STOP_TIMEOUT_S = 30
DEMO_HIBERNATE_AFTER_S = 30


def daemon_toml(port: int, workdir: Path, model_url: str, cli_env: dict[str, str]) -> str:
    sections: dict[str, dict[str, Any]] = {
        "server": {"host": HOST, "port": port},
        "auth": {"disabled": True},  # the daemon allows this on a loopback address only
        "sessions": {"hibernate_after_s": DEMO_HIBERNATE_AFTER_S},  # short, to see a wake
        # Every CLI in its bubblewrap sandbox, each session in <workdir>/<session id>/.
        "agent": {"cli_path": "", "workspaces_dir": str(workdir), "sandbox": "bwrap", "network": "none"},
        # The model gateway sends the agents' requests to the stand-in with the daemon's key.
        "model": {"upstream_url": model_url},
        "agent.env": {k: v for k, v in cli_env.items()
                      if not k.startswith("ANTHROPIC_") and k != "CLAUDE_CONFIG_DIR"},
        "logging": {"format": "console", "level": "info"},
    }
    return dump_toml(sections)


def banner(base: str, workdir: Path, model_url: str) -> str:
    return f"""
agent-webkitd demo: {base}   (auth off, loopback only)
  real bundled Claude Code CLI, in a bubblewrap sandbox -> the daemon's model gateway ->
  stand-in model at {model_url} (offline, no key needed)
  each session works in {workdir}/<session id>/
  the stand-in model replies by keyword: "write" (Write out.txt), "ask", "slow", "history",
  "bash: <command>" (runs it with Bash), "read: <path>" (the Read tool),
  "make artefact <title>", "update artefact <id> <text>", "read artefact <id>"

Terminal 2, create a session and watch it:
  S=$(curl -s -X POST {base}/sessions | sed -E 's/.*"session_id":"([^"]+)".*/\\1/'); echo $S
  curl -N {base}/sessions/$S/stream

Terminal 3 (set S to the same id), send a message:
  curl -s -w '%{{http_code}}\\n' -X POST {base}/sessions/$S/input \\
       -H 'Content-Type: application/json' \\
       -d '{{"type":"user_message","content":"please write hello to out.txt"}}'

The stream shows `event: permission_request` with a correlation_id; approve it:
  curl -s -w '%{{http_code}}\\n' -X POST {base}/sessions/$S/input \\
       -H 'Content-Type: application/json' \\
       -d '{{"type":"permission_response","correlation_id":"<correlation_id>","behavior":"allow"}}'
  cat {workdir}/$S/out.txt

Try to break out, as an attacker with this session would (approve it as above); the
tool_result shows a session key, an empty /proc/1/environ, no /root, no way out:
  curl -s -w '%{{http_code}}\\n' -X POST {base}/sessions/$S/input \\
       -H 'Content-Type: application/json' \\
       -d '{{"type":"user_message","content":"bash: env; ls / /root; ps ax; cat /proc/1/environ"}}'

Stop the stream (Ctrl-C) and resume after the last id you saw (say 14):
  curl -N -H 'Last-Event-ID: 14' {base}/sessions/$S/stream

Leave the session idle for {DEMO_HIBERNATE_AFTER_S} s: the stream shows `session_state` hibernated and the
CLI process ends (the stream stays open). The next message wakes it with its history:
  curl -s {base}/sessions/$S | grep -o '"state":"[a-z_]*"'
  curl -s -w '%{{http_code}}\n' -X POST {base}/sessions/$S/input \
       -H 'Content-Type: application/json' \
       -d '{{"type":"user_message","content":"what is in the history?"}}'

End the session (open streams get `event: done`):
  curl -s -w '%{{http_code}}\\n' -X DELETE {base}/sessions/$S

Ctrl-C here stops the daemon and the stand-in.
"""


async def wait_healthy(base: str, daemon: asyncio.subprocess.Process) -> bool:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
        for _ in range(STARTUP_TIMEOUT_S * 10):
            if daemon.returncode is not None:
                return False
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                async with http.get(f"{base}/healthz") as resp:
                    if resp.status == 200:
                        return True
            await asyncio.sleep(0.1)
    return False


def kill_group(daemon: asyncio.subprocess.Process) -> None:
    """SIGKILL the daemon and the CLI processes it started (its own process group)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(daemon.pid, signal.SIGKILL)


async def run(port: int, workdir: Path, tmp: Path) -> int:
    signals = asyncio.Queue[int]()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, signals.put_nowait, sig)

    async with run_fake_model(HOST, 0) as model_url:
        config_path = tmp / "demo.toml"
        cli_env = offline_cli_env(model_url, tmp / "claude-config")
        toml = daemon_toml(port, workdir, model_url, cli_env)
        await asyncio.to_thread(config_path.write_text, toml)
        base = f"http://{HOST}:{port}"
        # Its own session: a terminal's Ctrl-C reaches only this process, which then
        # sends the daemon exactly one SIGTERM (a second signal mid-exit would kill it).
        daemon = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "agent_webkitd", "--config", str(config_path),
            start_new_session=True, env={**os.environ, "ANTHROPIC_API_KEY": "demo-key"},
        )
        try:
            return await supervise(daemon, base, workdir, model_url, signals)
        finally:
            if daemon.returncode is None:
                kill_group(daemon)
                await daemon.wait()


async def supervise(
    daemon: asyncio.subprocess.Process, base: str, workdir: Path, model_url: str,
    signals: asyncio.Queue[int],
) -> int:
    exited = asyncio.create_task(daemon.wait())
    healthy = asyncio.create_task(wait_healthy(base, daemon))
    signalled = asyncio.create_task(signals.get())
    await asyncio.wait({healthy, signalled}, return_when=asyncio.FIRST_COMPLETED)
    if healthy.done() and healthy.result():
        print(banner(base, workdir, model_url), flush=True)
    elif not signalled.done():
        healthy.cancel()
        print(f"demo: the daemon did not come up on {base}", file=sys.stderr)
        with contextlib.suppress(ProcessLookupError):
            daemon.terminate()
        return exit_status(await exited)
    healthy.cancel()

    await asyncio.wait({exited, signalled}, return_when=asyncio.FIRST_COMPLETED)
    if exited.done():
        signalled.cancel()
        print(f"demo: the daemon exited with code {exited.result()}", file=sys.stderr)
        return exit_status(exited.result())

    print("\ndemo: stopping the daemon ...", file=sys.stderr, flush=True)
    with contextlib.suppress(ProcessLookupError):
        daemon.terminate()
    second = asyncio.create_task(signals.get())
    await asyncio.wait({exited, second}, timeout=STOP_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED)
    second.cancel()
    if not exited.done():
        print("demo: killing the daemon", file=sys.stderr)
        kill_group(daemon)
    code = await exited
    print(f"demo: daemon stopped (exit code {code}); stand-in model stopped", file=sys.stderr)
    return exit_status(code, expected=0)


def exit_status(code: int, expected: int | None = None) -> int:
    """The demo's exit status for the daemon's: 128 + N if signal N killed it (as a shell
    reports), and never 0 for an exit nobody asked for."""
    if code < 0:
        return 128 - code
    return code if code or code == expected else 1


def port_is_free(port: int) -> bool:
    """Checked up front: otherwise the health check could reach whatever holds the port."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the daemon's listener
        try:
            probe.bind((HOST, port))
        except OSError:
            return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.standin.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8765, help="daemon port on 127.0.0.1 (default 8765)")
    parser.add_argument("--workdir", type=Path, default=Path("demo-work"),
                        help="where each session's workspace is made (default ./demo-work)")
    args = parser.parse_args(argv)
    if not port_is_free(args.port):
        print(f"demo: {HOST}:{args.port} is in use (another daemon?); pick one with --port", file=sys.stderr)
        return 1
    workdir: Path = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="agent-webkitd-demo-") as tmp:
        (Path(tmp) / "claude-config").mkdir()  # the CLI's config and transcripts
        return asyncio.run(run(args.port, workdir, Path(tmp)))


if __name__ == "__main__":
    sys.exit(main())
