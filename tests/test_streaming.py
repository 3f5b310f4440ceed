"""The SSE stream: framing, resume with Last-Event-ID, 412, keepalive, slow subscribers."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import pytest

from tests.conftest import TOKEN, Daemon, api_for
from tests.wire_client import Api, StreamRefused


@pytest.fixture
def daemon(warm_daemon: Daemon) -> Daemon:
    """These tests run against a daemon with a warm CLI, as in production."""
    return warm_daemon


async def finished_turn(api: Api, daemon: Daemon, scenario: dict[str, Any] | None = None, text: str = "hi") -> str:
    """A session with one completed turn; returns its id."""
    session_id = await api.create(cwd=str(daemon.session_dir(scenario)))
    stream = await api.open_stream(session_id, 0)
    await api.say(session_id, text)
    await stream.until("result")
    await stream.until("session_state")
    stream.close()
    return session_id


async def test_the_stream_has_the_sse_headers_and_a_retry_hint(api: Api, daemon: Daemon) -> None:
    session_id = await api.create()
    stream = await api.open_stream(session_id)
    headers = stream.response.headers
    assert headers["Content-Type"].startswith("text/event-stream")
    assert headers["Cache-Control"] == "no-cache"
    assert headers["X-Accel-Buffering"] == "no"
    assert headers["X-Replay-From"] == "1"
    first = await stream.next()
    assert first.name == "session_ready" and stream.retry is not None and stream.retry > 0
    stream.close()


async def test_resume_replays_exactly_the_events_after_the_cursor(api: Api, daemon: Daemon) -> None:
    session_id = await finished_turn(api, daemon)
    full = await api.open_stream(session_id, 0)
    everything = []
    while not everything or everything[-1].data.get("state") != "idle" or everything[-1].id < 5:
        everything.append(await full.next())
    full.close()
    cut = everything[3].id
    resumed = await api.open_stream(session_id, cut)
    assert resumed.response.headers["X-Replay-From"] == str(cut + 1)
    replayed = [await resumed.next() for _ in range(len(everything) - 4)]
    assert [(e.id, e.name, e.data) for e in replayed] == [(e.id, e.name, e.data) for e in everything[4:]]
    resumed.close()


async def test_resume_then_tail_live_without_gap_or_duplicate(api: Api, daemon: Daemon) -> None:
    scenario = {"turns": [{"steps": [{"text": "one two three four five six"}, {"sleep": 0.3}, {"text": "seven eight"}]}]}
    session_id = await api.create(cwd=str(daemon.session_dir(scenario)))
    first = await api.open_stream(session_id, 0)
    await api.say(session_id, "go")
    seen = [await first.next() for _ in range(5)]
    first.close()
    second = await api.open_stream(session_id, seen[-1].id)
    rest = [await second.next()]
    while rest[-1].name != "result":
        rest.append(await second.next())
    ids = [e.id for e in seen + rest]
    assert ids == list(range(1, len(ids) + 1))
    second.close()


async def test_the_query_parameter_works_and_the_header_wins(api: Api, daemon: Daemon) -> None:
    session_id = await finished_turn(api, daemon)
    by_query = await api.open_stream(session_id, query="?last_event_id=3")
    assert (await by_query.next()).id == 4
    by_query.close()
    both = await api.open_stream(session_id, 5, query="?last_event_id=2")
    assert (await both.next()).id == 6
    both.close()


@pytest.mark.parametrize("cursor", ["abc", "-1", "1.5", "9" * 40, " "])
async def test_a_malformed_last_event_id_gets_400(api: Api, cursor: str) -> None:
    session_id = await api.create()
    with pytest.raises(StreamRefused) as refused:
        await api.open_stream(session_id, cursor)
    assert refused.value.status == 400
    assert refused.value.body["error"]["code"] == "invalid_last_event_id"


async def test_a_cursor_beyond_the_newest_event_gets_412(api: Api) -> None:
    session_id = await api.create()
    with pytest.raises(StreamRefused) as refused:
        await api.open_stream(session_id, 999)
    assert refused.value.status == 412 and refused.value.body["error"]["code"] == "cursor_unavailable"


async def test_a_cursor_that_fell_out_of_the_ring_gets_412_but_the_edge_still_works(start_daemon: Any) -> None:
    daemon = await start_daemon({"sessions": {"ring_size": 8}})
    async with api_for(daemon) as api:
        session_id = await finished_turn(api, daemon, text="a long enough message to make many deltas")
        probe = await api.open_stream(session_id)
        oldest = (await probe.next()).id
        probe.close()
        assert oldest > 1, "the ring should have wrapped"
        assert probe.response.headers["X-Replay-From"] == str(oldest)
        for cursor in (0, oldest - 2):
            with pytest.raises(StreamRefused) as refused:
                await api.open_stream(session_id, cursor)
            assert refused.value.status == 412 and refused.value.body["error"]["code"] == "cursor_unavailable"
        edge = await api.open_stream(session_id, oldest - 1)
        assert (await edge.next()).id == oldest
        edge.close()


async def test_a_subscriber_that_keeps_up_is_not_evicted_by_a_burst_many_rings_long(start_daemon: Any) -> None:
    """The CLI's messages are read in batches; a batch longer than the ring must still
    reach a subscriber that reads as fast as it can (memory store: no store to fall back on)."""
    daemon = await start_daemon({"sessions": {"ring_size": 8}})
    async with api_for(daemon) as api:
        session_id = await api.create(cwd=str(daemon.session_dir({"turns": [{"steps": [{"events": 400, "text": "x"}]}]})))
        stream = await api.open_stream(session_id, 0)
        await api.say(session_id, "go")
        seen = [await stream.next()]
        while seen[-1].name != "result":
            seen.append(await stream.next())
        stream.close()
    assert [e.name for e in seen if e.name == "error"] == [], [e.data for e in seen if e.name == "error"]
    assert [e.id for e in seen] == list(range(1, len(seen) + 1))
    assert sum(1 for e in seen if e.name == "message_complete") >= 400


async def test_keepalive_comments_arrive_while_idle_and_the_stream_stays_open(start_daemon: Any) -> None:
    daemon = await start_daemon({"server": {"keepalive_s": 0.4}})
    async with api_for(daemon) as api:
        session_id = await api.create()
        stream = await api.open_stream(session_id)
        await stream.until("session_state")
        with pytest.raises(TimeoutError):
            await stream.next(timeout=1.5)
        assert stream.comments.count("keepalive") >= 2
        assert not stream.ended
        await api.say(session_id, "still there?")
        assert (await stream.until("result")).data["result"] == "echo: still there?"
        stream.close()


async def test_delete_ends_every_open_stream_with_done(api: Api, daemon: Daemon) -> None:
    session_id = await api.create(cwd=str(daemon.session_dir({"turns": [{"steps": [{"sleep": 5}]}]})))
    streams = [await api.open_stream(session_id, 0) for _ in range(3)]
    await api.say(session_id, "busy")
    for stream in streams:
        await stream.until("session_state")
    assert await api.delete(session_id) == 204
    for stream in streams:
        tail = await stream.rest(timeout=5)
        assert tail[-1].name == "done" and tail[-1].data == {}
        assert ("session_state", {"state": "closed"}) in [(e.name, e.data) for e in tail]
    with pytest.raises(StreamRefused) as refused:
        await api.open_stream(session_id, 0)
    assert refused.value.status == 404


async def test_a_subscriber_that_stops_reading_does_not_slow_the_others(start_daemon: Any) -> None:
    daemon = await start_daemon({"sessions": {"ring_size": 100000}})
    scenario = {"turns": [{"steps": [{"events": 3000, "text": "x" * 2000}]}]}
    async with api_for(daemon) as api:
        session_id = await api.create(cwd=str(daemon.session_dir(scenario)))
        stalled = raw_stream(daemon, session_id)  # opened, never read
        fast = await api.open_stream(session_id, 0)
        started = time.monotonic()
        await api.say(session_id, "flood")
        result = await fast.until("result", timeout=30)
        elapsed = time.monotonic() - started
        ids = [e.id for e in fast.events]
        assert ids == list(range(1, len(ids) + 1)) and result.name == "result"
        assert elapsed < 20
        # The stalled reader now catches up and loses nothing either.
        received = read_all(stalled, until=b"event: result")
        assert received.count(b"event: message_complete") == 3000
        stalled.close()


async def test_a_subscriber_that_falls_out_of_the_ring_is_evicted_with_an_error_frame(start_daemon: Any) -> None:
    daemon = await start_daemon({"sessions": {"ring_size": 50}})
    scenario = {"turns": [{"steps": [{"events": 2000, "text": "y" * 4000}]}]}
    async with api_for(daemon) as api:
        session_id = await api.create(cwd=str(daemon.session_dir(scenario)))
        stalled = raw_stream(daemon, session_id)
        fast = await api.open_stream(session_id, 0)
        await api.say(session_id, "flood")
        await fast.until("result", timeout=30)
        data = read_all(stalled, until=None)
        stalled.close()
        last_frame = data.rstrip().split(b"\n\n")[-1]
        assert last_frame.startswith(b"event: error\n") and b'"code":"evicted"' in last_frame
        frames = [f for f in data.split(b"\n\n") if f.startswith(b"id: ")]
        ids = [int(f.split(b"\n")[0][4:]) for f in frames]
        assert ids == list(range(1, len(ids) + 1)), "no event skipped before the eviction"
        assert ids[-1] < 2000


def raw_stream(daemon: Daemon, session_id: str) -> socket.socket:
    """An SSE request on a socket with a tiny receive buffer that nobody reads yet."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", daemon.port))
    sock.sendall(
        f"GET /sessions/{session_id}/stream HTTP/1.0\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
        "Last-Event-ID: 0\r\n\r\n".encode()
    )
    return sock


def read_all(sock: socket.socket, until: bytes | None, timeout: float = 20) -> bytes:
    """Read until `until` has arrived (or, with None, until the server closes)."""
    sock.settimeout(timeout)
    data = b""
    while until is None or until not in data[-20000:]:
        chunk = sock.recv(1 << 20)
        if not chunk:
            break
        data += chunk
    return data


async def test_no_wake_up_is_missed_when_events_arrive_while_a_subscriber_writes(api: Api, daemon: Daemon) -> None:
    scenario = {"turns": [{"steps": [{"events": 500, "text": "z"}, {"sleep": 0.2}, {"text": "last"}]}]}
    session_id = await api.create(cwd=str(daemon.session_dir(scenario)))
    streams = [await api.open_stream(session_id, 0) for _ in range(10)]
    await api.say(session_id, "go")
    results = await asyncio.gather(*(s.until("result", timeout=10) for s in streams))
    assert all(r.name == "result" for r in results)
    for stream in streams:
        ids = [e.id for e in stream.events]
        assert ids == list(range(1, len(ids) + 1))
        stream.close()
