"""A connected client's messages, read without a trip round the event loop per message.

`ClaudeSDKClient.receive_messages()` hands each CLI message from the SDK's reader task
to the caller through an anyio memory stream whose `send` and `receive` each begin with
a checkpoint (a full pass of the event loop), then through two async generators. Both
trips are per message, and at 200 busy sessions they were the largest share of what the
daemon spent on an event (docs/performance.md, "CPU per event"). So here:

- the reader task's sends skip the checkpoint while the stream's buffer has room: it
  still yields whenever it waits for the CLI's next output, and waits as before when the
  buffer is full (the SDK's 100 messages);
- `messages()` takes what is buffered with `receive_nowait`, waits only when nothing is,
  and ends or raises on the stream's own `end` and `error` items as the SDK does.

So a CLI writing fast costs one task switch per batch. This reaches into the SDK's
`Query` (its `_message_send` and `_message_receive`; the SDK version is pinned in
pyproject.toml). If they are not what they were, `messages()` falls back to the public
`receive_messages()`, and tests/test_sdk_reader.py fails, so an upgrade says so.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from claude_agent_sdk import ClaudeSDKClient
from claude_agent_sdk._internal.message_parser import parse_message
from claude_agent_sdk.types import Message


class EagerSend:
    """The SDK's send side, minus the checkpoint while the buffer has room."""

    __slots__ = ("_stream",)

    def __init__(self, stream: MemoryObjectSendStream[dict[str, Any]]) -> None:
        self._stream = stream

    async def send(self, item: dict[str, Any]) -> None:
        try:
            self._stream.send_nowait(item)  # to a waiting receiver, or into the buffer
        except anyio.WouldBlock:  # the buffer is full: wait for room, as the SDK would
            await self._stream.send(item)

    def __getattr__(self, name: str) -> Any:  # send_nowait, close, ...: the stream's own
        return getattr(self._stream, name)


def message_stream(client: ClaudeSDKClient) -> MemoryObjectReceiveStream[dict[str, Any]] | None:
    """The connected client's message stream with its sends made eager, or None if this
    SDK does not hold it where this module expects."""
    query = getattr(client, "_query", None)
    send = getattr(query, "_message_send", None)
    receive = getattr(query, "_message_receive", None)
    if not isinstance(receive, MemoryObjectReceiveStream):
        return None
    if isinstance(send, MemoryObjectSendStream):
        query._message_send = EagerSend(send)  # type: ignore[union-attr]
    elif not isinstance(send, EagerSend):
        return None
    return receive


async def messages(client: ClaudeSDKClient) -> AsyncIterator[Message]:
    """What `client.receive_messages()` yields, and raises, with fewer task switches."""
    stream = message_stream(client)
    if stream is None:
        async for each in client.receive_messages():
            yield each
        return
    while True:
        try:
            data = stream.receive_nowait()
        except anyio.WouldBlock:
            try:
                data = await stream.receive()
            except anyio.EndOfStream:
                return
        except anyio.EndOfStream:
            return
        kind = data.get("type")
        if kind == "end":
            return
        if kind == "error":  # the typed error the reader met (ProcessError, ...)
            error = data.get("exception")
            if isinstance(error, Exception):
                raise error
            raise Exception(data.get("error", "Unknown error"))
        message = parse_message(data)
        if message is not None:
            yield message
