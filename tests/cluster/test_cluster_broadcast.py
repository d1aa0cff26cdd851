"""The invalidation broadcast on a real Valkey Cluster: sharded pub/sub (SSUBSCRIBE)."""

from __future__ import annotations

import pytest
from valkey.asyncio.cluster import ValkeyCluster

from appconfig_cache import (
    AppConfigFragmentCacheSource,
    AppConfigFragmentRepository,
    MyFragmentInput,
)
from tests.support.clock import FakeClock
from tests.support.data import add_policy, add_user
from tests.support.polling import wait_for

pytestmark = pytest.mark.cluster


async def test_sharded_broadcast_drops_the_other_instances_l1(
    engine, valkey_cluster_url: str
) -> None:
    await add_policy(engine, "theme")
    uid = await add_user(engine, domain="d1")
    # Fresh clients that have not run a command yet: the subscriber must find the slots.
    client_a = ValkeyCluster.from_url(valkey_cluster_url, socket_timeout=1.0)
    client_b = ValkeyCluster.from_url(valkey_cluster_url, socket_timeout=1.0)
    a = AppConfigFragmentCacheSource(client_a, broadcast=True, timer=FakeClock())
    b = AppConfigFragmentCacheSource(client_b, broadcast=True, timer=FakeClock())
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
        await wait_for(
            lambda: b.stats.broadcast_received >= 1, what="B to receive the bump", timeout=5.0
        )
        assert (await repo_b.app_config(uid, "theme")).config == {"c": 2}
        assert a.stats.broadcast == b.stats.broadcast == "up"
        assert a.stats.valkey_errors == b.stats.valkey_errors == 0
        assert a.stats.valkey_refusals == b.stats.valkey_refusals == 0
    finally:
        await a.aclose()
        await b.aclose()
        await client_a.aclose()
        await client_b.aclose()
