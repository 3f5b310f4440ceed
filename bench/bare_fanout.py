"""The fan-out ceiling: a bare aiohttp app that streams pre-encoded SSE frames to many
subscribers, with nothing else in the way (no CLI, no SDK, no store, no event log).

The `durable` phase runs it beside the daemon and reports the daemon's delivered events/s
as a share of this one's, measured in the same run on the same machine, with the same
subscribers (bench/subscribers.py). It speaks just enough of the wire protocol for them:

    POST /sessions {cwd}     reads <cwd>/scenario.json (bench/run.py's events_scenario) and
                             encodes that turn's frames once, shaped like the daemon's
                             (session_ready, state changes, K message_complete, result)
    GET  /sessions/{id}/stream   Last-Event-ID replay, then live; ends after the turn
    POST /sessions/{id}/input    publishes the whole turn at once (the ceiling: no producer)
    DELETE /sessions/{id}

Each subscriber writes what is pending, at most MAX_FRAMES_PER_WRITE frames per write
(the daemon's cap), and waits on one shared pulsed Event, as the daemon's writers do.

    .venv/bin/python bench/bare_fanout.py --port 8124
"""

from __future__ import annotations

import argparse
import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

from aiohttp import web

MAX_FRAMES_PER_WRITE = 512  # agent_webkitd/http/sse.py's


def frame(seq: int, name: str, data: dict[str, Any]) -> bytes:
    text = json.dumps(data, separators=(",", ":"))
    return f"id: {seq}\nevent: {name}\ndata: {text}\n\n".encode()


def turn_events(scenario: dict[str, Any]) -> int:
    """Assistant messages in the scenario's first turn (a text step is one message)."""
    steps = scenario["turns"][0]["steps"]
    return sum(int(step.get("events", 1)) for step in steps)


class Session:
    def __init__(self, session_id: str, k: int) -> None:
        self.frames: list[bytes] = []
        self.k = k
        self.ended = False
        self.changed = asyncio.Event()
        self.add("session_ready", {"session_id": session_id, "protocol_version": "1.0"})
        self.add("session_state", {"state": "idle"})
        self.session_id = session_id

    def add(self, name: str, data: dict[str, Any]) -> None:
        self.frames.append(frame(len(self.frames) + 1, name, data))

    def run_turn(self) -> None:
        """Encode and publish one turn's frames, then wake every subscriber once."""
        self.add("user_message", {"content": "go"})
        self.add("session_state", {"state": "running"})
        for _ in range(self.k):
            mid = f"msg_{uuid.uuid4().hex[:24]}"
            self.add("message_complete", {"message_id": mid, "message": {
                "id": mid, "role": "assistant", "content": [{"type": "text", "text": "x"}],
                "model": "claude-opus-5-5", "stop_reason": None}})
        self.add("result", {"session_id": self.session_id, "subtype": "success", "is_error": False,
                            "num_turns": self.k, "result": "x", "total_cost_usd": 0.001})
        self.add("session_state", {"state": "idle"})
        self.ended = True
        self.pulse()

    def pulse(self) -> None:
        self.changed.set()
        self.changed.clear()


def make_app() -> web.Application:
    sessions: dict[str, Session] = {}

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def create(request: web.Request) -> web.Response:
        body = await request.json()
        scenario = json.loads((Path(body["cwd"]) / "scenario.json").read_text())
        session_id = str(uuid.uuid4())
        sessions[session_id] = Session(session_id, turn_events(scenario))
        return web.json_response({"session_id": session_id, "protocol_version": "1.0"})

    async def say(request: web.Request) -> web.Response:
        session = sessions.get(request.match_info["sid"])
        if session is None:
            raise web.HTTPNotFound()
        session.run_turn()
        return web.Response(status=204)

    async def delete(request: web.Request) -> web.Response:
        session = sessions.pop(request.match_info["sid"], None)
        if session is not None:
            session.ended = True
            session.pulse()
        return web.Response(status=204)

    async def stream(request: web.Request) -> web.StreamResponse:
        session = sessions.get(request.match_info["sid"])
        if session is None:
            raise web.HTTPNotFound()
        raw = request.headers.get("Last-Event-ID")
        cursor = int(raw) if raw else 0
        response = web.StreamResponse(headers={
            "Content-Type": "text/event-stream", "Cache-Control": "no-cache",
            "X-Replay-From": str(cursor + 1)})
        await response.prepare(request)
        await response.write(b"retry: 2000\n\n")
        frames = session.frames
        while True:
            if cursor < len(frames):
                chunk = frames[cursor:cursor + MAX_FRAMES_PER_WRITE]
                cursor += len(chunk)
                await response.write(b"".join(chunk))
                continue
            if session.ended:
                break
            await session.changed.wait()
        return response

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_post("/sessions", create)
    app.router.add_get("/sessions/{sid}/stream", stream)
    app.router.add_post("/sessions/{sid}/input", say)
    app.router.add_delete("/sessions/{sid}", delete)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    web.run_app(make_app(), host=args.host, port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
