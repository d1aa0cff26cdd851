"""Valkey fails under load; requests keep succeeding with DB-correct answers (I5).

Each test drives reads (and writes) through an ``AppConfigFragmentRepository``
with an ``AppConfigFragmentCacheSource`` while the real embedded Valkey is
paused, killed, filled up, or reached through the fault proxy. Every answer is
compared with the DB-only repository read after it (no write in between); the
worst request latency is printed, never asserted. The clock of the cache source
(its TTLs and the breaker cool-down) is a :class:`FakeClock`.
"""

from __future__ import annotations

import asyncio
import inspect
import random
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import valkey.exceptions as vex
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from appconfig_cache import (
    AppConfigFragmentCacheSource,
    AppConfigFragmentRepository,
    AppConfigPolicyRepository,
    AppConfigScopeType,
)
from appconfig_cache.embedded import EmbeddedValkey
from appconfig_cache.tiered import keys as K
from tests.support.clock import FakeClock
from tests.support.fragments import domain_fragment, my_fragment, public_fragment, user_fragment
from tests.support.valkey import RaiseOnCall, direct_client

from .conftest import (
    Load,
    StackFactory,
    belongs_to,
    own_config,
    pg_target,
    pg_url_via,
    seed_population,
    wait_for,
)
from .proxy import FaultProxy

pytestmark = pytest.mark.slow

COOLDOWN = 5.0


async def _recover(load: Load, cache: AppConfigFragmentCacheSource, clock: FakeClock) -> int:
    """Valkey is back: move the clock past each cool-down until a full sweep is all L2 hits.

    Returns how many times the breaker opened again on the way (stale pooled
    connections each fail once: see ``test_reset_idle_connections_...``).
    """
    opens = cache.stats.breaker_opens
    keys = len(load.population.users) * len(load.population.names)
    for _ in range(20):
        clock.advance(COOLDOWN + 0.1)
        await load.read_round()
        stats = cache.stats
        if stats.breaker_state != "closed" or stats.pending_bumps:
            continue
        await load.sweep()
        if (await load.sweep()) == (keys, 0):
            return cache.stats.breaker_opens - opens
    raise AssertionError(f"the cache did not recover: {cache.stats}")


# -- SIGSTOP ----------------------------------------------------------------------------------


async def test_sigstop_under_steady_load(
    engine: AsyncEngine,
    valkey_url: str,
    embedded_valkey_server: EmbeddedValkey,
    make_stack: StackFactory,
    clock: FakeClock,
) -> None:
    server = embedded_valkey_server
    population = await seed_population(engine)
    # Valkey only (no L1): every read of the load asks Valkey while it may.
    stack = await make_stack(
        server.url, timer=clock, local_maxsize=0, probe_timeout=0.5, breaker_cooldown=COOLDOWN
    )
    cache = stack.cache
    load = Load(stack.repo, AppConfigFragmentRepository(engine), population)
    for _ in range(3):
        await load.write()
        await load.read_round()
    await load.sweep()
    hits, misses = await load.sweep()
    assert (hits, misses) == (len(population.users) * len(population.names), 0)

    server.pause()
    paused_at = time.monotonic()
    try:
        await wait_for(
            lambda: cache.stats.breaker_state == "open",
            step=load.read_round,
            what="the breaker to open",
        )
        opened = cache.stats
        assert opened.timeouts_forgiven == 0  # the first health probe confirmed the hang
        timeouts_before_open = opened.valkey_timeouts
        calls, skipped = stack.calls.data_round_trips, opened.l2_skipped
        timeouts, errors = opened.valkey_timeouts, opened.valkey_errors
        requests = load.requests
        # Several seconds of steady load, writes included, against the frozen server.
        while time.monotonic() - paused_at < 2.5:
            await load.write()
            await load.read_round()
        stats = cache.stats
        assert stats.breaker_state == "open" and stats.breaker_opens == 1
        # No request issued while open asked Valkey, so none waited on it.
        assert stack.calls.data_round_trips == calls
        assert (stats.valkey_timeouts, stats.valkey_errors) == (timeouts, errors)
        assert stats.l2_skipped > skipped
        assert stats.pending_bumps > 0  # the writes' bumps wait for Valkey
        while_open = load.requests - requests
    finally:
        server.resume()

    reopened = await _recover(load, cache, clock)  # the L2 hit rate is back to 100%
    assert reopened == 0
    load.report(
        f"SIGSTOP {time.monotonic() - paused_at:.1f}s (timeouts before open "
        f"{timeouts_before_open}, requests while open {while_open})"
    )
    load.check()


