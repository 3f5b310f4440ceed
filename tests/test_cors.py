"""CORS at the HTTP level (the real browser's view is in test_browser.py): an exact-origin
allow-list, preflights without a token, and the headers on every answer to an allowed
origin, errors and streams included."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import aiohttp

from tests.conftest import TOKEN, Daemon, api_for

ALLOWED = "https://app.example.com"
SESSION_ROUTES = ("/sessions", "/sessions/x", "/sessions/x/stream", "/sessions/x/input", "/sessions/x/stream-ticket")


async def cors_daemon(start_daemon: Callable[..., Any]) -> Daemon:
    daemon: Daemon = await start_daemon({"server": {"cors_allowed_origins": [ALLOWED, "http://localhost:5173"]}})
    return daemon


async def test_preflights_from_an_allowed_origin_need_no_token_and_allow_the_protocols_headers(
    start_daemon: Callable[..., Any],
) -> None:
    daemon = await cors_daemon(start_daemon)
    async with aiohttp.ClientSession() as http:
        for path in SESSION_ROUTES:
            async with http.options(daemon.base_url + path, headers={
                "Origin": ALLOWED, "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "authorization, content-type, last-event-id",
            }) as resp:
                assert resp.status == 204, path
                assert resp.headers["Access-Control-Allow-Origin"] == ALLOWED
                assert resp.headers["Vary"] == "Origin"
                assert resp.headers["Access-Control-Allow-Methods"] == "GET, POST, PUT, DELETE"
                allowed = {h.strip().lower() for h in resp.headers["Access-Control-Allow-Headers"].split(",")}
                assert allowed == {"authorization", "content-type", "last-event-id", "x-subscriber-id"}
                assert "Access-Control-Allow-Credentials" not in resp.headers
        # Another origin, a look-alike, or no origin: no CORS headers, nothing answered.
        for origin in ("https://evil.example.com", "https://app.example.com.evil.com", "null", None):
            headers = {"Access-Control-Request-Method": "POST"}
            if origin is not None:
                headers["Origin"] = origin
            async with http.options(daemon.base_url + "/sessions", headers=headers) as resp:
                assert resp.status != 204, origin
                assert not any(h.startswith("Access-Control-") for h in resp.headers), origin
        # A path that does not exist is not preflighted.
        async with http.options(daemon.base_url + "/nowhere", headers={
            "Origin": ALLOWED, "Access-Control-Request-Method": "GET",
        }) as resp:
            assert resp.status == 404


async def test_every_answer_to_an_allowed_origin_carries_cors_headers_errors_and_streams_too(
    start_daemon: Callable[..., Any],
) -> None:
    daemon = await cors_daemon(start_daemon)
    origin = {"Origin": ALLOWED}
    async with api_for(daemon) as api, api_for(daemon, None) as anonymous, api_for(daemon, "wrong") as wrong:
        session_id = await api.create()
        answers = [
            await api.request("GET", f"/sessions/{session_id}", headers=origin),
            await api.request("GET", "/sessions/unknown", headers=origin),  # 404
            await anonymous.request("GET", "/sessions", headers=origin),  # 401
            await wrong.request("POST", "/sessions", headers=origin),  # 401
            await api.request("POST", f"/sessions/{session_id}/input", raw=b"{", headers=origin),  # 400
        ]
        assert [status for status, _, _ in answers] == [200, 404, 401, 401, 400]
        for status, _, headers in answers:
            assert headers["Access-Control-Allow-Origin"] == ALLOWED, status
            assert headers["Vary"] == "Origin"
            assert "WWW-Authenticate" in headers["Access-Control-Expose-Headers"]
        stream = await api.open_stream(session_id, headers=origin)
        assert stream.response.headers["Access-Control-Allow-Origin"] == ALLOWED
        assert "X-Subscriber-ID" in stream.response.headers["Access-Control-Expose-Headers"]
        stream.close()
        # The same requests from another origin: answered (a browser hides them from the
        # page), but without a single CORS header.
        status, _, headers = await api.request("GET", f"/sessions/{session_id}", headers={"Origin": "https://evil.example.com"})
        assert status == 200 and headers["Vary"] == "Origin"
        assert not any(h.startswith("Access-Control-") for h in headers)
    assert TOKEN not in daemon.logs()
