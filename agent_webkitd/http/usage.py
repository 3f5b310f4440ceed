"""GET /usage (DESIGN §13): model usage per principal per UTC day.

A principal sees its own days; an admin sees everyone's, or one principal's with
`?principal=`. `since` and `until` (YYYY-MM-DD, UTC, both included) default to the
current month so far. Each row is a usage object (the Messages API's token names,
`requests`, and `usd` when `[usage.prices]` is set) with its `principal` and `day`.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable

from aiohttp import web

from ..errors import ApiError, bad_request
from ..identity.principals import Principal
from ..usage.ledger import Ledger, utc_now


class UsageRoutes:
    def __init__(self, ledger: Ledger, principal_of: Callable[[web.Request], Principal]) -> None:
        self._ledger = ledger
        self._principal_of = principal_of

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/usage", self.usage)

    async def usage(self, request: web.Request) -> web.StreamResponse:
        caller = self._principal_of(request)
        asked = request.query.get("principal")
        if caller.admin:
            principal = asked  # None: everyone
        elif asked is None or asked == caller.name:
            principal = caller.name
        else:
            raise ApiError(403, "forbidden", "only an admin may see another principal's usage")
        today = utc_now().date()
        since = _day(request, "since", today.replace(day=1))
        until = _day(request, "until", today)
        # since after until: no day lies between, an empty answer (not an error)
        rows = await self._ledger.days(principal, since.isoformat(), until.isoformat())
        priced = self._ledger.prices.configured
        body = {
            "usage": [
                {"principal": row.principal, "day": row.day, **row.usage.to_wire(priced)}
                for row in rows
            ]
        }
        return web.Response(
            body=json.dumps(body, separators=(",", ":")).encode(),
            content_type="application/json",
        )


def _day(request: web.Request, name: str, default: datetime.date) -> datetime.date:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        if len(raw) != 10:
            raise ValueError(raw)
        return datetime.date.fromisoformat(raw)
    except ValueError:
        raise bad_request("bad_date", f"{name} must be a day, YYYY-MM-DD, got {raw!r}") from None
