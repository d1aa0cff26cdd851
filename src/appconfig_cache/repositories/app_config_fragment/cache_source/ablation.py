"""Ablation: each speed mechanism can be turned off, to measure what it gains.

``APPCONFIG_CACHE_ABLATE`` (a comma-separated list of the names below), read
once when a cache source is made, swaps in a variant without the mechanism.
It exists for ``docs/design.rst``'s ablation table and changes no result,
only how the cache gets it. Unset, nothing here runs.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from uuid import UUID

from ....errors import CacheSettingsError
from ....tiered.fills import FillQueue, MakeSets
from ....tiered.local import Entry, LocalTier
from ....types import AppConfigData
from .generations import FillPlan
from .lookup import Looked
from .policy_names import PolicyNames, ViewsReader
from .read_path import ReadPath
from .recompose import Recomposer
from .renewal import Renewal
from .shared_parts import SharedLoader

ENV = "APPCONFIG_CACHE_ABLATE"
MECHANISMS = (
    "parse_memo",
    "l1_recompose",
    "envelope_recompose",
    "renewal",
    "renewal_wait",
    "fill_batching",
    "inline_lead",
    "bootstrap_guess",
)


def ablated() -> frozenset[str]:
    """The mechanisms ``APPCONFIG_CACHE_ABLATE`` turns off."""
    names = frozenset(n.strip() for n in os.environ.get(ENV, "").split(",") if n.strip())
    if unknown := names - set(MECHANISMS):
        raise CacheSettingsError(f"{ENV}: unknown mechanisms {sorted(unknown)}; know {MECHANISMS}")
    return names


class PolicyNamesWithoutGuess(PolicyNames):
    """A bootstrap with an expired names list checks the list first, then reads."""

    async def bootstrap(
        self, loader: Callable[[], Awaitable[list[str]]], read: ViewsReader
    ) -> list[AppConfigData]:
        return await read(await self.get(loader))


class LocalTierWithoutRenewal(LocalTier[AppConfigData]):
    """An entry simply expires at ``local_ttl``."""

    def renew(self, entry: Entry[AppConfigData], user_id: UUID, name: str, now: float) -> bool:
        return False


class RenewalWithoutWait(Renewal):
    """A user back after the deadline takes the lookup instead of the refresh."""

    async def renew_expired(self, user_id: UUID, names: list[str]) -> dict[str, AppConfigData]:
        return {}


class RecomposerWithout(Recomposer):
    """Recomposition from L1 (``l1_off``), from envelopes (``envelopes_off``), or both, off."""

    l1_off = False
    envelopes_off = False

    async def from_l1(
        self, user_id: UUID, names: list[str], version: int, load: SharedLoader
    ) -> dict[str, AppConfigData]:
        return {} if self.l1_off else await super().from_l1(user_id, names, version, load)

    async def from_envelopes(
        self,
        user_id: UUID,
        names: list[str],
        looked: Looked,
        plan: FillPlan,
        version: int,
        load: SharedLoader,
    ) -> dict[str, AppConfigData]:
        if self.envelopes_off:
            return {}
        return await super().from_envelopes(user_id, names, looked, plan, version, load)


class UnbatchedFills(FillQueue):
    """Each store writes its own envelopes, in its own task and round trip."""

    def add(self, make: MakeSets, count: int) -> None:
        self.background.spawn(self._write_one(make))

    async def _write_one(self, make: MakeSets) -> None:
        await self._write(self._make(make))


class ReadPathLeadingInTasks(ReadPath):
    """A lone flight is led in a new task, as when there are joiners."""

    lead_inline = False
