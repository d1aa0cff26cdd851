"""What a monitor has found: its counts, and the nines over a sliding window of verdicts."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any

from .served import TIERS


def nines(checked: int, inconsistent: int) -> tuple[float | None, bool]:
    """``(nines, lower_bound)``: ``-log10(inconsistent / checked)``; with no inconsistency,
    ``log10(checked)`` as a lower bound (what that many checks can show). None: no checks."""
    if checked <= 0:
        return None, False
    if inconsistent <= 0:
        return round(math.log10(checked), 3), True
    return round(-math.log10(min(inconsistent, checked) / checked), 3), False


@dataclass
class MonitorFigures:
    """What a :class:`ConsistencyMonitor` has found (all counts since it started)."""

    #: views put on the check queue (from L1 hits and from misses)
    sampled: int = 0
    #: samples whose verdict is in: consistent + cleared + confirmed
    checked: int = 0
    consistent: int = 0
    #: mismatches that did not persist after the window (a write in flight)
    cleared: int = 0
    confirmed: int = 0
    confirmed_by_tier: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TIERS, 0))
    #: samples not judged: valkey (error), db (error), not_cached, dropped (queue full)
    skipped: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(("valkey", "db", "not_cached", "dropped"), 0)
    )
    #: DB-only reads the monitor made
    db_loads: int = 0
    #: samples waiting for their first or second check
    pending: int = 0
    window_seconds: float = 0.0
    nines_window_seconds: float = 0.0
    #: checks and confirmed inconsistencies over the last ``nines_window_seconds``
    window_checked: int = 0
    window_confirmed: int = 0
    nines: float | None = None
    nines_lower_bound: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class VerdictWindow:
    """The verdicts of the last ``seconds``, to count checks and confirmed inconsistencies."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._verdicts: deque[tuple[float, bool]] = deque()  # (when, inconsistent)

    def add(self, now: float, *, inconsistent: bool) -> None:
        self._verdicts.append((now, inconsistent))

    def counts(self, now: float) -> tuple[int, int]:
        """``(checked, confirmed)`` over the window ending ``now`` (older verdicts are dropped)."""
        cutoff = now - self.seconds
        verdicts = self._verdicts
        while verdicts and verdicts[0][0] < cutoff:
            verdicts.popleft()
        return len(verdicts), sum(1 for _, bad in verdicts if bad)
