"""The store: the one writer of L1 entries, and of the envelopes queued for Valkey."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import KW_ONLY, dataclass
from typing import NamedTuple
from uuid import UUID

from ....tiered import keys
from ....tiered.envelope import EnvelopeReader, Parsed, encode_envelope
from ....tiered.fills import FillQueue, Sets
from ....tiered.local import Basis, Entry, LocalTier
from ....tiered.readings import Readings
from ....tiered.stats import CacheStats
from ....tiered.weights import UNWEIGHED, json_weight
from ....types import AppConfigData, AppConfigScopeType
from ..db_source import LoadedViews
from .generations import FillPlan


@dataclass(eq=False)
class Store:
    """Puts views in L1 now and their envelopes on the fill queue.

    An envelope carries the generations read before the view's DB query (the
    :class:`FillPlan`), so when the background write lands does not matter for
    correctness (I3). Without a plan (Valkey unusable) a view goes to L1 only.
    """

    local: LocalTier[AppConfigData]
    readings: Readings
    envelopes: EnvelopeReader[AppConfigData]
    fills: FillQueue
    stats: CacheStats
    _: KW_ONLY
    local_ttl: float
    max_value_bytes: int

    def keep_hit(
        self,
        user_id: UUID,
        name: str,
        parsed: Parsed[AppConfigData],
        domain: str,
        version: int,
        expires: float,
        basis: Basis,
        request: int,
        user_scope: bool | None,
    ) -> None:
        """A current envelope's view, read from Valkey."""
        if self.local.enabled:  # weighing the view costs a pass over its bytes
            self.local.put(
                user_id, name, parsed.value, domain, version, expires, basis,
                request=request, user_scope=user_scope, weight=parsed.view_weight,
            )  # fmt: skip

    def put_loaded(
        self,
        user_id: UUID,
        names: list[str],
        loaded: LoadedViews,
        plan: FillPlan | None,
        version: int,
        started: float,
    ) -> None:
        """Views of a DB load, which also told the user's domain."""
        domain = loaded.domain or keys.NO_DOMAIN
        self.local.domains[user_id] = domain
        kept = self._put(user_id, names, loaded, domain, plan, version, started)
        domain_set = (
            [(keys.user_domain_key(user_id), domain.encode())]
            if plan is not None and plan.user_domain != domain
            else []
        )
        if kept or domain_set:
            self.fills.add(lambda: self._finish(user_id, domain, kept) + domain_set,
                           len(kept) + len(domain_set))  # fmt: skip

    def put_computed(
        self,
        user_id: UUID,
        views: Mapping[str, AppConfigData],
        chains: Mapping[str, tuple[AppConfigScopeType, ...]],
        domain: str | None,
        plan: FillPlan | None,
        version: int,
        started: float,
    ) -> None:
        """Views computed without a DB load (recomposed, or given by a caller).

        ``domain`` is what this process believes (None: unknown; L1 then treats
        any domain invalidation as concerning them).
        """
        loaded = LoadedViews(
            domain=domain, views=dict(views), with_policy=frozenset(views), chains=dict(chains)
        )
        kept = self._put(user_id, list(views), loaded, domain, plan, version, started)
        if kept:
            self.fills.add(lambda: self._finish(user_id, domain, kept), len(kept))

    def _put(
        self,
        user_id: UUID,
        names: list[str],
        loaded: LoadedViews,
        domain: str | None,
        plan: FillPlan | None,
        version: int,
        started: float,
    ) -> list[_Kept]:
        """Put each view with a policy in L1 at once, with an estimated weight; the rest
        (its JSON, its weight, its envelope) is for :meth:`_finish`, off the caller's
        latency."""
        expires = started + self.local_ttl
        request = self.readings.next_request()
        # the plan's generations fit only views of the domain it was read for
        fitting = None if plan is None or domain is None else plan.under(domain)
        server = None if fitting is None else fitting.epoch
        kept: list[_Kept] = []
        for name in names:
            if name not in loaded.with_policy:
                continue  # never cache a name without a policy
            view = loaded.views[name]
            gens = None if fitting is None or server is None else fitting.gens(name)
            basis = None if gens is None or server is None else Basis(gens, server)
            user_scope = _has_user_scope(loaded.chains.get(name))
            entry = self.local.put(
                user_id, name, view, domain, version, expires, basis,
                request=request, user_scope=user_scope, weight=UNWEIGHED,
            )  # fmt: skip
            fill = plan is not None and basis is not None and domain is not None
            if plan is not None and not fill:
                self.stats.fills_skipped += 1
            kept.append(
                _Kept(name, view, entry, basis if fill else None, user_scope, plan is not None)
            )
        return kept

    def _finish(self, user_id: UUID, domain: str | None, kept: list[_Kept]) -> Sets:
        """Called by the fill task: weigh each view put in L1 (or drop it, if it is too
        large to cache), and make the envelopes to write, each remembered by the parse
        memo (their bytes will come back)."""
        sets: Sets = []
        for item in kept:
            data_json = item.view.__pydantic_serializer__.to_json(item.view)  # the real size
            if len(data_json) > self.max_value_bytes:
                self.stats.oversize_values += 1
                if item.basis is not None or not item.planned:  # else counted already
                    self.stats.fills_skipped += 1
                if item.entry is not None:
                    self.local.reweigh(user_id, item.name, item.entry, None)
                continue
            weight = json_weight(data_json)
            if item.entry is not None:
                self.local.reweigh(user_id, item.name, item.entry, weight)
            if item.basis is None or domain is None:
                continue
            envelope = encode_envelope(
                user_id, item.name, domain, item.basis.gens, item.basis.server, data_json,
                item.user_scope,
            )  # fmt: skip
            sets.append((keys.merged_key(user_id, item.name), envelope))
            self.envelopes.remember(user_id, item.name, envelope, item.view, weight)
        return sets


class _Kept(NamedTuple):
    """A view put in L1 (``entry``; None if L1 did not take it) whose weight, and
    envelope if ``basis`` is set, are still to be made."""

    name: str
    view: AppConfigData
    entry: Entry[AppConfigData] | None
    basis: Basis | None
    user_scope: bool | None
    #: a fill plan was read (so a missing basis was counted as a skipped fill)
    planned: bool


def _has_user_scope(chain: Collection[AppConfigScopeType] | None) -> bool | None:
    return None if chain is None else AppConfigScopeType.USER in chain
