"""The consistency monitor (``appconfig_cache.consistency``) against real Valkey and PostgreSQL.

The monitor's clock is a fake one: the tests move it past the window instead of sleeping.
The cache sources get a fake clock of their own that never moves, so L1 entries only
leave by invalidation.
"""

from __future__ import annotations

import asyncio
import logging
import random
import uuid

import pytest
import valkey.asyncio as valkey_asyncio
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.ext.asyncio import AsyncEngine

from appconfig_cache import (
    AppConfigFragmentCacheSource,
    AppConfigFragmentRepository,
    CacheSettingsError,
    MyFragmentInput,
)
from appconfig_cache.consistency import ConsistencyMonitor, nines
from tests.support.clock import FakeClock
from tests.support.consistency import change_behind_the_cache, theme_org
from tests.support.fragments import domain_fragment, user_fragment
from tests.support.metrics import registry_with
from tests.test_cli import closed_port

NAMES = ("theme", "menu")
WINDOW = 5.0


async def org(engine: AsyncEngine, n_users: int) -> list[uuid.UUID]:
    return await theme_org(engine, n_users, NAMES, {"size": 0})


async def fill_valkey(
    engine: AsyncEngine, client: valkey_asyncio.Valkey, users: list[uuid.UUID]
) -> None:
    """Every view in Valkey: two passes of two processes (the first learns the domain's
    generation, which its first miss creates; the second fills every envelope)."""
    for _ in range(2):
        cache = AppConfigFragmentCacheSource(client, local_maxsize=0)
        repo = AppConfigFragmentRepository(engine, cache_source=cache)
        for uid in users:
            await repo.app_configs(uid, list(NAMES))
        await cache.drain()
        await cache.aclose()


def monitor_for(
    cache: AppConfigFragmentCacheSource, engine: AsyncEngine, clock: FakeClock
) -> ConsistencyMonitor:
    return ConsistencyMonitor(
        cache,
        engine,
        sample_fraction=1.0,
        max_db_loads_per_second=1000.0,
        window=WINDOW,
        timer=clock,
        rng=random.Random(7),
    )


async def pass_window(monitor: ConsistencyMonitor, clock: FakeClock) -> None:
    clock.advance(WINDOW)
    await monitor.run_once()


def test_nines() -> None:
    assert nines(0, 0) == (None, False)
    assert nines(1000, 0) == (3.0, True)
    assert nines(1000, 1) == (3.0, False)
    assert nines(100, 10) == (1.0, False)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"sample_fraction": 1.5},
        {"sample_fraction": -0.1},
        {"max_db_loads_per_second": 0},
        {"window": -1},
        {"max_pending": 0},
    ],
)
async def test_bad_settings_are_refused(
    engine: AsyncEngine, valkey_client: valkey_asyncio.Valkey, kwargs: dict[str, float]
) -> None:
    with pytest.raises(CacheSettingsError):
        ConsistencyMonitor(AppConfigFragmentCacheSource(valkey_client), engine, **kwargs)


@pytest.mark.parametrize("local_maxsize", [4096, 0], ids=["l1", "l2"])
async def test_monitor_confirms_a_view_changed_behind_the_cache(
    engine: AsyncEngine,
    valkey_client: valkey_asyncio.Valkey,
    local_maxsize: int,
    caplog: pytest.LogCaptureFixture,
) -> None:
    tier = "l1" if local_maxsize else "l2"
    users = await org(engine, 3)
    await fill_valkey(engine, valkey_client, users)
    cache = AppConfigFragmentCacheSource(
        valkey_client, local_maxsize=local_maxsize, timer=FakeClock()
    )
    repo = AppConfigFragmentRepository(engine, cache_source=cache)
    victim = users[1]
    await repo.app_config(victim, "theme")  # from Valkey (and into L1)
    clock = FakeClock()
    monitor = monitor_for(cache, engine, clock)
    registry = registry_with(cache, monitor=monitor)
    try:
        await change_behind_the_cache(engine, victim)
        # reads the monitor samples: a hit in L1, or a miss that Valkey answers
        await repo.app_config(victim, "theme")
        await monitor.run_once()
        assert monitor.figures().sampled >= 1
        with caplog.at_level(logging.WARNING, logger="appconfig_cache.consistency"):
            await pass_window(monitor, clock)  # first check: a mismatch, a suspect
            assert monitor.figures().confirmed == 0
            await pass_window(monitor, clock)  # second check: still served, confirmed
        figures = monitor.figures()
        scraped = {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(generate_latest(registry).decode())
            for sample in family.samples
        }
    finally:
        await monitor.aclose()
        await cache.aclose()
    assert figures.confirmed == 1
    assert figures.confirmed_by_tier[tier] == 1
    assert figures.nines_lower_bound is False
    logged = [r.getMessage() for r in caplog.records if "inconsistency" in r.getMessage()]
    assert len(logged) == 1
    assert str(victim) in logged[0] and "name=theme" in logged[0] and f"tier={tier}" in logged[0]
    assert "secret-value" not in caplog.text
    # the collector exports the monitor's figures
    labels = (("cache", "main"), ("tier", tier))
    assert scraped[("appconfig_cache_monitor_inconsistencies_total", labels)] == 1
    assert scraped[("appconfig_cache_monitor_nines", (("cache", "main"),))] == figures.nines


