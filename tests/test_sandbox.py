"""Agents are untrusted (DESIGN §12), tested as an attacker with a user's token would:
bob's agent (the real bundled CLI, driven by the stand-in model, which runs what bob asks
with Bash and Read) probes for the daemon's secrets, its store and config, alice's files,
transcripts and processes, the daemon, and the host's loopback services. Every probe
prints markers around its command, so a probe that never ran fails the test instead of
passing; and each kind of probe has a control that shows it could have found something.
Meanwhile bob's own work (Bash, Write, Read, python3 in his workspace) keeps working,
across a hibernation and a daemon restart, and the model sees the real key only from
the daemon's gateway.
"""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from agent_webkitd.agents.sandbox import BRIDGE_PORT
from tests.conftest import ROOT, TOKEN, Daemon, api_for, free_port
from tests.standin.fake_model import fetch_requests
from tests.standin.fixtures import fake_model_url, offline_cli_env
from tests.standin.toml_writer import dump_toml
from tests.wire_client import Api, Stream

__all__ = ["fake_model_url"]  # a fixture

TIMEOUT_S = 240
REAL_KEY = "sk-ant-the-real-key-" + uuid.uuid4().hex
ALICE_TOKEN = "alice-token-" + uuid.uuid4().hex
BOB_TOKEN = "bob-token-" + uuid.uuid4().hex
DOTENV_SECRET = "dotenv-secret-" + uuid.uuid4().hex
LOOPBACK_SECRET = "loopback-secret-" + uuid.uuid4().hex
ALICE_FILE_SECRET = "alice-file-" + uuid.uuid4().hex
ALICE_SAID = "alice-said-" + uuid.uuid4().hex
ENV_LEAKS = (TOKEN, ALICE_TOKEN, BOB_TOKEN, REAL_KEY, DOTENV_SECRET, "postgresql://")


@pytest.fixture
async def loopback_service() -> AsyncIterator[int]:
    """A service on the host's loopback, as a metadata endpoint or admin UI would be."""
    async def secret(_: web.Request) -> web.Response:
        return web.Response(text=LOOPBACK_SECRET)

    app = web.Application()
    app.router.add_get("/", secret)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    await runner.cleanup()


def sandboxed_config(model_url: str, workdir: Path, network: str = "none") -> dict[str, Any]:
    """The product's defaults (SQLite store, sandbox, own workspaces) plus two users; the
    CLI's offline switches from the test fixtures, but the model reached only through
    the daemon's gateway with the real key."""
    env = {k: v for k, v in offline_cli_env(model_url, workdir / "unused").items()
           if not k.startswith("ANTHROPIC_") and k != "CLAUDE_CONFIG_DIR"}
    return {
        "agent": {"cli_path": "", "env": env, "sandbox": "bwrap", "network": network},
        "model": {"upstream_url": model_url},
        "store": {"backend": "sqlite"},
        "auth": {"tokens": [{"name": "alice", "env": "ALICE_TOKEN"}, {"name": "bob", "env": "BOB_TOKEN"}]},
        "sessions": {"hibernate_after_s": 3},
    }


async def start_sandboxed(start_daemon: Callable[..., Any], model_url: str, tmp_path: Path,
                          network: str = "none") -> Daemon:
    workdir = tmp_path / "daemon0"
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / ".env").write_text(f"DOTENV_SECRET={DOTENV_SECRET}\n")
    env = {"ANTHROPIC_API_KEY": REAL_KEY, "ALICE_TOKEN": ALICE_TOKEN, "BOB_TOKEN": BOB_TOKEN,
           "DATABASE_URL": "postgresql://admin:pw@127.0.0.1/secret",
           "RUNTIME_DIRECTORY": str(workdir / "run")}
    (workdir / "run").mkdir(exist_ok=True)
    daemon: Daemon = await start_daemon(sandboxed_config(model_url, workdir, network), env=env)
    return daemon


