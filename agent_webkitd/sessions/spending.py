"""Budgets where sessions meet them (DESIGN §13): a message from a principal over budget is
refused before anything is queued, and a turn whose model request the gateway refused
(usage/ledger.py) ends visibly, with the messages queued behind it handed back.
"""

from __future__ import annotations

from typing import Protocol

from ..errors import ApiError
from ..metrics import Metrics
from ..usage.budgets import OverBudget
from ..usage.ledger import Ledger, utc_now


class Refusable(Protocol):
    """A session, as far as a refused turn needs it."""

    def emit(self, name: str, data: dict[str, object]) -> int: ...

    def hand_back_waiting(self) -> None: ...


def check_budget(ledger: Ledger, principal: str, metrics: Metrics) -> None:
    """429 `budget_exceeded` (Retry-After: the window's end) for a principal over budget."""
    over = ledger.over_budget(principal)
    if over is None:
        return
    metrics.budget_refusals.inc({"where": "input"})
    raise ApiError(
        429,
        "budget_exceeded",
        over.message(),
        {"Retry-After": str(over.retry_after(utc_now()))},
        extra={"resets_at": over.resets_at.isoformat(), "limit": over.limit},
    )


def turn_refused(session: Refusable, over: OverBudget) -> None:
    """The gateway refused this session's next model request: say why on the stream (the
    CLI's turn then ends with its own error result) and run nothing queued behind it."""
    session.emit(
        "error",
        {
            "code": "budget_exceeded",
            "message": over.message(),
            "resets_at": over.resets_at.isoformat(),
            "limit": over.limit,
        },
    )
    session.hand_back_waiting()
