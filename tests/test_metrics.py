"""The Prometheus collector (``appconfig_cache.metrics``) against real Valkey and PostgreSQL."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import valkey.asyncio as valkey_asyncio
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.ext.asyncio import AsyncEngine

from appconfig_cache import (
    AppConfigFragmentCacheSource,
    AppConfigFragmentRepository,
    CacheSettingsError,
    MyFragmentInput,
)
from appconfig_cache.metrics import AppConfigCacheCollector
from tests.support.clock import FakeClock
from tests.support.consistency import theme_org
from tests.support.metrics import registry_with

NAMES = ("theme", "menu")
#: every label a metric may carry, and the values each may take (None: numbers, for ``le``)
LABELS: dict[str, set[str] | None] = {
    "cache": {"main", "admin"},
    "tier": {"l1", "l2"},
    "result": {"hit", "miss", "skipped", "written", "consistent", "cleared", "inconsistent"},
    "kind": {"unavailable", "timeout", "refused", "public", "name", "domain", "user", "policies"},
    "state": {"closed", "open", "half_open", "off", "connecting", "up", "down"},
    "reason": {"malformed", "outdated", "valkey", "db", "not_cached", "dropped"},
    "source": {"envelope", "l1"},
    "store": {"l1", "memo"},
    "le": None,
}


def scrape(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Parse the text exposition with prometheus_client's parser: {(sample, labels): value}."""
    text = generate_latest(registry).decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


async def org(engine: AsyncEngine, n_users: int) -> list[uuid.UUID]:
    return await theme_org(engine, n_users, NAMES, {"r": -1})


async def workload(
    repo: AppConfigFragmentRepository,
    users: list[uuid.UUID],
    rounds: int,
    midway: Callable[[], None] = lambda: None,
) -> None:
    """Eight sessions reading both names and saving their theme every third round;
    ``midway`` is called once, by session 0 half-way, while the others run."""

    async def session(i: int) -> None:
        for r in range(rounds):
            if i == 0 and r == rounds // 2:
                midway()
            uid = users[(i + r) % len(users)]
            for name in NAMES:
                await repo.app_config(uid, name)
            if r % 3 == 0:
                await repo.bulk_update_my(uid, [MyFragmentInput(name="theme", config={"r": r})])

    await asyncio.gather(*(session(i) for i in range(8)))


