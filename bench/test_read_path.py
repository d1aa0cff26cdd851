"""Our read path through ``repo.app_config(user_id, name)``, tier by tier, and the legacy shape."""

from __future__ import annotations

import itertools

import pytest
from tests.support.stats import stats_change, stats_snapshot
from tests.support.valkey import CountingValkey

from appconfig_cache import AppConfigScopeType

from .legacy import LegacyAppConfigCacheSource, LegacyRepository
from .legacy import merged_key as legacy_key
from .support import (
    N_FAST,
    N_RT,
    N_SQL,
    NAME,
    BenchSession,
    cold_batches,
    count_trips,
    hot_reads,
    measure,
    record_latency,
    scaled,
    timed_reads,
    trips_of,
    warm_valkey,
)

pytestmark = pytest.mark.benchmark(group="read path")


_COUNTERS = ("l1_hits", "l1_misses", "l2_hits", "l2_misses", "db_loads", "fills")


def test_l1_hit(benchmark, clean_valkey: BenchSession) -> None:
    """An L1 hit. ``local_ttl=60`` so that every timed op is a hit (the default 2 s would
    add one Valkey hit per key every 2 s)."""
    bench = clean_valkey
    cache = bench.cache(local_ttl=60.0)
    body = hot_reads(bench, bench.repo(cache).app_config, N_FAST)
    before = stats_snapshot(cache)
    measure(benchmark, bench, "ours.l1_hit", body, ops=N_FAST, rounds=scaled(benchmark, 100, 1))
    delta = stats_change(before, cache.stats, *_COUNTERS)
    benchmark.extra_info["stats"] = delta
    assert delta["l1_misses"] == 0 and delta["l1_hits"] > 0


@pytest.mark.parametrize("memo", [1024, 0], ids=["memo", "no-memo"])
def test_l2_hit(benchmark, clean_valkey: BenchSession, memo: int) -> None:
    """A Valkey hit: L1 off (``local_maxsize=0``); with the parse memo on (the
    default: the same envelope bytes are not parsed twice) and off (every hit
    parses and validates the view)."""
    bench = clean_valkey
    users = bench.hot_users
    bench.run(warm_valkey(bench, users, [NAME]))
    cache = bench.cache(local_maxsize=0, parse_memo_size=memo)
    body = hot_reads(bench, bench.repo(cache).app_config, N_RT)
    before = stats_snapshot(cache)
    key = "ours.l2_hit" if memo else "ours.l2_hit_no_memo"
    measure(benchmark, bench, key, body, ops=N_RT, rounds=scaled(benchmark, 60, 1))
    delta = stats_change(before, cache.stats, *_COUNTERS)

    async def prepare(r):
        await r.app_config(users[0], NAME)

    benchmark.extra_info["stats"] = delta
    benchmark.extra_info["trips"] = bench.run(
        count_trips(bench, lambda r: r.app_config(users[0], NAME), prepare=prepare, local_maxsize=0)
    )
    assert delta["db_loads"] == 0 and delta["l2_misses"] == 0 and delta["l2_hits"] > 0


# A full miss is timed as its caller waits for it: one read per round, after a setup
# (untimed) that makes the user's key cold and lets the background work of the round
# before finish. The ``.with_fill`` variants time N_SQL reads back to back with their
# fills drained inside the round: what a miss costs the process in all.


def _returning_users(bench: BenchSession, cache, repo, count: int) -> list:
    """``count`` users whose envelopes are in Valkey, and known to this process."""
    used = bench.work_users[:count]
    bench.run(warm_valkey(bench, used, [NAME]))  # envelopes in Valkey
    for uid in used:  # and in this process: L1 entries, known domains
        bench.run(repo.app_config(uid, NAME))
    return used


