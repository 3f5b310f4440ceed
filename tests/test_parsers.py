"""The parsers on their own, property-based (hypothesis): whatever a client sends, each
returns a value or raises a 400 with a stable code; nothing else escapes."""

from __future__ import annotations

import json
import os
from typing import Any

from aiohttp.test_utils import make_mocked_request
from hypothesis import given, settings
from hypothesis import strategies as st

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