def test_importing_the_library_registers_nothing() -> None:
    code = (
        "import sys, appconfig_cache\n"
        "assert 'prometheus_client' not in sys.modules, 'the core imports prometheus_client'\n"
        "import appconfig_cache.metrics, appconfig_cache.consistency\n"
        "from prometheus_client import REGISTRY\n"
        "names = [m.name for m in REGISTRY.collect() if 'appconfig' in m.name]\n"
        "assert names == [], names\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


async def test_scrape_during_a_run_parses_agrees_with_stats_and_moves(
    engine: AsyncEngine, valkey_client: valkey_asyncio.Valkey
) -> None:
    users = await org(engine, 6)
    main = AppConfigFragmentCacheSource(valkey_client, timer=FakeClock())
    admin = AppConfigFragmentCacheSource(valkey_client, local_maxsize=0, timer=FakeClock())
    collector = AppConfigCacheCollector()
    collector.add(main, "main")
    collector.add(admin, "admin")
    registry = CollectorRegistry()
    registry.register(collector)
    repo = AppConfigFragmentRepository(engine, cache_source=main)
    admin_repo = AppConfigFragmentRepository(engine, cache_source=admin)
    scrapes: list[dict[Any, float]] = []
    try:
        await workload(repo, users, 6, midway=lambda: scrapes.append(scrape(registry)))
        (during,) = scrapes
        await admin_repo.app_config(users[0], "theme")
        await main.drain()
        await admin.drain()
        after = scrape(registry)
        stats = main.stats
        expected = {
            ("l1", "hit"): stats.l1_hits,
            ("l1", "miss"): stats.l1_misses,
            ("l2", "hit"): stats.l2_hits,
            ("l2", "miss"): stats.l2_misses,
            ("l2", "skipped"): stats.l2_skipped,
        }
        for (tier, result), count in expected.items():
            got = value(
                after, "appconfig_cache_reads_total", cache="main", tier=tier, result=result
            )
            assert got == count, (tier, result)
        assert value(after, "appconfig_cache_db_loads_total", cache="main") == stats.db_loads
        assert value(after, "appconfig_cache_fills_total", cache="main", result="written") == (
            stats.fills
        )
        assert (
            value(after, "appconfig_cache_invalidations_total", cache="main", kind="user")
            == stats.invalidations_user
        )
        assert value(after, "appconfig_cache_l1_entries", cache="main") == main.local_size()
        assert value(after, "appconfig_cache_l1_bytes", cache="main") == stats.l1_bytes > 0
        assert value(after, "appconfig_cache_breaker_state", cache="main", state="closed") == 1
        assert value(after, "appconfig_cache_pending_bumps", cache="main") == 0
        # the workload moved the counters between the two scrapes
        for tier, result in (("l1", "hit"), ("l1", "miss")):
            labels = {"cache": "main", "tier": tier, "result": result}
            assert value(after, "appconfig_cache_reads_total", **labels) > value(
                during, "appconfig_cache_reads_total", **labels
            )
        # the two sources are told apart by their label
        assert value(after, "appconfig_cache_reads_total", cache="admin", tier="l1", result="miss")
        assert admin.stats.l1_misses == 1
        # histograms: observed on round trips only
        trips = value(after, "appconfig_cache_valkey_round_trip_seconds_count", cache="main")
        loads = value(after, "appconfig_cache_db_load_seconds_count", cache="main")
        assert trips > 0
        assert 0 < loads <= stats.db_loads
        assert loads > value(during, "appconfig_cache_db_load_seconds_count", cache="main")
    finally:
        await main.aclose()
        await admin.aclose()


async def test_no_label_value_comes_from_user_input(
    engine: AsyncEngine, valkey_client: valkey_asyncio.Valkey
) -> None:
    users = await org(engine, 4)
    cache = AppConfigFragmentCacheSource(valkey_client, timer=FakeClock())
    registry = registry_with(cache)
    try:
        await workload(AppConfigFragmentRepository(engine, cache_source=cache), users, 3)
        await cache.drain()
        text = generate_latest(registry).decode()
    finally:
        await cache.aclose()
    for uid in users:
        assert str(uid) not in text
    for family in text_string_to_metric_families(text):
        assert family.name.startswith("appconfig_cache_")
        for sample in family.samples:
            for label, label_value in sample.labels.items():
                allowed = LABELS[label]
                if allowed is None:
                    float(label_value)
                else:
                    assert label_value in allowed, (sample.name, label, label_value)


async def test_l1_hits_observe_nothing(
    engine: AsyncEngine, valkey_client: valkey_asyncio.Valkey
) -> None:
    users = await org(engine, 1)
    cache = AppConfigFragmentCacheSource(valkey_client, timer=FakeClock())
    registry = registry_with(cache)
    repo = AppConfigFragmentRepository(engine, cache_source=cache)
    try:
        await repo.app_config(users[0], "theme")
        await cache.drain()
        before = scrape(registry)
        for _ in range(50):
            await repo.app_config(users[0], "theme")
        after = scrape(registry)
    finally:
        await cache.aclose()
    hits = {"cache": "main", "tier": "l1", "result": "hit"}
    assert value(after, "appconfig_cache_reads_total", **hits) == 50 + value(
        before, "appconfig_cache_reads_total", **hits
    )
    for histogram in ("valkey_round_trip_seconds", "db_load_seconds"):
        name = f"appconfig_cache_{histogram}_count"
        assert value(after, name, cache="main") == value(before, name, cache="main")


@pytest.mark.parametrize("name", ["", "two words", "x" * 65, "9lives", 'q"uote', "a\nb"])
async def test_a_bad_cache_label_is_refused(
    valkey_client: valkey_asyncio.Valkey, name: str
) -> None:
    cache = AppConfigFragmentCacheSource(valkey_client)
    with pytest.raises(CacheSettingsError):
        AppConfigCacheCollector().add(cache, name)


async def test_one_label_per_cache_source(valkey_client: valkey_asyncio.Valkey) -> None:
    collector = AppConfigCacheCollector()
    collector.add(AppConfigFragmentCacheSource(valkey_client), "main")
    with pytest.raises(CacheSettingsError):
        collector.add(AppConfigFragmentCacheSource(valkey_client), "main")
    collector.remove("main")
    collector.add(AppConfigFragmentCacheSource(valkey_client), "main")
