"""Conversations as a client drives them, with the SDK's real bundled CLI and the stand-in
model: stop discards what has not started (live and waking), a fork that has not spoken
holds nothing, a resume that cannot start leaves its holder as it was, and a closed
session's conversation stays its owner's."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Daemon, api_for
from tests.standin.fake_model import fetch_requests
from tests.standin.fixtures import fake_model_url, offline_cli_env
from tests.test_pg_store import pg_overrides
from tests.wire_client import Api, Stream

__all__ = ["fake_model_url"]  # imported for pytest: it is a fixture

ALICE_TOKEN = "alice-token-0123456789abcdef"
BOB_TOKEN = "bob-token-0123456789abcdef"
TIMEOUT_S = 90


async def real_daemon(
    start_daemon: Callable[..., Any], model_url: str, tmp_path: Path, backend: str,
    sessions: dict[str, Any] | None = None, **extra: dict[str, Any],
) -> Daemon:
    """A daemon on the real CLI and the stand-in model, with the admin token, alice's and
    bob's."""
    config_dir = tmp_path / "claude-config"
    config_dir.mkdir()
    env = offline_cli_env(model_url, config_dir)
    assert env["ANTHROPIC_BASE_URL"] == model_url  # never let the real CLI go online
    store: dict[str, Any] = {"backend": backend}
    if backend == "sqlite":
        store["path"] = str(tmp_path / "sessions.db")
    overrides = {
        "store": store,
        "agent": {"cli_path": "", "env": env, "warm_agents": 0},
        "sessions": sessions or {},
        "auth": {"tokens": [{"name": "alice", "env": "ALICE_TOKEN"}, {"name": "bob", "env": "BOB_TOKEN"}]},
    }
    for section, values in extra.items():
        overrides[section] = {**overrides.get(section, {}), **values}
    daemon: Daemon = await start_daemon(overrides, {"ALICE_TOKEN": ALICE_TOKEN, "BOB_TOKEN": BOB_TOKEN})
    return daemon


def marker(text: str) -> str:
    """A message text no other test sends: the stand-in's log is searched for it."""
    return f"{text} {uuid.uuid4().hex[:12]}"


async def model_saw(model_url: str, text: str) -> bool:
    requests = await fetch_requests(model_url)
    return any(text in json.dumps(r["body"]) for r in requests if r["path"].startswith("/v1/messages"))


async def until_state(stream: Stream, state: str, timeout: float = 30) -> None:
    while (await stream.until("session_state", timeout)).data != {"state": state}:
        pass


async def say_and_wait(api: Api, session_id: str, text: str) -> dict[str, Any]:
    """Send a message and return its turn's result (the stream opens after what was)."""
    last_seq = (await api.request("GET", f"/sessions/{session_id}"))[1]["last_seq"]
    stream = await api.open_stream(session_id, last_seq)
    await api.say(session_id, text)
    result = await stream.until("result", 30)
    stream.close()
    data: dict[str, Any] = result.data
    return data


async def claude_id_of(api: Api, session_id: str) -> str:
    claude_id: str = (await api.request("GET", f"/sessions/{session_id}"))[1]["claude_session_id"]
    assert claude_id
    return claude_id


async def hibernated_after_a_turn(api: Api) -> tuple[str, Stream, str]:
    """A session that said "remember the teapot" and hibernated: its id, a stream watching
    it, and its Claude session id."""
    session_id = await api.create()
    watch = await api.open_stream(session_id)
    await api.say(session_id, "remember the teapot")
    await watch.until("result", 30)
    await until_state(watch, "hibernated")
    return session_id, watch, await claude_id_of(api, session_id)


# -- stop ------------------------------------------------------------------------------


