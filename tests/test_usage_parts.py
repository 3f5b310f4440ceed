"""The usage parts on their own: the meter reads the same usage however a response is cut
into chunks (hypothesis), says the final figures are known before the stream's last bytes
pass, and never raises on garbage; budget windows end where UTC days and months end."""

from __future__ import annotations

import datetime
import itertools
import json
import math
import os
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from agent_webkitd.config import BudgetConfig, PriceConfig
from agent_webkitd.metrics import Metrics
from agent_webkitd.stores.memory import MemoryStore
from agent_webkitd.usage.budgets import Budgets
from agent_webkitd.usage.ledger import Ledger
from agent_webkitd.usage.meter import TAIL_WINDOW, ResponseMeter
from agent_webkitd.usage.model import Usage
from agent_webkitd.usage.prices import Prices

EXAMPLES = int(os.environ.get("AGENT_WEBKITD_FUZZ_EXAMPLES", "25")) * 8
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=EXAMPLES <= 200)


def sse(event: dict[str, Any]) -> bytes:
    return f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode()


START = {"input_tokens": 1200, "output_tokens": 1, "cache_creation_input_tokens": 30,
         "cache_read_input_tokens": 4000}
STREAM = b"".join([
    sse({"type": "message_start", "message": {"model": "claude-sonnet-4-5", "usage": START}}),
    sse({"type": "ping"}),
    *(sse({"type": "content_block_delta", "index": 0,
           "delta": {"type": "text_delta", "text": f"word {i} \"usage\" "}}) for i in range(200)),
    sse({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 321}}),
    sse({"type": "message_stop"}),
])
EXPECTED = Usage(1200, 321, 30, 4000, 1)


@SETTINGS
@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=30))
def test_a_stream_cut_anywhere_meters_the_same_skipping_what_the_gateway_skips(cuts: list[int]) -> None:
    edges = [0, *sorted(set(cuts)), len(STREAM)]
    meter = ResponseMeter(streamed=True)
    delta_line_end = STREAM.index(b"\n", STREAM.index(b"data: {\"type\": \"message_delta\""))
    final_in = None
    for start, end in itertools.pairwise(edges):
        chunk = STREAM[start:end]
        if chunk and meter.wants(chunk) and meter.feed(chunk):  # as the gateway skips chunks
            assert final_in is None, "final twice"
            final_in = (start, end)
    assert meter.usage == EXPECTED and meter.model == "claude-sonnet-4-5"
    # Known in the very chunk that completes message_delta: counted before it is passed on.
    assert final_in is not None and final_in[0] <= delta_line_end < final_in[1]


def test_a_long_stream_is_searched_whole_only_until_message_start() -> None:
    """The text of a long response is not searched (only each chunk's tail), yet a chunk
    holding the whole response, or its tail end, still yields every figure."""
    assert len(STREAM) > 4 * TAIL_WINDOW
    whole = ResponseMeter(streamed=True)
    assert whole.feed(STREAM) and whole.usage == EXPECTED
    head, body = STREAM.index(b"event: ping"), STREAM.rindex(b"event: message_delta")
    meter = ResponseMeter(streamed=True)
    assert meter.wants(STREAM[:head]) and not meter.feed(STREAM[:head])
    assert meter.scan_from == -TAIL_WINDOW
    assert not meter.wants(STREAM[head:body])  # 20 KiB of text: not searched
    assert meter.wants(STREAM[head - 5:]) and meter.feed(STREAM[body:])
    assert meter.usage == EXPECTED


def test_a_json_response_is_metered_at_its_end_and_newer_cumulative_input_figures_win() -> None:
    meter = ResponseMeter(streamed=False)
    body = json.dumps({"model": "claude-haiku", "usage": {**START, "output_tokens": 9}}).encode()
    assert not meter.feed(body[:10]) and not meter.feed(body[10:])
    meter.finish()
    assert meter.usage == Usage(1200, 9, 30, 4000, 1) and meter.final
    streamed = ResponseMeter(streamed=True)
    streamed.feed(sse({"type": "message_start", "message": {"usage": START}}))
    streamed.feed(sse({"type": "message_delta", "usage": {"input_tokens": 1500, "output_tokens": 2}}))
    assert streamed.usage == Usage(1500, 2, 30, 4000, 1)


