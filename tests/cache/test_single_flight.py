"""Single flight (I9): concurrent reads of one key share one load, cancellations and
errors included."""

from __future__ import annotations

import asyncio
from typing import Any
from uuid import UUID

from appconfig_cache import (
    AppConfigError,
    MyFragmentInput,
)
from tests.support.internals import db_source_of
from tests.support.sql import count_sql

from .conftest import (
    Seeded,
    build_tiers,
    hang_guard,
    park_read,
    seed_four_users,
)

# -- I9: one flight -------------------------------------------------------------------------


@hang_guard
async def test_200_concurrent_cold_reads_cause_one_db_query(seeded: Seeded) -> None:
    t, w = seeded
    assert t.cache is not None
    await t.db.app_config(w.u2, "theme")  # warm the connection pool
    with count_sql(t.engine, library_only=True) as sql:
        views = await asyncio.gather(*(t.repo.app_config(w.u1, "theme") for _ in range(200)))
    truth = await t.db.app_config(w.u1, "theme")
    assert all(v == truth for v in views)
    print(
        f"\n[{t.mode}] 200 concurrent cold reads: {sql.count} SQL statement(s), "
        f"db_loads={t.cache.stats.db_loads}, flights_joined={t.cache.stats.flights_joined}"
    )
    assert sql.count == 1
    assert t.cache.stats.db_loads == 1
    assert t.cache.stats.flights_joined == 199
    await t.cache.drain()


async def test_concurrent_cold_reads_in_db_mode_each_query(engine: Any, valkey_client: Any) -> None:
    """The control: without a cache source, nothing is shared (the counter does count)."""
    t = await build_tiers("db", engine, valkey_client)
    w = await seed_four_users(t)
    with count_sql(t.engine, library_only=True) as sql:
        await asyncio.gather(*(t.repo.app_config(w.u1, "theme") for _ in range(20)))
    assert sql.count == 20


@hang_guard
async def test_cancelled_waiter_does_not_cancel_the_others(seeded: Seeded) -> None:
    t, w = seeded
    assert t.cache is not None
    loader, leader = await park_read(t, t.repo.app_config(w.u1, "theme"))
    waiters = [asyncio.create_task(t.repo.app_config(w.u1, "theme")) for _ in range(5)]
    await asyncio.sleep(0)  # they have joined the leader's flight
    waiters[2].cancel()
    await asyncio.gather(waiters[2], return_exceptions=True)
    loader.resume.set()
    views = await asyncio.gather(leader, *[wt for i, wt in enumerate(waiters) if i != 2])
    truth = await t.db.app_config(w.u1, "theme")
    assert all(v == truth for v in views)
    assert waiters[2].cancelled()
    assert loader.calls == [["theme"]]
    assert t.cache.stats.db_loads == 1
    assert t.cache.stats.flights_joined == 5
    await t.cache.drain()


@hang_guard
async def test_cancelled_leader_does_not_cancel_the_others(seeded: Seeded) -> None:
    """The read that leads the load is cancelled: its joiners still get the DB value."""
    t, w = seeded
    assert t.cache is not None
    loader, leader = await park_read(t, t.repo.app_config(w.u1, "theme"))
    waiters = [asyncio.create_task(t.repo.app_config(w.u1, "theme")) for _ in range(5)]
    await asyncio.sleep(0)
    leader.cancel()
    await asyncio.gather(leader, return_exceptions=True)
    loader.resume.set()
    views = await asyncio.gather(*waiters)
    truth = await t.db.app_config(w.u1, "theme")
    assert all(v == truth for v in views)
    assert leader.cancelled()
    # the waiters share at most one more load between them
    assert len(loader.calls) <= 2 and t.cache.stats.db_loads <= 2
    assert await t.repo.app_config(w.u1, "theme") == truth
    await t.cache.drain()


@hang_guard
async def test_read_after_invalidation_does_not_join_an_older_flight(seeded: Seeded) -> None:
    t, w = seeded
    assert t.cache is not None
    # the old flight has read the old value
    loader, old_reader = await park_read(t, t.repo.app_config(w.u1, "theme"))
    await t.repo.bulk_update_my(w.u1, [MyFragmentInput(name="theme", config={"v": "new"})])
    # bulk_update_my read its own result: it did not join the old flight either
    assert loader.calls == [["theme"], ["theme"]]
    new = await t.repo.app_config(w.u1, "theme")
    assert new.config["v"] == "new"
    loader.resume.set()
    old = await old_reader
    assert "v" not in old.config  # the old flight answered its own readers
    assert await t.repo.app_config(w.u1, "theme") == new
    await t.cache.drain()


@hang_guard
async def test_flights_of_different_keys_are_separate(seeded: Seeded) -> None:
    t, w = seeded
    assert t.cache is not None
    reads = [t.repo.app_config(uid, name) for uid in w.users for name in w.names] * 10
    views = await asyncio.gather(*reads)
    for view in views:
        assert view == await t.db.app_config(view.user_id, view.name)
    assert t.cache.stats.db_loads == len(w.users) * len(w.names)
    await t.cache.drain()


@hang_guard
async def test_db_errors_reach_every_waiter(seeded: Seeded) -> None:
    t, w = seeded
    assert t.cache is not None

    async def failing(user_id: UUID, names: Any) -> Any:
        await asyncio.sleep(0)
        raise AppConfigError("db down")

    db_source_of(t.repo).load_views = failing
    results = await asyncio.gather(
        *(t.repo.app_config(w.u1, "theme") for _ in range(10)), return_exceptions=True
    )
    assert all(isinstance(r, AppConfigError) for r in results)
    del db_source_of(t.repo).load_views
    assert await t.repo.app_config(w.u1, "theme") == await t.db.app_config(w.u1, "theme")
    await t.cache.drain()