async def test_an_interrupt_ends_the_turn_and_hands_back_every_message_waiting_behind_it(
    start_daemon: Callable[..., Any], fake_model_url: str, tmp_path: Path,
) -> None:
    daemon = await real_daemon(start_daemon, fake_model_url, tmp_path, "memory")
    async with asyncio.timeout(TIMEOUT_S), api_for(daemon) as api:
        session_id = await api.create()
        stream = await api.open_stream(session_id)
        await api.say(session_id, "slow please")
        await stream.until("message_delta", 30)  # the slow turn is under way
        waiting = [marker("first queued"), [{"type": "text", "text": marker("second queued")}]]
        for content in waiting:
            assert (await api.send(session_id, {"type": "user_message", "content": content}))[0] == 204
        assert (await api.send(session_id, {"type": "interrupt"}))[0] == 204
        discarded = await stream.until("input_discarded", 10)
        assert discarded.data == {"messages": [{"content": c} for c in waiting]}
        result = await stream.until("result", 30)
        assert result.data["subtype"] == "error_during_execution"
        await until_state(stream, "idle")
        await asyncio.sleep(1)  # anything that would still start has had time to
        for content in waiting:
            text = content if isinstance(content, str) else content[0]["text"]
            assert not await model_saw(fake_model_url, text)
        # The session goes on, and its model never learns of what was taken back.
        after = await say_and_wait(api, session_id, "history please")
        # (The CLI notes the interrupt in the next user message.)
        assert after["result"].startswith("I see 2 user messages: slow please | "), after
        assert after["result"].endswith("history please") and "queued" not in after["result"]


@pytest.mark.parametrize("backend", ["memory", "sqlite"])
async def test_an_interrupt_while_waking_discards_the_message_that_woke_it(
    start_daemon: Callable[..., Any], fake_model_url: str, tmp_path: Path, backend: str,
) -> None:
    daemon = await real_daemon(
        start_daemon, fake_model_url, tmp_path, backend, {"hibernate_after_s": 1}
    )
    async with asyncio.timeout(TIMEOUT_S), api_for(daemon) as api:
        session_id = await api.create()
        stream = await api.open_stream(session_id)
        await api.say(session_id, "remember the teapot")
        await stream.until("result", 30)
        await until_state(stream, "hibernated")
        woke_it = marker("woke it")
        await api.say(session_id, woke_it)
        assert (await api.send(session_id, {"type": "interrupt"}))[0] == 204
        discarded = await stream.until("input_discarded", 10)
        assert discarded.data == {"messages": [{"content": woke_it}]}
        states = []
        while not states or states[-1] not in ("idle", "hibernated"):
            states.append((await stream.until("session_state", 30)).data["state"])
        assert "running" not in states, states
        await asyncio.sleep(1)
        assert not await model_saw(fake_model_url, woke_it)
        after = await say_and_wait(api, session_id, "history please")
        assert after["result"] == "I see 2 user messages: remember the teapot | history please"


# -- resume and fork -------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["memory", "sqlite"])
async def test_a_fork_that_has_not_spoken_does_not_hold_its_sources_conversation(
    start_daemon: Callable[..., Any], fake_model_url: str, tmp_path: Path, backend: str,
) -> None:
    daemon = await real_daemon(start_daemon, fake_model_url, tmp_path, backend)
    async with asyncio.timeout(TIMEOUT_S), api_for(daemon) as api:
        source = await api.create()
        await say_and_wait(api, source, "remember the teapot")
        conversation = await claude_id_of(api, source)
        status, body, _ = await api.request("POST", "/sessions", {"resume": conversation, "fork": True})
        assert status == 200, body
        fork = body["session_id"]
        fork_stream = await api.open_stream(fork)
        assert await api.delete(source) == 204

        status, body, _ = await api.request("POST", "/sessions", {"resume": conversation})
        assert status == 200, body  # not 409 conversation_in_use: the fork holds nothing yet
        resumed = body["session_id"]
        # The fork still starts from the conversation's history, on a branch of its own.
        await api.say(fork, "history please")
        assert (await fork_stream.until("result", 30)).data["result"] == (
            "I see 2 user messages: remember the teapot | history please"
        )
        assert await claude_id_of(api, fork) != conversation
        # The resumed session continues the conversation: its model sees the source's turn.
        after = await say_and_wait(api, resumed, "history again")
        assert after["result"] == "I see 2 user messages: remember the teapot | history again"
        assert await claude_id_of(api, resumed) == conversation


