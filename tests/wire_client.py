"""A small wire-protocol 1.0 client for the tests: HTTP calls plus an SSE reader.

It parses SSE byte streams itself (ids, event names, JSON data, comments) so tests can
check the framing the daemon writes, not just the payloads.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

import aiohttp


@dataclass
class Event:
    id: int | None
    name: str
    data: Any


@dataclass
class Stream:
    """One open SSE response; `next()` returns the next event, `comments` counts keepalives."""

    response: aiohttp.ClientResponse
    events: list[Event] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    retry: int | None = None
    _buffer: bytes = b""
    _pending: list[Event] = field(default_factory=list)
    ended: bool = False

    async def next(self, timeout: float = 10.0) -> Event:
        async with asyncio.timeout(timeout):
            while not self._pending:
                if self.ended:
                    raise EOFError("stream ended")
                chunk = await self.response.content.readany()
                if not chunk:
                    self.ended = True
                    continue
                self._feed(chunk)
        event = self._pending.pop(0)
        self.events.append(event)
        return event

    async def until(self, name: str, timeout: float = 10.0) -> Event:
        """Read events until one named `name` arrives; return it."""
        async with asyncio.timeout(timeout):
            while True:
                event = await self.next(timeout)
                if event.name == name:
                    return event

    async def rest(self, timeout: float = 10.0) -> list[Event]:
        """Read until the stream ends; return what arrived."""
        out = []
        async with asyncio.timeout(timeout):
            while True:
                try:
                    out.append(await self.next(timeout))
                except EOFError:
                    return out

    def _feed(self, chunk: bytes) -> None:
        self._buffer += chunk
        while b"\n\n" in self._buffer:
            raw, self._buffer = self._buffer.split(b"\n\n", 1)
            fields: dict[str, str] = {}
            for line in raw.decode().split("\n"):
                if line.startswith(":"):
                    self.comments.append(line[1:].strip())
                    continue
                key, _, value = line.partition(":")
                fields[key] = value[1:] if value.startswith(" ") else value
            if "retry" in fields:
                self.retry = int(fields["retry"])
            if "event" in fields or "data" in fields:
                self._pending.append(
                    Event(
                        id=int(fields["id"]) if "id" in fields else None,
                        name=fields.get("event", "message"),
                        data=json.loads(fields.get("data", "null")),
                    )
                )

    def close(self) -> None:
        self.response.close()


class Api:
    def __init__(self, base_url: str, token: str | None) -> None:
        self.base_url = base_url
        self.token = token
        self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=5))

    async def close(self) -> None:
        await self.http.close()

    def headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        return {**headers, **(extra or {})}

    async def request(self, method: str, path: str, body: Any = None, *, raw: bytes | None = None,
                      headers: dict[str, str] | None = None) -> tuple[int, Any, dict[str, str]]:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        async with self.http.request(method, self.base_url + path, data=data, headers=self.headers(headers),
                                     timeout=aiohttp.ClientTimeout(total=90)) as resp:
            text = await resp.text()
            payload = json.loads(text) if text and resp.content_type == "application/json" else text
            return resp.status, payload, dict(resp.headers)

    async def create(self, body: Any = None, **fields: Any) -> str:
        status, payload, _ = await self.request("POST", "/sessions", body if body is not None else fields)
        assert status == 200, (status, payload)
        assert payload["protocol_version"] == "1.0"
        session_id: str = payload["session_id"]
        return session_id

    async def send(self, session_id: str, message: dict[str, Any]) -> tuple[int, Any]:
        status, payload, _ = await self.request("POST", f"/sessions/{session_id}/input", message)
        return status, payload

    async def say(self, session_id: str, text: str) -> None:
        status, payload = await self.send(session_id, {"type": "user_message", "content": text})
        assert status == 204, (status, payload)

    async def delete(self, session_id: str) -> int:
        status, _, _ = await self.request("DELETE", f"/sessions/{session_id}")
        return status

    async def open_stream(self, session_id: str, last_event_id: str | int | None = None,
                          headers: dict[str, str] | None = None, query: str = "") -> Stream:
        extra = dict(headers or {})
        if last_event_id is not None:
            extra["Last-Event-ID"] = str(last_event_id)
        resp = await self.http.get(f"{self.base_url}/sessions/{session_id}/stream{query}",
                                   headers=self.headers(extra))
        if resp.status != 200:
            body = await resp.text()
            resp.close()
            raise StreamRefused(resp.status, body)
        return Stream(resp)


class StreamRefused(Exception):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"{status}: {body}")
        self.status = status
        self.body = json.loads(body) if body.startswith("{") else body
