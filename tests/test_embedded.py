"""The server fixtures give real, working servers."""

from __future__ import annotations

import valkey.asyncio as valkey_asyncio
from sqlalchemy import inspect, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from appconfig_cache.embedded import EmbeddedValkey


async def test_valkey_fixture_answers_commands(valkey_client: valkey_asyncio.Valkey) -> None:
    assert await valkey_client.ping() is True
    assert await valkey_client.dbsize() == 0  # flushed before the test
    await valkey_client.set("appconfig:test", b"x", ex=60)
    assert await valkey_client.get("appconfig:test") == b"x"


async def test_database_fixtures_answer_queries(database_url: str, engine: AsyncEngine) -> None:
    assert database_url.startswith("postgresql+asyncpg://")
    async with engine.connect() as conn:
        assert (await conn.execute(text("SELECT 1"))).scalar_one() == 1
        tables = await conn.run_sync(lambda sync_conn: set(inspect(sync_conn).get_table_names()))
    assert {"users", "app_config_policies", "app_config_fragments"} <= tables

    # The URL also works for an engine of the test's own.
    other = create_async_engine(database_url)
    try:
        async with other.connect() as conn:
            assert (await conn.execute(text("SELECT count(*) FROM users"))).scalar_one() == 0
    finally:
        await other.dispose()


async def test_embedded_valkey_restart_is_empty_on_same_port(
    embedded_valkey_server: EmbeddedValkey,
) -> None:
    server = embedded_valkey_server
    url, pid = server.url, server.pid

    before = valkey_asyncio.Valkey.from_url(url, socket_timeout=1.0)
    try:
        await before.set("survives", b"no")
    finally:
        await before.aclose()

    server.kill()
    assert not server.is_running()
    await server.arestart()
    assert server.is_running()
    assert server.url == url
    assert server.pid != pid

    after = valkey_asyncio.Valkey.from_url(url, socket_timeout=1.0)
    try:
        assert await after.ping() is True
        assert await after.get("survives") is None
    finally:
        await after.aclose()
