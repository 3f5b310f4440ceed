"""Faults injected for real (scripted CLI): a CLI that hangs at start-up or mid-turn,
one that goes silent, one that floods; a subscriber that never reads; thousands of
connections opened and dropped. After each, the test's teardown checks that the daemon
exits 0 and that no CLI process is left (the process table)."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from pathlib import Path
from typing import Any

import aiohttp

from tests.conftest import TOKEN, Daemon, api_for
from tests.test_hibernation import metric, set_scenario
from tests.test_lifecycle import until_state
from tests.wire_client import Api


async def wait_for(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.1)


async def test_a_cli_that_hangs_at_start_up_gets_502_within_the_start_timeout_and_is_killed(
    start_daemon: Any,
) -> None:
    daemon = await start_daemon({"agent": {"start_timeout_s": 1}})
    cwd = daemon.session_dir({"turns": [], "on_start": {"hang": True}})
    async with api_for(daemon) as api:
        started = time.monotonic()
        status, payload, _ = await api.request("POST", "/sessions", {"cwd": str(cwd)})
        assert status == 502 and payload["error"]["code"] == "agent_start_failed", payload
        assert "did not start within 1 s" in payload["error"]["message"]
        assert time.monotonic() - started < 5
        await wait_for(lambda: _none_left(daemon))
        # A wake that hangs is the same: wake_failed, nothing left running.
        set_scenario(cwd, {"turns": []})
        session_id = await api.create(cwd=str(cwd))
        stream = await api.open_stream(session_id, 0)
        await api.say(session_id, "hello")
        await stream.until("result")
        for pid in daemon.orphans():
            os.kill(pid, 9)
        await until_state(stream, "hibernated")
        set_scenario(cwd, {"turns": [], "on_start": {"hang": True}})
        await api.say(session_id, "are you there?")
        failed = await until_state(stream, "hibernated", timeout=10)
        assert [e.data["code"] for e in failed if e.name == "error"] == ["wake_failed"]
        await wait_for(lambda: _none_left(daemon))


async def _none_left(daemon: Daemon) -> bool:
    return daemon.orphans() == []


async def test_a_silent_turn_is_interrupted_and_a_wedged_cli_is_killed_after_the_grace(start_daemon: Any) -> None:
    daemon = await start_daemon({"sessions": {"turn_idle_timeout_s": 1, "turn_kill_grace_s": 1.5}})
    async with api_for(daemon) as api:
        # Silent but alive: the interrupt ends the turn, the session goes on.
        quiet = daemon.session_dir({"turns": [{"steps": [{"sleep": 60}]}]})
        session_id = await api.create(cwd=str(quiet))
        stream = await api.open_stream(session_id, 0)
        await api.say(session_id, "think for a minute")
        result = await stream.until("result", timeout=10)
        assert (result.data["subtype"], result.data["terminal_reason"]) == ("error_during_execution", "aborted_streaming")
        await api.say(session_id, "and now?")
        assert (await stream.until("result")).data["result"] == "echo: and now?"

        # Wedged: deaf to the interrupt too, so it is killed and the session hibernates.
        wedged = daemon.session_dir({"turns": [{"steps": [{"text": "starting"}, {"hang": True}]}]})
        session_id = await api.create(cwd=str(wedged))
        stream = await api.open_stream(session_id, 0)
        await api.say(session_id, "go")
        tail = await until_state(stream, "hibernated", timeout=15)
        [error] = [e for e in tail if e.name == "error"]
        assert error.data["code"] == "turn_stalled"
        await wait_for(lambda: _live_clis(daemon, 1))  # the quiet session's CLI, not the wedged one
        await api.say(session_id, "hello again")  # the next message wakes it
        assert (await stream.until("result", timeout=15)).data["subtype"] == "success"


async def _live_clis(daemon: Daemon, count: int) -> bool:
    return len(daemon.orphans()) == count


async def test_a_cli_that_floods_output_does_not_stall_the_daemon_or_other_sessions(api: Api, daemon: Daemon) -> None:
    flood = daemon.session_dir({"turns": [{"steps": [{"events": 30000, "text": "x" * 200}]}]})
    flooding = await api.create(cwd=str(flood))
    reader = await api.open_stream(flooding, 0)
    other = await api.create()
    other_stream = await api.open_stream(other, 0)
    await api.say(flooding, "flood")
    slowest = 0.0
    for _ in range(5):  # the daemon answers while the flood runs
        started = time.monotonic()
        status, _, _ = await api.request("GET", "/healthz")
        slowest = max(slowest, time.monotonic() - started)
        assert status == 200
        await api.say(other, "still there?")
        assert (await other_stream.until("result", timeout=10)).data["result"] == "echo: still there?"
    assert slowest < 1.0
    result = await reader.until("result", timeout=60)
    ids = [e.id for e in reader.events]
    assert ids == list(range(1, len(ids) + 1)) and result.data["subtype"] == "success"


async def test_a_subscriber_that_never_reads_is_cut_off_and_slows_nobody(start_daemon: Any) -> None:
    daemon = await start_daemon({"server": {"write_timeout_s": 2}, "sessions": {"ring_size": 100000}})
    flood = daemon.session_dir({"turns": [{"steps": [{"events": 20000, "text": "y" * 500}]}]})
    async with api_for(daemon) as api:
        session_id = await api.create(cwd=str(flood))
        stuck = socket.socket()
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stuck.connect(("127.0.0.1", daemon.port))
        stuck.sendall(f"GET /sessions/{session_id}/stream HTTP/1.1\r\nHost: x\r\n"
                      f"Authorization: Bearer {TOKEN}\r\nLast-Event-ID: 0\r\n\r\n".encode())
        reader = await api.open_stream(session_id, 0)
        started = time.monotonic()
        await api.say(session_id, "flood")
        result = await reader.until("result", timeout=60)
        assert result.data["subtype"] == "success"
        assert time.monotonic() - started < 30, "the reading subscriber was held up"
        await wait_for(lambda: _evicted(api), timeout=15)
        stuck.settimeout(5)
        received = b""
        try:
            while chunk := stuck.recv(1 << 20):  # what it was sent is bounded, then the cut
                received += chunk
        except (ConnectionResetError, TimeoutError):
            pass
        assert len(received) < 8 * 1024 * 1024, "the stuck subscriber's bytes were not bounded"
        stuck.close()
        reader.close()
        await wait_for(lambda: _no_subscribers(api))


async def _evicted(api: Api) -> bool:
    return await metric(api, "agent_webkit_subscribers_evicted_total") >= 1


async def _no_subscribers(api: Api) -> bool:
    return await metric(api, "agent_webkit_subscribers_live") == 0


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def test_thousands_of_connections_opened_and_dropped_leave_nothing_behind(start_daemon: Any) -> None:
    daemon = await start_daemon({"sessions": {"max_streams_per_session": 250}})
    assert daemon.proc is not None
    async with api_for(daemon) as api:
        await churn(api, daemon)


async def churn(api: Api, daemon: Daemon) -> None:
    assert daemon.proc is not None
    session_id = await api.create()
    await api.say(session_id, "warm up")
    await asyncio.sleep(0.5)
    fds_before, rss_before = fds(daemon.proc.pid), rss_kib(daemon.proc.pid)
    connector = aiohttp.TCPConnector(limit=200, force_close=True)
    async with aiohttp.ClientSession(connector=connector) as http:
        async def stream_then_drop() -> None:
            async with http.get(f"{daemon.base_url}/sessions/{session_id}/stream",
                                headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
                assert resp.status == 200
                await resp.content.readany()

        async def half_a_body() -> None:
            _, writer = await asyncio.open_connection("127.0.0.1", daemon.port)
            writer.write(f"POST /sessions/{session_id}/input HTTP/1.1\r\nHost: x\r\n"
                         f"Authorization: Bearer {TOKEN}\r\nContent-Length: 100\r\n\r\n{{\"type\"".encode())
            await writer.drain()
            writer.close()

        for _ in range(4):
            await asyncio.gather(*(stream_then_drop() for _ in range(250)), *(half_a_body() for _ in range(250)))
    await wait_for(lambda: _no_subscribers(api), timeout=15)
    await asyncio.sleep(1)
    assert fds(daemon.proc.pid) <= fds_before + 5, "file descriptors leaked"
    assert rss_kib(daemon.proc.pid) <= rss_before + 20 * 1024, "memory grew by more than 20 MiB"
    status, _, _ = await api.request("GET", "/healthz")
    assert status == 200
