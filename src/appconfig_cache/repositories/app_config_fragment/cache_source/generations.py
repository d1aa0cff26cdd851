"""Which generations a view depends on, what they read now, and fill plans.

A view of ``(user, name)`` for a user of ``domain`` depends on four
generations: ``public``, the name's, the domain's (0 for a user without a
domain) and the user's. An envelope is current when it carries all four as
they read now, under the current server epoch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple
from uuid import UUID

from ....tiered import keys
from ....tiered.bumps import gen_base
from ....tiered.commands import Commands
from ....tiered.failures import Failures
from ....tiered.keys import Gens
from ....tiered.readings import Readings


class Current(NamedTuple):
    """The generations a view must carry now, and when the oldest of them was read."""

    gens: Gens
    oldest: float


@dataclass(frozen=True, slots=True)
class FillPlan:
    """The generations read *before* a DB query (or a recomposition), for new envelopes."""

    domain: str | None  # None: the user's domain was not known before the query
    public: int | None
    names: Mapping[str, int | None]
    domain_gen: int | None
    user: int | None
    user_domain: str | None  # what Valkey's user_domain key said
    epoch: int | None
    #: when the generations were read (the oldest reading, for an L1 deadline)
    read_at: float
    #: with ``domain`` None: the domain generations this process had read (domain ->
    #: value), so the domain the DB load tells can still be filled under one of them
    domain_gens: Mapping[str, int] = field(default_factory=dict)

    def under(self, domain: str) -> FillPlan | None:
        """This plan for a view of a user of ``domain`` (None: no generation of it)."""
        if self.domain == domain:
            return self
        if self.domain is not None:
            return None  # read for another domain: the user moved
        gen = 0 if domain == keys.NO_DOMAIN else self.domain_gens.get(domain)
        if gen is None:
            return None
        return dataclasses.replace(self, domain=domain, domain_gen=gen, domain_gens={})

    def gens(self, name: str) -> Gens | None:
        by_name = self.names.get(name)
        if self.public is None or by_name is None or self.domain_gen is None or self.user is None:
            return None
        return Gens(self.public, by_name, self.domain_gen, self.user)


def shared_gen_keys(names: list[str], domain: str | None) -> list[str]:
    """The public, name and (if any) domain generation keys of views of ``names``."""
    gen_keys = [keys.PUBLIC_GEN, *map(keys.name_gen_key, names)]
    if domain:
        gen_keys.append(keys.domain_gen_key(domain))
    return gen_keys


@dataclass(eq=False)
class ViewGenerations:
    """Reads, records and, for fills, creates the generations of views."""

    readings: Readings
    commands: Commands
    failures: Failures

    def current(self, name: str, domain: str, user_gen: int | None, now: float) -> Current | None:
        """The generations an envelope of ``name`` must carry now (None: not all known)."""
        readings = self.readings
        public = readings.get(keys.PUBLIC_GEN, now)
        by_name = readings.get(keys.name_gen_key(name), now)
        if public is None or by_name is None or public.value is None or by_name.value is None:
            return None
        if user_gen is None:
            return None
        oldest = min(public.read_at, by_name.read_at)
        domain_gen = 0
        if domain != keys.NO_DOMAIN:
            by_domain = readings.get(keys.domain_gen_key(domain), now)
            if by_domain is None or by_domain.value is None:
                return None
            domain_gen = by_domain.value
            oldest = min(oldest, by_domain.read_at)
        return Current(Gens(public.value, by_name.value, domain_gen, user_gen), oldest)

    def stale(self, gen_keys: list[str], now: float, *, since: int = -1) -> list[str]:
        """Those of ``gen_keys`` without a reading younger than ``ttl`` by a request
        numbered above ``since``."""
        readings = self.readings
        return [
            key
            for key in gen_keys
            if (reading := readings.get(key, now)) is None or reading.request <= since
        ]

    async def fetch(
        self, gen_keys: list[str], now: float, *, epoch: bool = False, create: bool = False
    ) -> bool:
        """Read generations (and the epoch when due, or asked for) in one round trip;
        ``create``: create absent ones at a random base (``SET NX GET``).

        False if Valkey failed or answered something else; the failure is logged.
        """
        readings = self.readings
        request = readings.next_request()
        bases = [gen_base() for _ in gen_keys] if create else None
        try:
            values = await self.commands.read_gens(gen_keys, now, request, epoch=epoch, bases=bases)
        except Exception as exc:  # failures, and replies of another shape
            self.failures.log("valkey generation read failed", exc)
            return False
        for key, value in zip(gen_keys, values, strict=True):
            readings.put(key, value, now, request)
            if key.startswith(keys.USER_GEN_PREFIX):
                readings.user_held_since(key, value)
        return True

    async def plan(
        self,
        user_id: UUID,
        names: list[str],
        domain: str | None,
        user_gen: int | None,
        user_domain: str | None,
        now: float,
    ) -> FillPlan | None:
        """Gather the generations for filling ``names``, from the readings (taken before
        the DB query); create absent ones (random base) in a round trip of their own.

        The lookup reads or creates every generation it can name, so that round trip
        is for generations gone since (an eviction, a restart). A domain whose
        generation was not read is left out: the plan then carries the domain
        generations this process has read, one of which may be the user's.
        """
        readings = self.readings
        if (
            domain is not None
            and domain != keys.NO_DOMAIN
            and readings.get(keys.domain_gen_key(domain), now) is None
        ):
            domain = None  # not read: no round trip for it before the answer
        known: dict[str, int | None] = {}
        for key in shared_gen_keys(names, None if domain == keys.NO_DOMAIN else domain):
            reading = readings.get(key, now)
            known[key] = None if reading is None else reading.value
        user_key = keys.user_gen_key(user_id)
        known[user_key] = user_gen
        absent = [key for key, value in known.items() if value is None]
        if absent:
            request = readings.next_request()
            try:
                created = await self.commands.create_gens({key: gen_base() for key in absent})
            except Exception as exc:
                self.failures.log("valkey generation init failed", exc)
                return None
            for key, value in zip(absent, created, strict=True):
                known[key] = value
                if key != user_key:
                    readings.put(key, value, now, request)
        domain_gen: int | None = 0
        domain_gens: dict[str, int] = {}
        if domain is None:
            domain_gen = None
            skip = len(keys.DOMAIN_GEN_PREFIX)
            fresh = readings.fresh_values(keys.DOMAIN_GEN_PREFIX, now)
            domain_gens = {key[skip:]: value for key, value in fresh.items()}
        elif domain != keys.NO_DOMAIN:
            domain_gen = known[keys.domain_gen_key(domain)]
        return FillPlan(
            domain=domain,
            public=known[keys.PUBLIC_GEN],
            names={name: known[keys.name_gen_key(name)] for name in names},
            domain_gen=domain_gen,
            user=known[user_key],
            user_domain=user_domain,
            epoch=readings.epoch(now),
            read_at=now,
            domain_gens=domain_gens,
        )
