"""Shared parts of views: what every user of a domain has in common, read once per domain."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from cachetools import LRUCache

from ....tiered import keys
from ....tiered.flight import Flight, Flights, LeaderCancelled, settle, wait_flight
from ....tiered.readings import Readings
from ....tiered.stats import CacheStats
from ..db_source import SharedPart
from .generations import FillPlan

#: loads what every user of a domain (None: no domain) shares in the views of names
SharedLoader = Callable[[str | None, Sequence[str]], Awaitable[dict[str, SharedPart]]]

#: shared parts of views, by (domain, name), kept in process memory
_SHARED_PARTS = 4096


class SharedTag(NamedTuple):
    """The generations (public, name, domain) and server epoch a shared part was read under."""

    public: int | None
    name: int | None
    domain: int | None
    epoch: int | None


class _Kept(NamedTuple):
    tag: SharedTag
    part: SharedPart | None  # None: the name has no policy
    #: the request number taken before its query was sent
    request: int


@dataclass(eq=False)
class SharedParts:
    """Shared parts by ``(domain, name)``, each under the generations it was read at."""

    readings: Readings
    stats: CacheStats

    def __post_init__(self) -> None:
        self._kept: LRUCache[tuple[str, str], _Kept] = LRUCache(maxsize=_SHARED_PARTS)
        self._flights: Flights[SharedPart | None] = Flights()

    async def get(
        self,
        domain: str,
        names: list[str],
        plan: FillPlan,
        load: SharedLoader,
        *,
        after: int = 0,
    ) -> dict[str, SharedPart | None]:
        """The shared parts of ``names`` under ``plan``'s generations: memory, flight or DB.

        ``after``: only parts whose query was sent after request number ``after``;
        a name whose part is older and still loading is left out.
        """
        out: dict[str, SharedPart | None] = {}
        waits: list[tuple[str, asyncio.Future[SharedPart | None]]] = []
        lead: dict[str, tuple[SharedTag, Flight[SharedPart | None]]] = {}
        flights = self._flights
        request = self.readings.next_request()
        for name in names:
            tag = SharedTag(plan.public, plan.names[name], plan.domain_gen, plan.epoch)
            kept = self._kept.get((domain, name))
            if kept is not None and kept.tag == tag and kept.request > after:
                out[name] = kept.part
            elif (flight := flights.get((domain, name, tag))) is not None:
                if flight.since > after:
                    waits.append((name, flight.future))
            else:
                lead[name] = (tag, flights.start((domain, name, tag), request))
        if lead:
            out.update(await self._load(domain, lead, load, request))
        for name, future in waits:
            waited = await wait_flight(future)
            if not isinstance(waited, LeaderCancelled):  # else: a full load for this name
                out[name] = waited
        return out

    async def _load(
        self,
        domain: str,
        lead: dict[str, tuple[SharedTag, Flight[SharedPart | None]]],
        load: SharedLoader,
        request: int,
    ) -> dict[str, SharedPart | None]:
        flights = self._flights
        try:
            loaded = await load(None if domain == keys.NO_DOMAIN else domain, list(lead))
            self.stats.db_loads += 1
            self.stats.shared_loads += 1
        except BaseException as exc:
            for _tag, flight in lead.values():
                settle(flight.future, exc)
            raise
        finally:
            for name, (tag, flight) in lead.items():
                flights.finish((domain, name, tag), flight)
        out: dict[str, SharedPart | None] = {}
        for name, (tag, flight) in lead.items():
            part = loaded.get(name)
            self._kept[(domain, name)] = _Kept(tag, part, request)
            if not flight.future.done():
                flight.future.set_result(part)
            out[name] = part
        return out
