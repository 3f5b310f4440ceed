"""The HTTP edge: auth, status codes and JSON error bodies of every endpoint (DESIGN.md §2)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest

from tests.conftest import TOKEN, Daemon, api_for
from tests.wire_client import Api, StreamRefused


@pytest.fixture
def daemon(warm_daemon: Daemon) -> Daemon:
    """These tests run against a daemon with a warm CLI, as in production."""
    return warm_daemon


def error_code(payload: Any) -> str:
    assert isinstance(payload, dict) and set(payload) == {"error"}, payload
    assert isinstance(payload["error"]["message"], str) and payload["error"]["message"]
    code: str = payload["error"]["code"]
    return code


async def test_requests_without_a_token_get_401(daemon: Daemon) -> None:
    async with api_for(daemon, token=None) as anon:
        for method, path in [("POST", "/sessions"), ("GET", "/sessions/x/stream"),
                             ("POST", "/sessions/x/input"), ("DELETE", "/sessions/x")]:
            status, payload, headers = await anon.request(method, path)
            assert status == 401, (method, path)
            assert error_code(payload) == "unauthorized"
            assert headers["WWW-Authenticate"] == "Bearer"


async def test_a_wrong_token_gets_401_and_the_scheme_is_case_insensitive(daemon: Daemon) -> None:
    async with api_for(daemon, token="wrong") as bad:
        status, payload, _ = await bad.request("POST", "/sessions")
        assert status == 401 and error_code(payload) == "unauthorized"
    async with api_for(daemon, token=None) as client:
        status, payload, _ = await client.request("POST", "/sessions", headers={"Authorization": f"bEaReR {TOKEN}"})
        assert status == 200, payload
        status, _, _ = await client.request("POST", "/sessions", headers={"Authorization": f"Basic {TOKEN}"})
        assert status == 401


async def test_health_needs_no_token(daemon: Daemon) -> None:
    async with api_for(daemon, token=None) as anon:
        status, payload, _ = await anon.request("GET", "/healthz")
        assert status == 200 and payload["ok"] is True and payload["live_sessions"] == 0


async def test_create_accepts_an_empty_body_and_an_empty_object(api: Api) -> None:
    for raw in (b"", b"{}"):
        status, payload, _ = await api.request("POST", "/sessions", raw=raw)
        assert status == 200, payload
        assert payload["protocol_version"] == "1.0" and payload["session_id"]


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"[1, 2]", "invalid_body"),
        (b"\"text\"", "invalid_body"),
        (b"{not json", "invalid_json"),
        (b'{"model": 5}', "invalid_field"),
        (b'{"permission_mode": "sideways"}', "invalid_field"),
        (b'{"cwd": ["a"]}', "invalid_field"),
    ],
)
async def test_create_with_a_bad_body_gets_400_naming_the_problem(api: Api, raw: bytes, code: str) -> None:
    status, payload, _ = await api.request("POST", "/sessions", raw=raw)
    assert status == 400, payload
    assert error_code(payload) == code


async def test_create_with_a_mode_the_operator_did_not_allow_gets_403(api: Api) -> None:
    status, payload, _ = await api.request("POST", "/sessions", {"permission_mode": "bypassPermissions"})
    assert status == 403 and error_code(payload) == "mode_not_allowed"


async def test_create_with_a_cwd_outside_the_allowed_roots_gets_403(api: Api, daemon: Daemon, tmp_path: Any) -> None:
    status, payload, _ = await api.request("POST", "/sessions", {"cwd": str(tmp_path)})
    assert status == 403 and error_code(payload) == "cwd_not_allowed"
    # A symlink inside the root that points outside it is outside.
    link = daemon.sessions_root / "escape"
    link.symlink_to(tmp_path)
    status, payload, _ = await api.request("POST", "/sessions", {"cwd": str(link)})
    assert status == 403 and error_code(payload) == "cwd_not_allowed"
    status, payload, _ = await api.request("POST", "/sessions", {"cwd": str(daemon.sessions_root / "missing")})
    assert status == 400 and error_code(payload) == "cwd_not_found"


async def test_create_with_an_allowed_cwd_runs_the_cli_there(api: Api, daemon: Daemon) -> None:
    cwd = daemon.session_dir()
    session_id = await api.create(cwd=str(cwd))
    await api.say(session_id, "hello")
    stream = await api.open_stream(session_id, 0)
    await stream.until("result")
    stream.close()
    assert (cwd / "cli-log.jsonl").exists()


async def test_a_body_over_the_limit_gets_413(start_daemon: Any) -> None:
    daemon = await start_daemon({"server": {"max_body_bytes": 1000}})
    async with api_for(daemon) as api:
        session_id = await api.create()
        big = {"type": "user_message", "content": "x" * 5000}
        status, payload = await api.send(session_id, big)
        assert status == 413 and error_code(payload) == "payload_too_large"
        status, payload, _ = await api.request("POST", "/sessions", {"model": "m" * 5000})
        assert status == 413 and error_code(payload) == "payload_too_large"


async def test_unknown_sessions_get_404_on_every_endpoint(api: Api) -> None:
    for method, path, body in [
        ("POST", "/sessions/nope/input", {"type": "interrupt"}),
        ("DELETE", "/sessions/nope", None),
    ]:
        status, payload, _ = await api.request(method, path, body)
        assert status == 404 and error_code(payload) == "not_found"
    with pytest.raises(StreamRefused) as refused:
        await api.open_stream("nope")
    assert refused.value.status == 404


async def test_unknown_routes_and_methods_get_json_errors(api: Api) -> None:
    status, payload, _ = await api.request("GET", "/nowhere")
    assert status == 404 and error_code(payload) == "not_found"
    status, payload, _ = await api.request("PUT", "/sessions")
    assert status == 405 and error_code(payload) == "method_not_allowed"


@pytest.mark.parametrize(
    ("message", "code"),
    [
        ([], "invalid_body"),
        ({}, "missing_field"),
        ({"type": "shout"}, "unknown_type"),
        ({"type": 3}, "unknown_type"),
        ({"type": "user_message"}, "missing_field"),
        ({"type": "user_message", "content": ""}, "invalid_field"),
        ({"type": "user_message", "content": 12}, "invalid_field"),
        ({"type": "user_message", "content": [{"type": "video"}]}, "invalid_field"),
        ({"type": "user_message", "content": [{"type": "image", "source": {"type": "url"}}]}, "invalid_field"),
        ({"type": "permission_response", "behavior": "allow"}, "missing_field"),
        ({"type": "permission_response", "correlation_id": "t", "behavior": "maybe"}, "invalid_field"),
        ({"type": "permission_response", "correlation_id": "t", "behavior": "allow", "interrupt": True}, "interrupt_with_allow"),
        ({"type": "permission_response", "correlation_id": "t", "behavior": "deny", "interrupt": "yes"}, "invalid_field"),
        ({"type": "permission_response", "correlation_id": "t", "behavior": "allow", "updated_input": [1]}, "invalid_field"),
        ({"type": "permission_response", "correlation_id": "t", "behavior": "allow", "updated_permissions": [{"type": "teleport"}]}, "invalid_field"),
        ({"type": "question_response", "correlation_id": "t"}, "missing_field"),
        ({"type": "question_response", "correlation_id": "t", "answers": "Blue"}, "invalid_field"),
        ({"type": "set_permission_mode"}, "missing_field"),
        ({"type": "set_permission_mode", "mode": "sideways"}, "invalid_field"),
        ({"type": "set_model"}, "missing_field"),
        ({"type": "set_model", "model": 7}, "invalid_field"),
        ({"type": "stop_task"}, "missing_field"),
    ],
)
async def test_an_invalid_inbound_message_gets_400_with_a_precise_code(api: Api, message: Any, code: str) -> None:
    session_id = await api.create()
    status, payload = await api.send(session_id, message)
    assert status == 400, payload
    assert error_code(payload) == code


async def test_input_that_is_not_json_gets_400(api: Api) -> None:
    session_id = await api.create()
    for raw in (b"", b"{oops"):
        status, payload, _ = await api.request("POST", f"/sessions/{session_id}/input", raw=raw)
        assert status == 400 and error_code(payload) in ("invalid_body", "invalid_json")


async def test_a_cli_that_cannot_start_gets_502_with_its_stderr(start_daemon: Any, tmp_path: Any) -> None:
    broken = tmp_path / "broken-cli"
    broken.write_text("#!/bin/sh\necho 'fatal: no licence for this machine' >&2\nexit 7\n")
    broken.chmod(0o755)
    daemon = await start_daemon({"agent": {"cli_path": str(broken)}})
    async with api_for(daemon) as api:
        status, payload, _ = await api.request("POST", "/sessions")
        assert status == 502, payload
        assert error_code(payload) == "agent_start_failed"
        assert "no licence for this machine" in payload["error"]["message"]
        status, payload, _ = await api.request("GET", "/healthz")
        assert payload["live_sessions"] == 0


async def test_a_full_inbound_queue_gets_503_with_retry_after(start_daemon: Any) -> None:
    daemon = await start_daemon({"sessions": {"inbound_queue_size": 2}})
    cwd = daemon.session_dir({"turns": [{"steps": [{"sleep": 3}]}]})
    async with api_for(daemon) as api:
        session_id = await api.create(cwd=str(cwd))
        statuses = []
        for i in range(6):
            status, payload = await api.send(session_id, {"type": "user_message", "content": f"m{i}"})
            statuses.append(status)
            if status == 503:
                assert error_code(payload) == "backpressure"
        # one turn in flight, two queued, the rest refused
        assert statuses[:3] == [204, 204, 204] and 503 in statuses[3:], statuses
        _, _, headers = await api.request("POST", f"/sessions/{session_id}/input",
                                          {"type": "user_message", "content": "more"})
        assert int(headers["Retry-After"]) >= 1


async def test_delete_answers_204_then_404(api: Api) -> None:
    session_id = await api.create()
    assert await api.delete(session_id) == 204
    assert await api.delete(session_id) == 404
    status, _ = await api.send(session_id, {"type": "user_message", "content": "hi"})
    assert status == 404


async def test_sessions_answer_over_plain_aiohttp_with_json_content_type(daemon: Daemon) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(daemon.base_url + "/sessions", headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
            assert resp.status == 200
            assert resp.content_type == "application/json"


async def test_creating_beyond_max_sessions_gets_503_at_capacity_even_in_a_burst(start_daemon: Any) -> None:
    daemon = await start_daemon({"sessions": {"max_sessions": 3}})
    async with api_for(daemon) as api:
        replies = await asyncio.gather(*(api.request("POST", "/sessions") for _ in range(6)))
        statuses = sorted(status for status, _, _ in replies)
        assert statuses == [200, 200, 200, 503, 503, 503]
        refused = [(payload, headers) for status, payload, headers in replies if status == 503]
        assert all(error_code(p) == "at_capacity" and int(h["Retry-After"]) > 0 for p, h in refused)
        first = next(payload["session_id"] for status, payload, _ in replies if status == 200)
        assert await api.delete(first) == 204
        status, _, _ = await api.request("POST", "/sessions")
        assert status == 200


async def test_hostile_bodies_get_400_with_a_stable_code_never_500(api: Api, daemon: Daemon) -> None:
    session_id = await api.create()
    deep = b"[" * 100_000 + b"]" * 100_000
    nested: object = []
    for _ in range(70):
        nested = [nested]
    cases = [
        ("POST", "/sessions", deep, "json_too_deep"),
        ("POST", f"/sessions/{session_id}/input", deep, "json_too_deep"),
        ("POST", f"/sessions/{session_id}/input",
         json.dumps({"type": "permission_response", "correlation_id": "c", "behavior": "allow",
                     "updated_input": {"x": nested}}).encode(), "json_too_deep"),
        ("POST", "/sessions", json.dumps({"cwd": "/tmp/a\u0000b"}).encode(), "invalid_field"),
        ("POST", "/sessions", b'{"cwd": "/tmp/\\ud800"}', "invalid_field"),
        ("POST", "/sessions", json.dumps({"model": "opus\nrm -rf /"}).encode(), "invalid_field"),
        ("POST", "/sessions", json.dumps({"cwd": str(daemon.sessions_root / ("x" * 5000))}).encode(),
         "cwd_not_found"),
        ("POST", f"/sessions/{session_id}/input", json.dumps({"type": "set_model", "model": "a\u0000"}).encode(),
         "invalid_field"),
    ]
    for method, path, raw, code in cases:
        status, payload, _ = await api.request(method, path, raw=raw)
        assert (status, error_code(payload)) == (400, code), (path, raw[:80], payload)
    status, _, _ = await api.request("GET", "/healthz")
    assert status == 200


async def test_a_permission_rule_cannot_switch_to_a_mode_the_operator_forbids(api: Api) -> None:
    session_id = await api.create()
    reply = {"type": "permission_response", "correlation_id": "toolu_x", "behavior": "allow",
             "updated_permissions": [{"type": "setMode", "mode": "bypassPermissions", "destination": "session"}]}
    status, payload = await api.send(session_id, reply)
    assert (status, error_code(payload)) == (403, "mode_not_allowed")
    allowed = {**reply, "updated_permissions": [{"type": "setMode", "mode": "plan"}]}
    status, payload = await api.send(session_id, allowed)
    assert (status, error_code(payload)) == (409, "unknown_correlation_id")  # past the policy