def processes_running(cmdline: str) -> list[int]:
    """Host PIDs of live processes whose command line is `cmdline`."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and (entry / "cmdline").read_bytes().replace(b"\0", b" ").strip() == cmdline.encode():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def split(secret: str) -> str:
    """A shell word for `secret` that does not contain it literally."""
    return f"'{secret[:6]}''{secret[6:]}'"


async def until_hibernated(stream: Stream) -> None:
    while True:
        event = await stream.next(30)
        if event.name == "session_state" and event.data["state"] == "hibernated":
            return


class Agent:
    """One user's session, driven as that user: ask, approve every tool, read results."""

    def __init__(self, api: Api, session_id: str, stream: Stream) -> None:
        self.api, self.id, self.stream = api, session_id, stream

    @classmethod
    async def open(cls, api: Api) -> Agent:
        session_id = await api.create()
        stream = await api.open_stream(session_id)
        await stream.until("session_ready", 30)
        return cls(api, session_id, stream)

    async def turn(self, text: str) -> list[dict[str, Any]]:
        """Say `text`, allow whatever tool it asks for; the tool results of the turn."""
        start = len(self.stream.events)
        await self.api.say(self.id, text)
        while True:
            event = await self.stream.next(60)
            if event.name == "permission_request":
                allow = {"type": "permission_response", "behavior": "allow",
                         "correlation_id": event.data["correlation_id"]}
                assert await self.api.send(self.id, allow) == (204, "")
            elif event.name == "result":
                break
        return [e.data for e in self.stream.events[start:] if e.name == "tool_result"]

    async def bash(self, command: str) -> str:
        """Run `command` with the Bash tool, between markers that prove it ran."""
        [result] = await self.turn(f"bash: echo PROBE-START; {command}; echo PROBE-END")
        output = str(result["output"])
        assert "PROBE-START" in output and "PROBE-END" in output, f"the probe did not run: {output}"
        return output

    async def read(self, path: str) -> dict[str, Any]:
        [result] = await self.turn(f"read: {path}")
        return result


