"""Session fixtures of the bench suite: servers, one event loop, seeded data.

The servers are the embedded Valkey and PostgreSQL unless
``APPCONFIG_CACHE_VALKEY_URL`` / ``APPCONFIG_CACHE_DATABASE_URL`` name external
ones. Everything async runs on one persistent loop that the benchmarks drive
with ``loop.run_until_complete``.
"""

from __future__ import annotations

import asyncio
import gc
import os
import platform
import random
from collections.abc import Iterator
from contextlib import AsyncExitStack
from importlib import metadata
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from appconfig_cache import create_schema, make_valkey_client
from appconfig_cache.embedded import EmbeddedValkey, embedded_postgres, to_asyncpg_url

from .support import BenchSession, seed

VALKEY_URL_ENV = "APPCONFIG_CACHE_VALKEY_URL"
DATABASE_URL_ENV = "APPCONFIG_CACHE_DATABASE_URL"

_SESSION_KEY = pytest.StashKey[BenchSession]()
_LOAD_KEY = pytest.StashKey[tuple[float, float, float]]()

_PACKAGES = (
    "appconfig-cache",
    "valkey",
    "cachetools",
    "pydantic",
    "sqlalchemy",
    "asyncpg",
    "cashews",
    "aiocache",
    "redis",
    "pytest-benchmark",
)


def pytest_configure(config: pytest.Config) -> None:
    # The peers' own deprecation noise (aiocache calls redis-py's deprecated setex/close).
    for module in ("aiocache", "cashews"):
        config.addinivalue_line("filterwarnings", f"ignore::DeprecationWarning:{module}.*")
    config.stash[_LOAD_KEY] = os.getloadavg()


@pytest.fixture(scope="session")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """The one event loop every benchmark runs on."""
    event_loop = asyncio.new_event_loop()
    try:
        yield event_loop
    finally:
        event_loop.run_until_complete(event_loop.shutdown_asyncgens())
        event_loop.close()


@pytest.fixture(scope="session")
def bench(
    request: pytest.FixtureRequest, loop: asyncio.AbstractEventLoop
) -> Iterator[BenchSession]:
    """Servers, engine, Valkey client and the seeded population."""
    stack = AsyncExitStack()
    run = loop.run_until_complete
    valkey_server: EmbeddedValkey | None = None
    valkey_url = os.environ.get(VALKEY_URL_ENV)
    if not valkey_url:
        valkey_server = EmbeddedValkey()
        valkey_server.start()
        valkey_url = valkey_server.url
    external_db = os.environ.get(DATABASE_URL_ENV)
    database_url = (
        to_asyncpg_url(external_db)
        if external_db
        else run(stack.enter_async_context(embedded_postgres()))
    )
    # Up to 64 connections: the throughput workload runs 64 requests at once, and the
    # DB-only baseline should not queue on the pool.
    engine = create_async_engine(database_url, pool_size=16, max_overflow=48)
    client = make_valkey_client(valkey_url, max_connections=64)

    async def prepare() -> tuple[dict[str, Any], dict[str, str]]:
        async with engine.begin() as conn:
            await conn.execute(
                sa.text(
                    "DROP TABLE IF EXISTS users, app_config_policies, app_config_fragments, "
                    "app_config_outbox CASCADE"
                )
            )
        await create_schema(engine)
        population = await seed(engine, random.Random(1052))
        async with engine.begin() as conn:  # the seed's rows: no cache holds their views
            await conn.execute(sa.text("DELETE FROM app_config_outbox"))
        async with engine.connect() as conn:
            pg = (await conn.execute(sa.text("SHOW server_version"))).scalar_one()
        info = await client.info("server")
        valkey = info.get("valkey_version") or info.get("redis_version", "?")
        server = "valkey" if "valkey_version" in info else "redis"
        await client.flushdb()
        return population, {"postgresql": str(pg), server: str(valkey)}

    population, versions = run(prepare())
    session = BenchSession.seeded(
        loop, valkey_url, database_url, engine, client, population, server_versions=versions
    )
    request.config.stash[_SESSION_KEY] = session
    try:
        yield session
    finally:

        async def close() -> None:
            await session.aclose_caches()
            await client.aclose()
            await engine.dispose()
            await stack.aclose()

        run(close())
        if valkey_server is not None:
            valkey_server.stop()


@pytest.fixture(autouse=True)
def close_caches(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each benchmark, close the cache sources it made and free what they held: a
    cache left alive would keep its L1 in the heap, and every later benchmark's garbage
    collections would walk it."""
    yield
    session = request.config.stash.get(_SESSION_KEY, None)
    if session is not None:
        session.loop.run_until_complete(session.aclose_caches())
        gc.collect()


@pytest.fixture
def clean_valkey(bench: BenchSession) -> BenchSession:
    """An empty Valkey database before the test (each benchmark builds its own state)."""
    bench.flush_valkey()
    return bench


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict[str, Any]):
    """Record what ``docs/benchmarks.rst`` prints about the machine and versions."""
    machine_info["cpu_model"] = _cpu_model()
    # Other processes on the machine skew the medians; say how busy it was.
    machine_info["load_average_start"] = config.stash.get(_LOAD_KEY, None)
    machine_info["load_average_end"] = os.getloadavg()
    machine_info["cpu_count"] = os.cpu_count()
    versions: dict[str, str] = {}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    machine_info["package_versions"] = versions
    session = config.stash.get(_SESSION_KEY, None)
    if session is not None:
        machine_info["server_versions"] = dict(session.server_versions)
        machine_info["external_servers"] = {
            "valkey": bool(os.environ.get(VALKEY_URL_ENV)),
            "postgresql": bool(os.environ.get(DATABASE_URL_ENV)),
        }