def _returning_trips(bench: BenchSession, uid) -> dict:
    async def prepare(r):
        await r.app_config(uid, NAME)
        await r.app_config(uid, NAME)
        await r.cache_source.invalidate_for_scope(AppConfigScopeType.USER, str(uid))

    return bench.run(count_trips(bench, lambda r: r.app_config(uid, NAME), prepare=prepare))


def _new_user_trips(bench: BenchSession) -> dict:
    (uid,) = bench.fresh_users(1)

    async def prepare(r):
        await r.app_config(bench.hot_users[0], NAME)

    return bench.run(count_trips(bench, lambda r: r.app_config(uid, NAME), prepare=prepare))


def _check_misses(benchmark, before, cache) -> None:
    delta = stats_change(before, cache.stats, *_COUNTERS)
    benchmark.extra_info["stats"] = delta
    assert delta["l1_hits"] == 0 and delta["l2_hits"] == 0
    assert delta["db_loads"] == delta["l1_misses"] > 0


def test_miss_returning_user(benchmark, clean_valkey: BenchSession) -> None:
    """Both tiers cold for the key, for a user this process and Valkey have seen before
    (the state after the user's own write, or after the envelope's TTL): the user scope
    is invalidated before each read, untimed. One read per round, as its caller waits."""
    bench = clean_valkey
    cache = bench.cache()
    repo = bench.repo(cache)
    rounds = scaled(benchmark, 300, 1)
    used = _returning_users(bench, cache, repo, 200)
    batch, setup = cold_batches(bench, cache, used, 1)
    body = timed_reads(repo.app_config, batch, [])
    before = stats_snapshot(cache)
    measure(benchmark, bench, "ours.miss_returning", body, ops=1, rounds=rounds, setup=setup)
    _check_misses(benchmark, before, cache)
    benchmark.extra_info["trips"] = _returning_trips(bench, bench.work_users[-1])


def test_miss_returning_user_with_fill(benchmark, clean_valkey: BenchSession) -> None:
    """As above, N_SQL reads back to back per round, their fills drained in the round."""
    bench = clean_valkey
    cache = bench.cache()
    repo = bench.repo(cache)
    rounds = scaled(benchmark, 30, 1)
    used = _returning_users(bench, cache, repo, (rounds + 1) * N_SQL)
    batch, setup = cold_batches(bench, cache, used, N_SQL)
    latencies: list[float] = []
    body = timed_reads(repo.app_config, batch, latencies, cache)
    before = stats_snapshot(cache)
    key = "ours.miss_returning.with_fill"
    measure(benchmark, bench, key, body, ops=N_SQL, rounds=rounds, setup=setup)
    record_latency(benchmark, latencies)
    _check_misses(benchmark, before, cache)


def test_miss_new_user(benchmark, clean_valkey: BenchSession) -> None:
    """Both tiers cold, for a user never read before (the first login after a deploy).
    One read per round, as its caller waits."""
    bench = clean_valkey
    cache = bench.cache()
    repo = bench.repo(cache)
    bench.run(repo.app_config(bench.hot_users[0], NAME))  # generations exist, as in production
    batch: list = []

    def setup():
        bench.run(cache.drain())
        batch[:] = bench.fresh_users(1)

    body = timed_reads(repo.app_config, batch, [])
    before = stats_snapshot(cache)
    rounds = scaled(benchmark, 300, 1)
    measure(benchmark, bench, "ours.miss_new_user", body, ops=1, rounds=rounds, setup=setup)
    _check_misses(benchmark, before, cache)
    benchmark.extra_info["trips"] = _new_user_trips(bench)


def test_miss_new_user_with_fill(benchmark, clean_valkey: BenchSession) -> None:
    """As above, N_SQL new users back to back per round, their fills drained in the round."""
    bench = clean_valkey
    cache = bench.cache()
    repo = bench.repo(cache)
    bench.run(repo.app_config(bench.hot_users[0], NAME))
    batch: list = []

    def setup():
        batch[:] = bench.fresh_users(N_SQL)

    latencies: list[float] = []
    body = timed_reads(repo.app_config, batch, latencies, cache)
    before = stats_snapshot(cache)
    rounds = scaled(benchmark, 20, 1)
    key = "ours.miss_new_user.with_fill"
    measure(benchmark, bench, key, body, ops=N_SQL, rounds=rounds, setup=setup)
    record_latency(benchmark, latencies)
    _check_misses(benchmark, before, cache)


