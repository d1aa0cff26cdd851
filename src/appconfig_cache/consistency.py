"""Is the cache consistent with PostgreSQL? The monitor and ``appconfig-cache check``.

After Meta's Polaris: a cached view is *inconsistent* only if it still disagrees
with the database after the invalidation window, so a write in flight is never
reported. A check reads what the cache would serve now (the L1 entry, the
envelope Valkey holds if its generations and server epoch are current) and the
view through the DB-only path. A mismatch is a *suspect*; after the window it
is checked again, and it is *confirmed* only if the very same L1 entry (the
same object) or the very same envelope (the same bytes) is still served and
still disagrees with the database. Any write's invalidation would have replaced
it within the window, so concurrent writes never confirm.

Results are reported as nines: ``-log10(confirmed / checked)`` over a sliding
window of checks (docs/consistency.rst).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple
from uuid import UUID

from sqlalchemy.ext.asyncio import AsyncEngine

from .errors import CacheSettingsError
from .repositories.app_config_fragment import (
    AppConfigFragmentCacheSource,
    AppConfigFragmentRepository,
)
from .tiered import keys
from .tiered.broadcast import is_cluster
from .tiered.commands import server_epoch_of
from .tiered.envelope import BadEnvelope, decode_header
from .types import AppConfigData

__all__ = ["ConsistencyMonitor", "MonitorFigures", "ServedEnvelope", "nines", "served_envelope"]

_logger = logging.getLogger("appconfig_cache.consistency")

TIERS = ("l1", "l2")


# -- what Valkey would serve ---------------------------------------------------------------


class ServedEnvelope(NamedTuple):
    """An envelope a cache source would accept now: its bytes and its view."""

    raw: bytes
    view: AppConfigData


async def served_envelope(client: Any, user_id: UUID, name: str) -> ServedEnvelope | None:
    """The envelope of ``(user_id, name)`` if a cache source would accept it now, else None.

    Its generations and the server epoch are read from Valkey after it (never from a
    local reading), so "current" here is at least as strict as on the read path.
    Valkey errors are raised.
    """
    merged, user_gen = keys.merged_key(user_id, name), keys.user_gen_key(user_id)
    # one slot: the user's keys share the hash tag
    raw, raw_user_gen, raw_domain = await client.execute_command(
        "MGET", merged, user_gen, keys.user_domain_key(user_id)
    )
    if raw is None:
        return None
    try:
        header = decode_header(raw)
    except BadEnvelope:
        return None
    if header.user != str(user_id) or header.name != name:
        return None
    if raw_domain is not None and raw_domain.decode() != header.domain:
        return None  # the user moved domain: the read path rejects it too
    shared = [keys.PUBLIC_GEN, keys.name_gen_key(name)]
    if header.domain != keys.NO_DOMAIN:
        shared.append(keys.domain_gen_key(header.domain))
    pipe = client.pipeline(transaction=False)
    for key in shared:
        pipe.get(key)
    values = await pipe.execute()
    if is_cluster(client):
        info = await client.info("server", target_nodes=client.PRIMARIES)
    else:
        info = await client.info("server")
    current = [_int(v) for v in values]
    domain_gen = current[2] if len(current) > 2 else 0
    expected = [header.gens.public, header.gens.name, header.gens.domain, header.gens.user]
    if [current[0], current[1], domain_gen, _int(raw_user_gen)] != expected:
        return None
    if server_epoch_of(info) != header.epoch:
        return None
    try:
        view = AppConfigData.model_validate_json(raw[header.body :])
    except ValueError:
        return None
    return ServedEnvelope(raw, view)


def _int(raw: Any) -> int | None:
    try:
        return None if raw is None else int(raw)
    except (TypeError, ValueError):
        return None


def nines(checked: int, inconsistent: int) -> tuple[float | None, bool]:
    """``(nines, lower_bound)``: ``-log10(inconsistent / checked)``; with no inconsistency,
    ``log10(checked)`` as a lower bound (what that many checks can show). None: no checks."""
    if checked <= 0:
        return None, False
    if inconsistent <= 0:
        return round(math.log10(checked), 3), True
    return round(-math.log10(min(inconsistent, checked) / checked), 3), False


# -- the monitor ---------------------------------------------------------------------------


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
        from dataclasses import asdict

        return asdict(self)


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
    after that (see the module docstring). DB reads are rate-limited to
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
        self._verdicts: deque[tuple[float, bool]] = deque()  # (when, inconsistent)
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
        cutoff = self._timer() - self.nines_window
        verdicts = self._verdicts
        while verdicts and verdicts[0][0] < cutoff:
            verdicts.popleft()
        figures.window_checked = len(verdicts)
        figures.window_confirmed = sum(1 for _, bad in verdicts if bad)
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
        if still is None or not _same(still[1], suspect.token):
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
        self._verdicts.append((now, not consistent))

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


def _same(a: object, b: object) -> bool:
    """The same L1 entry (identity) or the same envelope (equal bytes)."""
    if isinstance(a, bytes) and isinstance(b, bytes):
        return a == b
    return a is b