@SETTINGS
@given(st.binary(max_size=400), st.binary(max_size=400))
def test_garbage_never_raises(first: bytes, second: bytes) -> None:
    for streamed in (True, False):
        meter = ResponseMeter(streamed)
        meter.feed(b'data: {"usage": ' + first + b"\n")
        meter.feed(second)
        meter.finish()


def test_a_stream_cut_before_its_end_still_has_its_input_side() -> None:
    meter = ResponseMeter(streamed=True)
    meter.feed(STREAM[: STREAM.index(b"event: content_block_delta")])
    meter.finish()
    assert meter.usage == Usage(1200, 1, 30, 4000, 1) and not meter.final


def test_the_longest_price_prefix_wins_and_an_unknown_model_costs_nothing() -> None:
    prices = Prices({"claude": PriceConfig(1, 1, 1, 1), "claude-opus": PriceConfig(10, 20, 0, 0)})
    assert prices.cost("claude-opus-5", Usage(1_000_000, 500_000)) == 20.0
    assert prices.cost("claude-haiku", Usage(1_000_000, 1_000_000, 1, 1)) == 2.000002
    assert prices.cost("gpt", Usage(1_000_000)) == 0.0
    assert not Prices({}).configured


def test_budget_windows_end_at_utc_midnight_and_at_the_month_s_end() -> None:
    budgets = Budgets([BudgetConfig(principal="*", tokens_per_day=100),
                       BudgetConfig(principal="jwt:alice", tokens_per_month=1000, usd_per_day=1.0)])
    now = datetime.datetime(2026, 12, 31, 22, 30, tzinfo=datetime.UTC)
    over = budgets.check("token:bob", {"2026-12-31": Usage(60, 40)}, now)
    assert over is not None and over.limit == "tokens_per_day"
    assert over.resets_at == datetime.datetime(2027, 1, 1, tzinfo=datetime.UTC)
    assert over.retry_after(now) == 5400
    assert budgets.check("token:bob", {"2026-12-31": Usage(60, 39), "2026-12-30": Usage(900)}, now) is None
    # alice has her own entry: "*" does not apply; her month counts every day of it.
    days = {"2026-12-01": Usage(500), "2026-12-31": Usage(499), "2026-11-30": Usage(10_000)}
    assert budgets.check("jwt:alice", days, now) is None
    days["2026-12-31"] = Usage(500)
    over = budgets.check("jwt:alice", days, now)
    assert over is not None and over.limit == "tokens_per_month"
    # Both limits reached: the later window's end is when she may go on.
    days["2026-12-31"].usd = 1.0
    over = budgets.check("jwt:alice", days, now)
    assert over is not None and over.resets_at == datetime.datetime(2027, 1, 1, tzinfo=datetime.UTC)
    feb = datetime.datetime(2028, 2, 10, tzinfo=datetime.UTC)
    over = budgets.check("jwt:alice", {"2028-02-01": Usage(1000)}, feb)
    assert over is not None and over.resets_at == datetime.datetime(2028, 3, 1, tzinfo=datetime.UTC)


def test_the_room_left_is_the_nearest_limit_and_a_ledger_refuses_once_it_is_spent() -> None:
    budgets = Budgets([BudgetConfig(principal="*", tokens_per_day=100, tokens_per_month=150),
                       BudgetConfig(principal="jwt:alice", usd_per_day=2.0)])
    now = datetime.datetime(2026, 12, 31, 22, 30, tzinfo=datetime.UTC)
    assert budgets.room("token:bob", {"2026-12-31": Usage(30), "2026-12-01": Usage(90)}, now) == (30, math.inf)
    assert budgets.room("jwt:alice", {"2026-12-31": Usage(10**9, usd=0.5)}, now) == (math.inf, 1.5)
    # The ledger counts the room down: the response that spends it makes the very next
    # request a refusal (not one a second later, when the verdict would expire).
    ledger = Ledger(MemoryStore(), Prices({}), Budgets([BudgetConfig(principal="*", tokens_per_day=100)]),
                    Metrics(), shared=False)
    ledger.adopt("s", "token:bob", None)
    assert ledger.refuse("s") is None
    ledger.count("s", None, Usage(60, requests=1))
    assert ledger.refuse("s") is None
    ledger.count("s", None, Usage(40, requests=1))
    over = ledger.refuse("s")
    assert over is not None and over.limit == "tokens_per_day"