def test_db_only(benchmark, bench: BenchSession) -> None:
    """The DB-only repository (``cache_source=None``): one SQL statement per read, one
    read per round (as the misses above)."""
    repo = bench.repo(None)
    users = itertools.cycle(bench.hot_users)
    batch: list = []

    def setup():
        batch[:] = [next(users)]

    body = timed_reads(repo.app_config, batch, [])
    rounds = scaled(benchmark, 300, 1)
    measure(benchmark, bench, "ours.db_only", body, ops=1, rounds=rounds, setup=setup)


def test_db_only_back_to_back(benchmark, bench: BenchSession) -> None:
    """N_SQL DB-only reads back to back per round (beside the ``.with_fill`` misses)."""
    repo = bench.repo(None)
    latencies: list[float] = []
    body = timed_reads(repo.app_config, bench.hot_users[:N_SQL], latencies)
    key = "ours.db_only.back_to_back"
    measure(benchmark, bench, key, body, ops=N_SQL, rounds=scaled(benchmark, 40, 1))
    record_latency(benchmark, latencies)


# -- the legacy shape ---------------------------------------------------------------------


def test_legacy_hit(benchmark, clean_valkey: BenchSession) -> None:
    """Legacy cache-aside hit: one GET, JSON decode and validation, no L1."""
    bench = clean_valkey
    repo = LegacyRepository(bench.engine, LegacyAppConfigCacheSource(bench.client))
    body = hot_reads(bench, repo.app_config, N_RT)
    loads = repo.db_loads
    measure(benchmark, bench, "legacy.hit", body, ops=N_RT, rounds=scaled(benchmark, 60, 1))
    assert repo.db_loads == loads
    benchmark.extra_info["trips"] = bench.run(_legacy_trips(bench, miss=False))


async def _legacy_trips(bench: BenchSession, *, miss: bool) -> dict:
    counting = CountingValkey(bench.client)
    repo = LegacyRepository(bench.engine, LegacyAppConfigCacheSource(counting))
    uid = bench.work_users[-2]
    await repo.app_config(uid, NAME)
    if miss:
        await bench.client.delete(legacy_key(uid, NAME))
    trips = await trips_of(bench, counting, lambda: repo.app_config(uid, NAME))
    return {key: trips[key] for key in ("valkey_round_trips", "sql_statements")}


def test_legacy_miss(benchmark, clean_valkey: BenchSession) -> None:
    """Legacy miss: GET (nil), the SQL, then SET EX (+ SADD) in one pipeline."""
    bench = clean_valkey
    repo = LegacyRepository(bench.engine, LegacyAppConfigCacheSource(bench.client))
    pool = bench.work_users
    cycle = itertools.cycle(range(0, len(pool) - N_SQL, N_SQL))
    batch: list = []

    def setup():
        start = next(cycle)
        batch[:] = pool[start : start + N_SQL]
        bench.run(bench.client.delete(*[legacy_key(uid, NAME) for uid in batch]))

    latencies: list[float] = []
    body = timed_reads(repo.app_config, batch, latencies)

    loads = repo.db_loads
    rounds = scaled(benchmark, 30, 1)
    measure(benchmark, bench, "legacy.miss", body, ops=N_SQL, rounds=rounds, setup=setup)
    record_latency(benchmark, latencies)
    benchmark.extra_info["trips"] = bench.run(_legacy_trips(bench, miss=True))
    assert repo.db_loads - loads == N_SQL * (rounds + (0 if benchmark.disabled else 1))
