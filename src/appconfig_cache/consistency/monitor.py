"""The consistency monitor: samples what a cache source serves, checks it twice, keeps figures.

Sampling and scheduling live here; what Valkey would serve now is in ``served.py``, the
figures and the nines window in ``figures.py`` (the narrative: the package docstring).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from uuid import UUID

from sqlalchemy.ext.asyncio import AsyncEngine

from ..errors import CacheSettingsError
from ..repositories.app_config_fragment import (
    AppConfigFragmentCacheSource,
    AppConfigFragmentRepository,
)
from ..types import AppConfigData
from .figures import MonitorFigures, VerdictWindow, nines
from .served import same_token, served_envelope

# the package's name: the logger docs/consistency.rst tells operators to watch
_logger = logging.getLogger("appconfig_cache.consistency")


@dataclass(eq=False, slots=True)
class _Sample:
    user_id: UUID
    name: str
    due: float
    #: for a second check: the tier, the token served at the first check, when first seen
    tier: str = ""
    token: object = None
    first_seen: float = 0.0


class ConsistencyMonitor:
    """Samples the views a cache source serves and checks them against PostgreSQL.

    Opt-in and off the hot path: an L1 hit costs nothing (L1 keys are sampled in
    the background, ``sample_fraction`` of the hits since the last tick); a read
    that missed L1 is sampled with the same probability. Each sample is checked
    ``window`` seconds later (default ``local_ttl + timeout + probe_timeout``, the
    longest a served value may lag a write), and a mismatch once more a window
    after that (see the package docstring). DB reads are rate-limited to
    ``max_db_loads_per_second``; samples past ``max_pending`` are dropped (counted).

    ``start()`` runs :meth:`run_once` every ``interval`` seconds in a task;
    tests call :meth:`run_once` themselves with an injected ``timer``.
    """

    def __init__(
        self,
        cache: AppConfigFragmentCacheSource,
        engine: AsyncEngine,
        *,
        sample_fraction: float = 0.01,
        max_db_loads_per_second: float = 2.0,
        window: float | None = None,
        nines_window: float = 3600.0,
        interval: float = 1.0,
        max_pending: int = 1000,
        timer: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        if not 0.0 <= sample_fraction <= 1.0:
            raise CacheSettingsError("sample_fraction must be between 0 and 1")
        if max_db_loads_per_second <= 0 or nines_window <= 0 or interval <= 0:
            raise CacheSettingsError(
                "max_db_loads_per_second, nines_window and interval must be > 0"
            )
        if window is not None and window < 0:
            raise CacheSettingsError("window must be >= 0")
        if max_pending < 1:
            raise CacheSettingsError("max_pending must be >= 1")
        self.cache = cache
        self.sample_fraction = sample_fraction
        self.rate = max_db_loads_per_second
        self.window = (
            cache.local_ttl + cache.timeout + cache.probe_timeout if window is None else window
        )
        self.nines_window = nines_window
        self.interval = interval
        self.max_pending = max_pending
        self._timer = timer
        self._rng = rng if rng is not None else random.Random()
        self._db = AppConfigFragmentRepository(engine)  # the DB-only path
        self._first: deque[_Sample] = deque()
        self._second: deque[_Sample] = deque()
        self._tokens = 1.0
        self._tokens_at = timer()
        self._hits_seen = cache.stats.l1_hits
        self._verdicts = VerdictWindow(nines_window)
        self._logged: OrderedDict[tuple[UUID, str, str], None] = OrderedDict()
        self._figures = MonitorFigures(
            window_seconds=self.window, nines_window_seconds=nines_window
        )
        self._task: asyncio.Task[None] | None = None
        cache.observe_misses(self._on_miss)

    # -- figures --------------------------------------------------------------------------

    def figures(self) -> MonitorFigures:
        """The figures now (the nines over the sliding window included)."""
        figures = self._figures
        figures.window_checked, figures.window_confirmed = self._verdicts.counts(self._timer())
        figures.nines, figures.nines_lower_bound = nines(
            figures.window_checked, figures.window_confirmed
        )
        figures.pending = len(self._first) + len(self._second)
        return figures

    # -- sampling -------------------------------------------------------------------------

    def _on_miss(self, user_id: UUID, names: Sequence[str]) -> None:
        fraction = self.sample_fraction
        if fraction and self._rng.random() < fraction:
            self._add(user_id, self._rng.choice(list(names)), self._timer())

    def _sample_l1(self, now: float) -> None:
        hits = self.cache.stats.l1_hits
        new, self._hits_seen = hits - self._hits_seen, hits
        expected = new * self.sample_fraction
        k = int(expected) + (self._rng.random() < expected - int(expected))
        room = self.max_pending - len(self._first) - len(self._second)
        if k > room:
            self._figures.skipped["dropped"] += k - max(room, 0)
            k = room
        for user_id, name in self.cache.sample_local_keys(k, self._rng):
            self._add(user_id, name, now)

    def _add(self, user_id: UUID, name: str, now: float) -> None:
        if len(self._first) + len(self._second) >= self.max_pending:
            self._figures.skipped["dropped"] += 1
            return
        self._figures.sampled += 1
        self._first.append(_Sample(user_id, name, now + self.window))

    # -- checking -------------------------------------------------------------------------

    async def run_once(self) -> None:
        """Sample L1, then check every sample that is due, as far as the rate limit allows."""
        now = self._timer()
        self._sample_l1(now)
        for queue, check in ((self._second, self._confirm), (self._first, self._check)):
            while queue and queue[0].due <= now and self._take_token(now):
                await check(queue.popleft(), now)

    def _take_token(self, now: float) -> bool:
        self._tokens = min(max(self.rate, 1.0), self._tokens + (now - self._tokens_at) * self.rate)
        self._tokens_at = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True

    async def _served(self, sample: _Sample) -> dict[str, tuple[AppConfigData, object]] | None:
        """What each tier would serve now (value, token); None if Valkey failed."""
        served: dict[str, tuple[AppConfigData, object]] = {}
        local = self.cache.served_entry(sample.user_id, sample.name)
        if local is not None:
            served["l1"] = local
        try:
            envelope = await served_envelope(self.cache.client, sample.user_id, sample.name)
        except Exception:
            self._figures.skipped["valkey"] += 1
            return None
        if envelope is not None:
            served["l2"] = (envelope.view, envelope.raw)
        return served

    async def _db_view(self, sample: _Sample) -> AppConfigData | None:
        try:
            view = await self._db.app_config(sample.user_id, sample.name)
        except Exception:
            self._figures.skipped["db"] += 1
            return None
        self._figures.db_loads += 1
        return view

    async def _check(self, sample: _Sample, now: float) -> None:
        served = await self._served(sample)
        if served is None:
            return
        if not served:
            self._figures.skipped["not_cached"] += 1
            return
        db_view = await self._db_view(sample)
        if db_view is None:
            return
        wrong = [(tier, token) for tier, (view, token) in served.items() if view != db_view]
        if not wrong:
            self._verdict(now, consistent=True)
            return
        tier, token = wrong[0]  # L1 first: it is what this process serves
        self._second.append(
            _Sample(sample.user_id, sample.name, now + self.window, tier, token, now)
        )

    async def _confirm(self, suspect: _Sample, now: float) -> None:
        served = await self._served(suspect)
        if served is None:
            return
        still = served.get(suspect.tier)
        if still is None or not same_token(still[1], suspect.token):
            self._figures.cleared += 1  # replaced within the window: a write in flight
            self._verdict(now, consistent=True, cleared=True)
            return
        db_view = await self._db_view(suspect)
        if db_view is None:
            return
        if still[0] == db_view:
            self._figures.cleared += 1
            self._verdict(now, consistent=True, cleared=True)
            return
        self._figures.confirmed += 1
        self._figures.confirmed_by_tier[suspect.tier] += 1
        self._verdict(now, consistent=False)
        self._log_once(suspect, now)

    def _verdict(self, now: float, *, consistent: bool, cleared: bool = False) -> None:
        self._figures.checked += 1
        if consistent and not cleared:
            self._figures.consistent += 1
        self._verdicts.add(now, inconsistent=not consistent)

    def _log_once(self, suspect: _Sample, now: float) -> None:
        key = (suspect.user_id, suspect.name, suspect.tier)
        if key in self._logged:
            return
        self._logged[key] = None
        if len(self._logged) > 4096:
            self._logged.popitem(last=False)
        # no config contents: who, which document, which tier, how long it has disagreed
        _logger.warning(
            "confirmed cache inconsistency: user=%s name=%s tier=%s still served %.1fs after "
            "it first disagreed with the database",
            suspect.user_id,
            suspect.name,
            suspect.tier,
            now - suspect.first_seen,
        )

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Run :meth:`run_once` every ``interval`` seconds in a background task."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def _loop(self) -> None:
        while True:
            try:
                await self.run_once()
            except Exception:  # never let the monitor die of one bad sample
                _logger.exception("consistency monitor: a check failed")
            await asyncio.sleep(self.interval)

    async def aclose(self) -> None:
        """Stop the background task and stop sampling the cache source's misses."""
        self.cache.observe_misses(None)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
