"""What observability costs the hot path: L1 and L2 hits with the Prometheus collector
registered and the consistency monitor running at its default sampling, against the same
hits without either (the target is within 3%; compare the medians of one run)."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import generate_latest
from tests.support.metrics import registry_with

from appconfig_cache.consistency import ConsistencyMonitor

from .support import N_FAST, N_RT, NAME, BenchSession, hot_reads, measure, scaled, warm_valkey

pytestmark = pytest.mark.benchmark(group="observability")

#: plain: neither; collector: the collector only; observed: the collector and the monitor
MODES = ["plain", "collector", "observed"]


def _observe(bench: BenchSession, cache: Any, mode: str) -> ConsistencyMonitor | None:
    """The collector in a registry of its own, and (observed) the monitor started at its
    default sampling."""
    if mode == "plain":
        return None
    monitor = ConsistencyMonitor(cache, bench.engine) if mode == "observed" else None
    registry = registry_with(cache, "bench", monitor=monitor)

    async def start() -> None:
        if monitor is not None:
            monitor.start()

    bench.run(start())
    generate_latest(registry)  # one scrape, as Prometheus would
    return monitor


def _measure_hits(
    benchmark, bench: BenchSession, cache: Any, mode: str, hit: str, *, ops: int, rounds: int
) -> None:
    """Time ``ops`` reads of the hot users' views in ``mode``; the monitor's figures go to
    ``extra_info``."""
    body = hot_reads(bench, bench.repo(cache).app_config, ops)
    monitor = _observe(bench, cache, mode)
    try:
        measure(
            benchmark, bench, f"observability.{hit}.{mode}", body,
            ops=ops, rounds=scaled(benchmark, rounds, 1),
        )  # fmt: skip
    finally:
        if monitor is not None:
            benchmark.extra_info["monitor"] = monitor.figures().as_dict()
            bench.run(monitor.aclose())


@pytest.mark.parametrize("mode", MODES)
def test_l1_hit(benchmark, clean_valkey: BenchSession, mode: str) -> None:
    """An L1 hit (``local_ttl=60``: every timed op is a hit)."""
    cache = clean_valkey.cache(local_ttl=60.0)
    _measure_hits(benchmark, clean_valkey, cache, mode, "l1_hit", ops=N_FAST, rounds=100)
    assert cache.stats.l1_hits > 0


@pytest.mark.parametrize("mode", MODES)
def test_l2_hit(benchmark, clean_valkey: BenchSession, mode: str) -> None:
    """A Valkey hit (``local_maxsize=0``); the monitor samples these misses of L1."""
    bench = clean_valkey
    bench.run(warm_valkey(bench, bench.hot_users, [NAME]))
    cache = bench.cache(local_maxsize=0)
    _measure_hits(benchmark, bench, cache, mode, "l2_hit", ops=N_RT, rounds=60)
    assert cache.stats.l2_hits > 0
