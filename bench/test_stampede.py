"""Stampede: 1,000 concurrent cold reads of one key. DB queries issued, and the total time.

Each round reads a user no one has read yet (both tiers cold). The figure is
the time of the whole burst; ``db_queries`` counts the SQL statements sent.
"""

from __future__ import annotations

import asyncio

import pytest
from tests.support.sql import count_sql

from .legacy import LegacyAppConfigCacheSource, LegacyRepository
from .support import NAME, BenchSession, drain, measure, scaled

pytestmark = pytest.mark.benchmark(group="stampede")

CONCURRENCY = 1000


def _stampede(benchmark, bench: BenchSession, key: str, make_get, rounds: int) -> None:
    """``make_get()`` -> (an ``app_config``-like function, a db-load counter, the cache)."""
    state: dict = {}

    def setup():
        (uid,) = bench.fresh_users(1)
        get, loads, cache = make_get()
        state.update(uid=uid, get=get, loads=loads, cache=cache)

    per_round: list[dict] = []

    async def body():
        uid, get = state["uid"], state["get"]
        before = sql.count
        views = await asyncio.gather(*(get(uid, NAME) for _ in range(CONCURRENCY)))
        await drain(state["cache"])
        assert all(v == views[0] for v in views)
        per_round.append({"db_queries": sql.count - before, "db_loads": state["loads"]()})

    with count_sql(bench.engine) as sql:
        measure(
            benchmark,
            bench,
            key,
            body,
            ops=1,
            rounds=rounds,
            warmup_rounds=0,
            setup=setup,
            concurrency=CONCURRENCY,
        )
    benchmark.extra_info["db_queries"] = max(r["db_queries"] for r in per_round)
    benchmark.extra_info["db_loads"] = max(r["db_loads"] for r in per_round)
    benchmark.extra_info["rounds_detail"] = per_round


def _ours(bench: BenchSession, **cache_kwargs):
    """``make_get`` for our read path: a new cache source each round, its own load count."""

    def make_get():
        cache = bench.cache(**cache_kwargs)
        start = cache.stats.db_loads
        return bench.repo(cache).app_config, lambda: cache.stats.db_loads - start, cache

    return make_get


def test_stampede_l1_valkey(benchmark, clean_valkey: BenchSession) -> None:
    bench = clean_valkey
    _stampede(benchmark, bench, "stampede.l1_valkey", _ours(bench), scaled(benchmark, 5, 1))
    assert benchmark.extra_info["db_loads"] == 1


def test_stampede_valkey_only(benchmark, clean_valkey: BenchSession) -> None:
    bench = clean_valkey
    make_get = _ours(bench, local_maxsize=0)
    _stampede(benchmark, bench, "stampede.valkey_only", make_get, scaled(benchmark, 5, 1))
    assert benchmark.extra_info["db_loads"] == 1


def test_stampede_legacy(benchmark, clean_valkey: BenchSession) -> None:
    bench = clean_valkey

    def make_get():
        repo = LegacyRepository(bench.engine, LegacyAppConfigCacheSource(bench.client))
        return repo.app_config, lambda: repo.db_loads, None

    _stampede(benchmark, bench, "stampede.legacy", make_get, scaled(benchmark, 3, 1))


def test_stampede_db_only(benchmark, bench: BenchSession) -> None:
    def make_get():
        return bench.repo(None).app_config, lambda: CONCURRENCY, None

    _stampede(benchmark, bench, "stampede.db_only", make_get, scaled(benchmark, 3, 1))