class Writes:
    """Counts each writer's finished writes, so a test can wait until every write that was
    in flight has returned: what the monitor's window stands for in real time."""

    def __init__(self, writers: int) -> None:
        self.done = [0] * writers
        self._changed = asyncio.Condition()

    async def finished(self, writer: int) -> None:
        async with self._changed:
            self.done[writer] += 1
            self._changed.notify_all()

    async def all_returned(self) -> None:
        start = list(self.done)
        async with self._changed:
            await self._changed.wait_for(
                lambda: all(d > s for d, s in zip(self.done, start, strict=True))
            )


async def test_monitor_confirms_nothing_under_concurrent_writes_and_reads(
    engine: AsyncEngine, valkey_client: valkey_asyncio.Valkey
) -> None:
    users = await org(engine, 6)
    await AppConfigFragmentRepository(engine).admin_bulk_create(
        [user_fragment(uid, "menu", {"n": 0}) for uid in users]
    )
    cache = AppConfigFragmentCacheSource(valkey_client, timer=FakeClock())
    repo = AppConfigFragmentRepository(engine, cache_source=cache)
    clock = FakeClock()
    monitor = monitor_for(cache, engine, clock)
    monitor.max_pending = 50
    writers = 4
    writes = Writes(writers)
    stop = asyncio.Event()

    async def writer(i: int) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            uid = users[(i + n) % len(users)]
            name = NAMES[n % 2]
            if n % 7 == 0:  # a shared write now and then: every user's view of the name
                await repo.admin_bulk_update([domain_fragment("d1", name, {"color": n})])
            else:
                await repo.bulk_update_my(uid, [MyFragmentInput(name=name, config={"n": n})])
            await writes.finished(i)

    async def reader(i: int) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            await repo.app_config(users[(i * 3 + n) % len(users)], NAMES[n % 2])
            await asyncio.sleep(0)

    tasks = [asyncio.create_task(writer(i)) for i in range(writers)]
    tasks += [asyncio.create_task(reader(i)) for i in range(4)]
    try:
        for _ in range(12):
            clock.advance(WINDOW / 2)
            await monitor.run_once()  # runs while writes are in flight
            await writes.all_returned()  # the window, in real time
        figures = monitor.figures()
    finally:
        stop.set()
        await asyncio.gather(*tasks)
        await monitor.aclose()
        await cache.aclose()
    assert figures.confirmed == 0, figures
    assert figures.checked >= 30, figures
    assert figures.consistent + figures.cleared == figures.checked
    assert figures.nines is not None and figures.nines_lower_bound


async def test_monitor_skips_samples_when_valkey_is_down(engine: AsyncEngine) -> None:
    users = await org(engine, 2)
    client = valkey_asyncio.Valkey.from_url(
        f"redis://127.0.0.1:{closed_port()}", socket_timeout=0.5, socket_connect_timeout=0.5
    )
    cache = AppConfigFragmentCacheSource(client, timer=FakeClock())
    repo = AppConfigFragmentRepository(engine, cache_source=cache)
    clock = FakeClock()
    monitor = monitor_for(cache, engine, clock)
    try:
        for uid in users:
            await repo.app_config(uid, "theme")  # from the DB, kept in L1
            await repo.app_config(uid, "theme")
        for uid in users:
            await change_behind_the_cache(engine, uid)
        await monitor.run_once()
        for _ in range(3):
            await pass_window(monitor, clock)
        figures = monitor.figures()
    finally:
        await monitor.aclose()
        await cache.aclose()
        await client.aclose()
    assert figures.sampled >= 2
    assert figures.confirmed == 0 and figures.checked == 0
    assert figures.skipped["valkey"] >= 2


async def test_monitor_db_loads_are_rate_limited(
    engine: AsyncEngine, valkey_client: valkey_asyncio.Valkey
) -> None:
    users = await org(engine, 6)
    cache = AppConfigFragmentCacheSource(valkey_client, timer=FakeClock())
    repo = AppConfigFragmentRepository(engine, cache_source=cache)
    clock = FakeClock()
    monitor = ConsistencyMonitor(
        cache, engine, sample_fraction=1.0, max_db_loads_per_second=2.0, window=0.0, timer=clock
    )
    try:
        for uid in users:
            await repo.app_configs(uid, list(NAMES))
            await repo.app_configs(uid, list(NAMES))
        await cache.drain()
        clock.advance(1.0)
        await monitor.run_once()
        first = monitor.figures().db_loads
        clock.advance(1.0)
        await monitor.run_once()
        second = monitor.figures().db_loads
    finally:
        await monitor.aclose()
        await cache.aclose()
    assert first <= 2 and second - first <= 2
    assert second >= 2
    assert monitor.figures().pending > 0
