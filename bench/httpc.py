"""A minimal HTTP/1.1 client on raw asyncio streams, for the bench's control calls
(create, input, delete): one connection per request, `Connection: close`, so the timing
of a call is the server's work plus a loopback connect, with no client library in between.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any


class HttpError(Exception):
    pass


def dechunk(body: bytes) -> bytes:
    """Decode a complete `Transfer-Encoding: chunked` body."""
    out, pos = bytearray(), 0
    while True:
        eol = body.index(b"\r\n", pos)
        size = int(body[pos:eol].split(b";")[0], 16)
        if size == 0:
            return bytes(out)
        out += body[eol + 2 : eol + 2 + size]
        pos = eol + 2 + size + 2


async def request(
    host: str,
    port: int,
    method: str,
    path: str,
    body: Any = None,
    *,
    headers: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> tuple[int, Any]:
    """One request; returns (status, parsed JSON body or raw text or None)."""
    data = json.dumps(body).encode() if body is not None else b""
    lines = [
        f"{method} {path} HTTP/1.1",
        f"Host: {host}:{port}",
        "Connection: close",
        f"Content-Length: {len(data)}",
    ]
    if body is not None:
        lines.append("Content-Type: application/json")
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    raw = ("\r\n".join(lines) + "\r\n\r\n").encode() + data
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(raw)
            response = await reader.read(-1)  # the server closes after the response
        finally:
            writer.close()
    head, sep, payload = response.partition(b"\r\n\r\n")
    if not sep:
        raise HttpError(f"{method} {path}: incomplete response {response[:200]!r}")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    status = int(status_line.split()[1])
    hdrs = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
    if hdrs.get("transfer-encoding", "").lower() == "chunked":
        payload = dechunk(payload)
    elif "content-length" in hdrs:
        payload = payload[: int(hdrs["content-length"])]
    if not payload:
        return status, None
    if hdrs.get("content-type", "").startswith("application/json"):
        return status, json.loads(payload)
    return status, payload.decode(errors="replace")
