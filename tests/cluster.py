"""Three agent-webkitd hosts on one PostgreSQL behind a real nginx running the shipped
conf/nginx-cluster.conf (DESIGN §14): the harness of tests/test_cluster.py and of `make
bench`'s cluster phase.

Each host is a `Daemon` (tests/conftest.py) with a folder, and so a workspaces_dir, of its
own. nginx is a child process (`-g 'daemon off;'`) whose pid file, logs and temporary files
stay in the test's folder; the shipped config is used as it is, with only its upstream
`server` lines, `listen`, `server_name` and access log replaced (`render_cluster_conf`), inside
a main config that adds what a system nginx.conf would (events{}, paths). A host keeps its
port across restarts, since the upstream names it by port.

Clients talk to nginx only, and keep the status of every response they get (`Client`);
`Follower` reads a session's stream through nginx the way EventSource does, reconnecting
with Last-Event-ID whenever a stream ends without `done`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from tests.conftest import ROOT, TOKEN, Daemon, free_port, processes_with_mark
from tests.wire_client import Api, Event, Stream, StreamRefused

NGINX = "/usr/sbin/nginx"
CLUSTER_CONF = ROOT / "conf" / "nginx-cluster.conf"
HOSTS = 3
STREAM_RETRY_S = 0.2  # a refused stream (re)connect is tried again after this, as EventSource does

# The wrapper a system nginx.conf would be. `user root`: the test's folders are root's and
# 0700, and workers running as the default `nobody` could not write uploads' temporary files.
MAIN_CONF = """\
user root;
worker_processes 1;
worker_rlimit_nofile 8192;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log notice;
events {{
    worker_connections 4096;  # the bench: hundreds of streams, each a client and an upstream connection
}}
http {{
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    include {prefix}/cluster.conf;
}}
"""


def replace_once(text: str, old: str | re.Pattern[str], new: str) -> str:
    """`text` with `old` replaced by `new`; `old` must occur exactly once (a change to the
    shipped config that the harness no longer understands fails loudly, here)."""
    pattern = old if isinstance(old, re.Pattern) else re.compile(re.escape(old))
    replaced, count = pattern.subn(lambda _: new, text)
    if count != 1:
        raise ValueError(f"{CLUSTER_CONF.name}: expected {pattern.pattern!r} once, found it {count} times")
    return replaced


def render_cluster_conf(conf: str, hosts: list[str], port: int, access_log: Path) -> str:
    """The shipped cluster config for these hosts ("127.0.0.1:PORT"), listening on loopback."""
    servers = "".join(f"    server {host} max_fails=0;\n" for host in hosts)
    conf = replace_once(conf, re.compile(r"(    server 10\.0\.0\.\d+:8765 max_fails=0;\n)+"), servers)
    conf = replace_once(conf, "    listen 80;\n", f"    listen 127.0.0.1:{port};\n")
    conf = replace_once(conf, "server_name agent.example.com;", "server_name localhost;")
    return replace_once(conf, "/var/log/nginx/agent-webkitd.access.log", str(access_log))


@dataclass(frozen=True)
class Passed:
    """One line of nginx's access log: a request and the hosts nginx passed it to."""

    method: str
    path: str
    status: int
    upstreams: list[str]  # "127.0.0.1:PORT", in the order nginx tried them
    upstream_statuses: list[str]


ACCESS_LINE = re.compile(
    r'^\S+ \[[^\]]+\] "(?P<method>\S+) (?P<path>\S+) \S+" (?P<status>\d+) \d+ \S+ "[^"]*" '
    r'"(?P<upstreams>[^"]*)" "(?P<statuses>[^"]*)"$'
)


