"""Background fills: envelopes go to Valkey off the caller's latency, batched.

A fill carries the generations read before its DB query, so when it lands
does not matter for correctness (I3). Fills of concurrent reads (many users
after a shared write, a warm-up) share pipelined round trips instead of each
taking a pool connection.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from .commands import Commands
from .failures import Failures
from .stats import CacheStats
from .tasks import Background, Slot

#: envelopes one fill round trip writes at most, and envelopes waiting at most
_FILL_BATCH = 256
_FILL_QUEUE_MAX = 20_000


@dataclass(eq=False)
class FillQueue:
    """Envelopes waiting for Valkey; one task writes all that queued meanwhile."""

    commands: Commands
    background: Background
    stats: CacheStats
    failures: Failures

    def __post_init__(self) -> None:
        self._queue: list[tuple[str, bytes]] = []
        self._flush = Slot(self.background, self._flush_all)

    def add(self, sets: list[tuple[str, bytes]]) -> None:
        if len(self._queue) >= _FILL_QUEUE_MAX:
            self.stats.fills_skipped += len(sets)
            return
        self._queue.extend(sets)
        self._flush.start()

    async def _flush_all(self) -> None:
        await asyncio.sleep(0)  # let this loop iteration's reads add theirs
        while self._queue:
            batch = self._queue[:_FILL_BATCH]
            del self._queue[:_FILL_BATCH]
            await self._write(batch)

    async def _write(self, sets: list[tuple[str, bytes]]) -> None:
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
