"""The embedded 3 + 3 Valkey Cluster: formed, replicated, failing over, cleaned up."""

from __future__ import annotations

import asyncio

import pytest
from valkey.crc import key_slot

from appconfig_cache.embedded import EmbeddedValkeyReplicatedCluster
from appconfig_cache.embedded._base import admin_clients
from tests.support.internals import cluster_root

pytestmark = pytest.mark.cluster

_SHARD_SLOTS = (0, 8000, 16383)  # one slot in each primary's range


async def test_every_primary_has_its_own_replica_in_sync(
    replicated_cluster: EmbeddedValkeyReplicatedCluster,
) -> None:
    cluster = replicated_cluster
    primaries = [cluster.owner(slot) for slot in _SHARD_SLOTS]
    replicas = [cluster.replica_of(primary) for primary in primaries]
    assert len({node.port for node in primaries + replicas}) == 6
    for slot, primary, replica in zip(_SHARD_SLOTS, primaries, replicas, strict=True):
        key = next(k for k in (f"k{i}" for i in range(100_000)) if key_slot(k.encode()) == slot)
        with admin_clients(cluster.host, [primary.port, replica.port]) as (ours, theirs):
            ours.set(key, "v")
            assert ours.execute_command("WAIT", 1, 5000) == 1  # the replica took it
            theirs.execute_command("READONLY")
            assert theirs.get(key) == "v"


@pytest.mark.slow
async def test_a_killed_primary_is_replaced_by_its_replica_and_comes_back_as_one(
    replicated_cluster: EmbeddedValkeyReplicatedCluster,
) -> None:
    cluster = replicated_cluster
    old = cluster.owner(0)
    replica = cluster.replica_of(old)
    old.kill()
    await asyncio.to_thread(cluster.wait_for_new_owner, 0, old)
    assert cluster.owner(0) is replica
    old.ensure_running()  # same id (nodes.conf kept), no data: it follows the new primary
    await asyncio.to_thread(cluster.wait_until_ok)
    assert cluster.replica_of(replica) is old


def test_stop_kills_every_node_and_removes_their_directories() -> None:
    cluster = EmbeddedValkeyReplicatedCluster(primaries=1)
    with cluster:
        root = cluster_root(cluster)
        assert root is not None and root.exists()
        nodes = cluster.nodes
        assert len(nodes) == 2 and cluster.replica_of(cluster.owner(0)) is nodes[1]
    assert not root.exists()
    assert not any(node.is_running() for node in nodes)