class Nginx:
    """nginx with the cluster config, as a child process."""

    def __init__(self, prefix: Path, hosts: list[str]) -> None:
        self.prefix = prefix
        prefix.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.access_log = prefix / "access.log"
        self.error_log = prefix / "error.log"
        (prefix / "cluster.conf").write_text(
            render_cluster_conf(CLUSTER_CONF.read_text(), hosts, self.port, self.access_log)
        )
        self.main_conf = prefix / "nginx.conf"
        self.main_conf.write_text(MAIN_CONF.format(prefix=prefix))
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self, *extra: str) -> list[str]:
        # -e: the log for what happens before the config is read (not /var/log/nginx).
        return [NGINX, "-p", str(self.prefix), "-c", str(self.main_conf), "-e", str(self.error_log), *extra]

    def check(self) -> None:
        """`nginx -t` on the rendered config: invalid is a failure, with nginx's words."""
        done = subprocess.run(self.command("-t"), capture_output=True, text=True, timeout=30)
        if done.returncode != 0:
            raise RuntimeError(f"nginx -t rejects the cluster config:\n{done.stderr}")

    async def start(self) -> None:
        await asyncio.to_thread(self.check)
        self.proc = subprocess.Popen(  # noqa: ASYNC220 - a long-lived child, never awaited
            self.command("-g", "daemon off;"), stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        )
        for _ in range(200):
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited at start:\n{self.errors()}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.5):
                return
            await asyncio.sleep(0.05)
        raise RuntimeError(f"nginx does not listen on {self.port}:\n{self.errors()}")

    async def stop(self) -> None:
        """Fast shutdown (SIGTERM): open streams are cut, as they would be."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            await asyncio.wait_for(asyncio.to_thread(self.proc.wait), 10)
        except TimeoutError:
            self.proc.kill()
            self.proc.wait()

    def errors(self) -> str:
        return self.error_log.read_text(errors="replace") if self.error_log.exists() else ""

    async def logged(self, method: str, path: str, count: int = 1) -> list[Passed]:
        """The logged requests `method path`, once there are at least `count` of them
        (nginx writes a line just after the response has gone out)."""
        async with asyncio.timeout(5):
            while True:
                found = [p for p in self.passed() if (p.method, p.path) == (method, path)]
                if len(found) >= count:
                    return found
                await asyncio.sleep(0.02)

    def passed(self) -> list[Passed]:
        """Every request nginx has logged so far (a stream is logged when it ends)."""
        if not self.access_log.exists():
            return []
        out = []
        for line in self.access_log.read_text(errors="replace").splitlines():
            match = ACCESS_LINE.match(line)
            assert match, f"an access log line the harness cannot read: {line!r}"
            out.append(Passed(
                match["method"], match["path"], int(match["status"]),
                [u for u in match["upstreams"].split(", ") if u != "-"],
                [s for s in match["statuses"].split(", ") if s != "-"],
            ))
        return out


@dataclass(frozen=True)
class Seen:
    """One response a client got (status 0: no response at all, `error` says why)."""

    method: str
    path: str
    status: int
    seconds: float
    error: str = ""


class Client(Api):
    """A client of the cluster: talks to nginx only, and keeps every response it gets,
    stream (re)connects included, in `seen`."""

    def __init__(self, base_url: str, token: str | None = TOKEN, connections: int = 100) -> None:
        # Api's own session, with room for as many connections as the caller needs (a
        # stream holds one for its whole life).
        self.base_url, self.token = base_url, token
        self.http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=connections),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=5),
        )
        self.seen: list[Seen] = []

    async def request(self, method: str, path: str, body: Any = None, *, raw: bytes | None = None,
                      headers: dict[str, str] | None = None) -> tuple[int, Any, dict[str, str]]:
        started = time.monotonic()
        try:
            status, payload, answer_headers = await super().request(method, path, body, raw=raw, headers=headers)
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.seen.append(Seen(method, path, 0, time.monotonic() - started, repr(exc)))
            raise
        self.seen.append(Seen(method, path, status, time.monotonic() - started,
                              json.dumps(payload)[:300] if status >= 500 else ""))
        return status, payload, answer_headers

    async def open_stream(self, session_id: str, last_event_id: str | int | None = None,
                          headers: dict[str, str] | None = None, query: str = "") -> Stream:
        path, started = f"/sessions/{session_id}/stream", time.monotonic()
        try:
            stream = await super().open_stream(session_id, last_event_id, headers, query)
        except StreamRefused as exc:
            self.seen.append(Seen("GET", path, exc.status, time.monotonic() - started, str(exc.body)[:300]))
            raise
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.seen.append(Seen("GET", path, 0, time.monotonic() - started, repr(exc)))
            raise
        self.seen.append(Seen("GET", path, 200, time.monotonic() - started))
        return stream

    async def download(self, path: str) -> tuple[int, bytes]:
        """GET `path` (a workspace file: bytes, not JSON); its status and body."""
        started = time.monotonic()
        try:
            async with self.http.get(self.base_url + path, headers=self.headers(),
                                     timeout=aiohttp.ClientTimeout(total=90)) as resp:
                body = await resp.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.seen.append(Seen("GET", path, 0, time.monotonic() - started, repr(exc)))
            raise
        self.seen.append(Seen("GET", path, resp.status, time.monotonic() - started,
                              body[:300].decode(errors="replace") if resp.status >= 500 else ""))
        return resp.status, body

    def failures(self) -> list[Seen]:
        """Every response with a 5xx status, and every request that got no response."""
        return [s for s in self.seen if s.status >= 500 or s.status == 0]


class Follower:
    """One session's stream through nginx, read as EventSource reads it: whenever the stream
    ends without `done` (its host drained, died, or the client gave up on it), reconnect with
    Last-Event-ID. `events` is everything received, in order, across the connections."""

    def __init__(self, client: Client, session_id: str, silence_s: float = 120.0) -> None:
        self.client, self.session_id, self.silence_s = client, session_id, silence_s
        self.events: list[Event] = []
        self.connects = 0
        self._stream: Stream | None = None
        self._grew = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> Follower:
        self._task = asyncio.create_task(self._run())
        return self

    async def _run(self) -> None:
        while True:
            last = self.events[-1].id if self.events else 0
            try:
                self._stream = await self.client.open_stream(self.session_id, last)
            except (StreamRefused, aiohttp.ClientError, TimeoutError):  # kept in client.seen
                await asyncio.sleep(STREAM_RETRY_S)
                continue
            self.connects += 1
            try:
                while True:
                    event = await self._stream.next(self.silence_s)
                    self.events.append(event)
                    self._grew.set()
                    self._grew = asyncio.Event()
                    if event.name == "done":
                        return
            except (EOFError, aiohttp.ClientError, TimeoutError):
                pass  # ended without `done`: reconnect
            finally:
                self._stream.close()

    def reconnect(self) -> None:
        """Give up on the current connection (as a client does whose keepalives stopped)."""
        if self._stream is not None:
            self._stream.close()

    async def find(self, found: Callable[[Event], bool], start: int = 0, timeout: float | None = 30.0) -> int:
        """The index of the first event from `start` on for which `found` is true, waiting
        for it."""
        async with asyncio.timeout(timeout):
            while True:
                grew = self._grew
                for index in range(start, len(self.events)):
                    if found(self.events[index]):
                        return index
                start = len(self.events)
                await grew.wait()

    async def until(self, found: Callable[[Event], bool], start: int = 0, timeout: float | None = 30.0) -> Event:
        return self.events[await self.find(found, start, timeout)]

    def ids(self) -> list[int | None]:
        return [e.id for e in self.events]

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._stream is not None:
            self._stream.close()


def turn_end(event: Event) -> bool:
    """A turn is over at its `result`, or at an `error` (turn_lost: its host died)."""
    return event.name in ("result", "error")


async def echo_of(follower: Follower, text: str, start: int, timeout: float | None = 30.0) -> int:
    """The index of the echo of the user message `text` (sent when the stream had `start`
    events), or of an error before it that says the message will not run (wake_failed,
    ...); a turn_lost there is an earlier turn's."""
    def echo_or_refusal(event: Event) -> bool:
        if event.name == "user_message":
            return bool(event.data.get("content") == text)
        return event.name == "error" and event.data.get("code") != "turn_lost"

    return await follower.find(echo_or_refusal, start, timeout)


