"""The ledger: every session's and every principal's usage, counted as responses pass.

The gateway asks `refuse` before it forwards a model request and calls `count` when a
response's usage is known. A count goes three ways at once: the session's totals (GET
/sessions/{id}, the `usage` event), the principal's UTC day (budgets, GET /usage), and
the store (`add_usage`, committed with the next batch, so restarts and failover keep
it). The current month's days are also kept here, loaded at start: budget checks cost
no query. With a shared store (Postgres) other hosts spend too, so while budgets are set
the month is re-read every REFRESH_S; across hosts a budget is seen a few seconds late.
"""

from __future__ import annotations

import asyncio
import datetime
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from ..metrics import Metrics
from .budgets import Budgets, OverBudget, day_end, month_start
from .model import METRIC_KINDS, DayUsage, Usage, UsageRecord, utc_day
from .prices import Prices

log = structlog.get_logger(__name__)

REFRESH_S = 5.0
VERDICT_S = 1.0  # a principal's budget verdict is reused this long, unless its room runs out


@dataclass(slots=True)
class Verdict:
    """A principal's budget standing, reused by the gateway before every model request.

    Not over: the tokens and USD it can still spend (`Budgets.room`) are counted down as
    responses are counted, and the verdict is dropped when either runs out, so a request
    costs a subtraction rather than a budget check. Either way it expires after
    VERDICT_S: a window that ends (midnight UTC) or other hosts' spending is seen then.
    """

    over: OverBudget | None
    until: float  # monotonic
    tokens_left: float
    usd_left: float


class UsageStore(Protocol):
    """What the ledger needs of a store (stores/base.py)."""

    def add_usage(self, record: UsageRecord) -> None:
        """Add one response's usage to its session and its principal's day (batched)."""
        ...

    async def usage_days(self, principal: str | None, since: str, until: str) -> list[DayUsage]:
        """Each principal's (or one's) usage per day, since <= day <= until (YYYY-MM-DD)."""
        ...


def utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class Ledger:
    def __init__(
        self,
        store: UsageStore,
        prices: Prices,
        budgets: Budgets,
        metrics: Metrics,
        *,
        shared: bool,
    ) -> None:
        self.prices = prices
        self.budgets = budgets
        self._store = store
        self._metrics = metrics
        self._shared = shared
        self._sessions: dict[str, Usage] = {}  # session id -> its totals (sessions held here)
        self._owners: dict[str, str] = {}  # session id -> its principal
        self._days: dict[str, dict[str, Usage]] = {}  # principal -> day -> usage (this month)
        self._refresh_task: asyncio.Task[None] | None = None
        self._verdicts: dict[str, Verdict] = {}  # principal -> its standing (see Verdict)
        # Usage counted since the last scrape, by principal: the token counter is updated
        # at scrape time (`flush_metrics`), not on every response.
        self._unscraped: dict[str, Usage] = {}
        self._day = ""  # the current UTC day (YYYY-MM-DD), until _day_end (unix time)
        self._day_end = 0.0
        # Called when a turn's model request is refused: the session tells its stream.
        self.on_refused: Callable[[str, OverBudget], None] = lambda session_id, over: None

    async def start(self) -> None:
        await self._load()
        if self._shared and self.budgets.configured:
            self._refresh_task = asyncio.create_task(self._refresh(), name="usage-refresh")

    async def stop(self) -> None:
        if self._refresh_task is not None:
            self._refresh_task.cancel()
            await asyncio.gather(self._refresh_task, return_exceptions=True)

    # -- sessions -----------------------------------------------------------------------

    def adopt(self, session_id: str, principal: str, totals: Usage | None) -> None:
        """A session this host now holds (created, restored or claimed), with its totals."""
        self._owners[session_id] = principal
        self._sessions[session_id] = totals.copy() if totals else Usage()

    def forget(self, session_id: str) -> None:
        self._owners.pop(session_id, None)
        self._sessions.pop(session_id, None)

    def session_usage(self, session_id: str) -> dict[str, Any]:
        """A session's totals as the API shows them."""
        return self._sessions.get(session_id, Usage()).to_wire(self.prices.configured)

    # -- the gateway's side -------------------------------------------------------------

    def refuse(self, session_id: str) -> OverBudget | None:
        """Whether the model request of this session's CLI must be refused (its
        principal is over budget); the session is told, to end its turn visibly."""
        principal = self._owners.get(session_id)
        if principal is None:
            return None
        over = self.over_budget(principal)
        if over is not None:
            self._metrics.budget_refusals.inc({"where": "model_request"})
            log.info(
                "model_request_refused",
                session_id=session_id,
                principal=principal,
                limit=over.limit,
            )
            self.on_refused(session_id, over)
        return over

    def count(self, session_id: str, model: str | None, usage: Usage) -> None:
        """One response's usage (`usage.requests` is 1): add it everywhere it counts.
        This runs for every model response: keep it to additions."""
        usage.usd = self.prices.cost(model, usage)
        principal = self._owners.get(session_id, "")
        unscraped = self._unscraped.get(principal)
        if unscraped is None:
            unscraped = self._unscraped[principal] = Usage()
        unscraped.add(usage)
        totals = self._sessions.get(session_id)
        if totals is not None:
            totals.add(usage)
        if not principal:  # a warm CLI's request before its session existed
            log.warning("usage_unattributed", session_id=session_id, tokens=usage.tokens)
            return
        if time.time() >= self._day_end:  # a float compare, not a datetime, per response
            now = utc_now()
            self._day, self._day_end = utc_day(now), day_end(now).timestamp()
        days = self._days.get(principal)
        if days is None:
            days = self._days[principal] = {}
        today = days.get(self._day)
        if today is None:
            today = days[self._day] = Usage()
        today.add(usage)
        verdict = self._verdicts.get(principal)
        if verdict is not None:
            verdict.tokens_left -= usage.tokens
            verdict.usd_left -= usage.usd
            if verdict.tokens_left <= 0 or verdict.usd_left <= 0:
                del self._verdicts[principal]  # the next request checks the budget
        self._store.add_usage(UsageRecord(session_id, principal, self._day, usage))

    def flush_metrics(self) -> None:
        """Just before a scrape: the tokens counted since the last one, into the counter."""
        for principal, usage in self._unscraped.items():
            for name, kind in METRIC_KINDS.items():
                if tokens := getattr(usage, name):
                    labels = {"principal": self._metrics.principal_label(principal), "kind": kind}
                    self._metrics.model_tokens.add(labels, tokens)
        self._unscraped.clear()

    # -- budgets and queries ------------------------------------------------------------

    def over_budget(self, principal: str) -> OverBudget | None:
        if not self.budgets.configured:
            return None
        now = time.monotonic()
        verdict = self._verdicts.get(principal)
        if verdict is not None and now < verdict.until:
            return verdict.over
        days, today = self._days.get(principal, {}), utc_now()
        over = self.budgets.check(principal, days, today)
        tokens, usd = self.budgets.room(principal, days, today) if over is None else (0.0, 0.0)
        self._verdicts[principal] = Verdict(over, now + VERDICT_S, tokens, usd)
        return over

    async def days(self, principal: str | None, since: str, until: str) -> list[DayUsage]:
        """GET /usage: the store's rows, with this host's newest counts (not yet
        committed) folded in."""
        rows = await self._store.usage_days(principal, since, until)
        by_key = {(row.principal, row.day): row.usage for row in rows}
        for who, days in self._days.items():
            if principal is not None and who != principal:
                continue
            for day, usage in days.items():
                if since <= day <= until:
                    stored = by_key.get((who, day))
                    by_key[(who, day)] = usage.at_least(stored) if stored else usage.copy()
        return [DayUsage(who, day, usage) for (who, day), usage in sorted(by_key.items())]

    async def _load(self) -> None:
        """This month's days, from the store: what budgets count."""
        now = utc_now()
        rows = await self._store.usage_days(None, month_start(now).isoformat(), utc_day(now))
        first = month_start(now).isoformat()
        for principal in list(self._days):  # a new month: last month's days are done
            days = self._days[principal]
            for day in [d for d in days if d < first]:
                del days[day]
        self._verdicts.clear()
        for row in rows:
            days = self._days.setdefault(row.principal, {})
            local = days.get(row.day)
            days[row.day] = row.usage.at_least(local) if local else row.usage

    async def _refresh(self) -> None:
        while True:
            await asyncio.sleep(REFRESH_S)
            try:
                await self._load()
            except Exception as exc:  # the database is away: keep what we have, try again
                log.warning("usage_refresh_failed", error=str(exc))
