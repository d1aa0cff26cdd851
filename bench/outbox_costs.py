"""What the outbox costs a write and a poll, measured without pytest-benchmark's rounds.

Usage (from the repository root; starts an embedded PostgreSQL)::

    python -m bench.outbox_costs

- the trigger's server time: ``EXPLAIN ANALYZE`` of the library's one-row
  ``UPDATE … RETURNING`` with the outbox triggers enabled and disabled
  (median of 300 each, alternated twice);
- one more client round trip (``SELECT 1``), the yardstick of "one statement";
- a one-item ``admin_bulk_update`` end to end, triggers on and off in 20
  alternating blocks of 100 (the median block);
- one poll of the empty outbox: its wall time and the polling process's CPU.
"""

from __future__ import annotations

import asyncio
import re
import statistics
import time
import uuid

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from appconfig_cache import (
    AppConfigFragmentKey,
    AppConfigFragmentRepository,
    AppConfigPolicyRepository,
    AppConfigScopeType,
    FragmentInput,
    create_schema,
)
from appconfig_cache.embedded import embedded_postgres
from appconfig_cache.outbox.store import OutboxStore

_UPDATE = sa.text(
    "EXPLAIN (ANALYZE) UPDATE app_config_fragments SET config = CAST(:c AS jsonb), "
    "updated_at = now() WHERE scope_type = 'user' AND scope_id = :s AND name = 'theme' "
    "RETURNING id, txid_current()"
)


async def _triggers(engine: AsyncEngine, on: bool) -> None:
    async with engine.begin() as conn:
        verb = "ENABLE" if on else "DISABLE"
        await conn.execute(sa.text(f"ALTER TABLE app_config_fragments {verb} TRIGGER USER"))
        await conn.execute(sa.text("DELETE FROM app_config_outbox"))


async def server_time(engine: AsyncEngine, scope_id: str) -> None:
    found: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
    for on in (True, False, True, False):
        await _triggers(engine, on)
        runs, fired = [], []
        async with engine.connect() as conn:
            for i in range(300):
                plan = "\n".join(
                    row[0]
                    for row in await conn.execute(_UPDATE, {"c": f'{{"v":{i}}}', "s": scope_id})
                )
                await conn.commit()
                runs.append(float(re.findall(r"Execution Time: ([\d.]+)", plan)[0]))
                trigger = re.findall(r"Trigger \S+: time=([\d.]+)", plan)
                fired.append(float(trigger[0]) if trigger else 0.0)
        found[on].append((statistics.median(runs), statistics.median(fired)))
    for on, medians in found.items():
        shown = ", ".join(
            f"execution {e * 1000:.0f} µs (trigger {t * 1000:.0f} µs)" for e, t in medians
        )
        print(f"UPDATE, triggers {'on' if on else 'off'}: {shown}")


async def round_trip(engine: AsyncEngine) -> None:
    auto = engine.execution_options(isolation_level="AUTOCOMMIT")
    times = []
    for _ in range(2000):
        start = time.perf_counter()
        async with auto.connect() as conn:
            await conn.execute(sa.text("SELECT 1"))
        times.append(time.perf_counter() - start)
    print(f"one client round trip (SELECT 1): median {statistics.median(times) * 1e6:.0f} µs")


async def end_to_end(engine: AsyncEngine, key: AppConfigFragmentKey) -> None:
    repo = AppConfigFragmentRepository(engine)
    blocks: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(20):
        for on in (True, False):
            await _triggers(engine, on)
            start = time.perf_counter()
            for i in range(100):
                await repo.admin_bulk_update([FragmentInput(key=key, config={"v": i})])
            blocks[on].append((time.perf_counter() - start) / 100)
    with_, without = statistics.median(blocks[True]), statistics.median(blocks[False])
    print(
        f"admin_bulk_update of one item (DB only): {with_ * 1e6:.0f} µs with the trigger, "
        f"{without * 1e6:.0f} µs without ({(with_ / without - 1) * 100:+.1f}%)"
    )
    await _triggers(engine, True)


async def poll(engine: AsyncEngine) -> None:
    store = OutboxStore(engine)
    walls, cpus = [], []
    for _ in range(20):
        cpu, wall = time.process_time(), time.perf_counter()
        for _ in range(200):
            assert not await store.any_due(2.0)
        cpus.append((time.process_time() - cpu) / 200)
        walls.append((time.perf_counter() - wall) / 200)
    print(
        f"poll of the empty outbox: {statistics.median(walls) * 1e6:.0f} µs wall, "
        f"{statistics.median(cpus) * 1e6:.0f} µs CPU of the polling process"
    )


async def main() -> None:
    async with embedded_postgres() as url:
        engine = create_async_engine(url)
        await create_schema(engine)
        await AppConfigPolicyRepository(engine).create("theme", ["public", "domain", "user"])
        key = AppConfigFragmentKey(
            scope_type=AppConfigScopeType.USER, scope_id=str(uuid.uuid4()), name="theme"
        )
        await AppConfigFragmentRepository(engine).admin_bulk_create(
            [FragmentInput(key=key, config={"v": 0})]
        )
        await server_time(engine, key.scope_id)
        await round_trip(engine)
        await end_to_end(engine, key)
        await poll(engine)
        await engine.dispose()


if __name__ == "__main__":
    asyncio.run(main())
