"""Artefacts: the model writes versioned documents, code and JSON through the daemon's
`artefacts` MCP server; clients see them on the stream and read every version over REST.

The first tests run the SDK's REAL bundled CLI against the stand-in model, which finds the
deferred MCP tools with ToolSearch as a real model must. The rest use the scripted CLI,
which calls the SDK's in-process MCP server with the same `mcp_message` control requests
the real CLI sends (tests/reference/real-cli-frames/06-*).
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import asyncpg

from agent_webkitd.artefacts.model import StoredVersion, Version
from agent_webkitd.config import StoreConfig
from agent_webkitd.stores.postgres.admin import prune as pg_prune
from agent_webkitd.stores.postgres.store import PostgresStore
from agent_webkitd.stores.sqlite.store import SqliteStore, prune_file
from tests.conftest import Daemon, api_for
from tests.standin.fixtures import fake_model_url
from tests.test_daemon_real_cli import (
    client_for,
    events_until,
    model_calls,
    named,
    open_session,
    start_real_daemon,
)
from tests.test_lifecycle import until_state
from tests.test_operations import sample
from tests.test_pg_store import pg_overrides
from tests.test_scripted_cli_contract import Recording, assert_frames_match_the_real_cli
from tests.test_sqlite_store import sqlite_overrides
from tests.wire_client import Api, Stream

__all__ = ["fake_model_url"]  # imported for pytest: it is a fixture

CREATE = "mcp__artefacts__create_artefact"
UPDATE = "mcp__artefacts__update_artefact"


def tool_names(call: dict[str, Any]) -> list[str]:
    return [t["name"] for t in call["body"].get("tools", [])]


def message_texts(call: dict[str, Any]) -> list[str]:
    texts = []
    for message in call["body"]["messages"]:
        content = message["content"]
        blocks = [{"text": content}] if isinstance(content, str) else content
        texts += [b["text"] for b in blocks if isinstance(b.get("text"), str)]
    return texts


def last_user_blocks(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    [*_, last] = [m for m in calls[-1]["body"]["messages"] if m["role"] == "user"]
    content = last["content"]
    return [{"type": "text", "text": content}] if isinstance(content, str) else content


async def get(api: Api, path: str) -> tuple[int, Any]:
    status, payload, _ = await api.request("GET", path)
    return status, payload


# -- the real bundled CLI --------------------------------------------------------------------


async def test_the_real_cli_creates_then_updates_an_artefact_and_every_version_is_readable(
    start_daemon: Any, fake_model_url: str, tmp_path: Path
) -> None:
    daemon = await start_real_daemon(start_daemon, fake_model_url, tmp_path)
    async with client_for(daemon) as api:
        session_id, stream = await open_session(api, daemon.session_dir())
        await api.say(session_id, "make artefact Release notes")
        first = await events_until(stream, "result")
        [created] = named(first, "artefact_created")
        artefact_id = created.data["artefact_id"]
        assert created.data == {
            "artefact_id": artefact_id,
            "title": "Release notes",
            "kind": "text/markdown",
            "language": None,
            "version": 1,
            "content": "# Release notes\n\nThe first draft.\n",
            "summary": "first draft",
            "session_id": session_id,
            "created_at": created.data["created_at"],
        }
        # The model found the deferred tool with ToolSearch, then called it: no prompt.
        assert [e.data["tool_name"] for e in named(first, "tool_use")] == ["ToolSearch", CREATE]
        assert named(first, "permission_request") == []
        [_, saved] = named(first, "tool_result")
        assert saved.data["is_error"] is False
        assert json.loads(saved.data["output"][0]["text"])["artefact_id"] == artefact_id

        await api.say(session_id, f"update artefact {artefact_id} # Release notes v2")
        second = await events_until(stream, "result")
        [updated] = named(second, "artefact_updated")
        assert updated.data == {
            "artefact_id": artefact_id,
            "version": 2,
            "content": "# Release notes v2",
            "summary": "revised",
            "updated_at": updated.data["updated_at"],
        }
        assert [e.data["tool_name"] for e in named(second, "tool_use")] == ["ToolSearch", UPDATE]
        assert named(second, "permission_request") == []
        assert created.id is not None and updated.id is not None and created.id < updated.id
        stream.close()

        base = f"/sessions/{session_id}/artefacts"
        status, listed = await get(api, base)
        assert status == 200
        assert listed == {
            "session_id": session_id,
            "artefacts": [
                {
                    "artefact_id": artefact_id,
                    "title": "Release notes",
                    "kind": "text/markdown",
                    "language": None,
                    "version": 2,
                    "summary": "revised",
                    "created_at": created.data["created_at"],
                    "updated_at": updated.data["updated_at"],
                }
            ],
        }
        for version, content, summary in (
            (1, created.data["content"], "first draft"),
            (2, "# Release notes v2", "revised"),
        ):
            status, body = await get(api, f"{base}/{artefact_id}?version={version}")
            assert status == 200
            assert (body["version"], body["content"], body["summary"]) == (version, content, summary)
            assert body["latest_version"] == 2
        status, latest = await get(api, f"{base}/{artefact_id}")
        assert (status, latest["version"], latest["content"]) == (200, 2, "# Release notes v2")
        status, versions = await get(api, f"{base}/{artefact_id}/versions")
        assert status == 200
        assert versions == {
            "artefact_id": artefact_id,
            "versions": [
                {"version": 1, "summary": "first draft", "created_at": created.data["created_at"],
                 "bytes": len(created.data["content"].encode())},
                {"version": 2, "summary": "revised", "created_at": updated.data["updated_at"],
                 "bytes": len(b"# Release notes v2")},
            ],
        }

    assert "CanUseToolShadowedWarning" not in daemon.logs()  # auto-allowed on purpose
    # What the real CLI told the model: the tool is deferred until ToolSearch loads it.
    calls = await model_calls(fake_model_url)
    assert CREATE not in tool_names(calls[0])
    [deferred] = [t for t in message_texts(calls[0]) if "deferred tools" in t]
    assert CREATE in deferred.splitlines()  # named only, to be loaded with ToolSearch
    assert CREATE in tool_names(calls[1]) and UPDATE not in tool_names(calls[1])
    [tool_def] = [t for t in calls[1]["body"]["tools"] if t["name"] == CREATE]
    assert tool_def["defer_loading"] is True
    assert set(tool_def["input_schema"]["required"]) == {"title", "kind", "content"}


async def test_with_the_real_cli_an_artefact_near_the_limit_is_stored_and_one_over_is_an_error_result(
    start_daemon: Any, fake_model_url: str, tmp_path: Path
) -> None:
    # Defaults: max_bytes is 1 MiB. The model's call carries the content JSON-escaped on one
    # stdout line of the CLI, past the SDK's own 1 MiB line limit: the daemon raises it.
    daemon = await start_real_daemon(start_daemon, fake_model_url, tmp_path)
    async with client_for(daemon) as api:
        session_id, stream = await open_session(api, daemon.session_dir())
        await api.say(session_id, "make 1040000-byte artefact Big")
        first = await events_until(stream, "result")
        [created] = named(first, "artefact_created")
        assert len(created.data["content"].encode()) == 1_040_000

        await api.say(session_id, "make 1100000-byte artefact Bigger")
        second = await events_until(stream, "result")
        assert named(second, "artefact_created") == [] and named(second, "error") == []
        [refused] = [e for e in named(second, "tool_result") if e.data["is_error"]]
        assert refused.data["output"] == (
            "artefact_too_large: the content is 1100000 bytes (UTF-8); at most 1048576 are"
            " allowed: split it into several artefacts"
        )
        assert (await get(api, f"/sessions/{session_id}"))[1]["state"] == "idle"  # no crash
        status, listed = await get(api, f"/sessions/{session_id}/artefacts")
        assert (status, [a["title"] for a in listed["artefacts"]]) == (200, ["Big"])
        stream.close()


async def test_with_the_real_cli_reads_up_to_200k_characters_stay_whole_in_the_model_s_context(
    start_daemon: Any, fake_model_url: str, tmp_path: Path
) -> None:
    daemon = await start_real_daemon(start_daemon, fake_model_url, tmp_path)
    seen = []
    async with client_for(daemon) as api:
        session_id, stream = await open_session(api, daemon.session_dir())
        for size in (150_000, 300_000):
            await api.say(session_id, f"make {size}-byte artefact Size {size}")
            [created] = named(await events_until(stream, "result"), "artefact_created")
            await api.say(session_id, f"read artefact {created.data['artefact_id']}")
            await events_until(stream, "result")
            [result] = [b for b in last_user_blocks(await model_calls(fake_model_url)) if b["type"] == "tool_result"]
            seen.append((created.data["content"], result))
        stream.close()
    (whole, inline), (big, previewed) = seen
    assert inline["content"][1] == {"type": "text", "text": whole}  # the CLI's own limit is ~50,000
    # Past READ_INLINE_CHARS the CLI keeps the result in a file and shows a preview.
    assert previewed["content"].startswith("<persisted-output>\nOutput too large")
    assert big not in json.dumps(previewed)


# -- the scripted CLI: the same mcp_message requests, fast and exact -------------------------


def call(tool: str, **tool_input: Any) -> dict[str, Any]:
    """A scenario step: the model calls one of the artefact tools."""
    return {"tool_use": {"name": f"mcp__artefacts__{tool}", "input": tool_input}}


def create(title: str, content: str = "hello", kind: str = "text/markdown", **extra: Any) -> dict[str, Any]:
    return call("create_artefact", title=title, kind=kind, content=content, **extra)


def cli_records(cwd: Path) -> list[dict[str, Any]]:
    log = cwd / "cli-log.jsonl"
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def tool_results(cwd: Path) -> list[dict[str, Any]]:
    """What the SDK's MCP server answered each `tools/call` of the CLIs in `cwd`, in order:
    the JSON-RPC results the CLI received."""
    calls, results = set(), []
    for record in cli_records(cwd):
        if record["dir"] not in ("in", "out"):
            continue
        frame = json.loads(record["line"])
        if frame.get("type") == "control_request" and record["dir"] == "out":
            if frame["request"].get("message", {}).get("method") == "tools/call":
                calls.add(frame["request_id"])
        elif frame.get("type") == "control_response" and record["dir"] == "in":
            response = frame["response"]
            if response["request_id"] in calls:
                results.append(response["response"]["mcp_response"]["result"])
    return results


def answer(result: dict[str, Any]) -> Any:
    """A successful result's JSON (its first text block)."""
    assert result["isError"] is False, result
    return json.loads(result["content"][0]["text"])


