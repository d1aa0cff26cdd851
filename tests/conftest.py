"""Session-wide servers and per-test clean state.

Servers start only when a test asks for them. ``APPCONFIG_CACHE_VALKEY_URL`` and
``APPCONFIG_CACHE_DATABASE_URL`` point the suite at external servers instead of the
embedded ones (``tox -e py311-system``).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio
import valkey.asyncio as valkey_asyncio
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from valkey.asyncio.cluster import ValkeyCluster

from appconfig_cache.embedded import (
    EmbeddedValkey,
    EmbeddedValkeyCluster,
    embedded_postgres,
    to_asyncpg_url,
)
from tests.support.data import TABLES, truncate_tables
from tests.support.valkey import direct_client

VALKEY_URL_ENV = "APPCONFIG_CACHE_VALKEY_URL"
DATABASE_URL_ENV = "APPCONFIG_CACHE_DATABASE_URL"


# -- Valkey -----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def _session_embedded_valkey() -> Iterator[EmbeddedValkey]:
    """One embedded Valkey for the whole session, started on first use."""
    with EmbeddedValkey() as server:
        yield server


def _external_or_embedded(request: pytest.FixtureRequest, env: str, embedded: str) -> str:
    """``$env`` if set, else the URL of the session's embedded server (started now if need be)."""
    return os.environ.get(env) or request.getfixturevalue(embedded).url


@pytest.fixture(scope="session")
def valkey_url(request: pytest.FixtureRequest) -> str:
    """``$APPCONFIG_CACHE_VALKEY_URL`` or the session's embedded Valkey."""
    return _external_or_embedded(request, VALKEY_URL_ENV, "_session_embedded_valkey")


@pytest.fixture
def embedded_valkey_server(request: pytest.FixtureRequest) -> Iterator[EmbeddedValkey]:
    """The embedded Valkey behind ``valkey_url``, for tests that kill, pause or restart it.

    It is running again (empty if it had to be restarted) when the test ends.
    """
    if os.environ.get(VALKEY_URL_ENV):
        pytest.skip(f"{VALKEY_URL_ENV} is set: fault tests need a Valkey process they own")
    server: EmbeddedValkey = request.getfixturevalue("_session_embedded_valkey")
    server.ensure_running()
    yield server
    server.ensure_running()


@pytest_asyncio.fixture(loop_scope="session")
async def valkey_client(valkey_url: str) -> AsyncIterator[valkey_asyncio.Valkey]:
    """A client with short timeouts and a bounded pool, closed after the test."""
    client = valkey_asyncio.Valkey.from_url(
        valkey_url, socket_timeout=1.0, socket_connect_timeout=1.0, max_connections=64
    )
    try:
        yield client
    finally:
        await client.aclose()


@pytest_asyncio.fixture(loop_scope="session")
async def _flush_valkey(valkey_url: str) -> None:
    client = direct_client(valkey_url, timeout=5.0)
    try:
        await client.flushdb()
    finally:
        await client.aclose()


# -- PostgreSQL ---------------------------------------------------------------------------


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def database_url() -> AsyncIterator[str]:
    """``$APPCONFIG_CACHE_DATABASE_URL`` (rewritten for asyncpg) or an embedded PostgreSQL."""
    external = os.environ.get(DATABASE_URL_ENV)
    if external:
        yield to_asyncpg_url(external)
        return
    async with embedded_postgres() as url:
        yield url


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    """An AsyncEngine on a freshly created schema, disposed at the end of the session."""
    from appconfig_cache import create_schema

    eng = create_async_engine(database_url)
    # An external test database may hold tables from an older schema: start from scratch.
    async with eng.begin() as conn:
        await conn.execute(text(f"DROP TABLE IF EXISTS {', '.join(TABLES)} CASCADE"))
    await create_schema(eng)
    try:
        yield eng
    finally:
        await eng.dispose()


@pytest_asyncio.fixture(loop_scope="session")
async def _truncate_tables(engine: AsyncEngine) -> None:
    await truncate_tables(engine)


# -- clean state ------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _clean_state(request: pytest.FixtureRequest) -> None:
    """Empty the tables and the Valkey database before each test that uses them.

    A sync fixture on purpose: it asks for the async cleaners by name only when the test
    uses that server, so a pure unit test starts no server at all.
    """
    names = request.fixturenames
    if "engine" in names:
        request.getfixturevalue("_truncate_tables")
    if "valkey_client" in names or "valkey_url" in names:
        request.getfixturevalue("_flush_valkey")


# -- Valkey Cluster (tests/cluster, and tests/cache in the py311-cluster env) ------------------

CLUSTER_URL_ENV = "APPCONFIG_CACHE_VALKEY_CLUSTER_URL"


@pytest.fixture(scope="session")
def _session_embedded_cluster() -> Iterator[EmbeddedValkeyCluster]:
    """One embedded 3-primary cluster for the whole session, started on first use."""
    with EmbeddedValkeyCluster(primaries=3) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def valkey_cluster_url(request: pytest.FixtureRequest) -> str:
    """``$APPCONFIG_CACHE_VALKEY_CLUSTER_URL`` or node 0 of the session's embedded cluster."""
    return _external_or_embedded(request, CLUSTER_URL_ENV, "_session_embedded_cluster")


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