async def test_an_agent_reaches_its_own_workspace_and_the_model_and_nothing_else(
    start_daemon: Callable[..., Any], fake_model_url: str, tmp_path: Path, loopback_service: int,
) -> None:
    daemon = await start_sandboxed(start_daemon, fake_model_url, tmp_path)
    assert daemon.proc is not None
    workdir = daemon.workdir
    async with asyncio.timeout(TIMEOUT_S), api_for(daemon, ALICE_TOKEN) as alice_api, \
            api_for(daemon, BOB_TOKEN) as bob_api:
        health = await (await alice_api.http.get(daemon.base_url + "/healthz")).json()
        assert (health["sandbox"], health["network"]) == ("bwrap", "none")

        # Alice works: a file in her workspace, a conversation in her transcript.
        alice = await Agent.open(alice_api)
        alice_workspace = daemon.workspace(alice.id)
        await alice.bash(f"echo {ALICE_FILE_SECRET} > secret.txt")
        await alice.turn(f"remember {ALICE_SAID}")
        assert (alice_workspace / "secret.txt").read_text().strip() == ALICE_FILE_SECRET
        assert any(ALICE_SAID in p.read_text() for p in daemon.transcripts(alice.id).rglob("*.jsonl"))

        bob = await Agent.open(bob_api)
        bob_workspace = daemon.workspace(bob.id)

        # Bob's own work: Bash, python3, Write, Read, in his workspace.
        out = await bob.bash("pwd; echo mine > mine.txt; python3 -c 'print(6*7)'")
        assert str(bob_workspace) in out and "42" in out
        [written] = await bob.turn("please write hello to out.txt")
        assert written["is_error"] is False
        assert (bob_workspace / "out.txt").read_text() == "hello\n"
        mine = await bob.read(str(bob_workspace / "mine.txt"))
        assert mine["is_error"] is False and "mine" in str(mine["output"])

        # Every process's environment: the sandbox's own only, with the session key.
        out = await bob.bash("for f in /proc/[0-9]*/environ; do tr '\\0' '\\n' < $f; done")
        assert "ANTHROPIC_API_KEY=awk-session-" in out  # control: the probe reads environments
        for secret in ENV_LEAKS:
            assert secret not in out
        session_key = re.search(r"ANTHROPIC_API_KEY=(awk-session-\S+)", out)
        assert session_key is not None
        out = await bob.bash("env")
        assert "ANTHROPIC_BASE_URL=http://127.0.0.1:" in out
        for secret in ENV_LEAKS:
            assert secret not in out

        # The daemon's files: config, .env, the store, the runtime folder, other workspaces.
        out = await bob.bash(f"ls -la {workdir} {workdir}/workspaces {workdir}/workspaces/.cli; "
                             f"cat {workdir}/daemon.toml {workdir}/.env {workdir}/sessions.db")
        listing = out.split("PROBE-START")[1]
        assert "mine.txt" not in listing and alice.id not in listing  # no workspace's files
        for name in ("daemon.toml", ".env", "sessions.db"):
            assert f"cat: {workdir}/{name}: No such file or directory" in out
        assert ALICE_FILE_SECRET not in out and DOTENV_SECRET not in out
        # (Each secret is split in the command, so bob's own transcript of it never matches.)
        out = await bob.bash(f"cat {alice_workspace}/secret.txt; ls {alice_workspace}; "
                             f"grep -rs {split(ALICE_SAID)} $HOME /tmp /run {workdir} | head -3; "
                             f"grep -rs {split(ALICE_FILE_SECRET)} $HOME /tmp /run {workdir} | head -3")
        assert ALICE_FILE_SECRET not in out and ALICE_SAID not in out
        out = await bob.bash(f"grep -rls {split('PROBE-START')} $HOME /tmp {bob_workspace}/.. | head -3")
        assert "/tmp/" in out  # control: the same grep finds bob's own traces
        read = await bob.read(str(alice_workspace / "secret.txt"))
        assert ALICE_FILE_SECRET not in str(read["output"])
        out = await bob.bash("ls -a /root /home /run /run/*; ls / ")
        assert "No such file" in out  # /root is not there
        assert "agent" in out and "model.sock" in out

        # Processes: only the sandbox's own; the daemon cannot be signalled.
        out = await bob.bash(f"ps -eo pid,args; kill -0 {daemon.proc.pid} && echo SIGNAL''LED")
        assert "agent_webkitd" not in out and "SIGNALLED" not in out
        assert "bwrap" in out  # control: ps lists processes (the sandbox's PID 1)
        assert len([line for line in out.splitlines() if "claude" in line and "ps -eo" not in line]) <= 2

        # The network: neither the host's loopback services, nor the daemon, nor Postgres,
        # nor the internet; the model only through the gateway.
        targets = [("127.0.0.1", loopback_service), ("127.0.0.1", daemon.port), ("127.0.0.1", 5432),
                   ("1.1.1.1", 443), ("169.254.169.254", 80)]
        connect = "python3 -c \"import socket; socket.create_connection(('{}', {}), timeout=3)\""
        out = await bob.bash("; ".join(
            f"{connect.format(host, port)} && echo REACHED {port} || echo refused {port}" for host, port in targets
        ))
        assert "REACHED" not in out, out
        assert all(f"refused {port}" in out for _, port in targets), out
        out = await bob.bash(f"python3 -c \"import urllib.request as u; "
                             f"print(u.urlopen('http://127.0.0.1:{loopback_service}/').read())\"")
        assert LOOPBACK_SECRET not in out

        # The model saw the real key, from the gateway only, never a session key.
        calls = [r for r in await fetch_requests(fake_model_url) if r["path"].startswith("/v1/")]
        assert calls and {c["x_api_key"] for c in calls} == {REAL_KEY}
        assert not any(c["authorization"] for c in calls)

        # A process that leaves the CLI's process group and environment behind still dies
        # with the sandbox's PID namespace when the CLI stops.
        await bob.bash("setsid env -i sleep 7777 > /dev/null 2>&1 < /dev/null & echo detached")
        assert processes_running("sleep 7777"), "control: the detached process runs"

        # Bob's files survive a hibernation (the CLI stops; its session key dies with it)...
        await until_hibernated(bob.stream)
        for _ in range(50):
            if not processes_running("sleep 7777"):
                break
            await asyncio.sleep(0.1)
        assert not processes_running("sleep 7777"), "a process outlived its sandbox"
        out = await bob.bash("cat mine.txt out.txt")
        assert "mine" in out and "hello" in out
        alice.stream.close()
        bob.stream.close()

    # ...and a restart of the daemon (the SQLite store keeps the session).
    assert await daemon.stop() == 0
    assert session_key is not None
    stale_key = session_key.group(1)
    await daemon.start()
    async with asyncio.timeout(TIMEOUT_S), api_for(daemon, BOB_TOKEN) as bob_api:
        _, info, _ = await bob_api.request("GET", f"/sessions/{bob.id}")
        stream = await bob_api.open_stream(bob.id, last_event_id=info["last_seq"])
        again = Agent(bob_api, bob.id, stream)
        out = await again.bash("cat mine.txt out.txt; env | grep ANTHROPIC_API_KEY")
        assert "mine" in out and "hello" in out
        assert stale_key not in out  # every CLI start gets a fresh key
        # The old key is dead at the gateway.
        connector = aiohttp.UnixConnector(path=str(workdir / "run" / "model.sock"))
        async with aiohttp.ClientSession(connector=connector) as http:
            body = {"model": "x", "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]}
            async with http.post("http://gateway/v1/messages", json=body,
                                 headers={"x-api-key": stale_key}) as resp:
                assert resp.status == 401
        stream.close()


async def test_closing_a_session_deletes_its_workspace_and_a_fork_starts_with_a_copy(
    start_daemon: Callable[..., Any], fake_model_url: str, tmp_path: Path,
) -> None:
    daemon = await start_sandboxed(start_daemon, fake_model_url, tmp_path)
    async with asyncio.timeout(TIMEOUT_S), api_for(daemon, BOB_TOKEN) as api:
        bob = await Agent.open(api)
        await bob.bash("echo original > kept.txt")
        _, info, _ = await api.request("GET", f"/sessions/{bob.id}")
        claude_id = info["claude_session_id"]
        fork_id = await api.create(resume=claude_id, fork=True)
        fork_stream = await api.open_stream(fork_id)
        fork = Agent(api, fork_id, fork_stream)
        out = await fork.bash("cat kept.txt; echo forked > kept.txt; pwd")
        assert "original" in out and str(daemon.workspace(fork_id)) in out
        assert (daemon.workspace(bob.id) / "kept.txt").read_text() == "original\n"
        assert await api.delete(bob.id) == 204
        assert not daemon.workspace(bob.id).exists()
        assert (daemon.workspace(fork_id) / "kept.txt").read_text() == "forked\n"
        bob.stream.close()
        fork_stream.close()


async def test_sandbox_none_is_loud_and_still_keeps_the_key_out_of_the_agent(
    start_daemon: Callable[..., Any], fake_model_url: str, tmp_path: Path,
) -> None:
    workdir = tmp_path / "daemon0"
    config = sandboxed_config(fake_model_url, workdir)
    config["agent"]["sandbox"] = "none"
    config["agent"]["env"]["CLAUDE_CODE_OAUTH_TOKEN"] = "oauth-from-an-old-config"  # never passed on
    daemon = await start_daemon(config, env={"ANTHROPIC_API_KEY": REAL_KEY, "ALICE_TOKEN": ALICE_TOKEN,
                                             "BOB_TOKEN": BOB_TOKEN})
    assert '"event": "sandbox_off"' in daemon.logs()
    async with asyncio.timeout(TIMEOUT_S), api_for(daemon, BOB_TOKEN) as api:
        health = await (await api.http.get(daemon.base_url + "/healthz")).json()
        assert health["sandbox"] == "none"
        bob = await Agent.open(api)
        out = await bob.bash("env | grep -E 'ANTHROPIC|CLAUDE_CONFIG_DIR|OAUTH'; pwd")
        assert REAL_KEY not in out and "ANTHROPIC_API_KEY=awk-session-" in out
        assert "oauth-from-an-old-config" not in out
        assert str(daemon.workspace(bob.id)) in out
        calls = [r for r in await fetch_requests(fake_model_url) if r["path"].startswith("/v1/")]
        assert {c["x_api_key"] for c in calls} == {REAL_KEY}
        bob.stream.close()


def test_start_up_without_a_usable_sandbox_exits_2_naming_the_cause(tmp_path: Path) -> None:
    config = tmp_path / "daemon.toml"
    config.write_text("[auth]\ndisabled = true\n")
    env = {**os.environ, "PATH": "/nonexistent"}
    missing = subprocess.run([sys.executable, "-m", "agent_webkitd", "--config", str(config)],
                             env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert missing.returncode == 2
    assert "bubblewrap is not installed" in missing.stderr and "apt-get install bubblewrap" in missing.stderr
    # Namespaces blocked (as by a kernel setting or the unit's RestrictNamespaces=): here,
    # a user namespace whose limit on new user namespaces is 0.
    blocked = subprocess.run(
        ["unshare", "-U", "-r", "sh", "-c",
         'echo 0 > /proc/sys/user/max_user_namespaces && exec "$@"', "sh",
         sys.executable, "-m", "agent_webkitd", "--config", str(config)],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )
    assert blocked.returncode == 2, blocked.stderr
    assert "cannot create a sandbox" in blocked.stderr and "RestrictNamespaces" in blocked.stderr


UNPRIVILEGED = "awk-sandbox-test"


@asynccontextmanager
async def api_at(base_url: str, token: str) -> AsyncIterator[Api]:
    api = Api(base_url, token)
    try:
        yield api
    finally:
        await api.close()


def unprivileged_user() -> pwd.struct_passwd:
    """The user the test runs the daemon as, as the unit runs it (created if missing)."""
    try:
        return pwd.getpwnam(UNPRIVILEGED)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                        UNPRIVILEGED], check=True)
        return pwd.getpwnam(UNPRIVILEGED)


