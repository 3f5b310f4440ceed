"""The SSE writer, written by hand: one per subscriber, streaming a session's EventLog.

It resolves the resume cursor (`Last-Event-ID` header, else `?last_event_id=`), replays
what the ring still holds, then tails live. Frames are the log's pre-encoded bytes; a
subscriber that is behind writes many of them per socket write. Keepalive comments are
timed by the log's pulses (one shared ticker, no timer per event or per subscriber).
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from ..errors import ApiError, bad_request
from ..protocol.frames import encode_frame
from ..sessions.eventlog import CursorUnavailable, EventLog
from ..stores.base import Store

RETRY_MS = 2000
MAX_FRAMES_PER_WRITE = 512
KEEPALIVE = b": keepalive\n\n"
# Pulses come every keepalive_s / 2; two idle pulses in a row mean keepalive_s of silence.
IDLE_PULSES_PER_KEEPALIVE = 2


def parse_cursor(request: web.Request) -> int | None:
    """The client's resume position, or None for 'whatever history you still have'."""
    raw = request.headers.get("Last-Event-ID")
    if raw is None:
        raw = request.query.get("last_event_id")
    if raw is None:
        return None
    raw = raw.strip()
    if not raw.isascii() or not raw.isdigit() or len(raw) > 18:
        raise bad_request(
            "invalid_last_event_id", f"Last-Event-ID must be a non-negative integer, got {raw!r}"
        )
    return int(raw)


def resolve_start(
    log: EventLog, cursor: int | None, *, durable: bool = False, graceful: bool = False
) -> tuple[int, bytes]:
    """The seq after which to start sending, and a frame to send first (or b"").
    ApiError 412 if the cursor cannot be honoured (with a `durable` store, only one beyond
    the newest event is refused); `graceful`: a cursor that fell out of the ring starts
    at the oldest event kept instead, after a `replay_truncated` frame (not stored)."""
    if cursor is None:
        if durable:  # a ring's worth, whether or not it is still in memory
            return max(0, log.published_seq - log.ring_size), b""
        return min(log.first_seq - 1, log.published_seq), b""
    try:
        log.check_cursor(cursor, durable=durable)
    except CursorUnavailable as exc:
        if graceful and cursor < log.first_seq - 1:
            oldest = log.first_seq
            notice = {
                "requested_event_id": cursor,
                "oldest_available_id": oldest,
                "last_event_id": log.published_seq,
            }
            return oldest - 1, encode_frame(None, "replay_truncated", notice)
        raise ApiError(412, "cursor_unavailable", str(exc)) from exc
    return cursor, b""


async def stream_events(
    request: web.Request,
    log: EventLog,
    after: int,
    headers: dict[str, str],
    store: Store,
    *,
    write_timeout_s: float,
    from_edge: bool = False,
    preface: bytes = b"",
) -> tuple[web.StreamResponse, bool]:
    """Stream until `done` or the client leaves. Returns the response and whether the
    subscriber was evicted: for falling out of the ring (a durable store serves such a
    subscriber from the database instead), or for taking no bytes for `write_timeout_s`
    (its connection is cut, so what waits for it stays bounded). `from_edge`: the client
    gave no cursor, so if the ring moves on before its first frame, it starts at the new
    edge instead. `preface`: a frame sent before the first event."""

    async def send(data: bytes) -> None:
        transport = request.transport
        if transport is not None and not transport.get_write_buffer_size() and len(data) < 65536:
            await response.write(data)  # the client keeps up: this cannot wait (no timer)
            return
        async with asyncio.timeout(write_timeout_s):
            await response.write(data)

    response = web.StreamResponse(
        status=200,
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
            "X-Replay-From": str(after + 1),
            **headers,
        },
    )
    await response.prepare(request)
    await send(f"retry: {RETRY_MS}\n\n".encode() + preface)
    cursor = after
    evicted = False
    idle_pulses = 0
    ticks = log.ticks
    try:
        while True:
            if cursor < log.published_seq:
                try:
                    frames = log.frames_after(cursor, MAX_FRAMES_PER_WRITE)
                except CursorUnavailable:
                    if from_edge and cursor == after and not store.durable:
                        cursor = after = log.first_seq - 1
                        continue
                    try:
                        frames = await store.frames(
                            log.session_id, cursor, log.published_seq, MAX_FRAMES_PER_WRITE
                        )
                    except Exception:  # the database is away: end; the client resumes
                        break
                if not frames:
                    await send(
                        encode_frame(
                            None,
                            "error",
                            {
                                "code": "evicted",
                                "message": f"this stream fell more than the ring behind (at {cursor}); "
                                "reconnect with Last-Event-ID to resume if the events are still kept",
                            },
                        )
                    )
                    evicted = True
                    break
                cursor += len(frames)
                idle_pulses = 0
                await send(b"".join(frames))
                continue
            if log.ended:
                break
            transport = request.transport
            if transport is None or transport.is_closing():
                break
            await log.wait()
            if log.ticks != ticks and cursor == log.published_seq:
                ticks = log.ticks
                idle_pulses += 1
                if idle_pulses >= IDLE_PULSES_PER_KEEPALIVE:
                    idle_pulses = 0
                    await send(KEEPALIVE)
    except (ConnectionResetError, ConnectionError):
        pass  # the client went away; nothing to clean up but this task
    except TimeoutError:  # it reads nothing: cut it off rather than buffer for it
        evicted = True
        if request.transport is not None:
            request.transport.abort()
    return response, evicted
