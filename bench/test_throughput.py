"""Throughput of a skewed WebUI-bootstrap workload: 64 concurrent requests, 1% writes.

A request is ``my_app_configs(user)`` (the bootstrap), the user drawn from a
Zipf distribution (s = 1.1) over 2,000 users; 1% of the requests are
``bulk_update_my`` of the user's ``theme`` instead. The same request sequence
runs against DB only, Valkey only and L1 + Valkey. Each round serves a fixed
number of requests after an untimed warm-up; requests per second =
requests / round time. With a cache, Valkey is first filled with every user's
envelopes (the steady state of a server that has run longer than a few seconds).
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from tests.support.stats import stats_change, stats_snapshot

from appconfig_cache import MyFragmentInput

from .support import NAME, NAMES, BenchSession, drain, measure, scaled, user_config, warm_valkey

pytestmark = pytest.mark.benchmark(group="throughput")

CONCURRENCY = 64
ZIPF_S = 1.1
WRITE_SHARE = 0.01


def _requests(bench: BenchSession, count: int, seed: int) -> list[tuple[object, bool]]:
    users = bench.work_users
    rng = random.Random(seed)
    weights = [1.0 / (rank + 1) ** ZIPF_S for rank in range(len(users))]
    cum = list(itertools.accumulate(weights))
    picks = rng.choices(users, cum_weights=cum, k=count)
    return [(uid, rng.random() < WRITE_SHARE) for uid in picks]


async def _serve(repo, requests: list[tuple[object, bool]], counter: dict) -> None:
    it = iter(requests)

    async def worker() -> None:
        for uid, write in it:
            if write:
                counter["writes"] += 1
                counter["n"] += 1
                result = await repo.bulk_update_my(
                    uid, [MyFragmentInput(name=NAME, config=user_config(NAME, counter["n"]))]
                )
                assert not result.failures, result.failures
            else:
                views = await repo.my_app_configs(uid)
                assert views
            counter["requests"] += 1

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))


@contextmanager
def _gc_pauses(info: dict) -> Iterator[None]:
    """Record the full (generation 2) garbage collections while timing: their number and
    the longest, in ``info`` (a large L1 is many objects for each of them to walk)."""
    pauses: list[float] = []
    started = [0.0]

    def watch(phase: str, detail: dict) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        elif detail["generation"] == 2:
            pauses.append(time.perf_counter() - started[0])

    gc.callbacks.append(watch)
    try:
        yield
    finally:
        gc.callbacks.remove(watch)
        info["gc_full_collections"] = len(pauses)
        info["gc_full_max_ms"] = round(max(pauses, default=0.0) * 1000, 1)


def _throughput(benchmark, bench: BenchSession, key: str, cache_kwargs: dict | None) -> None:
    count = scaled(benchmark, 3000, 200)
    rounds = scaled(benchmark, 3, 1)
    bench.flush_valkey()
    if cache_kwargs is not None:
        # Steady state: at these rates every user of the population comes back well within
        # the envelope TTL (600 s), so Valkey holds every user's envelopes.
        warm = bench.work_users[: scaled(benchmark, len(bench.work_users), 50)]
        bench.run(warm_valkey(bench, warm, NAMES))
    cache = None if cache_kwargs is None else bench.cache(**cache_kwargs)
    repo = bench.repo(cache)
    counter = {"requests": 0, "writes": 0, "n": 0}
    seeds = itertools.count(1)
    current: list = []

    def setup():
        # Untimed warm-up with another draw of the same distribution (this process's L1,
        # generations and user domains), then the timed draw.
        warmup = _requests(bench, count // 3, 1000 + next(seeds))
        bench.run(_serve(repo, warmup, dict(counter)))
        bench.run(drain(cache))
        current[:] = _requests(bench, count, 1)
        counter.update(requests=0, writes=0)

    async def body():
        await _serve(repo, current, counter)
        await drain(cache)

    before = stats_snapshot(cache) if cache is not None else None
    with _gc_pauses(benchmark.extra_info):
        measure(
            benchmark,
            bench,
            key,
            body,
            ops=count,
            rounds=rounds,
            warmup_rounds=0,
            setup=setup,
            concurrency=CONCURRENCY,
            zipf_s=ZIPF_S,
            users=len(bench.work_users),
            write_share=WRITE_SHARE,
        )
    benchmark.extra_info["writes_last_round"] = counter["writes"]
    if cache is not None:
        benchmark.extra_info["l1_entries"] = cache.local_size()
        benchmark.extra_info["l1_bytes"] = cache.stats.l1_bytes
        benchmark.extra_info["stats"] = stats_change(
            before,
            cache.stats,
            "l1_hits",
            "l1_misses",
            "l2_hits",
            "l2_misses",
            "db_loads",
            "valkey_timeouts",
            "valkey_errors",
            "breaker_opens",
        )
    assert counter["requests"] == count


def test_throughput_db_only(benchmark, bench: BenchSession) -> None:
    _throughput(benchmark, bench, "throughput.db_only", None)


def test_throughput_valkey_only(benchmark, bench: BenchSession) -> None:
    _throughput(benchmark, bench, "throughput.valkey_only", {"local_maxsize": 0})


def test_throughput_l1_valkey(benchmark, bench: BenchSession) -> None:
    _throughput(benchmark, bench, "throughput.l1_valkey", {})


@pytest.mark.parametrize(
    ("maxsize", "maxbytes_mib"),
    [(4096, 64), (8192, 128), (8192, 192)],
    ids=["4096-64MiB", "8192-128MiB", "8192-192MiB"],
)
def test_throughput_l1_size(
    benchmark, bench: BenchSession, maxsize: int, maxbytes_mib: int
) -> None:
    """L1 + Valkey with other L1 bounds than the defaults (8,192 entries, 160 MiB): the
    earlier defaults, and either side of the byte budget (docs/deployment.rst, *The L1
    defaults*)."""
    key = f"throughput.l1_size.{maxsize}.{maxbytes_mib}"
    _throughput(
        benchmark, bench, key, {"local_maxsize": maxsize, "local_maxbytes": maxbytes_mib << 20}
    )