def refusal(result: dict[str, Any]) -> str:
    """An error result's text; it starts with the error's code."""
    assert result["isError"] is True, result
    [block] = result["content"]
    text: str = block["text"]
    return text


async def open_with(api: Api, daemon: Daemon, scenario: dict[str, Any]) -> tuple[str, Path, Stream]:
    cwd = daemon.session_dir(scenario)
    session_id = await api.create(cwd=str(cwd))
    return session_id, cwd, await api.open_stream(session_id, 0)


async def metric(api: Api, name: str, labels: str = "") -> float:
    _, text, _ = await api.request("GET", "/metrics")
    return sample(text, name, labels)


LIMITS = {"artefacts": {"max_bytes": 64, "max_per_session": 3}}


async def test_bad_calls_and_limits_give_the_model_an_error_result_naming_the_problem(
    start_daemon: Any,
) -> None:
    daemon = await start_daemon(LIMITS)
    steps = [
        create("Notes", "# ok"),
        create("Too big", "x" * 65),  # 65 bytes: over max_bytes
        create("Too big in UTF-8", "é" * 33),  # 33 characters, 66 bytes
        create("Picture", "...", kind="image/png"),
        create("Broken", "{not json", kind="application/json"),
        create("", "untitled"),
        create("Config", '{"debug": true}', kind="application/json"),
        create("Script", "print('hi')\n", kind="text/code", language="python"),
        create("One too many"),  # a fourth: over max_per_session
        call("update_artefact", artefact_id="art_nope", content="x"),
        call("read_artefact", artefact_id="art_nope"),
        call("list_artefacts"),
    ]
    async with api_for(daemon) as api:
        session_id, cwd, stream = await open_with(api, daemon, {"turns": [{"steps": steps}]})
        await api.say(session_id, "go")
        events = await events_until(stream, "result")

    results = tool_results(cwd)
    assert len(results) == len(steps)
    notes, config, script = answer(results[0]), answer(results[6]), answer(results[7])
    assert [refusal(r).split(":")[0] for r in results[1:6] + results[8:11]] == [
        "artefact_too_large",
        "artefact_too_large",
        "unknown_kind",
        "invalid_json",
        "invalid_field",
        "too_many_artefacts",
        "artefact_not_found",
        "artefact_not_found",
    ]
    assert refusal(results[1]) == (
        "artefact_too_large: the content is 65 bytes (UTF-8); at most 64 are allowed:"
        " split it into several artefacts"
    )
    assert "66 bytes" in refusal(results[2])
    assert "text/markdown, text/plain, application/json, text/code" in refusal(results[3])
    assert refusal(results[8]).startswith("too_many_artefacts: this session holds 3 artefacts")
    listed = answer(results[11])["artefacts"]
    assert [(a["title"], a["kind"], a["language"]) for a in listed] == [
        ("Notes", "text/markdown", None),
        ("Config", "application/json", None),
        ("Script", "text/code", "python"),
    ]
    # Only what was stored became an event; the refusals reached the stream as error results.
    created = named(events, "artefact_created")
    assert [e.data["artefact_id"] for e in created] == [notes["artefact_id"], config["artefact_id"],
                                                        script["artefact_id"]]
    errors = [e for e in named(events, "tool_result") if e.data["is_error"]]
    assert len(errors) == 8 and errors[0].data["output"] == refusal(results[1])
    async with api_for(daemon) as api:
        assert await metric(api, "agent_webkit_limit_rejections_total", 'limit="artefact_bytes"') == 2
        assert await metric(api, "agent_webkit_limit_rejections_total", 'limit="artefacts_per_session"') == 1
        status, body = await get(api, f"/sessions/{session_id}/artefacts")
        assert status == 200 and len(body["artefacts"]) == 3


