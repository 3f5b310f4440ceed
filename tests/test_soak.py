"""The soak (bench/soak.py, `make soak`), bounded: 10 sessions x 3 subscribers for 25 s
of mixed turns, racing decisions, interrupts, reconnects, deletes, hibernations and
wakes. No 5xx, no lost or repeated event id, exactly one winner per decision, no CLI
process left, a clean exit. (Memory and descriptor growth is judged by `make soak`.)"""

from __future__ import annotations

from pathlib import Path

from bench.soak import report, run


async def test_a_short_soak_holds_every_invariant(tmp_path: Path) -> None:
    result = await run(25.0, 10, 3, tmp_path)
    assert result["failures"] == [], report(result)
    assert result["turns"] > 50 and result["decisions_raced"] > 10 and result["wakes"] > 5, report(result)
