"""The EventLog on its own: seq, ring wrap-around, cursors, encoding once, wake-ups."""

from __future__ import annotations

import asyncio
import json

import pytest

from agent_webkitd.sessions import eventlog
from agent_webkitd.sessions.eventlog import CursorUnavailable, EventLog
from agent_webkitd.stores.memory import MemoryStore


def parse(frame: bytes) -> tuple[int, str, object]:
    lines = frame.decode().rstrip("\n").split("\n")
    assert frame.endswith(b"\n\n") and len(lines) == 3
    return int(lines[0][4:]), lines[1][7:], json.loads(lines[2][6:])


async def test_seq_starts_at_one_and_frames_are_one_line_sse() -> None:
    log = EventLog("s", 4, MemoryStore())
    assert log.append("session_ready", {"text": "multi\nline\r\ntext"}) == 1
    assert log.append("done", {}) == 2
    frames = log.frames_after(0, 10)
    assert [parse(f) for f in frames] == [(1, "session_ready", {"text": "multi\nline\r\ntext"}), (2, "done", {})]


async def test_the_ring_keeps_the_newest_events_and_refuses_older_cursors() -> None:
    log = EventLog("s", 4, MemoryStore())
    for i in range(10):
        log.append("e", {"i": i})
    assert log.first_seq == 7 and log.last_seq == 10
    assert [parse(f)[0] for f in log.frames_after(6, 100)] == [7, 8, 9, 10]
    assert [parse(f)[0] for f in log.frames_after(7, 2)] == [8, 9]
    assert log.frames_after(10, 5) == []
    for cursor in (0, 5, 11):
        with pytest.raises(CursorUnavailable):
            log.frames_after(cursor, 1)


async def test_each_event_is_encoded_once_and_shared() -> None:
    log = EventLog("s", 8, MemoryStore())
    log.append("e", {"x": 1})
    assert log.frames_after(0, 1)[0] is log.frames_after(0, 1)[0]


async def test_data_that_is_not_plain_json_becomes_an_error_event() -> None:
    log = EventLog("s", 8, MemoryStore())
    seq = log.append("tool_use", {"input": object()})
    _, name, data = parse(log.frames_after(seq - 1, 1)[0])
    assert name == "error" and data["code"] == "encode_failed"  # type: ignore[index]


async def test_lone_surrogates_are_escaped_not_fatal() -> None:
    log = EventLog("s", 8, MemoryStore())
    log.append("message_delta", {"text": "bad \ud800 half"})
    assert parse(log.frames_after(0, 1)[0])[2] == {"text": "bad \ud800 half"}


async def test_json_that_orjson_refuses_is_still_encoded_and_stored_as_sent() -> None:
    texts: list[str] = []

    class Keeps(MemoryStore):
        def append(self, log, seq, name, text):  # type: ignore[no-untyped-def]
            texts.append(text)
            super().append(log, seq, name, text)

    log = EventLog("s", 8, Keeps())
    for data in ({"n": 2**70}, {"by_number": {1: "one"}}, {"text": "é ✓", "x": 1.5}):
        seq = log.append("e", data)
        frame = log.frames_after(seq - 1, 1)[0]
        assert parse(frame)[2] == json.loads(json.dumps(data))  # int keys become strings
        # What the store keeps rebuilds the live frame byte for byte (a replay).
        assert frame == f"id: {seq}\nevent: e\ndata: {texts[-1]}\n\n".encode()


async def test_a_waiter_is_woken_by_append_pulse_and_close() -> None:
    log = EventLog("s", 8, MemoryStore())
    for action in (lambda: log.append("e", {}), log.pulse, log.close):
        waiter = asyncio.create_task(log.wait())
        await asyncio.sleep(0)
        assert not waiter.done()
        action()
        await asyncio.wait_for(waiter, 1)
    with pytest.raises(RuntimeError):
        log.append("late", {})


