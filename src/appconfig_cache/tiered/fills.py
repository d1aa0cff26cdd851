"""Background fills: envelopes are made and go to Valkey off the caller's latency, batched.

A store queues a function that makes its envelopes; the fill task calls it, so
encoding them costs the caller nothing either. A fill carries the generations
read before its DB query, so when it lands does not matter for correctness
(I3). Fills of concurrent reads (many users after a shared write, a warm-up)
share pipelined round trips instead of each taking a pool connection.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from .commands import Commands
from .failures import Failures
from .stats import CacheStats
from .tasks import Background, Slot

#: envelopes one fill round trip writes at most, and envelopes waiting at most
_FILL_BATCH = 256
_FILL_QUEUE_MAX = 20_000

#: ``(key, payload)`` pairs to ``SET``
Sets = list[tuple[str, bytes]]
#: makes the sets of one store when the fill task runs
MakeSets = Callable[[], Sets]


@dataclass(eq=False)
class FillQueue:
    """Envelopes waiting for Valkey; one task writes all that queued meanwhile."""

    commands: Commands
    background: Background
    stats: CacheStats
    failures: Failures

    def __post_init__(self) -> None:
        #: each store's maker, and how many sets it makes
        self._queue: list[tuple[MakeSets, int]] = []
        self._queued = 0
        self._flush = Slot(self.background, self._flush_all)

    def add(self, make: MakeSets, count: int) -> None:
        """Queue the ``count`` sets ``make()`` returns; the fill task calls it."""
        if self._queued >= _FILL_QUEUE_MAX:
            # too much waits: make them now (the maker also weighs L1 entries), send none
            self.stats.fills_skipped += len(self._make(make))
            return
        self._queue.append((make, count))
        self._queued += count
        self._flush.start()

    async def _flush_all(self) -> None:
        await asyncio.sleep(0)  # let this loop iteration's reads add theirs
        while self._queue:
            queued, self._queue, self._queued = self._queue, [], 0
            sets = [pair for make, _count in queued for pair in self._make(make)]
            for start in range(0, len(sets), _FILL_BATCH):
                await self._write(sets[start : start + _FILL_BATCH])

    def _make(self, make: MakeSets) -> Sets:
        try:
            return make()
        except Exception as exc:  # a bug in one store must not stop the others' fills
            self.failures.log("making a fill failed", exc)
            return []

    async def _write(self, sets: Sets) -> None:
        if not self.commands.remote.available():
            self.stats.fills_skipped += len(sets)
            return
        try:
            await self.commands.fill(sets)
        except Exception as exc:  # a failed fill is only a lost shortcut
            self.stats.fills_skipped += len(sets)
            self.failures.log("valkey fill failed", exc)
        else:
            self.stats.fills += len(sets)
