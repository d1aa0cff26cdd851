"""Issue 8: the WebUI bootstrap of 8 documents, ``app_configs`` batched vs 8 ``app_config`` calls.

At L1 (every view in L1), at L2 (``local_maxsize=0``, every envelope in Valkey)
and cold (both tiers cold for the user: the user scope is invalidated before
each round, untimed; one bootstrap per round, as its caller waits, and
``.with_fill`` back to back with the fills counted in), plus the DB-only
repository (one bootstrap per round). Round trips and SQL
statements of one bootstrap are counted on a counting client (untimed).

Issue 17: the bootstrap itself (``my_app_configs``: the policy-name list, then
the views) cold and DB only, and for a user back after ``local_ttl`` (every L1
entry and the list expired, Valkey warm; the cache's clock is moved between
rounds, untimed).
"""

from __future__ import annotations

import itertools

import pytest
from tests.support.clock import FakeClock
from tests.support.stats import stats_change, stats_snapshot

from appconfig_cache import AppConfigScopeType

from .support import (
    NAMES,
    BenchSession,
    cold_batches,
    count_trips,
    drain,
    measure,
    scaled,
    warm_valkey,
)

pytestmark = pytest.mark.benchmark(group="bootstrap of 8 documents")

N_L1 = 250
N_L2 = 20
N_COLD = 10
_COUNTERS = ("l1_hits", "l1_misses", "l2_hits", "l2_misses", "db_loads")


def _batched(repo):
    async def read(uid):
        return await repo.app_configs(uid, NAMES)

    return read


def _singles(repo):
    get = repo.app_config

    async def read(uid):
        return [await get(uid, name) for name in NAMES]

    return read


def _my(repo):
    async def read(uid):
        return await repo.my_app_configs(uid)

    return read


SHAPES = {"batched": _batched, "singles": _singles, "my": _my}
#: the warm tiers compare the two ways of reading 8 named documents
WARM_SHAPES = ["batched", "singles"]
#: the default local_ttl, given explicitly to the bench that moves the clock by it
LOCAL_TTL = 2.0


def _trips(bench: BenchSession, shape: str, uid, prepare, **cache_kwargs):
    return bench.run(
        count_trips(bench, lambda r: SHAPES[shape](r)(uid), prepare=prepare, **cache_kwargs)
    )


#: the warm tiers: (cache settings, ops per round, rounds, what every timed read must be)
WARM = {
    # local_ttl=60: every timed read is an L1 hit (see test_l1_hit)
    "l1": ({"local_ttl": 60.0}, N_L1, 60, lambda d: d["l1_misses"] == 0),
    # local_maxsize=0 and every envelope in Valkey: every timed read is a Valkey hit
    "l2": ({"local_maxsize": 0}, N_L2, 50, lambda d: d["db_loads"] == 0 == d["l2_misses"]),
}


@pytest.mark.parametrize("tier", list(WARM))
@pytest.mark.parametrize("shape", WARM_SHAPES)
def test_bootstrap_warm(benchmark, clean_valkey: BenchSession, shape: str, tier: str) -> None:
    bench = clean_valkey
    cache_kwargs, ops, rounds, every_read_hits = WARM[tier]
    users = bench.hot_users
    if tier == "l2":
        bench.run(warm_valkey(bench, users, NAMES))
    cache = bench.cache(**cache_kwargs)
    read = SHAPES[shape](bench.repo(cache))
    for uid in users:
        bench.run(read(uid))

    async def body():
        views = None
        for i in range(ops):
            views = await read(users[i & 63])
        assert views is not None and len(views) == len(NAMES)

    before = stats_snapshot(cache)
    measure(
        benchmark,
        bench,
        f"bootstrap.{tier}.{shape}",
        body,
        ops=ops,
        rounds=scaled(benchmark, rounds, 1),
        documents=len(NAMES),
    )
    delta = stats_change(before, cache.stats, *_COUNTERS)
    benchmark.extra_info["stats"] = delta

    async def prepare(r):
        await SHAPES[shape](r)(users[0])

    benchmark.extra_info["trips"] = _trips(bench, shape, users[0], prepare, **cache_kwargs)
    assert every_read_hits(delta), delta