async def test_delete_emits_artefact_deleted_and_leaves_nothing_to_read(start_daemon: Any) -> None:
    daemon = await start_daemon()
    turns = [{"steps": [create("Plan", "# v1")]}, {"steps": [call("list_artefacts")]}]
    async with api_for(daemon) as api:
        session_id, cwd, stream = await open_with(api, daemon, {"turns": turns})
        await api.say(session_id, "make it")
        [created] = named(await events_until(stream, "result"), "artefact_created")
        base = f"/sessions/{session_id}/artefacts/{created.data['artefact_id']}"
        for query, status, code in (("?version=abc", 400, "invalid_version"), ("?version=0", 400, "invalid_version"),
                                    ("?version=-1", 400, "invalid_version"), ("?version=2", 404, "version_not_found")):
            got, body = await get(api, base + query)
            assert (got, body["error"]["code"]) == (status, code), query
        assert (await get(api, base + "?version=1"))[1]["content"] == "# v1"

        status, _, _ = await api.request("DELETE", base)
        assert status == 204
        deleted = await stream.until("artefact_deleted")
        assert deleted.data == {"artefact_id": created.data["artefact_id"]}
        for path in (base, base + "?version=1", base + "/versions"):
            status, body = await get(api, path)
            assert (status, body["error"]["code"]) == (404, "artefact_not_found"), path
        status, body, _ = await api.request("DELETE", base)
        assert (status, body["error"]["code"]) == (404, "artefact_not_found")
        assert (await get(api, f"/sessions/{session_id}/artefacts"))[1]["artefacts"] == []
        # The model's view agrees.
        await api.say(session_id, "what is there?")
        await events_until(stream, "result")
    assert answer(tool_results(cwd)[-1]) == {"artefacts": []}


