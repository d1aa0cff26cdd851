"""What durable invalidation (I10) costs: the trigger on a write, and the replayer's poll.

- ``write.*``: ``admin_bulk_update`` of one user fragment, one transaction, with
  the outbox triggers enabled and disabled (``ALTER TABLE … DISABLE TRIGGER``),
  in one run. ``db`` is the DB-only repository (the trigger's own cost);
  ``cached`` writes through a cache source (bump, then the writer's delete of its
  rows in the background; the round drains it, so the delete is counted too).
- ``poll.empty``: one replayer poll on an empty outbox (the steady state: an
  indexed ``EXISTS`` in autocommit), as every cache source runs once per
  ``outbox_interval``.
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from appconfig_cache import AppConfigFragmentKey, AppConfigScopeType, FragmentInput
from appconfig_cache.outbox.store import OutboxStore

from .support import NAME, BenchSession, drain, measure, scaled

pytestmark = pytest.mark.benchmark(group="outbox")

N_WRITES = 50
N_POLLS = 200


async def _set_triggers(bench: BenchSession, on: bool) -> None:
    verb = "ENABLE" if on else "DISABLE"
    async with bench.engine.begin() as conn:
        for table in ("app_config_fragments", "app_config_policies", "users"):
            await conn.execute(sa.text(f"ALTER TABLE {table} {verb} TRIGGER USER"))
        await conn.execute(sa.text("DELETE FROM app_config_outbox"))


@pytest.mark.parametrize("tier", ["db", "cached"])
@pytest.mark.parametrize("outbox", ["on", "off"])
def test_write(benchmark, bench: BenchSession, tier: str, outbox: str) -> None:
    uid = bench.fresh_users(1)[0]
    key = AppConfigFragmentKey(scope_type=AppConfigScopeType.USER, scope_id=str(uid), name=NAME)
    cache = bench.cache(outbox_interval=3600.0) if tier == "cached" else None
    repo = bench.repo(cache)
    n = scaled(benchmark, N_WRITES, 2)
    counter = iter(range(10**9))

    async def prepare() -> None:
        await _set_triggers(bench, outbox == "on")
        await repo.admin_bulk_create([FragmentInput(key=key, config={"v": -1})])

    async def body() -> None:
        for _ in range(n):
            done = await repo.admin_bulk_update(
                [FragmentInput(key=key, config={"v": next(counter)})]
            )
            assert not done.failures
        await drain(cache)

    bench.run(prepare())
    try:
        measure(
            benchmark, bench, f"outbox.write.{tier}.{outbox}", body,
            ops=n, rounds=scaled(benchmark, 15, 1),
        )  # fmt: skip
    finally:
        bench.run(_set_triggers(bench, True))


def test_poll_on_an_empty_outbox(benchmark, bench: BenchSession) -> None:
    store = OutboxStore(bench.engine)
    n = scaled(benchmark, N_POLLS, 2)

    async def body() -> None:
        for _ in range(n):
            assert not await store.any_due(2.0)

    bench.run(_set_triggers(bench, True))
    measure(benchmark, bench, "outbox.poll.empty", body, ops=n, rounds=scaled(benchmark, 15, 1))
