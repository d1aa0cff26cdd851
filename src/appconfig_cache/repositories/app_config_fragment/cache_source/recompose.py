"""Recomposition: views rebuilt after a shared write without a query per user.

A view is the user's part (their own fragment, or its absence) merged with a
*shared part* (the policy chain and the public and domain fragments), which
every user of a domain has in common. When only shared scopes changed, the
user part of the old view still holds: pair it with a shared part read under
fresh generations (one query per domain, see :mod:`.shared_parts`) and the
result is the view a DB load would return.

Two sources of old views:

- **from L1**: an entry that only a local shared write made stale (never
  served, but kept). No lookup, no envelope parsed; one read of the user's
  generation after the shared query confirms the user part held across it.
- **from envelopes**: an outdated envelope whose user generation still holds
  (the lookup found it). The shared generations are read again first.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple
from uuid import UUID

from ....merge import build_view
from ....tiered.envelope import Candidate, EnvelopeReader
from ....tiered.local import LocalTier
from ....tiered.readings import Readings
from ....tiered.stats import CacheStats
from ....types import AppConfigData, AppConfigScopeType
from ..db_source import SharedPart
from .generations import FillPlan, ViewGenerations, shared_gen_keys
from .lookup import Looked
from .renewal import Renewal
from .shared_parts import SharedLoader, SharedParts
from .store import Store


class _Old(NamedTuple):
    """An old view, and whether its chain had the user scope."""

    view: AppConfigData
    had_user_scope: bool


@dataclass(eq=False)
class Recomposer:
    """Rebuilds views from old ones whose user part still holds."""

    local: LocalTier[AppConfigData]
    readings: Readings
    generations: ViewGenerations
    envelopes: EnvelopeReader[AppConfigData]
    shared_parts: SharedParts
    renewal: Renewal
    store: Store
    stats: CacheStats
    timer: Callable[[], float]

    async def from_l1(
        self, user_id: UUID, names: list[str], version: int, load: SharedLoader
    ) -> dict[str, AppConfigData]:
        """Views of ``names`` rebuilt from live L1 entries that shared writes made stale.

        The shared part is read by a query sent after the entry was stored, under
        fresh generation readings (a local write's bump is one). The pair is a view
        that existed if the user's generation still holds after that query.
        """
        now = self.timer()
        server = self.readings.epoch(now)
        if server is None:
            return {}
        olds: dict[str, _Old] = {}
        fresh: dict[str, int | None] = {}
        # the entries' domain and user generation, and the shared readings' public and
        # domain generations: every name rebuilt here must agree on them
        under: tuple[str, int, int, int] | None = None
        read_at, after = now, 0
        for name in names:
            entry = self.local.stale_entry(user_id, name, now)
            if entry is None or entry.basis is None or entry.domain is None:
                continue
            gens = entry.basis.gens
            current = self.generations.current(name, entry.domain, gens.user, now)
            # no fresh readings; or a public-scope invalidation (the operators' flush)
            # or a restart since the entry was made: the usual path
            if (
                current is None
                or entry.basis.server != server
                or current.gens.public != gens.public
            ):
                continue
            key = (entry.domain, gens.user, current.gens.public, current.gens.domain)
            under = under or key
            if key == under:
                olds[name] = _Old(entry.value, bool(entry.user_scope))
                fresh[name] = current.gens.name
                read_at = min(read_at, current.oldest)
                after = max(after, entry.request)
        if under is None or not olds:
            return {}
        domain, user_gen, public, domain_gen = under
        plan = FillPlan(domain, public, fresh, domain_gen, user_gen, None, server, read_at)
        parts = await self.shared_parts.get(domain, list(olds), plan, load, after=after)
        confirmed = await self.renewal.user_gen_after(user_id, self.readings.next_request())
        if confirmed is None or confirmed.value != user_gen:
            return {}  # the user wrote meanwhile (or no reading): the usual path
        plan = dataclasses.replace(plan, read_at=min(plan.read_at, confirmed.read_at))
        views = self._rebuild(user_id, olds, parts, plan, version)
        self.stats.l1_recomposed += len(views)
        return views

    async def from_envelopes(
        self,
        user_id: UUID,
        names: list[str],
        looked: Looked,
        plan: FillPlan,
        version: int,
        load: SharedLoader,
    ) -> dict[str, AppConfigData]:
        """Views of ``names`` rebuilt from outdated envelopes whose user part holds.

        The shared generations are read again first: the user part is as new as
        the lookup, so the shared part must be too (generations cached up to
        ``local_ttl`` ago could pair a new user fragment with an old domain
        fragment, a view that never existed). Those generations go into the new
        envelopes as for a DB load (I3).
        """
        domain, server = plan.domain, plan.epoch
        if domain is None or server is None or plan.user is None:
            return {}
        candidates: list[Candidate] = [
            found
            for name in names
            if (found := looked.reusable.get(name)) is not None
            and found.header.domain == domain
            # A public-scope invalidation (the operators' flush) reloads everything.
            and found.header.gens.public == plan.public
        ]
        if not candidates:
            return {}
        now = self.timer()
        # The user part has held since looked.user_since: a shared reading requested
        # after that describes a moment when both held. Older ones (say, from before
        # a shared write that came before the user's) are read again.
        gen_keys = shared_gen_keys([c.name for c in candidates], domain or None)
        stale = self.generations.stale(gen_keys, now, since=looked.user_since)
        if stale and not await self.generations.fetch(stale, now):
            return {}
        fresh: dict[str, int | None] = {}
        olds: dict[str, _Old] = {}
        public, domain_gen, read_at = 0, 0, plan.read_at
        for candidate in candidates:
            name, header = candidate.name, candidate.header
            current = self.generations.current(name, domain, plan.user, now)
            if (
                current is None
                or current.gens.public != header.gens.public
                or self.readings.epoch(now) != server
            ):
                continue
            old = self.envelopes.value(user_id, name, candidate.raw, header)
            if old is not None:
                fresh[name] = current.gens.name
                olds[name] = _Old(old, bool(header.user_scope))
                public, domain_gen = current.gens.public, current.gens.domain
                read_at = min(read_at, current.oldest)
        if not olds:
            return {}
        plan = FillPlan(
            domain, public, fresh, domain_gen, plan.user, plan.user_domain, server, read_at
        )
        parts = await self.shared_parts.get(domain, list(olds), plan, load)
        views = self._rebuild(user_id, olds, parts, plan, version)
        self.stats.recomposed += len(views)
        return views

    def _rebuild(
        self,
        user_id: UUID,
        olds: dict[str, _Old],
        parts: dict[str, SharedPart | None],
        plan: FillPlan,
        version: int,
    ) -> dict[str, AppConfigData]:
        """Merge each old view's user part with the new shared part, and store the results
        under ``plan`` as a DB load's."""
        views: dict[str, AppConfigData] = {}
        chains: dict[str, tuple[AppConfigScopeType, ...]] = {}
        for name, (old, had_user) in olds.items():
            part = parts.get(name)
            if part is None or (AppConfigScopeType.USER in part.chain and not had_user):
                continue  # no policy now, or the user scope is new to the chain: a full load
            own = [f for f in old.fragments if f.scope_type is AppConfigScopeType.USER]
            views[name] = build_view(user_id, name, part.chain, (*part.fragments, *own))
            chains[name] = part.chain
        if views:
            # L1: local_ttl after the oldest reading used (the lookup's or a shared one).
            self.store.put_computed(
                user_id, views, chains, plan.domain, plan, version, plan.read_at
            )
        return views