async def end_of_turn(follower: Follower, text: str, start: int, timeout: float = 30.0) -> Event:
    """The event that ends the turn of the user message `text`: the first turn end after
    its echo (or the error that came instead of the echo)."""
    async with asyncio.timeout(timeout):
        index = await echo_of(follower, text, start, None)
        if follower.events[index].name == "error":
            return follower.events[index]
        return await follower.until(turn_end, index + 1, None)


async def send(client: Client, session_id: str, message: dict[str, Any], timeout: float = 30.0) -> int:
    """POST an input through nginx; a 503 (kept in client.seen: the tests count them) is
    tried again after its Retry-After, as a client would. The final status."""
    async with asyncio.timeout(timeout):
        while True:
            status, _, headers = await client.request("POST", f"/sessions/{session_id}/input", message)
            if status not in (503, 504):
                return status
            await asyncio.sleep(min(float(headers.get("Retry-After", "1")), 1.0))


async def say(client: Client, session_id: str, text: str, timeout: float = 30.0) -> int:
    return await send(client, session_id, {"type": "user_message", "content": text}, timeout)


async def turn(client: Client, follower: Follower, text: str, timeout: float = 30.0) -> Event:
    """Say `text`; the event that ends that turn on the stream."""
    start = len(follower.events)
    status = await say(client, follower.session_id, text, timeout)
    assert status == 204, f"input refused with {status}"
    return await end_of_turn(follower, text, start, timeout)


