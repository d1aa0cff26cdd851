"""A real Valkey Cluster (3 primaries) and a primary/replica pair for the scale-out tests.

``APPCONFIG_CACHE_VALKEY_CLUSTER_URL`` points the cluster tests at an external cluster
(any one node's ``redis://`` URL); otherwise one embedded cluster runs for the session,
started on first use. The replica pair is always embedded: its tests kill and pause it.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio
import valkey.asyncio as valkey_asyncio

from appconfig_cache.embedded import (
    EmbeddedValkeyCluster,
    EmbeddedValkeyReplicaPair,
    EmbeddedValkeyReplicatedCluster,
)
from appconfig_cache.embedded._base import admin_clients

# The cluster itself (_session_embedded_cluster, valkey_cluster_url, cluster_client)
# lives in tests/conftest.py: tests/cache runs its whole suite on it in py311-cluster.
CLUSTER_URL_ENV = "APPCONFIG_CACHE_VALKEY_CLUSTER_URL"


# -- cluster ----------------------------------------------------------------------------


@pytest.fixture
def embedded_cluster(request: pytest.FixtureRequest) -> Iterator[EmbeddedValkeyCluster]:
    """The embedded cluster behind ``valkey_cluster_url``, for tests that pause or kill nodes.

    Every node is running and the cluster is ``ok`` again when the test ends (a killed
    node comes back empty, with its slots).
    """
    if os.environ.get(CLUSTER_URL_ENV):
        pytest.skip(f"{CLUSTER_URL_ENV} is set: fault tests need cluster nodes they own")
    cluster: EmbeddedValkeyCluster = request.getfixturevalue("_session_embedded_cluster")
    yield cluster
    revived = False
    for node in cluster.nodes:
        if node.paused or not node.is_running():
            node.ensure_running()
            revived = True
    if revived:
        cluster.wait_until_ok()


# -- primary with one replica -------------------------------------------------------------


@pytest.fixture(scope="session")
def _session_replica_pair() -> Iterator[EmbeddedValkeyReplicaPair]:
    with EmbeddedValkeyReplicaPair() as pair:
        yield pair


@pytest_asyncio.fixture(loop_scope="session")
async def replica_pair(
    _session_replica_pair: EmbeddedValkeyReplicaPair,
) -> AsyncIterator[EmbeddedValkeyReplicaPair]:
    """A primary and its replica, both running, in sync and empty.

    Tests may kill, pause or restart either server; the pair is repaired afterwards.
    """
    pair = _session_replica_pair
    await _repair(pair)
    client = valkey_asyncio.Valkey.from_url(
        pair.primary_url, socket_timeout=5.0, socket_connect_timeout=5.0
    )
    try:
        await client.flushall()
        # The replica has applied the flush before the test starts.
        acked = await client.wait(1, 5000)
        assert acked == 1, "the replica did not acknowledge the flush"
    finally:
        await client.aclose()
    yield pair
    await _repair(pair)


async def _repair(pair: EmbeddedValkeyReplicaPair) -> None:
    await asyncio.to_thread(pair.ensure_running)


# -- 3 primaries + 3 replicas (the failover drill) ------------------------------------------


# The drill and the other failover tests take a minute or two: they run in one tox env.
FAILOVER_ENV = "APPCONFIG_CACHE_FAILOVER_TESTS"


@pytest.fixture(scope="session")
def _session_replicated_cluster() -> Iterator[EmbeddedValkeyReplicatedCluster]:
    if not os.environ.get(FAILOVER_ENV):
        pytest.skip(f"failover tests run with {FAILOVER_ENV}=1 (tox -e py311-cluster sets it)")
    with EmbeddedValkeyReplicatedCluster(primaries=3) as cluster:
        yield cluster


@pytest.fixture
def replicated_cluster(
    _session_replicated_cluster: EmbeddedValkeyReplicatedCluster,
) -> Iterator[EmbeddedValkeyReplicatedCluster]:
    """An embedded 3 + 3 cluster, every node running, replicas in sync, and empty.

    Tests may kill, pause or fail over any node; it is healthy again afterwards (a
    killed node comes back empty and follows whichever node now serves its slots).
    """
    cluster = _session_replicated_cluster
    _repair_replicated(cluster)
    with admin_clients(cluster.host, cluster.ports) as clients:
        for client in clients:
            if client.info("replication").get("role") == "master":
                client.flushall()
    yield cluster
    _repair_replicated(cluster)


def _repair_replicated(cluster: EmbeddedValkeyReplicatedCluster) -> None:
    for node in cluster.nodes:
        node.ensure_running()
    cluster.wait_until_ok(timeout=30.0)