async def test_an_unprivileged_daemon_sandboxes_its_agents_with_user_namespaces(fake_model_url: str) -> None:
    """As under systemd (User=agent-webkitd): no root, so bubblewrap's namespaces are
    unprivileged user namespaces, and the agent is that user with no capabilities."""
    if os.geteuid() != 0:
        pytest.skip("the suite already runs unprivileged: every daemon in it is this case")
    user = unprivileged_user()
    workdir = Path(tempfile.mkdtemp(prefix="awk-unprivileged-"))  # /tmp/pytest-of-root is root's
    try:
        os.chown(workdir, user.pw_uid, user.pw_gid)
        port = free_port()
        config = sandboxed_config(fake_model_url, workdir)
        config["server"] = {"host": "127.0.0.1", "port": port}
        (workdir / "daemon.toml").write_text(dump_toml(config))
        # The venv's interpreter lives under /root (0700): the system's Python 3.11 with the
        # venv's packages, as a user of its own would run it. The checkout and the venv may
        # lie in folders that user cannot enter either, so they are bind-mounted for the
        # daemon at folders it can (in a mount namespace of its own).
        site = next(p for p in sys.path if p.endswith("site-packages"))
        code, packages = workdir / "code", workdir / "packages"
        for mount_point in (code, packages):
            mount_point.mkdir(mode=0o755)
        env = {"PATH": "/usr/bin:/bin", "HOME": str(workdir), "PYTHONPATH": f"{code}:{packages}",
               "AGENT_WEBKIT_AUTH_TOKEN": TOKEN, "ALICE_TOKEN": ALICE_TOKEN, "BOB_TOKEN": BOB_TOKEN,
               "ANTHROPIC_API_KEY": REAL_KEY}
        mount = 'mount --bind "$1" "$2" && mount --bind "$3" "$4" && shift 4 && exec "$@"'
        with open(workdir / "daemon.log", "wb") as log:  # noqa: ASYNC230 - before the loop runs it
            proc = subprocess.Popen(  # noqa: ASYNC220 - a long-lived child, never awaited
                ["unshare", "--mount", "--propagation", "private", "sh", "-c", mount, "sh",
                 str(ROOT), str(code), site, str(packages),
                 "setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups",
                 "--inh-caps=-all", "/usr/bin/python3", "-m", "agent_webkitd", "--config", "daemon.toml"],
                cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT,
            )
        try:
            base_url = f"http://127.0.0.1:{port}"
            async with asyncio.timeout(TIMEOUT_S), api_at(base_url, BOB_TOKEN) as api:
                while True:
                    assert proc.poll() is None, (workdir / "daemon.log").read_text()
                    try:
                        if (await api.request("GET", "/healthz"))[0] == 200:
                            break
                    except aiohttp.ClientError:
                        await asyncio.sleep(0.1)
                bob = await Agent.open(api)
                out = await bob.bash("id -u; grep CapEff /proc/self/status; echo mine > mine.txt; "
                                     "cat mine.txt; ls /root; cat /proc/1/environ | tr '\\0' '\\n'")
                assert f"{user.pw_uid}\n" in out and "CapEff:\t0000000000000000" in out
                assert "mine" in out and "No such file" in out and REAL_KEY not in out
                workspace = workdir / "workspaces" / bob.id
                assert workspace.stat().st_uid == user.pw_uid and workspace.stat().st_mode & 0o777 == 0o700
                assert (workspace / "mine.txt").read_text() == "mine\n"
                bob.stream.close()
        finally:
            proc.terminate()
            assert proc.wait(timeout=30) == 0, (workdir / "daemon.log").read_text()[-3000:]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def test_check_sandbox_reports_what_an_agent_reaches(tmp_path: Path) -> None:
    """The operator's check: exit 0 when the sandbox holds, 1 (with the problems) when not."""
    def check(extra: str) -> tuple[int, dict[str, Any]]:
        config = tmp_path / "daemon.toml"
        config.write_text(f"[auth]\ndisabled = true\n{extra}")
        (tmp_path / ".env").write_text("A=1\n")
        done = subprocess.run([sys.executable, "-m", "agent_webkitd", "check-sandbox", "--config", str(config)],
                              capture_output=True, text=True, timeout=60, cwd=tmp_path)
        return done.returncode, json.loads(done.stdout)

    code, report = check("")
    assert (code, report["ok"], report["problems"]) == (0, True, []), report
    findings = report["findings"]
    assert "capabilities 0000000000000000" in findings and "blocked 1.1.1.1/443" in findings
    assert f"hidden {tmp_path}" in findings and "hidden /root" in findings  # the config's folder
    assert f"reaches 127.0.0.1/{BRIDGE_PORT}" in findings  # the model gateway, the one way out
    code, report = check('[agent]\nsandbox = "none"\n')
    assert code == 1 and not report["ok"]
    assert "the agent can read /root" in report["problems"]