# -- kill, restart empty ------------------------------------------------------------------


async def test_killed_and_restarted_empty(
    engine: AsyncEngine,
    valkey_url: str,
    embedded_valkey_server: EmbeddedValkey,
    make_stack: StackFactory,
    clock: FakeClock,
) -> None:
    server = embedded_valkey_server
    population = await seed_population(engine)
    stack = await make_stack(server.url, timer=clock, local_maxsize=0, breaker_cooldown=COOLDOWN)
    oracle = AppConfigFragmentRepository(engine)
    load = Load(stack.repo, oracle, population)
    await load.sweep()  # learns the domains
    await load.sweep()  # fills
    uid, name = population.users[0], population.names[0]
    key = K.merged_key(uid, name)
    gen_keys = [K.PUBLIC_GEN, K.name_gen_key(name), K.domain_gen_key(population.domain_of[uid])]
    gen_keys.append(K.user_gen_key(uid))
    direct = direct_client(server.url)
    try:
        old_envelope = await direct.get(key)
        old_gens = await direct.mget(gen_keys)
        assert old_envelope is not None and None not in old_gens
    finally:
        await direct.aclose()

    server.kill()
    # The outage: reads and writes keep working, and this user's view changes.
    for _ in range(3):
        await load.read_round()
    result = await stack.repo.bulk_update_my(uid, [my_fragment(name, own_config(uid, name, 99))])
    assert not result.failures
    assert cache_state(stack.cache) == "open"
    restarting = asyncio.get_running_loop().create_task(server.arestart())
    while not restarting.done():
        await load.read_round()
    await restarting

    await _recover(load, stack.cache, clock)
    direct = direct_client(server.url)
    try:
        new_gens = await direct.mget(gen_keys)
        # Random bases: no generation took a value it had before the restart.
        assert not {int(g) for g in new_gens if g is not None} & {int(g) for g in old_gens}
        # A restored (older) envelope can never match again, in another process or this one.
        want = await oracle.app_config(uid, name)
        assert want.config is not None and want.config["rev"] == 99
        await direct.set(key, old_envelope)
        fresh = await _fresh_reader(engine, server.url)
        try:
            assert await fresh.repo.app_config(uid, name) == want
            assert fresh.cache.stats.envelopes_outdated == 1
        finally:
            await fresh.aclose()
        await direct.set(key, old_envelope)
        outdated = stack.cache.stats.envelopes_outdated
        assert await stack.repo.app_config(uid, name) == want
        assert stack.cache.stats.envelopes_outdated == outdated + 1
    finally:
        await direct.aclose()
    await load.sweep()
    load.report("kill + restart empty")
    load.check()