BOT_TOKEN = "bot-token-aaaaaaaaaaaaaaaa"
EVE_TOKEN = "eve-token-bbbbbbbbbbbbbbbb"
PRINCIPALS = {
    "auth": {
        "tokens": [{"name": "ci-bot", "env": "BOT_TOKEN"}, {"name": "eve", "env": "EVE_TOKEN"}],
    }
}


async def artefact_routes(api: Api, session_id: str, artefact_id: str) -> list[tuple[str, int, Any]]:
    out = []
    base = f"/sessions/{session_id}/artefacts"
    for method, path in (
        ("GET", ""),
        ("GET", f"/{artefact_id}"),
        ("GET", f"/{artefact_id}?version=1"),
        ("GET", f"/{artefact_id}?version=nope"),  # 400 for the owner
        ("GET", f"/{artefact_id}/versions"),
        ("GET", "/art_unknown"),  # 404 artefact_not_found for the owner
        ("DELETE", f"/{artefact_id}"),
    ):
        status, payload, _ = await api.request(method, base + path)
        out.append((f"{method} {path}", status, payload))
    return out


async def test_another_principal_gets_404_on_every_artefact_route(start_daemon: Any) -> None:
    daemon = await start_daemon(PRINCIPALS, {"BOT_TOKEN": BOT_TOKEN, "EVE_TOKEN": EVE_TOKEN})
    unknown_session = "00000000-0000-4000-8000-000000000000"
    async with api_for(daemon, BOT_TOKEN) as bot, api_for(daemon, EVE_TOKEN) as eve, api_for(daemon) as admin:
        session_id, _, stream = await open_with(bot, daemon, {"turns": [{"steps": [create("Secret")]}]})
        await bot.say(session_id, "make it")
        [created] = named(await events_until(stream, "result"), "artefact_created")
        artefact_id = created.data["artefact_id"]

        theirs = await artefact_routes(eve, session_id, artefact_id)
        unknown = await artefact_routes(eve, unknown_session, artefact_id)
        for (route, status, body), (_, _, unknown_body) in zip(theirs, unknown, strict=True):
            assert (status, body) == (404, {"error": {"code": "not_found", "message": f"no session {session_id!r}"}}), route
            assert unknown_body["error"]["code"] == "not_found", route
        # Nothing eve did reached it; the owner gets the real answers, and so does an admin.
        mine = {route: status for route, status, _ in await artefact_routes(admin, session_id, artefact_id)}
        assert list(mine.values()) == [200, 200, 200, 400, 200, 404, 204]
        assert (await stream.until("artefact_deleted")).data == {"artefact_id": artefact_id}
        status, listed = await get(bot, f"/sessions/{session_id}/artefacts")
        assert (status, listed["artefacts"]) == (200, [])


