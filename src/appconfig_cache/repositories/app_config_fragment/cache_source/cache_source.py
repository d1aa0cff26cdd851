"""AppConfigFragmentCacheSource: a per-process TTL LRU (L1) in front of Valkey (L2).

Invalidation is by generations (``docs/design.rst``): every envelope in Valkey
carries the public, name, domain and user generations it was computed under;
an invalidation is one ``INCR`` and old envelopes simply stop matching. No
SCAN, no KEYS, no membership sets.

This class is a facade: it checks inputs and hands each call to the
collaborator that owns the state involved (``docs/design.rst`` has the map).
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any
from uuid import UUID

from ....errors import CacheSettingsError
from ....outbox.store import OutboxStore
from ....tiered.local import MISS
from ....tiered.stats import CacheStats
from ....types import AppConfigData, AppConfigFragmentKey, AppConfigScopeType
from ....validation import validate_name, validate_scope, validate_user_id
from .compose import compose
from .invalidation import targets_of
from .read_path import Loader
from .settings import CacheSettings
from .shared_parts import SharedLoader

__all__ = ["AppConfigFragmentCacheSource", "Loader", "SharedLoader"]


class AppConfigFragmentCacheSource:
    """Two-tier cache of merged app-config views.

    ``valkey_client`` is a ``valkey.asyncio.Valkey`` or ``ValkeyCluster``; give it
    short socket timeouts and a bounded pool (:func:`appconfig_cache.make_valkey_client`).

    - ``ttl``: seconds an envelope lives in Valkey.
    - ``local_ttl``: seconds an L1 entry (and a cached generation) lives; the
      bound on cross-process staleness.
    - ``local_maxsize``: L1 entries at most; ``0`` turns L1 off (Valkey only).
    - ``timeout``: the budget of one Valkey round trip, in seconds.
    - ``probe_timeout``: the deadline of the health probe that tells a hung
      Valkey from a busy event loop.
    - ``max_value_bytes``: a view whose serialized form is larger is served but
      not cached, in either tier.
    - ``parse_memo_size``: envelopes whose parsed view is kept, keyed by their
      bytes, so a Valkey hit on unchanged bytes skips the JSON parse; ``0`` off.
    - ``breaker_*``: see :class:`~appconfig_cache.tiered.remote.CircuitBreaker`.
    - ``wait_replicas``, ``wait_timeout``: ``WAIT`` for that many replicas after
      each bump (standalone servers only).
    - ``broadcast``: publish bumps and drop other processes' entries at once;
      after a lost subscription, nothing cached before it is served unconfirmed.
    - ``local_maxbytes``: L1's budget in bytes, of the views' estimated memory
      (``tiered/weights.py``); a view weighing more than an eighth of it is
      served but not kept in L1. ``0`` turns L1 off.
    - ``parse_memo_maxbytes``: the parse memo's budget in bytes (envelope bytes
      plus parsed view); a heavier envelope than an eighth of it is parsed each
      time. ``0`` turns the memo off.
    - ``timer``: the clock (monotonic seconds); tests inject one.
    - ``retry_interval``: while bumps are pending, seconds between the recovery
      task's attempts (a ``PING``, then the replay), read or no read.
    - ``outbox_grace``, ``outbox_interval``, ``outbox_batch``: the outbox
      replayer (I10) polls every ``outbox_interval`` seconds and replays rows
      older than ``outbox_grace`` seconds, ``outbox_batch`` per transaction.
      It runs once a repository has attached its engine's outbox.
    """

    def __init__(
        self,
        valkey_client: Any,
        *,
        ttl: int = 600,
        local_ttl: float = 2.0,
        local_maxsize: int = 8192,
        timeout: float = 0.5,
        probe_timeout: float = 2.0,
        max_value_bytes: int = 512 * 1024,
        breaker_window: int = 20,
        breaker_threshold: int = 5,
        breaker_min_calls: int = 5,
        breaker_cooldown: float = 5.0,
        log_interval: float = 10.0,
        parse_memo_size: int = 1024,
        wait_replicas: int = 0,
        wait_timeout: float = 0.1,
        broadcast: bool = False,
        local_maxbytes: int = 160 * 1024 * 1024,
        parse_memo_maxbytes: int = 16 * 1024 * 1024,
        timer: Callable[[], float] = time.monotonic,
        retry_interval: float = 0.5,
        outbox_grace: float = 2.0,
        outbox_interval: float = 1.0,
        outbox_batch: int = 500,
    ) -> None:
        settings = CacheSettings(
            ttl=ttl, local_ttl=local_ttl, local_maxsize=local_maxsize, timeout=timeout,
            probe_timeout=probe_timeout, max_value_bytes=max_value_bytes,
            breaker_window=breaker_window, breaker_threshold=breaker_threshold,
            breaker_min_calls=breaker_min_calls, breaker_cooldown=breaker_cooldown,
            log_interval=log_interval, parse_memo_size=parse_memo_size,
            wait_replicas=wait_replicas, wait_timeout=wait_timeout, broadcast=broadcast,
            local_maxbytes=local_maxbytes, parse_memo_maxbytes=parse_memo_maxbytes,
            timer=timer, retry_interval=retry_interval, outbox_grace=outbox_grace,
            outbox_interval=outbox_interval, outbox_batch=outbox_batch,
        )  # fmt: skip
        settings.check_client(valkey_client)
        self.client = valkey_client
        self.ttl, self.local_ttl, self.max_value_bytes = ttl, local_ttl, max_value_bytes
        self.wait_replicas = wait_replicas
        self.local_maxsize, self.timeout, self.probe_timeout = local_maxsize, timeout, probe_timeout
        self._timer = timer
        self._parts = parts = compose(valkey_client, settings)
        # the L1 hit path reads these on every call: one attribute lookup each
        self._local, self._stats, self._renewal = parts.local, parts.stats, parts.renewal
        self._on_miss: Callable[[UUID, Sequence[str]], None] | None = None

    # -- observability ------------------------------------------------------------

    @property
    def stats(self) -> CacheStats:
        """The counters of this instance (breaker state included)."""
        stats, parts = self._stats, self._parts
        stats.breaker_state = parts.remote.breaker.state.value
        stats.breaker_opens = parts.remote.breaker.opens
        stats.pending_bumps = parts.bumps.pending
        stats.l1_renewals = parts.local.renewals
        if parts.broadcast is not None:
            stats.broadcast = parts.broadcast.state
            stats.broadcast_received = parts.broadcast.received
            stats.broadcast_gaps = parts.broadcast.gaps
        stats.l1_bytes, stats.l1_refused, stats.l1_evicted_for_weight = parts.local.usage()
        memo = parts.envelopes.memo_usage()
        stats.memo_bytes, stats.memo_refused, stats.memo_evicted_for_weight = memo
        return stats

    def local_size(self) -> int:
        return len(self._local)

    def observe_latency(
        self,
        *,
        valkey_round_trip: Callable[[float], None] | None = None,
        db_load: Callable[[float], None] | None = None,
    ) -> None:
        """Hooks given the seconds of each answered Valkey round trip and of each DB load
        (what ``appconfig_cache.metrics`` puts in histograms); None: nothing is timed.
        An L1 hit never calls them."""
        self._parts.remote.observe_round_trip = valkey_round_trip
        self._parts.read_path.observe_db_load = db_load

    def observe_misses(self, on_miss: Callable[[UUID, Sequence[str]], None] | None) -> None:
        """``on_miss(user_id, names)`` on each read that missed L1, before it looks further
        (the consistency monitor samples there); None: off. An L1 hit never calls it."""
        self._on_miss = on_miss

    def served_entry(self, user_id: UUID, name: str) -> tuple[AppConfigData, object] | None:
        """What L1 would serve now for validated input, and a token that is the same object
        as long as that very entry is served; None if L1 would miss. Nothing is counted."""
        entry = self._local.peek(user_id, name)
        return None if entry is None else (entry.value, entry)

    def sample_local_keys(self, k: int, rng: random.Random) -> list[tuple[UUID, str]]:
        """Up to ``k`` ``(user_id, name)`` keys of L1 entries, chosen at random."""
        return self._local.sample_keys(k, rng)

    # -- the seed's API -----------------------------------------------------------

    async def get_merged_config(self, user_id: UUID, name: str) -> AppConfigData | None:
        """The cached view, from L1 or Valkey, or ``None`` on a miss. Never touches the DB."""
        uid = validate_user_id(user_id)
        validate_name(name)
        hit = self.local_get(uid, name)
        if hit is not MISS:
            return hit  # type: ignore[return-value]
        if not await self._parts.bumps.catch_up():
            self._stats.l2_skipped += 1
            return None
        looked = await self._parts.lookup.find(uid, [name], self._local.version, self._timer())
        return None if looked is None else looked.found.get(name)

    async def set_merged_config(self, user_id: UUID, name: str, merged: AppConfigData) -> None:
        """Store a view computed by the caller, in both tiers, under the current generations.

        The repository does not use this: a value read from the DB *before* a
        concurrent invalidation could be stored as current here. The read path
        uses generations captured before its own DB query instead.
        """
        uid = validate_user_id(user_id)
        validate_name(name)
        if merged.user_id != uid or merged.name != name:
            raise CacheSettingsError("merged view belongs to another user or name")
        version, timer = self._local.version, self._timer
        plan = None
        if await self._parts.bumps.catch_up():
            looked = await self._parts.lookup.find(uid, [name], version, timer())
            if looked is not None:
                plan = await self._parts.lookup.plan(uid, [name], looked)
        domain = self._local.domains.get(uid)  # the lookup may have learnt it
        self._parts.store.put_computed(uid, {name: merged}, {}, domain, plan, version, timer())

    async def invalidate_for_scope(
        self, scope_type: AppConfigScopeType | str, scope_id: str
    ) -> None:
        """Drop a scope's views: USER one user, DOMAIN(_USER_DEFAULTS) a domain, PUBLIC all."""
        await self.invalidate_scopes([validate_scope(scope_type, scope_id)])

    async def invalidate_for_policy(self, config_name: str) -> bool:
        """Drop every view of ``config_name`` (and the cached list of policy names).

        Returns whether Valkey acknowledged the bump (else it is pending).
        """
        return await self._parts.invalidation.policy(config_name)

    def invalidate_for_policy_nowait(self, config_name: str) -> None:
        """Invalidate L1 now and leave the Valkey bumps pending (for a cancelled write)."""
        self._parts.invalidation.policy_nowait(config_name)

    # -- what the repository calls ------------------------------------------------

    def local_get(self, user_id: UUID, name: str) -> AppConfigData | object:
        """The L1 entry or ``MISS``; inputs must be validated already."""
        value = self._local.get(user_id, name)
        if value is MISS:
            self._stats.l1_misses += 1
        else:
            self._stats.l1_hits += 1
            if self._local.due:
                self._renewal.after_hit()
        return value

    async def invalidate_scopes(self, scopes: Iterable[tuple[AppConfigScopeType, str]]) -> None:
        """Invalidate validated scopes: L1 first, then one Valkey round trip for all."""
        await self._parts.invalidation.targets(list(scopes))

    async def invalidate_keys(self, keys: Iterable[AppConfigFragmentKey]) -> bool:
        """Invalidate what writes to these (validated) fragment keys changed.

        Like :meth:`invalidate_scopes`, except that a public fragment only
        drops its own name's views (the name generation), not every document.
        Returns whether Valkey acknowledged the bumps (else they are pending).
        """
        return await self._parts.invalidation.targets(targets_of(keys))

    def invalidate_keys_nowait(self, keys: Iterable[AppConfigFragmentKey]) -> None:
        """Invalidate L1 now and leave the Valkey bumps pending (for a cancelled write).

        Until the next read replays them, this process does not trust Valkey.
        """
        self._parts.invalidation.targets_nowait(targets_of(keys))

    async def read_through(
        self,
        user_id: UUID,
        names: Sequence[str],
        loader: Loader,
        shared: SharedLoader | None = None,
    ) -> dict[str, AppConfigData]:
        """Views of distinct, validated ``names``: L1, then Valkey, then ``loader``."""
        out: dict[str, AppConfigData] = {}
        need: list[str] = []
        for name in names:
            value = self.local_get(user_id, name)
            if value is MISS:
                need.append(name)
            else:
                out[name] = value  # type: ignore[assignment]
        if need:
            out.update(await self.resolve(user_id, need, loader, shared))
        return out

    async def resolve(
        self,
        user_id: UUID,
        names: Sequence[str],
        loader: Loader,
        shared: SharedLoader | None = None,
    ) -> dict[str, AppConfigData]:
        """L1 has missed ``names``: join or lead the flights that load them.

        ``shared``, if given, lets an outdated view whose user part still holds be
        recomposed from the domain's shared fragments (one query per domain and
        generation, shared by all its users) instead of a query per user.
        """
        if self._parts.broadcast is not None:
            self._parts.broadcast.ensure_started()
        self._parts.outbox.ensure_started()
        if self._on_miss is not None:
            self._on_miss(user_id, names)
        return await self._parts.read_path.resolve(user_id, names, loader, shared)

    async def policy_names(self, loader: Callable[[], Awaitable[list[str]]]) -> list[str]:
        """The config names that have a policy: L1 copy, then Valkey, then ``loader``."""
        return await self._parts.policy_names.get(loader)

    async def bootstrap(
        self,
        names_loader: Callable[[], Awaitable[list[str]]],
        read: Callable[[list[str]], Awaitable[list[AppConfigData]]],
    ) -> list[AppConfigData]:
        """The views (``read``) of every name with a policy, in the list's order.

        An expired but unchanged names list costs no round trip of its own: the views of
        its names are read first, and their round trip confirms the list.
        """
        return await self._parts.policy_names.bootstrap(names_loader, read)

    # -- the outbox (I10) -------------------------------------------------------------

    def use_outbox(self, outbox: OutboxStore) -> None:
        """Replay ``outbox`` (a repository attaches its engine's); the first one stays."""
        self._parts.outbox.attach(outbox)

    def outbox_written(self, txids: Sequence[int], acked: bool) -> None:
        """A write's transactions committed and were invalidated: ``acked`` ones'
        outbox rows are deleted in the background; the others stay for a replayer."""
        self._parts.outbox.written(txids, acked)
        self._parts.outbox.ensure_started()

    async def replay_outbox(
        self, *, grace: float | None = None, progress: Callable[[int], None] | None = None
    ) -> int:
        """Replay the due outbox rows now (``grace`` overrides ``outbox_grace``); how many.

        ``progress`` is called with the running total after each batch.
        """
        return await self._parts.outbox.replay_now(grace=grace, progress=progress)

    # -- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        """Start the outbox replayer and subscribe to the invalidation broadcast now
        (both start lazily otherwise, at the first miss or write)."""
        self._parts.outbox.ensure_started()
        if self._parts.broadcast is not None:
            await self._parts.broadcast.wait_subscribed()

    async def drain(self) -> None:
        """Wait until background loads, fills, refreshes and replays have finished."""
        await self._parts.background.drain()

    async def aclose(self) -> None:
        """Wait for background work, stop the probe, the replayers and the subscription.
        Keeps the client. Pending bumps stay pending (the outbox keeps their rows)."""
        await self._parts.outbox.aclose()
        await self._parts.bumps.aclose()
        await self.drain()
        await self._parts.remote.aclose()
        if self._parts.broadcast is not None:
            await self._parts.broadcast.aclose()
