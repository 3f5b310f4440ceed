"""What newer agent-webkit clients use (DESIGN.md §11), black box: user-message echoes,
per-session partial messages, graceful streams, and the conversation as messages and as
a snapshot, for live, hibernated and restarted sessions."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Daemon, api_for
from tests.standin.fixtures import fake_model_url
from tests.test_daemon_real_cli import start_real_daemon
from tests.test_pg_store import model_views
from tests.wire_client import Api, StreamRefused

__all__ = ["fake_model_url"]  # imported for pytest: it is a fixture

TURN = {"turns": [{"steps": [{"text": "first answer"}]}, {"steps": [{"text": "second answer"}]}],
        "then": "echo"}


async def test_every_accepted_user_message_is_echoed_to_every_tab_and_kept_for_a_reload(
    start_daemon: Callable[..., Any],
) -> None:
    daemon: Daemon = await start_daemon()
    async with api_for(daemon) as api:
        session_id = await api.create(cwd=str(daemon.session_dir(TURN)))
        tab_a, tab_b = await api.open_stream(session_id), await api.open_stream(session_id)
        content = [{"type": "text", "text": "hello from tab a"}]
        await api.send(session_id, {"type": "user_message", "content": content})
        await api.say(session_id, "a queued second message")  # sent while the first runs
        for tab in (tab_a, tab_b):
            await tab.until("result")
            await tab.until("result")
        for tab in (tab_a, tab_b):
            echoes = [e for e in tab.events if e.name == "user_message"]
            assert [e.data for e in echoes] == [{"content": content}, {"content": "a queued second message"}]
            names = [e.name for e in tab.events]
            # The first echo comes before its turn's first event; the queued one is
            # echoed when accepted, so before the turn it starts.
            assert names.index("user_message") < names.index("message_complete")
            assert names.index("user_message", names.index("user_message") + 1) < len(names) - 1 - names[::-1].index("message_complete")
        # A page loaded later replays them, with the same ids.
        reload = await api.open_stream(session_id, last_event_id=0)
        await reload.until("result")
        await reload.until("result")
        assert [(e.id, e.data) for e in reload.events if e.name == "user_message"] == \
            [(e.id, e.data) for e in tab_a.events if e.name == "user_message"]
        # A refused message is not echoed.
        before = (await api.request("GET", f"/sessions/{session_id}"))[1]["last_seq"]
        status, _ = await api.send(session_id, {"type": "user_message", "content": 5})
        assert status == 400
        assert (await api.request("GET", f"/sessions/{session_id}"))[1]["last_seq"] == before


async def test_partial_messages_are_chosen_per_session_at_create(start_daemon: Callable[..., Any]) -> None:
    daemon: Daemon = await start_daemon()
    async with api_for(daemon) as api:
        names: dict[bool, list[str]] = {}
        for partial in (True, False):
            cwd = daemon.session_dir(TURN)
            session_id = await api.create(cwd=str(cwd), include_partial_messages=partial)
            stream = await api.open_stream(session_id)
            await api.say(session_id, "go")
            await stream.until("result")
            names[partial] = [e.name for e in stream.events]
        assert "message_delta" in names[True]
        assert "message_delta" not in names[False] and "message_complete" in names[False]
        status, body, _ = await api.request("POST", "/sessions", {"include_partial_messages": "yes"})
        assert status == 400 and body["error"]["code"] == "invalid_field"


async def test_graceful_stream_starts_at_the_oldest_event_kept_instead_of_412(
    start_daemon: Callable[..., Any],
) -> None:
    daemon: Daemon = await start_daemon({"sessions": {"ring_size": 8}})
    async with api_for(daemon) as api:
        session_id = await api.create(cwd=str(daemon.session_dir({"turns": [], "then": "echo"})))
        watcher = await api.open_stream(session_id)
        for i in range(3):
            await api.say(session_id, f"message {i}")
            await watcher.until("result")
            await watcher.until("session_state")  # idle: the last event of a turn
        newest = watcher.events[-1].id
        assert newest is not None and newest > 8
        assert (await api.request("GET", f"/sessions/{session_id}"))[1]["last_seq"] == newest
        with pytest.raises(StreamRefused) as refused:
            await api.open_stream(session_id, last_event_id=1)
        assert refused.value.status == 412
        graceful = await api.open_stream(session_id, last_event_id=1, query="?graceful=1")
        notice = await graceful.next()
        oldest = newest - 8 + 1
        assert (notice.id, notice.name) == (None, "replay_truncated")
        assert notice.data == {"requested_event_id": 1, "oldest_available_id": oldest, "last_event_id": newest}
        replayed = [await graceful.next() for _ in range(8)]
        assert [e.id for e in replayed] == list(range(oldest, newest + 1))
        # A cursor still in the ring: no notice, as without graceful.
        fine = await api.open_stream(session_id, last_event_id=newest - 1, query="?graceful=1")
        assert (await fine.next()).id == newest
        # Not stored: a later full replay has no such event.
        _, info, _ = await api.request("GET", f"/sessions/{session_id}")
        assert info["last_seq"] == newest


def conversation(messages: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(role, text) of each text block, tool blocks as their type."""
    out = []
    for m in messages:
        for block in m["content"]:
            out.append((m["role"], block.get("text") or block["type"]))
    return out


