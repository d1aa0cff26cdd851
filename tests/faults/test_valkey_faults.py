"""Valkey fails under load; requests keep succeeding with DB-correct answers (I5).

Each test drives reads (and writes) through an ``AppConfigFragmentRepository``
with an ``AppConfigFragmentCacheSource`` while the real embedded Valkey is
paused, killed, restored from a snapshot, filled up, or made to answer garbage through
the fault proxy. Every answer is compared with the DB-only repository read after it (no
write in between); the worst request latency is printed, never asserted. The clock of the
cache source (its TTLs and the breaker cool-down) is a :class:`FakeClock`.

Exceptions and bad replies are in ``test_error_replies.py``; dropped invalidations,
cancellations and the slow-DB race in ``test_cancellation_and_races.py``.
"""

from __future__ import annotations

import asyncio
import time

import pytest
import valkey.exceptions as vex

from appconfig_cache import (
    AppConfigFragmentCacheSource,
    AppConfigFragmentRepository,
)
from appconfig_cache.embedded import EmbeddedValkey
from appconfig_cache.tiered import keys as cache_keys
from tests.support.fragments import my_fragment
from tests.support.polling import wait_for
from tests.support.valkey import direct_client

from .conftest import (
    COOLDOWN,
    Faults,
    Load,
    fresh_reader,
    own_config,
    recover,
    seed_population,
)
from .proxy import FaultProxy

pytestmark = pytest.mark.slow

# -- SIGSTOP ----------------------------------------------------------------------------------


async def test_sigstop_under_steady_load(faults: Faults, server: EmbeddedValkey) -> None:
    engine, make_stack, clock = faults
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

    reopened = await recover(load, cache, clock)  # the L2 hit rate is back to 100%
    assert reopened == 0
    load.report(
        f"SIGSTOP {time.monotonic() - paused_at:.1f}s (timeouts before open "
        f"{timeouts_before_open}, requests while open {while_open})"
    )
    load.check()


# -- kill, restart empty ------------------------------------------------------------------


async def test_killed_and_restarted_empty(faults: Faults, server: EmbeddedValkey) -> None:
    engine, make_stack, clock = faults
    population = await seed_population(engine)
    stack = await make_stack(server.url, timer=clock, local_maxsize=0, breaker_cooldown=COOLDOWN)
    oracle = AppConfigFragmentRepository(engine)
    load = Load(stack.repo, oracle, population)
    await load.sweep()  # learns the domains
    await load.sweep()  # fills
    uid, name = population.users[0], population.names[0]
    key = cache_keys.merged_key(uid, name)
    gen_keys = [
        cache_keys.PUBLIC_GEN,
        cache_keys.name_gen_key(name),
        cache_keys.domain_gen_key(population.domain_of[uid]),
    ]
    gen_keys.append(cache_keys.user_gen_key(uid))
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

    await recover(load, stack.cache, clock)
    direct = direct_client(server.url)
    try:
        new_gens = await direct.mget(gen_keys)
        # Random bases: no generation took a value it had before the restart.
        assert not {int(g) for g in new_gens if g is not None} & {int(g) for g in old_gens}
        # A restored (older) envelope can never match again, in another process or this one.
        want = await oracle.app_config(uid, name)
        assert want.config is not None and want.config["rev"] == 99
        await direct.set(key, old_envelope)
        fresh = await fresh_reader(engine, server.url)
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
    faults: Faults, server: EmbeddedValkey
) -> None:
    engine, make_stack, clock = faults
    population = await seed_population(engine, users=2)
    stack = await make_stack(server.url, timer=clock, local_maxsize=0)
    oracle = AppConfigFragmentRepository(engine)
    uid, name = population.users[0], population.names[0]
    for _ in range(2):  # the first read learns the domain, the second fills Valkey
        await stack.repo.app_config(uid, name)
        await stack.cache.drain()
    keys = [
        cache_keys.merged_key(uid, name),
        cache_keys.user_domain_key(uid),
        cache_keys.user_gen_key(uid),
    ]
    keys += [
        cache_keys.PUBLIC_GEN,
        cache_keys.name_gen_key(name),
        cache_keys.domain_gen_key(population.domain_of[uid]),
    ]
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
    other = await fresh_reader(engine, server.url)  # a process that starts after the restore
    try:
        got = await other.repo.app_config(uid, name)
    finally:
        await other.aclose()
    assert got.config is not None and got.config["rev"] == 42, "an envelope from the snapshot"
    assert got == want


def cache_state(cache: AppConfigFragmentCacheSource) -> str:
    return cache.stats.breaker_state


# -- I5: stopped, killed, garbage: the breaker opens, then closes --------------------------


@pytest.mark.parametrize("fault", ["stop", "kill", "pause", "garbage"])
async def test_i5_breaker_opens_and_closes(
    faults: Faults, server: EmbeddedValkey, fault: str
) -> None:
    engine, make_stack, clock = faults
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
        reopened = await recover(load, cache, clock)
        load.report(f"I5 {fault} (breaker re-opened {reopened}x after the server was back)")
        load.check()


async def test_reset_idle_connections_do_not_open_the_breaker(
    faults: Faults, valkey_proxy: FaultProxy
) -> None:
    engine, make_stack, clock = faults
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
    reopened = await recover(load, stack.cache, clock)
    load.report(
        f"idle connections reset: {idle} idle, valkey_errors={stats.valkey_errors}, "
        f"breaker opened {stats.breaker_opens}x ({reopened}x more on recovery)"
    )
    load.check()
    assert stats.breaker_opens == 0


# -- Valkey full ------------------------------------------------------------------------------


async def test_valkey_full_fills_fail_silently(faults: Faults, server: EmbeddedValkey) -> None:
    engine, make_stack, clock = faults
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
    await recover(load, cache, clock)
    load.report("Valkey full (maxmemory, noeviction)")
    load.check()
