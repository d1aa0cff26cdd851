"""Profile the L2 hit by counting calls, not by timing it.

``python bench/profile_l2_hit.py [hits]`` starts the embedded servers, seeds the bench
population, warms Valkey for the hot users, then runs ``hits`` L2 hits
(``local_maxsize=0``) under ``cProfile`` and prints, per hit: every function call,
the plain (non-coroutine) calls into ``appconfig_cache``, the coroutine functions of
ours on the path, and our functions by call count. Call counts do not depend on the
machine's load, so they can be compared between commits on a busy machine.
"""

from __future__ import annotations

import asyncio
import cProfile
import pstats
import random
import sys
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from appconfig_cache import (
    AppConfigFragmentCacheSource,
    AppConfigFragmentRepository,
    create_schema,
    make_valkey_client,
)
from appconfig_cache.embedded import EmbeddedValkey, embedded_postgres
from bench.support import NAME, BenchSession, seed, warm_valkey

#: our coroutine functions: cProfile counts each resumption of a coroutine as a call
COROUTINES = frozenset(
    {"find", "resolve", "_lead", "_fetch", "lookup", "call", "app_config", "catch_up", "run"}
)


async def profile(hits: int) -> pstats.Stats:
    server = EmbeddedValkey()
    server.start()
    try:
        async with embedded_postgres() as url:
            engine = create_async_engine(url, pool_size=4)
            client = make_valkey_client(server.url, max_connections=8)
            async with engine.begin() as conn:
                await conn.execute(
                    sa.text(
                        "DROP TABLE IF EXISTS users, app_config_policies, "
                        "app_config_fragments CASCADE"
                    )
                )
            await create_schema(engine)
            population = await seed(engine, random.Random(1052))
            async with engine.begin() as conn:  # the seed's rows: no cache holds their views
                await conn.execute(sa.text("DELETE FROM app_config_outbox"))
            bench = BenchSession(
                loop=asyncio.get_running_loop(),
                valkey_url=server.url,
                database_url=url,
                engine=engine,
                client=client,
                hot_users=population["hot"],
                work_users=population["work"],
                fresh_pool=population["fresh"],
                domain_of=population["domain_of"],
            )
            users = bench.hot_users
            await warm_valkey(bench, users, [NAME])
            # local_ttl long enough that no generation falls due during the run
            cache = AppConfigFragmentCacheSource(client, local_maxsize=0, local_ttl=600.0)
            repo = AppConfigFragmentRepository(engine, cache_source=cache)
            for _ in range(2):
                for uid in users:
                    await repo.app_config(uid, NAME)
            await cache.drain()
            before = cache.stats.l2_hits
            profiler = cProfile.Profile()
            profiler.enable()
            for i in range(hits):
                await repo.app_config(users[i % len(users)], NAME)
            profiler.disable()
            if cache.stats.l2_hits - before != hits:
                raise RuntimeError(f"not every read was an L2 hit: {cache.stats}")
            await cache.aclose()
            await client.aclose()
            await engine.dispose()
            return pstats.Stats(profiler)
    finally:
        server.stop()


def report(stats: pstats.Stats, hits: int) -> None:
    table = stats.stats  # type: ignore[attr-defined]
    total = sum(calls for (_cc, calls, *_rest) in table.values())
    ours = {key: value for key, value in table.items() if "appconfig_cache" in key[0]}
    plain = sum(v[1] for key, v in ours.items() if key[2] not in COROUTINES)
    coroutines = sorted({key[2] for key in ours if key[2] in COROUTINES})
    print(f"function calls per hit: {total / hits:.1f}")
    print(f"plain calls into appconfig_cache per hit: {plain / hits:.2f}")
    print(f"our coroutine functions on the path: {len(coroutines)} {coroutines}")
    rows = sorted(ours.items(), key=lambda item: -item[1][1])
    for (path, line, name), value in rows:
        short = path.split("appconfig_cache/")[-1]
        print(f"{value[1] / hits:6.2f}/hit  {short}:{line} {name}")


def main() -> None:
    hits = int(sys.argv[1]) if len(sys.argv) > 1 else 4000
    report(asyncio.run(profile(hits)), hits)


if __name__ == "__main__":
    main()
