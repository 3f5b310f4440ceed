"""The per-session event log: seq assignment, the ring of encoded frames, and wake-ups.

Each event is encoded to its SSE frame once, at append, and that one `bytes` object is
shared by every subscriber. The ring is a fixed list indexed by `seq % ring_size`, so
append is O(1) and reading k events is O(k) with no scan. Subscribers keep their own
cursor (the last seq they wrote) and wait on one shared `asyncio.Event` that is pulsed
(set, then cleared): a waiter whose check found nothing new is woken by the next pulse,
and a subscriber busy writing finds the new events on its next check, so no wake-up is
ever missed.

Wake-ups are coalesced. The first append after a quiet spell wakes subscribers at once;
appends that follow within WAKE_INTERVAL_S share one wake-up at the end of that interval
(or sooner, once a quarter of the ring is waiting, so a small ring never overflows a
subscriber that keeps up).
So a burst of events costs each subscriber one wake-up and one socket write per interval
instead of one per event (the difference between 1 and ~20 frames per send at 100
subscribers), at the price of at most WAKE_INTERVAL_S extra delay inside a burst.
While many sessions stream at once (at least BUSY_SESSIONS, together more than
BUSY_EVENTS_PER_S), the interval grows to BUSY_WAKE_INTERVAL_S: each session's events
then come further apart than 5 ms, so without it every event would cost every subscriber
a wake-up and a send of its own (measured: 1.0 event per socket write at 200 sessions),
more CPU than everything else the daemon does for the event. One session streaming
fast batches well at 5 ms and keeps it. Events a person waits on (a turn's `result`, a
permission or question, a state change, an error) wake subscribers as soon as they are
published, whatever the interval: pacing delays text, never a turn's end or a prompt.
The ring is allocated at the first append, and a hibernated session whose store is
durable drops it (its events are in the database; readers go there), so a sleeping
session costs no ring. The log knows nothing about HTTP or the SDK.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ..protocol.frames import encode_event
from ..stores.base import Store

WAKE_INTERVAL_S = 0.005
# Publishes by the daemon, all sessions together: one per event with the memory store,
# one per commit with a durable one (each is a wake-up to pace, so that is what counts).
BUSY_EVENTS_PER_S = 5000
BUSY_SESSIONS = 10  # sessions publishing within one PACE_WINDOW_S
BUSY_WAKE_INTERVAL_S = 0.1
# Published at once, never paced.
URGENT_EVENTS = frozenset(
    {"result", "permission_request", "ask_user_question", "session_state", "error", "done"}
)
PACE_WINDOW_S = 0.1  # how often the load is measured


class _Pace:
    """The wake interval for every log in this process, from how many events how many
    sessions published in the last window."""

    def __init__(self) -> None:
        self.interval = WAKE_INTERVAL_S
        self._since = 0.0
        self._count = 0
        self._sessions: set[str] = set()

    def count(self, session_id: str, now: float) -> None:
        self._count += 1
        self._sessions.add(session_id)
        elapsed = now - self._since
        if elapsed >= PACE_WINDOW_S:
            busy = (
                len(self._sessions) >= BUSY_SESSIONS and self._count > BUSY_EVENTS_PER_S * elapsed
            )
            self.interval = BUSY_WAKE_INTERVAL_S if busy else WAKE_INTERVAL_S
            self._since, self._count = now, 0
            self._sessions.clear()


PACE = _Pace()


class CursorUnavailable(Exception):
    """The requested position is no longer (or not yet) in the log."""


class EventLog:
    """Seqs are assigned at append; an event becomes visible to subscribers when the
    store publishes it (at once for the memory store, after its commit for Postgres)."""

    def __init__(self, session_id: str, ring_size: int, store: Store, last_seq: int = 0) -> None:
        self.session_id = session_id
        self._size = self.ring_size = ring_size
        self._ring: list[bytes] | None = None  # allocated at the first append
        self._store = store
        self.last_seq = last_seq  # the newest seq assigned
        self.published_seq = last_seq  # the newest seq subscribers may see
        self._first_kept = last_seq + 1  # the ring holds nothing older
        self.closed = False
        self.fenced = False  # another host owns the session now; unpublished events are void
        self.ticks = 0  # bumped by pulse(); lets idle subscribers time their keepalives
        self._changed = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._last_wake = -BUSY_WAKE_INTERVAL_S
        self._deferred_wake: asyncio.TimerHandle | None = None
        self._woken_seq = last_seq
        self._urgent_seq = 0  # the newest event that must not wait for a paced wake-up
        self._wake_batch = max(1, ring_size // 4)
        self._yielded_seq = last_seq

    @property
    def first_seq(self) -> int:
        """The oldest seq still in the ring (== published_seq + 1 when it holds nothing)."""
        return max(self._first_kept, self.last_seq - self._size + 1)

    def drop_ring(self) -> None:
        """Free the ring; reads of anything older than the next append go to the store."""
        self._ring = None
        self._first_kept = self.last_seq + 1

    def append(self, name: str, data: dict[str, Any]) -> int:
        """Assign the next seq, encode once, hand to the store (which publishes it).
        Never raises for bad data: an event that cannot be encoded becomes an `error`."""
        if self.closed:
            raise RuntimeError("append to a closed event log")
        seq = self.last_seq + 1
        try:
            frame, text = encode_event(seq, name, data)
        except (TypeError, ValueError) as exc:
            name, data = (
                "error",
                {"code": "encode_failed", "message": f"could not encode {name}: {exc}"},
            )
            frame, text = encode_event(seq, name, data)
        if self._ring is None:
            self._ring = [b""] * self._size
        self._ring[seq % self._size] = frame
        self.last_seq = seq
        if name in URGENT_EVENTS:
            self._urgent_seq = seq
        self._store.append(self, seq, name, text)
        return seq

    def crowded(self) -> bool:
        """True once a quarter of the ring has been appended since the last True. The
        producer then yields a loop pass, so subscribers write those events before the ring
        wraps under them: a CLI's messages are read in batches without one (sdk_reader)."""
        if self.last_seq - self._yielded_seq < self._wake_batch:
            return False
        self._yielded_seq = self.last_seq
        return True

    def publish(self, seq: int) -> None:
        """Events up to `seq` are durable: let subscribers have them."""
        if seq > self.published_seq and not self.fenced:
            self.published_seq = seq
            self._wake_soon()

    def close(self) -> None:
        """No more events; subscribers end once they have written everything published."""
        self.closed = True
        self._wake()

    def fence(self) -> None:
        """Another host took the session over: stop at what was published."""
        self.fenced = True
        self.close()

    @property
    def ended(self) -> bool:
        """Subscribers at published_seq have nothing more to wait for."""
        return self.closed and (self.fenced or self.published_seq == self.last_seq)

    def pulse(self) -> None:
        """Wake idle subscribers so they can write a keepalive or notice a dead socket."""
        self.ticks += 1
        self._wake()

    def _wake_soon(self) -> None:
        now = self._loop.time()
        PACE.count(self.session_id, now)
        urgent = self._woken_seq < self._urgent_seq <= self.published_seq
        if urgent or self.published_seq - self._woken_seq >= self._wake_batch:
            self._wake()  # a person waits on it; or a small ring must not fill up
            return
        if self._deferred_wake is not None:
            return  # this event rides on the wake-up already scheduled
        due = self._last_wake + PACE.interval
        if now >= due:
            self._wake()
        else:
            self._deferred_wake = self._loop.call_at(due, self._wake)

    def _wake(self) -> None:
        if self._deferred_wake is not None:
            self._deferred_wake.cancel()
            self._deferred_wake = None
        self._last_wake = self._loop.time()
        self._woken_seq = self.published_seq
        # set() resolves every current waiter; clear() right away re-arms for the next one.
        self._changed.set()
        self._changed.clear()

    async def wait(self) -> None:
        """Return at the next append, close or pulse. Callers check their cursor first."""
        await self._changed.wait()

    def check_cursor(self, after: int, *, durable: bool = False) -> None:
        """Raise CursorUnavailable unless every event after `after` can still be read
        (from the ring, or from the store when it is `durable`)."""
        if after > self.published_seq:
            raise CursorUnavailable(
                f"event id {after} is beyond the newest event ({self.published_seq})"
            )
        if not durable and after < self.first_seq - 1:
            raise CursorUnavailable(
                f"events after {after} are no longer available (oldest kept: {self.first_seq})"
            )

    def frames_after(self, after: int, limit: int) -> list[bytes]:
        """Up to `limit` published frames with seq > after, oldest first. O(k)."""
        self.check_cursor(after)
        end = min(self.published_seq, after + limit)
        ring, size = self._ring, self._size
        if ring is None:  # never filled, or dropped (check_cursor saw to older cursors)
            return []
        return [ring[seq % size] for seq in range(after + 1, end + 1)]
