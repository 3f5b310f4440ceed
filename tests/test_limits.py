"""Resource limits an ops team can see: each has a config key, a stable error code, and
a metric (agent_webkit_limit_rejections_total{limit}) when it bites."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

from tests.conftest import api_for
from tests.test_hibernation import metric
from tests.wire_client import StreamRefused

LIMITS = {
    "sessions": {"max_message_bytes": 100, "max_image_bytes": 300, "max_streams_per_session": 2,
                 "inbound_queue_size": 1},
    "server": {"max_streams": 3},
}


def image(size: int) -> dict[str, Any]:
    data = base64.b64encode(b"\x89PNG" + b"\0" * (size - 4)).decode()
    return {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": data}}


async def test_each_limit_answers_its_code_and_counts_in_the_metric(start_daemon: Any) -> None:
    daemon = await start_daemon(LIMITS)
    cwd = daemon.session_dir({"turns": [{"steps": [{"sleep": 5}]}]})
    async with api_for(daemon) as api:
        session_id = await api.create(cwd=str(cwd))

        status, payload = await api.send(session_id, {"type": "user_message", "content": "x" * 101})
        assert (status, payload["error"]["code"]) == (413, "message_too_large")
        status, payload = await api.send(session_id, {"type": "user_message", "content": [
            {"type": "text", "text": "what is this?"}, image(400)]})
        assert (status, payload["error"]["code"]) == (413, "image_too_large")
        status, _ = await api.send(session_id, {"type": "user_message", "content": [image(200)]})
        assert status == 204  # within both limits: the turn sleeps
        await api.say(session_id, "queued")  # the queue holds one
        status, payload = await api.send(session_id, {"type": "user_message", "content": "one too many"})
        assert (status, payload["error"]["code"]) == (503, "backpressure")

        streams = [await api.open_stream(session_id, 0) for _ in range(2)]
        try:
            await api.open_stream(session_id, 0)
            raise AssertionError("a third stream on one session was let in")
        except StreamRefused as exc:
            assert (exc.status, exc.body["error"]["code"]) == (429, "too_many_streams")
        other = await api.create()
        streams.append(await api.open_stream(other, 0))
        try:
            await api.open_stream(other, 0)
            raise AssertionError("a fourth stream on the host was let in")
        except StreamRefused as exc:
            assert (exc.status, exc.body["error"]["code"]) == (503, "stream_capacity")
        streams[0].close()  # a slot frees up again
        for _ in range(50):
            if await metric(api, "agent_webkit_subscribers_live") == 2:
                break
            await asyncio.sleep(0.1)
        streams.append(await api.open_stream(other, 0))

        for limit in ("message_bytes", "image_bytes", "inbound_queue", "streams_per_session", "streams"):
            assert await metric(api, "agent_webkit_limit_rejections_total", f'limit="{limit}"') == 1, limit
        for stream in streams:
            stream.close()
    # The file-descriptor budget is checked at start-up (LimitNOFILE= in the unit).
    assert '"event": "file_limit"' in daemon.logs()
