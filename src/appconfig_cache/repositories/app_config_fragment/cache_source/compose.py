"""How the cache source's collaborators are put together (one place, read top-down).

Each collaborator owns its state; the arrows run one way: the read path uses
renewal, recomposition, the lookup and the store; those use the generation
readings, Valkey commands and L1; nothing below calls back up. Two hooks are
set here, where they can be seen: a connection failure makes the readings
forget the server epoch (Valkey may have restarted), and a broadcast message
(and a gap in the broadcast) is applied by the invalidation collaborator.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from uuid import UUID

from ....logs import LogThrottle
from ....tiered.broadcast import Broadcast
from ....tiered.bumps import Bumps
from ....tiered.commands import Commands
from ....tiered.envelope import EnvelopeReader
from ....tiered.failures import Failures
from ....tiered.fills import FillQueue
from ....tiered.local import LocalTier
from ....tiered.readings import Readings
from ....tiered.remote import Remote
from ....tiered.stats import CacheStats
from ....tiered.tasks import Background
from ....types import AppConfigData
from . import ablation
from .generations import ViewGenerations
from .invalidation import Invalidation
from .lookup import Lookup
from .outbox_link import OutboxLink
from .policy_names import PolicyNames
from .read_path import ReadPath
from .recompose import Recomposer
from .renewal import Renewal
from .settings import CacheSettings
from .shared_parts import SharedParts
from .store import Store


@dataclass(frozen=True, slots=True)
class Parts:
    """The collaborators the facade calls."""

    stats: CacheStats
    background: Background
    remote: Remote
    local: LocalTier[AppConfigData]
    broadcast: Broadcast | None
    bumps: Bumps
    renewal: Renewal
    read_path: ReadPath
    lookup: Lookup
    store: Store
    policy_names: PolicyNames
    invalidation: Invalidation
    envelopes: EnvelopeReader[AppConfigData]
    outbox: OutboxLink


def _owner(view: AppConfigData) -> tuple[UUID, str]:
    return view.user_id, view.name


def compose(client: Any, settings: CacheSettings) -> Parts:
    s, timer, off = settings, settings.timer, ablation.ablated()
    stats = CacheStats()
    failures = Failures(stats, LogThrottle(s.log_interval, timer))
    background = Background()
    readings = Readings(s.local_ttl)
    remote = Remote(client, s.breaker(), stats, timeout=s.timeout, probe_timeout=s.probe_timeout)
    remote.on_unavailable = readings.forget_epoch
    commands = Commands(client, remote, readings, ttl=s.ttl)
    local = (ablation.LocalTierWithoutRenewal if "renewal" in off else LocalTier[AppConfigData])(
        s.local_maxsize, s.local_ttl, timer, readings, max_life=s.ttl, maxbytes=s.local_maxbytes
    )
    broadcast = Broadcast(client) if s.broadcast else None
    bumps = Bumps(
        commands, readings, background, stats, failures, broadcast=broadcast,
        wait_replicas=s.wait_replicas, wait_ms=s.wait_ms, timer=timer,
        retry_interval=s.retry_interval,
    )  # fmt: skip
    generations = ViewGenerations(readings, commands, failures)
    envelopes = EnvelopeReader(
        AppConfigData.model_validate_json, _owner,
        memo_size=0 if "parse_memo" in off else s.parse_memo_size,
        memo_maxbytes=s.parse_memo_maxbytes, failures=failures, stats=stats,
    )  # fmt: skip
    fills = (ablation.UnbatchedFills if "fill_batching" in off else FillQueue)(
        commands, background, stats, failures
    )
    store = Store(
        local, readings, envelopes, fills, stats,
        local_ttl=s.local_ttl, max_value_bytes=s.max_value_bytes,
    )  # fmt: skip
    policy_names = (ablation.PolicyNamesWithoutGuess if "bootstrap_guess" in off else PolicyNames)(
        local, readings, commands, bumps, fills, stats, failures,
        local_ttl=s.local_ttl, timer=timer,
    )  # fmt: skip
    lookup = Lookup(
        local, readings, commands, generations, envelopes, store, stats, failures,
        local_ttl=s.local_ttl, riders=policy_names.riders,
    )  # fmt: skip
    renewal = (ablation.RenewalWithoutWait if "renewal_wait" in off else Renewal)(
        local, readings, generations, bumps, remote, background, stats, timer
    )
    recompose_off = {"l1_recompose", "envelope_recompose"} & off
    recomposer = (ablation.RecomposerWithout if recompose_off else Recomposer)(
        local, readings, generations, envelopes, SharedParts(readings, stats), renewal,
        store, stats, timer,
    )  # fmt: skip
    if isinstance(recomposer, ablation.RecomposerWithout):
        recomposer.l1_off = "l1_recompose" in off
        recomposer.envelopes_off = "envelope_recompose" in off
    read_path = (ablation.ReadPathLeadingInTasks if "inline_lead" in off else ReadPath)(
        local, bumps, remote, renewal, recomposer, lookup, store, background, stats, timer
    )
    invalidation = Invalidation(local, readings, bumps, policy_names)
    outbox = OutboxLink(
        invalidation, bumps, background, stats, failures,
        grace=s.outbox_grace, interval=s.outbox_interval, batch=s.outbox_batch,
    )  # fmt: skip
    if broadcast is not None:
        broadcast.on_message = invalidation.apply_remote
        broadcast.on_gap = invalidation.apply_gap
    return Parts(
        stats, background, remote, local, broadcast, bumps, renewal, read_path, lookup, store,
        policy_names, invalidation, envelopes, outbox,
    )  # fmt: skip