QUICK = {"sessions": {"hibernate_after_s": 0.5}}


async def test_artefacts_survive_hibernation_and_the_woken_cli_s_tools_see_them(start_daemon: Any) -> None:
    daemon = await start_daemon(QUICK)
    async with api_for(daemon) as api:
        session_id, cwd, stream = await open_with(api, daemon, {"turns": [{"steps": [create("Draft", "# one")]}]})
        await api.say(session_id, "make it")
        [created] = named(await events_until(stream, "result"), "artefact_created")
        artefact_id = created.data["artefact_id"]
        await until_state(stream, "hibernated", timeout=5)
        assert daemon.orphans() == []
        # Read while hibernated: served without waking the session.
        status, body = await get(api, f"/sessions/{session_id}/artefacts/{artefact_id}")
        assert (status, body["content"]) == (200, "# one")
        status, session, _ = await api.request("GET", f"/sessions/{session_id}")
        assert session["state"] == "hibernated" and daemon.orphans() == []

        # The next CLI (a resume) reads this scenario: its second turn uses the artefact.
        (cwd / "scenario.json").write_text(json.dumps({"turns": [{"steps": []}, {"steps": [
            call("update_artefact", artefact_id=artefact_id, content="# two", summary="second"),
            call("read_artefact", artefact_id=artefact_id, version=1),
            call("read_artefact", artefact_id=artefact_id, version=7),
            call("list_artefacts"),
        ]}]}))
        await api.say(session_id, "go on")
        woken = await events_until(stream, "result")
        [updated] = named(woken, "artefact_updated")
        assert (updated.data["version"], updated.data["content"]) == (2, "# two")

    updated_result, read_v1, read_v7, listed = tool_results(cwd)[1:]
    assert answer(updated_result) == {"artefact_id": artefact_id, "version": 2}
    about, content = read_v1["content"]
    assert (json.loads(about["text"])["version"], json.loads(about["text"])["latest_version"]) == (1, 2)
    assert content == {"type": "text", "text": "# one"}
    assert refusal(read_v7) == f"version_not_found: artefact {artefact_id!r} has versions 1 to 2, not 7"
    [entry] = answer(listed)["artefacts"]
    assert (entry["artefact_id"], entry["version"], entry["summary"]) == (artefact_id, 2, "second")


