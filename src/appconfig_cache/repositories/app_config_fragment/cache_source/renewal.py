"""Renewal: hot L1 entries outlive ``local_ttl`` while fresh generation readings confirm them.

Hits on an entry in the second half of its life put its user on
``LocalTier.due``. One background *refresh* reads the generations of every
user on it (and the shared generations getting old) in one pipelined round
trip per batch, and ``LocalTier`` renews the entries whose generations still
hold. A user who comes back after an entry expired unconfirmed waits for that
same refresh instead of a lookup of their own. Nothing here is needed for
correctness: a failed or skipped refresh only lets the entries expire.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from uuid import UUID

from ....tiered import keys
from ....tiered.bumps import Bumps
from ....tiered.local import LocalTier
from ....tiered.readings import Reading, Readings
from ....tiered.remote import Remote
from ....tiered.stats import CacheStats
from ....tiered.tasks import Background, Slot
from ....types import AppConfigData
from .generations import ViewGenerations

#: users whose generations one background refresh reads at most
_REFRESH_BATCH = 1000


@dataclass(eq=False)
class Renewal:
    """The background refresh of due generations, and the reads that wait for it."""

    local: LocalTier[AppConfigData]
    readings: Readings
    generations: ViewGenerations
    bumps: Bumps
    remote: Remote
    background: Background
    stats: CacheStats
    timer: Callable[[], float]

    def __post_init__(self) -> None:
        self._refresh = Slot(self.background, self._refresh_due)

    def after_hit(self) -> None:
        """An L1 hit happened: start the refresh if a hit put a user on ``due``."""
        if self.local.due and self._refresh.running is None:
            self._start()

    def _start(self) -> asyncio.Task[None] | None:
        try:
            return self._refresh.start()
        except RuntimeError:  # no running event loop: the entries expire instead
            return None

    async def _refresh_due(self) -> None:
        local = self.local
        try:
            await asyncio.sleep(0)  # let the hits of this loop iteration join the batch
            while local.due:
                if self.bumps.pending or not self.remote.available():
                    break
                now = self.timer()
                gen_keys = [keys.user_gen_key(u) for u in local.take_due(_REFRESH_BATCH)]
                gen_keys += self.readings.shared_due(now)
                epoch = self.readings.epoch_due(now)
                if not await self.generations.fetch(gen_keys, now, epoch=epoch):
                    break  # the entries expire instead; nothing else depends on it
                self.stats.gen_refreshes += 1
        finally:
            local.due.clear()

    async def renew_expired(self, user_id: UUID, names: list[str]) -> dict[str, AppConfigData]:
        """Views of ``names`` from expired L1 entries that fresh generations confirm.

        The user waits for the batched read of the generations, and the entries
        are renewed as the background would have (I4 as for any renewal). If a
        generation moved, the usual path.
        """
        local = self.local
        now = self.timer()
        expired = [name for name in names if local.expired_entry(user_id, name, now) is not None]
        if not expired:
            return {}
        if await self.user_gen_after(user_id, self.readings.next_request()) is None:
            return {}
        now = self.timer()
        out: dict[str, AppConfigData] = {}
        for name in expired:
            # again: an invalidation may have come while the read was waiting
            entry = local.expired_entry(user_id, name, now)
            if entry is not None and local.renew(entry, user_id, name, now):
                out[name] = entry.value
        return out

    async def user_gen_after(self, user_id: UUID, request: int) -> Reading | None:
        """A reading of the user's generation by a request sent after ``request``, or None
        if Valkey could not be asked.

        The user joins the background refresh (one pipeline for every user waiting);
        a refresh already in flight reads it in its next round trip. One wait at most:
        a refresh that stops early (breaker open, bumps pending) leaves it unread.
        """
        key = keys.user_gen_key(user_id)
        reading = self.readings.get(key, self.timer())
        if reading is None or reading.request <= request:
            self.local.due[user_id] = None
            refreshing = self._start()
            if refreshing is None:
                return None
            await asyncio.wait([refreshing])  # neither cancels it nor raises its error
            reading = self.readings.get(key, self.timer())
        if reading is None or reading.request <= request:
            return None
        return reading
