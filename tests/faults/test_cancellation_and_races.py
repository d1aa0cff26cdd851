"""Invalidations dropped during a write are replayed; cancelled reads, writes and breaker
trials leave nothing stale or wedged; a slow DB widens the stale-set race (I3)."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from appconfig_cache import (
    AppConfigFragmentRepository,
)
from tests.support.clock import FakeClock
from tests.support.fragments import my_fragment
from tests.support.polling import wait_for

from .conftest import (
    COOLDOWN,
    Faults,
    Load,
    belongs_to,
    fresh_reader,
    own_config,
    pg_target,
    pg_url_via,
    seed_population,
)
from .proxy import FaultProxy

pytestmark = pytest.mark.slow

# -- invalidations dropped during a write ---------------------------------------------------


@pytest.mark.parametrize("how", ["drop-incr", "blackhole-then-reset"])
async def test_dropped_invalidation_is_replayed(
    faults: Faults, valkey_proxy: FaultProxy, how: str
) -> None:
    engine, make_stack, clock = faults
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
    faults: Faults, valkey_proxy: FaultProxy
) -> None:
    engine, make_stack, clock = faults
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
    faults: Faults, valkey_proxy: FaultProxy
) -> None:
    engine, make_stack, clock = faults
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
    faults: Faults, valkey_proxy: FaultProxy
) -> None:
    engine, make_stack, clock = faults
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
    faults: Faults, database_url: str, valkey_url: str
) -> None:
    """A read whose DB answer is held by the proxy while a write and its invalidation finish
    must not leave its old value in either tier (I3)."""
    engine, make_stack, clock = faults
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
    other = await fresh_reader(engine, valkey_url)
    try:
        assert await other.repo.app_config(uid, name) == want
    finally:
        await other.aclose()
    print(f"[fault] slow-DB race: the racing read saw rev {old.config['rev']}; failed=0 stale=0")