async def create(client: Client, body: dict[str, Any] | None = None, timeout: float = 30.0) -> str:
    """POST /sessions through nginx until a host takes it; the new session's id."""
    async with asyncio.timeout(timeout):
        while True:
            status, answer, _ = await client.request("POST", "/sessions", body or {})
            if status == 200:
                session_id: str = answer["session_id"]
                return session_id
            assert status in (503, 504), (status, answer)
            await asyncio.sleep(0.5)


class Cluster:
    """Three hosts on one database behind nginx. Hosts are numbered 0..2."""

    def __init__(self, folder: Path, dsn: str, overrides: dict[str, dict[str, Any]] | None = None,
                 env: dict[str, str] | None = None, scenario: dict[str, Any] | None = None,
                 hosts: int = HOSTS) -> None:
        self.folder, self.dsn = folder, dsn
        config = cluster_config(dsn, overrides or {})
        if scenario is not None:  # one scenario for every host's scripted CLIs
            scenarios = folder / "scenario"
            scenarios.mkdir(parents=True)
            (scenarios / "scenario.json").write_text(json.dumps(scenario))
            config["agent"] = {**config.get("agent", {}), "sandbox_ro_paths": [str(scenarios)]}
            config["agent"]["env"] = {**config["agent"].get("env", {}),
                                      "SCRIPTED_CLI_SCENARIO": str(scenarios / "scenario.json")}
        self.hosts: list[Daemon] = []
        for i in range(hosts):
            workdir = folder / f"host{i}"
            # Its RuntimeDirectory (gateway socket, sandbox launcher) in its own folder.
            (workdir / "run").mkdir(parents=True)
            self.hosts.append(Daemon(workdir, config, {**(env or {}), "RUNTIME_DIRECTORY": str(workdir / "run")}))
        self.nginx = Nginx(folder / "nginx", [f"127.0.0.1:{h.port}" for h in self.hosts])
        self.url = self.nginx.url
        self.exit_codes: list[tuple[int, int]] = []  # (host, code) of every stop
        self.restarts: list[dict[str, float]] = []
        self.frozen: set[int] = set()
        self.stopped: set[int] = set()  # stopped or killed on purpose, not started again
        self._runs = [0] * hosts
        self._clients: list[Api] = []

    async def start(self) -> None:
        await asyncio.gather(*(launch(h) for h in self.hosts))
        await self.nginx.start()

    def client(self, token: str | None = TOKEN, connections: int = 100) -> Client:
        """A client that talks to nginx only; closed with the cluster."""
        client = Client(self.url, token, connections)
        self._clients.append(client)
        return client

    def direct(self, host: int, token: str | None = TOKEN) -> Api:
        """A client of one host, past nginx (closed with the cluster)."""
        api = Api(self.hosts[host].base_url, token)
        self._clients.append(api)
        return api

    # --- what the hosts say about a session ------------------------------------------

    async def sessions_on(self, host: int) -> list[str]:
        """The sessions host `host` lists as its own (GET /sessions with the admin token)."""
        async with aiohttp.ClientSession() as http:
            async with http.get(self.hosts[host].base_url + "/sessions", headers={"Authorization": f"Bearer {TOKEN}"},
                                timeout=aiohttp.ClientTimeout(total=5)) as resp:
                assert resp.status == 200, await resp.text()
                return [s["session_id"] for s in (await resp.json())["sessions"]]

    async def owner_of(self, session_id: str) -> int | None:
        """The host that lists the session (frozen and stopped hosts are not asked)."""
        owners = [i for i in self.running() if session_id in await self.sessions_on(i)]
        assert len(owners) <= 1, f"session {session_id} is live on hosts {owners}"
        return owners[0] if owners else None

    def host_at(self, address: str) -> int:
        return [f"127.0.0.1:{h.port}" for h in self.hosts].index(address)

    async def database_activity(self) -> list[dict[str, Any]]:
        """What the hosts' database connections are doing that is not idle (open transactions,
        lock waits): evidence for a failure message."""
        conn = await asyncpg.connect(self.dsn)
        try:
            rows = await conn.fetch(
                "SELECT pid, state, wait_event_type, wait_event, round(extract(epoch FROM now() - xact_start))"
                " AS xact_s, left(query, 100) AS query FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid() AND state <> 'idle'")
        finally:
            await conn.close()
        return [dict(r) for r in rows]

    def cli_processes(self, host: int, session_id: str) -> list[int]:
        """The host's processes (sandbox and CLI) working for this session: its CLI state
        folder, named by the session id, is in their environment."""
        daemon = self.hosts[host]
        mine = []
        for pid in processes_with_mark(daemon.mark):
            with contextlib.suppress(OSError):
                if session_id.encode() in Path(f"/proc/{pid}/environ").read_bytes():
                    mine.append(pid)
        return mine

    # --- what happens to hosts ------------------------------------------------------

    def running(self) -> list[int]:
        return [i for i, h in enumerate(self.hosts)
                if h.proc is not None and h.proc.poll() is None and i not in self.frozen]

    async def stop_host(self, host: int, timeout: float = 60.0) -> int:
        """SIGTERM (a deploy's stop: the host drains and hands its sessions over), then wait
        for the process to end; its exit code."""
        daemon = self.hosts[host]
        assert daemon.proc is not None
        daemon.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.to_thread(daemon.proc.wait), timeout)
        except TimeoutError:
            raise AssertionError(f"host {host} still runs {timeout:g} s after SIGTERM:\n"
                                 f"{daemon.logs()[-3000:]}") from None
        code = await daemon.stop()  # already ended: only closes its log
        self.exit_codes.append((host, code))
        self.stopped.add(host)
        return code

    async def start_host(self, host: int) -> None:
        """Start the host again, on its port; its earlier runs' logs are kept."""
        daemon = self.hosts[host]
        self.stopped.discard(host)
        self._runs[host] += 1
        if daemon.log_path.exists():
            daemon.log_path.rename(daemon.workdir / f"daemon.run{self._runs[host]}.log")
        await launch(daemon)

    async def restart(self, host: int) -> int:
        """A deploy's step: stop (SIGTERM, wait for the exit), start again. The exit code;
        how long each half took is kept in `restarts`."""
        started = time.monotonic()
        code = await self.stop_host(host)
        stopped = time.monotonic()
        await self.start_host(host)
        self.restarts.append({"host": host, "stop_s": stopped - started, "start_s": time.monotonic() - stopped})
        return code

    def kill(self, host: int) -> None:
        """SIGKILL: the host dies with nothing flushed and nothing handed over."""
        self.hosts[host].kill()
        self.stopped.add(host)

    def freeze(self, host: int) -> None:
        """SIGSTOP: the process stops, its kernel still accepts connections on its port."""
        assert self.hosts[host].proc is not None
        os.kill(self.hosts[host].proc.pid, signal.SIGSTOP)
        self.frozen.add(host)

    def thaw(self, host: int) -> None:
        assert self.hosts[host].proc is not None
        os.kill(self.hosts[host].proc.pid, signal.SIGCONT)
        self.frozen.discard(host)

    async def heal(self) -> None:
        """Every host running again (thawed, or started on its port): a test that shares the
        cluster starts from three live hosts whatever the one before it did."""
        for host in list(self.frozen):
            self.thaw(host)
        for host, daemon in enumerate(self.hosts):
            if daemon.proc is not None and daemon.proc.poll() is not None:
                if host not in self.stopped:  # it ended on its own: its exit code counts
                    self.exit_codes.append((host, await daemon.stop()))
                await self.start_host(host)

    def logs(self, host: int) -> str:
        """Every run's log of the host, oldest first."""
        daemon = self.hosts[host]
        runs = [daemon.workdir / f"daemon.run{n}.log" for n in range(1, self._runs[host] + 1)]
        return "".join(p.read_text(errors="replace") for p in [*runs, daemon.log_path] if p.exists())

    async def close(self) -> None:
        """Stop everything: clients, hosts (SIGTERM, then SIGTERM again: no long drain), nginx."""
        for client in self._clients:
            await client.close()
        for host in list(self.frozen):
            self.thaw(host)
        started = [i for i, h in enumerate(self.hosts) if h.proc is not None and h.proc.poll() is None]
        codes = await asyncio.gather(*(self.hosts[i].stop() for i in started))
        self.exit_codes += list(zip(started, codes, strict=True))
        await self.nginx.stop()

    async def left_behind(self) -> list[int]:
        """CLI processes of any host still alive (after close), given a moment to end."""
        for _ in range(100):
            left = [pid for h in self.hosts for pid in h.orphans()]
            if not left:
                return []
            await asyncio.sleep(0.05)
        return left