async def test_a_sandbox_that_fails_for_one_session_fails_its_create_loudly_never_unconfined(
    start_daemon: Callable[..., Any], tmp_path: Path,
) -> None:
    """bubblewrap refusing one CLI (here: its binary is gone) is that create's 502 with
    bubblewrap's own words; nothing runs outside the sandbox instead."""
    gone = tmp_path / "claude-gone"
    daemon = await start_daemon({"agent": {"cli_path": str(gone), "start_timeout_s": 20}})
    async with api_for(daemon) as api:
        status, body, _ = await api.request("POST", "/sessions", {})
        assert status == 502 and body["error"]["code"] == "agent_start_failed", body
        assert f"Can't find source path {gone}" in body["error"]["message"]
        assert '"event": "agent_start_failed"' in daemon.logs()
        _, listing, _ = await api.request("GET", "/sessions")
        assert listing["sessions"] == [] and not list((daemon.workdir / "workspaces").glob("*-*"))


async def test_with_the_model_down_the_turn_fails_with_the_gateways_502_and_the_daemon_serves_on(
    start_daemon: Callable[..., Any], tmp_path: Path,
) -> None:
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    daemon = await start_sandboxed(start_daemon, down, tmp_path)
    async with asyncio.timeout(TIMEOUT_S), api_for(daemon, BOB_TOKEN) as api:
        bob = await Agent.open(api)
        await api.say(bob.id, "hello")
        result = await bob.stream.until("result", 60)
        assert result.data["is_error"] is True and "502" in json.dumps(result.data), result.data
        assert '"event": "model_upstream_unreachable"' in daemon.logs()
        assert (await api.request("GET", "/healthz"))[0] == 200
        bob.stream.close()


