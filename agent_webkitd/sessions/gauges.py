"""What a host holds, counted: GET /sessions and /healthz show it, /metrics scrapes it."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .supervisor import Supervisor


def counts(supervisor: Supervisor) -> dict[str, int]:
    """How many sessions and CLI processes there are (shelved sessions count as held and
    hibernated)."""
    sessions, shelved = supervisor.sessions, len(supervisor.shelf)
    return {
        "live_sessions": len(sessions) + shelved,
        "hibernated_sessions": shelved
        + sum(1 for s in sessions.values() if s.state == "hibernated"),
        "shelved_sessions": shelved,
        "live_agents": supervisor.slots.live,
        "max_live_agents": supervisor.slots.limit,
        "waiting_for_agent": supervisor.slots.waiting,
        "warm_agents": supervisor.warm.ready,
    }


def refresh(supervisor: Supervisor) -> None:
    """Set the point-in-time gauges just before a scrape."""
    supervisor.ledger.flush_metrics()
    metrics = supervisor.metrics
    sessions = list(supervisor.sessions.values())
    now = counts(supervisor)
    metrics.sessions_live.set({}, now["live_sessions"])
    metrics.agents_live.set({}, now["live_agents"])
    metrics.agents_warm.set({}, now["warm_agents"])
    metrics.sessions_hibernated.set({}, now["hibernated_sessions"])
    metrics.sessions_shelved.set({}, now["shelved_sessions"])
    metrics.max_sessions.set({}, supervisor.config.sessions.max_sessions)
    metrics.max_live_agents.set({}, now["max_live_agents"])
    metrics.store_healthy.set({}, 1 if supervisor.store.healthy else 0)
    metrics.subscribers_live.set({}, sum(s.subscribers for s in sessions))
    metrics.decisions_pending.set({}, sum(len(s.bridge.decisions.pending) for s in sessions))