async def check_history(api: Api, session_id: str, expected: list[tuple[str, str]]) -> dict[str, Any]:
    status, body, _ = await api.request("GET", f"/sessions/{session_id}/messages")
    assert status == 200, body
    assert conversation(body["messages"]) == expected
    status, snap, _ = await api.request("GET", f"/sessions/{session_id}/snapshot")
    assert status == 200, snap
    assert conversation(snap["messages"]) == expected
    assert snap["protocol_version"] == "1.0" and isinstance(snap["artefacts"], list)
    assert snap["last_event_id"] >= body["last_event_id"]
    snapshot: dict[str, Any] = snap
    return snapshot


@pytest.mark.parametrize("backend", ["memory", "sqlite"])
async def test_messages_and_snapshot_come_from_the_transcript_live_hibernated_and_restarted(
    start_daemon: Callable[..., Any], tmp_path: Path, backend: str,
) -> None:
    store: dict[str, Any] = {"backend": backend}
    if backend == "sqlite":
        store["path"] = str(tmp_path / "sessions.db")
    daemon: Daemon = await start_daemon({"store": store, "sessions": {"hibernate_after_s": 1}})
    async with api_for(daemon) as api:
        session_id = await api.create(cwd=str(daemon.session_dir(TURN)))
        assert (await check_history(api, session_id, []))["state"] in ("idle", "starting")
        stream = await api.open_stream(session_id)
        await api.say(session_id, "remember the teapot")
        await stream.until("result")
        expected = [("user", "remember the teapot"), ("assistant", "first answer")]
        snap = await check_history(api, session_id, expected)
        assert snap["state"] == "idle" and snap["pending_decisions"] == []
        while (await stream.until("session_state", 10)).data != {"state": "hibernated"}:
            pass  # idle, then hibernated after a second
        await check_history(api, session_id, expected)  # no CLI: read from the transcript
        _, info, _ = await api.request("GET", f"/sessions/{session_id}")
        assert info["state"] == "hibernated"  # and reading did not wake it
        stream.close()
    if backend == "memory":
        return
    await daemon.stop()
    await daemon.start()
    async with api_for(daemon) as api:
        snap = await check_history(api, session_id, expected)
        assert snap["state"] == "hibernated"
        # After a 412 a client rebuilds from the snapshot, then streams from its id.
        resumed = await api.open_stream(session_id, last_event_id=snap["last_event_id"])
        await api.say(session_id, "what did I say?")
        await resumed.until("result")
        await check_history(api, session_id, [*expected, ("user", "what did I say?"), ("assistant", "second answer")])


async def test_history_routes_belong_to_the_owner(start_daemon: Callable[..., Any]) -> None:
    daemon: Daemon = await start_daemon(
        {"auth": {"tokens": [{"name": "other", "env": "OTHER_TOKEN"}]}}, {"OTHER_TOKEN": "other-token-0123456789"}
    )
    async with api_for(daemon) as api, api_for(daemon, "other-token-0123456789") as other:
        session_id = await api.create()
        for path in ("messages", "snapshot"):
            status, body, _ = await other.request("GET", f"/sessions/{session_id}/{path}")
            assert (status, body["error"]["code"]) == (404, "not_found")
            assert (await api.request("GET", f"/sessions/{session_id}/{path}"))[0] == 200


async def say_and_wait(api: Api, session_id: str, text: str) -> None:
    stream = await api.open_stream(session_id)
    await api.say(session_id, text)
    await stream.until("result")
    stream.close()


def user_texts(messages: list[dict[str, Any]]) -> list[str]:
    return [b["text"] for m in messages if m["role"] == "user" for b in m["content"] if b["type"] == "text"]