async def test_restored_older_snapshot_never_matches(
    engine: AsyncEngine,
    valkey_url: str,
    embedded_valkey_server: EmbeddedValkey,
    make_stack: StackFactory,
    clock: FakeClock,
) -> None:
    server = embedded_valkey_server
    population = await seed_population(engine, users=2)
    stack = await make_stack(server.url, timer=clock, local_maxsize=0)
    oracle = AppConfigFragmentRepository(engine)
    uid, name = population.users[0], population.names[0]
    for _ in range(2):  # the first read learns the domain, the second fills Valkey
        await stack.repo.app_config(uid, name)
        await stack.cache.drain()
    keys = [K.merged_key(uid, name), K.user_domain_key(uid), K.user_gen_key(uid)]
    keys += [K.PUBLIC_GEN, K.name_gen_key(name), K.domain_gen_key(population.domain_of[uid])]
    direct = direct_client(server.url)
    try:
        snapshot = {key: await direct.dump(key) for key in keys}  # an RDB taken now
        assert None not in snapshot.values()
    finally:
        await direct.aclose()
    # A write whose bump lands on the live server, then the server comes back from the snapshot.
    result = await stack.repo.bulk_update_my(uid, [my_fragment(name, own_config(uid, name, 42))])
    assert not result.failures and stack.cache.stats.pending_bumps == 0
    server.kill()
    server.start()
    direct = direct_client(server.url)
    try:
        for key, value in snapshot.items():
            await direct.restore(key, 0, value, replace=True)
    finally:
        await direct.aclose()
    want = await oracle.app_config(uid, name)
    other = await _fresh_reader(engine, server.url)  # a process that starts after the restore
    try:
        got = await other.repo.app_config(uid, name)
    finally:
        await other.aclose()
    assert got.config is not None and got.config["rev"] == 42, "an envelope from the snapshot"
    assert got == want


def cache_state(cache: AppConfigFragmentCacheSource) -> str:
    return cache.stats.breaker_state


class _Reader:
    def __init__(self, client: Any, cache: AppConfigFragmentCacheSource, engine: AsyncEngine):
        self.client, self.cache = client, cache
        self.repo = AppConfigFragmentRepository(engine, cache_source=cache)

    async def aclose(self) -> None:
        await self.cache.aclose()
        await self.client.aclose()


async def _fresh_reader(engine: AsyncEngine, url: str, **kw: Any) -> _Reader:
    """Another process: its own client, L1 and generation cache."""
    from appconfig_cache import make_valkey_client

    client = make_valkey_client(url, socket_timeout=0.3)
    return _Reader(client, AppConfigFragmentCacheSource(client, timer=FakeClock(), **kw), engine)


# -- every exception class a call can raise ------------------------------------------------


def _valkey_exception_classes() -> list[type[BaseException]]:
    return [
        cls
        for _, cls in inspect.getmembers(vex, inspect.isclass)
        if issubclass(cls, BaseException) and cls.__module__ == vex.__name__
    ]


def _make(cls: type[BaseException]) -> Callable[[], BaseException]:
    def make() -> BaseException:
        try:
            return cls("3999 127.0.0.1:6381")  # MovedError and AskError parse their message
        except Exception:
            return cls()

    return make


FAULTS = [(cls.__name__, _make(cls)) for cls in _valkey_exception_classes()]
FAULTS += [("OSError", _make(OSError)), ("asyncio.TimeoutError", _make(asyncio.TimeoutError))]


