"""A bump acknowledged by a primary but never replicated, then a failover (issue 18).

Replication to the replica is cut before the write (its ``PSYNC`` is refused by an
ACL and its link killed), so the write's ``INCR`` lives on the old primary only; the
replica is then promoted with ``CLUSTER FAILOVER FORCE`` and the bump is gone. The
documented bound (docs/reliability.rst): a process that had the previous view in L1
may serve it until ``local_ttl`` after the write returned, and no process serves it
after that, from either tier, although the generation in Valkey went back.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from valkey.crc import key_slot

from appconfig_cache import (
    AppConfigFragmentCacheSource,
    AppConfigFragmentRepository,
    MyFragmentInput,
    make_valkey_client,
)
from appconfig_cache.embedded import EmbeddedValkeyReplicatedCluster
from appconfig_cache.embedded._base import admin_clients
from appconfig_cache.tiered import keys
from tests.support.clock import FakeClock
from tests.support.data import add_policy, add_user

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

LOCAL_TTL = 30.0


@asynccontextmanager
async def _repo(
    url: str, engine: AsyncEngine, **settings: object
) -> AsyncIterator[tuple[AppConfigFragmentRepository, AppConfigFragmentCacheSource]]:
    client = make_valkey_client(url, cluster=True, socket_timeout=2.0)
    cache = AppConfigFragmentCacheSource(client, **settings)  # type: ignore[arg-type]
    try:
        yield AppConfigFragmentRepository(engine, cache_source=cache), cache
    finally:
        await cache.aclose()
        await client.aclose()


async def _theme(repo: AppConfigFragmentRepository, uid: object) -> object:
    return (await repo.app_config(uid, "theme")).config  # type: ignore[arg-type]


async def test_a_bump_lost_in_a_failover_is_not_served_beyond_local_ttl(
    engine: AsyncEngine, replicated_cluster: EmbeddedValkeyReplicatedCluster
) -> None:
    cluster = replicated_cluster
    await add_policy(engine, "theme")
    uid = await add_user(engine, domain="d1")
    await AppConfigFragmentRepository(engine).bulk_create_my(
        uid, [MyFragmentInput(name="theme", config={"v": 1})]
    )
    slot = key_slot(str(uid).encode())
    gen_key = keys.user_gen_key(uid)
    primary = cluster.owner(slot)
    replica = cluster.replica_of(primary)
    clock_b = FakeClock()
    async with (
        _repo(cluster.url, engine) as (repo_a, a),
        _repo(cluster.url, engine, local_ttl=LOCAL_TTL, timer=clock_b) as (repo_b, b),
        _repo(cluster.url, engine, local_maxsize=0) as (repo_warm, warm),
    ):
        # B has v1 in L1; Valkey has its envelope, on the primary and on the replica.
        for _ in range(2):
            assert await _theme(repo_warm, uid) == {"v": 1}
            await warm.drain()
        assert await _theme(repo_b, uid) == {"v": 1}
        hits = b.stats.l1_hits
        assert await _theme(repo_b, uid) == {"v": 1}
        assert b.stats.l1_hits == hits + 1
        with admin_clients(cluster.host, [primary.port, replica.port]) as (p, r):
            assert p.execute_command("WAIT", 1, 5000) == 1
            before = p.get(gen_key)
            # Cut replication: the replica's reconnect is refused, its link is dropped.
            p.execute_command("ACL", "SETUSER", "default", "-psync", "-sync")
            try:
                p.execute_command("CLIENT", "KILL", "TYPE", "replica")
                await repo_a.bulk_update_my(uid, [MyFragmentInput(name="theme", config={"v": 2})])
                assert a.stats.pending_bumps == 0  # the primary acknowledged the bump
                assert p.get(gen_key) != before
                r.execute_command("CLUSTER", "FAILOVER", "FORCE")
                await asyncio.to_thread(cluster.wait_for_new_owner, slot, primary)
            finally:
                p.execute_command("ACL", "SETUSER", "default", "+@all")
            r.execute_command("READONLY")
            assert r.get(gen_key) == before  # the bump is lost: the generation went back

        # The writer reads its write (I2); a process without the view in L1 sees it at once.
        assert await _theme(repo_a, uid) == {"v": 2}
        async with _repo(cluster.url, engine, local_ttl=LOCAL_TTL) as (repo_c, _c):
            assert await _theme(repo_c, uid) == {"v": 2}
        # B may serve v1 from L1 until local_ttl after the write returned, not after.
        assert await _theme(repo_b, uid) in ({"v": 1}, {"v": 2})
        clock_b.advance(LOCAL_TTL)
        assert await _theme(repo_b, uid) == {"v": 2}
        assert await _theme(repo_warm, uid) == {"v": 2}  # Valkey serves nothing older
