"""What a host that went away left unfinished in a session it held, read from the
session's last events when this host takes it up (a restart, or failover): decisions
still open, the state it was in (a turn cut short?), and the cost so far.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..stores.base import ClaimedSession

DECISION_REQUESTS = ("permission_request", "ask_user_question")
# Events that settle a permission_request or ask_user_question.
DECISION_ENDINGS = (
    "permission_resolved",
    "question_resolved",
    "permission_expired",
    "permission_cancelled",
)
# States in which no turn was under way.
SETTLED_STATES = ("idle", "hibernated", "closed")


@dataclass(frozen=True)
class Leftovers:
    open_decisions: list[str]  # their correlation ids, in order
    state: str  # the session's last state
    total_cost_usd: float | None  # from its last result, if any

    @property
    def turn_lost(self) -> bool:
        return self.state not in SETTLED_STATES


def leftovers(claimed: ClaimedSession) -> Leftovers:
    pending: dict[str, None] = {}
    state = "idle"
    cost: float | None = None
    for name, data in claimed.events:
        if name in DECISION_REQUESTS:
            pending[data.get("correlation_id", "")] = None
        elif name in DECISION_ENDINGS:
            pending.pop(data.get("correlation_id", ""), None)
        elif name == "session_state":
            state = data.get("state", state)
        elif name == "result" and isinstance(data.get("total_cost_usd"), int | float):
            cost = data["total_cost_usd"]
    return Leftovers(list(pending), claimed.last_state or state, cost)
