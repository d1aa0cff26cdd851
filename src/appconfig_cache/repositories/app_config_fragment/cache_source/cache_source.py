"""AppConfigFragmentCacheSource: a per-process TTL LRU (L1) in front of Valkey (L2).

Invalidation is by generations (``docs/design.rst``): every envelope in Valkey
carries the public, name, domain and user generations it was computed under;
an invalidation is one ``INCR`` and old envelopes simply stop matching. No
SCAN, no KEYS, no membership sets.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from cachetools import LRUCache

from ....errors import AppConfigError, CacheSettingsError
from ....merge import build_view
from ....tiered import keys as K
from ....tiered.broadcast import Broadcast, is_cluster
from ....tiered.flight import Flights, LeaderCancelled, settle, wait_flight
from ....tiered.local import MISS, LocalTier
from ....tiered.remote import CircuitBreaker, Remote
from ....tiered.stats import CacheStats
from ....types import AppConfigData, AppConfigFragmentKey, AppConfigScopeType
from ....validation import validate_name, validate_scope, validate_user_id
from ...utils import LogThrottle, suppress_with_log
from ..db_source import LoadedViews, SharedPart

__all__ = ["AppConfigFragmentCacheSource", "Loader", "SharedLoader"]

_logger = logging.getLogger("appconfig_cache.cache")

#: loads the merged views of names for a user from the database
Loader = Callable[[UUID, Sequence[str]], Awaitable[LoadedViews]]
#: loads what every user of a domain (None: no domain) shares in the views of names
SharedLoader = Callable[[str | None, Sequence[str]], Awaitable[dict[str, SharedPart]]]

_RANDOM = random.SystemRandom()
#: users whose generations one background refresh reads at most
_REFRESH_BATCH = 1000
#: envelopes one fill round trip writes at most, and envelopes waiting at most
_FILL_BATCH = 256
_FILL_QUEUE_MAX = 20_000
#: shared parts of views, by (domain, name), kept in process memory
_SHARED_PARTS = 4096
#: (public, name, domain) generations and server epoch a shared part was read under
_SharedTag = tuple[int, int, int, int]


_NAME = "name"  # an invalidation target that is a config name, not a scope


def _targets(keys: Iterable[AppConfigFragmentKey]) -> list[tuple[str, str]]:
    """What a write to each fragment key invalidates: its scope, or its name if public."""
    return [
        (_NAME, key.name)
        if key.scope_type is AppConfigScopeType.PUBLIC
        else (key.scope_type, key.scope_id)
        for key in keys
    ]


class _NotReplicated(Exception):
    """WAIT returned before enough replicas acknowledged the bump."""


def _gen_base() -> int:
    # A random base for a generation key that does not exist yet: after a
    # restart or eviction the counter starts somewhere no old envelope names.
    return _RANDOM.getrandbits(62)


def _as_int(raw: Any) -> int | None:
    if raw is None:
        return None
    try:
        return int(raw)
    except (TypeError, ValueError):
        return None


@dataclass(slots=True)
class _FillPlan:
    """The generations read *before* the DB query, to be written into new envelopes."""

    domain: str | None  # None: the user's domain was not known before the query
    public: int | None
    names: dict[str, int | None]
    domain_gen: int | None
    user: int | None
    user_domain: str | None  # what Valkey's user_domain key said

    epoch: int | None = None
    #: when the generations were read (the oldest reading, for an L1 deadline)
    read_at: float = 0.0
    #: the user generation has held since before any request numbered above this was sent
    user_since: int = 0
    #: outdated envelopes of the names whose user generation and epoch still hold
    reusable: dict[str, tuple[bytes, K.Header]] = field(default_factory=dict)

    def gens(self, name: str) -> tuple[int, int, int, int] | None:
        values = (self.public, self.names.get(name), self.domain_gen, self.user)
        if any(v is None for v in values):
            return None
        return values  # type: ignore[return-value]


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
    - ``timer``: the clock (monotonic seconds); tests inject one.
    """

    def __init__(
        self,
        valkey_client: Any,
        *,
        ttl: int = 600,
        local_ttl: float = 2.0,
        local_maxsize: int = 4096,
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
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        if not isinstance(ttl, int) or ttl < 1:
            raise CacheSettingsError(f"ttl must be a whole number of seconds >= 1, got {ttl!r}")
        if local_ttl < 0 or local_maxsize < 0 or parse_memo_size < 0:
            raise CacheSettingsError("local_ttl, local_maxsize and parse_memo_size must be >= 0")
        if timeout <= 0 or probe_timeout <= 0 or max_value_bytes < 1:
            raise CacheSettingsError("timeout, probe_timeout and max_value_bytes must be > 0")
        if wait_replicas < 0 or wait_timeout <= 0:
            raise CacheSettingsError("wait_replicas must be >= 0 and wait_timeout > 0")
        if wait_replicas and is_cluster(valkey_client):
            raise CacheSettingsError(
                "wait_replicas is not supported on ValkeyCluster: WAIT must run on the "
                "connection of every node that took a bump (see docs/deployment.rst)"
            )
        try:
            breaker = CircuitBreaker(
                window=breaker_window,
                failure_threshold=breaker_threshold,
                min_calls=breaker_min_calls,
                cooldown=breaker_cooldown,
                timer=timer,
            )
        except ValueError as exc:
            raise CacheSettingsError(str(exc)) from None
        self.client = valkey_client
        self.ttl = ttl
        self.local_ttl = local_ttl
        self.max_value_bytes = max_value_bytes
        self._timer = timer
        self._stats = CacheStats()
        self._local = LocalTier(local_maxsize, local_ttl, timer, max_life=ttl)
        # Envelope bytes -> parsed view, so an envelope fetched again (after its L1
        # entry expired, or with L1 off) is not parsed again. It is not a cache
        # tier: every read still fetches the envelope and checks its header's
        # generations; only identical bytes (compared in full) skip the parse.
        self._decoded: LRUCache[tuple[UUID, str], tuple[bytes, AppConfigData]] | None = (
            LRUCache(maxsize=parse_memo_size) if parse_memo_size > 0 else None
        )
        self._remote = Remote(
            valkey_client, breaker, self._stats, timeout=timeout, probe_timeout=probe_timeout
        )
        self._throttle = LogThrottle(log_interval, timer)
        # A connection failure may be a restart: read the server's identity again.
        self._remote.on_unavailable = lambda: self._local.forget_gen(K.EPOCH, self._next_seq())
        self._flights: Flights[AppConfigData] = Flights()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._pending: set[str] = set()  # generation keys whose bump did not reach Valkey
        self._replaying: asyncio.Task[bool] | None = None
        self._next_replay_at = float("-inf")
        self._seq = 0  # numbers Valkey requests, to order replies about generations
        self._names_cache: tuple[list[str], int, float] | None = None
        self.wait_replicas = wait_replicas
        self._wait_ms = max(1, round(wait_timeout * 1000))
        self._broadcast = Broadcast(valkey_client, self._apply_remote) if broadcast else None
        self._cluster = is_cluster(valkey_client)
        self._policies_at = 0  # local epoch of the last policy change
        self._refreshing: asyncio.Task[None] | None = None
        # user generation key -> (value, the request number when it was first seen)
        self._user_since: LRUCache[str, tuple[int | None, int]] = LRUCache(maxsize=65536)
        self._fill_queue: list[tuple[str, bytes]] = []
        self._filling: asyncio.Task[None] | None = None
        # (domain, name) -> (the generations and epoch it was read under, the part or
        # None, the request number taken before its query was sent)
        self._shared: LRUCache[tuple[str, str], tuple[_SharedTag, SharedPart | None, int]] = (
            LRUCache(maxsize=_SHARED_PARTS)
        )
        self._shared_flights: Flights[SharedPart | None] = Flights()

    # -- observability ------------------------------------------------------------

    @property
    def stats(self) -> CacheStats:
        """The counters of this instance (breaker state included)."""
        self._stats.breaker_state = self._remote.breaker.state.value
        self._stats.breaker_opens = self._remote.breaker.opens
        self._stats.pending_bumps = len(self._pending)
        self._stats.l1_renewals = self._local.renewals
        if self._broadcast is not None:
            self._stats.broadcast = self._broadcast.state
            self._stats.broadcast_received = self._broadcast.received
        return self._stats

    def local_size(self) -> int:
        return len(self._local)

    # -- the seed's API -----------------------------------------------------------

    async def get_merged_config(self, user_id: UUID, name: str) -> AppConfigData | None:
        """The cached view, from L1 or Valkey, or ``None`` on a miss. Never touches the DB."""
        uid = validate_user_id(user_id)
        validate_name(name)
        hit = self.local_get(uid, name)
        if hit is not MISS:
            return hit  # type: ignore[return-value]
        if not await self._l2_ready():
            self._stats.l2_skipped += 1
            return None
        found, _plan = await self._l2_lookup(uid, [name], self._local.epoch, plan_fill=False)
        return found.get(name)

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
        epoch = self._local.epoch
        plan = None
        if await self._l2_ready():
            _found, plan = await self._l2_lookup(uid, [name], epoch, plan_fill=True, force=True)
        domain = self._local.domains.get(uid)  # the lookup may have learnt it
        loaded = LoadedViews(domain=domain, views={name: merged}, with_policy=frozenset([name]))
        self._store(uid, [name], loaded, plan, epoch, self._timer(), domain_known=False)

    async def invalidate_for_scope(
        self, scope_type: AppConfigScopeType | str, scope_id: str
    ) -> None:
        """Drop a scope's views: USER one user, DOMAIN(_USER_DEFAULTS) a domain, PUBLIC all."""
        await self.invalidate_scopes([validate_scope(scope_type, scope_id)])

    async def invalidate_for_policy(self, config_name: str) -> None:
        """Drop every view of ``config_name`` (and the cached list of policy names)."""
        await self._bump(self._invalidate_policy_local(config_name))
        self._invalidate_policy_local(config_name)  # see _invalidate_targets

    def invalidate_for_policy_nowait(self, config_name: str) -> None:
        """Invalidate L1 now and leave the Valkey bumps pending (for a cancelled write)."""
        self._bump_later(self._invalidate_policy_local(config_name))

    def _invalidate_policy_local(self, config_name: str) -> list[str]:
        validate_name(config_name)
        self._local.invalidate_name(config_name)
        self._policies_at = self._local.mark()
        return [K.name_gen_key(config_name), K.POLICIES_GEN]

    # -- what the repository calls ------------------------------------------------

    def local_get(self, user_id: UUID, name: str) -> AppConfigData | object:
        """The L1 entry or ``MISS``; inputs must be validated already."""
        local = self._local
        value = local.get(user_id, name)
        if value is MISS:
            self._stats.l1_misses += 1
        else:
            self._stats.l1_hits += 1
            if local.due and self._refreshing is None:
                self._start_refresh()
        return value

    async def invalidate_scopes(self, scopes: Iterable[tuple[AppConfigScopeType, str]]) -> None:
        """Invalidate validated scopes: L1 first, then one Valkey round trip for all."""
        await self._invalidate_targets(list(scopes))

    async def invalidate_keys(self, keys: Iterable[AppConfigFragmentKey]) -> None:
        """Invalidate what writes to these (validated) fragment keys changed.

        Like :meth:`invalidate_scopes`, except that a public fragment only
        drops its own name's views (the name generation), not every document.
        """
        await self._invalidate_targets(_targets(keys))

    async def _invalidate_targets(self, targets: list[tuple[str, str]]) -> None:
        gen_keys = self._invalidate_local(targets)
        if gen_keys:
            await self._bump(gen_keys)
            # A read that began while the INCR was in flight ran under the new epoch
            # but saw the old generations: invalidate locally once more, so nothing
            # it stored outlives this call (I2).
            self._invalidate_local(targets)

    def invalidate_keys_nowait(self, keys: Iterable[AppConfigFragmentKey]) -> None:
        """Invalidate L1 now and leave the Valkey bumps pending (for a cancelled write).

        Until the next read replays them, this process does not trust Valkey.
        """
        self._bump_later(self._invalidate_local(_targets(keys)))

    def _invalidate_local(self, targets: Iterable[tuple[str, str]]) -> list[str]:
        """Bump the local records of each target; return the generation keys, each once.

        A target is a scope ``(scope_type, scope_id)`` or ``("name", config_name)``.
        """
        gen_keys: dict[str, None] = {}
        local = self._local
        for kind, ident in targets:
            if kind == AppConfigScopeType.USER:
                uid = UUID(ident)
                local.invalidate_user(uid)
                gen_keys[K.user_gen_key(uid)] = None
            elif kind == AppConfigScopeType.PUBLIC:
                local.invalidate_public()
                gen_keys[K.PUBLIC_GEN] = None
            elif kind == _NAME:
                local.invalidate_name(ident)
                gen_keys[K.name_gen_key(ident)] = None
            else:
                local.invalidate_domain(ident)
                gen_keys[K.domain_gen_key(ident)] = None
        return list(gen_keys)

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

        ``shared``, if given, lets an outdated envelope whose user part still holds
        be recomposed from the domain's shared fragments (one query per domain and
        generation, shared by all its users) instead of a query per user.
        """
        if self._broadcast is not None:
            self._broadcast.ensure_started()
        local = self._local
        domain = local.domains.get(user_id)
        waits: list[tuple[str, asyncio.Future[AppConfigData]]] = []
        lead: list[str] = []
        for name in names:
            flight = self._flights.get((user_id, name))
            # A read that starts after an invalidation must not join an older flight (I2).
            if flight is not None and not local.stale_since(flight.epoch, user_id, name, domain):
                self._stats.flights_joined += 1
                waits.append((name, flight.future))
            else:
                lead.append(name)
        if lead:
            epoch = local.epoch
            started = [(name, self._flights.start((user_id, name), epoch)) for name in lead]
            if not waits:
                # Nothing to join: load in this task, without a task switch. If this
                # caller is cancelled, its flights are cancelled and joiners take over.
                await self._lead(user_id, started, loader, epoch, shared)
                return {name: flight.future.result() for name, flight in started}
            waits.extend((name, flight.future) for name, flight in started)
            task = asyncio.get_running_loop().create_task(
                self._lead(user_id, started, loader, epoch, shared)
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
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

    async def policy_names(self, loader: Callable[[], Awaitable[list[str]]]) -> list[str]:
        """The config names that have a policy: L1 copy, then Valkey, then ``loader``.

        Cached under the ``policies`` generation that every policy change bumps.
        """
        now = self._timer()
        cached = self._names_cache
        if cached is not None and cached[2] > now and self._policies_at <= cached[1]:
            return cached[0]
        epoch = self._local.epoch
        names: list[str] | None = None
        gen: int | None = None
        if await self._l2_ready():
            names, gen = await self._l2_policy_names(now)
        server = self._epoch(now)
        if names is None:
            names = await loader()
            self._stats.db_loads += 1
            if gen is not None and server is not None:
                payload = json.dumps({"g": gen, "e": server, "names": names}).encode()
                with suppress_with_log(
                    Exception, "valkey fill failed", logger=_logger, throttle=self._throttle
                ):
                    await self._remote.call(
                        lambda: self.client.set(K.POLICY_NAMES, payload, ex=self.ttl)
                    )
        if self._policies_at <= epoch:
            self._names_cache = (names, epoch, now + self.local_ttl)
        return names

    async def _l2_policy_names(self, now: float) -> tuple[list[str] | None, int | None]:
        """``(names or None on a miss, the policies generation read before any DB query)``."""

        def queue(pipe: Any) -> None:
            pipe.get(K.POLICY_NAMES)
            pipe.set(K.POLICIES_GEN, _gen_base(), nx=True, get=True)

        try:
            raw, raw_gen = await self._pipelined(queue, now, self._next_seq())
        except Exception as exc:  # failures, and replies of another shape
            self._log_failure("valkey read failed", exc)
            return None, None
        gen = _as_int(raw_gen)
        epoch = self._epoch(now)
        if gen is None or epoch is None:
            return None, None  # just created: nothing cached can match it
        try:
            doc = json.loads(raw) if raw is not None else None
            if isinstance(doc, dict) and doc.get("g") == gen and doc.get("e") == epoch:
                names = doc.get("names")
                if isinstance(names, list) and all(isinstance(n, str) for n in names):
                    self._stats.l2_hits += 1
                    return [validate_name(n) for n in names], gen
        except (ValueError, TypeError, AppConfigError) as exc:
            self._reject("rejected a malformed policy-name list", exc)
        self._stats.l2_misses += 1
        return None, gen

    async def start(self) -> None:
        """Subscribe to the invalidation broadcast now (it starts lazily otherwise)."""
        if self._broadcast is not None:
            await self._broadcast.wait_subscribed()

    async def aclose(self) -> None:
        """Wait for background work, stop the probe and the subscription. Keeps the client."""
        await self.drain()
        await self._remote.aclose()
        if self._broadcast is not None:
            await self._broadcast.aclose()

    # -- renewing hot L1 entries ----------------------------------------------------

    def _start_refresh(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._refreshing = task = loop.create_task(self._refresh_due())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _refresh_due(self) -> None:
        """Read the generations of the users on ``due`` (and shared ones getting old).

        One pipelined round trip per batch of users, whatever the number of their
        entries; the readings let :class:`LocalTier` renew those entries when
        their ``local_ttl`` is up. Nothing here is needed for correctness: a
        failed or skipped refresh only lets the entries expire.
        """
        local = self._local
        try:
            await asyncio.sleep(0)  # let the hits of this loop iteration join the batch
            while local.due:
                if self._pending or not self._remote.available():
                    break
                now = self._timer()
                shared = local.gens_due(now)
                keys = [K.user_gen_key(u) for u in local.take_due(_REFRESH_BATCH)]
                keys += [key for key in shared if key != K.EPOCH]
                if not await self._fetch_gens(keys, now, epoch=K.EPOCH in shared):
                    break  # the entries expire instead; nothing else depends on it
                self._stats.gen_refreshes += 1
        finally:
            local.due.clear()
            self._refreshing = None

    # -- the miss path --------------------------------------------------------------

    async def _lead(
        self,
        user_id: UUID,
        started: list[tuple[str, Any]],
        loader: Loader,
        epoch: int,
        shared: SharedLoader | None,
    ) -> None:
        names = [name for name, _ in started]
        try:
            found = await self._fetch(user_id, names, loader, epoch, shared)
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
        epoch: int,
        shared: SharedLoader | None,
    ) -> dict[str, AppConfigData]:
        found: dict[str, AppConfigData] = {}
        plan: _FillPlan | None = None
        # L1 entries that expired, or that only a shared write made stale, may still
        # serve with one batched read of the generations (neither with Valkey unusable).
        if self._local.maxsize and not self._pending and self._remote.available():
            found = await self._renew_expired(user_id, names)
            if shared is not None and len(found) < len(names):
                rest = [name for name in names if name not in found]
                found.update(await self._recompose_local(user_id, rest, epoch, shared))
            names = [name for name in names if name not in found]
            if not names:
                return found
        if await self._l2_ready():
            from_l2, plan = await self._l2_lookup(user_id, names, epoch, plan_fill=True)
            found.update(from_l2)
        else:
            self._stats.l2_skipped += len(names)
        missing = [name for name in names if name not in found]
        if missing and shared is not None and plan is not None and plan.reusable:
            found.update(await self._recompose(user_id, missing, plan, epoch, shared))
            missing = [name for name in missing if name not in found]
        if not missing:
            return found
        started = self._timer()
        loaded = await loader(user_id, missing)
        self._stats.db_loads += 1
        if _logger.isEnabledFor(logging.DEBUG):
            _logger.debug("db load user=%s names=%s", user_id, missing)
        found.update((name, loaded.views[name]) for name in missing)
        self._store(user_id, missing, loaded, plan, epoch, started)
        return found

    async def _renew_expired(self, user_id: UUID, names: list[str]) -> dict[str, AppConfigData]:
        """Views of ``names`` from expired L1 entries that fresh generations confirm.

        A hot entry is renewed in the background before it expires; one whose user
        came back after its deadline waits here for the same batched read of the
        generations (the user's, and the shared ones getting old) instead of a
        lookup of its own, and is renewed as the background would have (I4 as for
        any renewal). If a generation moved, the usual path.
        """
        local = self._local
        now = self._timer()
        expired = [name for name in names if local.expired_entry(user_id, name, now) is not None]
        if not expired or await self._user_gen_after(user_id, self._next_seq()) is None:
            return {}
        now = self._timer()
        out: dict[str, AppConfigData] = {}
        for name in expired:
            # again: an invalidation may have come while the read was waiting
            entry = local.expired_entry(user_id, name, now)
            if entry is not None and local.renew(entry, user_id, name, now):
                out[name] = entry.value
        return out

    async def _recompose_local(
        self, user_id: UUID, names: list[str], epoch: int, shared: SharedLoader
    ) -> dict[str, AppConfigData]:
        """Views of ``names`` rebuilt from live L1 entries that shared writes made stale.

        The entry's user part (its user-scope fragment, or its absence) is paired
        with a shared part read under fresh generation readings (a local write's
        bump is one) by a query sent after the entry was stored. The pair is a
        view that existed if the user's generation still holds after that query:
        the user part held from before it until then. One background read of the
        generations of every user waiting for this (the renewal's refresh)
        confirms it. No lookup in Valkey, no envelope parsed.
        """
        local = self._local
        now = self._timer()
        server = self._epoch(now)
        if server is None:
            return {}
        olds: dict[str, tuple[AppConfigData, bool]] = {}
        fresh: dict[str, int | None] = {}
        # the entries' domain and user generation, and the shared readings' public and
        # domain generations: every name rebuilt here must agree on them
        under: tuple[str, int, int, int] | None = None
        read_at, after = now, 0
        for name in names:
            entry = local.stale_entry(user_id, name, now)
            if entry is None or entry.basis is None or entry.domain is None:
                continue
            gens, basis_epoch = entry.basis
            current, oldest = self._current(name, entry.domain, gens[3], now)
            # no fresh readings; or a public-scope invalidation (the operators' flush)
            # or a restart since the entry was made: the usual path
            if current is None or basis_epoch != server or current[0] != gens[0]:
                continue
            key = (entry.domain, gens[3], current[0], current[2])
            under = under or key
            if key == under:
                olds[name] = (entry.value, bool(entry.user_scope))
                fresh[name] = current[1]
                read_at = min(read_at, oldest)
                after = max(after, entry.seq)
        if under is None or not olds:
            return {}
        domain, user_gen, public, domain_gen = under
        plan = _FillPlan(
            domain=domain,
            public=public,
            names=fresh,
            domain_gen=domain_gen,
            user=user_gen,
            user_domain=None,
            epoch=server,
            read_at=read_at,
        )
        parts = await self._shared_parts(domain, list(olds), plan, shared, after=after)
        confirmed = await self._user_gen_after(user_id, self._next_seq())
        if confirmed is None or confirmed[0] != user_gen:
            return {}  # the user wrote meanwhile (or no reading): the usual path
        plan.read_at = min(plan.read_at, confirmed[1])
        views = self._rebuild(user_id, olds, parts, plan, epoch)
        self._stats.l1_recomposed += len(views)
        return views

    async def _user_gen_after(self, user_id: UUID, seq: int) -> tuple[int | None, float] | None:
        """A reading of the user's generation requested after request number ``seq``:
        ``(value, read at)``, or None if Valkey could not be asked.

        The user joins the background refresh (one pipeline for every user waiting);
        a refresh already in flight reads it in its next round trip. One wait at most:
        a refresh that stops early (breaker open, bumps pending) leaves it unread.
        """
        key = K.user_gen_key(user_id)
        local = self._local
        reading = local.gen(key, self._timer())
        if reading is None or reading[2] <= seq:
            local.due[user_id] = None
            if self._refreshing is None:
                self._start_refresh()
            refreshing = self._refreshing
            if refreshing is None:
                return None
            await asyncio.wait([refreshing])  # neither cancels it nor raises its error
            reading = local.gen(key, self._timer())
        if reading is None or reading[2] <= seq:
            return None
        return reading[0], reading[1]

    async def _recompose(
        self,
        user_id: UUID,
        names: list[str],
        plan: _FillPlan,
        epoch: int,
        shared: SharedLoader,
    ) -> dict[str, AppConfigData]:
        """Views of ``names`` rebuilt from outdated envelopes whose user part holds.

        An envelope in ``plan.reusable`` has the user's current generation: the
        user's own fragment (or its absence) in it is current, and only shared
        scopes (public, domain, domain_user_defaults, the policy) may have
        changed. The shared generations are read again first: the user part is
        as new as the ``MGET``, so the shared part must be too (generations the
        process cached up to ``local_ttl`` ago could pair a new user fragment
        with an old domain fragment, a view that never existed). The shared
        parts then come from :meth:`_shared_parts` under those generations,
        which go into the new envelopes as for a DB load (I3).
        """
        domain, server = plan.domain, plan.epoch
        if domain is None or server is None or plan.user is None:
            return {}
        candidates = [
            name
            for name in names
            if (found := plan.reusable.get(name)) is not None
            and found[1].domain == domain
            # A public-scope invalidation (the operators' flush) reloads everything.
            and found[1].gens[0] == plan.public
        ]
        if not candidates:
            return {}
        now = self._timer()
        gen_keys = [K.PUBLIC_GEN, *map(K.name_gen_key, candidates)]
        if domain != K.NO_DOMAIN:
            gen_keys.append(K.domain_gen_key(domain))
        # The user part has held since plan.user_since: a shared reading requested
        # after that describes a moment when both held. Older ones (say, from before
        # a shared write that came before the user's) are read again.
        stale = [
            key
            for key in gen_keys
            if (reading := self._local.gen(key, now)) is None or reading[2] <= plan.user_since
        ]
        if stale and not await self._fetch_gens(stale, now):
            return {}
        fresh: dict[str, int | None] = {}
        olds: dict[str, tuple[AppConfigData, bool]] = {}
        public = domain_gen = 0
        read_at = plan.read_at
        for name in candidates:
            raw, header = plan.reusable[name]
            current, oldest = self._current(name, domain, plan.user, now)
            if current is None or current[0] != header.gens[0] or self._epoch(now) != server:
                continue
            old = self._body(user_id, name, raw, header)
            if old is not None:
                fresh[name] = current[1]
                olds[name] = (old, bool(header.user_scope))
                public, domain_gen = current[0], current[2]
                read_at = min(read_at, oldest)
        if not olds:
            return {}
        plan = dataclasses.replace(
            plan, public=public, names=fresh, domain_gen=domain_gen, read_at=read_at
        )
        parts = await self._shared_parts(domain, list(olds), plan, shared)
        views = self._rebuild(user_id, olds, parts, plan, epoch)
        self._stats.recomposed += len(views)
        return views

    def _rebuild(
        self,
        user_id: UUID,
        olds: dict[str, tuple[AppConfigData, bool]],
        parts: dict[str, SharedPart | None],
        plan: _FillPlan,
        epoch: int,
    ) -> dict[str, AppConfigData]:
        """Merge each old view's user part (``(view, chain had the user scope)``) with
        the new shared part, and store the results under ``plan`` as a DB load's."""
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
            loaded = LoadedViews(
                domain=plan.domain, views=views, with_policy=frozenset(chains), chains=chains
            )
            # L1: local_ttl after the oldest reading used (the MGET's or a shared one).
            self._store(user_id, list(views), loaded, plan, epoch, plan.read_at, domain_known=False)
        return views

    async def _shared_parts(
        self,
        domain: str,
        names: list[str],
        plan: _FillPlan,
        shared: SharedLoader,
        *,
        after: int = 0,
    ) -> dict[str, SharedPart | None]:
        """The shared parts of ``names`` under ``plan``'s generations: memory, flight or DB.

        ``after``: only parts whose query was sent after request number ``after``;
        a name whose part is older and still loading is left out.
        """
        out: dict[str, SharedPart | None] = {}
        waits: list[tuple[str, asyncio.Future[SharedPart | None]]] = []
        lead: dict[str, tuple[_SharedTag, Any]] = {}
        flights = self._shared_flights
        seq = self._next_seq()
        for name in names:
            tag: _SharedTag = (plan.public, plan.names[name], plan.domain_gen, plan.epoch)  # type: ignore[assignment]
            cached = self._shared.get((domain, name))
            if cached is not None and cached[0] == tag and cached[2] > after:
                out[name] = cached[1]
            elif (flight := flights.get((domain, name, tag))) is not None:
                if flight.epoch > after:  # a shared flight's "epoch" is its request number
                    waits.append((name, flight.future))
            else:
                lead[name] = (tag, flights.start((domain, name, tag), seq))
        if lead:
            try:
                loaded = await shared(None if domain == K.NO_DOMAIN else domain, list(lead))
                self._stats.db_loads += 1
                self._stats.shared_loads += 1
            except BaseException as exc:
                for _tag, flight in lead.values():
                    settle(flight.future, exc)
                raise
            finally:
                for name, (tag, flight) in lead.items():
                    flights.finish((domain, name, tag), flight)
            for name, (tag, flight) in lead.items():
                part = loaded.get(name)
                self._shared[(domain, name)] = (tag, part, seq)
                if not flight.future.done():
                    flight.future.set_result(part)
                out[name] = part
        for name, future in waits:
            waited = await wait_flight(future)
            if not isinstance(waited, LeaderCancelled):  # else: a full load for this name
                out[name] = waited
        return out

    def _store(
        self,
        user_id: UUID,
        names: list[str],
        loaded: LoadedViews,
        plan: _FillPlan | None,
        epoch: int,
        started: float,
        *,
        domain_known: bool = True,
    ) -> None:
        """Fill L1 now, and Valkey in the background (one pipelined round trip).

        The envelopes carry the generations read before the DB query, so when
        the background write lands does not matter for correctness (I3).
        ``domain_known=False``: ``loaded.domain`` is a guess, not the DB's answer.
        """
        domain: str | None = K.NO_DOMAIN if loaded.domain is None else loaded.domain
        if domain_known:
            self._local.domains[user_id] = loaded.domain or K.NO_DOMAIN
        elif loaded.domain is None:
            domain = None  # L1 then treats any domain invalidation as concerning it
        expires = started + self.local_ttl
        seq = self._next_seq()
        sets: list[tuple[str, bytes]] = []
        for name in names:
            if name not in loaded.with_policy:
                continue  # never cache a name without a policy
            view = loaded.views[name]
            data_json = view.__pydantic_serializer__.to_json(view)  # bytes: the size is real
            if len(data_json) > self.max_value_bytes:
                self._stats.oversize_values += 1
                self._stats.fills_skipped += 1
                continue
            gens = (
                plan.gens(name)
                if plan is not None
                and domain is not None
                and plan.domain == domain
                and plan.epoch is not None
                else None
            )
            basis = None if gens is None else (gens, plan.epoch)  # type: ignore[union-attr]
            chain = loaded.chains.get(name)
            user_scope = None if chain is None else AppConfigScopeType.USER in chain
            self._local.put(
                user_id,
                name,
                view,
                domain,
                epoch,
                expires,
                basis,  # type: ignore[arg-type]
                seq=seq,
                user_scope=user_scope,
            )
            if plan is None:
                continue
            if gens is None:
                self._stats.fills_skipped += 1
                continue
            envelope = K.encode_envelope(
                user_id,
                name,
                domain,  # type: ignore[arg-type]
                gens,
                plan.epoch,  # type: ignore[arg-type]
                data_json,
                user_scope,
            )
            sets.append((K.merged_key(user_id, name), envelope))
            if self._decoded is not None:  # these bytes will come back: no need to parse them
                self._decoded[(user_id, name)] = (envelope, view)
        if plan is None:
            return
        if domain_known and domain is not None and plan.user_domain != domain:
            sets.append((K.user_domain_key(user_id), domain.encode()))
        if sets:
            self._queue_fill(sets)

    def _queue_fill(self, sets: list[tuple[str, bytes]]) -> None:
        """Queue envelopes for Valkey; one task writes all that queued meanwhile.

        Fills of concurrent reads (many users after a shared write, a warm-up)
        share pipelined round trips instead of each taking a pool connection.
        """
        if len(self._fill_queue) >= _FILL_QUEUE_MAX:
            self._stats.fills_skipped += len(sets)
            return
        self._fill_queue.extend(sets)
        if self._filling is None:
            self._filling = task = asyncio.get_running_loop().create_task(self._flush_fills())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _flush_fills(self) -> None:
        try:
            await asyncio.sleep(0)  # let this loop iteration's reads add theirs
            while self._fill_queue:
                batch = self._fill_queue[:_FILL_BATCH]
                del self._fill_queue[:_FILL_BATCH]
                await self._fill(batch)
        finally:
            self._filling = None

    async def _fill(self, sets: list[tuple[str, bytes]]) -> None:
        if not self._remote.available():
            self._stats.fills_skipped += len(sets)
            return

        async def run() -> Any:
            pipe = self.client.pipeline(transaction=False)
            for key, payload in sets:
                pipe.set(key, payload, ex=self.ttl)
            return await pipe.execute()

        try:
            await self._remote.call(run)
        except Exception as exc:  # a failed fill is only a lost shortcut
            self._stats.fills_skipped += len(sets)
            self._log_failure("valkey fill failed", exc)
        else:
            self._stats.fills += len(sets)

    async def drain(self) -> None:
        """Wait until background loads and fills have finished (tests, shutdown)."""
        # Wait only for unfinished tasks: a finished one leaves the set by a done-callback
        # that needs a turn of the loop, and since Python 3.12 gather() of finished tasks
        # returns without yielding one, so `while self._tasks: await gather(...)` spun.
        while pending := [task for task in self._tasks if not task.done()]:
            await asyncio.wait(pending)

    async def _l2_ready(self) -> bool:
        """May Valkey be used now? Pending generation bumps must land first."""
        if not self._pending:
            return self._remote.available()
        if self._replaying is None or self._replaying.done():
            self._replaying = asyncio.get_running_loop().create_task(self._replay())
        return await asyncio.shield(self._replaying)

    async def _replay(self) -> bool:
        # One attempt per cool-down: a Valkey that takes the bump but cannot
        # replicate it (WAIT) must not cost every read a round trip.
        now = self._timer()
        if now < self._next_replay_at or not self._remote.available():
            return False
        await self._send_bumps([], self._next_seq(), now)
        return not self._pending

    def _saw_user_gen(self, user_key: str, value: int | None) -> int:
        """Record a reply's user generation; return since when that value is known to hold.

        The stamp is taken when the reply is handled: a request numbered above it
        was sent after the value was current in Valkey.
        """
        known = self._user_since.get(user_key)
        if known is not None and known[0] == value and value is not None:
            return known[1]
        stamp = self._next_seq()
        self._user_since[user_key] = (value, stamp)
        return stamp

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    async def _l2_lookup(
        self,
        user_id: UUID,
        names: list[str],
        epoch: int,
        *,
        plan_fill: bool,
        force: bool = False,
    ) -> tuple[dict[str, AppConfigData], _FillPlan | None]:
        """One ``MGET`` in the user's slot (plus due generations); validate the envelopes."""
        local = self._local
        now = self._timer()
        seq = self._next_seq()
        epoch_due = self._epoch(now) is None
        domain = local.domains.get(user_id)
        wanted = [K.PUBLIC_GEN, *map(K.name_gen_key, names)]
        if domain:
            wanted.append(K.domain_gen_key(domain))
        due = [key for key in wanted if local.gen(key, now) is None]
        user_keys = [K.merged_key(user_id, name) for name in names]
        user_keys += [K.user_gen_key(user_id), K.user_domain_key(user_id)]
        client = self.client

        def queue(pipe: Any) -> None:
            # execute_command: a cluster pipeline blocks .mget(), though one slot is legal
            pipe.execute_command("MGET", *user_keys)
            for key in due:
                pipe.get(key)

        try:
            if due or epoch_due:
                reply = await self._pipelined(queue, now, seq)
            else:
                reply = [await self._remote.call(lambda: client.mget(user_keys))]
        except Exception as exc:  # failures, and replies of another shape
            self._log_failure("valkey read failed", exc)
            self._stats.l2_skipped += len(names)
            return {}, None
        try:
            values = reply[0]
            if not isinstance(values, list) or len(values) != len(user_keys):
                raise TypeError(f"MGET answered {type(values).__name__}")
            for key, raw in zip(due, reply[1:], strict=True):
                local.set_gen(key, _as_int(raw), now, seq)
            user_gen = _as_int(values[-2])
            user_key = K.user_gen_key(user_id)
            local.set_gen(user_key, user_gen, now, seq)
            user_since = self._saw_user_gen(user_key, user_gen)
            raw_domain = values[-1]
            user_domain = raw_domain.decode() if isinstance(raw_domain, bytes) else None
        except (TypeError, ValueError, IndexError) as exc:  # a reply of another shape
            self._reject("valkey answered a reply of the wrong shape", exc)
            self._stats.l2_skipped += len(names)
            return {}, None
        if user_domain is not None:
            domain = user_domain
            local.domains[user_id] = user_domain

        candidates = self._headers(user_id, names, values, user_domain)
        # Domains named by envelopes or the user_domain key whose generation is not cached.
        needed = {header.domain for _, _, header in candidates}
        if domain:
            needed.add(domain)
        late = [
            K.domain_gen_key(d)
            for d in needed
            if d != K.NO_DOMAIN and local.gen(K.domain_gen_key(d), now) is None
        ]
        if late and not await self._fetch_gens(late, now):
            return {}, None

        found: dict[str, AppConfigData] = {}
        reusable: dict[str, tuple[bytes, K.Header]] = {}
        server_epoch = self._epoch(now)
        put_seq = self._next_seq()  # numbered after the reply: see LocalTier.stale_entry
        for name, raw, header in candidates:
            current, oldest = self._current(name, header.domain, user_gen, now)
            if current is None or header.gens != current or header.epoch != server_epoch:
                self._stats.envelopes_outdated += 1
                if (
                    header.user_scope is not None
                    and user_gen is not None
                    and header.gens[3] == user_gen
                    and header.epoch == server_epoch
                ):
                    reusable[name] = (raw, header)  # only shared scopes changed
                continue
            data = self._body(user_id, name, raw, header)
            if data is not None:
                found[name] = data
                basis = (tuple(current), server_epoch)
                local.put(
                    user_id,
                    name,
                    data,
                    header.domain,
                    epoch,
                    oldest + self.local_ttl,
                    basis,  # type: ignore[arg-type]
                    seq=put_seq,
                    user_scope=header.user_scope,
                )
        self._stats.l2_hits += len(found)
        self._stats.l2_misses += len(names) - len(found)
        missing = names if force else [name for name in names if name not in found]
        if not plan_fill or not missing:
            return found, None
        plan = await self._make_plan(user_id, missing, domain, user_gen, user_domain, now)
        if plan is not None and reusable:
            plan.reusable = reusable
            plan.user_since = user_since
        return found, plan

    def _headers(
        self, user_id: UUID, names: list[str], values: list[Any], user_domain: str | None
    ) -> list[tuple[str, bytes, K.Header]]:
        """The envelopes whose header names this user, name and domain."""
        uid_text = str(user_id)
        out = []
        for name, raw in zip(names, values, strict=False):
            if raw is None:
                continue
            try:
                header = K.decode_header(raw)
            except K.BadEnvelope as exc:
                self._reject("rejected a malformed cache envelope", exc)
                continue
            if header.user != uid_text or header.name != name:
                self._reject("rejected a foreign cache envelope", ValueError(name))
                continue
            if user_domain is not None and header.domain != user_domain:
                self._stats.envelopes_outdated += 1  # the user moved domain
                continue
            out.append((name, raw, header))
        return out

    def _body(self, user_id: UUID, name: str, raw: bytes, header: K.Header) -> AppConfigData | None:
        """The view of a current envelope; the same bytes are parsed once (memo)."""
        memo = self._decoded
        key = (user_id, name)
        if memo is not None:
            seen = memo.get(key)
            if seen is not None and seen[0] == raw:
                return seen[1]
        try:
            data = K.decode_body(raw, header)
        except K.BadEnvelope as exc:
            self._reject("rejected a malformed cache envelope", exc)
            return None
        if data.user_id != user_id or data.name != name:
            self._reject("rejected a foreign cache envelope", ValueError(name))
            return None
        if memo is not None:
            memo[key] = (raw, data)
        return data

    def _reject(self, message: str, exc: BaseException) -> None:
        self._stats.envelopes_rejected += 1
        self._log_failure(message, exc)

    def _current(
        self, name: str, domain: str, user_gen: int | None, now: float
    ) -> tuple[list[int] | None, float]:
        """The generations an envelope must carry now, and when the oldest was read."""
        local = self._local
        public = local.gen(K.PUBLIC_GEN, now)
        by_name = local.gen(K.name_gen_key(name), now)
        by_domain = (
            (None, now, 0) if domain == K.NO_DOMAIN else local.gen(K.domain_gen_key(domain), now)
        )
        if public is None or by_name is None or by_domain is None:
            return None, now
        domain_gen = 0 if domain == K.NO_DOMAIN else by_domain[0]
        values = [public[0], by_name[0], domain_gen, user_gen]
        if any(v is None for v in values):
            return None, now
        return values, min(public[1], by_name[1], by_domain[1])  # type: ignore[return-value]

    def _epoch(self, now: float) -> int | None:
        cached = self._local.gen(K.EPOCH, now)
        return None if cached is None else cached[0]

    async def _pipelined(
        self, queue: Callable[[Any], None], now: float, seq: int, *, epoch: bool = False
    ) -> list[Any]:
        """One round trip: the commands ``queue`` adds, plus the server epoch when it is due.

        On a standalone server ``INFO server`` rides in the pipeline; a cluster's
        epoch comes from every primary, in parallel with it. ``epoch=True`` reads
        the epoch even if it is not due. Returns the replies of ``queue``'s
        commands; raises what the call raises.
        """
        epoch_due = epoch or self._epoch(now) is None
        info_in_pipe = epoch_due and not self._cluster

        async def run() -> Any:
            pipe = self.client.pipeline(transaction=False)
            queue(pipe)
            if info_in_pipe:
                pipe.execute_command("INFO", "server")
            if not epoch_due or info_in_pipe:
                return await pipe.execute(), None
            return await asyncio.gather(pipe.execute(), self._cluster_info())

        reply, cluster_info = await self._remote.call(run)
        if not epoch_due:
            return list(reply)
        info = reply[-1] if info_in_pipe else cluster_info
        self._local.set_gen(K.EPOCH, K.epoch_of(info), now, seq)
        return list(reply[:-1] if info_in_pipe else reply)

    async def _cluster_info(self) -> Any:
        return await self.client.info("server", target_nodes=self.client.PRIMARIES)

    async def _fetch_gens(self, gen_keys: list[str], now: float, *, epoch: bool = False) -> bool:
        """Read generations (and the epoch when due, or asked for) in one round trip.

        False if Valkey failed or answered something else; the failure is logged.
        """
        seq = self._next_seq()

        def queue(pipe: Any) -> None:
            for key in gen_keys:
                pipe.get(key)

        try:
            reply = await self._pipelined(queue, now, seq, epoch=epoch)
            readings = [(key, _as_int(raw)) for key, raw in zip(gen_keys, reply, strict=True)]
        except Exception as exc:  # failures, and replies of another shape
            self._log_failure("valkey generation read failed", exc)
            return False
        for key, value in readings:
            self._local.set_gen(key, value, now, seq)
            if key.startswith(K.USER_GEN_PREFIX):
                self._saw_user_gen(key, value)
        return True

    async def _make_plan(
        self,
        user_id: UUID,
        names: list[str],
        domain: str | None,
        user_gen: int | None,
        user_domain: str | None,
        now: float,
    ) -> _FillPlan | None:
        """Gather the generations for filling ``names``; create absent ones (random base)."""
        local = self._local
        gen_keys = [K.PUBLIC_GEN, *map(K.name_gen_key, names)]
        if domain and domain != K.NO_DOMAIN:
            gen_keys.append(K.domain_gen_key(domain))
        known: dict[str, int | None] = {}
        for key in gen_keys:
            cached = local.gen(key, now)
            known[key] = None if cached is None else cached[0]
        user_key = K.user_gen_key(user_id)
        known[user_key] = user_gen
        absent = [key for key, value in known.items() if value is None]
        if absent:
            seq = self._next_seq()
            bases = {key: _gen_base() for key in absent}

            async def run() -> Any:
                pipe = self.client.pipeline(transaction=False)
                for key, base in bases.items():
                    pipe.set(key, base, nx=True, get=True)
                return await pipe.execute()

            try:
                reply = await self._remote.call(run)
            except Exception as exc:
                self._log_failure("valkey generation init failed", exc)
                return None
            for key, raw in zip(absent, reply, strict=True):
                value = _as_int(raw) if raw is not None else bases[key]
                known[key] = value
                if key != user_key:
                    local.set_gen(key, value, now, seq)
        domain_gen: int | None = 0
        if domain is None:
            domain_gen = None
        elif domain != K.NO_DOMAIN:
            domain_gen = known[K.domain_gen_key(domain)]
        return _FillPlan(
            domain=domain,
            public=known[K.PUBLIC_GEN],
            names={name: known[K.name_gen_key(name)] for name in names},
            domain_gen=domain_gen,
            user=known[user_key],
            user_domain=user_domain,
            epoch=self._epoch(now),
            read_at=now,
        )

    # -- invalidation ---------------------------------------------------------------

    async def _bump(self, gen_keys: list[str]) -> None:
        """INCR each generation (creating it at a random base), replaying pending bumps too."""
        self._stats.invalidations += len(gen_keys)
        seq = self._next_seq()
        if not self._remote.available():
            self._defer(gen_keys, seq)
            return
        await self._send_bumps(gen_keys, seq, self._timer())

    async def _send_bumps(self, gen_keys: list[str], seq: int, now: float) -> None:
        todo = list(dict.fromkeys([*self._pending, *gen_keys]))
        if not todo:
            return
        broadcast = self._broadcast
        if broadcast is not None:
            broadcast.ensure_started()

        async def run() -> Any:
            pipe = self.client.pipeline(transaction=False)
            for key in todo:
                pipe.set(key, _gen_base(), nx=True)
                pipe.incr(key)
            if broadcast is not None:
                broadcast.add_publish(pipe, todo)
            if self.wait_replicas:
                pipe.execute_command("WAIT", self.wait_replicas, self._wait_ms)
            return await pipe.execute()

        try:
            # WAIT blocks up to wait_timeout on the server: the budget must cover it.
            reply = await self._remote.call(run, extra_time=self._wait_ms / 1000)
            if self.wait_replicas and int(reply[-1]) < self.wait_replicas:
                raise _NotReplicated(f"{reply[-1]} of {self.wait_replicas} replicas acknowledged")
        except BaseException as exc:  # replayed before Valkey is trusted again
            self._defer(todo, seq)
            # At most one replay attempt per cool-down (a WAIT that nobody answers
            # must not cost every following read another wait_timeout).
            self._next_replay_at = now + self._remote.breaker.cooldown
            if not isinstance(exc, Exception):
                raise  # cancelled after the DB commit: the bump stays pending
            self._log_failure("valkey invalidation failed; will replay", exc)
            return
        # Numbered after the reply: a GET sent while the INCR was in flight may be
        # answered after it, and must not put the old value back.
        seq = self._next_seq()
        for key, value in zip(todo, reply[1 : 2 * len(todo) : 2], strict=True):
            if not key.startswith(K.USER_GEN_PREFIX):
                self._local.set_gen(key, _as_int(value), now, seq)
        self._pending.difference_update(todo)
        if _logger.isEnabledFor(logging.DEBUG):
            _logger.debug("bumped %s", todo)

    def _apply_remote(self, gen_keys: list[str]) -> None:
        """Another instance bumped these generations: drop what they cover locally."""
        local = self._local
        seq = self._next_seq()
        for key in gen_keys:
            kind, _, ident = key.removeprefix(K.PREFIX + "gen:").partition(":")
            if kind == "user":
                try:
                    local.invalidate_user(UUID(ident.strip("{}")))
                except ValueError:
                    continue
            elif kind == "domain" and ident:
                local.invalidate_domain(ident)
            elif kind == "name" and ident:
                local.invalidate_name(ident)
            elif key == K.PUBLIC_GEN:
                local.invalidate_public()
            elif key == K.POLICIES_GEN:
                self._policies_at = local.mark()
            else:
                continue
            local.forget_gen(key, seq)

    def _bump_later(self, gen_keys: list[str]) -> None:
        """Count the invalidation, and leave its bumps pending for the next read to replay."""
        self._stats.invalidations += len(gen_keys)
        self._defer(gen_keys, self._next_seq())

    def _defer(self, gen_keys: list[str], seq: int) -> None:
        for key in gen_keys:
            self._pending.add(key)
            self._local.forget_gen(key, seq)

    def _log_failure(self, message: str, exc: BaseException) -> None:
        with suppress_with_log(Exception, message, logger=_logger, throttle=self._throttle):
            raise exc