async def _every_verb(
    engine: AsyncEngine,
    cache: AppConfigFragmentCacheSource,
    population: Any,
    tag: str,
) -> None:
    """Every public entry point once, each answer checked against the DB."""
    repo = AppConfigFragmentRepository(engine, cache_source=cache)
    policies = AppConfigPolicyRepository(engine, cache_source=cache)
    oracle = AppConfigFragmentRepository(engine)
    uid, other = population.users[0], population.users[1]
    name, domain = population.names[0], population.domain_of[uid]
    extra = f"extra_{tag}"

    assert await repo.app_config(uid, name) == await oracle.app_config(uid, name)
    assert await repo.app_configs(uid, population.names) == await oracle.app_configs(
        uid, population.names
    )
    assert await repo.my_app_configs(other) == await oracle.my_app_configs(other)
    await policies.create(extra, [AppConfigScopeType.PUBLIC, AppConfigScopeType.USER])
    await policies.update(extra, list(AppConfigScopeType))
    created = await repo.bulk_create_my(uid, [my_fragment(extra, own_config(uid, extra, 1))])
    assert not created.failures and created.successes == [await oracle.app_config(uid, extra)]
    updated = await repo.bulk_update_my(uid, [my_fragment(extra, own_config(uid, extra, 2))])
    assert not updated.failures and updated.successes == [await oracle.app_config(uid, extra)]
    admin = await repo.admin_bulk_create(
        [domain_fragment(domain, extra, {"d": 1}), public_fragment(extra, {"p": 1})]
    )
    assert not admin.failures
    admin = await repo.admin_bulk_update([domain_fragment(domain, extra, {"d": 2})])
    assert not admin.failures
    assert await repo.app_config(uid, extra) == await oracle.app_config(uid, extra)
    await cache.invalidate_for_scope(AppConfigScopeType.USER, str(uid))
    await cache.invalidate_for_scope(AppConfigScopeType.DOMAIN, domain)
    await cache.invalidate_for_scope(AppConfigScopeType.DOMAIN_USER_DEFAULTS, domain)
    await cache.invalidate_for_scope(AppConfigScopeType.PUBLIC, "public")
    await cache.invalidate_for_policy(name)
    want = await oracle.app_config(other, name)
    await cache.set_merged_config(other, name, want)
    got = await cache.get_merged_config(other, name)
    assert got is None or got == want
    purged = await repo.admin_bulk_purge(
        [
            user_fragment(uid, extra, {}).key,
            domain_fragment(domain, extra, {}).key,
            public_fragment(extra, {}).key,
        ]
    )
    assert not purged.failures
    await policies.purge(extra)
    for user in (uid, other):
        assert await repo.app_configs(user, population.names) == await oracle.app_configs(
            user, population.names
        )
    await cache.drain()


async def test_no_valkey_exception_escapes(
    engine: AsyncEngine, valkey_url: str, make_stack: StackFactory, clock: FakeClock
) -> None:
    """Each class raised by every data call (before, then after Valkey answered)."""
    population = await seed_population(engine, users=2)
    stack = await make_stack(valkey_url, timer=clock)
    calls = stack.calls
    assert len(FAULTS) >= 30
    worst, seen = 0.0, 0
    # After Valkey answered: one class of each kind the breaker tells apart is enough.
    after = {"ConnectionError", "TimeoutError", "ResponseError", "OutOfMemoryError", "OSError"}
    after |= {"asyncio.TimeoutError", "InvalidResponse", "DataError", "ClusterDownError"}
    cases = [("before", label, fault) for label, fault in FAULTS]
    cases += [("after", label, fault) for label, fault in FAULTS if label in after]
    for when, label, fault in cases:
        # A breaker that never opens, so every entry point meets the fault.
        cache = AppConfigFragmentCacheSource(
            calls,
            timer=clock,
            breaker_window=10_000,
            breaker_threshold=10_000,
            breaker_min_calls=10_000,
        )
        raising = RaiseOnCall(fault)
        setattr(calls, when, raising)
        start = time.perf_counter()
        try:
            await _every_verb(engine, cache, population, f"{when}_{label.replace('.', '_')}")
        finally:
            setattr(calls, when, None)
            await cache.aclose()
        worst = max(worst, time.perf_counter() - start)
        stats = cache.stats
        counted = stats.valkey_errors + stats.valkey_timeouts + stats.valkey_refusals
        # Every faulted call went through the budgeted path and was classified once.
        assert raising.raised == counted > 0, (label, when, stats)
        seen += 1
    print(
        f"[fault] exceptions: {seen} cases, failed=0, worst entry-point sweep {worst * 1000:.0f}ms"
    )


# -- garbage and protocol errors from the proxy --------------------------------------------

PROXY_FAULTS: list[Any] = [
    pytest.param(lambda p: p.set_garbage(), id="garbage"),
    pytest.param(lambda p: p.set_garbage(b"+OK\r\n:1\r\n$-7\r\n"), id="malformed-resp"),
    pytest.param(lambda p: p.set_answer(b"-ERR injected\r\n"), id="error-replies"),
    pytest.param(lambda p: p.set_answer(b"-WRONGTYPE injected\r\n"), id="wrongtype-replies"),
    pytest.param(lambda p: p.set_answer(b"$-1\r\n"), id="nil-replies"),
    pytest.param(lambda p: p.set_answer(b":1\r\n"), id="integer-replies"),
    pytest.param(lambda p: p.set_answer(b"*0\r\n"), id="empty-array-replies"),
    pytest.param(lambda p: p.set_fragment(64), id="fragmented"),
    pytest.param(lambda p: p.set_reset(), id="reset"),
    pytest.param(lambda p: p.set_blackhole(), id="blackhole"),
]


