"""The invalidation broadcast on a real Valkey Cluster: sharded pub/sub (SSUBSCRIBE)."""

from __future__ import annotations

import asyncio

import pytest
from valkey.asyncio.cluster import ValkeyCluster

from appconfig_cache import (
    AppConfigFragmentCacheSource,
    AppConfigFragmentRepository,
    MyFragmentInput,
)
from tests.support.data import add_policy, add_user

pytestmark = pytest.mark.cluster


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def _wait_for(predicate, what: str, attempts: int = 500) -> None:
    for _ in range(attempts):  # bounded polling on a condition, never a fixed sleep
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


async def test_sharded_broadcast_drops_the_other_instances_l1(
    engine, valkey_cluster_url: str
) -> None:
    await add_policy(engine, "theme")
    uid = await add_user(engine, domain="d1")
    # Fresh clients that have not run a command yet: the subscriber must find the slots.
    client_a = ValkeyCluster.from_url(valkey_cluster_url, socket_timeout=1.0)
    client_b = ValkeyCluster.from_url(valkey_cluster_url, socket_timeout=1.0)
    a = AppConfigFragmentCacheSource(client_a, broadcast=True, timer=Clock())
    b = AppConfigFragmentCacheSource(client_b, broadcast=True, timer=Clock())
    try:
        await a.start()
        await b.start()
        repo_a = AppConfigFragmentRepository(engine, a)
        repo_b = AppConfigFragmentRepository(engine, b)
        await repo_a.bulk_create_my(uid, [MyFragmentInput(name="theme", config={"c": 1})])
        assert (await repo_b.app_config(uid, "theme")).config == {"c": 1}
        assert (await repo_b.app_config(uid, "theme")).config == {"c": 1}
        assert b.stats.l1_hits == 1
        await repo_a.bulk_update_my(uid, [MyFragmentInput(name="theme", config={"c": 2})])
        # B's clock never moves: only the sharded message can drop its L1 entry.
        await _wait_for(lambda: b.stats.broadcast_received >= 1, "B to receive the bump")
        assert (await repo_b.app_config(uid, "theme")).config == {"c": 2}
        assert a.stats.broadcast == b.stats.broadcast == "up"
        assert a.stats.valkey_errors == b.stats.valkey_errors == 0
        assert a.stats.valkey_refusals == b.stats.valkey_refusals == 0
    finally:
        await a.aclose()
        await b.aclose()
        await client_a.aclose()
        await client_b.aclose()