def second_turn(*steps: dict[str, Any]) -> str:
    """A scenario whose second turn (the next CLI resumes at turn 2) runs `steps`."""
    return json.dumps({"turns": [{"steps": []}, {"steps": list(steps)}]})


async def test_artefacts_survive_a_sqlite_restart_after_sigkill_and_their_versions_go_on(
    start_daemon: Any, tmp_path: Path
) -> None:
    db = tmp_path / "state" / "sessions.db"
    first = await start_daemon(sqlite_overrides(db))
    scenario = {"turns": [{"steps": [create("Kept", "# one"), create("Dropped", "bye")]}]}
    async with api_for(first) as api:
        session_id, cwd, stream = await open_with(api, first, scenario)
        await api.say(session_id, "make two")
        kept, dropped = named(await events_until(stream, "result"), "artefact_created")
        base = f"/sessions/{session_id}/artefacts"
        status, _, _ = await api.request("DELETE", f"{base}/{dropped.data['artefact_id']}")
        assert status == 204
        await stream.until("artefact_deleted")
    first.kill()  # what the model and the clients were told is committed

    second = await start_daemon(sqlite_overrides(db))
    async with api_for(second) as api:
        kept_id = kept.data["artefact_id"]
        status, listed = await get(api, base)
        assert status == 200
        assert [(a["artefact_id"], a["version"], a["title"]) for a in listed["artefacts"]] == [(kept_id, 1, "Kept")]
        assert (await get(api, f"{base}/{kept_id}"))[1]["content"] == "# one"
        status, body = await get(api, f"{base}/{dropped.data['artefact_id']}")
        assert (status, body["error"]["code"]) == (404, "artefact_not_found")
        replayed = await api.open_stream(session_id, 0)
        history = [e.name for e in await events_until(replayed, "artefact_deleted")]
        assert history.count("artefact_created") == 2

        (cwd / "scenario.json").write_text(second_turn(call("update_artefact", artefact_id=kept_id, content="# two")))
        await api.say(session_id, "and again")
        [updated] = named(await events_until(replayed, "result"), "artefact_updated")
        assert updated.data["version"] == 2  # the index came back: numbering goes on
        assert [(await get(api, f"{base}/{kept_id}?version={n}"))[1]["content"] for n in (1, 2)] == ["# one", "# two"]


async def test_artefacts_survive_a_postgres_failover(pg_dsn: str, start_daemon: Any, tmp_path: Path) -> None:
    long_lease = {"lease_s": 60}  # the second host claims because the first's port refuses
    first = await start_daemon(pg_overrides(pg_dsn, tmp_path, store=long_lease))
    second = await start_daemon(pg_overrides(pg_dsn, tmp_path, store=long_lease))
    async with api_for(first) as api_a, api_for(second) as api_b:
        session_id, cwd, stream = await open_with(api_a, first, {"turns": [{"steps": [create("Shared", "# one")]}]})
        await api_a.say(session_id, "make it")
        seen = await events_until(stream, "result")
        [created] = named(seen, "artefact_created")
        artefact_id = created.data["artefact_id"]
        first.kill()

        resumed = await api_b.open_stream(session_id, seen[-1].id)
        base = f"/sessions/{session_id}/artefacts"
        status, listed = await get(api_b, base)
        assert (status, [a["artefact_id"] for a in listed["artefacts"]]) == (200, [artefact_id])
        assert (await get(api_b, f"{base}/{artefact_id}"))[1]["content"] == "# one"

        (cwd / "scenario.json").write_text(second_turn(call("update_artefact", artefact_id=artefact_id, content="# two")))
        await api_b.say(session_id, "go on")
        [updated] = named(await events_until(resumed, "result"), "artefact_updated")
        assert updated.data["version"] == 2
        status, versions = await get(api_b, f"{base}/{artefact_id}/versions")
        assert [v["version"] for v in versions["versions"]] == [1, 2]
        assert (await get(api_b, f"{base}/{artefact_id}?version=2"))[1]["content"] == "# two"