async def test_a_burst_shares_wake_ups_and_its_last_event_still_wakes_waiters() -> None:
    log = EventLog("s", 1000, MemoryStore())
    wakes = 0

    async def waiter() -> None:
        nonlocal wakes
        seen = 0
        while seen < 100:
            await log.wait()
            wakes += 1
            seen = log.last_seq

    task = asyncio.create_task(waiter())
    await asyncio.sleep(0)
    for i in range(100):  # a burst: each append yields to the loop, as the SDK reader does
        log.append("e", {"i": i})
        await asyncio.sleep(0)
    # The first append wakes at once; the other 99 ride on one deferred wake-up.
    await asyncio.wait_for(task, 1)
    assert wakes == 2


async def test_a_small_ring_wakes_subscribers_before_it_could_overflow_them() -> None:
    log = EventLog("s", 8, MemoryStore())
    log.append("e", {})  # wakes at once: nothing was waiting
    waiter = asyncio.create_task(log.wait())
    await asyncio.sleep(0)
    log.append("e", {})  # within the interval: deferred
    await asyncio.sleep(0)
    assert not waiter.done()
    log.append("e", {})  # a quarter of the ring waiting: wake now, not at the interval's end
    await asyncio.sleep(0)
    assert waiter.done()


async def test_a_dropped_ring_sends_readers_to_the_store_and_comes_back_for_new_events() -> None:
    log = EventLog("s", 8, MemoryStore())
    for i in range(3):
        log.append("e", {"i": i})
    log.drop_ring()  # a hibernated session whose store is durable
    assert (log.last_seq, log.published_seq, log.first_seq) == (3, 3, 4)
    with pytest.raises(CursorUnavailable):
        log.frames_after(0, 10)
    assert log.frames_after(3, 10) == []
    assert log.append("e", {"i": 3}) == 4  # seqs go on; the ring holds what is new
    assert [parse(f)[0] for f in log.frames_after(3, 10)] == [4]
    with pytest.raises(CursorUnavailable):
        log.frames_after(2, 10)


async def test_many_sessions_streaming_at_once_share_longer_wake_ups_one_fast_one_does_not() -> None:
    """Events of many sessions come further apart each than WAKE_INTERVAL_S: past
    BUSY_SESSIONS sessions and BUSY_EVENTS_PER_S events, wake-ups are paced at
    BUSY_WAKE_INTERVAL_S so a subscriber writes several events per send, not one."""
    eventlog.PACE = eventlog._Pace()
    one = EventLog("one", 100_000, MemoryStore())
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 3 * eventlog.PACE_WINDOW_S
    while loop.time() < deadline:  # one session, as fast as it can: 5 ms is enough
        one.append("e", {})
        await asyncio.sleep(0)
    assert eventlog.PACE.interval == eventlog.WAKE_INTERVAL_S

    logs = [EventLog(f"s{i}", 100_000, MemoryStore()) for i in range(2 * eventlog.BUSY_SESSIONS)]
    deadline = loop.time() + 3 * eventlog.PACE_WINDOW_S
    while loop.time() < deadline:  # many sessions, round robin, well above the rate
        for log in logs:
            log.append("e", {})
        await asyncio.sleep(0)
    assert eventlog.PACE.interval == eventlog.BUSY_WAKE_INTERVAL_S
    await asyncio.wait_for(logs[0].wait(), eventlog.BUSY_WAKE_INTERVAL_S * 2)  # the last one
    waiter = asyncio.create_task(logs[0].wait())
    await asyncio.sleep(0)
    logs[0].append("e", {})  # within the busy interval of its last wake-up: it waits
    await asyncio.sleep(0)
    assert not waiter.done()
    await asyncio.wait_for(waiter, eventlog.BUSY_WAKE_INTERVAL_S * 2)
    # What a person waits on is never paced: a turn's end, a prompt.
    for name in ("result", "permission_request"):
        waiter = asyncio.create_task(logs[0].wait())
        await asyncio.sleep(0)
        logs[0].append("e", {})
        logs[0].append(name, {})
        await asyncio.sleep(0)
        assert waiter.done(), name

    await asyncio.sleep(2 * eventlog.PACE_WINDOW_S)  # quiet again
    one.append("e", {})
    assert eventlog.PACE.interval == eventlog.WAKE_INTERVAL_S
