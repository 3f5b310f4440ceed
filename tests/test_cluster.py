"""Several hosts (DESIGN §14), black box: three real daemons on one PostgreSQL behind a real
nginx running the shipped conf/nginx-cluster.conf (tests/cluster.py). Clients talk to nginx
only, and every response they get counts: a rolling restart under steady traffic, a frozen
owner (SIGSTOP), and a session's workspace following it from a killed host and through a
deploy (the real CLI, sandboxed, writing files with Write and Bash)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from tests.cluster import (
    Client,
    Cluster,
    Follower,
    create,
    echo_of,
    end_of_turn,
    running_cluster,
    send,
    start_cluster,
    turn,
)
from tests.pgdb import temporary_database
from tests.standin.fixtures import fake_model_url, offline_cli_env
from tests.wire_client import Event

__all__ = ["fake_model_url", "start_cluster"]  # fixtures

StartCluster = Callable[..., Awaitable[Cluster]]

LEASE_S = 3.0
# Every turn takes a moment, so that SIGTERM finds turns running.
SLOW_ECHO = {"turns": [{"steps": [{"sleep": 0.3}, {"echo": True}]}], "then": "repeat_last"}
# The scripted-CLI tests share one cluster (three daemons take seconds to start): they run
# on the module's event loop, and each starts with `cluster.heal()`.
SHARED = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cluster(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Cluster]:
    """Three hosts with the scripted CLI behind nginx, with a short lease (the frozen-owner
    test waits it out)."""
    async with temporary_database() as dsn, running_cluster(
        tmp_path_factory.mktemp("cluster"), dsn, {"store": {"lease_s": LEASE_S}}, scenario=SLOW_ECHO
    ) as started:
        yield started


def contiguous(follower: Follower) -> bool:
    """The stream's ids, across every reconnect: 1, 2, 3, ... with no gap and no repeat."""
    return follower.ids() == list(range(1, len(follower.events) + 1))


async def a_session_found_on_try(cluster: Cluster, client: Client, tries: int) -> tuple[str, int]:
    """A new session that nginx finds on its `tries`-th try: its owner (the host that
    created it, round-robin) is that far along its id's hash ring. And its owner."""
    for _ in range(30):
        session_id = await create(client)
        await client.request("GET", f"/sessions/{session_id}")
        [passed] = await cluster.nginx.logged("GET", f"/sessions/{session_id}")
        if len(passed.upstreams) == tries:
            return session_id, cluster.host_at(passed.upstreams[-1])
    raise AssertionError(f"30 sessions, none found on try {tries}")


def outcome(event: Event) -> str:
    return event.name if event.name == "result" else f"error {event.data.get('code')}"


