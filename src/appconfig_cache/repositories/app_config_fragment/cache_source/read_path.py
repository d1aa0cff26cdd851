"""The read path after an L1 miss: single flight, then the miss pipeline.

``resolve`` joins or leads one flight per ``(user, name)`` (I9); a read that
starts after an invalidation never joins an older flight (I2). The leader's
``fetch`` tries, in order, each step only for the names still missing:

1. expired L1 entries renewed by fresh generations (:mod:`.renewal`);
2. stale L1 entries recomposed after a local shared write (:mod:`.recompose`);
3. the Valkey lookup (:mod:`.lookup`);
4. outdated envelopes recomposed (:mod:`.recompose`);
5. the DB load, stored in both tiers under the generations read before it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from uuid import UUID

from ....tiered.bumps import Bumps
from ....tiered.flight import Flight, Flights, LeaderCancelled, settle, wait_flight
from ....tiered.local import LocalTier
from ....tiered.remote import Remote
from ....tiered.stats import CacheStats
from ....tiered.tasks import Background
from ....types import AppConfigData
from ..db_source import LoadedViews
from .generations import FillPlan
from .lookup import Lookup
from .recompose import Recomposer
from .renewal import Renewal
from .shared_parts import SharedLoader
from .store import Store

_logger = logging.getLogger("appconfig_cache.cache")

#: loads the merged views of names for a user from the database
Loader = Callable[[UUID, Sequence[str]], Awaitable[LoadedViews]]

_Started = list[tuple[str, Flight[AppConfigData]]]


@dataclass(eq=False)
class ReadPath:
    """Flights of view loads, and the steps a leader takes for the names it loads."""

    #: a lone flight (nothing to join) is led in the caller's task, without a task switch
    lead_inline = True

    local: LocalTier[AppConfigData]
    bumps: Bumps
    remote: Remote
    renewal: Renewal
    recomposer: Recomposer
    lookup: Lookup
    store: Store
    background: Background
    stats: CacheStats
    timer: Callable[[], float]

    def __post_init__(self) -> None:
        self._flights: Flights[AppConfigData] = Flights()
        #: given the seconds of each DB load (None: nothing is timed)
        self.observe_db_load: Callable[[float], None] | None = None

    async def resolve(
        self, user_id: UUID, names: Sequence[str], loader: Loader, shared: SharedLoader | None
    ) -> dict[str, AppConfigData]:
        local = self.local
        domain = local.domains.get(user_id)
        waits: list[tuple[str, asyncio.Future[AppConfigData]]] = []
        lead: list[str] = []
        for name in names:
            flight = self._flights.get((user_id, name))
            # A read that starts after an invalidation must not join an older flight (I2).
            if flight is not None and not local.stale_since(flight.since, user_id, name, domain):
                self.stats.flights_joined += 1
                waits.append((name, flight.future))
            else:
                lead.append(name)
        if lead:
            version = local.version
            started = [(name, self._flights.start((user_id, name), version)) for name in lead]
            if not waits and self.lead_inline:
                # Nothing to join: load in this task, without a task switch. If this
                # caller is cancelled, its flights are cancelled and joiners take over.
                await self._lead(user_id, started, loader, version, shared)
                return {name: flight.future.result() for name, flight in started}
            waits.extend((name, flight.future) for name, flight in started)
            self.background.spawn(self._lead(user_id, started, loader, version, shared))
        return {
            name: await self._join(user_id, name, future, loader, shared) for name, future in waits
        }

    async def _join(
        self,
        user_id: UUID,
        name: str,
        future: asyncio.Future[AppConfigData],
        loader: Loader,
        shared: SharedLoader | None,
    ) -> AppConfigData:
        """Wait for another read's load; if that read was cancelled, load it ourselves."""
        value = await wait_flight(future)
        if not isinstance(value, LeaderCancelled):
            return value
        return (await self.resolve(user_id, [name], loader, shared))[name]

    async def _lead(
        self,
        user_id: UUID,
        started: _Started,
        loader: Loader,
        version: int,
        shared: SharedLoader | None,
    ) -> None:
        names = [name for name, _ in started]
        try:
            found = await self._fetch(user_id, names, loader, version, shared)
        except BaseException as exc:  # the DB failed: every waiter gets the error
            for _, flight in started:
                settle(flight.future, exc)
            if not isinstance(exc, Exception):
                raise
        else:
            for name, flight in started:
                if not flight.future.done():
                    flight.future.set_result(found[name])
        finally:
            for name, flight in started:
                self._flights.finish((user_id, name), flight)

    async def _fetch(
        self,
        user_id: UUID,
        names: list[str],
        loader: Loader,
        version: int,
        shared: SharedLoader | None,
    ) -> dict[str, AppConfigData]:
        found: dict[str, AppConfigData] = {}
        # L1 entries that expired, or that only a shared write made stale, may still
        # serve with one batched read of the generations (neither with Valkey unusable).
        if self.local.maxsize and not self.bumps.pending and self.remote.available():
            found = await self.renewal.renew_expired(user_id, names)
            if shared is not None and len(found) < len(names):
                rest = [name for name in names if name not in found]
                found.update(await self.recomposer.from_l1(user_id, rest, version, shared))
            names = [name for name in names if name not in found]
            if not names:
                return found
        plan: FillPlan | None = None
        # catch_up() is a coroutine only needed when bumps wait to be replayed
        bumps = self.bumps
        if await bumps.catch_up() if bumps.pending else self.remote.available():
            looked = await self.lookup.find(user_id, names, version, self.timer())
            if looked is not None:
                found.update(looked.found)
                missing = [name for name in names if name not in found]
                if missing:
                    plan = await self.lookup.plan(user_id, missing, looked)
                if plan is not None and shared is not None and looked.reusable:
                    found.update(
                        await self.recomposer.from_envelopes(
                            user_id, missing, looked, plan, version, shared
                        )
                    )
        else:
            self.stats.l2_skipped += len(names)
        missing = [name for name in names if name not in found]
        if not missing:
            return found
        started = self.timer()
        observe = self.observe_db_load
        clock = time.perf_counter() if observe is not None else 0.0
        loaded = await loader(user_id, missing)
        if observe is not None:
            observe(time.perf_counter() - clock)
        self.stats.db_loads += 1
        if _logger.isEnabledFor(logging.DEBUG):
            _logger.debug("db load user=%s names=%s", user_id, missing)
        found.update((name, loaded.views[name]) for name in missing)
        self.store.put_loaded(user_id, missing, loaded, plan, version, started)
        return found