@pytest.mark.parametrize("inject", PROXY_FAULTS)
async def test_proxy_faults_never_reach_the_caller(
    engine: AsyncEngine,
    valkey_proxy: FaultProxy,
    make_stack: StackFactory,
    clock: FakeClock,
    inject: Callable[[FaultProxy], None],
    request: pytest.FixtureRequest,
) -> None:
    population = await seed_population(engine, users=6)
    stack = await make_stack(
        valkey_proxy.url, timer=clock, local_maxsize=0, probe_timeout=0.3, breaker_cooldown=COOLDOWN
    )
    load = Load(stack.repo, AppConfigFragmentRepository(engine), population)
    await load.sweep()
    inject(valkey_proxy)
    for _ in range(4):
        await load.write()
        await load.read_round(12)
    await _every_verb(engine, stack.cache, population, "proxy")
    during = load.worst
    valkey_proxy.set_pass()
    reopened = await _recover(load, stack.cache, clock)
    load.report(
        f"proxy {request.node.callspec.id} (worst while faulty {during * 1000:.0f}ms, "
        f"breaker re-opened {reopened}x after the fault cleared)"
    )
    load.check()


# -- I5: stopped, killed, garbage: the breaker opens, then closes --------------------------


@pytest.mark.parametrize("fault", ["stop", "kill", "pause", "garbage"])
async def test_i5_breaker_opens_and_closes(
    engine: AsyncEngine,
    valkey_url: str,
    embedded_valkey_server: EmbeddedValkey,
    make_stack: StackFactory,
    clock: FakeClock,
    fault: str,
) -> None:
    server = embedded_valkey_server
    population = await seed_population(engine, users=6)
    async with FaultProxy(("127.0.0.1", server.port)) as proxy:
        url = proxy.url if fault == "garbage" else server.url
        stack = await make_stack(
            url, timer=clock, local_maxsize=0, probe_timeout=0.3, breaker_cooldown=COOLDOWN
        )
        cache = stack.cache
        load = Load(stack.repo, AppConfigFragmentRepository(engine), population)
        await load.sweep()
        breaking = {
            "stop": server.stop,
            "kill": server.kill,
            "pause": server.pause,
            "garbage": proxy.set_garbage,
        }
        healing = {
            "stop": server.start,
            "kill": server.start,
            "pause": server.resume,
            "garbage": proxy.set_pass,
        }
        breaking[fault]()
        try:
            await wait_for(
                lambda: cache.stats.breaker_opens == 1, step=load.read_round, what="open"
            )
            await load.write()
            await load.read_round()
            # Still open: the cool-down has not passed on the injected clock.
            assert cache.stats.breaker_state == "open"
        finally:
            healing[fault]()
        reopened = await _recover(load, cache, clock)
        load.report(f"I5 {fault} (breaker re-opened {reopened}x after the server was back)")
        load.check()


async def test_reset_idle_connections_do_not_open_the_breaker(
    engine: AsyncEngine,
    valkey_proxy: FaultProxy,
    make_stack: StackFactory,
    clock: FakeClock,
) -> None:
    population = await seed_population(engine)
    stack = await make_stack(valkey_proxy.url, timer=clock, local_maxsize=0)
    load = Load(stack.repo, AppConfigFragmentRepository(engine), population)
    await load.sweep()
    await load.sweep()
    idle = len(stack.pool._available_connections)
    assert idle >= 8
    valkey_proxy.abort_all()  # a NAT or firewall drops idle connections; Valkey stays up
    await load.sweep()
    stats = stack.cache.stats
    reopened = await _recover(load, stack.cache, clock)
    load.report(
        f"idle connections reset: {idle} idle, valkey_errors={stats.valkey_errors}, "
        f"breaker opened {stats.breaker_opens}x ({reopened}x more on recovery)"
    )
    load.check()
    assert stats.breaker_opens == 0