async def test_a_resume_whose_cli_cannot_start_leaves_the_hibernated_holder_as_it_was(
    start_daemon: Callable[..., Any], fake_model_url: str, tmp_path: Path,
) -> None:
    daemon = await real_daemon(
        start_daemon, fake_model_url, tmp_path, "sqlite",
        {"hibernate_after_s": 1, "max_live_agents": 1},
    )
    async with asyncio.timeout(TIMEOUT_S), api_for(daemon) as api:
        holder, watch, conversation = await hibernated_after_a_turn(api)
        # The only live CLI is busy: a session waiting for its user's answer.
        busy = await api.create()
        busy_stream = await api.open_stream(busy)
        await api.say(busy, "ask me something")
        question = await busy_stream.until("ask_user_question", 30)

        status, body, _ = await api.request("POST", "/sessions", {"resume": conversation})
        assert (status, body["error"]["code"]) == (503, "agents_busy"), body
        status, info, _ = await api.request("GET", f"/sessions/{holder}")
        assert (status, info["state"]) == (200, "hibernated")

        answer = {"type": "question_response", "correlation_id": question.data["correlation_id"],
                  "answers": {"Which color?": "Blue"}}
        assert (await api.send(busy, answer))[0] == 204
        await busy_stream.until("result", 30)
        status, body, _ = await api.request("POST", "/sessions", {"resume": conversation})
        assert status == 200, body
        await watch.until("done", 10)  # now the holder closes
        after = await say_and_wait(api, body["session_id"], "history please")
        assert after["result"] == "I see 2 user messages: remember the teapot | history please"


@pytest.mark.parametrize("backend", ["memory", "sqlite"])
async def test_a_closed_sessions_conversation_stays_its_owners_and_nobody_elses(
    start_daemon: Callable[..., Any], fake_model_url: str, tmp_path: Path, backend: str,
) -> None:
    await check_closed_conversation(await real_daemon(start_daemon, fake_model_url, tmp_path, backend))


async def test_with_postgres_a_closed_sessions_conversation_stays_its_owners(
    start_daemon: Callable[..., Any], fake_model_url: str, tmp_path: Path, pg_dsn: str,
) -> None:
    """The owner is kept with the closed session's row."""
    extra = pg_overrides(pg_dsn, tmp_path)
    del extra["agent"]  # the real CLI's environment, from real_daemon
    await check_closed_conversation(
        await real_daemon(start_daemon, fake_model_url, tmp_path, "memory", **extra)
    )


async def check_closed_conversation(daemon: Daemon) -> None:
    async with asyncio.timeout(TIMEOUT_S), api_for(daemon, ALICE_TOKEN) as alice, \
            api_for(daemon, BOB_TOKEN) as bob:
        closed = await alice.create()
        await say_and_wait(alice, closed, "remember the teapot")
        conversation = await claude_id_of(alice, closed)
        assert await alice.delete(closed) == 204
        for ref in (conversation, closed):  # by its Claude session id or by our session id
            for body in ({"resume": ref}, {"resume": ref, "fork": True}):
                status, answer, _ = await bob.request("POST", "/sessions", body)
                assert (status, answer["error"]["code"]) == (400, "unknown_conversation"), answer
        status, answer, _ = await alice.request("POST", "/sessions", {"resume": conversation})
        assert status == 200, answer
        resumed = answer["session_id"]
        after = await say_and_wait(alice, resumed, "history please")
        assert after["result"] == "I see 2 user messages: remember the teapot | history please"
        assert await alice.delete(resumed) == 204
        # By our id, later: the newest session that had the conversation says whose it is.
        status, answer, _ = await alice.request("POST", "/sessions", {"resume": closed, "fork": True})
        assert status == 200, answer
        after = await say_and_wait(alice, answer["session_id"], "history again")
        assert after["result"] == (
            "I see 3 user messages: remember the teapot | history please | history again"
        )


async def test_a_message_to_the_holder_while_a_resume_starts_is_handed_back_not_run(
    start_daemon: Callable[..., Any], fake_model_url: str, tmp_path: Path,
) -> None:
    daemon = await real_daemon(start_daemon, fake_model_url, tmp_path, "memory", {"hibernate_after_s": 1})
    async with asyncio.timeout(TIMEOUT_S), api_for(daemon) as api:
        holder, watch, conversation = await hibernated_after_a_turn(api)
        resume = asyncio.ensure_future(api.request("POST", "/sessions", {"resume": conversation}))
        await asyncio.sleep(0.1)  # the new CLI is starting (a real CLI takes ~0.3 s or more)
        assert not resume.done()
        late = marker("sent to the holder meanwhile")
        await api.say(holder, late)
        status, body, _ = await resume
        assert status == 200, body
        discarded = await watch.until("input_discarded", 10)
        assert discarded.data == {"messages": [{"content": late}]}
        await watch.until("done", 10)
        await asyncio.sleep(1)
        assert not await model_saw(fake_model_url, late)