@SHARED
async def test_nginx_spreads_new_sessions_and_finds_each_one_on_its_host(cluster: Cluster) -> None:
    await cluster.heal()
    client = cluster.client()
    sessions = [await create(client) for _ in range(3)]
    owners = [await cluster.owner_of(s) for s in sessions]
    assert sorted(owners) == [0, 1, 2]  # type: ignore[type-var]  # round-robin for creates
    for session_id, owner in zip(sessions, owners, strict=True):
        status, body, _ = await client.request("GET", f"/sessions/{session_id}")
        assert status == 200 and body["session_id"] == session_id
        [passed] = await cluster.nginx.logged("GET", f"/sessions/{session_id}")
        # Walked the id's hash ring to the owner: every host before it said session_elsewhere.
        assert cluster.host_at(passed.upstreams[-1]) == owner
        assert passed.upstream_statuses == ["503"] * (len(passed.upstreams) - 1) + ["200"]

    # A 404 is the answer, asked of one host only: every host sees every session.
    status, body, _ = await client.request("GET", "/sessions/no-such-session")
    assert (status, body["error"]["code"]) == (404, "not_found")
    [passed] = await cluster.nginx.logged("GET", "/sessions/no-such-session")
    assert len(passed.upstreams) == 1
    assert (await client.request("GET", "/metrics"))[0] == 404
    status, body, _ = await client.request("POST", f"/sessions/{sessions[0]}/input", raw=b"x" * (1024 * 1024 + 1))
    assert (status, body["error"]["code"]) == (413, "payload_too_large")

    # An upload that meets a session_elsewhere first is passed on whole (nginx buffered it).
    moved, _ = await a_session_found_on_try(cluster, client, 2)
    data = uuid.uuid4().bytes * (2 * 1024 * 1024 // 16)
    status, _, _ = await client.request("PUT", f"/sessions/{moved}/files/big.bin", raw=data)
    assert status == 201
    [passed] = await cluster.nginx.logged("PUT", f"/sessions/{moved}/files/big.bin")
    assert passed.upstream_statuses[0] == "503"
    assert await client.download(f"/sessions/{moved}/files/big.bin") == (200, data)
    assert client.failures() == []


# --- a rolling restart ------------------------------------------------------------------

SESSIONS = 6


@SHARED
async def test_a_rolling_restart_under_steady_traffic_shows_clients_no_5xx_and_no_gap(cluster: Cluster) -> None:
    await cluster.heal()
    client = cluster.client()
    sessions = [await create(client) for _ in range(SESSIONS)]
    followers = [Follower(client, s).start() for s in sessions]
    for follower in followers:
        await follower.until(lambda e: e.name == "session_ready")
    outcomes: dict[str, list[str]] = {s: [] for s in sessions}
    deploying = True

    async def drive(follower: Follower) -> None:
        """One user: a message, its turn's end, the next message."""
        n = 0
        while deploying:
            n += 1
            start = len(follower.events)
            try:
                status = await send(client, follower.session_id, {"type": "user_message", "content": f"turn {n}"}, 60)
            except (aiohttp.ClientError, TimeoutError) as exc:  # kept in client.seen too
                outcomes[follower.session_id].append(f"input: {exc!r}")
                await asyncio.sleep(0.5)
                continue
            if status != 204:
                outcomes[follower.session_id].append(f"input {status}")
                await asyncio.sleep(0.5)
                continue
            try:
                end = await end_of_turn(follower, f"turn {n}", start, 60)
            except TimeoutError:
                outcomes[follower.session_id].append("no end within 60 s")
                return
            outcomes[follower.session_id].append(outcome(end))
            await asyncio.sleep(0.1)

    drivers = [asyncio.create_task(drive(f)) for f in followers]
    await asyncio.sleep(1)  # steady traffic first
    codes = []
    for host in range(3):  # the deploy: each host in turn, back on its port before the next
        codes.append(await cluster.restart(host))
        assert cluster.running() == [0, 1, 2]
        await asyncio.sleep(1)
    deploying = False
    await asyncio.gather(*drivers)
    for follower in followers:
        await follower.close()

    assert codes == [0, 0, 0]
    assert client.failures() == [], "\n".join(map(str, client.failures()))
    turns = [o for s in sessions for o in outcomes[s]]
    assert len(turns) >= SESSIONS * 5
    assert set(turns) <= {"result", "error turn_lost"}, outcomes
    for follower in followers:
        assert contiguous(follower), (follower.session_id, follower.ids())


# --- a frozen owner -----------------------------------------------------------------------

NON_STREAM_BOUND_S = 8.0  # the cluster config: a 5 s first-byte timeout on a frozen host, then the next host


@SHARED
async def test_a_frozen_owner_loses_its_session_within_the_lease_and_no_request_hangs_on_it(
    cluster: Cluster,
) -> None:
    await cluster.heal()
    client = cluster.client()
    # A session whose owner is the last host of its id's hash ring: whichever host takes it
    # over comes before the frozen one, so no request for it needs the frozen host once it
    # has moved. (Otherwise every stream connect would first wait out the config's stream
    # read timeout on the frozen host, 40 s: see conf/nginx-cluster.conf.)
    session_id, owner = await a_session_found_on_try(cluster, client, 3)
    follower = Follower(client, session_id).start()
    assert (await turn(client, follower, "before")).name == "result"

    cluster.freeze(owner)
    frozen_at = time.monotonic()
    timed: list[tuple[str, str, int, float]] = []

    async def timed_request(method: str, path: str, body: Any = None) -> int:
        started = time.monotonic()
        status, _, _ = await client.request(method, path, body)
        timed.append((method, path, status, time.monotonic() - started))
        return status

    async def round_robin() -> None:
        # Creates and lists go round-robin over the three hosts: some reach the frozen one.
        for _ in range(3):
            await timed_request("POST", "/sessions", {})
            await timed_request("GET", "/sessions")

    async def until_taken_over() -> float:
        try:
            async with asyncio.timeout(LEASE_S + 20):
                while await timed_request("POST", f"/sessions/{session_id}/input",  # noqa: ASYNC110 - polling the cluster
                                          {"type": "user_message", "content": "after"}) != 204:
                    await asyncio.sleep(0.2)
        except TimeoutError:
            raise AssertionError(f"no host took the session over within {LEASE_S + 20:g} s of the freeze;"
                                 f" requests meanwhile: {timed}; the database's busy connections:"
                                 f" {await cluster.database_activity()}") from None
        return time.monotonic()

    start = len(follower.events)
    _, accepted_at = await asyncio.gather(round_robin(), until_taken_over())
    # The client gives up on its silent stream (nginx ends it after the stream read
    # timeout) and reconnects with Last-Event-ID, to the host that took the session over.
    follower.reconnect()
    end = await end_of_turn(follower, "after", start)
    usable_s = time.monotonic() - frozen_at
    slow = [t for t in timed if t[3] >= NON_STREAM_BOUND_S]
    assert slow == [], f"requests held by the frozen host: {slow}"
    assert end.name == "result", (end, [(e.id, e.name) for e in follower.events])
    # Taken over within the lease plus a little; the turn then also waits for a CLI to start
    # on the new host (seconds on a loaded 2-core machine).
    assert accepted_at - frozen_at <= LEASE_S + 5 and usable_s <= LEASE_S + 10, (accepted_at - frozen_at, usable_s)
    assert contiguous(follower), follower.ids()

    # The frozen host wakes up: it no longer holds the session, runs no CLI for it, and
    # does not answer for it with what it had.
    cluster.thaw(owner)
    async with asyncio.timeout(3):
        while session_id in await cluster.sessions_on(owner) or cluster.cli_processes(owner, session_id):  # noqa: ASYNC110
            await asyncio.sleep(0.1)
    status, body, _ = await cluster.direct(owner).request("GET", f"/sessions/{session_id}")
    assert (status, body["error"]["code"]) == (503, "session_elsewhere"), (status, body)
    # The session goes on where it lives now, with no gap and nothing from the old owner.
    assert (await turn(client, follower, "after the thaw")).name == "result"
    await asyncio.sleep(0.5)
    assert contiguous(follower), follower.ids()
    texts = [e.data.get("content") for e in follower.events if e.name == "user_message"]
    assert texts == ["before", "after", "after the thaw"], texts


# --- a workspace follows its session ------------------------------------------------------


async def agent_turn(client: Client, follower: Follower, text: str) -> list[Event]:
    """Say `text` and allow every tool the agent asks for; the turn's events."""
    start = len(follower.events)
    assert await send(client, follower.session_id, {"type": "user_message", "content": text}, 60) == 204
    index = await echo_of(follower, text, start, 120)
    while True:
        index = await follower.find(lambda e: e.name in ("permission_request", "result", "error"), index, 120)
        event = follower.events[index]
        index += 1
        if event.name != "permission_request":
            assert event.name == "result", event
            return follower.events[start:index]
        allow = {"type": "permission_response", "behavior": "allow", "correlation_id": event.data["correlation_id"]}
        assert await send(client, follower.session_id, allow) == 204


async def read_file(client: Client, session_id: str, path: str, timeout: float = 60.0) -> bytes:
    """A workspace file through nginx, once a host serves the session (after a failover
    it may answer 503 session_elsewhere until one has claimed it)."""
    async with asyncio.timeout(timeout):
        while True:
            status, body = await client.download(f"/sessions/{session_id}/files/{path}")
            if status == 200:
                return body
            assert status in (503, 504), (status, body[:300])
            await asyncio.sleep(0.5)


async def test_a_session_s_workspace_follows_it_from_a_killed_host_and_through_a_deploy(
    start_cluster: StartCluster, fake_model_url: str,
) -> None:
    # The real CLI, sandboxed, reaching the stand-in model through each host's gateway.
    cli_env = {k: v for k, v in offline_cli_env(fake_model_url, Path("unused")).items()
               if not k.startswith("ANTHROPIC_") and k != "CLAUDE_CONFIG_DIR"}
    cluster = await start_cluster(
        {"agent": {"cli_path": "", "env": cli_env}, "model": {"upstream_url": fake_model_url}},
        env={"ANTHROPIC_API_KEY": "sk-ant-test-" + uuid.uuid4().hex},
    )
    client = cluster.client()
    async with asyncio.timeout(240):
        session_id = await create(client, {"permission_mode": "acceptEdits"}, timeout=60)
        follower = Follower(client, session_id).start()
        await agent_turn(client, follower, "write the file")  # Write: out.txt, "hello\n"
        await agent_turn(client, follower, "bash: echo from-bash > note.txt")
        files = {"out.txt": b"hello\n", "note.txt": b"from-bash\n"}
        for path, content in files.items():
            assert await read_file(client, session_id, path) == content

        # The owner dies, and its disk with it.
        first = await cluster.owner_of(session_id)
        assert first is not None
        cluster.kill(first)
        cluster.hosts[first].workspace(session_id).parent.rename(cluster.hosts[first].workdir / "workspaces.lost")
        for path, content in files.items():
            assert await read_file(client, session_id, path) == content, f"{path} after the failover"
        second = await cluster.owner_of(session_id)
        assert second is not None and second != first

        # A deploy of the new owner: it hands the session over, and whichever host claims it
        # next (the restarted one included) finds its files, though not on its own disk: the
        # stopped host's folder is moved out of reach, as another machine's would be.
        assert await cluster.stop_host(second) == 0
        cluster.hosts[second].workspace(session_id).parent.rename(cluster.hosts[second].workdir / "workspaces.old")
        await cluster.start_host(second)
        for path, content in files.items():
            assert await read_file(client, session_id, path) == content, f"{path} after the deploy"
        # And the agent finds them where it left them.
        events = await agent_turn(client, follower, "bash: cat out.txt note.txt")
        [result] = [e.data for e in events if e.name == "tool_result"]
        assert "hello" in str(result["output"]) and "from-bash" in str(result["output"]), result
        assert contiguous(follower), follower.ids()
