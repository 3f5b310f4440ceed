"""Whether a principal is over a `[[budgets]]` limit, and until when.

A principal's budget is its own entry, else the `"*"` entry, else none. Windows are UTC
days and UTC calendar months; tokens are the four kinds added up, USD needs
`[usage.prices]`. A principal is over once a window's total reaches its limit, and stays
over until that window ends (the latest end, when several limits are reached).
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..config import BudgetConfig
from .model import Usage

EVERYONE = "*"


@dataclass(frozen=True)
class OverBudget:
    """A principal over a budget: which limit, and when its window ends."""

    limit: str  # the config key: tokens_per_day, usd_per_month, ...
    resets_at: datetime.datetime  # UTC

    def retry_after(self, now: datetime.datetime) -> int:
        """Whole seconds until the window ends (at least 1)."""
        return max(1, int((self.resets_at - now).total_seconds() + 0.999))

    def message(self) -> str:
        return (
            f"your {self.limit.replace('_', ' ')} budget is spent; it resets at"
            f" {self.resets_at.isoformat()}"
        )


def day_end(now: datetime.datetime) -> datetime.datetime:
    start = datetime.datetime.combine(now.date(), datetime.time(), datetime.UTC)
    return start + datetime.timedelta(days=1)


def month_start(now: datetime.datetime) -> datetime.date:
    return now.date().replace(day=1)


def month_end(now: datetime.datetime) -> datetime.datetime:
    first = month_start(now)
    following = (first + datetime.timedelta(days=32)).replace(day=1)
    return datetime.datetime.combine(following, datetime.time(), datetime.UTC)


class Budgets:
    def __init__(self, entries: Sequence[BudgetConfig]) -> None:
        self._by_principal = {entry.principal: entry for entry in entries}

    @property
    def configured(self) -> bool:
        return bool(self._by_principal)

    def of(self, principal: str) -> BudgetConfig | None:
        return self._by_principal.get(principal) or self._by_principal.get(EVERYONE)

    def check(
        self, principal: str, days: Mapping[str, Usage], now: datetime.datetime
    ) -> OverBudget | None:
        """Over a limit, given the principal's usage by UTC day (this month's at least)."""
        budget = self.of(principal)
        if budget is None:
            return None
        today = days.get(now.date().isoformat(), Usage())
        over: OverBudget | None = None
        if _reached(budget.tokens_per_day, today.tokens):
            over = OverBudget("tokens_per_day", day_end(now))
        elif _reached(budget.usd_per_day, today.usd):
            over = OverBudget("usd_per_day", day_end(now))
        if budget.tokens_per_month or budget.usd_per_month:  # a month's end is the later one
            month = _month(days, now)
            if _reached(budget.tokens_per_month, month.tokens):
                over = OverBudget("tokens_per_month", month_end(now))
            elif _reached(budget.usd_per_month, month.usd):
                over = OverBudget("usd_per_month", month_end(now))
        return over

    def room(
        self, principal: str, days: Mapping[str, Usage], now: datetime.datetime
    ) -> tuple[float, float]:
        """Tokens and USD that can still be spent before the nearest limit is reached
        (inf: no such limit). The ledger counts them down instead of checking again."""
        budget = self.of(principal)
        if budget is None:
            return math.inf, math.inf
        today = days.get(now.date().isoformat(), Usage())
        month = _month(days, now) if budget.tokens_per_month or budget.usd_per_month else Usage()
        tokens = _left(
            (budget.tokens_per_day, today.tokens), (budget.tokens_per_month, month.tokens)
        )
        usd = _left((budget.usd_per_day, today.usd), (budget.usd_per_month, month.usd))
        return tokens, usd


def _month(days: Mapping[str, Usage], now: datetime.datetime) -> Usage:
    month = Usage()
    first = month_start(now).isoformat()
    for day, usage in days.items():
        if day >= first:
            month.add(usage)
    return month


def _left(*limits: tuple[float, float]) -> float:
    """The least of (allowed - spent) over the limits that are set (0: no such limit)."""
    return min((allowed - spent for allowed, spent in limits if allowed > 0), default=math.inf)


def _reached(allowed: float, spent: float) -> bool:
    return 0 < allowed <= spent  # 0: no such limit
