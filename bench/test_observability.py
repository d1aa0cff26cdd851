"""What observability costs the hot path: L1 and L2 hits with the Prometheus collector
registered and the consistency monitor running at its default sampling, against the same
hits without either (the target is within 3%; compare the medians of one run)."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from appconfig_cache.consistency import ConsistencyMonitor
from appconfig_cache.metrics import AppConfigCacheCollector

from .support import N_FAST, N_RT, NAME, BenchSession, measure, scaled, warm_valkey

pytestmark = pytest.mark.benchmark(group="observability")

#: plain: neither; collector: the collector only; observed: the collector and the monitor
MODES = ["plain", "collector", "observed"]


def _observe(bench: BenchSession, cache: Any, mode: str) -> ConsistencyMonitor | None:
    """The collector in a registry of its own, and (observed) the monitor started at its
    default sampling."""
    if mode == "plain":
        return None
    monitor = ConsistencyMonitor(cache, bench.engine) if mode == "observed" else None
    collector = AppConfigCacheCollector()
    collector.add(cache, "bench", monitor=monitor)
    registry = CollectorRegistry()
    registry.register(collector)

    async def start() -> None:
        if monitor is not None:
            monitor.start()

    bench.run(start())
    generate_latest(registry)  # one scrape, as Prometheus would
    return monitor


@pytest.mark.parametrize("mode", MODES)
def test_l1_hit(benchmark, clean_valkey: BenchSession, mode: str) -> None:
    """An L1 hit (``local_ttl=60``: every timed op is a hit)."""
    bench = clean_valkey
    cache = bench.cache(local_ttl=60.0)
    repo = bench.repo(cache)
    users = bench.hot_users
    for uid in users:
        bench.run(repo.app_config(uid, NAME))
    monitor = _observe(bench, cache, mode)
    get = repo.app_config

    async def body():
        view = None
        for i in range(N_FAST):
            view = await get(users[i & 63], NAME)
        return view

    try:
        measure(
            benchmark, bench, f"observability.l1_hit.{mode}", body,
            ops=N_FAST, rounds=scaled(benchmark, 100, 1),
        )  # fmt: skip
    finally:
        if monitor is not None:
            benchmark.extra_info["monitor"] = monitor.figures().as_dict()
            bench.run(monitor.aclose())
    assert cache.stats.l1_hits > 0


@pytest.mark.parametrize("mode", MODES)
def test_l2_hit(benchmark, clean_valkey: BenchSession, mode: str) -> None:
    """A Valkey hit (``local_maxsize=0``); the monitor samples these misses of L1."""
    bench = clean_valkey
    users = bench.hot_users
    bench.run(warm_valkey(bench, users, [NAME]))
    cache = bench.cache(local_maxsize=0)
    repo = bench.repo(cache)
    for uid in users:
        bench.run(repo.app_config(uid, NAME))
    monitor = _observe(bench, cache, mode)
    get = repo.app_config

    async def body():
        view = None
        for i in range(N_RT):
            view = await get(users[i & 63], NAME)
        return view

    try:
        measure(
            benchmark, bench, f"observability.l2_hit.{mode}", body,
            ops=N_RT, rounds=scaled(benchmark, 60, 1),
        )  # fmt: skip
    finally:
        if monitor is not None:
            benchmark.extra_info["monitor"] = monitor.figures().as_dict()
            bench.run(monitor.aclose())
    assert cache.stats.l2_hits > 0
