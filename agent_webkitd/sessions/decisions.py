"""Pending decisions (tool permissions and AskUserQuestion prompts): first reply wins.

A decision is opened by the SDK's `can_use_tool` callback and awaited there; a client's
reply resolves it. Every later reply for the same id is refused with 409
`already_resolved`; a reply for an id this session never issued gets 409
`unknown_correlation_id`.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Literal

from ..errors import ApiError

Kind = Literal["permission", "question"]
# Remember this many settled ids per session so late replies get `already_resolved`.
SETTLED_MEMORY = 4096


@dataclass
class Decision:
    correlation_id: str
    kind: Kind
    request: dict[str, Any]  # the event data the clients were shown
    future: asyncio.Future[Any] = field(repr=False)


class Decisions:
    def __init__(self) -> None:
        self.pending: dict[str, Decision] = {}
        self._settled: OrderedDict[str, str] = OrderedDict()

    def open(self, correlation_id: str, kind: Kind, request: dict[str, Any]) -> Decision:
        decision = Decision(
            correlation_id, kind, request, asyncio.get_running_loop().create_future()
        )
        self.pending[correlation_id] = decision
        return decision

    def resolve(self, correlation_id: str, reply: Any) -> Decision:
        """Hand `reply` to the waiting callback, or raise the 409 for a late/unknown id."""
        decision = self.pending.pop(correlation_id, None)
        if decision is None:
            if correlation_id in self._settled:
                raise ApiError(
                    409,
                    "already_resolved",
                    f"decision {correlation_id!r} was already {self._settled[correlation_id]}",
                )
            raise ApiError(
                409, "unknown_correlation_id", f"no decision {correlation_id!r} in this session"
            )
        self._settle(correlation_id, "answered")
        decision.future.set_result(reply)
        return decision

    def peek(self, correlation_id: str) -> Decision | None:
        return self.pending.get(correlation_id)

    def withdraw(self, correlation_id: str, how: str) -> bool:
        """Drop a still-pending decision (interrupt, close). True if it was pending."""
        decision = self.pending.pop(correlation_id, None)
        if decision is None:
            return False
        self._settle(correlation_id, how)
        if not decision.future.done():
            decision.future.cancel()
        return True

    def withdraw_all(self, how: str) -> list[str]:
        ids = list(self.pending)
        for correlation_id in ids:
            self.withdraw(correlation_id, how)
        return ids

    def _settle(self, correlation_id: str, how: str) -> None:
        self._settled[correlation_id] = how
        if len(self._settled) > SETTLED_MEMORY:
            self._settled.popitem(last=False)
