"""The scale-out fixtures give what they promise: a formed cluster, a replica in sync."""

from __future__ import annotations

import itertools
import os

import pytest
import valkey.asyncio as valkey_asyncio
from valkey.asyncio.cluster import ClusterNode, ValkeyCluster

from appconfig_cache.embedded import EmbeddedValkeyCluster, EmbeddedValkeyReplicaPair

pytestmark = pytest.mark.cluster


async def test_cluster_serves_every_slot_from_its_own_process(
    embedded_cluster: EmbeddedValkeyCluster, cluster_client: ValkeyCluster
) -> None:
    assert len(set(embedded_cluster.ports)) == len(set(embedded_cluster.pids)) == 3
    for pid in embedded_cluster.pids:
        os.kill(pid, 0)  # alive
    infos = await cluster_client.cluster_info(target_nodes=ValkeyCluster.ALL_NODES)
    assert [info["cluster_state"] for info in infos.values()] == ["ok"] * 3
    slots = await cluster_client.cluster_slots(target_nodes=ValkeyCluster.RANDOM)
    ranges = sorted(slots)
    assert ranges[0][0] == 0 and ranges[-1][1] == 16383
    assert all(prev[1] + 1 == nxt[0] for prev, nxt in itertools.pairwise(ranges))
    assert {slots[r]["primary"][1] for r in ranges} == set(embedded_cluster.ports)


async def test_startup_nodes_reach_every_primary(embedded_cluster: EmbeddedValkeyCluster) -> None:
    client = ValkeyCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in embedded_cluster.startup_nodes]
    )
    try:
        keys = [f"fixture:{i}" for i in range(30)]
        for key in keys:
            await client.set(key, key, ex=60)
        owners = {client.get_node_from_key(key).port for key in keys}  # type: ignore[union-attr]
        assert owners == set(embedded_cluster.ports)
        assert [await client.get(key) for key in keys] == [key.encode() for key in keys]
    finally:
        await client.aclose()


async def test_replica_acknowledges_and_holds_the_primary_writes(
    replica_pair: EmbeddedValkeyReplicaPair,
) -> None:
    primary = valkey_asyncio.Valkey.from_url(replica_pair.primary_url, socket_timeout=5.0)
    replica = valkey_asyncio.Valkey.from_url(replica_pair.replica_url, socket_timeout=5.0)
    try:
        assert (await replica.info("replication"))["role"] == "slave"
        await primary.set("fixture:key", b"v")
        assert await primary.wait(1, 5000) == 1
        assert await replica.get("fixture:key") == b"v"
    finally:
        await primary.aclose()
        await replica.aclose()


async def test_a_paused_or_killed_replica_acknowledges_nothing(
    replica_pair: EmbeddedValkeyReplicaPair,
) -> None:
    primary = valkey_asyncio.Valkey.from_url(replica_pair.primary_url, socket_timeout=5.0)
    try:
        replica_pair.pause_replica()
        await primary.set("fixture:paused", b"1")
        assert await primary.wait(1, 100) == 0
        replica_pair.resume_replica()
        assert await primary.wait(1, 5000) == 1

        replica_pair.kill_replica()
        await primary.set("fixture:killed", b"1")
        assert await primary.wait(1, 100) == 0
        replica_pair.restart_replica()  # waits until it is in sync again
        assert await primary.wait(1, 5000) == 1
    finally:
        await primary.aclose()
    replica = valkey_asyncio.Valkey.from_url(replica_pair.replica_url, socket_timeout=5.0)
    try:
        assert await replica.get("fixture:killed") == b"1"  # resynced from the primary
    finally:
        await replica.aclose()