def cluster_config(dsn: str, overrides: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every host's config beyond conftest's defaults: the shared Postgres store, a drain
    that a test can wait out; then the caller's `overrides`, table by table."""
    config: dict[str, dict[str, Any]] = {
        "store": {"backend": "postgres", "dsn": dsn},
        "server": {"drain_timeout_s": 30},
    }
    for section, values in overrides.items():
        config[section] = {**config.get(section, {}), **values}
    return config


async def launch(daemon: Daemon, patience_s: float = 60.0) -> None:
    """Start the daemon and wait until it is healthy. Daemon.start gives up after about
    15 s, which three daemons importing at once on a busy 2-core machine can take: as long
    as the process lives, wait on."""
    try:
        await daemon.start()
    except RuntimeError:
        if daemon.proc is None or daemon.proc.poll() is not None:
            raise
        async with aiohttp.ClientSession() as http, asyncio.timeout(patience_s):
            while True:
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(daemon.base_url + "/healthz") as resp:
                        if resp.status == 200:
                            return
                if daemon.proc.poll() is not None:
                    raise RuntimeError(f"daemon exited at start:\n{daemon.logs()[-3000:]}") from None
                await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def running_cluster(folder: Path, dsn: str, overrides: dict[str, dict[str, Any]] | None = None,
                          env: dict[str, str] | None = None,
                          scenario: dict[str, Any] | None = None) -> AsyncIterator[Cluster]:
    """A started cluster for the block; afterwards every host must have exited 0 (every
    stop, restarts included) and left no CLI process behind."""
    cluster = Cluster(folder, dsn, overrides, env, scenario)
    try:
        await cluster.start()
        yield cluster
    finally:
        await cluster.close()
    bad = [(host, code) for host, code in cluster.exit_codes if code != 0]
    assert not bad, f"hosts exited with {bad}:\n" + "\n".join(cluster.logs(h)[-3000:] for h, _ in bad)
    assert await cluster.left_behind() == [], "CLI processes left behind after the hosts stopped"


@pytest.fixture
async def start_cluster(tmp_path: Path, pg_dsn: str) -> AsyncIterator[Callable[..., Awaitable[Cluster]]]:
    """Start clusters for one test (`await start_cluster(overrides, env=..., scenario=...)`),
    on the test's fresh database; stopped and checked after the test."""
    async with contextlib.AsyncExitStack() as stack:
        count = 0

        async def start(overrides: dict[str, dict[str, Any]] | None = None, env: dict[str, str] | None = None,
                        scenario: dict[str, Any] | None = None) -> Cluster:
            nonlocal count
            count += 1
            folder = tmp_path / f"cluster{count}"
            return await stack.enter_async_context(running_cluster(folder, pg_dsn, overrides, env, scenario))

        yield start
