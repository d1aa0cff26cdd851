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
from valkey.asyncio.cluster import ValkeyCluster

from appconfig_cache.embedded import EmbeddedValkeyCluster, EmbeddedValkeyReplicaPair

CLUSTER_URL_ENV = "APPCONFIG_CACHE_VALKEY_CLUSTER_URL"


# -- cluster ----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def _session_embedded_cluster() -> Iterator[EmbeddedValkeyCluster]:
    """One embedded 3-primary cluster for the whole session, started on first use."""
    with EmbeddedValkeyCluster(primaries=3) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def valkey_cluster_url(request: pytest.FixtureRequest) -> str:
    """``$APPCONFIG_CACHE_VALKEY_CLUSTER_URL`` or node 0 of the session's embedded cluster."""
    external = os.environ.get(CLUSTER_URL_ENV)
    if external:
        return external
    cluster: EmbeddedValkeyCluster = request.getfixturevalue("_session_embedded_cluster")
    return cluster.url


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


@pytest_asyncio.fixture(loop_scope="session")
async def cluster_client(valkey_cluster_url: str) -> AsyncIterator[ValkeyCluster]:
    """A ``ValkeyCluster`` client on an empty cluster (FLUSHALL on every primary)."""
    client = ValkeyCluster.from_url(
        valkey_cluster_url, socket_timeout=1.0, socket_connect_timeout=1.0
    )
    try:
        # Also discovers the slot map, so the test's first command is an ordinary one.
        await client.flushall(target_nodes=ValkeyCluster.PRIMARIES)
        yield client
    finally:
        await client.aclose()


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