# -- Valkey full ------------------------------------------------------------------------------


async def test_valkey_full_fills_fail_silently(
    engine: AsyncEngine,
    valkey_url: str,
    embedded_valkey_server: EmbeddedValkey,
    make_stack: StackFactory,
    clock: FakeClock,
) -> None:
    server = embedded_valkey_server
    population = await seed_population(engine)
    stack = await make_stack(server.url, timer=clock, local_maxsize=0)
    cache = stack.cache
    load = Load(stack.repo, AppConfigFragmentRepository(engine), population)
    await load.sweep()
    admin = direct_client(server.url)
    saved = {
        **(await admin.config_get("maxmemory")),
        **(await admin.config_get("maxmemory-policy")),
    }
    try:
        await admin.config_set("maxmemory-policy", "noeviction")
        await admin.config_set("maxmemory", 1)  # anything stored is too much
        with pytest.raises(vex.OutOfMemoryError):
            await admin.set("probe", b"x")
        refusals, fills = cache.stats.valkey_refusals, cache.stats.fills
        for _ in range(4):
            await load.write()
            await load.read_round()
        await load.sweep()
        stats = cache.stats
        assert stats.valkey_refusals > refusals  # fills and bumps refused ...
        assert stats.fills == fills  # ... and nothing stored
        assert stats.valkey_errors == 0 and stats.breaker_opens == 0
        assert stats.breaker_state == "closed"
    finally:
        await admin.config_set("maxmemory", saved["maxmemory"])
        await admin.config_set("maxmemory-policy", saved["maxmemory-policy"])
        await admin.aclose()
    # Room again: the refused bumps are replayed and Valkey serves again.
    await _recover(load, cache, clock)
    load.report("Valkey full (maxmemory, noeviction)")
    load.check()


# -- invalidations dropped during a write ---------------------------------------------------


@pytest.mark.parametrize("how", ["drop-incr", "blackhole-then-reset"])
async def test_dropped_invalidation_is_replayed(
    engine: AsyncEngine,
    valkey_proxy: FaultProxy,
    make_stack: StackFactory,
    clock: FakeClock,
    how: str,
) -> None:
    population = await seed_population(engine, users=4)
    # The writer without L1, so that its reads show whether they ask Valkey.
    writer = await make_stack(valkey_proxy.url, timer=clock, probe_timeout=0.3, local_maxsize=0)
    other_clock = FakeClock()
    other = await make_stack(valkey_proxy.url, timer=other_clock)  # a second process
    oracle = AppConfigFragmentRepository(engine)
    load = Load(writer.repo, oracle, population)
    uid, name = population.users[0], population.names[0]
    for stack in (writer, other, writer):  # the first read learns the domain, then fills
        assert await stack.repo.app_config(uid, name) == await oracle.app_config(uid, name)
        await stack.cache.drain()

    if how == "drop-incr":
        valkey_proxy.set_drop_matching(b"INCRBY")
    else:
        valkey_proxy.set_blackhole()
    result = await load.timed(
        lambda: writer.repo.bulk_update_my(uid, [my_fragment(name, own_config(uid, name, 7))])
    )
    assert result is not None and not result.failures
    assert writer.cache.stats.pending_bumps == 1
    want = await oracle.app_config(uid, name)
    # Until the bump lands, this process skips Valkey: its reads are fresh.
    skipped = writer.cache.stats.l2_skipped
    assert await load.timed(lambda: writer.repo.app_config(uid, name)) == want
    assert writer.cache.stats.l2_skipped > skipped
    if how == "blackhole-then-reset":
        # The failed bump's timeout started a health probe; it confirms the hang.
        await wait_for(
            lambda: writer.cache.stats.breaker_state == "open", what="the probe to open it"
        )
        valkey_proxy.set_reset()
    valkey_proxy.set_pass()
    clock.advance(COOLDOWN + 0.1)
    await wait_for(
        lambda: writer.cache.stats.pending_bumps == 0,
        step=lambda: load.timed(lambda: writer.repo.app_config(uid, name)),
        what="the bump to be replayed",
    )
    assert await writer.repo.app_config(uid, name) == want
    # The other process sees the write once its L1 entry (local_ttl) has expired.
    other_clock.advance(other.cache.local_ttl)
    assert await other.repo.app_config(uid, name) == want
    await load.sweep()
    load.report(f"invalidation dropped ({how})")
    load.check()


