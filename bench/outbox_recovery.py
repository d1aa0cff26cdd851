"""How stale can a view get after a lost invalidation? I10's bounds, measured with the defaults.

Usage (from the repository root; starts embedded Valkey and PostgreSQL)::

    python bench/outbox_recovery.py [--runs 5]

Three scenarios, each run ``--runs`` times on fresh data; every cache source
has the library's defaults (``outbox_grace=2``, ``outbox_interval=1``,
``retry_interval=0.5``, ``timeout=0.5``):

- ``killed``: a writer *process* whose path to Valkey is cut (the fault proxy
  drops its ``INCR``\\ s) commits, then is SIGKILLed; the cut heals at once.
  One other cache source runs its replayer.
- ``idle``: a live writer (its own cache source, through the proxy) writes
  while cut off, then stays idle; the cut heals.
- ``sql``: a plain SQL ``UPDATE``; one cache source runs its replayer.

The staleness is the time from the moment the change could first be repaired
(the heal; for ``sql`` the commit) until a cache source with an empty L1 reads
the new view from Valkey, probed every 10 ms. Add ``local_ttl`` for a reader
whose L1 holds the old view. This is a measurement script, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import sqlalchemy as sa  # noqa: E402
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine  # noqa: E402
from tests.faults.proxy import FaultProxy  # noqa: E402
from tests.support.outbox import spawn_outbox_writer  # noqa: E402

from appconfig_cache import (  # noqa: E402
    AppConfigFragmentCacheSource,
    AppConfigFragmentKey,
    AppConfigFragmentRepository,
    AppConfigPolicyRepository,
    AppConfigScopeType,
    FragmentInput,
    create_schema,
    make_valkey_client,
)
from appconfig_cache.embedded import EmbeddedValkey, embedded_postgres  # noqa: E402

NAME = "theme"
KEY = AppConfigFragmentKey(scope_type=AppConfigScopeType.DOMAIN, scope_id="d1", name=NAME)


async def _seed(engine: AsyncEngine) -> uuid.UUID:
    async with engine.begin() as conn:
        await conn.execute(sa.text("TRUNCATE users, app_config_policies, app_config_fragments, "
                                   "app_config_outbox CASCADE"))  # fmt: skip
    uid = uuid.uuid4()
    await AppConfigPolicyRepository(engine).create(NAME, ["public", "domain", "user"])
    async with engine.begin() as conn:
        await conn.execute(sa.text("INSERT INTO users VALUES (:u, 'd1')"), {"u": uid})
    await AppConfigFragmentRepository(engine).admin_bulk_create(
        [FragmentInput(key=KEY, config={"v": 0})]
    )
    async with engine.begin() as conn:
        await conn.execute(sa.text("DELETE FROM app_config_outbox"))
    return uid


class Probe:
    """Reads through a new cache source each time (no L1): what Valkey serves."""

    def __init__(self, engine: AsyncEngine, client: Any) -> None:
        self.engine, self.client = engine, client

    async def read(self, uid: uuid.UUID) -> Any:
        cache = AppConfigFragmentCacheSource(self.client, local_maxsize=0, outbox_interval=3600.0)
        try:
            view = await AppConfigFragmentRepository(self.engine, cache).app_config(uid, NAME)
            await cache.drain()
            return view.config
        finally:
            await cache.aclose()

    async def fill(self, uid: uuid.UUID) -> None:
        for _ in range(2):  # the first read learns the domain, the second fills
            assert await self.read(uid) == {"v": 0}

    async def until_new(self, uid: uuid.UUID, since: float, limit: float = 30.0) -> float:
        while (await self.read(uid)) != {"v": 1}:
            if time.monotonic() - since > limit:
                raise RuntimeError("not repaired within the limit")
            await asyncio.sleep(0.01)  # the probe's pace; this script measures, it tests nothing
        return time.monotonic() - since


async def _seeded_with_replayer(
    engine: AsyncEngine, probe: Probe
) -> tuple[uuid.UUID, AppConfigFragmentCacheSource]:
    """Fresh data, its view cached in Valkey, and one other cache source running its replayer."""
    uid = await _seed(engine)
    await probe.fill(uid)
    replayer = AppConfigFragmentCacheSource(make_valkey_client(probe_url(probe)))
    AppConfigFragmentRepository(engine, replayer)
    await replayer.start()
    return uid, replayer


async def killed(engine: AsyncEngine, db_url: str, probe: Probe, proxy: FaultProxy) -> float:
    uid, replayer = await _seeded_with_replayer(engine, probe)
    writer = await spawn_outbox_writer(uid, "d1", db_url, proxy.url)
    assert writer.stdin and writer.stdout
    try:
        assert await writer.stdout.readline() == b"ready\n"
        proxy.set_drop_matching(b"INCRBY")
        writer.stdin.write(b"write 1\n")
        await writer.stdin.drain()
        assert await writer.stdout.readline() == b"written 1\n"
    finally:
        writer.send_signal(signal.SIGKILL)
        await writer.wait()
    proxy.set_pass()
    healed = time.monotonic()
    took = await probe.until_new(uid, healed)
    await replayer.aclose()
    await replayer.client.aclose()
    return took


async def idle(engine: AsyncEngine, db_url: str, probe: Probe, proxy: FaultProxy) -> float:
    uid = await _seed(engine)
    await probe.fill(uid)
    client = make_valkey_client(proxy.url)
    cache = AppConfigFragmentCacheSource(client)
    repo = AppConfigFragmentRepository(engine, cache)
    await repo.app_config(uid, NAME)
    proxy.set_drop_matching(b"INCRBY")
    assert not (await repo.admin_bulk_update([FragmentInput(key=KEY, config={"v": 1})])).failures
    assert cache.stats.pending_bumps == 1
    proxy.set_pass()
    healed = time.monotonic()
    took = await probe.until_new(uid, healed)
    await cache.aclose()
    await client.aclose()
    return took


async def sql(engine: AsyncEngine, db_url: str, probe: Probe, proxy: FaultProxy) -> float:
    uid, replayer = await _seeded_with_replayer(engine, probe)
    async with engine.begin() as conn:
        await conn.execute(sa.text("UPDATE app_config_fragments SET config = '{\"v\": 1}'"))
    committed = time.monotonic()
    took = await probe.until_new(uid, committed)
    await replayer.aclose()
    await replayer.client.aclose()
    return took


def probe_url(probe: Probe) -> str:
    kwargs = probe.client.connection_pool.connection_kwargs
    return f"redis://{kwargs['host']}:{kwargs['port']}"


async def main(runs: int) -> None:
    with EmbeddedValkey() as valkey:
        async with embedded_postgres() as db_url:
            engine = create_async_engine(db_url)
            await create_schema(engine)
            client = make_valkey_client(valkey.url)
            probe = Probe(engine, client)
            host, _, port = valkey.url.rpartition("/")[2].rpartition(":")
            async with FaultProxy((host, int(port))) as proxy:
                for scenario in (killed, idle, sql):
                    times = [await scenario(engine, db_url, probe, proxy) for _ in range(runs)]
                    print(
                        f"{scenario.__name__:<7} staleness after repair was possible: "
                        f"median {statistics.median(times):.2f} s, worst {max(times):.2f} s "
                        f"over {runs} runs ({', '.join(f'{t:.2f}' for t in times)})",
                        flush=True,
                    )
            await client.aclose()
            await engine.dispose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    asyncio.run(main(parser.parse_args().runs))
