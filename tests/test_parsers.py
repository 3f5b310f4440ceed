"""The parsers on their own, property-based (hypothesis): whatever a client sends, each
returns a value or raises a 400 with a stable code; nothing else escapes."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import make_mocked_request
from hypothesis import given, settings
from hypothesis import strategies as st

from agent_webkitd.agents import workspace_files
from agent_webkitd.errors import ApiError
from agent_webkitd.http import sse
from agent_webkitd.protocol import openapi, wire

EXAMPLES = int(os.environ.get("AGENT_WEBKITD_FUZZ_EXAMPLES", "25")) * 8
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=EXAMPLES <= 200)
CODES = {"invalid_body", "missing_field", "invalid_field", "unknown_type", "interrupt_with_allow"}

TEXT = st.text(alphabet=st.characters(codec=None), max_size=20)  # NUL and lone surrogates too
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=25,
)
FIELDS = st.sampled_from(
    ["type", "content", "correlation_id", "behavior", "mode", "model", "task_id", "answers",
     "interrupt", "updated_input", "updated_permissions", "message", "cwd", "permission_mode"]
)
MESSAGES = st.dictionaries(
    FIELDS, JSON | st.sampled_from([*openapi.INBOUND_BY_TYPE, "allow", "deny", "plan"]), max_size=6
)


def accepted_or_400(parse: Any, body: Any) -> None:
    try:
        parse(body)
    except ApiError as exc:
        assert exc.status == 400 and exc.code in CODES, (exc.status, exc.code, exc.message)
        assert exc.message


@SETTINGS
@given(body=JSON | MESSAGES)
def test_an_inbound_body_is_a_message_or_a_400(body: Any) -> None:
    accepted_or_400(wire.parse_inbound, body)


@SETTINGS
@given(body=JSON | MESSAGES)
def test_a_create_body_is_a_request_or_a_400(body: Any) -> None:
    accepted_or_400(wire.parse_create, body)


@SETTINGS
@given(body=JSON)
def test_the_depth_check_agrees_with_a_recursive_count(body: Any) -> None:
    def depth(value: Any) -> int:
        if isinstance(value, dict):
            return 1 + max(map(depth, value.values()), default=0)
        if isinstance(value, list):
            return 1 + max(map(depth, value), default=0)
        return 0

    for limit in (1, 2, 3, 64):
        assert wire.within_depth(body, limit) == (depth(body) <= limit)


@SETTINGS
@given(header=st.one_of(st.none(), st.text(max_size=30)), query=st.one_of(st.none(), st.text(max_size=30)))
def test_a_cursor_is_a_number_none_or_a_400(header: str | None, query: str | None) -> None:
    headers = {} if header is None else {"Last-Event-ID": "".join(c for c in header if 32 <= ord(c) < 127)}
    path = "/sessions/x/stream" + ("" if query is None else "?last_event_id=" + json.dumps(query)[1:-1])
    try:
        cursor = sse.parse_cursor(make_mocked_request("GET", path, headers=headers))
    except ApiError as exc:
        assert (exc.status, exc.code) == (400, "invalid_last_event_id")
    except ValueError:  # a query string the URL parser itself refuses never reaches us
        return
    else:
        assert cursor is None or 0 <= cursor < 10**18


# -- workspace paths (agents/workspace_files.py) ---------------------------------------


@pytest.fixture(scope="module")
def planted_workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workspace beside a secret, with what an agent could plant: links out, a FIFO."""
    base = tmp_path_factory.mktemp("fuzz-workspace")
    (base / "secret.txt").write_text("SECRET")
    workspace = base / "workspace"
    (workspace / "d").mkdir(parents=True)
    (workspace / "mine.txt").write_text("mine")
    (workspace / "up").symlink_to("..")
    (workspace / "d" / "up").symlink_to("../..")
    (workspace / "abs").symlink_to(base / "secret.txt")
    os.mkfifo(workspace / "pipe")
    return workspace


PATH_PIECES = st.sampled_from(["..", ".", "", "up", "d", "abs", "pipe", "mine.txt", "secret.txt",
                               "/", "\x00", "\x01", "\x7f", "x" * 256, "é", "\udcff", "%2e%2e"])


@settings(max_examples=EXAMPLES, deadline=None)
@given(st.lists(st.one_of(PATH_PIECES, st.text(max_size=8)), max_size=6).map("/".join))
def test_no_path_leads_out_of_a_workspace(planted_workspace: Path, path: str) -> None:
    try:
        parts = workspace_files.parts_of(path)
    except workspace_files.BadPath:
        return
    assert all(p not in ("", ".", "..") and "/" not in p and "\x00" not in p for p in parts)
    try:
        fd, _ = workspace_files.open_for_reading(str(planted_workspace), path)
    except workspace_files.NotThere:
        return
    try:
        assert os.read(fd, 100) == b"mine" and path == "mine.txt"  # the one regular file
    finally:
        os.close(fd)