# -- cancellation -------------------------------------------------------------------------------


async def test_cancelled_reads_leave_the_pool_idle_and_never_cross_keys(
    engine: AsyncEngine,
    valkey_proxy: FaultProxy,
    make_stack: StackFactory,
    clock: FakeClock,
) -> None:
    population = await seed_population(engine, users=24)
    stack = await make_stack(
        valkey_proxy.url, timer=clock, local_maxsize=0, max_connections=16, timeout=0.25
    )
    oracle = AppConfigFragmentRepository(engine)
    expected = {
        (uid, name): await oracle.app_config(uid, name)
        for uid in population.users
        for name in population.names
    }
    load = Load(stack.repo, oracle, population)
    await load.sweep()
    valkey_proxy.set_latency(0.02)
    rng = random.Random(11)
    wrong: list[Any] = []
    cancelled = completed = 0

    async def read(uid: uuid.UUID, name: str, how: int) -> None:
        if how == 0:
            views = [(name, await stack.repo.app_config(uid, name))]
        elif how == 1:
            got = await stack.repo.app_configs(uid, population.names)
            views = list(zip(population.names, got, strict=True))
        else:
            view = await stack.cache.get_merged_config(uid, name)
            views = [] if view is None else [(name, view)]
        for n, view in views:
            if view != expected[(uid, n)] or not belongs_to(view, uid, n):
                wrong.append((uid, n, view))

    loop = asyncio.get_running_loop()
    start = time.perf_counter()
    for _ in range(10):
        tasks = []
        for _ in range(300):
            uid, name = rng.choice(population.users), rng.choice(population.names)
            task = loop.create_task(read(uid, name, rng.randrange(3)))
            loop.call_later(rng.uniform(0, 0.15), task.cancel)
            tasks.append(task)
        for outcome in await asyncio.gather(*tasks, return_exceptions=True):
            if isinstance(outcome, asyncio.CancelledError):
                cancelled += 1
            elif isinstance(outcome, BaseException):
                raise outcome
            else:
                completed += 1
    elapsed = time.perf_counter() - start
    await stack.cache.drain()
    pool = stack.pool
    await wait_for(lambda: not pool._in_use_connections, what="the pool to be idle")
    assert wrong == []
    assert stack.cache.stats.envelopes_rejected == 0  # no reply was read for another request
    valkey_proxy.set_pass()
    await load.sweep()
    print(
        f"[fault] cancellation: {cancelled} cancelled, {completed} completed, failed=0, "
        f"wrong=0, {elapsed:.1f}s; pool idle ({len(pool._available_connections)} connections)"
    )
    load.check()


async def test_cancelled_write_leaves_no_stale_envelope(
    engine: AsyncEngine,
    valkey_proxy: FaultProxy,
    make_stack: StackFactory,
    clock: FakeClock,
) -> None:
    population = await seed_population(engine, users=2)
    stack = await make_stack(valkey_proxy.url, timer=clock, local_maxsize=0)
    oracle = AppConfigFragmentRepository(engine)
    uid, name = population.users[0], population.names[0]
    for _ in range(2):  # the first read learns the domain, the second fills Valkey
        assert await stack.repo.app_config(uid, name) == await oracle.app_config(uid, name)
        await stack.cache.drain()
    assert stack.cache.stats.fills > 0

    valkey_proxy.set_drop_matching(b"INCRBY")  # the bump hangs until its budget runs out
    write = asyncio.get_running_loop().create_task(
        stack.repo.bulk_update_my(uid, [my_fragment(name, own_config(uid, name, 5))])
    )
    await wait_for(lambda: valkey_proxy.stats.drops == 1, what="the bump to be sent")
    write.cancel()  # the client went away; the DB commit is done
    with pytest.raises(asyncio.CancelledError):
        await write
    valkey_proxy.set_pass()
    want = await oracle.app_config(uid, name)
    assert want.config is not None and want.config["rev"] == 5
    got = await stack.repo.app_config(uid, name)
    assert got.config is not None and got.config["rev"] == 5, "served the view from before"
    assert got == want


