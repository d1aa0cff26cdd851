"""Time the steps of a full miss as its caller waits for it, beside a DB-only read.

``python bench/profile_miss_steps.py [rounds]`` starts the embedded servers, seeds the
bench population, fills Valkey and this process for 400 returning users, then, in each
round, reads every user once DB-only and once through the cache after invalidating
the user's scope (a returning user's full miss), with the background work of the
read before drained, untimed. It prints, per round, the median latency of both,
the median DB load inside each, and the median time of each step of the miss:
``Lookup.find`` (the Valkey round trip and its checks), ``Lookup.plan``, the DB load
and ``Store.put_loaded`` (what the caller still pays after the query). The steps are
timed by wrapping those methods with ``perf_counter``.
"""

from __future__ import annotations

import asyncio
import functools
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from appconfig_cache import (
    AppConfigFragmentCacheSource,
    AppConfigFragmentRepository,
    AppConfigScopeType,
)
from appconfig_cache.repositories.app_config_fragment.cache_source.lookup import Lookup
from appconfig_cache.repositories.app_config_fragment.cache_source.store import Store
from appconfig_cache.repositories.app_config_fragment.db_source import (
    AppConfigFragmentDBSource,
)
from bench.support import NAME, profiling_session

USERS = 400
steps: dict[str, list[float]] = defaultdict(list)


def _timed(cls: type, name: str, label: str) -> None:
    original = getattr(cls, name)
    if asyncio.iscoroutinefunction(original):

        @functools.wraps(original)
        async def wrapper(*args, **kwargs):
            started = time.perf_counter()
            try:
                return await original(*args, **kwargs)
            finally:
                steps[label].append(time.perf_counter() - started)

    else:

        @functools.wraps(original)
        def wrapper(*args, **kwargs):
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                steps[label].append(time.perf_counter() - started)

    setattr(cls, name, wrapper)


def _us(samples: list[float]) -> str:
    return f"{statistics.median(samples) * 1e6:6.0f}" if samples else "     -"


async def run(rounds: int) -> None:
    _timed(Lookup, "find", "find")
    _timed(Lookup, "plan", "plan")
    _timed(AppConfigFragmentDBSource, "load_views", "load")
    _timed(Store, "put_loaded", "put_loaded")
    async with profiling_session() as bench:
        users = bench.work_users[:USERS]
        cache = AppConfigFragmentCacheSource(bench.client, outbox_interval=3600)
        repo = AppConfigFragmentRepository(bench.engine, cache_source=cache)
        db_only = AppConfigFragmentRepository(bench.engine)
        for _ in range(2):  # the second read of a user fills Valkey
            for uid in users:
                await repo.app_config(uid, NAME)
                await cache.invalidate_for_scope(AppConfigScopeType.USER, str(uid))
        await cache.drain()
        print("round   DB-only   miss   miss/DB | DB load: DB-only  miss | find  plan  put")
        for number in range(1, rounds + 1):
            latency: dict[str, list[float]] = defaultdict(list)
            loads: dict[str, list[float]] = {}
            for mode in ("db_only", "miss"):
                steps.clear()
                for uid in users:
                    await cache.invalidate_for_scope(AppConfigScopeType.USER, str(uid))
                    await cache.drain()
                    started = time.perf_counter()
                    await (db_only if mode == "db_only" else repo).app_config(uid, NAME)
                    latency[mode].append(time.perf_counter() - started)
                loads[mode] = list(steps["load"])
            db, miss = (statistics.median(latency[m]) for m in ("db_only", "miss"))
            print(
                f"{number:5d}  {db * 1e6:7.0f} {miss * 1e6:7.0f}   {miss / db:5.2f}x |"
                f"        {_us(loads['db_only'])} {_us(loads['miss'])} |"
                f" {_us(steps['find'])} {_us(steps['plan'])} {_us(steps['put_loaded'])}"
            )
        await cache.aclose()


def main() -> None:
    asyncio.run(run(int(sys.argv[1]) if len(sys.argv) > 1 else 4))


if __name__ == "__main__":
    main()
