"""The usage object: what model requests consumed, as the Messages API names it.

One Usage is a sum: tokens of the four kinds (input, output, cache writes, cache reads),
the number of model requests, and their cost in USD when `[usage.prices]` is set. The
same shape is a session's totals, a principal's day, and one response's share.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any, NamedTuple

TOKEN_KINDS = (
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
)
COUNTS = (*TOKEN_KINDS, "requests")
# The `kind` label of agent_webkit_model_tokens_total for each count.
METRIC_KINDS = {
    "input_tokens": "input",
    "output_tokens": "output",
    "cache_creation_input_tokens": "cache_write",
    "cache_read_input_tokens": "cache_read",
}


@dataclass(slots=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    requests: int = 0
    usd: float = 0.0

    @property
    def tokens(self) -> int:
        """All four kinds added up: what token budgets count."""
        return (
            self.input_tokens
            + self.output_tokens
            + self.cache_creation_input_tokens
            + self.cache_read_input_tokens
        )

    def add(self, other: Usage) -> None:
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.cache_creation_input_tokens += other.cache_creation_input_tokens
        self.cache_read_input_tokens += other.cache_read_input_tokens
        self.requests += other.requests
        self.usd += other.usd

    def copy(self) -> Usage:
        return Usage(*self.row())

    def at_least(self, other: Usage) -> Usage:
        """Each figure the larger of the two (two views of one growing total)."""
        return Usage.of_row([max(a, b) for a, b in zip(self.row(), other.row(), strict=True)])

    def row(self) -> tuple[int, int, int, int, int, float]:
        """The figures in the stores' column order."""
        return (
            self.input_tokens,
            self.output_tokens,
            self.cache_creation_input_tokens,
            self.cache_read_input_tokens,
            self.requests,
            self.usd,
        )

    def to_wire(self, priced: bool) -> dict[str, Any]:
        """The usage object of the API: the four counts and requests, `usd` with prices."""
        out: dict[str, Any] = {name: getattr(self, name) for name in COUNTS}
        if priced:
            out["usd"] = round(self.usd, 6)
        return out

    @classmethod
    def of_row(cls, row: Any) -> Usage:
        """From a store row (a sequence in `row()`'s order)."""
        i, o, cw, cr, requests, usd = row
        return cls(int(i), int(o), int(cw), int(cr), int(requests), float(usd))


class UsageRecord(NamedTuple):
    """One model response's usage, to add to its session's and its principal's day (a
    tuple: one is made per model response)."""

    session_id: str
    principal: str
    day: str  # UTC, YYYY-MM-DD
    usage: Usage


@dataclass(frozen=True)
class DayUsage:
    """A principal's usage on one UTC day (a row of GET /usage)."""

    principal: str
    day: str
    usage: Usage


def utc_day(at: datetime.datetime) -> str:
    return at.astimezone(datetime.UTC).date().isoformat()


def fold(records: list[UsageRecord]) -> tuple[dict[str, Usage], dict[tuple[str, str], Usage]]:
    """A batch's records summed per session and per (principal, day): one row each."""
    sessions: dict[str, Usage] = {}
    days: dict[tuple[str, str], Usage] = {}
    for record in records:
        sessions.setdefault(record.session_id, Usage()).add(record.usage)
        days.setdefault((record.principal, record.day), Usage()).add(record.usage)
    return sessions, days