async def test_cancelled_half_open_trial_does_not_wedge_the_breaker(
    engine: AsyncEngine,
    valkey_proxy: FaultProxy,
    make_stack: StackFactory,
    clock: FakeClock,
) -> None:
    population = await seed_population(engine, users=2)
    stack = await make_stack(valkey_proxy.url, timer=clock, local_maxsize=0)
    cache = stack.cache
    load = Load(stack.repo, AppConfigFragmentRepository(engine), population)
    uid, name = population.users[0], population.names[0]
    valkey_proxy.set_reset()
    await wait_for(lambda: cache.stats.breaker_state == "open", step=load.read_round)
    valkey_proxy.set_latency(0.2)
    clock.advance(COOLDOWN + 0.1)
    calls = stack.calls.data_round_trips
    trial = asyncio.get_running_loop().create_task(cache.get_merged_config(uid, name))
    await wait_for(lambda: stack.calls.data_round_trips > calls, what="the trial call")
    trial.cancel()
    with pytest.raises(asyncio.CancelledError):
        await trial
    valkey_proxy.set_pass()
    clock.advance(COOLDOWN + 0.1)
    await wait_for(
        lambda: cache.stats.breaker_state == "closed",
        step=load.read_round,
        timeout=1.0,
        what="the breaker to close",
    )
    load.check()


# -- a slow DB widens the stale-set race ------------------------------------------------------


async def test_stale_set_race_widened_by_a_slow_db(
    engine: AsyncEngine,
    database_url: str,
    valkey_url: str,
    make_stack: StackFactory,
    clock: FakeClock,
) -> None:
    """A read whose DB answer is held by the proxy while a write and its invalidation finish
    must not leave its old value in either tier (I3)."""
    population = await seed_population(engine, users=2)
    uid, name = population.users[0], population.names[0]
    oracle = AppConfigFragmentRepository(engine)
    stack = await make_stack(valkey_url, timer=clock)
    async with FaultProxy(pg_target(database_url)) as db_proxy:
        slow_engine = create_async_engine(pg_url_via(database_url, db_proxy))
        try:
            slow_repo = AppConfigFragmentRepository(slow_engine, cache_source=stack.cache)
            await slow_repo.app_configs(population.users[1], population.names)  # warm the DB pool
            db_proxy.set_latency(0.3)
            sent = db_proxy.stats.bytes_up
            reader = asyncio.get_running_loop().create_task(slow_repo.app_config(uid, name))
            await wait_for(lambda: db_proxy.stats.bytes_up > sent, what="the reader's query")
            done = await stack.repo.bulk_update_my(
                uid, [my_fragment(name, own_config(uid, name, 3))]
            )
            assert not done.failures
            old = await reader
            assert old.config is not None and old.config["rev"] == 0  # the race was hit
            await stack.cache.drain()
        finally:
            await slow_engine.dispose()
    want = await oracle.app_config(uid, name)
    assert want.config is not None and want.config["rev"] == 3
    assert await stack.repo.app_config(uid, name) == want
    other = await _fresh_reader(engine, valkey_url)
    try:
        assert await other.repo.app_config(uid, name) == want
    finally:
        await other.aclose()
    print(f"[fault] slow-DB race: the racing read saw rev {old.config['rev']}; failed=0 stale=0")
