"""Generative UI (DESIGN.md §11), black box: `[genui] dir` components become auto-allowed
render tools `mcp__genui__render_<name>`; `GET /genui/schema` lists them; a bad component
schema stops the daemon at start-up, naming the file.

The render calls run through the SDK's REAL bundled CLI; only the model is scripted
(tests/standin/fake_model.py: "render <component> <json>"). The real CLI offers MCP tools
as deferred tools (named in a system message, without a schema), so the stand-in model
first loads the tool with ToolSearch, then calls it, as a real model does.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent_webkitd.agents.genui import GenuiToolset, load_components
from agent_webkitd.config import GenuiConfig, load_config
from tests.conftest import ROOT, Daemon, api_for
from tests.standin.fixtures import fake_model_url
from tests.test_daemon_real_cli import (
    EVENT_TIMEOUT_S,
    assert_turn_succeeded,
    client_for,
    model_calls,
    named,
    open_session,
    start_real_daemon,
    text_of,
)
from tests.wire_client import Event, Stream

__all__ = ["fake_model_url"]  # imported for pytest: it is a fixture

CHART = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "description": "A bar chart: a title and one number per bar.",
    "type": "object",
    "properties": {
        "title": {"type": "string", "minLength": 1},
        "bars": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"label": {"type": "string"}, "value": {"type": "number"}},
                "required": ["label", "value"],
            },
        },
    },
    "required": ["title", "bars"],
    "additionalProperties": False,
}
# No description and no "properties": a component that takes nothing.
DIVIDER = {"type": "object", "additionalProperties": False}
VIEWER_TOKEN = "viewer-token-eeeeeeeeeeeeeeee"


def components_dir(root: Path, files: dict[str, Any]) -> Path:
    """A folder of component files: bytes and strings are written as they are, anything
    else as JSON."""
    folder = root / "genui"
    folder.mkdir(parents=True)
    for name, content in files.items():
        if isinstance(content, bytes):
            (folder / name).write_bytes(content)
        else:
            (folder / name).write_text(content if isinstance(content, str) else json.dumps(content))
    return folder


def good_dir(root: Path) -> Path:
    return components_dir(root, {"divider.json": DIVIDER, "chart.json": CHART, "README.md": "# not a component"})


def run_daemon_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AGENT_WEBKIT_AUTH_TOKEN": "t"}
    return subprocess.run([sys.executable, "-m", "agent_webkitd", *args], capture_output=True,
                          text=True, timeout=60, env=env, cwd=cwd)


# -- start-up: every component is checked; a bad one stops the daemon, named -------------------

LONG_NAME = "n" * 46  # mcp__genui__render_ + 46 > 64, the longest tool name the API takes

BAD_COMPONENTS: dict[str, tuple[dict[str, Any], str, str]] = {
    # case: (files beside a good ok.json, the file named in the error, what it says)
    "bad JSON": ({"chart.json": '{"type": "object",'}, "chart.json", "not valid JSON"),
    "bad UTF-8": ({"chart.json": b'{"description": "\xff"}'}, "chart.json", "not valid JSON"),
    "not a JSON Schema": ({"chart.json": {"type": "objekt"}}, "chart.json", "not a valid JSON Schema"),
    "a bad keyword deep inside": (
        {"chart.json": {"type": "object", "properties": {"n": {"minimum": "zero"}}}},
        "chart.json", "$.properties.n.minimum",
    ),
    "not an object at the top": ({"list.json": {"type": "array"}}, "list.json", '"type": "object"'),
    "no type at the top": ({"any.json": {"properties": {}}}, "any.json", '"type": "object"'),
    "a JSON array": ({"chart.json": []}, "chart.json", "must be a JSON object"),
    "another draft": (
        {"chart.json": {"$schema": "http://json-schema.org/draft-07/schema#", "type": "object"}},
        "chart.json", "$schema",
    ),
    "a space in the name": ({"my chart.json": CHART}, "my chart.json", "component name"),
    "a dot in the name": ({"bar.chart.json": CHART}, "bar.chart.json", "component name"),
    "a name too long": ({f"{LONG_NAME}.json": CHART}, f"{LONG_NAME}.json", "component name"),
}


@pytest.mark.parametrize("case", list(BAD_COMPONENTS))
def test_a_bad_component_schema_stops_the_daemon_with_exit_2_naming_the_file(tmp_path: Path, case: str) -> None:
    files, named_file, says = BAD_COMPONENTS[case]
    folder = components_dir(tmp_path, {"ok.json": CHART, **files})
    config = tmp_path / "daemon.toml"
    config.write_text(f'[genui]\ndir = "{folder}"\n[store]\nbackend = "memory"\n')

    done = run_daemon_cli("--config", str(config), cwd=tmp_path)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stderr.startswith("agent-webkitd: config error: genui: "), done.stderr
    assert str(folder / named_file) in done.stderr and says in done.stderr, done.stderr
    assert "ok.json" not in done.stderr


@pytest.mark.parametrize("kind", ["missing", "empty", "a file"])
def test_a_genui_dir_that_is_missing_or_holds_no_components_stops_the_daemon(tmp_path: Path, kind: str) -> None:
    folder = tmp_path / "components"
    if kind == "empty":
        folder.mkdir()
        (folder / "notes.txt").write_text("no schemas here")
    elif kind == "a file":
        folder.write_text("{}")
    config = tmp_path / "daemon.toml"
    config.write_text(f'[genui]\ndir = "{folder}"\n[store]\nbackend = "memory"\n')

    done = run_daemon_cli("--config", str(config), cwd=tmp_path)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stderr.startswith(f"agent-webkitd: config error: genui.dir: {folder} "), done.stderr


def test_check_config_refuses_a_bad_component_too(tmp_path: Path) -> None:
    bad = components_dir(tmp_path / "bad", {"chart.json": {"type": "string"}})
    config = tmp_path / "daemon.toml"
    config.write_text(f'[genui]\ndir = "{bad}"\n')
    done = run_daemon_cli("check-config", "--config", str(config), cwd=tmp_path)
    assert done.returncode == 2 and str(bad / "chart.json") in done.stderr, done.stderr
    good = good_dir(tmp_path)
    config.write_text(f'[genui]\ndir = "{good}"\n')
    done = run_daemon_cli("check-config", "--config", str(config), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["genui"] == {"dir": str(good)}


def test_the_example_component_in_conf_is_valid() -> None:
    [chart] = load_components(GenuiConfig(dir=str(ROOT / "conf" / "genui")))
    assert (chart.name, chart.tool_name) == ("chart", "mcp__genui__render_chart")
    assert chart.schema == json.loads((ROOT / "conf" / "genui" / "chart.json").read_text())


def test_a_relative_genui_dir_is_relative_to_the_config_file(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "conf.toml").write_text('[genui]\ndir = "../ui"\n')
    assert load_config(etc / "conf.toml").genui.dir == str(tmp_path / "ui")
    (etc / "conf.toml").write_text("")
    assert load_config(etc / "conf.toml").genui.dir == ""  # off
    assert load_components(load_config(etc / "conf.toml").genui) == ()


# -- GET /genui/schema --------------------------------------------------------------------------

def expected_document() -> dict[str, Any]:
    return {
        "version": "1.0",
        "server_name": "genui",
        "prefix": "mcp__genui__render_",
        "tools": [
            {
                "name": "mcp__genui__render_chart",
                "short_name": "chart",
                "raw_tool_name": "render_chart",
                "description": "A bar chart: a title and one number per bar.",
                "schema": CHART,
            },
            {
                "name": "mcp__genui__render_divider",
                "short_name": "divider",
                "raw_tool_name": "render_divider",
                "description": "Render the divider UI component for the user.",
                "schema": DIVIDER,
            },
        ],
    }


async def test_genui_schema_lists_every_component_by_name_for_any_principal(
    start_daemon: Callable[..., Any], tmp_path: Path
) -> None:
    viewer = {"auth": {"tokens": [{"name": "viewer", "env": "VIEWER_TOKEN"}]}}
    daemon: Daemon = await start_daemon(
        {"genui": {"dir": str(good_dir(tmp_path))}, **viewer}, {"VIEWER_TOKEN": VIEWER_TOKEN}
    )
    async with api_for(daemon) as admin, api_for(daemon, VIEWER_TOKEN) as user:
        for api in (admin, user):
            status, document, headers = await api.request("GET", "/genui/schema")
            assert (status, document) == (200, expected_document())
            assert headers["Content-Type"].startswith("application/json")
    for token in (None, "not-a-token"):
        async with api_for(daemon, token) as stranger:
            status, payload, _ = await stranger.request("GET", "/genui/schema")
            assert (status, payload["error"]["code"]) == (401, "unauthorized")


async def test_genui_schema_with_genui_off_lists_no_tools(start_daemon: Callable[..., Any]) -> None:
    daemon: Daemon = await start_daemon()
    async with api_for(daemon) as api:
        status, document, _ = await api.request("GET", "/genui/schema")
    assert (status, document) == (200, {**expected_document(), "tools": []})


# -- the render tools' own check of their arguments ----------------------------------------------

async def test_a_render_tool_checks_its_arguments_against_the_component_schema(tmp_path: Path) -> None:
    toolset = GenuiToolset(load_components(GenuiConfig(dir=str(good_dir(tmp_path)))))
    assert toolset.allowed_tools() == ["mcp__genui__render_chart", "mcp__genui__render_divider"]
    chart, divider = toolset.tools()
    assert (chart.name, divider.name) == ("render_chart", "render_divider")

    ok = await chart.handler({"title": "Sales", "bars": [{"label": "Q1", "value": 3}]})
    assert ok == {"content": [{"type": "text", "text": "rendered chart"}]}
    bad = await chart.handler({"title": "Sales", "bars": [{"label": "Q1", "value": "three"}]})
    assert bad["is_error"] is True
    assert bad["content"][0]["text"] == "invalid chart arguments at $.bars[0].value: 'three' is not of type 'number'"
    assert (await divider.handler({}))["content"][0]["text"] == "rendered divider"
    assert (await divider.handler({"x": 1}))["is_error"] is True


# -- render calls through the real CLI ------------------------------------------------------------

@pytest.fixture
async def genui_daemon(start_daemon: Callable[..., Any], fake_model_url: str, tmp_path: Path) -> Daemon:
    return await start_real_daemon(start_daemon, fake_model_url, tmp_path, {"genui": {"dir": str(good_dir(tmp_path))}})


def render_message(component: str, arguments: dict[str, Any]) -> str:
    return f"render {component} {json.dumps(arguments)}"


async def render_turn(stream: Stream) -> list[Event]:
    """The turn's events up to its result, or up to a permission_request (which a render
    call must never raise: it would wait for a person forever)."""
    start = len(stream.events)
    async with asyncio.timeout(EVENT_TIMEOUT_S):
        while (await stream.next(EVENT_TIMEOUT_S)).name not in ("result", "permission_request"):
            pass
    return stream.events[start:]


async def test_a_render_call_runs_without_a_permission_prompt_and_its_result_is_not_an_error(
    genui_daemon: Daemon, fake_model_url: str
) -> None:
    arguments = {"title": "Sales", "bars": [{"label": "Q1", "value": 3}, {"label": "Q2", "value": 5}]}
    async with client_for(genui_daemon) as api:
        session_id, stream = await open_session(api, genui_daemon.session_dir())
        await api.say(session_id, render_message("chart", arguments))
        turn = await render_turn(stream)
        stream.close()

    assert named(turn, "permission_request") == []
    search, render = named(turn, "tool_use")
    assert (search.data["tool_name"], search.data["input"]) == (
        "ToolSearch", {"query": "select:mcp__genui__render_chart"})
    assert (render.data["tool_name"], render.data["input"]) == ("mcp__genui__render_chart", arguments)
    results = {e.data["tool_use_id"]: e.data for e in named(turn, "tool_result")}
    assert results[render.data["tool_use_id"]]["is_error"] is False
    assert "rendered chart" in json.dumps(results[render.data["tool_use_id"]]["output"])
    # The input streamed as message_delta input_json_delta too, for clients that render early.
    partial = "".join(e.data["delta"].get("partial_json", "") for e in named(turn, "message_delta")
                      if e.data["message_id"] == render.data["message_id"])
    assert json.loads(partial) == arguments
    assert text_of(named(turn, "message_complete")[-1]) == "All done."
    assert_turn_succeeded(turn[-1], session_id)

    # What the model saw: the render tools deferred (named, not listed), then, once loaded
    # with ToolSearch, listed with the component's description and schema.
    first, after_search, _ = await model_calls(fake_model_url)
    assert not any(t["name"].startswith("mcp__genui__") for t in first["body"]["tools"])
    deferred = "\n".join(message_texts(first["body"]["messages"]))
    assert "\nmcp__genui__render_chart\nmcp__genui__render_divider\n" in deferred
    [tool] = [t for t in after_search["body"]["tools"] if t["name"] == "mcp__genui__render_chart"]
    assert tool["description"] == CHART["description"]
    assert tool["input_schema"] == CHART


async def test_a_render_call_with_bad_arguments_is_an_error_result_and_the_session_goes_on(
    genui_daemon: Daemon, fake_model_url: str
) -> None:
    async with client_for(genui_daemon) as api:
        session_id, stream = await open_session(api, genui_daemon.session_dir())
        await api.say(session_id, render_message("chart", {"title": "Sales", "bars": [{"label": "Q1"}]}))
        bad = await render_turn(stream)
        assert named(bad, "permission_request") == []

        # The session goes on: a component without properties renders fine next.
        await api.say(session_id, render_message("divider", {}))
        good = await render_turn(stream)
        stream.close()

    for turn in (bad, good):
        assert named(turn, "permission_request") == [] and named(turn, "error") == []
        assert_turn_succeeded(turn[-1], session_id)
    chart = render_result(bad, "mcp__genui__render_chart")
    assert chart["is_error"] is True
    assert "'value' is a required property" in json.dumps(chart["output"])
    divider = render_result(good, "mcp__genui__render_divider")
    assert divider["is_error"] is False and "rendered divider" in json.dumps(divider["output"])

    # The model read why its call failed.
    calls = await model_calls(fake_model_url)
    [seen] = [b for m in calls[-1]["body"]["messages"] if m["role"] == "user" and isinstance(m["content"], list)
              for b in m["content"] if b.get("type") == "tool_result" and b["tool_use_id"] == chart["tool_use_id"]]
    assert seen["is_error"] is True and "'value' is a required property" in json.dumps(seen["content"])


def message_texts(messages: list[dict[str, Any]]) -> list[str]:
    texts = []
    for message in messages:
        content = message["content"]
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
        texts += [b["text"] for b in blocks if b.get("type") == "text"]
    return texts


def render_result(turn: list[Event], tool_name: str) -> dict[str, Any]:
    """The tool_result of the turn's one call of `tool_name`."""
    [call] = [e for e in named(turn, "tool_use") if e.data["tool_name"] == tool_name]
    [result] = [e for e in named(turn, "tool_result") if e.data["tool_use_id"] == call.data["tool_use_id"]]
    data: dict[str, Any] = result.data
    return data
