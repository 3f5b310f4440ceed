"""Reading a model response's usage as it passes through the gateway, without holding it up.

A streamed response (`text/event-stream`) says its usage twice: `message_start` carries
the input side (input, cache-write and cache-read tokens), `message_delta` near the end
the cumulative output (and, from newer APIs, cumulative input figures too, which win). A
plain JSON response has one `usage` in its body. Only lines that mention `"usage"` are
decoded, so the many content deltas of a stream cost a substring search each. Once
`message_start` has passed, only each chunk's last TAIL_WINDOW bytes are searched: the
API sends nothing after `message_delta` but `message_stop` (and perhaps a ping), so the
usage still to come is always near the end of the chunk that holds it, and a long
response's text is not searched at all.

`feed` is called with each chunk *before* it is passed on, and says when the final usage
has just become known: the gateway records it then, so by the time the CLI has read
the response and reported its turn's `result`, the usage is already counted. A chunk
that ends a line, holds no `"usage"` and follows no partial line cannot matter: the
gateway skips `feed` for it (`wants`), which keeps a long stream's cost per chunk to
a byte compare and a substring search.
"""

from __future__ import annotations

from typing import Any

import orjson

from .model import TOKEN_KINDS, Usage

MAX_JSON_BODY = 8 * 1024 * 1024  # a non-streamed response larger than this is not metered
MAX_LINE = 1024 * 1024  # a partial SSE line kept between chunks
USAGE_KEY = b'"usage"'  # raw quotes: inside a JSON string they would be escaped
NEWLINE = ord("\n")
MAX_CHUNK = 1 << 62  # "from the start", as an offset from a chunk's end
TAIL_WINDOW = 2048  # bytes searched at a chunk's end once message_start has passed


class ResponseMeter:
    """One response's usage, from its bytes."""

    __slots__ = ("_body", "_body_bytes", "eager", "final", "model", "scan_from", "tail", "usage")

    def __init__(self, streamed: bool) -> None:
        self.model: str | None = None
        self.usage: Usage | None = None  # what is known so far (None: nothing yet)
        self.final = False  # the figures cannot change any more
        self.tail = b""  # a stream's partial last line
        # Where `find` starts, from a chunk's end: everywhere, then (message_start seen)
        # its last TAIL_WINDOW bytes. Negative: bytes.find counts it from the end.
        self.scan_from = -MAX_CHUNK
        self._body: list[bytes] | None = None if streamed else []
        # `feed` must see the next chunk whatever it holds: a JSON body is kept whole, a
        # partial line is completed.
        self.eager = not streamed
        self._body_bytes = 0

    def feed(self, chunk: bytes) -> bool:
        """Take the next chunk; True once, when the final usage has just become known."""
        if self.final:
            return False
        if self._body is not None:
            self._body_bytes += len(chunk)
            if self._body_bytes <= MAX_JSON_BODY:
                self._body.append(chunk)
            return False
        if self.tail:  # the partial line the last chunk ended with
            chunk, self.tail = self.tail + chunk, b""
        end = len(chunk)
        if chunk[-1:] != b"\n":  # most chunks end an event; this one ends mid-line
            end = chunk.rfind(b"\n") + 1
            if len(chunk) - end <= MAX_LINE:
                self.tail = chunk[end:]
        self.eager = bool(self.tail)
        # Only the lines that mention "usage" are decoded: a chunk holding a whole
        # response (a proxy or a busy loop coalesces them) costs a search, not a split.
        stop = 0
        while (at := chunk.find(USAGE_KEY, max(stop, end + self.scan_from), end)) >= 0:
            start = chunk.rfind(b"\n", 0, at) + 1
            stop = chunk.find(b"\n", at, end)
            if chunk.startswith(b"data:", start):
                self._event(chunk[start + 5 : stop])
        return self.final

    def wants(self, chunk: bytes) -> bool:
        """Whether `feed` must see this chunk (the gateway inlines the same test)."""
        return self.eager or chunk[-1] != NEWLINE or chunk.find(USAGE_KEY, self.scan_from) >= 0

    def finish(self) -> None:
        """The response has ended (or broke off): a JSON body is read now."""
        if self._body is None or self.final or self._body_bytes > MAX_JSON_BODY:
            return
        body = _json(b"".join(self._body))
        self._body = None
        if isinstance(body, dict) and isinstance(body.get("usage"), dict):
            self.model = _text(body.get("model"))
            self.usage = _usage(body["usage"], Usage(requests=1))
            self.final = True

    def _event(self, raw: bytes) -> None:
        event = _json(raw)
        if not isinstance(event, dict):
            return
        kind = event.get("type")
        if kind == "message_start" and isinstance(event.get("message"), dict):
            self.scan_from = -TAIL_WINDOW
            message = event["message"]
            self.model = _text(message.get("model"))
            if isinstance(message.get("usage"), dict):
                self.usage = _usage(message["usage"], Usage(requests=1))
        elif kind == "message_delta" and isinstance(event.get("usage"), dict):
            self.usage = _usage(event["usage"], self.usage or Usage(requests=1))
            self.final = True


def _usage(figures: dict[str, Any], into: Usage) -> Usage:
    """`into` with every count `figures` gives replaced (the API's counts are cumulative)."""
    for name in TOKEN_KINDS:
        value = figures.get(name)
        if type(value) is int and value >= 0:  # not a bool, not garbage
            setattr(into, name, value)
    return into


def _json(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None