@pytest.mark.parametrize("shape", list(SHAPES))
def test_bootstrap_cold(benchmark, clean_valkey: BenchSession, shape: str) -> None:
    """One cold bootstrap per round, as its caller waits: the setup (untimed) lets the
    round before's background work finish, then invalidates the next user's scope."""
    bench = clean_valkey
    cache = bench.cache()
    repo = bench.repo(cache)
    read = SHAPES[shape](repo)
    rounds = scaled(benchmark, 25 * N_COLD, 1)
    used = bench.work_users[:200]
    bench.run(warm_valkey(bench, used, NAMES))
    for uid in used:
        bench.run(read(uid))
    batch, setup = cold_batches(bench, cache, used, 1)

    async def body():
        await read(batch[0])

    before = stats_snapshot(cache)
    measure(
        benchmark,
        bench,
        f"bootstrap.cold.{shape}",
        body,
        ops=1,
        rounds=rounds,
        setup=setup,
        documents=len(NAMES),
    )
    delta = stats_change(before, cache.stats, *_COUNTERS)
    benchmark.extra_info["stats"] = delta
    uid = bench.work_users[-1]

    async def prepare(r):
        await SHAPES[shape](r)(uid)
        await SHAPES[shape](r)(uid)
        await r.cache_source.invalidate_for_scope(AppConfigScopeType.USER, str(uid))

    benchmark.extra_info["trips"] = _trips(bench, shape, uid, prepare)
    assert delta["l1_hits"] == 0 and delta["l2_hits"] == 0


def test_bootstrap_cold_with_fill(benchmark, clean_valkey: BenchSession) -> None:
    """``my_app_configs`` of N_COLD cold users back to back per round, their fills drained
    in the round: what a cold bootstrap costs the process in all."""
    bench = clean_valkey
    cache = bench.cache()
    read = _my(bench.repo(cache))
    rounds = scaled(benchmark, 25, 1)
    used = bench.work_users[: (rounds + 1) * N_COLD]
    bench.run(warm_valkey(bench, used, NAMES))
    for uid in used:
        bench.run(read(uid))
    batch, setup = cold_batches(bench, cache, used, N_COLD)

    async def body():
        for uid in batch:
            await read(uid)
        await drain(cache)

    measure(
        benchmark,
        bench,
        "bootstrap.cold.my.with_fill",
        body,
        ops=N_COLD,
        rounds=rounds,
        setup=setup,
        documents=len(NAMES),
    )


@pytest.mark.parametrize("shape", list(SHAPES))
def test_bootstrap_db_only(benchmark, bench: BenchSession, shape: str) -> None:
    """One DB-only bootstrap per round (as the cold ones)."""
    repo = bench.repo(None)
    read = SHAPES[shape](repo)
    users = itertools.cycle(bench.hot_users)

    async def body():
        await read(next(users))

    measure(
        benchmark,
        bench,
        f"bootstrap.db_only.{shape}",
        body,
        ops=1,
        rounds=scaled(benchmark, 25 * N_COLD, 1),
        documents=len(NAMES),
    )


def test_bootstrap_after_local_ttl(benchmark, clean_valkey: BenchSession) -> None:
    """``my_app_configs`` of users back after ``local_ttl``: the clock moves by
    ``local_ttl`` before each round (untimed), so every L1 entry and the policy-name
    list have expired; Valkey is warm. The expired entries are renewed by one read of
    the generations, which also confirms the list."""
    bench = clean_valkey
    clock = FakeClock()
    cache = bench.cache(local_ttl=LOCAL_TTL, timer=clock)
    read = _my(bench.repo(cache))
    users = bench.hot_users[:N_COLD]
    bench.run(warm_valkey(bench, users, NAMES))
    for uid in users:
        bench.run(read(uid))
    bench.run(drain(cache))

    def setup() -> None:
        clock.advance(LOCAL_TTL)

    async def body():
        for uid in users:
            views = await read(uid)
            assert len(views) == len(NAMES)
        await drain(cache)

    before = stats_snapshot(cache)
    measure(
        benchmark,
        bench,
        "bootstrap.after_local_ttl.my",
        body,
        ops=N_COLD,
        rounds=scaled(benchmark, 25, 1),
        setup=setup,
        documents=len(NAMES),
    )
    delta = stats_change(before, cache.stats, *_COUNTERS)
    benchmark.extra_info["stats"] = delta
    trips_clock = FakeClock()

    async def prepare(r):
        await _my(r)(users[0])
        await drain(r.cache_source)
        trips_clock.advance(LOCAL_TTL)

    benchmark.extra_info["trips"] = bench.run(
        count_trips(
            bench, lambda r: _my(r)(users[0]), prepare=prepare, local_ttl=LOCAL_TTL,
            timer=trips_clock,
        )
    )  # fmt: skip
    assert delta["db_loads"] == 0, delta
    assert benchmark.extra_info["trips"]["valkey_round_trips"] == 1
