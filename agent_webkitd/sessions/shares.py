"""Fair shares of this host's sessions (DESIGN §13): `[sessions] max_sessions_per_principal`.

One principal may hold at most its share of sessions here, creates in flight counted, so
a burst of creates cannot slip past it; beyond it a create is 429
`principal_at_capacity` with Retry-After, and other principals are untouched. (The share
of live CLI processes is the AgentSlots', agents/slots.py.)
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator

from ..errors import ApiError
from ..metrics import Metrics

RETRY_AFTER_S = 5


class SessionShares:
    def __init__(self, share: int, metrics: Metrics) -> None:
        self.share = share  # 0: no share of its own
        self._metrics = metrics
        self._opening: Counter[str] = Counter()  # creates in flight, by principal

    @contextlib.contextmanager
    def opening(self, principal: str, held: int) -> Iterator[None]:
        """A create by `principal`, who holds `held` sessions here: 429 beyond its share."""
        held += self._opening[principal]
        if self.share and held >= self.share:
            self._metrics.capacity_rejections.inc({"reason": "principal_at_capacity"})
            raise ApiError(
                429,
                "principal_at_capacity",
                f"you hold {held} sessions on this server, the most one principal may;"
                " delete one, or retry when one has closed",
                {"Retry-After": str(RETRY_AFTER_S)},
            )
        self._opening[principal] += 1
        try:
            yield
        finally:
            self._opening[principal] -= 1
            if not self._opening[principal]:
                del self._opening[principal]