@pytest.mark.parametrize("backend", ["memory", "sqlite"])
async def test_resume_and_fork_continue_a_past_conversation_and_never_share_a_transcript(
    start_daemon: Callable[..., Any], tmp_path: Path, backend: str,
) -> None:
    store: dict[str, Any] = {"backend": backend}
    if backend == "sqlite":
        store["path"] = str(tmp_path / "sessions.db")
    daemon: Daemon = await start_daemon(
        {"store": store, "sessions": {"hibernate_after_s": 2},
         "auth": {"tokens": [{"name": "other", "env": "OTHER_TOKEN"}]}},
        {"OTHER_TOKEN": "other-token-0123456789"},
    )
    cwd = daemon.session_dir({"turns": [], "then": "echo"})
    async with api_for(daemon) as api, api_for(daemon, "other-token-0123456789") as other:
        original = await api.create(cwd=str(cwd))
        await say_and_wait(api, original, "remember the teapot")
        claude_id = (await api.request("GET", f"/sessions/{original}"))[1]["claude_session_id"]
        assert claude_id

        # Live in that conversation: resuming it elsewhere would mean two CLIs in one transcript.
        for resume in (original, claude_id):
            status, body, _ = await api.request("POST", "/sessions", {"resume": resume})
            assert (status, body["error"]["code"]) == (409, "conversation_in_use"), body
        # Nobody's, or someone else's: unknown, never a fresh conversation.
        for who, resume in ((api, "no-such-conversation"), (other, original), (other, claude_id)):
            status, body, _ = await who.request("POST", "/sessions", {"resume": resume})
            assert (status, body["error"]["code"]) == (400, "unknown_conversation"), body

        # A fork: its own branch, with the history, while the original goes on.
        fork = (await api.request("POST", "/sessions", {"resume": original, "fork": True}))[1]["session_id"]
        fork_history = (await api.request("GET", f"/sessions/{fork}/messages"))[1]["messages"]
        assert user_texts(fork_history) == ["remember the teapot"]
        await say_and_wait(api, fork, "what did I ask you to remember?")
        assert model_views(cwd)[-1] == [
            {"role": "user", "text": "remember the teapot"},
            {"role": "assistant", "text": "echo: remember the teapot"},
            {"role": "user", "text": "what did I ask you to remember?"},
        ]
        fork_info = (await api.request("GET", f"/sessions/{fork}"))[1]
        assert fork_info["claude_session_id"] not in (None, claude_id)
        await say_and_wait(api, original, "the original goes on")
        original_history = (await api.request("GET", f"/sessions/{original}/messages"))[1]["messages"]
        assert user_texts(original_history) == ["remember the teapot", "the original goes on"]
        fork_history = (await api.request("GET", f"/sessions/{fork}/messages"))[1]["messages"]
        assert user_texts(fork_history) == ["remember the teapot", "what did I ask you to remember?"]

        # Hibernated: a resume takes the conversation over, and the old session closes.
        watch = await api.open_stream(original)
        while (await watch.until("session_state", 10)).data != {"state": "hibernated"}:
            pass
        resumed = (await api.request("POST", "/sessions", {"resume": claude_id}))[1]["session_id"]
        await watch.until("done")
        assert (await api.request("GET", f"/sessions/{original}"))[0] == 404
        await say_and_wait(api, resumed, "and now?")
        assert [m["text"] for m in model_views(cwd)[-1]] == [
            "remember the teapot", "echo: remember the teapot",
            "the original goes on", "echo: the original goes on", "and now?",
        ]
        history = (await api.request("GET", f"/sessions/{resumed}/messages"))[1]["messages"]
        assert user_texts(history) == ["remember the teapot", "the original goes on", "and now?"]


async def test_with_the_real_cli_echo_messages_fork_and_resume_carry_the_conversation(
    start_daemon: Callable[..., Any], fake_model_url: str, tmp_path: Path,
) -> None:
    """The SDK's real bundled CLI with the stand-in model (which answers "history" with
    the user messages it was given)."""
    daemon = await start_real_daemon(start_daemon, fake_model_url, tmp_path, {"sessions": {"hibernate_after_s": 3}})
    async with asyncio.timeout(90), api_for(daemon) as api:
        original = await api.create()
        tab_a, tab_b = await api.open_stream(original), await api.open_stream(original)
        await api.say(original, "remember the teapot")
        for tab in (tab_a, tab_b):
            await tab.until("result", 30)
            assert [e.data for e in tab.events if e.name == "user_message"] == [{"content": "remember the teapot"}]
        messages = (await api.request("GET", f"/sessions/{original}/messages"))[1]["messages"]
        assert conversation(messages) == [("user", "remember the teapot"), ("assistant", "echo: remember the teapot")]
        assert messages[1]["model"]

        fork = (await api.request("POST", "/sessions", {"resume": original, "fork": True}))[1]["session_id"]
        stream = await api.open_stream(fork)
        await api.say(fork, "history please")
        result = await stream.until("result", 30)
        assert result.data["result"] == "I see 2 user messages: remember the teapot | history please"
        claude_ids = {s: (await api.request("GET", f"/sessions/{s}"))[1]["claude_session_id"] for s in (original, fork)}
        assert len(set(claude_ids.values())) == 2 and None not in claude_ids.values()

        while (await tab_a.until("session_state", 30)).data != {"state": "hibernated"}:
            pass
        resumed = (await api.request("POST", "/sessions", {"resume": original}))[1]["session_id"]
        await tab_a.until("done", 10)
        stream = await api.open_stream(resumed)
        await api.say(resumed, "history again")
        result = await stream.until("result", 30)
        assert result.data["result"] == "I see 2 user messages: remember the teapot | history again"
        snap = (await api.request("GET", f"/sessions/{resumed}/snapshot"))[1]
        assert user_texts(snap["messages"]) == ["remember the teapot", "history again"]