async def test_a_client_chosen_cwd_never_holds_the_daemons_files_or_another_workspace(
    start_daemon: Callable[..., Any], tmp_path: Path,
) -> None:
    workdir = tmp_path / "daemon0"  # the config, .env, the store and the workspaces are here
    daemon = await start_daemon({"agent": {"allowed_cwd_roots": [str(workdir)]}})
    async with api_for(daemon) as api:
        mine = await api.create()
        (workdir / "elsewhere").mkdir()
        for cwd, allowed in ((workdir, False), (workdir / "workspaces", False),
                             (daemon.workspace(mine), False), (workdir / "elsewhere", True)):
            status, body, _ = await api.request("POST", "/sessions", {"cwd": str(cwd)})
            if allowed:
                assert status == 200, body
            else:
                assert (status, body["error"]["code"]) == (403, "cwd_not_allowed"), (cwd, body)


async def test_network_host_reaches_the_model_through_the_gateways_port_and_the_hosts_loopback(
    start_daemon: Callable[..., Any], fake_model_url: str, tmp_path: Path, loopback_service: int,
) -> None:
    """The documented risk of `network = "host"`: the host's loopback is the agent's too;
    the files stay confined and the key stays with the gateway."""
    daemon = await start_sandboxed(start_daemon, fake_model_url, tmp_path, network="host")
    async with asyncio.timeout(TIMEOUT_S), api_for(daemon, BOB_TOKEN) as api:
        bob = await Agent.open(api)
        out = await bob.bash(
            f"env | grep ANTHROPIC; ls {daemon.workdir}; python3 -c \"import urllib.request as u; "
            f"print(u.urlopen('http://127.0.0.1:{loopback_service}/').read())\""
        )
        assert LOOPBACK_SECRET in out and "ANTHROPIC_API_KEY=awk-session-" in out and REAL_KEY not in out
        assert "daemon.toml" not in out and "sessions.db" not in out
        calls = [r for r in await fetch_requests(fake_model_url) if r["path"].startswith("/v1/")]
        assert calls and {c["x_api_key"] for c in calls} == {REAL_KEY}
        bob.stream.close()