async def test_with_artefacts_off_the_cli_gets_no_artefacts_server(start_daemon: Any) -> None:
    on, off = await start_daemon(), await start_daemon({"agent": {"artefacts": False}})
    argvs = []
    for daemon in (on, off):
        async with api_for(daemon) as api:
            session_id, cwd, stream = await open_with(api, daemon, {"turns": [{"steps": [{"text": "hi"}]}]})
            await api.say(session_id, "hello")
            await events_until(stream, "result")
            assert await get(api, f"/sessions/{session_id}/artefacts") == (
                200, {"session_id": session_id, "artefacts": []})
        [argv] = [r["argv"] for r in cli_records(cwd) if r["dir"] == "argv"]
        argvs.append(" ".join(argv))
    assert '"artefacts": {"type": "sdk"' in argvs[0] and "mcp__artefacts__create_artefact" in argvs[0]
    assert "artefacts" not in argvs[1]


REAL_MCP_FRAMES = "06-sdk-mcp-server-toolsearch-and-error-result.jsonl"


def json_rpc(recording: Recording) -> list[tuple[str, list[str], list[str]]]:
    """Each mcp_message the CLI sent: its method, its keys, its params' keys."""
    out = []
    for frame in recording.of_kind("control_request/mcp_message"):
        message = frame["request"]["message"]
        out.append((message["method"], sorted(message), sorted(message.get("params") or {})))
    return out


async def test_the_scripted_cli_calls_sdk_mcp_servers_as_the_real_cli_does(start_daemon: Any) -> None:
    daemon = await start_daemon()
    steps = [create("Notes", "# Notes"), call("update_artefact", artefact_id="art_nope", content="# v2")]
    async with api_for(daemon) as api:
        session_id, cwd, stream = await open_with(api, daemon, {"turns": [{"steps": steps}]})
        await api.say(session_id, "go")
        await events_until(stream, "result")
    ours = Recording.read(cwd / "cli-log.jsonl", out_dir="out", in_dir="in")
    real = Recording.real(REAL_MCP_FRAMES)
    assert json_rpc(ours) == json_rpc(real)  # the handshake, then one tools/call per tool use
    # Frame shapes: the requests, and the tool results (one stored, one refused).
    assert_frames_match_the_real_cli(ours, REAL_MCP_FRAMES, {"control_request/mcp_message", "user/tool_result"})
    saved, refused = [f["message"]["content"][0] for f in ours.of_kind("user/tool_result")]
    real_saved, _, real_refused = [f["message"]["content"][0] for f in real.of_kind("user/tool_result")][1:]
    assert (sorted(saved), sorted(refused)) == (sorted(real_saved), sorted(real_refused))
    assert refused["is_error"] is True and refused["content"] == "artefact_not_found: no artefact 'art_nope'"


def version_of(artefact_id: str, number: int, content: str) -> StoredVersion:
    now = time.time()
    return StoredVersion(artefact_id, "T", "text/plain", None, now, Version(number, None, now, len(content)), content)


async def test_prune_deletes_a_closed_session_s_artefacts_with_it(pg_dsn: str, tmp_path: Path) -> None:
    db = tmp_path / "sessions.db"
    sqlite, postgres = SqliteStore(StoreConfig(), db), PostgresStore(StoreConfig(), pg_dsn, "127.0.0.1", 1)
    for store in (sqlite, postgres):
        await store.start()
        await store.session_opened("s1", {})
        for number, content in ((1, "one"), (2, "two")):
            await store.save_artefact("s1", version_of("art_1", number, content))
        assert await store.artefact_content("s1", "art_1", 2) == "two"
        await store.session_closed("s1", "closed")
        await store.stop()
    assert prune_file(db, -60)["sessions"] == 1
    assert (await pg_prune(pg_dsn, -60))["sessions"] == 1
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM awk_artefacts").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM awk_artefact_versions").fetchone() == (0,)
    conn = await asyncpg.connect(pg_dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM awk_artefact_versions") == 0
        assert await conn.fetchval("SELECT count(*) FROM awk_artefacts") == 0
    finally:
        await conn.close()
