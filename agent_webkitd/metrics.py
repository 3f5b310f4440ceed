"""Prometheus metrics (aioprometheus), one registry per daemon, rendered at GET /metrics.

Label values that come from clients (`subscriber_id`) or name users (`principal`) are
bounded: subscriber ids are trimmed to a safe length and character set, and only the
first MAX_LABELS distinct values of each are kept; the rest are counted under
"overflow", so neither a hostile client nor a crowd of users can explode the series
count.
"""

from __future__ import annotations

import re

from aioprometheus.collectors import Counter, Gauge, Histogram, Registry
from aioprometheus.renderer import render

MAX_LABELS = 200
SUBSCRIBER_ID_MAX_LEN = 64
OVERFLOW = "overflow"
_UNSAFE = re.compile(r"[^A-Za-z0-9._:-]")


def clean_subscriber_id(raw: str | None) -> str | None:
    """A client's X-Subscriber-ID trimmed to a sane length and character set (None if empty)."""
    if raw is None:
        return None
    cleaned = _UNSAFE.sub("", raw.strip())[:SUBSCRIBER_ID_MAX_LEN]
    return cleaned or None


class Metrics:
    def __init__(self) -> None:
        self.registry = Registry()
        r = self.registry
        self.sessions_live = Gauge(
            "agent_webkit_sessions_live", "Sessions currently hosted.", registry=r
        )
        self.sessions_created = Counter(
            "agent_webkit_sessions_created_total",
            "Sessions created, by the principal that owns them.",
            registry=r,
        )
        self.auth_failures = Counter(
            "agent_webkit_auth_failures_total",
            "Requests refused with 401, by reason: bad_token (no or an unknown bearer token), malformed, algorithm, no_kid, unknown_key, expired, invalid (JWTs), bad_ticket.",
            registry=r,
        )
        self.sessions_evicted = Counter(
            "agent_webkit_sessions_evicted_total",
            "Sessions ended, by reason: idle (idle timeout), closed (DELETE), crash_loop (the CLI kept dying), drain (shutdown), lost (claimed by another host), resumed (its conversation taken over by a new session).",
            registry=r,
        )
        self.max_sessions = Gauge(
            "agent_webkit_max_sessions", "[sessions] max_sessions: the cap on sessions.", registry=r
        )
        self.max_live_agents = Gauge(
            "agent_webkit_max_live_agents",
            "The cap on CLI processes ([sessions] max_live_agents, or max_sessions).",
            registry=r,
        )
        self.store_healthy = Gauge(
            "agent_webkit_store_healthy",
            "1 while the session store takes writes, 0 while events wait for it.",
            registry=r,
        )
        self.agent_start_failures = Counter(
            "agent_webkit_agent_start_failures_total",
            "CLI processes that could not start: for a new session (502 agent_start_failed),"
            " or warm ones.",
            registry=r,
        )
        self.agents_live = Gauge(
            "agent_webkit_agents_live",
            "Claude Code CLI processes (starting, serving or stopping).",
            registry=r,
        )
        self.agents_warm = Gauge(
            "agent_webkit_agents_warm",
            "CLI processes started ahead of time ([agent] warm_agents), ready for a new session.",
            registry=r,
        )
        self.agents_warm_target = Gauge(
            "agent_webkit_agents_warm_target",
            "Warm CLIs the pool wants now: the largest recent burst of creates, within"
            " [agent] warm_agents and warm_agents_max.",
            registry=r,
        )
        self.creates = Counter(
            "agent_webkit_creates_total",
            "Sessions created, by how their CLI started: taken warm, or started cold.",
            registry=r,
        )
        self.sessions_hibernated = Gauge(
            "agent_webkit_sessions_hibernated",
            "Sessions without a CLI process, woken by their next message.",
            registry=r,
        )
        self.sessions_shelved = Gauge(
            "agent_webkit_sessions_shelved",
            "Hibernated sessions held in the store alone (an index entry in memory).",
            registry=r,
        )
        self.hibernations = Counter(
            "agent_webkit_hibernations_total",
            "Idle sessions whose CLI was stopped (idle past hibernate_after_s, or to make room).",
            registry=r,
        )
        self.wakes = Counter(
            "agent_webkit_wakes_total",
            "Hibernated sessions woken by a message, by outcome: ok, failed (wake_failed).",
            registry=r,
        )
        self.wake_seconds = Histogram(
            "agent_webkit_wake_seconds",
            "From a message to a hibernated session to its resumed CLI being ready"
            " (waiting for a free CLI slot included).",
            registry=r,
            buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
        )
        self.agent_exits = Counter(
            "agent_webkit_agent_exits_total",
            "CLI processes that exited without being asked to (crash, kill, bad output).",
            registry=r,
        )
        self.shelvings = Counter(
            "agent_webkit_session_shelvings_total",
            "Quiet hibernated sessions released to the store, an index entry kept in memory.",
            registry=r,
        )
        self.unshelvings = Counter(
            "agent_webkit_session_unshelvings_total",
            "Shelved sessions loaded back from the store for a request.",
            registry=r,
        )
        self.sessions_claimed = Counter(
            "agent_webkit_sessions_claimed_total",
            "Sessions taken over from a host that went away (Postgres store).",
            registry=r,
        )
        self.transcript_mirror_errors = Counter(
            "agent_webkit_transcript_mirror_errors_total",
            "Transcript batches the SDK could not store (Postgres store): a later resume on"
            " another host would miss them.",
            registry=r,
        )
        self.capacity_rejections = Counter(
            "agent_webkit_capacity_rejections_total",
            "POST /sessions refused, by reason: at_capacity, agents_busy, draining.",
            registry=r,
        )
        self.limit_rejections = Counter(
            "agent_webkit_limit_rejections_total",
            "Requests refused by a limit, by limit: message_bytes, image_bytes, inbound_queue,"
            " streams_per_session, streams; and the model's artefact tool calls refused:"
            " artefact_bytes, artefacts_per_session.",
            registry=r,
        )
        self.subscribers_live = Gauge(
            "agent_webkit_subscribers_live", "Open SSE streams.", registry=r
        )
        self.decisions_pending = Gauge(
            "agent_webkit_decisions_pending",
            "Permission and question requests waiting for a reply.",
            registry=r,
        )
        self.first_reply_winner = Counter(
            "agent_webkit_permissions_first_reply_winner_total",
            "Decisions answered, by the X-Subscriber-ID of the reply that won.",
            registry=r,
        )
        self.decision_conflicts = Counter(
            "agent_webkit_decision_conflicts_total",
            "Replies refused with 409, by error code.",
            registry=r,
        )
        self.decisions_expired = Counter(
            "agent_webkit_decisions_expired_total",
            "Decisions denied by permission_timeout_s.",
            registry=r,
        )
        self.resume_412 = Counter(
            "agent_webkit_resume_412_total",
            "Stream requests whose Last-Event-ID was no longer in the ring.",
            registry=r,
        )
        self.subscribers_evicted = Counter(
            "agent_webkit_subscribers_evicted_total",
            "Streams closed because they fell out of the ring.",
            registry=r,
        )
        self.events_appended = Counter(
            "agent_webkit_events_appended_total", "Events appended to session logs.", registry=r
        )
        # Counted as a plain int on the event path (Counter.inc costs ~0.8 µs an event)
        # and copied into the counter when /metrics is rendered.
        self.events_appended_n = 0
        self.turn_duration = Histogram(
            "agent_webkit_turn_duration_seconds",
            "From sending a user message to the CLI to its result.",
            registry=r,
            buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
        )
        self.cli_spawn = Histogram(
            "agent_webkit_cli_spawn_seconds",
            "Time to start and connect a CLI process.",
            registry=r,
            buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
        )
        self.model_tokens = Counter(
            "agent_webkit_model_tokens_total",
            "Model tokens the gateway counted, by principal and kind: input, output, cache_write, cache_read.",
            registry=r,
        )
        self.model_requests = Counter(
            "agent_webkit_model_requests_total",
            "Model requests through the gateway, by the status the CLI got.",
            registry=r,
        )
        self.budget_refusals = Counter(
            "agent_webkit_budget_refusals_total",
            "Refusals of a principal over budget, by where: input (POST /input 429), model_request (a turn cut short).",
            registry=r,
        )
        self.checkpoint_seconds = Histogram(
            "agent_webkit_workspace_checkpoint_seconds",
            "Saving a workspace's changes into the shared store at a turn's end or after an"
            " upload (scan, read, commit), by kind: checkpoint, restore (a host taking the"
            " session up writes the workspace back).",
            registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
        )
        self.checkpoint_bytes = Counter(
            "agent_webkit_workspace_checkpoint_bytes_total",
            "File bytes written into the shared store by checkpoints (changed files only), or"
            " read back by restores, by kind.",
            registry=r,
        )
        self.checkpoints_skipped = Counter(
            "agent_webkit_workspace_checkpoints_skipped_total",
            "Checkpoints not taken, by reason: too_large (over [agent] max_workspace_bytes),"
            " lost (another host owns the session), failed (the store refused or was away).",
            registry=r,
        )
        self.http_requests = Counter(
            "agent_webkit_http_requests_total",
            "HTTP requests by route, method and status.",
            registry=r,
        )
        self._labels: dict[str, set[str]] = {"subscriber": set(), "principal": set()}

    def subscriber_label(self, subscriber_id: str | None) -> str:
        return self._bounded("subscriber", subscriber_id)

    def principal_label(self, principal: str) -> str:
        return self._bounded("principal", principal)

    def _bounded(self, kind: str, value: str | None) -> str:
        """The label value to use: `value` while fewer than MAX_LABELS are in use."""
        if not value:
            return "unknown"
        seen = self._labels[kind]
        if value in seen:
            return value
        if len(seen) >= MAX_LABELS:
            return OVERFLOW
        seen.add(value)
        return value

    def render(self, accept: list[str]) -> tuple[bytes, dict[str, str]]:
        self.events_appended.set({}, self.events_appended_n)
        body, headers = render(self.registry, accept)
        return body, dict(headers)
