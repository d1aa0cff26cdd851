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
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from appconfig_cache import AppConfigFragmentCacheSource, AppConfigFragmentRepository
from bench.support import NAME, profiling_session, warm_valkey

#: our coroutine functions: cProfile counts each resumption of a coroutine as a call
COROUTINES = frozenset(
    {"find", "resolve", "_lead", "_fetch", "lookup", "call", "app_config", "catch_up", "run"}
)


async def profile(hits: int) -> pstats.Stats:
    async with profiling_session() as bench:
        users = bench.hot_users
        await warm_valkey(bench, users, [NAME])
        # local_ttl long enough that no generation falls due during the run
        cache = AppConfigFragmentCacheSource(bench.client, local_maxsize=0, local_ttl=600.0)
        repo = AppConfigFragmentRepository(bench.engine, cache_source=cache)
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
        return pstats.Stats(profiler)


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
